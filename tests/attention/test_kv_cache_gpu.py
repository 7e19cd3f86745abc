"""FP4KVCache on the GPU: every backend bit-exact at the model size, CUDA-graph replay across chunks,
the CUDA update for any shape (bit-exact and confined to its slot)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longlive_kernels.attention import FP4KVCache
from longlive_kernels.testing import assert_bitwise_equal, poison_like

from ._kv_cache_helpers import RULES, _assert_only_slot_written, _assert_slot_is_quantization, _chunk, _poison


@pytest.mark.gpu
@pytest.mark.parametrize("rule", RULES)
def test_gpu_update_and_dequant_bit_exact_model_size(rule):
    from longlive_kernels._backend import has_cuda_extension

    cache = FP4KVCache(
        num_layers=2,
        num_heads=24,
        head_dim=128,
        chunk_tokens=7040,
        max_chunks=4,
        scale_rule=rule,
        device="cuda",
        dtype=torch.float32,
    )
    k, v = _chunk(1, 1, 7040, 24, 128, device="cuda"), _chunk(2, 1, 7040, 24, 128, device="cuda")
    cache.start_chunk(0)
    slot = cache.slot_of(0)
    cache.update(1, k, v, backend="torch")
    want = [t[1, :, slot].clone() for t in (cache.data, cache.scale, cache.global_scale)]
    want_deq = cache.dequantize(1, include_current=True, backend="torch")
    for be in ["triton"] + (["cuda"] if has_cuda_extension() else []):
        for t in (cache.data, cache.scale, cache.global_scale):
            t.copy_(poison_like(t))
        cache.update(1, k, v, backend=be)
        bufs = (cache.data, cache.scale, cache.global_scale)
        for name, t, w in zip(("data", "scale", "gs"), bufs, want, strict=True):
            assert_bitwise_equal(t[1, :, slot], w, f"{be} {name}")  # other slots stay poisoned
        for a, b in zip(cache.dequantize(1, include_current=True, backend=be), want_deq, strict=True):
            assert_bitwise_equal(a, b, f"{be} dequant")


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_across_chunks():
    """One captured update reads its slot from the device table: replaying it after start_chunk()
    writes the new chunk's slot (addresses never change)."""
    cache = FP4KVCache(num_layers=1, num_heads=4, head_dim=128, chunk_tokens=256, max_chunks=3, device="cuda")
    k = torch.empty(1, 256, 4, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.empty_like(k)
    cache.start_chunk(0)
    k.copy_(_chunk(0, 1, 256, 4, 128)), v.copy_(_chunk(1, 1, 256, 4, 128))
    cache.update(0, k, v, backend="triton")  # warm-up / compile
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cache.update(0, k, v, backend="triton")
    for n in range(1, 5):
        cache.start_chunk(n)
        k.copy_(_chunk(10 * n, 1, 256, 4, 128)), v.copy_(_chunk(10 * n + 1, 1, 256, 4, 128))
        g.replay()
        torch.cuda.synchronize()
        _assert_slot_is_quantization(cache, 0, n, k.cpu(), v.cpu())


@pytest.mark.gpu
@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.sampled_from([1, 40, 128, 136, 300]),
    d=st.sampled_from([16, 32, 64, 80, 128, 256]),
    rule=st.sampled_from(RULES),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    specials=st.booleans(),
    strided=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_gpu_cuda_update_any_shape_bit_exact_and_in_its_slot(seed, t, d, rule, dtype, specials, strided):
    """The CUDA update (every template instance: head_dim 16..256, partial 128-token tiles, the three
    input dtypes, NaN/Inf blocks, K/V as views of a fused QKV-like buffer) equals quantize_nvfp4 per
    tile and leaves every other slot's poisoned bytes alone."""
    from longlive_kernels._backend import has_cuda_extension

    if not has_cuda_extension():
        pytest.skip("CUDA extension not built")
    h = 3
    cache = FP4KVCache(num_layers=2, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=3, scale_rule=rule,
                       device="cuda")
    before = _poison(cache)
    cache.start_chunk(0)
    cache.start_chunk(1)
    k, v = _chunk(seed, 1, t, h, d, dtype), _chunk(seed + 1, 1, t, h, d, dtype)
    if specials:
        k[0, t // 2, 1, d // 2] = float("nan")
        v[0, t - 1, h - 1, 0] = float("-inf")
    if strided:  # K and V as slices of one [B, T, H, 2D] buffer
        kv_buf = torch.cat([k, v], dim=-1).cuda()
        k_dev, v_dev = kv_buf[..., :d], kv_buf[..., d:]
    else:
        k_dev, v_dev = k.cuda(), v.cuda()
    cache.update(0, k_dev, v_dev, backend="cuda")
    _assert_only_slot_written(cache, before, 0, cache.slot_of(1))
    _assert_slot_is_quantization(cache, 0, 1, k, v)


@pytest.mark.gpu
@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.sampled_from([1, 40, 136, 300]),
    d=st.sampled_from([16, 48, 64, 128]),
    b=st.sampled_from([1, 2]),
    heads_major=st.booleans(),
    items=st.sampled_from([1, 2, 4]),
    specials=st.booleans(),
)
@settings(max_examples=30, deadline=None)
def test_gpu_cuda_fp8_window_equals_triton_and_the_formula(seed, t, d, b, heads_major, items, specials):
    """The CUDA FP8 window decode (a per-block table of 8 E4M3 codes, one byte permute per code) equals
    the Triton kernel and RNE_E4M3(decoded · inv_scale) bit for bit, for every chunk in attention order,
    head_dim with and without a compile-time block count, batch > 1, token- and head-major strided
    windows, and leaves the rows after the window poisoned."""
    from longlive_kernels._backend import has_cuda_extension
    from longlive_kernels.attention.kv_cache_ops import dequantize_fp8_into

    if not has_cuda_extension():
        pytest.skip("CUDA extension not built")
    h, n = 3, 3
    cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=n, batch_size=b,
                       device="cuda")
    for c in range(n):
        cache.start_chunk(c)
        k, v = _chunk(seed + 2 * c, b, t, h, d), _chunk(seed + 2 * c + 1, b, t, h, d)
        if specials and c == 1:  # a saturating block (|value| · inv > 448) and a -0 block
            k[0, 0, 0, :16] *= 64
            v[-1, t - 1, h - 1, :16] = -0.0
        cache.update(0, k.cuda(), v.cuda())
    ref32 = cache.dequantize(0, include_current=True, dtype=torch.float32, backend="torch")
    inv = torch.tensor([448.0 / ref32[0].abs().amax().item(), 300.0 / ref32[1].abs().amax().item()], device="cuda")
    if specials:
        inv[0] *= 8  # K's outlier block saturates to ±448
    rows = n * t + 5
    shape = (2, b, h, rows, d) if heads_major else (2, b, rows, h, d)
    poison = torch.full(shape, -3.0, device="cuda").to(torch.float8_e4m3fn)
    got = {}
    for backend in ("triton", "cuda") if d & (d - 1) == 0 else ("cuda",):  # Triton: power-of-two head_dim
        buf = poison.clone()
        ws = buf.transpose(2, 3) if heads_major else buf
        dequantize_fp8_into(cache.data[0], cache.scale[0], cache.global_scale[0], cache.table, ws[0, :, : n * t],
                            ws[1, :, : n * t], inv, backend=backend, items_per_thread=items)
        got[backend] = ws
        assert_bitwise_equal(ws[:, :, n * t:].view(torch.uint8), (poison.transpose(2, 3) if heads_major else poison)[
            :, :, n * t:].view(torch.uint8), f"{backend}: rows after the window")
    for i in range(2):
        want = (ref32[i] * inv[i]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)  # saturating
        assert_bitwise_equal(got["cuda"][i, :, : n * t].view(torch.uint8), want.view(torch.uint8), f"cuda {i}")
        if "triton" in got:
            assert_bitwise_equal(got["cuda"][i].view(torch.uint8), got["triton"][i].view(torch.uint8), f"triton {i}")
