"""Probe (device): where the host (Python + dispatch) time of an NVFP4 QAT training step goes.

The step of ``bench/fp4/bench_linear_train.py`` (one 5B block's linears, M = 7040) under cProfile,
after warm-up; prints the wall time per step with and without the profiler, then the functions by own
time and by cumulative time. The GPU work of the step is ~16 ms on an H100, so host time above that
shows up as idle GPU."""
import cProfile
import pstats
import sys
import time

import torch

sys.path.insert(0, "bench/fp4")
from bench_linear_train import setup

M = int(sys.argv[1]) if len(sys.argv) > 1 else 7040
block, x, grads = setup("nvfp4", M)


def step():
    torch.autograd.backward(block(x), grads)


for _ in range(3):
    step()
torch.cuda.synchronize()
host, wall = [], []
for _ in range(10):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()  # enqueue only: the GPU starts idle, so no launch-queue back pressure
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    host.append(t1 - t0)
    wall.append(time.perf_counter() - t0)
print(f"host time to enqueue one step: {sorted(host)[5] * 1e3:.2f} ms; step with the GPU: {sorted(wall)[5] * 1e3:.2f} ms")
pr = cProfile.Profile()
pr.enable()
for _ in range(10):
    step()
torch.cuda.synchronize()
pr.disable()
st = pstats.Stats(pr)
st.sort_stats("tottime").print_stats(30)
st.sort_stats("cumtime").print_stats(45)
st.print_callees("dequantize_nvfp4_t|transpose_nvfp4|_gemm_predecode|gemm_hopper.py.*gemm|_quantize_cuda")
