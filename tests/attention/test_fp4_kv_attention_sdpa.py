"""fp4_kv_attention(backend="sdpa"): decode into a reused workspace + SDPA. Same result as the plain
torch backend, every context length, the workspace's stale rows never read, fp8 refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longlive_kernels.attention import FP4KVCache, fp4_kv_attention


def _rand(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gain = torch.exp2(torch.empty(*shape[:-1], 1).uniform_(-2, 2, generator=g))
    return (torch.randn(*shape, generator=g) * gain).bfloat16()


def _cache(seed: int, n_chunks: int, storage: str, t: int = 24, h: int = 2, d: int = 32, b: int = 1,
           device: str = "cpu"):
    cache = FP4KVCache(num_layers=2, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=4, batch_size=b,
                       storage=storage, device=device)
    for n in range(n_chunks):
        cache.start_chunk(n)
        k, v = _rand(seed + 2 * n, b, t, h, d), _rand(seed + 2 * n + 1, b, t, h, d)
        cache.update(1, k.to(device), v.to(device), backend="torch")
    return cache


@given(seed=st.integers(0, 2**31 - 1), n_chunks=st.integers(1, 6), with_current=st.booleans(),
       storage=st.sampled_from(["fp4", "bf16"]), b=st.sampled_from([1, 2]))
@settings(max_examples=12, deadline=None)
def test_sdpa_backend_equals_torch_backend(seed, n_chunks, with_current, storage, b):
    """Both decode bit-exactly and run the same SDPA math on the CPU, so their outputs agree to the
    rounding of the output dtype, whatever the number of context chunks (0..3) and the eviction state."""
    cache = _cache(seed, n_chunks, storage, b=b)
    q = _rand(seed + 99, b, 20, 2, 32)
    kw = {"current_k": _rand(seed + 7, b, 24, 2, 32), "current_v": _rand(seed + 8, b, 24, 2, 32)} if with_current else {}
    got = fp4_kv_attention(q, cache, 1, backend="sdpa", **kw)
    want = fp4_kv_attention(q, cache, 1, backend="torch", **kw)
    assert got.shape == q.shape and got.dtype == q.dtype and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * want.abs().max().item())


def test_workspace_is_reused_and_its_stale_rows_are_never_read():
    """A call with fewer context chunks than the workspace holds: rows past the attended window are
    NaN-poisoned and must not reach the output; the workspace is not re-allocated."""
    cache = _cache(5, 4, "fp4")
    q = _rand(6, 1, 20, 2, 32)
    fp4_kv_attention(q, cache, 1, backend="sdpa")
    ws = cache._sdpa_workspace
    ws.fill_(float("nan"))
    cache.start_chunk(4)
    cache.pin_shot_sink(4)  # context stays 3 chunks; now attend with a shorter current chunk
    short_k, short_v = _rand(7, 1, 10, 2, 32), _rand(8, 1, 10, 2, 32)
    out = fp4_kv_attention(q, cache, 1, current_k=short_k, current_v=short_v, backend="sdpa")
    assert cache._sdpa_workspace is ws
    assert not out.isnan().any()
    want = fp4_kv_attention(q, cache, 1, current_k=short_k, current_v=short_v, backend="torch")
    torch.testing.assert_close(out, want, rtol=2**-7, atol=2**-7 * want.abs().max().item())


def test_sdpa_backend_refuses_fp8_compute():
    cache = _cache(1, 2, "fp4")
    with pytest.raises(ValueError, match="compute"):
        fp4_kv_attention(_rand(2, 1, 8, 2, 32), cache, 1, compute="fp8", backend="sdpa")


@pytest.mark.parametrize("to_heads_major", [True, False])
def test_scale_cast_kernel_between_token_and_head_major_layouts(to_heads_major):
    """The one-pass scale-and-cast kernel of the FP8 path reads and writes any (batch, token, head)
    strides: token-major → a slice of a head-major workspace and back; x / s rounded once, and the
    NaN-poisoned rows around the slice stay untouched. (Triton interpreter on the CPU, fp32 buffers: the
    interpreter's bf16/fp8 casts are not RNE; the GPU test below checks those roundings.)"""
    from longlive_kernels._backend import interpret_mode
    from longlive_kernels.attention.fp8_sdpa_triton import _scale_cast_kernel

    if not interpret_mode() and not torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter or a GPU")
    dev = "cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu"
    b, seq, h, d = 2, 37, 3, 64
    x = (torch.randn(b, seq, h, d, generator=torch.Generator().manual_seed(4)) * 5).to(dev)
    s = torch.tensor([0.37], device=dev)
    ws = torch.full((b, h, seq + 13, d), float("nan"), device=dev)  # head-major
    slot = ws[:, :, 5:5 + seq].transpose(1, 2)  # [B, L, H, D] view, rows 5..41 of every head
    src, dst = x, slot
    if not to_heads_major:
        slot.copy_(x)
        src, dst = slot, torch.full((b, seq, h, d), float("nan"), device=dev)
    grid = ((seq + 31) // 32, (h * d + 255) // 256, b)
    _scale_cast_kernel[grid](src, dst, s, seq, h * d, *src.stride()[:3], *dst.stride()[:3], INVERT=True, D=d,
                             BL=32, BC=256)
    assert torch.equal(dst, src / s)  # a tensor divisor: true division on every device
    assert ws[:, :, :5].isnan().all() and ws[:, :, 5 + seq:].isnan().all()


def test_kv_decode_into_a_head_major_workspace_equals_token_major():
    """The FP8 path decodes the window into head-major workspace views ([B, L, H, D] over [B, H, L, D]
    memory): the same values as the token-major decode, and the workspace is re-allocated on a layout
    change instead of being reinterpreted."""
    from longlive_kernels._backend import interpret_mode
    from longlive_kernels.attention.fp4_kv_attention_sdpa import _workspace
    from longlive_kernels.attention.kv_cache_ops import _dequantize_triton

    if not interpret_mode() and not torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter or a GPU")
    cache = _cache(11, 3, "fp4", device="cuda" if torch.cuda.is_available() and not interpret_mode() else "cpu")
    rows = 3 * cache.chunk_tokens
    args = (cache.data[1], cache.scale[1], cache.global_scale[1], cache.table, 3, torch.float32)
    want_k, want_v = _dequantize_triton(*args)
    tok_k, _ = _workspace(cache, rows, torch.float32)
    k, v = _workspace(cache, rows, torch.float32, heads_major=True)
    assert k.stride(1) == cache.head_dim and k.stride(2) > k.stride(1)
    assert k.data_ptr() != tok_k.data_ptr()  # a new (head-major) buffer
    k.fill_(float("nan"))
    v.fill_(float("nan"))
    _dequantize_triton(*args, k, v)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


def _fp8_sdpa_or_skip():
    from longlive_kernels.attention.fp8_sdpa import cudnn_fp8_sdpa_available

    if not torch.cuda.is_available() or not cudnn_fp8_sdpa_available(torch.device("cuda")):
        pytest.skip("cuDNN FP8 SDPA needs a Hopper GPU and nvidia-cudnn-frontend")


@pytest.mark.gpu
def _filled_gpu_cache(chunks: int, seed: int, h: int = 4, d: int = 128, t: int = 256):
    """A one-layer FP4 cache on the GPU after ``chunks`` random bf16 chunks (4 slots: the oldest
    evicted past 4); returns (cache, last chunk's k, v [1, t, h, d], the generator for more)."""
    dev = torch.device("cuda")
    cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=4, device=dev)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for n in range(chunks):
        cache.start_chunk(n)
        k, v = (torch.randn(1, t, h, d, generator=g).to(dev, torch.bfloat16) for _ in range(2))
        cache.update(0, k, v)
    return cache, k, v, g


@pytest.mark.parametrize("heads_major", [True, False])
@pytest.mark.parametrize("with_current", [True, False])
def test_gpu_cudnn_fp8_compute_error_and_stale_rows(with_current, heads_major, monkeypatch):
    """compute="fp8" on Hopper (cuDNN FP8 SDPA over the FP8-decoded window, head- or token-major): within
    the error of five E4M3 roundings (Q, K, V, P, O: 2^-4 each) of the BF16 path, really FP8 (not
    bit-equal to BF16), the workspace's stale rows (NaN-poisoned) never read, and the same result when
    replayed in a CUDA graph."""
    _fp8_sdpa_or_skip()
    from longlive_kernels.attention import fp4_kv_attention_sdpa

    monkeypatch.setattr(fp4_kv_attention_sdpa, "FP8_HEADS_MAJOR", heads_major)
    cache, k, v, g = _filled_gpu_cache(chunks=5, seed=0)  # 3 context chunks after eviction + the current one
    t = k.shape[1]
    q = (torch.randn(k.shape, generator=g) * 2).to(k.device, torch.bfloat16)
    # a current chunk of half a slot: the window is shorter than the workspace, stale rows follow it
    kw = {"current_k": k[:, : t // 2], "current_v": v[:, : t // 2]} if with_current else {}
    ref = fp4_kv_attention(q, cache, 0, backend="sdpa", **kw).float()
    fp4_kv_attention(q, cache, 0, compute="fp8", **kw)
    cache._sdpa_workspace.view(torch.uint8).fill_(0x7F)  # E4M3 NaN everywhere; attended rows are rewritten
    out = fp4_kv_attention(q, cache, 0, compute="fp8", **kw)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and not out.isnan().any()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert 1e-3 < rel < 0.15, rel
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        fp4_kv_attention(q, cache, 0, compute="fp8", **kw)  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            captured = fp4_kv_attention(q, cache, 0, compute="fp8", **kw)
    torch.cuda.current_stream().wait_stream(stream)
    captured.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, out, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_scale_cast_is_one_rne_rounding_into_strided_rows():
    """The one-pass cast of fp8_sdpa: bf16 → E4M3 (divide) and E4M3 → bf16 (multiply) equal torch's
    fp32 math rounded once, written into a strided workspace slice without touching the rows around it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from longlive_kernels.attention.fp8_sdpa import scale_cast

    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(3)
    x = (torch.randn(2, 77, 4, 128, generator=g) * 3).to(dev, torch.bfloat16)
    s = torch.tensor([0.037], device=dev)
    ws = torch.full((2, 100, 4, 128), float("nan"), device=dev).to(torch.float8_e4m3fn)
    scale_cast(x, s, ws[:, 10:87], divide=True)
    want = (x.float() / s).to(torch.float8_e4m3fn)
    assert torch.equal(ws[:, 10:87].view(torch.uint8), want.view(torch.uint8))
    assert ws[:, :10].float().isnan().all() and ws[:, 87:].float().isnan().all()
    back = scale_cast(ws[:, 10:87], s, torch.empty(x.shape, dtype=torch.bfloat16, device=dev), divide=False)
    assert torch.equal(back, (want.float() * s).to(torch.bfloat16))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _triton_device_or_skip() -> str:
    from longlive_kernels._backend import interpret_mode

    if interpret_mode():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("needs the Triton interpreter or a GPU")


@given(seed=st.integers(0, 2**31 - 1), seq=st.integers(1, 70), h=st.sampled_from([1, 3]),
       poison=st.sampled_from(["none", "inf", "nan"]))
@settings(max_examples=10, deadline=None)
def test_amax_bits_kernel_is_the_exact_amax_of_a_strided_tensor(seed, seq, h, poison):
    """The FP8 path's amax pass: max |x| of a [B, L, H, D] view with free token/head strides, as fp32
    bits by atomic max into a running value, with fewer programs than tiles; exact (a max has no
    rounding), NaN and Inf propagate, and it only raises the running value."""
    from longlive_kernels.attention.fp8_sdpa_triton import _amax_bits_kernel

    dev = _triton_device_or_skip()
    g = torch.Generator().manual_seed(seed)
    big = (torch.randn(2, h, seq + 5, 64, generator=g) * torch.exp2(torch.randint(-8, 8, (1,), generator=g)))
    big = big.bfloat16()
    x = big[:, :, 3:3 + seq].transpose(1, 2).to(dev)  # head-major memory, [B, L, H, D] view
    if poison != "none":
        x[1, seq // 2, h - 1, 7] = float(poison)
    out = torch.full((1,), 1, dtype=torch.int32, device=dev)  # a tiny running value, below every |x|
    tiles = 2 * _cdiv(seq, 16) * _cdiv(h * 64, 128)
    _amax_bits_kernel[(min(3, tiles),)](  # 3 programs stride over the tiles
        x, out, 2, seq, h * 64, x.stride(0), x.stride(1), x.stride(2), D=64, BL=16, BC=128)
    got = out.view(torch.float32).item()
    want = x.float().abs().max().item()
    if poison == "nan":
        assert got != got  # noqa: PLR0124
    else:
        assert got == want


@given(seed=st.integers(0, 2**31 - 1), has_current=st.booleans(), zero=st.booleans())
@settings(max_examples=10, deadline=None)
def test_fp8_descales_kernel_equals_the_torch_formula(seed, has_current, zero):
    """The one-launch scale kernel of the FP8 path equals the same formula in torch ops, bit for bit:
    descale_{k,v} = max(6 · max tile scale, amax(current)/448), descale_q = amax(q)/448, the reciprocals,
    and the clamp of an all-zero tensor to the smallest normal fp32 (never a zero or Inf scale)."""
    from longlive_kernels.attention import fp8_sdpa
    from longlive_kernels.attention.fp8_sdpa_triton import _fp8_descales_kernel

    dev = _triton_device_or_skip()
    g = torch.Generator().manual_seed(seed)
    gs = torch.exp2(torch.empty(2, 3, 1, 2, 1100).uniform_(-20, 5, generator=g))  # > one 1024 block per K/V
    if zero:
        gs.zero_()
    am = torch.exp2(torch.empty(3).uniform_(-10, 12, generator=g)) * (0 if zero else 1)
    bits = am.view(torch.int32).to(dev)
    want = fp8_sdpa.fp8_descales(gs, bits.cpu(), has_current)  # torch formula (CPU tensors)
    out = torch.full((6,), float("nan"), device=dev)
    _fp8_descales_kernel[(1,)](gs.to(dev), gs[0].numel(), bits, out, HAS_CURRENT=has_current, BLOCK=1024)
    assert torch.equal(out.cpu(), want), (out, want)
    assert (want > 0).all() and want.isfinite().all()


@pytest.mark.parametrize("with_current", [True, False])
def test_fp8_output_is_the_output_quantized_per_tensor(with_current):
    """``out_fp8=True`` off the cuDNN FP8 path (here the torch backend): ``(codes, scale)`` with
    scale = amax|o|/448, the largest |code| 448, and codes·scale within one E4M3 rounding of the
    16-bit output (half a step: 2^-4 relative, or 2^-10·scale below the normal range)."""
    cache = _cache(5, 3, "fp4")
    q = _rand(6, 1, 24, 2, 32)
    kw = {"current_k": _rand(7, 1, 10, 2, 32), "current_v": _rand(8, 1, 10, 2, 32)} if with_current else {}
    o = fp4_kv_attention(q, cache, 1, backend="torch", **kw).float()  # _cache fills layer 1
    codes, scale = fp4_kv_attention(q, cache, 1, backend="torch", out_fp8=True, **kw)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == q.shape and scale.shape == (1,)
    assert scale.item() == pytest.approx(o.abs().max().item() / 448, rel=2**-20)
    assert codes.float().abs().max().item() == 448.0
    err = (codes.float() * scale - o).abs()
    assert (err <= 2**-4 * o.abs() + 2**-10 * scale).all()


def _fp8_cache_and_q(seed: int):
    """(FP4 cache with 3 chunks of 256 tokens × 4 heads × 128 on the GPU, a bf16 q, the CPU generator) for
    the cuDNN FP8 path's GPU tests; skips without it."""
    _fp8_sdpa_or_skip()
    dev = torch.device("cuda")
    h, d, t = 4, 128, 256
    cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=4, device=dev)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for n in range(3):
        cache.start_chunk(n)
        cache.update(0, *(torch.randn(1, t, h, d, generator=g).to(dev, torch.bfloat16) for _ in range(2)))
    return cache, (torch.randn(1, t, h, d, generator=g) * 2).to(dev, torch.bfloat16), g


@pytest.mark.gpu
def test_gpu_cudnn_fp8_output_unconverted():
    """On the cuDNN FP8 path ``out_fp8=True`` returns cuDNN's E4M3 output and scale as they are: the
    16-bit output of the same call is exactly ``(codes · scale)`` rounded once to bf16."""
    cache, q, _ = _fp8_cache_and_q(1)
    out = fp4_kv_attention(q, cache, 0, compute="fp8")
    codes, scale = fp4_kv_attention(q, cache, 0, compute="fp8", out_fp8=True)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == q.shape
    assert torch.equal((codes.float() * scale).to(torch.bfloat16), out)


@pytest.mark.parametrize("bound, exc, match", [
    (0.0, ValueError, "positive finite"), (-1.0, ValueError, "positive finite"),
    (float("inf"), ValueError, "positive finite"), (float("nan"), ValueError, "positive finite"),
    ("1.0", TypeError, "float or a one-element tensor"), (True, TypeError, "float or a one-element tensor"),
    (torch.ones(2), ValueError, "one-element floating"), (torch.ones(1, dtype=torch.int32), ValueError, "floating"),
])
def test_amax_bounds_are_checked(bound, exc, match):
    cache = _cache(1, 2, "fp4")
    q = _rand(2, 1, 8, 2, 32)
    for name in ("q_amax", "current_k_amax"):
        with pytest.raises(exc, match=f"{name}.*{match}|{match}"):
            fp4_kv_attention(q, cache, 1, backend="torch", **{name: bound})


@pytest.mark.gpu
def test_amax_bound_on_another_device_is_refused():
    cache = _cache(1, 2, "fp4", device="cuda")
    with pytest.raises(ValueError, match="q_amax is on cpu"):
        fp4_kv_attention(_rand(2, 1, 8, 2, 32).cuda(), cache, 1, q_amax=torch.ones(1))


@pytest.mark.gpu
@pytest.mark.parametrize("as_tensor", [True, False])
def test_gpu_cudnn_fp8_amax_bounds(as_tensor):
    """The caller's bounds replace the amax passes of q and the current K: the exact amaxes give the same
    bits as no bounds (the same scales), and 8× looser bounds stay within the FP8 path's own error of the
    fp64 reference of the decoded cache (E4M3 keeps its 3 mantissa bits over 15 binades, so a scale 3
    binades too large only costs precision below 2⁻⁶ of it)."""
    cache, q, g = _fp8_cache_and_q(3)
    ck, cv = ((torch.randn(q.shape, generator=g) * s).to(q.device, torch.bfloat16) for s in (3, 1))
    kw = {"current_k": ck, "current_v": cv, "compute": "fp8"}

    def bound(x, f):
        b = x.abs().amax().float() * f
        return b.reshape(1) if as_tensor else b.item()

    base = fp4_kv_attention(q, cache, 0, **kw)
    exact = fp4_kv_attention(q, cache, 0, q_amax=bound(q, 1), current_k_amax=bound(ck, 1), **kw)
    assert torch.equal(exact, base)
    loose = fp4_kv_attention(q, cache, 0, q_amax=bound(q, 8), current_k_amax=bound(ck, 8), **kw)
    kk, vv = cache.dequantize(0, dtype=torch.float32)
    k64, v64 = torch.cat([kk, ck.float()], 1).double(), torch.cat([vv, cv.float()], 1).double()
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q.double(), k64, v64)))
    ref = ref.transpose(1, 2)
    e_base = ((base.double() - ref).norm() / ref.norm()).item()
    e_loose = ((loose.double() - ref).norm() / ref.norm()).item()
    assert not torch.equal(loose, base)  # the scales did change
    assert e_loose <= 1.25 * e_base, (e_loose, e_base)


