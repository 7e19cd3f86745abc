"""Training step of one LongLive-2.0-5B block's linears in bf16 vs NVFP4 (QAT) on Hopper.

The linears of one DiT block (``longlive-spec.md`` §1.1, dim 3072, FFN 14336): self-attention q, k,
v, o and cross-attention q, o (3072→3072), FFN 3072→14336→3072 (GELU between), all fed with the
same [M=7040, 3072] bf16 token matrix (attention itself is left out). One step = forward of all
linears + backward with random output gradients. Reported: median step time (CUDA events, L2
flushed; the GPU starts each step idle), the CPU's time to enqueue the step (``host ms``: where it is
close to the step time, the step is bound by the host's Python and launch overhead, not the GPU) and peak memory above the model's resident weights, for ``NVFP4Linear`` in mode ``bf16``
(plain ``F.linear``), ``nvfp4`` (trainable: master weights bf16, NVFP4 forward/dgrad/wgrad, only
the FP4 copy of each input saved) and ``w4a16`` (weight-only QAT: NVFP4 weight in the forward,
straight-through 16-bit gradients), with the ratios to bf16.

Usage::

    python bench/fp4/bench_linear_train.py           # M = 7040, 20 timed steps
    python bench/fp4/bench_linear_train.py --quick   # 5 timed steps (< 1 min)
    python bench/fp4/bench_linear_train.py --quick --profile   # + the nvfp4 step's kernels (torch.profiler)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DIM, FFN = 3072, 14336
LINEARS = {"self_q": (DIM, DIM), "self_k": (DIM, DIM), "self_v": (DIM, DIM), "self_o": (DIM, DIM),
           "cross_q": (DIM, DIM), "cross_o": (DIM, DIM), "ffn_0": (DIM, FFN), "ffn_2": (FFN, DIM)}


class Block(torch.nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        from longlive_kernels.fp4 import NVFP4Linear

        for name, (k, n) in LINEARS.items():
            setattr(self, name, NVFP4Linear(k, n, mode=mode, trainable=True, device="cuda", dtype=torch.bfloat16))

    def forward(self, x):
        outs = [self.self_k(x), self.self_v(x), self.self_o(self.self_q(x)), self.cross_o(self.cross_q(x))]
        outs.append(self.ffn_2(F.gelu(self.ffn_0(x), approximate="tanh")))
        return outs


def setup(mode: str, m: int) -> tuple[Block, torch.Tensor, list[torch.Tensor]]:
    """(the block in ``mode``, its [m, DIM] bf16 input with requires_grad, one gradient per output)."""
    torch.manual_seed(0)
    block = Block(mode)
    x = torch.randn(m, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    return block, x, [torch.randn(m, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(5)]


def measure(mode: str, m: int, steps: int) -> dict:
    block, x, grads = setup(mode, m)

    def step():
        outs = block(x)
        torch.autograd.backward(outs, grads)
        block.zero_grad(set_to_none=True)
        x.grad = None

    for _ in range(3):  # warm-up: compile and autotune
        step()
    torch.cuda.synchronize()
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    times, fwd, host = [], [], []
    for _ in range(steps):
        flush.zero_()
        torch.cuda.synchronize()
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        t0 = time.perf_counter()
        e0.record()
        outs = block(x)
        e1.record()
        torch.autograd.backward(outs, grads)
        e2.record()
        host.append((time.perf_counter() - t0) * 1e3)  # the CPU's time to enqueue the step
        e2.synchronize()
        times.append(e0.elapsed_time(e2))
        fwd.append(e0.elapsed_time(e1))
        del outs
        block.zero_grad(set_to_none=True)
        x.grad = None
    del flush
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    flops = 3 * 2 * m * sum(k * n for k, n in LINEARS.values())  # fwd + dgrad + wgrad
    ms = statistics.median(times)
    return {"mode": mode, "ms": ms, "fwd_ms": statistics.median(fwd), "host_ms": statistics.median(host),
            "tflops": flops / (ms * 1e-3) / 1e12, "peak_mb": peak / 2**20}


def profile(mode: str, m: int, top: int = 30) -> None:
    """Print the CUDA kernels of one training step of ``mode`` by total time (torch.profiler, 3 steps)."""
    block, x, grads = setup(mode, m)
    for _ in range(2):
        torch.autograd.backward(block(x), grads)
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            torch.autograd.backward(block(x), grads)
        torch.cuda.synchronize()
    avg = prof.key_averages()
    events = [e for e in avg if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) / 3
    print(f"\n{mode} step: {total / 1e3:.2f} ms of kernels")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:top]:
        print(f"  {e.device_time_total / 3 / 1e3:7.3f} ms  x{e.count // 3:<3d} {e.key[:100]}")
    # the host side: which calls the step's Python/dispatch time goes to (self CPU time per step)
    cpu = [e for e in avg if e.device_type == torch.autograd.DeviceType.CPU]
    print(f"\n{mode} step: {sum(e.self_cpu_time_total for e in cpu) / 3 / 1e3:.2f} ms of host time (self CPU)")
    for e in sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"  {e.self_cpu_time_total / 3 / 1e3:7.3f} ms  x{e.count // 3:<4d} {e.key[:100]}")


def markdown(rows) -> str:
    base = rows[0]
    lines = ["| mode | step ms | fwd ms | host ms | TFLOP/s | peak MB (above weights) | time / bf16 | peak / bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['ms']:.2f} | {r['fwd_ms']:.2f} | {r['host_ms']:.2f} | {r['tflops']:.0f} | "
                     f"{r['peak_mb']:.0f} | "
                     f"{r['ms'] / base['ms']:.2f} | {r['peak_mb'] / base['peak_mb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=7040, help="tokens (7040 = one 8-latent-frame chunk)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="5 timed steps")
    ap.add_argument("--profile", action="store_true", help="also list the nvfp4 step's kernels")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_linear_train: needs a CUDA GPU", file=sys.stderr)
        return 2
    from longlive_kernels.testing import device_header

    steps = 5 if args.quick else args.steps
    rows = [measure(mode, args.m, steps) for mode in ("bf16", "nvfp4", "w4a16")]
    print(f"\n{device_header()} | M={args.m}\n")
    print(markdown(rows))
    if args.profile:
        profile("nvfp4", args.m)
    return 0


def test_bench_linear_train_quick(benchmark=None):  # pytest-benchmark entry point (GPU only)
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rows = [measure(mode, 1024, 2) for mode in ("bf16", "nvfp4")]
    assert rows[1]["peak_mb"] < rows[0]["peak_mb"]


if __name__ == "__main__":
    sys.exit(main())
