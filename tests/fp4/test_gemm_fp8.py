"""The FP8 path on the CPU interpreter: row-wise quantization bit-exact, fp8_gemm vs its reference, its
error against the exact NVFP4 path, fp8_linear (fused quantization + FP8 GEMM) vs the two-op path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from longlive_kernels.fp4 import fp8_gemm, nvfp4_gemm, quantize_fp8_rowwise, quantize_nvfp4
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.testing import assert_bitwise_equal, rel_err

from ._gemm_helpers import DEV, FP8_MMA_TOL, _rand


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


def _edge_rows(seed: int, k: int) -> torch.Tensor:
    """fp32 rows: a random one, an all-zero one, one with −0 and values too small for amax/448 to be
    a normal fp32 (scale clamped to 2⁻¹²⁶), one with +Inf, one with NaN, one near the fp32 maximum."""
    x = _rand(seed, 6, k, spread=8.0).float().cpu()
    x[1] = 0.0
    x[2] = x[2] / x[2].abs().max() * 1e-37  # amax/448 ≈ 2e-40: below the smallest normal
    x[2, 0] = -0.0
    x[3, 1] = float("inf")
    x[4, 2] = float("nan")
    x[5] = x[5] / x[5].abs().max() * 3e38
    return x.to(DEV)


@pytest.mark.parametrize("backend", ["torch", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp8_rowwise_definition_on_edge_rows(backend, seed):
    """The row-wise encode is ``e4m3_rn_sat(x · (1/scale))`` with the reciprocal and the product each
    rounded once to fp32 (recomputed here in fp64, where the product of two fp32 is exact), and
    ``scale = amax/448`` clamped below at 2⁻¹²⁶ (1 for a zero row, +Inf for a row holding Inf/NaN,
    whose finite values then encode as signed zeros and the rest as NaN); every finite code is
    within half an E4M3 step (2⁻⁴ relative, or the subnormal step 2⁻¹⁰) of the exact x / scale.
    The CUDA kernel takes bf16 rows: the same rows rounded to bf16."""
    k = 48
    x = _edge_rows(seed, k)
    if backend == "cuda":
        from longlive_kernels.fp4 import fp8

        if not (x.is_cuda and fp8._cuda_quantize_ok(x.bfloat16())):
            pytest.skip("needs a GPU and the CUDA extension")
        x = x.bfloat16()
    q, s = quantize_fp8_rowwise(x, backend=backend)
    x, q, s = x.cpu(), q.cpu(), s.cpu()
    amax = x.abs().amax(-1).double()
    want_s = (amax / 448).float().clamp(min=2.0**-126)
    want_s[1], want_s[3], want_s[4] = 1.0, float("inf"), float("inf")
    assert_bitwise_equal(s, want_s, "row scales")
    assert s[2].item() == 2.0**-126
    inv = (1.0 / s.double()).float()
    prod = (x.double() * inv.double()[:, None]).float()
    want = prod.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    want = torch.where(prod.isnan(), torch.full_like(want, 0x7F), want)
    assert_bitwise_equal(q.view(torch.uint8), want, "codes")
    assert q.view(torch.uint8)[2, 0].item() == 0x80, "−0 keeps its sign"
    finite = torch.isfinite(x) & torch.isfinite(s)[:, None]
    dec = q.float().double()[finite]
    exact = (x.double() / s.double()[:, None])[finite]
    assert torch.all((dec - exact).abs() <= torch.maximum(exact.abs() * 2.0**-4, torch.full_like(exact, 2.0**-10)))
    nonfinite_rows = q.view(torch.uint8)[3:5]
    assert torch.all((nonfinite_rows == 0) | (nonfinite_rows == 0x80) | (nonfinite_rows == 0x7F))
    assert nonfinite_rows[0, 1] == 0x7F and nonfinite_rows[1, 2] == 0x7F


@pytest.mark.parametrize("m,n,k", [(1, 24, 64), (37, 50, 96)])
def test_fp8_gemm_triton_matches_reference(m, n, k):
    xq, xs = quantize_fp8_rowwise(_rand(1, m, k), backend="torch")
    wq, ws = quantize_fp8_rowwise(_rand(2, n, k), backend="torch")
    bias = _rand(3, n)
    out = fp8_gemm(xq, xs, wq, ws, bias=bias, out_dtype=torch.float32, backend="triton")
    assert rel_err(out, fp8_gemm(xq, xs, wq, ws, bias=bias, out_dtype=torch.float32, backend="torch")) <= FP8_MMA_TOL


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


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("rows,k", [(7040, 3072), (5, 3072), (300, 14336), (3, 4096), (33, 200), (2, 20000)])
def test_gpu_fp8_quantize_launch_shapes_bit_exact(rows, k, impl):
    """Every launch shape ``_quant_config`` picks on a GPU (two passes over 1024-column chunks for
    K = 3072, one 16-warp pass for K = 14336, several short rows per program, the > 16384 two-pass
    path), and the CUDA kernel's default vectors per thread, give the reference's codes and scales
    bit for bit, NaN rows, zero rows and a row whose +Inf makes its scale infinite (finite values
    then encode as zero) included."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from longlive_kernels.fp4 import gemm_fp8

    if impl == "cuda" and not gemm_fp8._cuda_quantize_ok(torch.empty(1, k, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("the CUDA extension is not built")
    x = _rand(rows + k, rows, k, spread=8.0).cpu().bfloat16()  # the reference on the CPU
    x[rows // 2] = 0.0
    x[-1, k // 3] = float("nan")
    x[0, k // 2] = float("inf")
    q1, s1 = ref.quantize_fp8_rowwise(x)
    q2, s2 = gemm_fp8._quantize(x.cuda(), impl=impl)
    assert_bitwise_equal(q1.view(torch.uint8), q2.cpu().view(torch.uint8), "fp8 codes")
    assert_bitwise_equal(s1, s2.cpu(), "row scales")


@pytest.mark.gpu
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 70), k8=st.integers(1, 4096), pad=st.sampled_from([0, 8, 24]),
       gelu=st.booleans(), iters=st.sampled_from([0, 1, 2, 3, 4, 6, 8]))
@example(seed=0, rows=3, k8=1792, pad=0, gelu=True, iters=0)  # the FFN's K = 14336
def test_gpu_cuda_fp8_quantizer_equals_triton(seed, rows, k8, pad, gelu, iters):
    """The CUDA row-wise quantizer (``csrc/fp4/fp8_quantize.cu``) writes the Triton kernel's codes and
    scales bit for bit, with and without the fused GELU (same fp32 steps, ``ex2.approx`` and
    ``div.full`` as Triton lowers them), for any K % 8 == 0, any vectors-per-thread choice that fits,
    rows read through a padded row stride, NaN / Inf / zero / −0 rows, into poisoned outputs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from longlive_kernels.fp4 import gemm_fp8

    k = 8 * k8
    if not gemm_fp8._cuda_quantize_ok(torch.empty(1, k, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("the CUDA extension is not built")
    threads = -(-(-(-k // 8) // max(iters, 1)) // 32) * 32
    if iters and threads > 512:
        return  # the launcher rejects it (ctest)
    wide = _rand(seed, rows, k + pad, spread=4.0).bfloat16().cuda()
    x = wide[:, :k]
    x[rows // 2, seed % k] = float("nan")
    x[(rows - 1) // 3] = -0.0
    if rows > 2:
        x[1, (seed // 7) % k] = float("-inf")
    q_t, s_t = gemm_fp8._quantize(x, gelu, impl="triton")
    q = torch.full((rows, k), 0x55, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    s = torch.full((rows,), -7.0, device="cuda")
    torch.ops.longlive_kernels.fp8_rowwise_quantize_cuda(x, q, s, gelu, iters)
    assert_bitwise_equal(q.view(torch.uint8), q_t.view(torch.uint8), "fp8 codes")
    assert_bitwise_equal(s, s_t, "row scales")


# --- the FFN's GELU fused into the quantization (input_activation="gelu_tanh") ---------------------


@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 6), k=st.sampled_from([64, 200, 1040, 2064]))
def test_fused_gelu_quantization_equals_gelu_then_quantize(seed, rows, k):
    """``_quantize(x, gelu=True)`` = ``quantize_fp8_rowwise(F.gelu(x, "tanh"))`` up to the bf16 rounding
    of the GELU value: the kernel's sigmoid-form GELU may round the other way in the last bf16 bit, which
    moves a code by at most one E4M3 step (2^-3 relative) and a row scale by at most one bf16 step of
    the row's amax (2^-7 relative; every code of that row may then round anew, so the whole tile moves
    by about the E4M3 rounding error, 2^-4 at most); a real mistake (no GELU, a wrong constant) is
    far outside these."""
    import torch.nn.functional as F

    from longlive_kernels.fp4 import gemm_fp8

    x = _rand(seed, rows, k, spread=3.0).bfloat16()
    q_ref, s_ref = ref.quantize_fp8_rowwise(F.gelu(x, approximate="tanh"))
    q, s = gemm_fp8._quantize(x, gelu=True)
    torch.testing.assert_close(s.cpu(), s_ref.cpu(), rtol=2**-7, atol=0)
    got = q.float().cpu() * s.cpu()[:, None]
    want = q_ref.float().cpu() * s_ref.cpu()[:, None]
    torch.testing.assert_close(got, want, rtol=2**-3 + 2**-7, atol=float(s_ref.max()) * 2**-9)
    assert rel_err(got, want) < 2**-4


def test_quantize_fp8_rowwise_cuda_backend_bad_input():
    """``backend="cuda"`` names what it needs: CUDA tensors, bf16 rows with K % 8 == 0 (``"auto"``
    falls back to Triton for those rows instead)."""
    with pytest.raises(ValueError, match="cuda"):
        quantize_fp8_rowwise(torch.ones(2, 16), backend="cuda")
    if DEV != "cuda":
        return
    from longlive_kernels._backend import cuda_op_available

    if not cuda_op_available("fp8_rowwise_quantize_cuda"):
        pytest.skip("the CUDA extension is not built")
    for bad in (torch.ones(2, 16, device="cuda", dtype=torch.float16), torch.ones(2, 12, device="cuda").bfloat16()):
        with pytest.raises(ValueError, match="K % 8"):
            quantize_fp8_rowwise(bad, backend="cuda")
        q, s = quantize_fp8_rowwise(bad)  # auto: the Triton kernel
        assert torch.equal(q.float(), torch.full(bad.shape, 448.0, device="cuda")) and torch.all(s == 1 / 448)


def test_fp8_linear_input_activation_and_its_bad_input():
    """fp8_linear(x, input_activation="gelu_tanh") ≈ fp8_linear(F.gelu(x)); unknown activations and an
    activation on already-quantized x are refused with the argument named."""
    import torch.nn.functional as F

    from longlive_kernels.fp4.gemm_fp8 import fp8_linear

    x = _rand(3, 7, 96).bfloat16()
    w8, ws = quantize_fp8_rowwise(_rand(4, 40, 96).bfloat16())
    fused = fp8_linear(x, w8, ws, input_activation="gelu_tanh")
    plain = fp8_linear(F.gelu(x, approximate="tanh"), w8, ws)
    assert rel_err(fused.float(), plain.float()) < 2**-5
    assert rel_err(fused.float(), fp8_linear(x, w8, ws).float()) > 0.1  # the GELU really happened
    with pytest.raises(ValueError, match="input_activation"):
        fp8_linear(x, w8, ws, input_activation="relu")
    x8, xs = quantize_fp8_rowwise(x)
    with pytest.raises(ValueError, match="input_activation"):
        fp8_linear(x8, w8, ws, x_scale=xs, input_activation="gelu_tanh")


# --- per-tensor scales (fp8_tensorwise): cuBLAS's per-tensor kernel where it is faster -------------


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("m,n,k", [(1, 24, 64), (37, 50, 96)])
def test_fp8_gemm_per_tensor_scales_equal_broadcast_row_scales(backend, m, n, k):
    """One-element scales (shape () or (1,)) mean the same products as row scales repeating them:
    bit for bit on each backend; codes from quantize_fp8_tensorwise."""
    from longlive_kernels.fp4 import quantize_fp8_tensorwise

    xq, xs = quantize_fp8_tensorwise(_rand(41, m, k, spread=4.0))
    wq, ws = quantize_fp8_tensorwise(_rand(42, n, k))
    assert xs.shape == () and ws.shape == ()
    bias = _rand(43, n)
    out = fp8_gemm(xq, xs, wq, ws.reshape(1), bias=bias, out_dtype=torch.float32, backend=backend)
    rows = fp8_gemm(xq, xs.expand(m).contiguous(), wq, ws.expand(n).contiguous(), bias=bias,
                    out_dtype=torch.float32, backend=backend)
    assert_bitwise_equal(out, rows, "per-tensor vs broadcast row scales")
    assert rel_err(out, ref.fp8_gemm(xq, xs, wq, ws, bias, out_dtype=torch.float32)) <= FP8_MMA_TOL


def test_fp8_per_tensor_error_documented():
    """Documents what one scale per tensor costs against one per row, on a LayerNorm-modulated
    activation encoded with the LayerNorm bound (``layernorm_fp8_scale``: 123 against an amax of 8)
    and a weight whose row magnitudes spread over 2⁻³..2³: 3.757e-2 relative against 3.747e-2
    (row-wise), +0.3 %: the same E4M3 rounding error (3 mantissa bits) wherever values stay normal."""
    from longlive_kernels.attention import adaln_modulate, layernorm_fp8_scale
    from longlive_kernels.fp4 import quantize_fp8_tensorwise

    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 256, 3072, generator=g) * 2 + 1
    shift, scale = torch.randn(1, 1, 3072, generator=g) * 0.3, torch.randn(1, 1, 3072, generator=g) * 0.3
    h = adaln_modulate(x, shift, scale, frame_len=256, backend="torch").reshape(256, 3072)
    w = torch.randn(512, 3072, generator=g) * torch.exp2(torch.randint(-3, 4, (512, 1), generator=g).float()) * 0.02
    exact = h.double() @ w.double().T
    hq, hs = quantize_fp8_rowwise(h, backend="torch")
    wq, ws = quantize_fp8_rowwise(w, backend="torch")
    err_row = rel_err(fp8_gemm(hq, hs, wq, ws, out_dtype=torch.float32, backend="torch"), exact)
    bound = layernorm_fp8_scale(scale, shift)
    assert bound * 448 > 8 * h.abs().max()  # the bound is loose...
    hq_t, hs_t = quantize_fp8_tensorwise(h, scale=bound)
    wq_t, ws_t = quantize_fp8_tensorwise(w)
    err_tensor = rel_err(fp8_gemm(hq_t, hs_t, wq_t, ws_t, out_dtype=torch.float32, backend="torch"), exact)
    assert 0.01 < err_row < 0.05
    assert err_tensor < 1.02 * err_row  # ...and costs < 2 % more error


def test_fp8_scale_shapes_bad_input():
    from longlive_kernels.fp4.gemm_fp8 import fp8_linear

    xq, xs = quantize_fp8_rowwise(_rand(51, 4, 32), backend="torch")
    wq, ws = quantize_fp8_rowwise(_rand(52, 8, 32), backend="torch")
    with pytest.raises(ValueError, match=r"b_scale must have shape \(8,\) \(row-wise\) or \(\) / \(1,\)"):
        fp8_gemm(xq, xs, wq, ws[:2], backend="torch")
    with pytest.raises(ValueError, match="a_scale must have shape"):
        fp8_gemm(xq, xs[:2], wq, ws, backend="torch")
    with pytest.raises(ValueError, match="x_scale must have shape"):
        fp8_linear(xq, wq, ws, x_scale=xs[:3], backend="torch")
    with pytest.raises(ValueError, match="w_scale must have shape"):
        fp8_linear(xq, wq, ws.reshape(2, 4), x_scale=xs, backend="torch")


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1760, 3072, 3072), (1760, 14336, 3072), (7040, 3072, 3072), (300, 528, 1008)])
def test_gpu_fp8_gemm_per_tensor_kernel(m, k, n, monkeypatch):
    """cuBLAS's per-tensor kernel (where ``tensorwise_kernel_faster``) and the row-wise kernel with the
    scales broadcast (elsewhere) both give the reference's products within the FP8 MMA tolerance, and
    the per-tensor pair takes the kernel the rule names."""
    from longlive_kernels.fp4 import fp8 as fp8_mod
    from longlive_kernels.fp4 import quantize_fp8_tensorwise
    from longlive_kernels.fp4.fp8_tensorwise import tensorwise_kernel_faster

    g = torch.Generator(device="cuda").manual_seed(m + n)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) / k**0.5).bfloat16()
    xq, xs = quantize_fp8_tensorwise(x)
    wq, ws = quantize_fp8_tensorwise(w)
    bias = torch.randn(n, device="cuda", generator=g)
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **kw: calls.append(kw["scale_a"].dim()) or real(*a, **kw))
    out = fp8_gemm(xq, xs, wq, ws, bias=bias)
    assert calls == [0 if tensorwise_kernel_faster(m, n, k) else 2]
    want = ref.fp8_gemm(xq, xs, wq, ws, bias, out_dtype=torch.float32)
    assert rel_err(out.float(), want) <= FP8_MMA_TOL + 2.0**-8  # + the bf16 output's rounding
    rows = fp8_mod._gemm_scaled_mm(xq, xs.expand(m).contiguous(), wq, ws.expand(n).contiguous(), bias,
                                   torch.bfloat16)
    assert rel_err(out.float(), rows.float()) <= FP8_MMA_TOL + 2.0**-8
