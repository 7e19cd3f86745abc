"""NVFP4 quantize/dequantize: backends bit-exact against the reference, format properties."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from hypothesis import example, given
from hypothesis import strategies as st

from longlive_kernels._backend import has_cuda_extension
from longlive_kernels.fp4 import (
    NVFP4Tensor,
    dequantize_nvfp4,
    quantize_nvfp4,
    random_hadamard_transform,
)
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.fp4.format import SCALE_RULES, from_blocked, to_blocked
from longlive_kernels.fp4.nvfp4_triton import e2m1_rne_code, e4m3_rne, philox_uniform16
from longlive_kernels.testing import assert_bitwise_equal, triton_device

DEV = triton_device()

RULES = tuple(SCALE_RULES)


def _random_input(seed: int, lead: tuple[int, ...], k: int, dtype: torch.dtype, log2_spread: float) -> torch.Tensor:
    """Values spanning 2^±log2_spread, with exact E2M1 ties, zero blocks and ±max sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(*lead, k).uniform_(-log2_spread, log2_spread, generator=g))
    x = mag * torch.randn(*lead, k, generator=g).sign()
    flat = x.view(-1, k)
    rows = flat.shape[0]
    if rows >= 2 and k >= 32:
        flat[0, :16] = 0.0  # an all-zero block
        flat[1, 16:32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2) * 2.0**-3  # ties
    if rows >= 3:
        flat[2, :16] = torch.finfo(dtype).max if dtype != torch.float32 else 3e38  # ±max block
        flat[2, 1::2] *= -1
    return x.to(dtype)


