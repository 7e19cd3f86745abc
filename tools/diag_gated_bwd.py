"""Diag (not shipped): launch shapes of the gated-residual backward and the partial-sum kernel."""
import torch
from longlive_kernels.attention import adaln as A
from longlive_kernels.attention.gated_residual_bwd import gated_residual_backward
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms
copy = copy_bandwidth_gbs()
for n_tok in (7040, 56320):
    F = n_tok // 880
    g = torch.randn(1, n_tok, 3072, device="cuda").bfloat16()
    y = torch.randn(1, n_tok, 3072, device="cuda").bfloat16()
    gate = torch.randn(1, F, 3072, device="cuda")
    nbytes = 3 * g.numel() * 2
    ref_dy, ref_dg = gated_residual_backward(g, y, gate, 880, True, torch.float32)
    exp = (g.float().view(1, F, 880, 3072) * y.float().view(1, F, 880, 3072)).sum(2)
    print(n_tok, "dgate err", (ref_dg - exp).abs().max().item())
    for br, bc, pps, w in [(8, 256, 16, 4), (4, 512, 16, 4), (8, 512, 8, 4), (16, 256, 8, 4), (8, 256, 8, 4),
                           (16, 512, 8, 8), (2, 1024, 16, 4), (4, 256, 24, 4)]:
        fn = lambda: gated_residual_backward(g, y, gate, 880, True, torch.float32, block_rows=br, block_cols=bc,
                                             programs_per_sm=pps, num_warps=w)
        dy, dg = fn()
        ok = torch.equal(dy, ref_dy) and torch.allclose(dg, ref_dg, rtol=1e-5, atol=1e-3)
        t = cuda_time_ms(fn, iters=50, hide_host=True)
        t0 = cuda_time_ms(lambda: gated_residual_backward(g, y, gate, 880, False, torch.float32, block_rows=br,
                                                          block_cols=bc, programs_per_sm=pps, num_warps=w),
                          iters=50, hide_host=True)
        print(f"  BR={br} BC={bc} pps={pps} w={w}: {t*1e3:.1f} us = {nbytes/(t*1e-3)/1e9/copy:.2f}x copy"
              f" (no dgate {t0*1e3:.1f} us = {2*g.numel()*2/(t0*1e-3)/1e9/copy:.2f}x) ok={ok}")
