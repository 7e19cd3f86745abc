"""The CUDA small-M NVFP4 GEMM (``csrc/fp4/nvfp4_gemv.cu``): ``nvfp4_gemm(backend="cuda")`` and its raw
op ``longlive_kernels::nvfp4_gemv_cuda`` against the exact dequantize path, on the GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.fp4 import gemm_ops, nvfp4_gemm, quantize_nvfp4
from longlive_kernels.testing import assert_bitwise_equal, rel_err

from ._gemm_helpers import FP32_TOL

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_extension()),
                       reason="needs a GPU and the built CUDA extension"),
]

GUARD = 256  # poisoned elements after the output, which no launch may write


def _operands(seed: int, m: int, n: int, k: int, kind: str, spread: float = 3.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g)
    x = x * torch.exp2(torch.empty(m, k, device="cuda").uniform_(-spread, spread, generator=g))
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    w = w * torch.exp2(torch.empty(n, k, device="cuda").uniform_(-spread, spread, generator=g))
    a = quantize_nvfp4(x) if kind == "nvfp4" else x.bfloat16()
    return a, quantize_nvfp4(w), g


def _raw(a, b, bias, out_dtype, splits, variant, k_unroll=0):
    """The raw op into a NaN-poisoned buffer with a guard band; returns (out, guard)."""
    m, n = a.shape[0], b.shape[0]
    buf = torch.full((m * n + GUARD,), float("nan"), device="cuda", dtype=out_dtype)
    out = buf[: m * n].view(m, n)
    if isinstance(a, torch.Tensor):
        x, x_gs = a, None
    else:
        x, x_gs = gemm_ops._unit_scale(a.data, a.scale, torch.bfloat16), a.global_scale.reshape(1).float()
    torch.ops.longlive_kernels.nvfp4_gemv_cuda(x, b.data, b.scale.view(torch.uint8),
                                               b.global_scale.reshape(1).float(), x_gs, bias, out, splits, variant,
                                               k_unroll)
    return out, buf[m * n:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 64), n=st.integers(1, 700), kb=st.integers(1, 6), kind=st.sampled_from(["bf16", "nvfp4"]),
       variant=st.integers(0, 3), ku=st.sampled_from([0, 1, 2, 4]), splits=st.sampled_from([0, 1, 2, 3, 5, 8]),
       bias=st.sampled_from([None, torch.bfloat16, torch.float32]), seed=st.integers(0, 2**31 - 1))
def test_gpu_cuda_gemv_matches_the_exact_path(m, n, kb, kind, variant, ku, splits, bias, seed):
    """Every launch shape, stage depth and K split: FP32 output within FP32 summation order of the exact dequantize
    path, every output element written and nothing past it, repeated calls bit-identical, and the
    bf16 output the FP32 output rounded once (the same sums)."""
    k = 128 * kb * max(ku, 1)
    a, b, g = _operands(seed, m, n, k, kind)
    bias_t = None if bias is None else torch.randn(n, device="cuda", generator=g).to(bias)
    out, guard = _raw(a, b, bias_t, torch.float32, splits, variant, ku)
    expect = nvfp4_gemm(a, b, bias=bias_t, out_dtype=torch.float32, algorithm="dequantize")
    assert not torch.isnan(out).any(), "an output element was not written"
    assert torch.isnan(guard).all(), "the kernel wrote past the output"
    assert rel_err(out, expect) <= FP32_TOL
    assert_bitwise_equal(_raw(a, b, bias_t, torch.float32, splits, variant, ku)[0], out, "repeated call")
    low, low_guard = _raw(a, b, bias_t, torch.bfloat16, splits, variant, ku)
    assert torch.isnan(low_guard).all()
    assert_bitwise_equal(low, out.to(torch.bfloat16), "bf16 output vs FP32 output rounded")


@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("k,n", [(3072, 3072), (14336, 3072), (3072, 14336)])
def test_gpu_cuda_gemv_model_shapes(m, k, n):
    """The 5B model's shapes through ``nvfp4_gemm``: ``backend="cuda"`` against the exact path, and
    ``backend="auto"`` takes the same kernel (bit-identical)."""
    a, b, g = _operands(m + k + n, m, n, k, "bf16", spread=1.0)
    bias = torch.randn(n, device="cuda", generator=g)
    out = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, backend="cuda")
    assert rel_err(out, nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="dequantize")) <= FP32_TOL
    assert_bitwise_equal(nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32), out, "backend='auto' vs 'cuda'")
    a4 = quantize_nvfp4(a.float())
    expect4 = nvfp4_gemm(a4, b, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(nvfp4_gemm(a4, b, out_dtype=torch.float32, backend="cuda"), expect4) <= FP32_TOL


def test_gpu_cuda_gemv_rejects_what_it_cannot_run():
    """``backend="cuda"`` outside the kernel's domain is a ValueError naming it; the raw op checks its
    arguments (RuntimeError from TORCH_CHECK, naming the argument)."""
    a, b, _ = _operands(0, 65, 256, 256, "bf16")
    with pytest.raises(ValueError, match="M=65"):
        nvfp4_gemm(a, b, backend="cuda")
    with pytest.raises(ValueError, match="K=272"):
        nvfp4_gemm(torch.randn(4, 272, device="cuda").bfloat16(), quantize_nvfp4(torch.randn(8, 272, device="cuda")),
                   backend="cuda")
    with pytest.raises(ValueError, match="float16"):
        nvfp4_gemm(a[:4].half(), b, backend="cuda")
    with pytest.raises(ValueError, match="algorithm='dequantize'"):
        nvfp4_gemm(a[:4], b, backend="cuda", algorithm="dequantize")
    x = a[:4].contiguous()
    gs = b.global_scale.reshape(1).float()
    out = torch.empty(4, 256, device="cuda", dtype=torch.bfloat16)
    op = torch.ops.longlive_kernels.nvfp4_gemv_cuda
    with pytest.raises(RuntimeError, match="w must be contiguous uint8"):
        op(x, b.data[:, :64], b.scale.view(torch.uint8), gs, None, None, out, 0, 0, 0)
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        op(x, b.data, b.scale.view(torch.uint8), gs, None, None, out[:, :128], 0, 0, 0)
    with pytest.raises(RuntimeError, match="splits must be in"):
        op(x, b.data, b.scale.view(torch.uint8), gs, None, None, out, 9, 0, 0)
    with pytest.raises(RuntimeError, match="bias must be contiguous"):
        op(x, b.data, b.scale.view(torch.uint8), gs, None, torch.zeros(255, device="cuda"), out, 0, 0, 0)


def test_gpu_extension_check_failures_raise():
    """A failed argument check with a formatted message is a RuntimeError, not a crash (a number
    formatted through c10::str crashed inside the extension on the GPU image; bindings.cpp formats
    with snprintf)."""
    x = torch.randn(4, 24, device="cuda")  # K = 24: not a multiple of 16
    u8 = torch.zeros(48, dtype=torch.uint8, device="cuda")
    one = torch.ones(1, device="cuda")
    with pytest.raises(RuntimeError, match="K must be a multiple of 16, got 24"):
        torch.ops.longlive_kernels.nvfp4_quantize_cuda(x, u8, u8[:6], one.clone(), one,
                                                       torch.zeros(1, dtype=torch.int32, device="cuda"), 0, False, 0,
                                                       -1, False, False)
    a, b, _ = _operands(1, 65, 128, 128, "bf16")
    out = torch.empty(65, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"M must be in \[1, 64\], got 65"):
        torch.ops.longlive_kernels.nvfp4_gemv_cuda(a, b.data, b.scale.view(torch.uint8), b.global_scale.reshape(1).float(),
                                                   None, None, out, 0, 0, 0)


def test_gpu_cuda_gemv_misaligned_rows_fall_back():
    """bf16 rows that are not 16-byte aligned: ``auto`` takes the Triton kernel (same result), an
    explicit ``backend="cuda"`` is a ValueError naming the alignment."""
    a, b, _ = _operands(2, 16, 256, 256, "bf16")
    big = torch.zeros(16, 260, device="cuda", dtype=torch.bfloat16)  # row stride 520 bytes
    big[:, :256] = a
    view = big[:, :256]
    expect = nvfp4_gemm(a, b, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(nvfp4_gemm(view, b, out_dtype=torch.float32), expect) <= FP32_TOL
    with pytest.raises(ValueError, match="16-byte aligned rows"):
        nvfp4_gemm(view, b, backend="cuda")