def _poison_allocator(x: torch.Tensor) -> None:
    """Free 0xFF-filled blocks of the output sizes, so the caching allocator hands them to the next
    quantize: an element the kernel does not write then shows up as a mismatch."""
    if x.is_cuda:
        for n in (x.numel() // 2, x.numel() // 16, 1, 1):
            torch.full((n,), 0xFF, dtype=torch.uint8, device=x.device)


def _kernel_quantize(x, backend, **kw):
    _poison_allocator(x)
    return quantize_nvfp4(x, backend=backend, **kw)


def _quantize_both(x, **kw):
    """(reference on CPU, Triton on DEV moved back to CPU). On a GPU with the CUDA extension, the CUDA
    backend must equal the Triton one bit for bit as well."""
    gs = kw.pop("global_scale", None)
    a = quantize_nvfp4(x, backend="torch", global_scale=gs, **kw)
    xd, gsd = x.to(DEV), None if gs is None else gs.to(DEV)
    b = _kernel_quantize(xd, "triton", global_scale=gsd, **kw)
    if has_cuda_extension() and xd.is_cuda:
        _assert_same(b, _kernel_quantize(xd, "cuda", global_scale=gsd, **kw))
    return a, b.to("cpu")


def _assert_same(a: NVFP4Tensor, b: NVFP4Tensor) -> None:
    assert_bitwise_equal(a.data, b.data, "data")
    assert_bitwise_equal(a.scale.view(torch.uint8), b.scale.view(torch.uint8), "scale")
    assert_bitwise_equal(a.global_scale, b.global_scale, "global_scale")


@given(
    seed=st.integers(0, 2**31 - 1),
    lead=st.sampled_from([(1,), (5,), (3, 7), (33,), (2, 1, 17)]),
    nblocks=st.integers(1, 9),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    rule=st.sampled_from(RULES),
    rounding=st.sampled_from(["rne", "stochastic"]),
    block_2d=st.booleans(),
    hadamard=st.booleans(),
)
@example(seed=1, lead=(33,), nblocks=4, dtype=torch.bfloat16, rule="four_over_six", rounding="rne",
         block_2d=True, hadamard=False)
def test_triton_matches_reference_bit_exact(seed, lead, nblocks, dtype, rule, rounding, block_2d, hadamard):
    spread = 14.0 if dtype == torch.float16 else 20.0
    x = _random_input(seed, lead, 16 * nblocks, dtype, spread)
    if dtype == torch.float16:
        x = x.clamp(-60000, 60000)
    a, b = _quantize_both(x, scale_rule=rule, rounding=rounding, seed=seed, block_2d=block_2d, hadamard=hadamard)
    _assert_same(a, b)
    assert a.data.shape == (*lead, 8 * nblocks) and a.scale.shape == (*lead, nblocks)
    da = dequantize_nvfp4(a, torch.float32, backend="torch")
    db = dequantize_nvfp4(b.to(DEV), torch.float32, backend="triton").cpu()
    assert_bitwise_equal(da, db, "dequantized")


@given(seed=st.integers(0, 2**31 - 1), rule=st.sampled_from(RULES), scale_exp=st.integers(-30, 10))
def test_given_global_scale_bit_exact(seed, rule, scale_exp):
    x = _random_input(seed, (9,), 64, torch.bfloat16, 8.0)
    gs = torch.tensor(2.0**scale_exp * 1.37, dtype=torch.float32)
    a, b = _quantize_both(x, scale_rule=rule, global_scale=gs)
    _assert_same(a, b)
    assert a.global_scale.item() == gs.item()


def test_subnormal_scale_blocks_bit_exact():
    # Blocks 2^-12 .. 2^-2 of the tensor amax get E4M3 subnormal (or zero) scales.
    rows = torch.arange(12, dtype=torch.float32).view(12, 1)
    x = (torch.randn(12, 32) * torch.exp2(-1.6 * rows)).to(torch.bfloat16)
    x[0, 0] = 1.0
    a, b = _quantize_both(x)
    _assert_same(a, b)
    codes = a.scale.view(torch.uint8)
    assert ((codes > 0) & (codes < 8)).any(), "expected some subnormal E4M3 scales"


def _triton_codes(fn, v: torch.Tensor) -> torch.Tensor:
    v = v.to(DEV)
    out = torch.empty(v.shape, dtype=torch.int32, device=DEV)
    _apply_elementwise[(triton.cdiv(v.numel(), 1024),)](v, out, v.numel(), FN=fn, BLOCK=1024)
    return out.cpu()


@triton.jit
def _apply_elementwise(v_ptr, out_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(v_ptr + offs, mask=offs < n, other=0.0)
    if FN == 0:
        code = e2m1_rne_code(v)
    else:
        _, code = e4m3_rne(tl.minimum(tl.abs(v), 448.0))
    tl.store(out_ptr + offs, code, mask=offs < n)


def _all_finite_bf16() -> torch.Tensor:
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return v[torch.isfinite(v)]


def test_e2m1_rounding_matches_ml_dtypes_on_all_bf16():
    v = _all_finite_bf16()
    expected = torch.from_numpy(v.numpy().astype(ml_dtypes.float4_e2m1fn).view(np.uint8).astype(np.int32))
    assert torch.equal(ref.e2m1_round_rne(v), expected)
    assert torch.equal(_triton_codes(0, v), expected)


def test_e4m3_manual_rounding_matches_torch_cast():
    v = _all_finite_bf16().abs().clamp(max=448.0)
    v = torch.cat([v, torch.rand(20000) * 2.0**-6, torch.rand(20000) * 448.0])
    expected = v.to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int32)
    assert torch.equal(_triton_codes(1, v), expected)


def test_packing_low_nibble_first():
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1], x[0, 2] = 0.5 * 6 / 6, 1.0, -6.0  # codes 1, 2, 15 after scaling to amax 6
    q = quantize_nvfp4(x * 1.0, backend="torch")
    data = q.data[0].tolist()
    assert data[0] == (2 << 4) | 1 and data[1] == 0x0F


@given(seed=st.integers(0, 2**31 - 1), rule=st.sampled_from(["static6", "static4"]))
def test_round_trip_error_bound(seed, rule):
    """|x̂ − x| ≤ half an E2M1 step × block decode scale (or the saturation excess above 6·d)."""
    x = _random_input(seed, (16,), 128, torch.float32, 10.0)
    q = quantize_nvfp4(x, scale_rule=rule, backend="torch")
    xhat = dequantize_nvfp4(q, torch.float32, backend="torch")
    d = (q.scale.float() * q.global_scale).repeat_interleave(16, dim=-1)
    v = (x / d).abs()
    half_step = torch.where(v <= 2, 0.25, torch.where(v <= 4, 0.5, 1.0)) * d
    excess = (x.abs() - 6 * d).clamp_min(0)
    bound = torch.maximum(half_step, excess) * (1 + 2**-20) + 1e-30
    live = d > 0
    assert ((xhat - x).abs() <= bound)[live].all()


