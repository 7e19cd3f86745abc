"""Probe (issue 3): where the time of the Hopper NVFP4 GEMM's split last wave goes (``gemm_hopper.py``).

For the N = 3072 shapes, whose 128 × 256 tiles leave a partial last wave on an H100, times the W4A16
kernel (device time, L2 flushed, host hidden, median of 30) with the tail split off, with caps 2-8,
and two timing ablations of the default split (wrong results): ``store as output`` (split programs
write their partial through the normal epilogue: no FP32 round trip), ``no sum`` (partials stored
and counted, the last program sums nothing). Prints TFLOP/s and the ratio to cuBLAS BF16.

Usage::

    python tools/probe_tail_split.py
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_hopper as gh
from longlive_kernels.fp4 import quantize_nvfp4
from longlive_kernels.testing import cuda_time_ms

SHAPES = [(1760, 3072, 3072), (7040, 3072, 3072), (1760, 14336, 3072), (7040, 14336, 3072), (1760, 3072, 9216)]
VARIANTS = {"split off": (1, 0), "cap 2": (2, 0), "cap 4 (default)": (4, 0), "cap 8": (8, 0),
            "store as output": (4, 3), "no sum": (4, 4), "no decode, off": (1, 2), "no decode, cap 4": (4, 2)}


def _row(m: int, k: int, n: int) -> str:
    g = torch.Generator(device="cuda").manual_seed(m + k + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
    wq = quantize_nvfp4(w)
    gs = wq.global_scale.reshape(1).float()
    flop = 2.0 * m * n * k
    tiles, *plan = gh.launch_plan(m, n, k, 256, x.device)
    plan = tuple(plan)
    t_bf16 = cuda_time_ms(lambda: F.linear(x, w), iters=30, hide_host=True)

    def kernel(cap: int, ablate: int):
        return lambda: gh.gemm(x, None, None, wq.data, wq.scale, gs, None, torch.bfloat16, False, max_split=cap,
                               ablate=ablate)

    cells = []
    for cap, ablate in VARIANTS.values():
        ms = cuda_time_ms(kernel(cap, ablate), iters=30, hide_host=True)
        cells.append(f"{flop / ms / 1e9:.0f} ({t_bf16 / ms:.2f}×, {ms * 1e3:.1f} µs)")
    return f"| {m} | {k} | {n} | {tiles} | {plan} | {flop / t_bf16 / 1e9:.0f} | " + " | ".join(cells) + " |"


def main() -> int:
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for m, k, n in SHAPES:
        rows.append(_row(m, k, n))
        print(rows[-1], flush=True)
    print("\n| M | K | N | tiles | (whole, split, k-tiles/split) at cap 4 | bf16 TFLOP/s | "
          + " | ".join(VARIANTS) + " |")
    print("|" + "---|" * (6 + len(VARIANTS)))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
