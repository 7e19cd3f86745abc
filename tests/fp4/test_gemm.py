"""nvfp4_gemm and the FP8 path: kernels vs the fp64 reference, exactness, input errors.

Oracle: ``reference.nvfp4_gemm`` multiplies the decoded operands in fp64. With an fp32 output the
kernels differ from it only by fp32 summation (rel. Frobenius error ~1e-7, bound 1e-5 — tighter than
the issue's 1e-3); with a bf16 output by one bf16 rounding (bound 2^-7; the CPU interpreter
truncates instead of rounding).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import example, given
from hypothesis import strategies as st

from longlive_kernels.fp4 import (
    NVFP4Tensor,
    fp8_gemm,
    gemm_dequant,
    gemm_ops,
    nvfp4_gemm,
    quantize_fp8_rowwise,
    quantize_nvfp4,
)
from longlive_kernels.fp4 import gemm as gemm_mod
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.fp4.gemm_dequant import dequant_nvfp4_tile
from longlive_kernels.testing import assert_bitwise_equal, cosine, rel_err, triton_device

DEV = triton_device()  # "cpu" under the interpreter, "cuda" on a GPU machine
FP32_TOL = 1e-5
BF16_TOL = 2.0**-7
# FP8 tensor cores (Hopper) add products with ~13 mantissa bits, truncating (DeepSeek-V3 §3.5.2), and
# the FP8 GEMM promotes to fp32 every fp8.FP8_PROMOTE_EVERY = 128 products: at most 128/32 + 1
# truncations of 2^-13 relative per promoted partial sum. The interpreter multiplies in fp32.
FP8_MMA_TOL = FP32_TOL if DEV == "cpu" else (128 // 32 + 1) * 2.0**-13


def _rand(seed: int, *shape: int, spread: float = 3.0) -> torch.Tensor:
    """Gaussian values times 2^U(-spread, spread): several binades, never all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.empty(*shape).uniform_(-spread, spread, generator=g))
    return x.to(DEV)


def _make_a(kind: str, x: torch.Tensor, seed: int):
    """(a, a_scale) for an operand kind."""
    if kind == "nvfp4":
        return quantize_nvfp4(x, backend="torch"), None
    if kind == "bf16":
        return x.bfloat16(), None
    if kind == "fp16":
        return x.half(), None
    q, s = quantize_fp8_rowwise(x, backend="torch")
    if kind == "fp8_row":
        return q, s
    return q, torch.tensor(0.75, device=x.device)  # fp8 with a per-tensor scale


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.sampled_from([1, 2, 7, 16, 33, 70]),
    n=st.sampled_from([1, 5, 16, 40, 72]),
    kblocks=st.integers(1, 12),
    kind=st.sampled_from(["nvfp4", "bf16", "fp16", "fp8_row", "fp8_tensor"]),
    has_bias=st.booleans(),
    block_2d=st.booleans(),
)
@example(seed=3, m=1, n=1, kblocks=1, kind="nvfp4", has_bias=True, block_2d=False)
def test_triton_matches_fp64_reference_small_m(seed, m, n, kblocks, kind, has_bias, block_2d):
    """Split-K path (M ≤ 256), ragged M/N, K not a multiple of the tile, every operand kind."""
    k = 16 * kblocks
    x, w = _rand(seed, m, k), _rand(seed + 1, n, k)
    bias = _rand(seed + 2, n) if has_bias else None
    a, a_scale = _make_a(kind, x, seed)
    b = quantize_nvfp4(w, block_2d=block_2d, backend="torch")
    out = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, a_scale=a_scale, backend="triton")
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, a_scale=a_scale, backend="torch")
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert rel_err(out, expect) <= FP32_TOL


@pytest.mark.parametrize("kind", ["nvfp4", "bf16"])
@pytest.mark.parametrize("m,n,k", [(261, 37, 80), (300, 20, 64)])
def test_triton_matches_fp64_reference_large_m(kind, m, n, k):
    """The non-split path (M > 256): ragged M and N, K = 80 not a multiple of the 64-wide tile."""
    x, w = _rand(m + n, m, k), _rand(k, n, k)
    a, _ = _make_a(kind, x, 0)
    b = quantize_nvfp4(w, backend="torch")
    bias = _rand(7, n)
    out = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, backend="triton")
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, backend="torch")
    assert rel_err(out, expect) <= FP32_TOL


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_output_is_one_rounding(out_dtype):
    x, w = _rand(1, 9, 64), _rand(2, 24, 64)
    a, b = quantize_nvfp4(x, backend="torch"), quantize_nvfp4(w, backend="torch")
    exact = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="torch")
    out = nvfp4_gemm(a, b, out_dtype=out_dtype, backend="triton")
    assert out.dtype == out_dtype
    assert rel_err(out, exact) <= BF16_TOL


def test_reference_is_the_decoded_product():
    """The spec itself: decode both operands (with their tensor scales) and multiply in fp64."""
    x, w = _rand(5, 6, 48), _rand(6, 10, 48)
    a, b = quantize_nvfp4(x, backend="torch"), quantize_nvfp4(w, scale_rule="four_over_six", backend="torch")
    out = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="torch")
    manual = a.dequantize(torch.float32, backend="torch").double() @ b.dequantize(torch.float32, backend="torch").double().T
    assert rel_err(out, manual) <= 1e-6


def test_dequantize_algorithm_matches_reference():
    x, w = _rand(8, 20, 96), _rand(9, 30, 96)
    for kind in ("nvfp4", "bf16", "fp8_row"):
        a, a_scale = _make_a(kind, x, 0)
        b = quantize_nvfp4(w, backend="torch")
        out = nvfp4_gemm(a, b, a_scale=a_scale, out_dtype=torch.float32, algorithm="dequantize", backend="triton")
        expect = nvfp4_gemm(a, b, a_scale=a_scale, out_dtype=torch.float32, backend="torch")
        assert rel_err(out, expect) <= FP32_TOL, kind


