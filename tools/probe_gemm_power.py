"""Is the Hopper NVFP4 GEMM power-limited? Runs each variant back to back for a few seconds while
``nvidia-smi`` samples the SM clock, the power draw and the active clock-event reasons, and reports
the medians with the variant's TFLOP/s over the same window.

A kernel that adds ALU work (the E2M1 decode) to a tensor-core-bound loop can lose speed either to
issue slots or to a lower SM clock under the board's power limit; the clock column tells which.

Usage::

    python tools/probe_gemm_power.py [--m 14080 --k 3072 --n 14336 --seconds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _sample(seconds: float, fn) -> tuple[float, list[str]]:
    """(calls per second, nvidia-smi CSV lines) while ``fn`` runs for ``seconds``."""
    for _ in range(3):  # compile / autotune outside the window
        fn()
    torch.cuda.synchronize()
    query = "clocks.sm,power.draw,clocks_event_reasons.active"
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "100"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    calls, t0 = 0, time.perf_counter()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            fn()
        calls += 20
        torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
    smi.terminate()
    lines = smi.communicate()[0].strip().splitlines()
    return calls / (start.elapsed_time(end) * 1e-3), lines[3:]  # (the first samples predate the load)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=14080)
    ap.add_argument("--k", type=int, default=3072)
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    from longlive_kernels.fp4 import gemm_hopper as gh
    from longlive_kernels.fp4 import quantize_nvfp4
    from longlive_kernels.testing import device_header

    m, k, n = args.m, args.k, args.n
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(torch.bfloat16)
    wq = quantize_nvfp4(w)
    wgs = wq.global_scale.reshape(1).float()

    def hopper(**kw):
        return lambda: gh.gemm(x, None, None, wq.data, wq.scale, wgs, None, torch.bfloat16, False, **kw)

    x0 = torch.zeros_like(x)
    variants = {"cuBLAS bf16": lambda: F.linear(x, w), "cuBLAS bf16 (zero x)": lambda: F.linear(x0, w),
                "w4a16 (Gluon Hopper kernel)": hopper(),
                "w4a16 without its decode (timing only)": hopper(ablate=2)}
    print(device_header())
    print(f"\nM={m} K={k} N={n}, {args.seconds:.0f} s each, nvidia-smi every 100 ms (medians)\n")
    print("| variant | TFLOP/s | SM MHz | W | clock-event reasons (most frequent) |")
    print("|---|---|---|---|---|")
    for name, fn in variants.items():
        rate, lines = _sample(args.seconds, fn)
        mhz = statistics.median(float(s.split(",")[0]) for s in lines)
        watts = statistics.median(float(s.split(",")[1]) for s in lines)
        reasons = statistics.mode(s.split(",")[2].strip() for s in lines)
        print(f"| {name} | {2.0 * m * n * k * rate / 1e12:.0f} | {mhz:.0f} | {watts:.0f} | {reasons} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
