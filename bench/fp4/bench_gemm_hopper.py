"""Tuning benchmark of the Gluon sm_90a NVFP4 GEMM (``gemm_hopper.py``): its variants against cuBLAS BF16.

For the large-M shapes of issue 3 (M ∈ {1760, 7040, 14080}, (K, N) of the 5B model's linears) it times,
in one run (CUDA events, L2 flushed before every call, median of ``--iters`` after warm-up; device time:
``hide_host`` queues a GPU spin before each timed call, so the Python/launch time of the Gluon launcher,
~0.1 ms and comparable to the M = 1760 kernels, does not count):

- ``bf16``: cuBLAS BF16 ``x @ wᵀ`` (the baseline of every ratio),
- ``deq+bf16``: decode the NVFP4 weight to bf16, then cuBLAS (what the kernel must beat),
- ``w4a16 <tile>/<stages>/<split>``: the W4A16 kernel with the default token tile (``auto``: 256 rows
  for a bf16/fp16 output) or a forced one, a pipeline depth, and the cap on the K-split of the last
  wave's tiles (``gemm_hopper.tail_split``; 1: every tile whole),
- ``(scales once)`` / ``(no decode)``: timing ablations of the first variant (wrong results): what the
  per-k-tile scale loads and the decode cost,
- ``w4a4`` and ``w4a4 predec`` (activation decoded to bf16 once, then the W4A16 kernel), with the
  default tail split and without it.

Every variant is first checked against the exact dequantize path (relative Frobenius error ≤ 2^-8)
and against a repeat of itself, bit for bit. Prints a markdown table
of TFLOP/s (2·M·N·K / t) with ratios to BF16.

Usage::

    python bench/fp4/bench_gemm_hopper.py            # 12 shapes
    python bench/fp4/bench_gemm_hopper.py --quick    # 3 shapes
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

SHAPES = [(m, k, n) for k, n in ((3072, 3072), (3072, 9216), (3072, 14336), (14336, 3072))
          for m in (1760, 7040, 14080)]
QUICK = [(1760, 3072, 3072), (7040, 3072, 14336), (7040, 14336, 3072)]
# (token tile, stages, tail split cap) of the W4A16 variants; the first is the default (256 tokens,
# 4 stages, gemm_hopper.MAX_TAIL_SPLIT)
W4A16_VARIANTS = [(None, 4, None), (None, 4, 1), (None, 4, 2)]
# timing-only ablations of the first variant (wrong results, not checked): scales loaded once, no decode
ABLATIONS = {"scales once": 1, "no decode": 2}


def _variants(m: int, k: int, n: int):
    from longlive_kernels.fp4 import dequantize_nvfp4, nvfp4_gemm, quantize_nvfp4
    from longlive_kernels.fp4 import gemm_hopper as gh
    from longlive_kernels.testing import rel_err

    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16)
    wq, xq = quantize_nvfp4(w), quantize_nvfp4(x)
    wgs = wq.global_scale.reshape(1).float()
    xgs = xq.global_scale.reshape(1).float()
    exact16 = nvfp4_gemm(x, wq, out_dtype=torch.float32, algorithm="dequantize")
    exact4 = nvfp4_gemm(xq, wq, out_dtype=torch.float32, algorithm="dequantize")

    def w4a16(bt, stages, split, ablate=0):
        return lambda: gh.gemm(x, None, None, wq.data, wq.scale, wgs, None, torch.bfloat16, False, token_rows=bt,
                               stages=stages, ablate=ablate, max_split=split)

    def unsplit(fn):
        def call():
            cap, gh.MAX_TAIL_SPLIT = gh.MAX_TAIL_SPLIT, 1
            try:
                return fn()
            finally:
                gh.MAX_TAIL_SPLIT = cap
        return call

    fns = {"bf16": (lambda: F.linear(x, w), None),
           "deq+bf16": (lambda: F.linear(x, dequantize_nvfp4(wq, torch.bfloat16)), None)}
    for bt, st, sp in W4A16_VARIANTS:
        fns[f"w4a16 {bt or 'auto'}/{st}/{sp or 'auto'}"] = (w4a16(bt, st, sp), exact16)
    for name, ablate in ABLATIONS.items():
        fns[f"({name})"] = (w4a16(*W4A16_VARIANTS[0], ablate=ablate), None)
    w4a4 = lambda: gh.gemm(xq.data, xq.scale, xgs, wq.data, wq.scale, wgs, None, torch.bfloat16, True)
    predec = lambda: nvfp4_gemm(xq, wq, algorithm="predecode")
    fns["w4a4"] = (w4a4, exact4)
    fns["w4a4 /1"] = (unsplit(w4a4), exact4)
    fns["w4a4 predec"] = (predec, exact4)
    fns["w4a4 predec /1"] = (unsplit(predec), exact4)

    checks = {}
    for name, (fn, exact) in fns.items():
        if exact is None:
            continue
        out = fn()
        checks[name] = rel_err(out.float(), exact)
        checks[name + " bitwise"] = bool(torch.equal(fn(), out))  # a race shows as a repeat that differs
    return {name: fn for name, (fn, _) in fns.items()}, checks


def run(shapes, iters: int) -> tuple[list[dict], list[str]]:
    from longlive_kernels.testing import cuda_time_ms

    rows, problems = [], []
    warm = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(200):  # ~1 s of GEMMs: clocks at their loaded level before the first timing
        warm @ warm
    for m, k, n in shapes:
        fns, checks = _variants(m, k, n)
        for name, v in checks.items():
            if (name.endswith("bitwise") and not v) or (not name.endswith("bitwise") and v > 2.0**-8):
                problems.append(f"M={m} K={k} N={n} {name}: {v}")
        row = {"M": m, "K": k, "N": n}
        for name, fn in fns.items():
            ms = cuda_time_ms(fn, warmup=5, iters=iters, hide_host=True)
            row[name] = 2.0 * m * n * k / (ms * 1e-3) / 1e12
        rows.append(row)
        print("# " + " ".join(f"{c}={v:.0f}" for c, v in row.items() if c not in "MKN"), file=sys.stderr,
              flush=True)
    return rows, problems


def markdown(rows) -> str:
    cols = [c for c in rows[0] if c not in ("M", "K", "N")]
    lines = ["| M | K | N | bf16 TFLOP/s | " + " | ".join(f"{c}" for c in cols[1:]) + " |",
             "|" + "---|" * (3 + len(cols))]
    for r in rows:
        cells = [f"{r['bf16']:.0f}"] + [f"{r[c]:.0f} ({r[c] / r['bf16']:.2f}×)" for c in cols[1:]]
        lines.append(f"| {r['M']} | {r['K']} | {r['N']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 shapes")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print("bench_gemm_hopper: needs a Hopper GPU", file=sys.stderr)
        return 2
    from longlive_kernels.fp4 import gemm_ops
    from longlive_kernels.testing import device_header

    gemm_ops._HOPPER_ENABLED = True  # algorithm="predecode" takes the Gluon kernel only when enabled
    rows, problems = run(QUICK if args.quick else SHAPES, args.iters)
    print(f"\n{device_header()} | cells: TFLOP/s (ratio to cuBLAS BF16)\n")
    print(markdown(rows))
    print("\ncorrectness: " + ("all variants within 2^-8 of the exact path and bitwise equal" if not problems
                               else "PROBLEMS\n" + "\n".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
