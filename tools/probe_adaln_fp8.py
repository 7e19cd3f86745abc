"""Probe (device): the row-wise FP8 producers at the 5B model's shapes, device time with L2 flushed:
the fused adaLN writing bf16 h against writing row-wise E4M3 h (``out_fp8=True``) at M = 1760 and
7040 tokens × 3072 (880 tokens per frame), with the launch configuration the autotuner picked; the
stand-alone row-wise quantizer and the GELU-fused one (``gemm_fp8._quantize``). Run it against two
checkouts (``PYTHONPATH``) to A/B a kernel change in one device call."""
import sys

import torch

from longlive_kernels.attention import adaln_modulate, adaln_ops
from longlive_kernels.fp4 import gemm_fp8, quantize_fp8_rowwise
from longlive_kernels.testing import cuda_time_ms

print(f"package: {gemm_fp8.__file__}")
for m, fl in ((1760, 880), (7040, 880)):
    x = torch.randn(1, m, 3072, device="cuda", dtype=torch.bfloat16)
    sh, sc = (torch.randn(1, m // fl, 3072, device="cuda") * 0.5 for _ in range(2))
    with torch.no_grad():
        for fp8 in (False, True):
            fn = lambda x=x, sh=sh, sc=sc, fl=fl, fp8=fp8: adaln_modulate(x, sh, sc, frame_len=fl, out_fp8=fp8)
            fn()
            ms = cuda_time_ms(fn, hide_host=True)
            tuned = adaln_ops._tuned(adaln_ops._residual_norm_fwd_kernel, False)
            print(f"adaLN M={m} fp8={fp8}: {ms*1e3:.1f} us  best={tuned.best_config if tuned else None}", flush=True)

for m, k, gelu in ((1760, 3072, False), (7040, 3072, False), (7040, 14336, True)):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    fn = lambda x=x, gelu=gelu: gemm_fp8._quantize(x, gelu)
    fn()
    copy = cuda_time_ms(lambda x=x: x.clone(), hide_host=True)
    ms = cuda_time_ms(fn, hide_host=True)
    print(f"fp8 quantize{' gelu' if gelu else ''} [{m}, {k}]: {ms*1e3:.1f} us ({copy / ms:.2f}x copy)", flush=True)
x = torch.randn(1760, 3072, device="cuda", dtype=torch.bfloat16)
ms = cuda_time_ms(lambda: quantize_fp8_rowwise(x), hide_host=True)
print(f"quantize_fp8_rowwise [1760, 3072]: {ms*1e3:.1f} us", flush=True)

# --sweep: every forward launch configuration (the autotuner's list plus candidates), one at a time
if "--sweep" in sys.argv:
    import triton

    candidates = [(w, s, p) for w, s, p in ((4, 3, 16), (8, 3, 8), (8, 3, 16), (16, 3, 4), (16, 3, 8), (4, 3, 10))]
    configs = list(adaln_ops._FWD_CONFIGS) + [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w)
                                              for w, s, p in candidates]
    rows = []
    for cfg in configs:
        adaln_ops._tuned = lambda kernel, bwd, cfg=cfg: triton.autotune(configs=[cfg], key=adaln_ops._KEY)(kernel)
        times = []
        for m, fl in ((1760, 880), (7040, 880)):
            x = torch.randn(1, m, 3072, device="cuda", dtype=torch.bfloat16)
            sh, sc = (torch.randn(1, m // fl, 3072, device="cuda") * 0.5 for _ in range(2))
            for fp8 in (False, True):
                fn = lambda x=x, sh=sh, sc=sc, fl=fl, fp8=fp8: adaln_modulate(x, sh, sc, frame_len=fl, out_fp8=fp8)
                with torch.no_grad():
                    fn()
                    times.append(cuda_time_ms(fn, hide_host=True) * 1e3)
        kw = cfg.kwargs
        rows.append(f"| {cfg.num_warps} | {kw['PROGS_PER_SM']} | {kw['STAGES']} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
        print(rows[-1], flush=True)
    print("\n| warps | programs per SM | stages | 1760 bf16 µs | 1760 fp8 µs | 7040 bf16 µs | 7040 fp8 µs |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
