"""nvfp4_gemm and the FP8 path on the GPU: full model shapes, the FP8 GEMM's error over K, the hardware
FP8 quantization, fp8_linear."""

from __future__ import annotations

import pytest
import torch

from longlive_kernels.fp4 import fp8_gemm, nvfp4_gemm, quantize_fp8_rowwise, quantize_nvfp4
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.testing import assert_bitwise_equal, rel_err

from ._gemm_helpers import FP8_MMA_TOL, FP32_TOL, _make_a, _rand


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 100, 256, 1760])
@pytest.mark.parametrize("k,n", [(3072, 3072), (3072, 9216), (14336, 3072)])
@pytest.mark.parametrize("kind", ["nvfp4", "bf16", "fp8_row"])
def test_gpu_full_shapes(m, k, n, kind):
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda") / k**0.5
    a, a_scale = _make_a(kind, x, 0)
    if a_scale is not None:
        a_scale = a_scale.cuda()
    b = quantize_nvfp4(w)
    bias = torch.randn(n, device="cuda")
    out = nvfp4_gemm(a, b, bias=bias, a_scale=a_scale, out_dtype=torch.float32)
    expect = nvfp4_gemm(a, b, bias=bias, a_scale=a_scale, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(out, expect) <= FP32_TOL
    if m <= 64 and n <= 3072:
        assert rel_err(out, nvfp4_gemm(a, b, bias=bias, a_scale=a_scale, out_dtype=torch.float32,
                                       backend="torch")) <= FP32_TOL
    out16 = nvfp4_gemm(a, b, bias=bias, a_scale=a_scale)
    assert rel_err(out16, out) <= 2.0**-8


@pytest.mark.gpu
def test_gpu_fp8_path():
    x = torch.randn(1760, 3072, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 3072, device="cuda") / 3072**0.5
    xq, xs = quantize_fp8_rowwise(x)
    xq_ref, xs_ref = quantize_fp8_rowwise(x, backend="torch")
    assert_bitwise_equal(xq.view(torch.uint8), xq_ref.view(torch.uint8), "fp8 codes (hardware cvt)")
    assert_bitwise_equal(xs, xs_ref, "row scales")
    wq, ws = quantize_fp8_rowwise(w)
    expect = fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, backend="torch")
    for use in (True, False):
        out = fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, use_scaled_mm=use)
        assert rel_err(out, expect) <= (4e-3 if use else FP8_MMA_TOL)  # cuBLAS: bf16 output, fast accum


@pytest.mark.gpu
@pytest.mark.parametrize("k", [256, 4096])
def test_gpu_fp8_gemm_error_does_not_grow_with_k(k):
    """With the tensor core's partial sums promoted to fp32 every 128 products, the FP8 GEMM's error
    stays within FP8_MMA_TOL at any K (never promoting gives ~1e-3 at K = 3072)."""
    xq, xs = quantize_fp8_rowwise(_rand(11, 512, k, spread=0.0), backend="torch")
    wq, ws = quantize_fp8_rowwise(_rand(12, 256, k, spread=0.0), backend="torch")
    out = fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, use_scaled_mm=False, backend="triton")
    assert rel_err(out, fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, backend="torch")) <= FP8_MMA_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1, 3072, 3072), (1760, 3072, 3072), (7040, 3072, 14336), (300, 14336, 3072),
                                   (64, 20480, 256), (33, 96, 48)])
def test_gpu_fp8_linear(m, k, n):
    """On the GPU: the fused quantization is bit-identical to the reference (single-pass rows up to
    K = 16384, two passes beyond), and fp8_linear equals the two-op path bit for bit (same cuBLAS call)."""
    from longlive_kernels.fp4 import gemm_fp8

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[0, :7] = 0.0
    if m > 2:
        x[1] = 0.0
    w = torch.randn(n, k, device="cuda") / k**0.5
    wq, ws = quantize_fp8_rowwise(w)
    bias = torch.randn(n, device="cuda")
    q1, s1 = ref.quantize_fp8_rowwise(x)
    q2, s2 = gemm_fp8._quantize(x)
    assert_bitwise_equal(q1.view(torch.uint8), q2.view(torch.uint8), "fp8 codes")
    assert_bitwise_equal(s1, s2, "row scales")
    out = gemm_fp8.fp8_linear(x, wq, ws, bias=bias)
    assert_bitwise_equal(out, fp8_gemm(*quantize_fp8_rowwise(x), wq, ws, bias=bias), "fp8_linear vs two ops")
