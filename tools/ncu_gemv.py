"""Run one small-M W4A16 GEMM under ``ncu --profile-from-start off`` (issue 3 profiling).

Usage::

    ncu --profile-from-start off --set full python tools/ncu_gemv.py M N K [variant k_unroll splits ablate]

(variant, k_unroll, splits: 0 = the launcher's choice; ablate 1: skip the MMAs)
"""

import math
import sys

import torch

from longlive_kernels.fp4 import gemm_ops, quantize_nvfp4

m, n, k = (int(v) for v in sys.argv[1:4])
variant, k_unroll, splits, ablate = (int(v) for v in (sys.argv[4:] + ["0"] * 4)[:4])
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
wq = quantize_nvfp4((torch.randn(n, k, device="cuda", generator=g) / math.sqrt(k)).to(torch.bfloat16))
args = (x, None, None, wq.data, wq.scale, wq.global_scale.reshape(1).float(), None, torch.bfloat16, False)
for _ in range(3):
    gemm_ops._gemm_cuda(*args, splits=splits, variant=variant, k_unroll=k_unroll, ablate=ablate)
torch.cuda.synchronize()
torch.cuda.profiler.start()
gemm_ops._gemm_cuda(*args, splits=splits, variant=variant, k_unroll=k_unroll, ablate=ablate)
torch.cuda.synchronize()
torch.cuda.profiler.stop()
