"""Probe (issue 3): the persistent Hopper W4A16 kernel (``gemm_hopper_persistent.py``) against the
one-tile-per-CTA kernel (``gemm_hopper.py``) and cuBLAS BF16, device time (L2 flushed, host hidden,
median of 30), with bit-equality to the one-tile kernel checked first.

Usage::

    python tools/probe_persistent_gemm.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_hopper as gh
from longlive_kernels.fp4 import gemm_hopper_persistent as gp
from longlive_kernels.fp4 import nvfp4_gemm, quantize_nvfp4
from longlive_kernels.testing import cuda_time_ms, rel_err

SHAPES = [(m, k, n) for k, n in ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072)) for m in (1760, 7040, 14080)]
QUICK = [(1760, 3072, 3072), (7040, 3072, 14336), (7040, 14336, 3072)]
VARIANTS = {"one tile per CTA (shipped)": None, "**persistent, half-tile TMA stores**": {"half_store": True},
            "persistent, TMA store, 3 stages": {"tma_store": True}, "persistent, stores from registers": {},
            "persistent, half-tile stores, no split": {"half_store": True, "max_split": 1}}


def _row(m, k, n):
    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
    wq = quantize_nvfp4(w)
    gs = wq.global_scale.reshape(1).float()
    flop = 2.0 * m * n * k

    def fn(v, b=None):
        if v is None:
            return lambda: gh.gemm(x, None, None, wq.data, wq.scale, gs, b, torch.bfloat16, False)
        return lambda: gp.gemm(x, wq.data, wq.scale, gs, b, torch.bfloat16, **v)

    ref = fn(None, bias)()
    exact = nvfp4_gemm(x, wq, bias=bias, out_dtype=torch.float32, algorithm="dequantize")
    notes = []
    for name, v in VARIANTS.items():
        out = fn(v, bias)()
        if not torch.equal(out, ref) and v is not None and "max_split" not in v:
            notes.append(f"{name}: differs from the shipped kernel (rel {rel_err(out.float(), ref.float()):.1e})")
        if rel_err(out.float(), exact) > 2.0**-8:
            notes.append(f"{name}: rel err {rel_err(out.float(), exact):.2e}")
        if not torch.equal(fn(v, bias)(), out):
            notes.append(f"{name}: repeat differs")
    t_bf16 = cuda_time_ms(lambda: F.linear(x, w), iters=30, hide_host=True)
    cells = []
    for v in VARIANTS.values():
        ms = cuda_time_ms(fn(v), iters=30, hide_host=True)
        cells.append(f"{flop / ms / 1e9:.0f} ({t_bf16 / ms:.2f}×)")
    return f"| {m} | {k} | {n} | {flop / t_bf16 / 1e9:.0f} | " + " | ".join(cells) + " |", notes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    warm = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(200):
        warm @ warm
    rows, problems = [], []
    for m, k, n in QUICK if args.quick else SHAPES:
        row, notes = _row(m, k, n)
        rows.append(row)
        problems += [f"{m}x{k}x{n} {p}" for p in notes]
        print(row, *notes, flush=True)
    print("\n| M | K | N | bf16 TFLOP/s | " + " | ".join(VARIANTS) + " |")
    print("|---" * (4 + len(VARIANTS)) + "|")
    print("\n".join(rows))
    print("problems:", problems or "none")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
