"""Probe (issue 3): the Gluon row-wise FP8 GEMM (``gemm_fp8_hopper.py``) against ``torch._scaled_mm``.

For issue 3's twelve M ≥ 1760 shapes, with x and w row-wise quantized by ``quantize_fp8_rowwise``:
checks the kernel against the fp64 reference (relative Frobenius error, next to ``_scaled_mm``'s
own) and its bitwise repeatability, then times (device time, L2 flushed, host hidden, median of 30)
cuBLAS BF16 ``F.linear`` on the unquantized bf16 operands, ``_scaled_mm`` (row-wise, fast
accumulation, the FP8 path's default), and the Gluon kernel's variants (``VARIANTS``). Prints
TFLOP/s and the ratio to cuBLAS BF16 of the same run.

Usage::

    python tools/probe_fp8_hopper.py [--shapes M,K,N ...]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_fp8_hopper as g8
from longlive_kernels.fp4 import quantize_fp8_rowwise, reference
from longlive_kernels.testing import cuda_time_ms, rel_err

VARIANTS = {"_scaled_mm": None, "**Gluon FP8** (persistent, warp-specialized)": {},
            "persistent, no split": {"max_split": 1}, "two launches (256 / 128 tokens)": {"two_part": True},
            "128-token tiles": {"bt": 128, "max_split": 1}, "one CTA per unit, no split": {"persistent": False,
                                                                                       "max_split": 1}}
SHAPES = [(m, k, n) for m in (1760, 7040, 14080) for k, n in ((3072, 3072), (3072, 9216), (3072, 14336),
                                                             (14336, 3072))]


def _scaled_mm(q, s, wq, ws):
    return torch._scaled_mm(q, wq.t(), scale_a=s.reshape(-1, 1), scale_b=ws.reshape(1, -1),
                            out_dtype=torch.bfloat16, use_fast_accum=True)


def _row(m: int, k: int, n: int, check: bool) -> str:
    gen = torch.Generator(device="cuda").manual_seed(m + k + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = (torch.randn(n, k, device="cuda", generator=gen) / math.sqrt(k)).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    q, s = quantize_fp8_rowwise(x)
    wq, ws = quantize_fp8_rowwise(w)
    flop = 2.0 * m * n * k
    plan = g8.launch_plan(m, n, k, x.device)
    err = ""
    if check:
        exact = reference.fp8_gemm(q, s, wq, ws, bias, out_dtype=torch.float64)
        ours = g8.gemm(q, s, wq, ws, bias, torch.bfloat16)
        for _ in range(2):
            again = g8.gemm(q, s, wq, ws, bias, torch.bfloat16)
            if not torch.equal(again.view(torch.int16), ours.view(torch.int16)):
                raise AssertionError(f"{m}x{k}x{n}: repeated calls differ")
        cub = torch._scaled_mm(q, wq.t(), scale_a=s.reshape(-1, 1), scale_b=ws.reshape(1, -1),
                               bias=bias, out_dtype=torch.bfloat16, use_fast_accum=True)
        err = f"{rel_err(ours, exact):.2e} / {rel_err(cub, exact):.2e}"
    t_bf16 = cuda_time_ms(lambda: F.linear(x, w), iters=30, hide_host=True)
    cells = []
    for variant in VARIANTS.values():
        fn = (lambda: _scaled_mm(q, s, wq, ws)) if variant is None else (
            lambda v=variant: g8.gemm(q, s, wq, ws, None, torch.bfloat16, **v))
        ms = cuda_time_ms(fn, iters=30, hide_host=True)
        cells.append(f"{flop / ms / 1e9:.0f} ({t_bf16 / ms:.2f}×)")
    return f"| {m} | {k} | {n} | {plan} | {err} | {flop / t_bf16 / 1e9:.0f} | " + " | ".join(cells) + " |"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=None, help="M,K,N triples (default: issue 3's grid)")
    ap.add_argument("--no-check", action="store_true")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for m, k, n in shapes:
        rows.append(_row(m, k, n, not args.no_check))
        print(rows[-1], flush=True)
    print("\n| M | K | N | (tiles, whole, split, k-tiles/split) | rel. err vs fp64: Gluon / _scaled_mm | "
          "bf16 TFLOP/s | " + " | ".join(VARIANTS) + " |")
    print("|---" * (6 + len(VARIANTS)) + "|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