def test_stochastic_rounding_is_unbiased():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    gs = (x.abs().amax() / 2688).reshape(())
    n = 400
    acc = torch.zeros_like(x, dtype=torch.float64)
    for s in range(n):
        q = quantize_nvfp4(x, rounding="stochastic", seed=s, global_scale=gs, backend="torch")
        acc += dequantize_nvfp4(q, torch.float32, backend="torch").double()
    mean = acc / n
    rne = dequantize_nvfp4(quantize_nvfp4(x, global_scale=gs, backend="torch"), torch.float32, backend="torch")
    d = (quantize_nvfp4(x, global_scale=gs, backend="torch").scale.float() * gs).repeat_interleave(16, -1)
    # per element the SR error has std ≤ step/2 ≤ d; the mean of n draws is within 5σ/√n of x,
    # except where |x| > 6·d (the block max rounded above 6 by the E4M3 scale: saturated).
    inside = x.abs() <= 6 * d
    assert inside.float().mean() > 0.9
    assert ((mean - x.double()).abs() <= 5 * d.double() / math.sqrt(n) + 1e-7)[inside].all()
    assert (mean - x.double()).abs().mean() < (rne - x).abs().mean() / 3


def test_stochastic_rounding_reproducible_and_seed_dependent():
    x = torch.randn(8, 32)
    a = quantize_nvfp4(x, rounding="stochastic", seed=7, backend="torch")
    b = quantize_nvfp4(x, rounding="stochastic", seed=7, backend="torch")
    c = quantize_nvfp4(x, rounding="stochastic", seed=8, backend="torch")
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)


def test_philox_reference_matches_triton_randint():
    offs = torch.arange(0, 5000, dtype=torch.int64) * 7919 + (1 << 33)
    out = torch.empty(offs.shape, dtype=torch.int64, device=DEV)
    _randint_kernel[(triton.cdiv(offs.numel(), 512),)](offs.to(DEV), out, offs.numel(), 123456789012, BLOCK=512)
    assert torch.equal(out.cpu(), ref.philox_randint(123456789012, offs))


def test_philox4_reference_matches_triton_randint4x_and_the_uniforms():
    """All four Philox words equal ``tl.randint4x``; the stochastic-rounding uniforms (16 bits per element,
    one call per 8 elements) equal the Triton helper's, are multiples of 2⁻¹⁶ in [0, 1), and use every
    word and both halves (a wrong word or half order would repeat or drop values)."""
    seed, g = 987654321987, 64
    groups = torch.arange(g, dtype=torch.int64) + (1 << 33)
    out = torch.empty(4, g, dtype=torch.int64, device=DEV)
    u = torch.empty(g * 8, dtype=torch.float32, device=DEV)
    _randint4x_kernel[(1,)](groups.to(DEV), out, u, seed, G=g)
    assert torch.equal(out.cpu(), torch.stack(ref.philox4(seed, groups)))
    want = ref.philox_uniform16(seed, groups).reshape(-1)
    assert torch.equal(u.cpu(), want)
    words = torch.stack(ref.philox4(seed, groups), -1)  # [G, 4]
    assert torch.equal((want * 65536).long().view(g, 4, 2), torch.stack([words & 0xFFFF, words >> 16], -1))
    assert want.min() >= 0 and want.max() < 1 and want.unique().numel() > 0.99 * want.numel()
    assert torch.equal(ref.uniform16_from_philox(seed, 24), ref.philox_uniform16(seed, torch.arange(3)).reshape(-1))


@triton.jit
def _randint4x_kernel(grp_ptr, out_ptr, u_ptr, seed, G: tl.constexpr):
    i = tl.arange(0, G)
    gr = tl.load(grp_ptr + i)
    w0, w1, w2, w3 = tl.randint4x(seed, gr)
    tl.store(out_ptr + i, w0.to(tl.int64))
    tl.store(out_ptr + G + i, w1.to(tl.int64))
    tl.store(out_ptr + 2 * G + i, w2.to(tl.int64))
    tl.store(out_ptr + 3 * G + i, w3.to(tl.int64))
    u = tl.reshape(philox_uniform16(seed, gr[None, :], 1, G), (G * 8,))
    tl.store(u_ptr + tl.arange(0, G * 8), u)