def test_leading_dims_and_empty_m():
    x, w = _rand(3, 2, 3, 32), _rand(4, 8, 32)
    b = quantize_nvfp4(w, backend="torch")
    out = nvfp4_gemm(quantize_nvfp4(x, backend="torch"), b, backend="triton")
    assert out.shape == (2, 3, 8)
    empty = nvfp4_gemm(torch.empty(0, 32, dtype=torch.bfloat16, device=DEV), b, backend="triton")
    assert empty.shape == (0, 8)


def test_split_k_is_deterministic_and_leaves_counters_zero():
    x, w = _rand(11, 5, 512), _rand(12, 40, 512)
    a, b = quantize_nvfp4(x, backend="torch"), quantize_nvfp4(w, backend="torch")
    cfg = gemm_mod._small_m_config(5, 40, 512, 8, True)  # (the interpreter's SM count)
    assert cfg[-1] > 1, "this shape must exercise split-K"
    o1 = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="triton")
    o2 = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="triton")
    assert_bitwise_equal(o1, o2, "split-K output")
    assert int(gemm_mod._semaphores(o1.device, 1).abs().sum()) == 0


def test_hadamard_operands_give_the_plain_product():
    """wgrad GEMM: both operands rotated by the same RHT along K; the product is unchanged."""
    x, w = _rand(13, 12, 64, spread=1.0), _rand(14, 20, 64, spread=1.0)
    a = quantize_nvfp4(x, hadamard=True, backend="torch")
    b = quantize_nvfp4(w, hadamard=True, backend="torch")
    out = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="triton")
    expect = nvfp4_gemm(a, b, out_dtype=torch.float32, backend="torch")
    assert rel_err(out, expect) <= FP32_TOL
    assert cosine(out, x @ w.T) > 0.97


def test_nan_block_propagates():
    x, w = _rand(15, 4, 32), _rand(16, 8, 32)
    gs = x.abs().amax() / 2688  # a given tensor scale: only the NaN block is poisoned
    x[1, 3] = float("nan")
    out = nvfp4_gemm(quantize_nvfp4(x, global_scale=gs, backend="torch"), quantize_nvfp4(w, backend="torch"),
                     out_dtype=torch.float32, backend="triton")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()


# --- bad input ------------------------------------------------------------------------------------


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


# --- the FP8 path -------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), k=st.sampled_from([16, 48, 200]),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_fp8_quantize_triton_bit_exact(seed, rows, k, dtype):
    x = _rand(seed, rows, k, spread=8.0)
    if rows > 2:
        x[1] = 0.0
    q1, s1 = quantize_fp8_rowwise(x.to(dtype), backend="torch")
    q2, s2 = quantize_fp8_rowwise(x.to(dtype), backend="triton")
    assert_bitwise_equal(q1.view(torch.uint8), q2.view(torch.uint8), "fp8 codes")
    assert_bitwise_equal(s1, s2, "row scales")
    assert torch.all(s1[1] == 1.0) if rows > 2 else True


@pytest.mark.parametrize("m,n,k", [(1, 24, 64), (37, 50, 96)])
def test_fp8_gemm_triton_matches_reference(m, n, k):
    xq, xs = quantize_fp8_rowwise(_rand(1, m, k), backend="torch")
    wq, ws = quantize_fp8_rowwise(_rand(2, n, k), backend="torch")
    bias = _rand(3, n)
    out = fp8_gemm(xq, xs, wq, ws, bias=bias, out_dtype=torch.float32, backend="triton")
    assert rel_err(out, fp8_gemm(xq, xs, wq, ws, bias=bias, out_dtype=torch.float32, backend="torch")) <= FP8_MMA_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("k", [256, 4096])
def test_gpu_fp8_gemm_error_does_not_grow_with_k(k):
    """With the tensor core's partial sums promoted to fp32 every 128 products, the FP8 GEMM's error
    stays within FP8_MMA_TOL at any K (never promoting gives ~1e-3 at K = 3072)."""
    xq, xs = quantize_fp8_rowwise(_rand(11, 512, k, spread=0.0), backend="torch")
    wq, ws = quantize_fp8_rowwise(_rand(12, 256, k, spread=0.0), backend="torch")
    out = fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, use_scaled_mm=False, backend="triton")
    assert rel_err(out, fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, backend="torch")) <= FP8_MMA_TOL


def test_fp8_path_error_against_the_exact_nvfp4_path():
    """Documents the FP8 path's error on Gaussian data (K=256): relative to the float GEMM it is
    ~3.7% (two row-wise E4M3 roundings) against ~13% for exact W4A4 NVFP4 — 3.6× closer — and it
    differs from the exact NVFP4 result by about the NVFP4 error itself."""
    x, w = _rand(21, 64, 256, spread=0.0), _rand(22, 96, 256, spread=0.0)
    exact_float = x.double() @ w.double().T
    nv = nvfp4_gemm(quantize_nvfp4(x, backend="torch"), quantize_nvfp4(w, backend="torch"),
                    out_dtype=torch.float32, backend="torch")
    xq, xs = quantize_fp8_rowwise(x, backend="torch")
    wq, ws = quantize_fp8_rowwise(w, backend="torch")
    f8 = fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, backend="torch")
    err_nv, err_f8, err_between = rel_err(nv, exact_float), rel_err(f8, exact_float), rel_err(f8, nv)
    assert 0.08 < err_nv < 0.2  # NVFP4 W4A4 (two 1×16 quantizations, ~0.1 each)
    assert err_f8 < 0.05 and err_f8 < err_nv / 3
    assert abs(err_between - err_nv) < 0.05


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


# --- fp8_linear: the FP8 path in one call (fused row-wise quantization + FP8 GEMM) -----------------


@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 11), k=st.sampled_from([16, 48, 200, 1024, 1040, 2064]),
       dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
