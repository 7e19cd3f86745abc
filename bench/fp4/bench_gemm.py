"""Benchmark of the E2M1 block-scaled GEMMs on Hopper against cuBLAS BF16 timed in the same run.

For every M ∈ {16, 64, 256, 1760, 7040, 14080} and (K, N) of the 5B model's linears it times (CUDA
events, L2 flushed before every call, median of ``--iters`` runs after warm-up; random data):

- ``bf16``: cuBLAS BF16 ``x @ wᵀ`` (the baseline of every ratio),
- ``fp8 mm``: cuBLAS FP8 E4M3 row-wise ``torch._scaled_mm`` on pre-quantized operands,
- ``fp8 path``: our FP8 path end to end (row-wise activation quantization + ``fp8_gemm``),
- ``deq+bf16``: decode the NVFP4 weight to bf16 (our dequantize kernel), then cuBLAS,
- ``w4a16``: ``nvfp4_gemm(x_bf16, w_nvfp4)`` (default path: the Gluon sm_90a kernel for M > 256,
  the split-K Triton kernel below),
- ``w4a4``: ``nvfp4_gemm(x_nvfp4, w_nvfp4)`` on a pre-quantized activation (the GEMM alone),
- ``w4a4 e2e``: activation quantization + the W4A4 GEMM,
- ``w4a4 predec``: W4A4 as decode-the-activation-to-bf16 + the W4A16 kernel (``algorithm="predecode"``),
- ``w4a16 port`` / ``w4a4 port``: the portable Triton kernel (``algorithm="portable"``), to show
  what the Gluon kernel buys.

Prints a markdown table of TFLOP/s (2·M·N·K / t) and ratios to BF16. Targets (issue 3): W4A4
≥ 0.85× and W4A16 ≥ 0.95× BF16 for M ≥ 1760; W4A16 ≥ 2.5× for M ≤ 64; FP8 ≥ 1.4× for M ≥ 1760.

Usage::

    python bench/fp4/bench_gemm.py            # all 24 shapes (~6 min on an H100)
    python bench/fp4/bench_gemm.py --quick    # 6 shapes (< 2 min)
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

M_VALUES = (16, 64, 256, 1760, 7040, 14080)
KN_VALUES = ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072))
QUICK = ((16, 3072, 3072), (64, 3072, 14336), (1760, 3072, 3072), (7040, 3072, 14336), (7040, 14336, 3072),
         (14080, 3072, 3072))
COLUMNS = ("bf16", "fp8 mm", "fp8 path", "deq+bf16", "w4a16", "w4a4", "w4a4 e2e", "w4a4 predec", "w4a16 port",
           "w4a4 port")


def _methods(m: int, k: int, n: int) -> dict:
    from longlive_kernels.fp4 import (
        dequantize_nvfp4,
        fp8_gemm,
        nvfp4_gemm,
        quantize_fp8_rowwise,
        quantize_nvfp4,
    )

    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
    wq = quantize_nvfp4(w)
    xq = quantize_nvfp4(x)
    w8, ws8 = quantize_fp8_rowwise(w)
    x8, xs8 = quantize_fp8_rowwise(x)
    return {
        "bf16": lambda: F.linear(x, w),
        "fp8 mm": lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs8.reshape(-1, 1), scale_b=ws8.reshape(1, -1),
                                           out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8 path": lambda: fp8_gemm(*quantize_fp8_rowwise(x), w8, ws8),
        "deq+bf16": lambda: F.linear(x, dequantize_nvfp4(wq, torch.bfloat16)),
        "w4a16": lambda: nvfp4_gemm(x, wq),
        "w4a4": lambda: nvfp4_gemm(xq, wq),
        "w4a4 e2e": lambda: nvfp4_gemm(quantize_nvfp4(x), wq),
        "w4a4 predec": lambda: nvfp4_gemm(xq, wq, algorithm="predecode"),
        "w4a16 port": lambda: nvfp4_gemm(x, wq, algorithm="portable"),
        "w4a4 port": lambda: nvfp4_gemm(xq, wq, algorithm="portable"),
    }


def run(shapes, iters: int, columns=COLUMNS) -> list[dict]:
    from longlive_kernels.testing import cuda_time_ms

    rows = []
    for m, k, n in shapes:
        flops = 2.0 * m * n * k
        row = {"M": m, "K": k, "N": n}
        for name, fn in _methods(m, k, n).items():
            if name not in columns:
                continue
            try:
                fn()  # compile / autotune outside the timed region
                ms = cuda_time_ms(fn, warmup=5, iters=iters)
                row[name] = flops / (ms * 1e-3) / 1e12
            except Exception as exc:  # noqa: BLE001 - report and keep benchmarking
                print(f"# {name} M={m} K={k} N={n}: {type(exc).__name__}: {exc}", file=sys.stderr)
                row[name] = float("nan")
        rows.append(row)
        print("# " + " ".join(f"{c}={row.get(c, float('nan')):.0f}" for c in columns), f"(M={m} K={k} N={n})",
              file=sys.stderr, flush=True)
    return rows


def markdown(rows, columns=COLUMNS) -> str:
    head = "| M | K | N | " + " | ".join(f"{c} TFLOP/s" for c in columns) + " | " + " | ".join(
        f"{c}/bf16" for c in columns[1:]) + " |"
    sep = "|" + "---|" * (3 + 2 * len(columns) - 1)
    lines = [head, sep]
    for r in rows:
        base = r["bf16"]
        vals = [f"{r[c]:.0f}" for c in columns] + [f"{r[c] / base:.2f}" for c in columns[1:]]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 representative shapes (< 2 minutes)")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gemm: needs a CUDA GPU", file=sys.stderr)
        return 2
    from longlive_kernels.testing import device_header

    shapes = QUICK if args.quick else [(m, k, n) for k, n in KN_VALUES for m in M_VALUES]
    rows = run(shapes, args.iters)
    print(f"\n{device_header()}\n")
    print(markdown(rows))
    return 0


def test_bench_gemm_quick(benchmark=None):  # pytest-benchmark entry point (GPU only)
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rows = run(QUICK[:2], iters=10)
    assert all(r["bf16"] > 0 for r in rows)


if __name__ == "__main__":
    sys.exit(main())