# ---- q as FP8 codes with its scale (the fused RoPE's output) ------------------------------------


def _q8(q: torch.Tensor, scale: torch.Tensor, heads_major: bool = False) -> torch.Tensor:
    codes = (q.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    if heads_major:
        return codes.transpose(1, 2).contiguous().transpose(1, 2)
    return codes


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_current", [True, False])
def test_fp8_q_equals_its_decoded_bf16_q_off_cudnn(backend, with_current):
    """Off the cuDNN FP8 path an FP8 q is decoded (codes · q_scale, rounded to the output dtype) and then
    takes the 16-bit q's path: bit for bit the call with that decoded q."""
    dev = _triton_device_or_skip() if backend == "triton" else "cpu"
    cache = _cache(11, 3, "fp4", d=64, device=dev)
    q = _rand(12, 1, 24, 2, 64).to(dev)
    s = (q.float().abs().amax() / 448).reshape(1)
    kw = {"current_k": _rand(13, 1, 24, 2, 64).to(dev), "current_v": _rand(14, 1, 24, 2, 64).to(dev)} \
        if with_current else {}
    got = fp4_kv_attention(_q8(q, s), cache, 1, compute="fp8", backend=backend, q_scale=s, **kw)
    want = fp4_kv_attention((_q8(q, s).float() * s).bfloat16(), cache, 1, compute="fp8", backend=backend, **kw)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "kw, exc, words",
    [
        ({}, ValueError, "q_scale"),
        ({"q_scale": torch.ones(1), "compute": "bf16"}, ValueError, "compute='fp8'"),
        ({"q_scale": torch.ones(1, dtype=torch.float64)}, TypeError, "q_scale"),
        ({"q_scale": torch.ones(2)}, ValueError, "one element"),
        ({"q_scale": 0.5}, TypeError, "q_scale must be a torch.Tensor"),
        ({"q_scale": torch.ones(1), "q_amax": 3.0}, ValueError, "q_amax"),
        ({"q_scale": torch.ones(1), "current_k": _rand(1, 1, 8, 2, 32).float(),
          "current_v": _rand(2, 1, 8, 2, 32).float()}, TypeError, "bf16 or fp16"),
    ],
)
def test_fp8_q_bad_arguments(kw, exc, words):
    cache = _cache(1, 2, "fp4")
    q8 = _rand(2, 1, 8, 2, 32).to(torch.float8_e4m3fn)
    with pytest.raises(exc, match=words):
        fp4_kv_attention(q8, cache, 1, **{"compute": "fp8", **kw})
    with pytest.raises(ValueError, match="FP8 q"):
        fp4_kv_attention(_rand(2, 1, 8, 2, 32), cache, 1, compute="fp8", q_scale=torch.ones(1))