@example(seed=1, rows=3, k=2064, dtype=torch.bfloat16)  # the interpreter's two-pass path (K > 1024)
def test_fp8_linear_quantization_bit_exact(seed, rows, k, dtype):
    """The fused row-wise kernel (one HBM read per row) gives the reference's codes and scales bit for
    bit: single-pass rows and the chunked two-pass path, all-zero rows (scale 1)."""
    from longlive_kernels.fp4 import gemm_fp8

    x = _rand(seed, rows, k, spread=8.0).to(dtype)
    if rows > 2:
        x[1] = 0.0
    q1, s1 = ref.quantize_fp8_rowwise(x)
    q2, s2 = gemm_fp8._quantize(x)
    assert_bitwise_equal(q1.view(torch.uint8), q2.view(torch.uint8), "fp8 codes")
    assert_bitwise_equal(s1, s2, "row scales")


@pytest.mark.parametrize("lead,n,k", [((1,), 24, 64), ((37,), 50, 96), ((2, 5), 16, 2064)])
@pytest.mark.parametrize("prequantized", [False, True])
def test_fp8_linear_matches_the_two_op_path(lead, n, k, prequantized):
    """fp8_linear == fp8_gemm(*quantize_fp8_rowwise(x), w, w_scale) (same quantization, same GEMM);
    leading dims; an already quantized (x, x_scale) pair."""
    from longlive_kernels.fp4.gemm_fp8 import fp8_linear

    x = _rand(31, *lead, k)
    wq, ws = quantize_fp8_rowwise(_rand(32, n, k), backend="torch")
    bias = _rand(33, n)
    xq, xs = quantize_fp8_rowwise(x, backend="torch")
    expect = fp8_gemm(xq, xs, wq, ws, bias=bias, out_dtype=torch.float32, backend="triton")
    if prequantized:
        out = fp8_linear(xq, wq, ws, x_scale=xs, bias=bias, out_dtype=torch.float32, backend="triton")
    else:
        out = fp8_linear(x, wq, ws, bias=bias, out_dtype=torch.float32, backend="triton")
    assert out.shape == (*lead, n)
    assert_bitwise_equal(out, expect, "fp8_linear vs quantize + fp8_gemm")
    ref_out = fp8_linear(x, wq, ws, bias=bias, out_dtype=torch.float32, backend="torch")
    assert rel_err(out, ref_out) <= FP8_MMA_TOL


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


# --- the inline-PTX decoders, emulated on the CPU ---------------------------------------------------

_M32 = 0xFFFFFFFF


def _run_ptx(asm: str, operands: list[int]) -> list[int]:
    """Interpret the straight-line PTX of a decode routine (and, shl, shr, prmt, lop3, mad.lo,
    mul.rn.{bf16,f16}x2, cvt.rn.f16x2.e4m3x2, mov.b32 {h, h}) on 32-bit operands ``$i``."""
    import re

    import ml_dtypes
    import numpy as np

    def to_f(bits, dt):
        return float(np.array([bits], dtype=np.uint16).view(dt)[0])

    def from_f(x, dt):
        return int(np.array([x], dtype=dt).view(np.uint16)[0])

    regs = {f"${i}": v for i, v in enumerate(operands)}
    for stmt in asm.replace("{\n", "").split(";"):
        stmt = stmt.strip().strip("{}").strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        args = [a.strip() for a in re.findall(r"\{[^}]*\}|[^,]+", rest)]

        def val(a):
            return regs[a] if a in regs else int(a, 0) & _M32

        if op == "mov.b32":
            lo, hi = (x.strip() for x in args[0].strip("{}").split(","))
            regs[lo], regs[hi] = val(args[1]) & 0xFFFF, val(args[1]) >> 16
            continue
        src = [val(a) for a in args[1:]]
        if op == "and.b32":
            r = src[0] & src[1]
        elif op == "shr.u32":
            r = src[0] >> src[1]
        elif op == "shl.b32":
            r = (src[0] << src[1]) & _M32
        elif op == "mad.lo.u32":
            r = (src[0] * src[1] + src[2]) & _M32
        elif op == "prmt.b32":
            pool = [(src[0] >> 8 * i) & 0xFF for i in range(4)] + [(src[1] >> 8 * i) & 0xFF for i in range(4)]
            r = 0
            for i in range(4):
                sel = (src[2] >> 4 * i) & 0xF
                byte = pool[sel & 7]
                r |= ((0xFF if byte & 0x80 else 0) if sel & 8 else byte) << 8 * i
        elif op == "lop3.b32":
            r = sum(((src[3] >> ((((src[0] >> p) & 1) << 2) | (((src[1] >> p) & 1) << 1) | ((src[2] >> p) & 1))) & 1)
                    << p for p in range(32))
        elif op in ("mul.rn.bf16x2", "mul.rn.f16x2"):
            dt = ml_dtypes.bfloat16 if "bf16" in op else np.float16
            r = sum(from_f(to_f((src[0] >> 16 * h) & 0xFFFF, dt) * to_f((src[1] >> 16 * h) & 0xFFFF, dt), dt) << 16 * h
                    for h in range(2))
        elif op == "cvt.rn.f16x2.e4m3x2":
            e4 = [float(np.array([(src[0] >> 8 * h) & 0xFF], dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)[0])
                  for h in range(2)]
            r = from_f(e4[0], np.float16) | from_f(e4[1], np.float16) << 16
        else:
            raise NotImplementedError(op)
        regs[args[0]] = r
    return [regs[f"${i}"] for i in range(len(operands))]


