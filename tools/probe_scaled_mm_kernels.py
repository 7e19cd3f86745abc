"""Which kernel ``torch._scaled_mm`` (row-wise E4M3, fast accumulation) runs at the FP8 path's
M = 1760, N = 3072 shapes, and its time against cuBLAS BF16 in the same process (CUDA events,
L2 flushed, median). Pairs with ``tools/probe_cublaslt_fp8.cu``, which times every cuBLASLt
algorithm for the same problems. Usage: ``python tools/probe_scaled_mm_kernels.py``."""
import torch
from torch.profiler import ProfilerActivity, profile

from longlive_kernels.testing import cuda_time_ms

for m, n, k in [(1760, 3072, 3072), (1760, 3072, 14336), (7040, 3072, 3072)]:
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    sa = torch.full((m, 1), 0.01, device="cuda")
    sb = torch.full((1, n), 0.01, device="cuda")

    def fp8():
        return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                use_fast_accum=True)

    t_bf = cuda_time_ms(lambda: a @ b.t(), iters=100)
    t_f8 = cuda_time_ms(fp8, iters=100)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fp8(), a @ b.t()
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})
    print(f"M {m} N {n} K {k}: BF16 {t_bf * 1e3:.2f} us, _scaled_mm {t_f8 * 1e3:.2f} us = "
          f"x{t_bf / t_f8:.3f} BF16")
    for name in names:
        print("   kernel:", name[:200])
