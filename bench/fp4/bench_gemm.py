"""Benchmark of the E2M1 block-scaled GEMMs on Hopper against cuBLAS BF16 timed in the same run.

For every M ∈ {16, 64, 256, 1760, 7040, 14080} and (K, N) of the 5B model's linears it times (CUDA
events, L2 flushed before every call, median of ``--iters`` runs after warm-up; random data):

- ``bf16``: cuBLAS BF16 ``x @ wᵀ`` (the baseline of every ratio),
- ``fp8 mm``: cuBLAS FP8 E4M3 row-wise ``torch._scaled_mm`` on pre-quantized operands,
- ``fp8 path``: the FP8 path as two ops (``fp8_gemm(*quantize_fp8_rowwise(x), ...)``),
- ``fp8 linear``: the FP8 path in one call (``gemm_fp8.fp8_linear``: fused row-wise quantization,
  one HBM read of the activation, then cuBLAS; no dispatcher round trips in eager mode),
- ``deq+bf16``: decode the NVFP4 weight to bf16 (our dequantize kernel), then cuBLAS,
- ``w4a16``: ``nvfp4_gemm(x_bf16, w_nvfp4)`` (default path: the Gluon sm_90a kernel for M > 256,
  the split-K Triton kernel below),
- ``w4a4``: ``nvfp4_gemm(x_nvfp4, w_nvfp4)`` on a pre-quantized activation (the GEMM alone),
- ``w4a4 e2e``: activation quantization + the W4A4 GEMM,
- ``w4a4 predec``: W4A4 as decode-the-activation-to-bf16 + the W4A16 kernel (``algorithm="predecode"``),
- ``w4a16 port`` / ``w4a4 port``: the portable Triton kernel (``algorithm="portable"``), to show
  what the Gluon kernels buy,
- ``w4a16 gemv`` / ``w4a4 gemv`` (M ≤ 64): the small-M Gluon kernel (``algorithm="gemv"``).
- ``w4a16 cuda`` / ``w4a4 cuda`` (M ≤ 64): the CUDA small-M kernel (``backend="cuda"``,
  ``csrc/fp4/nvfp4_gemv.cu``; W4A4 decodes the activation to bf16 first); ``w4a16 triton`` /
  ``w4a4 triton``: the Triton split-K kernel (``backend="triton"``). With the extension built,
  ``w4a16`` / ``w4a4`` at M ≤ 64 run the CUDA kernel.
- ``--producer``: each FP8 linear with the op that makes its activation: ``gelu+bf16`` (torch's tanh
  GELU, then cuBLAS BF16: the Wan FFN's second linear with its producer) against ``fp8 linear gelu``
  (the GELU fused into the FP8 row-wise quantization), and, for K = 3072 (q/k/v, cross-q, ffn.0),
  ``adaln+bf16`` (the fused adaLN kernel writing bf16 h, then cuBLAS BF16) against ``fp8 linear
  adaln`` (the adaLN kernel writing row-wise E4M3 h, ``out_fp8=True``, then cuBLAS FP8) and ``fp8
  linear adaln/t`` (per-tensor: the adaLN kernel encoding h with ``layernorm_fp8_scale`` of its
  vectors, no row amax, then cuBLAS's per-tensor FP8 kernel with a per-tensor weight where
  ``tensorwise_kernel_faster``; the scale is computed once per set of vectors outside the timed call,
  as the weights are quantized once).

In ``nvfp4_gemm`` the Gluon Hopper kernel is on by default for M > 256 (``LONGLIVE_GEMM_GLUON=0``
turns it off) and the small-M GEMV is off; ``--gluon`` turns both on for the default columns
(``w4a16``, ``w4a4``, ...). ``--timing graph`` replays each call from a CUDA graph (device time
plus the replay's own ~12 µs floor, which is as long as an M ≤ 64 GEMM); ``--timing device`` queues a
~1 ms GPU spin before the start event so that the events hold only the call's kernels (device time,
the inputs still read from HBM after the L2 flush: the right clock for M ≤ 64, where a network runs
these kernels back to back from a CUDA graph); the default ``events`` times eager calls, so host time
shows wherever a call's Python and launches take longer than its kernels (each timed call follows a
~0.1 ms L2-flush kernel, which hides that much host time). ``--launches`` adds kernel launches per call (torch.profiler).

Prints a markdown table of TFLOP/s (2·M·N·K / t) and ratios to BF16. Targets (issue 3): W4A4
≥ 0.85× and W4A16 ≥ 0.95× BF16 for M ≥ 1760; W4A16 ≥ 2.5× for M ≤ 64; FP8 ≥ 1.4× for M ≥ 1760.

Usage::

    python bench/fp4/bench_gemm.py            # all 24 shapes (~6 min on an H100)
    python bench/fp4/bench_gemm.py --quick    # 6 shapes (< 2 min)
    python bench/fp4/bench_gemm.py --quick --gluon --timing graph --launches
    python bench/fp4/bench_gemm.py --small --timing device   # M ∈ {16, 64}: the ≥ 2.5× target
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
SMALL = tuple((m, k, n) for k, n in KN_VALUES for m in (16, 64))
SMALL_COLUMNS = ("bf16", "fp8 mm", "deq+bf16", "w4a16 cuda", "w4a16 triton", "w4a16 gemv", "w4a4 cuda",
                 "w4a4 triton", "w4a4 gemv")
# --producer: the FFN's second linear with its GELU: torch GELU + cuBLAS BF16 against the GELU fused into
# the FP8 quantization (fp8_linear(..., input_activation="gelu_tanh"))
PRODUCER_COLUMNS = ("bf16", "fp8 linear", "gelu+bf16", "fp8 linear gelu", "adaln+bf16", "fp8 linear adaln",
                    "fp8 linear adaln/t")
PRODUCER_PAIRS = (("fp8 linear gelu", "gelu+bf16"), ("fp8 linear adaln", "adaln+bf16"),
                  ("fp8 linear adaln/t", "adaln+bf16"))  # (ours, baseline)
COLUMNS = ("bf16", "fp8 mm", "fp8 path", "fp8 linear", "deq+bf16", "w4a16", "w4a4", "w4a4 e2e", "w4a4 predec",
           "w4a16 port", "w4a4 port", "w4a16 gemv", "w4a4 gemv")


def _methods(m: int, k: int, n: int) -> dict:
    from longlive_kernels.attention import adaln_modulate, layernorm_fp8_scale
    from longlive_kernels.fp4 import (
        dequantize_nvfp4,
        fp8_gemm,
        nvfp4_gemm,
        quantize_fp8_rowwise,
        quantize_fp8_tensorwise,
        quantize_nvfp4,
    )
    from longlive_kernels.fp4.gemm_fp8 import fp8_linear

    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
    wq = quantize_nvfp4(w)
    xq = quantize_nvfp4(x)
    w8, ws8 = quantize_fp8_rowwise(w)
    x8, xs8 = quantize_fp8_rowwise(x)
    fl = 880 if m % 880 == 0 else m  # the 5B model's tokens per latent frame
    shift, scale = (0.5 * torch.randn(1, m // fl, k, device="cuda", generator=g) for _ in range(2))

    def adaln_fp8():
        codes, row_scale = adaln_modulate(x[None], shift, scale, frame_len=fl, out_fp8=True)
        return fp8_linear(codes[0], w8, ws8, x_scale=row_scale[0])

    w8t, ws8t = quantize_fp8_tensorwise(w)
    h_scale = layernorm_fp8_scale(scale, shift)

    def adaln_fp8_tensor():
        codes, s = adaln_modulate(x[None], shift, scale, frame_len=fl, out_fp8=True, fp8_scale=h_scale)
        return fp8_linear(codes[0], w8t, ws8t, x_scale=s)

    return {
        "bf16": lambda: F.linear(x, w),
        "fp8 mm": lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs8.reshape(-1, 1), scale_b=ws8.reshape(1, -1),
                                           out_dtype=torch.bfloat16, use_fast_accum=True),
        "fp8 path": lambda: fp8_gemm(*quantize_fp8_rowwise(x), w8, ws8),
        "fp8 linear": lambda: fp8_linear(x, w8, ws8),
        "gelu+bf16": lambda: F.linear(F.gelu(x, approximate="tanh"), w),
        "fp8 linear gelu": lambda: fp8_linear(x, w8, ws8, input_activation="gelu_tanh"),
        **({"adaln+bf16": lambda: F.linear(adaln_modulate(x[None], shift, scale, frame_len=fl)[0], w),
            "fp8 linear adaln": adaln_fp8, "fp8 linear adaln/t": adaln_fp8_tensor} if k == 3072 else {}),
        "deq+bf16": lambda: F.linear(x, dequantize_nvfp4(wq, torch.bfloat16)),
        "w4a16": lambda: nvfp4_gemm(x, wq),
        "w4a4": lambda: nvfp4_gemm(xq, wq),
        "w4a4 e2e": lambda: nvfp4_gemm(quantize_nvfp4(x), wq),
        "w4a4 predec": lambda: nvfp4_gemm(xq, wq, algorithm="predecode"),
        "w4a16 port": lambda: nvfp4_gemm(x, wq, algorithm="portable"),
        "w4a4 port": lambda: nvfp4_gemm(xq, wq, algorithm="portable"),
        **({"w4a16 gemv": lambda: nvfp4_gemm(x, wq, algorithm="gemv"),
            "w4a4 gemv": lambda: nvfp4_gemm(xq, wq, algorithm="gemv"),
            "w4a16 cuda": lambda: nvfp4_gemm(x, wq, backend="cuda"),
            "w4a4 cuda": lambda: nvfp4_gemm(xq, wq, backend="cuda"),
            "w4a16 triton": lambda: nvfp4_gemm(x, wq, backend="triton"),
            "w4a4 triton": lambda: nvfp4_gemm(xq, wq, backend="triton")} if m <= 64 else {}),
    }


def _graph_replay(fn):
    """``fn`` captured in a CUDA graph (after warm-up calls on a side stream): its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def count_launches(fn) -> int:
    """Kernels one call of ``fn`` launches (torch.profiler's CUDA kernel events)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def run(shapes, iters: int, columns=COLUMNS, timing: str = "events", launches: bool = False) -> list[dict]:
    """Times every column at every shape; ``timing`` is "events", "graph" or "device" (module docstring)."""
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
                timed = _graph_replay(fn) if timing == "graph" else fn
                ms = cuda_time_ms(timed, warmup=5, iters=iters, hide_host=timing == "device")
                row[name] = flops / (ms * 1e-3) / 1e12
                if launches:
                    row[f"{name} launches"] = count_launches(fn)
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
    pairs = [(a, b) for a, b in PRODUCER_PAIRS if a in columns and b in columns]
    head += "".join(f" {a} / {b} |" for a, b in pairs)
    sep = "|" + "---|" * (3 + 2 * len(columns) - 1 + len(pairs))
    lines = [head, sep]
    for r in rows:
        base = r["bf16"]
        vals = [f"{r.get(c, float('nan')):.0f}" for c in columns]
        vals += [f"{r.get(c, float('nan')) / base:.2f}" for c in columns[1:]]
        vals += [f"{r.get(a, float('nan')) / r.get(b, float('nan')):.2f}" for a, b in pairs]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | " + " | ".join(vals) + " |")
    if any(f"{c} launches" in r for r in rows for c in columns):
        lines += ["", "| M | K | N | " + " | ".join(f"{c} launches" for c in columns) + " |",
                  "|" + "---|" * (3 + len(columns))]
        for r in rows:
            lines.append(f"| {r['M']} | {r['K']} | {r['N']} | "
                         + " | ".join(str(r.get(f"{c} launches", "-")) for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 representative shapes (< 2 minutes)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--gluon", action="store_true", help="enable both Gluon kernels in nvfp4_gemm's default path")
    ap.add_argument("--small", action="store_true", help="M ∈ {16, 64} at every (K, N), small-M columns")
    ap.add_argument("--timing", choices=("events", "graph", "device"), default="events",
                    help="events: eager calls (host time shows); graph: CUDA-graph replay (device time + "
                         "~12 µs replay floor); device: kernels only (host hidden behind a GPU spin)")
    ap.add_argument("--launches", action="store_true", help="also count kernel launches per call")
    ap.add_argument("--producer", action="store_true",
                    help="only bf16, fp8 linear and the producer pairs: GELU / adaLN + cuBLAS BF16 against the "
                         "GELU fused into fp8_linear / the adaLN writing FP8 h")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gemm: needs a CUDA GPU", file=sys.stderr)
        return 2
    from longlive_kernels.fp4 import gemm_ops
    from longlive_kernels.testing import device_header

    if args.gluon:  # the flags live (and are read) in gemm_ops
        gemm_ops._HOPPER_ENABLED = gemm_ops._GEMV_ENABLED = True
    shapes = SMALL if args.small else QUICK if args.quick else [(m, k, n) for k, n in KN_VALUES for m in M_VALUES]
    columns = SMALL_COLUMNS if args.small else PRODUCER_COLUMNS if args.producer else COLUMNS
    rows = run(shapes, args.iters, columns=columns, timing=args.timing, launches=args.launches)
    print(f"\n{device_header()} | timing {args.timing} | Gluon Hopper kernel "
          f"{'on' if gemm_ops._HOPPER_ENABLED else 'off'}, GEMV {'on' if gemm_ops._GEMV_ENABLED else 'off'}\n")
    print(markdown(rows, columns))
    return 0


def test_bench_gemm_quick(benchmark=None):  # pytest-benchmark entry point (GPU only)
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rows = run(QUICK[:2], iters=10)
    assert all(r["bf16"] > 0 for r in rows)


if __name__ == "__main__":
    sys.exit(main())
