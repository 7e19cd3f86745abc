"""Probe (device): the CUDA row-wise FP8 quantizer (``csrc/fp4/fp8_quantize.cu``) against the Triton
one (``gemm_fp8._fp8_rowwise_kernel``) at the DiT's activation shapes, with and without the FFN's
GELU: codes and scales bit-equal (random rows plus NaN / Inf / all-zero / -0 rows), device time with
L2 flushed and the host hidden, per vectors-per-thread choice. Then the FFN's second linear with its
producer (``fp8_linear(..., input_activation="gelu_tanh")`` against torch GELU + cuBLAS BF16), with
each quantizer. Usage: ``python tools/probe_fp8_quantize_cuda.py``."""
# ruff: noqa: B023 (every closure below runs within its loop iteration)
import torch
import torch.nn.functional as F

from longlive_kernels.fp4 import gemm_fp8
from longlive_kernels.fp4.gemm_fp8 import _quantize, fp8_linear
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms

copy = copy_bandwidth_gbs()
print(f"copy {copy:.0f} GB/s")
torch.manual_seed(0)
for rows, k, gelu in ((1760, 14336, True), (7040, 14336, True), (1760, 3072, False), (7040, 3072, False),
                      (1760, 3072, True)):
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) * 3
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    x[3] = 0.0
    x[4] = -0.0
    x[5, ::3] = -0.0
    nbytes = rows * k * 3 + rows * 4
    q_t, s_t = _quantize(x, gelu, impl="triton")
    t_tri = cuda_time_ms(lambda: _quantize(x, gelu, impl="triton"), hide_host=True, iters=100)
    line = f"[{rows}, {k}] gelu={gelu}: triton {t_tri * 1e3:6.1f} us ({nbytes / t_tri / 1e6 / copy:.2f}x copy)"
    if gelu:  # against quantizing torch's bf16 F.gelu(x, "tanh"): the fused GELU's last-bit differences
        q_r, s_r = _quantize(F.gelu(x, approximate="tanh"), False, impl="triton")
        diff = (q_r.view(torch.uint8) != q_t.view(torch.uint8)).float().mean().item()
        line += f"; vs quantize(torch gelu): {diff:.2e} of codes, {(s_r != s_t).float().mean().item():.2e} of scales differ"
    print(line, flush=True)
    for iters in (0, 1, 2, 3, 4, 6, 8):
        threads = -(-(-(-k // 8) // iters) // 32) * 32 if iters else 0
        if iters and threads > 512:
            continue
        q = torch.empty_like(q_t)
        s = torch.full_like(s_t, -1.0)

        def run():
            torch.ops.longlive_kernels.fp8_rowwise_quantize_cuda(x, q, s, gelu, iters)

        run()
        same_q = torch.equal(q.view(torch.uint8), q_t.view(torch.uint8))
        same_s = torch.equal(s, s_t)
        nq = int((q.view(torch.uint8) != q_t.view(torch.uint8)).sum())
        t = cuda_time_ms(run, hide_host=True, iters=100)
        print(f"    cuda iters {iters} ({'default' if not iters else f'{threads} threads'}): {t * 1e3:6.1f} us "
              f"({nbytes / t / 1e6 / copy:.2f}x copy, x{t_tri / t:.2f} triton) codes equal {same_q} ({nq} differ) "
              f"scales equal {same_s}", flush=True)

# the FFN's second linear with its producer, each quantizer
for m in (1760, 7040):
    x = torch.randn(m, 14336, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 14336, device="cuda", dtype=torch.bfloat16) / 120
    w8s = (w.float().abs().amax(1) / 448).clamp_min(1e-12)
    w8 = (w.float() / w8s[:, None]).to(torch.float8_e4m3fn)
    t_bf = cuda_time_ms(lambda: F.linear(F.gelu(x, approximate="tanh"), w), hide_host=True, iters=100)
    res = {}
    cuda_ok = gemm_fp8._cuda_quantize_ok
    for name in ("triton", "cuda"):
        if name == "triton":  # auto takes Triton where the CUDA quantizer declines
            gemm_fp8._cuda_quantize_ok = lambda t: False
        try:
            res[name] = cuda_time_ms(lambda: fp8_linear(x, w8, w8s, input_activation="gelu_tanh"), hide_host=True,
                                     iters=100)
        finally:
            gemm_fp8._cuda_quantize_ok = cuda_ok
    print(f"M {m} 14336 -> 3072: gelu+bf16 {t_bf * 1e3:.1f} us; fp8 linear gelu: triton quantizer "
          f"{res['triton'] * 1e3:.1f} us (x{t_bf / res['triton']:.3f}), cuda quantizer {res['cuda'] * 1e3:.1f} us "
          f"(x{t_bf / res['cuda']:.3f})", flush=True)