def _decode_cases():
    from longlive_kernels.fp4 import gemm_gemv, gemm_hopper

    return [
        ("dequant-bf16", gemm_dequant._ASM_BF16.value, torch.bfloat16, 2.0**118, -8, False),
        ("dequant-fp16", gemm_dequant._ASM_FP16.value, torch.float16, 64.0, -8, False),
        ("hopper-bf16", gemm_hopper._DECODE_BF16.value, torch.bfloat16, 2.0**118, -gemm_hopper.BF16_OPERAND_EXP, True),
        ("hopper-fp16", gemm_hopper._DECODE_FP16.value, torch.float16, 64.0, -gemm_hopper.FP16_OPERAND_EXP, True),
        ("gemv-bf16", gemm_gemv._WORD_BF16.value, torch.bfloat16, 2.0**118, -8, "word"),
        ("gemv-fp16", gemm_gemv._WORD_FP16.value, torch.float16, 64.0, 0, "word"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["dequant-bf16", "dequant-fp16", "hopper-bf16", "hopper-fp16",
                                                 "gemv-bf16", "gemv-fp16"])
def test_inline_ptx_decoders_are_exact(case):
    """Every byte with random E4M3 scale codes (all finite codes, both signs, subnormals): the GPU
    decode routines give e2m1 · s · 2^exp exactly (interpreted instruction by instruction)."""
    name, asm, dtype, mult, exp, pairs = _decode_cases()[case]
    g = torch.Generator().manual_seed(case)
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F]
    lut = ref.e2m1_values()
    for start in range(0, 256, 4):
        byte = list(range(start, start + 4))
        sc = codes[torch.randint(0, codes.numel(), (4,), generator=g)].tolist()
        if pairs == "word":  # one scale for the whole 32-bit word
            sc = sc[:1] * 4
        s = torch.tensor(sc, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        sbits = (s.double() * mult).to(dtype).view(torch.int16).int().tolist()
        sbits = [b & 0xFFFF for b in sbits]
        packed = byte[0] | byte[1] << 8 | byte[2] << 16 | byte[3] << 24
        if pairs == "word":  # $4..$11: copies of the word, $12..$19: copies of the scale pair
            out = _run_ptx(asm, [0, 0, 0, 0] + [packed] * 8 + [sbits[0] | sbits[0] << 16] * 8)
            lo = [o & 0xFFFF for o in out[:4]]
            hi = [o >> 16 for o in out[:4]]
        elif pairs:
            out = _run_ptx(asm, [0, 0, 0, 0, packed] + [b | b << 16 for b in sbits])
            lo = [o & 0xFFFF for o in out[:4]]
            hi = [o >> 16 for o in out[:4]]
        else:
            out = _run_ptx(asm, [0, 0, 0, 0, packed, sbits[0] | sbits[1] << 16, sbits[2] | sbits[3] << 16])
            lo = [out[0] & 0xFFFF, out[0] >> 16, out[1] & 0xFFFF, out[1] >> 16]
            hi = [out[2] & 0xFFFF, out[2] >> 16, out[3] & 0xFFFF, out[3] >> 16]
        got = torch.tensor(lo + hi, dtype=torch.int32).to(torch.int16).view(dtype).double()
        nib = torch.tensor([b & 0xF for b in byte] + [b >> 4 for b in byte])
        expect = lut[nib].double() * torch.cat([s, s]).double() * 2.0**exp
        assert torch.equal(got, expect), f"{name}: bytes {byte}, scales {sc}: {got.tolist()} != {expect.tolist()}"


# --- GPU: full shapes, the inline-PTX decode, the exact fallback ------------------------------------


@triton.jit
def _decode_kernel(d_ptr, s_ptr, o_ptr, R: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr,
                   FAST: tl.constexpr):
    r = tl.arange(0, R)
    p = tl.load(d_ptr + r[:, None] * (BK // 2) + tl.arange(0, BK // 2)[None, :])
    s = tl.load(s_ptr + r[:, None] * (BK // 16) + tl.arange(0, BK // 16)[None, :])
    v = dequant_nvfp4_tile(p, s, R, BK, DTYPE, FAST)
    tl.store(o_ptr + r[:, None] * BK + tl.arange(0, BK)[None, :], v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_inline_ptx_decode_is_exact(dtype):
    """Every (code, scale) pair: the inline-PTX decode equals e2m1 · s · 2^-8 bit for bit."""
    data = (torch.arange(64 * 128, device="cuda") % 256).to(torch.uint8).reshape(64, 128)  # all bytes
    sc = (torch.arange(64 * 16, device="cuda") * 7 % 256).to(torch.uint8).reshape(64, 16)  # all codes
    sc = torch.where((sc & 0x7F) == 0x7F, sc - 1, sc)  # no NaN scales here
    tl_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    outs = []
    for fast in (True, False):
        o = torch.empty(64, 256, dtype=dtype, device="cuda")
        _decode_kernel[(1,)](data, sc, o, R=64, BK=256, DTYPE=tl_dtype, FAST=fast)
        outs.append(o)
    expect = ref.dequantize(data, sc.view(torch.float8_e4m3fn), torch.ones((), device="cuda"),
                            dtype=torch.float32) * 2.0**-8
    assert_bitwise_equal(outs[0], outs[1], "fast vs portable decode")
    assert_bitwise_equal(outs[0].float(), expect, "decode vs reference")


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


# --- the Gluon Hopper kernel: compiled for sm_90a here, run on the GPU --------------------------------


def _compile_hopper_kernel(x_nvfp4: bool, bt: int, out=torch.bfloat16, x_dtype=torch.bfloat16):
    """AOT-compile gemm_hopper's kernel for sm_90a (as a JIT launch with aligned operands would);
    ``x_dtype`` is the dense activation dtype of W4A16 (bf16 or fp16)."""
    import os

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    from longlive_kernels.fp4 import gemm_hopper as gh

    m, n, k = 512, 256, 256

    def desc(shape, dtype, block, layout):
        return mangle_type(TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), block, layout))

    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    x_gl = gh._gl_dtype(x_dtype)
    x_desc = desc((m, k // 2), torch.uint8, [bt, gh.BK // 2], u8) if x_nvfp4 else desc(
        (m, k), x_dtype, [bt, gh.BK], gl.NVMMASharedLayout.get_default_for([bt, gh.BK], x_gl))
    sig = {"w_desc": desc((n, k // 2), torch.uint8, [gh.BW, gh.BK // 2], u8), "x_desc": x_desc,
           "out_desc": desc((m, n), out, [bt, gh.BW], gl.NVMMASharedLayout.get_default_for([bt, gh.BW], gh._gl_dtype(out))),
           "w_scale_ptr": "*u8", "x_scale_ptr": "*u8", "bias_ptr": "*bf16", "w_gs_ptr": "*fp32", "x_gs_ptr": "*fp32",
           "M": "i32", "N": "i32", "K": "i32", "stride_ws": "i32", "stride_xs": "i32"}
    constexprs = {"X_NVFP4": x_nvfp4, "X_GS": False, "EVEN_K": True, "HAS_BIAS": True,
                  "OP_DTYPE": gl.float16 if x_nvfp4 else x_gl,
                  "STAGES": gh.STAGES_W4A4 if x_nvfp4 else gh.STAGES_W4A16,
                  "GROUP": gh.GROUP, "num_warps": gh.NUM_WARPS}
    names = list(gh._hopper_gemm_kernel.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, t in sig.items()
             if t.startswith("*") or a in ("stride_ws", "stride_xs")}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=gh._hopper_gemm_kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": gh.NUM_WARPS})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return compiled, bindir


def _ptxas_and_sass(compiled, bindir: str) -> tuple[str, str]:
    """(``ptxas -v`` report for sm_90a, ``cuobjdump -sass`` text) of a compiled Triton/Gluon kernel."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(compiled.asm["ptx"])
        info = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", os.path.join(d, "k.ptx"), "-o",
                               os.path.join(d, "k.o")], capture_output=True, text=True, check=False).stderr
        with open(os.path.join(d, "k.cubin"), "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True, check=False).stdout
    return info, sass


def _report_in_fresh_process(call: str) -> dict:
    """``tests.fp4.test_gemm.<call>`` run in a new interpreter without TRITON_INTERPRET (the CPU
    interpreter patches triton.language process-wide); its JSON result."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"import json, tests.fp4.test_gemm as t; print(json.dumps(t.{call}))"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hopper_compile_report(x_nvfp4: bool, bt: int, out: str, x_dtype: str = "bfloat16") -> dict:
    """Compile, run ptxas -v and cuobjdump; returns what the test checks (run in a subprocess)."""

    compiled, bindir = _compile_hopper_kernel(x_nvfp4, bt, getattr(torch, out), getattr(torch, x_dtype))
    info, sass = _ptxas_and_sass(compiled, bindir)
    hgmma = [i for i in _sass_instructions(sass) if i[1].startswith("HGMMA")]
    return {"ptxas": info, "wgmma": f"HGMMA.64x{bt}x16.F32" in sass, "smem": compiled.metadata.shared,
            "register_a": sum(1 for _, _, args in hgmma if len(args) > 1 and args[1].startswith("R")),
            "hazards": wgmma_register_a_hazards(sass)}


@pytest.mark.parametrize("bt,out", [(256, "bfloat16"), (128, "bfloat16"), (128, "float32")],
                         ids=["256-bf16", "128-bf16", "128-fp32"])
@pytest.mark.parametrize("x_kind", ["bfloat16", "float16", "nvfp4"], ids=["w4a16", "w4a16fp16", "w4a4"])
def test_hopper_kernel_compiles_for_sm90a(x_kind, bt, out):
    """wgmma in SASS, no spills, fits in shared memory, ptxas keeps the wgmma asynchronous (no C7515
    'wgmma.mma_async instructions are serialized' warning), and no wgmma register operand can be
    overwritten while the wgmma runs (operands come from shared memory; the SASS walk finds no
    hazard). Compiled in a fresh process: Triton's CPU interpreter (used by the other tests)
    patches triton.language process-wide."""

    x_nvfp4 = x_kind == "nvfp4"
    x_dtype = "bfloat16" if x_nvfp4 else x_kind
    report = _report_in_fresh_process(f"_hopper_compile_report({x_nvfp4}, {bt}, {out!r}, {x_dtype!r})")
    assert "0 bytes spill stores" in report["ptxas"], report["ptxas"]
    assert "serialized" not in report["ptxas"], report["ptxas"]
    assert report["wgmma"]
    assert report["smem"] <= 227 * 1024
    assert report["register_a"] == 0, "wgmma takes A from registers (RS): see gemm_hopper's docstring"
    assert report["hazards"] == [], report["hazards"]


# --- the Gluon small-M (GEMV) kernel: compiled for sm_90a here, run on the GPU ---------------------


def _gemv_compile_report(x_nvfp4: bool, bm: int, rt: int, kt: int, split: int, op: str, even_k: bool) -> dict:
    """Compile gemm_gemv's kernel for sm_90a (as a launch with 16-divisible strides would) and report
    what the test checks (run in a subprocess)."""
    import os
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from longlive_kernels.fp4 import gemm_gemv as gv

    sig = {"w_ptr": "*i32", "w_scale_ptr": "*u8", "w_gs_ptr": "*fp32", "x_ptr": "*i32", "x_scale_ptr": "*u8",
           "x_gs_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "sem_ptr": "*i32",
           "M": "i32", "N": "i32", "K": "i32", "stride_wn": "i32", "stride_wsn": "i32", "stride_xm": "i32",
           "stride_xsm": "i32", "stride_om": "i32", "k_per_split": "i32"}
    constexprs = {"X_NVFP4": x_nvfp4, "HAS_BIAS": True, "EVEN_K": even_k,
                  "OP_DTYPE": gl.float16 if op == "fp16" else gl.bfloat16, "BM": bm, "RT": rt, "KT": kt,
                  "SPLIT_K": split, "num_warps": gv.NUM_WARPS}
    names = list(gv._gemv_kernel.arg_names)
    div = [a for a, t in sig.items() if t.startswith("*")] + (["stride_wn", "stride_xm", "k_per_split"] if even_k
                                                             else [])
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=gv._gemv_kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": gv.NUM_WARPS})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    info, sass = _ptxas_and_sass(compiled, bindir)
    ins = _sass_instructions(sass)
    loop = []
    for addr, op_, args in ins:  # the main loop: from the target of the first backward branch to it
        if op_ == "BRA" and int(args[-1], 0) < addr:
            loop = [o for a, o, _ in ins if int(args[-1], 0) <= a <= addr]
            break
    return {"ptxas": info, "hmma_in_loop": sum(o.startswith("HMMA") for o in loop),
            "shared_in_loop": sum(o.startswith(("STS", "LDS", "BAR")) for o in loop),
            "ldg128": sum(o.startswith("LDG.E.128") for o in loop), "loop_len": len(loop),
            "local": bool(re.search(r"\b(LDL|STL)\b", sass))}


@pytest.mark.parametrize("cfg", [
    (False, 8, 1, 32, 1, "bf16", True), (False, 16, 2, 32, 4, "bf16", True), (False, 32, 2, 32, 1, "fp16", True),
    (False, 64, 2, 16, 2, "bf16", True), (True, 16, 1, 32, 3, "bf16", True), (True, 64, 1, 16, 1, "bf16", False),
    (False, 8, 1, 32, 2, "bf16", False)],
    ids=["w4a16-m8", "w4a16-m16-split", "w4a16-m32-fp16", "w4a16-m64", "w4a4-m16", "w4a4-m64-raggedk",
         "w4a16-raggedk"])
def test_gemv_kernel_compiles_for_sm90a(cfg):
    """The small-M kernel builds for sm_90a with no spills or local memory; its main loop is
    registers only (the reshape/permute of the loaded words reach the mma.sync operand layouts without
    shared memory: ``assert_trivial`` conversions compile), issues mma.sync (HMMA: RT·(BM/8)·(KT/4) per
    warp and k-step) and, with 16-divisible strides, loads weights with 16-byte (KT=32) vectors."""

    x_nvfp4, bm, rt, kt, split, op, even_k = cfg
    report = _report_in_fresh_process(
        f"_gemv_compile_report({x_nvfp4}, {bm}, {rt}, {kt}, {split}, {op!r}, {even_k})")
    assert "0 bytes spill stores" in report["ptxas"], report["ptxas"]
    assert not report["local"]
    assert report["hmma_in_loop"] == rt * (bm // 8) * (kt // 4), report
    assert report["shared_in_loop"] == 0, report
    if even_k and kt == 32:
        assert report["ldg128"] >= 2 * rt, report


def test_gemv_algorithm_falls_back_where_the_kernel_cannot_run():
    """algorithm='gemv' where the Gluon kernel cannot run (the CPU interpreter, M > 64, fp8 ``a``)
    gives the portable kernel's result."""
    w = quantize_nvfp4(_rand(41, 24, 64), backend="torch")
    for x in (_rand(42, 5, 64).bfloat16(), _rand(43, 70, 64).bfloat16()):
        assert_bitwise_equal(nvfp4_gemm(x, w, algorithm="gemv", backend="triton"),
                             nvfp4_gemm(x, w, algorithm="portable", backend="triton"), "gemv fallback")


@pytest.mark.parametrize("kt", [16, 32])
def test_gemv_k_permutation_is_shared_by_both_operands(kt):
    """The small-M kernel's reshape/permute chains (replayed with torch on element-index tensors, same
    row-major semantics as Gluon's) give the weights and the activations the same K permutation, the
    documented one (MMA k = 16s + 8j + 2q + e ↔ element KT·q + 4s + 2j + e), a bijection of the step."""
    from longlive_kernels.fp4 import gemm_gemv as gv

    nb = kt // 4
    # weights: decoded words [R, NB, 2 words, 8 elements], element 16·nb + 8w + t
    w_idx = torch.arange(4 * kt).reshape(1, nb, 2, 8)
    if kt == 32:
        w_mma = w_idx.reshape(1, 4, 2, 2, 2, 2, 2).permute(gv._W_PERM_KT32.value).reshape(1, 4 * kt)[0]
    else:
        w_mma = w_idx.reshape(1, 4, 2, 2, 2, 2).permute(gv._W_PERM_KT16.value).reshape(1, 4 * kt)[0]
    # activations: 32-bit pairs [BM, 2·KT] as halves [BM, 2·KT, 2], element 2·word + e
    x_idx = torch.arange(4 * kt).reshape(1, 2 * kt, 2)
    x_mma = x_idx.reshape(1, 4, nb, 2, 2).permute(gv._X_PERM.value).reshape(4 * kt, 1)[:, 0]
    assert torch.equal(w_mma, x_mma)
    kk = torch.arange(4 * kt)
    s, j, q, e = kk // 16, (kk // 8) % 2, (kk // 2) % 4, kk % 2
    assert torch.equal(w_mma, kt * q + 4 * s + 2 * j + e)
    assert torch.equal(torch.sort(w_mma).values, kk)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nvfp4", "bf16", "fp16"])
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64])
@pytest.mark.parametrize("k,n", [(3072, 3072), (96, 1000), (14336, 3072), (3072, 14336), (3088, 72)])
def test_gpu_gemv_kernel(kind, m, k, n):
    """The small-M Gluon kernel (called directly, no fallback) against the exact dequantize path (fp32
    output: FP32 summation order only), its low-precision outputs one rounding away, bit-identical over
    repeated calls, split-K counters left zeroed; ``algorithm="gemv"`` takes the same kernel."""
    from longlive_kernels.fp4 import gemm_gemv as gv

    g = torch.Generator(device="cuda").manual_seed(m * 7 + k + n)
    x = torch.randn(m, k, device="cuda", generator=g)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    b = quantize_nvfp4(w)
    bias = torch.randn(n, device="cuda", generator=g)
    if kind == "nvfp4":
        a = quantize_nvfp4(x)
        args = (a.data, a.scale, a.global_scale.reshape(1).float(), True)
    else:
        a = x.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        args = (a, None, None, False)
    assert gv.supported(args[0], args[3], b.data, torch.float32)

    def direct(out_dtype):
        return gv.gemm(args[0], args[1], args[2], b.data, b.scale, b.global_scale.reshape(1).float(), bias,
                       out_dtype, args[3])

    out = direct(torch.float32)
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(out, expect) <= FP32_TOL
    for _ in range(2):
        assert_bitwise_equal(direct(torch.float32), out, "repeated small-M kernel call")
    for _, sem in gv._WORKSPACE.values():
        assert int(sem.abs().sum()) == 0
    low = torch.bfloat16 if kind != "fp16" else torch.float16
    assert rel_err(direct(low), out) <= 2.0**-8
    assert_bitwise_equal(nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="gemv"), out,
                         "algorithm='gemv' vs direct call")


# --- wgmma register-operand hazard (SASS walk) ----------------------------------------------------

_NO_DEST = ("ST", "RED", "BAR", "BRA", "EXIT", "NOP", "MEMBAR", "FENCE", "DEPBAR", "WARPGROUP", "SYNCS", "UTMA",
            "ERRBAR", "CCTL", "WARPSYNC", "CALL", "RET", "YIELD", "BSYNC", "BSSY", "HGMMA")


def _sass_instructions(sass: str) -> list[tuple[int, str, list[str]]]:
    """[(address, opcode, operands)] of a ``cuobjdump -sass`` listing in program order (predicates
    dropped)."""
    import re

    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        text = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(2).strip())
        op, _, rest = text.partition(" ")
        out.append((int(m.group(1), 16), op, [a.strip() for a in rest.split(",")] if rest.strip() else []))
    return out


def _written_registers(op: str, args: list[str]) -> set[int]:
    """General registers an instruction writes: its first operand, widened for .64/.128/.WIDE forms."""
    import re

    if not args or op.startswith(_NO_DEST):
        return set()
    m = re.match(r"R(\d+)", args[0])
    if not m:
        return set()
    width = 4 if ".128" in op else 2 if (".64" in op or ".WIDE" in op) else 1
    return {int(m.group(1)) + j for j in range(width)}


def wgmma_register_a_hazards(sass: str) -> list[str]:
    """HGMMAs taking A from registers (wgmma RS) whose registers some instruction rewrites before a
    ``WARPGROUP.DEPBAR.LE gsb0, n`` has retired that HGMMA's group (PTX: undefined behaviour). Walks
    program order from each HGMMA, counting the groups committed after its own (an HGMMA marked
    ``gsb0`` closes a group), follows backward branches (the main loop) once, falls through forward
    ones."""
    ins = _sass_instructions(sass)
    index = {addr: i for i, (addr, _, _) in enumerate(ins)}
    hazards = []
    for h, (addr, op, args) in enumerate(ins):
        if not op.startswith("HGMMA") or len(args) < 2 or not args[1].startswith("R"):
            continue
        first = int(args[1][1:].split(".")[0])
        regs = {first + j for j in range(4)}
        committed = "gsb0" in args
        later = 0
        i, followed = h + 1, set()
        while i < len(ins):
            a2, op2, args2 = ins[i]
            if op2 == "EXIT":
                break
            if op2.startswith("WARPGROUP.DEPBAR") and committed and later >= int(args2[-1], 0):
                break
            if op2.startswith("HGMMA") and "gsb0" in args2:
                later, committed = (later + 1, True) if committed else (later, True)
            if regs & _written_registers(op2, args2):
                hazards.append(f"HGMMA at {addr:#x} reads R{first}..R{first + 3}; {op2} at {a2:#x} writes "
                               f"{args2[0]} before a wait retires it")
                break
            if op2 == "BRA" and int(args2[-1], 0) <= a2 and a2 not in followed:
                followed.add(a2)
                i = index[int(args2[-1], 0)]
                continue
            i += 1
    return hazards


_RS_LOOP = """
        /*0100*/                   LDS.U8 R152, [R20+0x100] ;
        /*0110*/                   WARPGROUP.ARRIVE ;
        /*0120*/                   HGMMA.64x256x16.F32.BF16 R24, R152, gdesc[UR4], R24, gsb0 ;
        /*0130*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0140*/               @P0 BRA 0x100 ;
        /*0150*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0160*/                   EXIT ;
"""


def test_sass_hazard_walk_finds_the_register_a_race():
    """The checker flags the pattern of the first Gluon kernel (A registers of wgmma i reloaded in
    the next iteration before the wait that retires it), and accepts a wait(0) before the reload or
    an SS wgmma."""
    assert len(wgmma_register_a_hazards(_RS_LOOP)) == 1
    assert wgmma_register_a_hazards(_RS_LOOP.replace("gsb0, 0x1", "gsb0, 0x0")) == []
    assert wgmma_register_a_hazards(_RS_LOOP.replace("R24, R152, gdesc[UR4]", "R24, gdesc[UR4]")) == []
    two = _RS_LOOP.replace("/*0130*/", "/*0128*/").replace(
        "        /*0140*/", "        /*0138*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;\n"
        "        /*013c*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;\n        /*0140*/")
    assert wgmma_register_a_hazards(two) == []  # a later group and wait(≤1) retire it before the reload


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nvfp4", "bf16", "fp16"])
@pytest.mark.parametrize("m,k,n", [(129, 3072, 3072), (300, 96, 1000), (1760, 3072, 9216), (7040, 14336, 3072),
                                   (2048, 3072, 14336)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_gpu_hopper_kernel(kind, m, k, n, has_bias, monkeypatch):
    """The Gluon kernel (called directly, no fallback) against the exact dequantize path, bit-identical
    over repeated calls. (M ≤ 256 is not the default path's kernel: split-K sums in another order.)"""
    from longlive_kernels.fp4 import gemm_hopper as gh

    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda") / k**0.5
    b = quantize_nvfp4(w)
    bias = torch.randn(n, device="cuda") if has_bias else None
    if kind == "nvfp4":
        a = quantize_nvfp4(x)
        args = (a.data, a.scale, a.global_scale.reshape(1).float(), True)
    else:
        a = x.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        args = (a, None, None, False)
    out_dtype = torch.float32 if m == 2048 else (torch.bfloat16 if kind != "fp16" else torch.float16)
    assert gh.supported(args[0], args[3], b.data, out_dtype)

    def direct():
        return gh.gemm(args[0], args[1], args[2], b.data, b.scale, b.global_scale.reshape(1).float(), bias,
                       out_dtype, args[3])

    out = direct()
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(out, expect) <= 2.0**-8
    for _ in range(3):  # a race shows up as run-to-run differences
        assert_bitwise_equal(direct(), out, "repeated Hopper kernel call")
    if m > gemm_mod.SPLIT_K_MAX_M:  # the default path takes the same kernel when it is enabled
        monkeypatch.setattr(gemm_ops, "_HOPPER_ENABLED", True)  # read by gemm_ops._try_hopper
        assert_bitwise_equal(nvfp4_gemm(a, b, bias=bias, out_dtype=out_dtype), out, "auto vs direct Hopper kernel")
        if kind == "nvfp4":
            pre = nvfp4_gemm(a, b, bias=bias, out_dtype=out_dtype, algorithm="predecode")
            assert rel_err(pre, expect) <= 2.0**-8


# --- transpose_nvfp4 --------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), rt=st.integers(1, 5), cb=st.integers(1, 6),
       rule=st.sampled_from(["static6", "static4", "four_over_six"]))
def test_transpose_nvfp4_is_the_quantization_of_the_transpose(seed, rt, cb, rule):
    from longlive_kernels.fp4.gemm_operands import transpose_nvfp4

    w = _rand(seed, 16 * rt, 16 * cb, spread=6.0)
    q = quantize_nvfp4(w, block_2d=True, scale_rule=rule, backend="torch")
    for backend in ("torch", "triton"):
        t = transpose_nvfp4(q, backend=backend)
        assert t.shape == (16 * cb, 16 * rt) and t.block_2d
        assert torch.equal(t.dequantize(torch.float32, backend="torch"), q.dequantize(torch.float32, backend="torch").t())
        if rule != "four_over_six":  # 4/6 picks per tile with a row-then-column error sum
            qt = quantize_nvfp4(w.t().contiguous(), block_2d=True, scale_rule=rule, backend="torch")
            assert_bitwise_equal(t.data, qt.data, "codes")
            assert_bitwise_equal(t.scale.view(torch.uint8), qt.scale.view(torch.uint8), "scales")


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


def test_custom_ops_fake_tensor_and_autograd_registration():
    """torch.library.opcheck: the fake (meta) implementations match the real outputs (torch.compile /
    CUDA-graph tracing relies on them). Schema mutation checks need arithmetic, which CPU float8 lacks."""
    from longlive_kernels.fp4 import fp8 as fp8_mod
    from longlive_kernels.fp4 import gemm_operands

    x, w = _rand(1, 5, 64), _rand(2, 32, 64)
    xq, wq = quantize_nvfp4(x, backend="torch"), quantize_nvfp4(w, block_2d=True, backend="torch")
    gs = lambda t: t.global_scale.reshape(1).float()
    utils = ("test_faketensor", "test_autograd_registration")
    checks = [
        (gemm_mod._gemm_op, (xq.data, xq.scale, gs(xq), wq.data, wq.scale, gs(wq), _rand(3, 32), torch.float32, True,
                             "fused", "torch")),
        (gemm_mod._gemm_op, (x.bfloat16(), None, None, wq.data, wq.scale, gs(wq), None, torch.bfloat16, False, "fused",
                             "triton")),
        (fp8_mod._quantize_op, (x, "torch")),
        (gemm_operands._transpose_op, (wq.data, wq.scale, "torch")),
    ]
    q, s = quantize_fp8_rowwise(x, backend="torch")
    checks.append((fp8_mod._gemm_op, (q, s, q[:3].contiguous(), s[:3].contiguous(), None, torch.float32, False, "torch")))
    for op, args in checks:
        result = torch.library.opcheck(op, args, test_utils=utils)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 70), kb=st.integers(1, 6), pad=st.sampled_from([1, 16, 64]),
       dtype=st.sampled_from([torch.bfloat16, torch.float32]))
def test_dequantize_nvfp4_t_is_the_padded_transpose(seed, m, kb, pad, dtype):
    from longlive_kernels.fp4 import dequantize_nvfp4
    from longlive_kernels.fp4.gemm_operands import dequantize_nvfp4_t

    q = quantize_nvfp4(_rand(seed, m, 16 * kb, spread=6.0), backend="torch")
    expect = dequantize_nvfp4(q, torch.float32, backend="torch").t()
    mp = -(-m // pad) * pad
    for backend in ("torch", "triton"):
        out = dequantize_nvfp4_t(q, pad_rows_to=pad, dtype=dtype, backend=backend)
        assert out.shape == (16 * kb, mp) and out.dtype == dtype
        assert torch.all(out[:, m:] == 0)
        tol = 0.0 if dtype == torch.float32 else 2.0**-7  # one bf16 rounding (the interpreter truncates)
        assert rel_err(out[:, :m], expect) <= tol