@triton.jit
def _randint_kernel(off_ptr, out_ptr, n, seed, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    o = tl.load(off_ptr + i, mask=i < n, other=0)
    r = tl.randint(seed, o).to(tl.uint32, bitcast=True).to(tl.int64)
    tl.store(out_ptr + i, r, mask=i < n)


@given(seed=st.integers(0, 2**31 - 1), rht_seed=st.one_of(st.none(), st.integers(0, 2**40)))
def test_rht_is_orthonormal_and_self_inverse(seed, rht_seed):
    x = torch.randn(7, 48, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    y = random_hadamard_transform(x, rht_seed, backend="torch")
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    back = random_hadamard_transform(y, rht_seed, backend="torch")
    assert torch.allclose(back, x, atol=1e-5)
    yt = random_hadamard_transform(x.to(DEV), rht_seed, backend="triton").cpu()
    assert_bitwise_equal(y, yt, "rht triton")


def test_rht_gradient_is_the_transform():
    x = torch.randn(3, 32, requires_grad=True)
    g = torch.randn(3, 32)
    random_hadamard_transform(x, 5, backend="torch").backward(g)
    assert torch.allclose(x.grad, random_hadamard_transform(g, 5, backend="torch"), atol=1e-6)


@given(seed=st.integers(0, 2**31 - 1), block_2d=st.booleans())
def test_four_over_six_never_worse_than_static6_per_block(seed, block_2d):
    x = _random_input(seed, (32,), 64, torch.float32, 6.0)
    gs = (x.abs().amax() / 1536).reshape(())  # same tensor scale for both rules
    q46 = quantize_nvfp4(x, scale_rule="four_over_six", global_scale=gs, block_2d=block_2d, backend="torch")
    q6 = quantize_nvfp4(x, scale_rule="static6", global_scale=gs, block_2d=block_2d, backend="torch")
    r46 = (dequantize_nvfp4(q46, torch.float32, backend="torch").double() - x.double()).view(32, 4, 16)
    r6 = (dequantize_nvfp4(q6, torch.float32, backend="torch").double() - x.double()).view(32, 4, 16)
    # Four Over Six compares errors measured on v = x·RN(1/d) (relative error <= 2^-23) in fp32: each
    # term (|v| - e2m1)² is off by at most 2|x - xhat||x|·2^-23 + (|x|·2^-23)² after the ·d² scaling,
    # and the fp32 tree and products add at most 2^-19 of the sum.
    ax = x.double().abs().view(32, 4, 16)
    slack = (2 * (r46.abs() + r6.abs()) * ax * 2**-23 + 2 * (ax * 2**-23) ** 2).sum(-1)
    e46, e6 = r46.pow(2).sum(-1), r6.pow(2).sum(-1)
    if block_2d:
        e46, e6, slack = e46.view(2, 16, 4).sum(1), e6.view(2, 16, 4).sum(1), slack.view(2, 16, 4).sum(1)
    assert (e46 <= e6 * (1 + 2**-19) + slack).all()


def test_block_2d_tiles_share_one_scale():
    x = torch.randn(40, 64)
    q = quantize_nvfp4(x, block_2d=True, backend="torch")
    s = q.scale.view(torch.uint8).view(40, 4)
    for t in range(3):
        tile = s[16 * t : 16 * (t + 1)]
        assert (tile == tile[0]).all()


def test_non_finite_policy():
    x = torch.randn(3, 32)
    x[1, 3] = float("nan")
    x[2, 20] = float("inf")
    gs = torch.tensor(1e-2)
    q = quantize_nvfp4(x, global_scale=gs, backend="torch")
    s = q.scale.view(torch.uint8)
    assert s[1, 0] == 0x7F and s[2, 1] == 0x7F and s[0].ne(0x7F).all() and s[1, 1] != 0x7F
    out = dequantize_nvfp4(q, torch.float32, backend="torch")
    assert out[1, :16].isnan().all() and out[2, 16:].isnan().all() and out[0].isfinite().all()
    qa = quantize_nvfp4(x, backend="torch")  # auto tensor scale from an amax of Inf: all NaN
    assert qa.global_scale.isinf() and dequantize_nvfp4(qa, torch.float32, backend="torch").isnan().all()
    _assert_same(q, _quantize_both(x, global_scale=gs)[1])
    _assert_same(qa, _quantize_both(x)[1])


def test_all_zero_tensor():
    q = quantize_nvfp4(torch.zeros(4, 32), backend="torch")
    assert q.data.eq(0).all() and q.scale.view(torch.uint8).eq(0).all() and q.global_scale == 0
    assert dequantize_nvfp4(q, torch.float32, backend="torch").eq(0).all()


def test_blocked_layout_round_trip_and_index_formula():
    rows, cols = 200, 9
    s = torch.randint(0, 127, (rows, cols), dtype=torch.uint8)
    b = to_blocked(s)
    assert b.numel() == 256 * 12
    r, c = 150, 6
    tile = (r // 128) * (12 // 4) + c // 4
    assert b[tile * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4] == s[r, c]
    assert torch.equal(from_blocked(b, rows, cols), s)
    q = quantize_nvfp4(torch.randn(130, 64), backend="torch")
    assert torch.equal(q.to_blocked().from_blocked().scale.view(torch.uint8), q.scale.view(torch.uint8))
    assert_bitwise_equal(q.to_blocked().dequantize(torch.float32, backend="torch"),
                         q.dequantize(torch.float32, backend="torch"))


def test_nbytes_and_to():
    q = quantize_nvfp4(torch.randn(64, 256), backend="torch")
    assert q.nbytes == 64 * 128 + 64 * 16 + 4
    assert q.to("cpu") is q


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: quantize_nvfp4(torch.randn(4, 24)), ValueError, "multiple of 16"),
        (lambda: quantize_nvfp4(torch.randint(0, 5, (4, 32))), TypeError, "dtype"),
        (lambda: quantize_nvfp4(torch.randn(0, 32)), ValueError, "non-empty"),
        (lambda: quantize_nvfp4(torch.randn(32, 4).t()), ValueError, "contiguous"),
        (lambda: quantize_nvfp4(torch.randn(4, 32), backend="cuda"), ValueError, "cuda"),
        (lambda: quantize_nvfp4(torch.randn(4, 32), scale_rule="mse"), ValueError, "scale_rule"),
        (lambda: quantize_nvfp4(torch.randn(4, 32), rounding="up"), ValueError, "rounding"),
        (lambda: quantize_nvfp4(torch.randn(4, 32), backend="fast"), ValueError, "backend"),
        (lambda: quantize_nvfp4(torch.randn(4, 32), global_scale=torch.ones(2)), ValueError, "global_scale"),
        (lambda: quantize_nvfp4([1.0] * 16), TypeError, "torch.Tensor"),
        (lambda: dequantize_nvfp4(torch.zeros(4)), TypeError, "NVFP4Tensor"),
        (lambda: random_hadamard_transform(torch.randn(3, 20)), ValueError, "multiple of 16"),
    ],
)
def test_bad_input_errors(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_opcheck_and_compile():
    x = torch.randn(8, 64)
    torch.library.opcheck(
        torch.ops.longlive_kernels.quantize_nvfp4.default,
        (x, None, "static6", "rne", 0, -1, False, "torch"),
        test_utils=("test_faketensor", "test_autograd_registration"),  # test_schema can't mul fp8
    )
    q = quantize_nvfp4(x, backend="torch")
    torch.library.opcheck(
        torch.ops.longlive_kernels.dequantize_nvfp4.default,
        (q.data, q.scale, q.global_scale, torch.float32, -1, "torch"),
        test_utils=("test_faketensor", "test_autograd_registration"),
    )

    @torch.compile(fullgraph=True, backend="eager")
    def roundtrip(t):
        qt = quantize_nvfp4(t, backend="torch")
        return dequantize_nvfp4(qt, torch.float32, backend="torch")

    assert torch.equal(roundtrip(x), dequantize_nvfp4(q, torch.float32, backend="torch"))


# ---- GPU: every backend bit-exact on model-sized tensors ---------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("rounding", ["rne", "stochastic"])
@pytest.mark.parametrize("block_2d, hadamard", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_backends_bit_exact(rule, rounding, block_2d, hadamard, dtype):
    torch.manual_seed(hash((rule, rounding, block_2d, hadamard)) % 1000)
    x = (torch.randn(1000, 3072, device="cuda") * torch.exp(torch.randn(1000, 1, device="cuda") * 3)).to(dtype)
    kw = dict(scale_rule=rule, rounding=rounding, seed=11, block_2d=block_2d, hadamard=hadamard)
    ref_q = quantize_nvfp4(x, backend="torch", **kw)
    backends = ["triton"] + (["cuda"] if has_cuda_extension() else [])
    # Rows with a stride beyond K (a column slice) take the CUDA backend's row-tiled kernel instead of
    # its flat one.
    strided = torch.cat([x, x[:, :64]], dim=1)[:, :3072]
    for be in backends:
        q = _kernel_quantize(x, be, **kw)
        _assert_same(ref_q, q)
        _assert_same(ref_q, _kernel_quantize(strided, be, **kw))
        for out_dtype in (torch.bfloat16, torch.float32):
            assert_bitwise_equal(dequantize_nvfp4(ref_q, out_dtype, backend="torch"),
                                 dequantize_nvfp4(q, out_dtype, backend=be), f"dequant {be}")


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda_extension(), reason="needs the CUDA extension")
def test_four_over_six_near_ties_bit_exact_on_cuda():
    # Blocks of quarter-integer levels with amax 6: the two candidates' errors tie exactly (levels
    # shared by both grids: ties go to 6) or within a few ulps, where any error sum other than the
    # reference's pairwise tree of rounded squares would pick differently.
    g = torch.Generator().manual_seed(7)
    rows, k = 2048, 512
    q = torch.randint(-24, 25, (rows, k // 16, 16), generator=g).float() / 4
    shared = torch.tensor([0.0, 1.5, 3.0, 6.0])[torch.randint(0, 4, (rows, k // 16, 16), generator=g)]
    q = torch.where((torch.arange(k // 16) % 3 == 0).view(1, -1, 1), shared, q)
    q[..., 0] = 6.0
    q = q * torch.randn(rows, k // 16, 16, generator=g).sign()
    x = (q * torch.exp2(torch.randint(-8, 9, (rows, 1, 1), generator=g).float())).reshape(rows, k)
    gs = torch.tensor(2.0**-6)

    # The data really holds ties and near-ties: errors in float64 (scaled domain, as the reference).
    xb = x.view(rows, k // 16, 16).double()
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
    errs = []
    for target in (6.0, 4.0):
        d = ref.e4m3_round((xb.abs().amax(-1) / target / gs.double()).float()).double() * gs.double()
        v = (xb.abs() / d.unsqueeze(-1)).clamp(max=6)
        r = grid[(v.unsqueeze(-1) - grid).abs().argmin(-1)]
        errs.append(((v - r) ** 2).sum(-1) * d * d)
    e6, e4 = errs
    assert (e6 == e4).sum() > 100
    near = (e6 != e4) & ((e6 - e4).abs() <= 2.0**-14 * (e6 + e4))
    assert near.sum() > 0, "no near-tie blocks"

    want = quantize_nvfp4(x, scale_rule="four_over_six", global_scale=gs, backend="torch")
    got = _kernel_quantize(x.cuda(), "cuda", scale_rule="four_over_six", global_scale=gs.cuda())
    _assert_same(want, got.to("cpu"))


@pytest.mark.gpu
def test_reference_divisions_are_correctly_rounded_on_cuda():
    # torch on CUDA divides by a Python float as a multiply by its reciprocal; the references' spec
    # divisions go through div_rn, which must equal the float64 quotient rounded once to fp32.
    from longlive_kernels.fp4.reference import div_rn

    x = torch.rand(1 << 16, device="cuda") * torch.exp2(torch.randint(-20, 20, (1 << 16,), device="cuda").float())
    for d in (6.0, 448.0, 2688.0, 1536.0):
        want = (x.double() / d).float()
        assert_bitwise_equal(div_rn(x, d), want, f"div_rn by {d}")
