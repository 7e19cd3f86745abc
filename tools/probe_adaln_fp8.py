"""Probe (device): the fused adaLN writing bf16 h against writing row-wise E4M3 h (``out_fp8=True``)
at M = 1760 and 7040 tokens × 3072 (880 tokens per frame): device time, L2 flushed, and the launch
configuration the autotuner picked."""
import torch

from longlive_kernels.attention import adaln_modulate, adaln_ops
from longlive_kernels.testing import cuda_time_ms

for m, fl in ((1760, 880), (7040, 880)):
    x = torch.randn(1, m, 3072, device="cuda", dtype=torch.bfloat16)
    sh, sc = (torch.randn(1, m // fl, 3072, device="cuda") * 0.5 for _ in range(2))
    with torch.no_grad():
        for fp8 in (False, True):
            fn = lambda x=x, sh=sh, sc=sc, fl=fl, fp8=fp8: adaln_modulate(x, sh, sc, frame_len=fl, out_fp8=fp8)
            fn()
            ms = cuda_time_ms(fn, hide_host=True)
            tuned = adaln_ops._tuned(adaln_ops._residual_norm_fwd_kernel, False)
            print(f"M={m} fp8={fp8}: {ms*1e3:.1f} us  best={tuned.best_config if tuned else None}", flush=True)