@pytest.mark.gpu
@pytest.mark.parametrize("q_heads_major", [True, False])
@pytest.mark.parametrize("ws_heads_major", [True, False])
def test_gpu_cudnn_fp8_q_codes_read_as_they_are(q_heads_major, ws_heads_major, monkeypatch):
    """cuDNN FP8 path: FP8 q codes with q_scale (token- or head-major, either workspace layout) give bit
    for bit the output of the 16-bit q whose bound makes the same scale (a power of two: bound/448 is
    exact) and so the same codes; O is token-major in every layout."""
    _fp8_sdpa_or_skip()
    from longlive_kernels.attention import fp4_kv_attention_sdpa

    monkeypatch.setattr(fp4_kv_attention_sdpa, "FP8_HEADS_MAJOR", ws_heads_major)
    cache, k, v, g = _filled_gpu_cache(chunks=4, seed=4)
    q = (torch.randn(k.shape, generator=g) * 3).to(k.device, torch.bfloat16)
    s = torch.exp2(torch.ceil(torch.log2(q.float().abs().amax() / 448))).reshape(1)
    kw = {"current_k": k, "current_v": v, "compute": "fp8"}
    want = fp4_kv_attention(q, cache, 0, q_amax=s * 448, **kw)
    got = fp4_kv_attention(_q8(q, s, q_heads_major), cache, 0, q_scale=s, **kw)
    assert torch.equal(got, want)
    codes, o_scale = fp4_kv_attention(_q8(q, s, q_heads_major), cache, 0, q_scale=s, out_fp8=True, **kw)
    assert codes.is_contiguous()
    assert torch.equal((codes.float() * o_scale).bfloat16(), want)


def test_slow_fp8_warning_once_per_hopper_device(monkeypatch):
    """compute="fp8" on Hopper without cuDNN's FP8 attention warns (once per device) that it runs the
    slow portable kernel; other GPUs and the CPU stay silent."""
    import importlib
    import warnings

    mod = importlib.import_module("longlive_kernels.attention.fp4_kv_attention")  # the module, not the function

    monkeypatch.setattr(mod, "_WARNED_SLOW_FP8", set())
    cap = {0: (9, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: cap[torch.device(d).index])
    with pytest.warns(RuntimeWarning, match="nvidia-cudnn-frontend"):
        mod._warn_slow_fp8(torch.device("cuda", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod._warn_slow_fp8(torch.device("cuda", 0))  # already told
        mod._warn_slow_fp8(torch.device("cuda", 1))  # not Hopper: the Triton FP8 kernel is the fast path there
        mod._warn_slow_fp8(torch.device("cpu"))
