"""nvfp4_gemm, fp8_gemm / quantize_fp8_rowwise, fp8_linear and transpose_nvfp4: input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longlive_kernels.fp4 import NVFP4Tensor, fp8_gemm, nvfp4_gemm, quantize_fp8_rowwise, quantize_nvfp4

from ._gemm_helpers import _rand


def _bad_k_tensor() -> NVFP4Tensor:
    t = quantize_nvfp4(_rand(0, 4, 48), backend="torch")
    return dataclasses.replace(t, shape=torch.Size((4, 40)))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda a, b: nvfp4_gemm(a, quantize_nvfp4(_rand(1, 8, 64), backend="torch")), ValueError, "K mismatch"),
        (lambda a, b: nvfp4_gemm(_rand(0, 4, 48).bfloat16(), _bad_k_tensor()), ValueError, "multiple of 16"),
        (lambda a, b: nvfp4_gemm(a, b.to_blocked()), ValueError, "swizzled"),
        (lambda a, b: nvfp4_gemm(a.to_blocked(), b), ValueError, "swizzled"),
        (lambda a, b: nvfp4_gemm(_rand(0, 4, 48), b), TypeError, "dtype"),
        (lambda a, b: nvfp4_gemm(a, _rand(0, 8, 48)), TypeError, "NVFP4Tensor"),
        (lambda a, b: nvfp4_gemm([1, 2], b), TypeError, "NVFP4Tensor or a torch.Tensor"),
        (lambda a, b: nvfp4_gemm(a, b, out_dtype=torch.int32), TypeError, "out_dtype"),
        (lambda a, b: nvfp4_gemm(a, b, bias=torch.zeros(7)), ValueError, "bias"),
        (lambda a, b: nvfp4_gemm(a, b, a_scale=torch.ones(1)), ValueError, "a_scale"),
        (lambda a, b: nvfp4_gemm(_rand(0, 4, 48).bfloat16(), b, a_scale=torch.ones(1)), ValueError, "float8"),
        (lambda a, b: nvfp4_gemm(a, quantize_nvfp4(_rand(1, 8, 48), hadamard=True, backend="torch")),
         ValueError, "Hadamard"),
        (lambda a, b: nvfp4_gemm(_rand(0, 4, 48).bfloat16(), b, bias=torch.zeros(8, device="meta")),
         ValueError, "one device"),
        (lambda a, b: nvfp4_gemm(a, b, algorithm="nope"), ValueError, "algorithm"),
        (lambda a, b: nvfp4_gemm(a, b, algorithm="scaled_mm"), ValueError, "compute capability"),
        (lambda a, b: nvfp4_gemm(a, b, backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_input(make, exc, match):
    a = quantize_nvfp4(_rand(0, 4, 48), backend="torch")
    b = quantize_nvfp4(_rand(1, 8, 48), backend="torch")
    with pytest.raises(exc, match=match):
        make(a, b)


@pytest.mark.parametrize(
    "make, exc",
    [
        (lambda q, s: fp8_gemm(q.float(), s, q, s[:1].expand(8).contiguous()), TypeError),
        (lambda q, s: fp8_gemm(q, s, q[:, :16].contiguous(), torch.ones(8)), ValueError),
        (lambda q, s: fp8_gemm(q, s[:2], q, s), ValueError),
        (lambda q, s: quantize_fp8_rowwise(torch.zeros(0, 16)), ValueError),
        (lambda q, s: quantize_fp8_rowwise(torch.zeros(4, 16, dtype=torch.int32)), TypeError),
    ],
)
def test_fp8_bad_input(make, exc):
    q, s = quantize_fp8_rowwise(_rand(0, 8, 32), backend="torch")
    with pytest.raises(exc):
        make(q, s)


@pytest.mark.parametrize(
    "make, exc",
    [
        (lambda x, w, s: fp8_linear_(x, w.float(), s), TypeError),
        (lambda x, w, s: fp8_linear_(x[:, :16], w, s), ValueError),
        (lambda x, w, s: fp8_linear_(x, w, s[:2]), ValueError),
        (lambda x, w, s: fp8_linear_(x, w, s, x_scale=torch.ones(8)), ValueError),
        (lambda x, w, s: fp8_linear_(x.to(torch.float8_e4m3fn), w, s), ValueError),
        (lambda x, w, s: fp8_linear_(x, w, s, out_dtype=torch.int32), TypeError),
        (lambda x, w, s: fp8_linear_(x, w, s, bias=torch.zeros(3)), ValueError),
    ],
)
def test_fp8_linear_bad_input(make, exc):
    x = _rand(0, 8, 32)
    w, s = quantize_fp8_rowwise(_rand(1, 8, 32), backend="torch")
    with pytest.raises(exc):
        make(x, w, s)


def fp8_linear_(*args, **kw):
    from longlive_kernels.fp4.gemm_fp8 import fp8_linear

    return fp8_linear(*args, **kw)


def test_transpose_nvfp4_bad_input():
    from longlive_kernels.fp4.gemm_operands import transpose_nvfp4

    w = _rand(0, 32, 32)
    with pytest.raises(ValueError, match="16×16"):
        transpose_nvfp4(quantize_nvfp4(w, backend="torch"))
    with pytest.raises(ValueError, match="Hadamard"):
        transpose_nvfp4(quantize_nvfp4(w, block_2d=True, hadamard=True, backend="torch"))
    with pytest.raises(ValueError, match="rows"):
        transpose_nvfp4(quantize_nvfp4(_rand(0, 20, 32), block_2d=True, backend="torch"))
    with pytest.raises(TypeError):
        transpose_nvfp4(w)
