"""Probe (issue 3): launch shapes of the small-M NVFP4 GEMV kernels against cuBLAS BF16.

For M ∈ {16, 64} (``--cuda``: also 1 and 32) at the issue's (K, N), times the W4A16 GEMM for every
launch shape of the sweep as device time (L2 flushed, host hidden, median of 50) and prints its ratio
to ``F.linear`` in BF16 of the same run, with the result's relative error against the first
configuration (split-K changes only the summation order).

- default: the Gluon GEMV (``gemm_gemv.py``, ``algorithm="gemv"``), (warps per CTA, CTAs per SM).
- ``--cuda``: the CUDA kernel (``csrc/fp4/nvfp4_gemv.cu``), (variant, sub-steps per stage, K splits)
  with variant 1..3 = (16-row bands per warp, warps) (1,4) (1,8) (2,8), 1/2/4 sub-steps of 128 K per
  pipeline stage, and splits 0 = the launcher's choice; the last column is ``backend="cuda"`` as
  ``nvfp4_gemm`` calls it (the launcher's own choices).

Usage::

    python tools/probe_gemv.py [--cuda]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_gemv, gemm_ops, nvfp4_gemm, quantize_nvfp4
from longlive_kernels.testing import cuda_time_ms

KN = ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072))
GLUON_SWEEP = list(itertools.product((4, 8), (1, 2, 4, 8)))
CUDA_SWEEP = [(v, u, s) for v in (1, 2, 3) for u in (1, 2, 4) for s in (0, 1, 2, 4)]
ABLATE = 0  # --ablate: the CUDA kernel streams its operands but skips the MMAs (a bound, wrong results)


def _gluon(x, wq, cfg):
    gemm_gemv.NUM_WARPS, gemm_gemv.CTAS_PER_SM = cfg
    return lambda: nvfp4_gemm(x, wq, algorithm="gemv")


def _cuda(x, wq, cfg):
    args = (x, None, None, wq.data, wq.scale, wq.global_scale.reshape(1).float(), None, torch.bfloat16, False)
    return lambda: gemm_ops._gemm_cuda(*args, variant=cfg[0], k_unroll=cfg[1], splits=cfg[2], ablate=ABLATE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", action="store_true", help="sweep the CUDA kernel instead of the Gluon one")
    ap.add_argument("--ablate", action="store_true", help="--cuda: skip the MMAs (memory-pipeline bound)")
    ap.add_argument("--variants", default="1+2+3", help="--cuda: variants to sweep, e.g. 1+2")
    ap.add_argument("--m", default=None, help="M values, e.g. 1+16")
    args = ap.parse_args(argv)
    global ABLATE, CUDA_SWEEP
    ABLATE = int(args.ablate)
    CUDA_SWEEP = [c for c in CUDA_SWEEP if str(c[0]) in args.variants.split("+")]
    sweep, make = (CUDA_SWEEP, _cuda) if args.cuda else (GLUON_SWEEP, _gluon)
    ms_values = tuple(int(v) for v in args.m.split("+")) if args.m else (1, 16, 32, 64) if args.cuda else (16, 64)
    label = (lambda c: f"v{c[0]} u{c[1]} s{c[2]}") if args.cuda else (lambda c: f"{c[0]}w × {c[1]}/SM")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    extra = " auto |" if args.cuda else ""
    print("| M | K | N | bf16 µs | " + " | ".join(label(c) for c in sweep) + " |" + extra)
    print("|---:|---:|---:|---:|" + "---:|" * (len(sweep) + bool(args.cuda)))
    for (k, n), m in itertools.product(KN, ms_values):
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
        wq = quantize_nvfp4(w)
        bf16 = cuda_time_ms(lambda x=x, w=w: F.linear(x, w), warmup=5, iters=50, hide_host=True)
        ref = nvfp4_gemm(x, wq, out_dtype=torch.float32, algorithm="dequantize")
        cells = []
        fns = [make(x, wq, c) for c in sweep]
        if args.cuda:
            fns.append(lambda x=x, wq=wq: nvfp4_gemm(x, wq, backend="cuda"))
        for fn in fns:
            try:
                err = ((fn().float() - ref).norm() / ref.norm()).item()
                ms = cuda_time_ms(fn, warmup=5, iters=50, hide_host=True)
                cells.append(f"{bf16 / ms:.2f}×" + ("" if err < 4e-3 or ABLATE else f" (err {err:.1e})"))
            except Exception as exc:  # noqa: BLE001 - a configuration that cannot launch: report it
                cells.append(f"fails: {type(exc).__name__}: {str(exc)[:60]}")
        print(f"| {m} | {k} | {n} | {bf16 * 1e3:.1f} | " + " | ".join(cells) + " |", flush=True)
    gemm_gemv.NUM_WARPS, gemm_gemv.CTAS_PER_SM = 4, 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
