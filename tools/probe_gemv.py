"""Probe (issue 3): launch shape of the small-M NVFP4 GEMV (``gemm_gemv.py``) against cuBLAS BF16.

For M ∈ {16, 64} at the issue's (K, N), times ``nvfp4_gemm(x, w, algorithm="gemv")`` (W4A16) for
every (warps per CTA, CTAs per SM) of the sweep as device time (L2 flushed, host hidden, median of
50) and prints its ratio to ``F.linear`` in BF16 of the same run, with the result's relative error
against the default configuration (split-K changes only the summation order).

Usage::

    python tools/probe_gemv.py
"""

from __future__ import annotations

import itertools
import math
import sys

import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_gemv, nvfp4_gemm, quantize_nvfp4
from longlive_kernels.testing import cuda_time_ms

SHAPES = [(m, k, n) for k, n in ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072)) for m in (16, 64)]
SWEEP = list(itertools.product((4, 8), (1, 2, 4, 8)))


def main() -> int:
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| M | K | N | bf16 µs | " + " | ".join(f"{w}w × {c}/SM" for w, c in SWEEP) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(SWEEP))
    for m, k, n in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(m + n + k)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
        wq = quantize_nvfp4(w)
        bf16 = cuda_time_ms(lambda x=x, w=w: F.linear(x, w), warmup=5, iters=50, hide_host=True)
        gemm_gemv.NUM_WARPS, gemm_gemv.CTAS_PER_SM = 4, 2
        ref = nvfp4_gemm(x, wq, algorithm="gemv").float()
        cells = []
        for warps, ctas in SWEEP:
            gemm_gemv.NUM_WARPS, gemm_gemv.CTAS_PER_SM = warps, ctas
            try:
                out = nvfp4_gemm(x, wq, algorithm="gemv").float()
                err = ((out - ref).norm() / ref.norm()).item()
                ms = cuda_time_ms(lambda x=x, wq=wq: nvfp4_gemm(x, wq, algorithm="gemv"), warmup=5, iters=50,
                                  hide_host=True)
                cells.append(f"{bf16 / ms:.2f}×" + ("" if err < 1e-3 else f" (err {err:.1e})"))
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile: report it
                cells.append(f"fails: {type(exc).__name__}")
        print(f"| {m} | {k} | {n} | {bf16 * 1e3:.1f} | " + " | ".join(cells) + " |", flush=True)
    gemm_gemv.NUM_WARPS, gemm_gemv.CTAS_PER_SM = 4, 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
