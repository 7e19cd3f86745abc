"""FP4KVCache: bookkeeping vs the plain-Python policy model, update bit-exact with quantize_nvfp4 per
128-token tile, round trip within the NVFP4 bound, poisoned buffers, update_quantized, BF16 storage,
dequantize into a workspace. Input errors: ``test_kv_cache_bad_input.py``; GPU backends at model size
and CUDA-graph replay across chunks: ``test_kv_cache_gpu.py``."""

from __future__ import annotations

import os
import random

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from longlive_kernels.attention import FP4KVCache
from longlive_kernels.attention import reference as ref
from longlive_kernels.attention.reference import KV_SCALE_TILE, KVCachePolicy
from longlive_kernels.fp4 import dequantize_nvfp4, quantize_nvfp4
from longlive_kernels.testing import assert_bitwise_equal, poison_like

from ._kv_cache_helpers import RULES, _assert_only_slot_written, _assert_slot_is_quantization, _chunk, _poison

# where Triton runs (the triton_device fixture, usable inside @given tests)
TRITON_DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _tiny_cache(max_chunks: int, sink_chunks: int) -> FP4KVCache:
    return FP4KVCache(
        num_layers=1, num_heads=1, head_dim=16, chunk_tokens=1, max_chunks=max_chunks, sink_chunks=sink_chunks
    )


# ---- bookkeeping: 10,000 random sequences against reference.KVCachePolicy ------------------------------


def _check_same(cache: FP4KVCache, model: KVCachePolicy) -> None:
    assert cache.host_table() == model.table()
    assert cache.context_chunks() == model.context_chunks()
    assert cache.current_chunk == model.current
    for c, s in model.slot.items():
        assert cache.slot_of(c) == s


def _run_sequence(rng: random.Random) -> None:
    max_chunks = rng.randint(2, 6)
    sink = rng.randint(0, max_chunks - 1)
    cache, model = _tiny_cache(max_chunks, sink), KVCachePolicy(max_chunks, sink)
    nxt = 0
    for _ in range(rng.randint(1, 24)):
        op = rng.random()
        if op < 0.55 or model.current is None:  # new chunk (sometimes skipping ids)
            nxt += 1 if rng.random() < 0.9 else rng.randint(2, 4)
            n = nxt - 1
            cache.start_chunk(n)
            model.start_chunk(n)
        elif op < 0.75:  # scene cut: pin a resident chunk (usually the current one)
            c = model.current if rng.random() < 0.7 else rng.choice(sorted(model.slot))
            try:
                model.pin_shot_sink(c)
            except ValueError:
                with pytest.raises(ValueError):
                    cache.pin_shot_sink(c)
            else:
                cache.pin_shot_sink(c)
        elif op < 0.9:  # re-write a chunk: resident ones resolve to their table entry, others fail
            c = rng.randint(0, nxt)
            if c in model.slot:
                idx = cache._table_index(c)
                assert model.table()[idx] == model.slot[c]
            else:
                with pytest.raises(ValueError, match="not resident"):
                    cache._table_index(c)
        else:  # an id that does not increase is refused by both
            c = rng.randint(0, model.current)
            with pytest.raises(ValueError):
                model.start_chunk(c)
            with pytest.raises(ValueError):
                cache.start_chunk(c)
        _check_same(cache, model)
    assert cache.table.tolist() == model.table()
    cache.reset()
    assert cache.host_table() == [0, -1] + [-1] * max_chunks and cache.table.tolist() == cache.host_table()


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1))
def test_index_table_matches_policy_model_10000_sequences(seed):
    rng = random.Random(seed)
    for _ in range(400):  # 25 examples x 400 = 10,000 sequences
        _run_sequence(rng)


def test_policy_steady_state_matches_spec():
    """§2.3/§2.4: [0 | n-2 | n-1 | n], and [0 | s | n-1 | n] after a shot sink s is pinned; a new
    chunk reuses the slot of the chunk that left (nothing is copied)."""
    cache = _tiny_cache(4, 1)
    for n in range(6):
        cache.start_chunk(n)
    assert cache.context_chunks() == [0, 3, 4]
    slot_3 = cache.slot_of(3)
    cache.start_chunk(6)
    assert cache.context_chunks() == [0, 4, 5] and cache.slot_of(6) == slot_3
    cache.pin_shot_sink(6)
    for n, ctx in ((7, [0, 5, 6]), (8, [0, 6, 7]), (9, [0, 6, 8])):
        cache.start_chunk(n)
        assert cache.context_chunks() == ctx
    cache.pin_shot_sink(9)  # re-pin: 6 becomes evictable
    cache.start_chunk(10)
    assert cache.context_chunks() == [0, 8, 9] and cache.shot_sink == 9
    cache.start_chunk(11)
    assert cache.context_chunks() == [0, 9, 10]


# ---- update: bit-exact with quantize_nvfp4 of each 128-token tile ----------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.sampled_from([1, 40, 128, 136]),
    rule=st.sampled_from(RULES),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    backend=st.sampled_from(["torch", "triton"]),
)
@settings(max_examples=8)
@example(seed=3, t=136, rule="four_over_six", dtype=torch.bfloat16, backend="triton")
def test_update_bit_exact_with_quantize_nvfp4(seed, t, rule, dtype, backend):
    dev = TRITON_DEV if backend == "triton" else "cpu"
    cache = FP4KVCache(
        num_layers=2, num_heads=2, head_dim=32, chunk_tokens=t, max_chunks=3, scale_rule=rule, device=dev
    )
    cache.start_chunk(0)
    k, v = _chunk(seed, 1, t, 2, 32, dtype, dev), _chunk(seed + 1, 1, t, 2, 32, dtype, dev)
    cache.update(1, k, v, backend=backend)
    _assert_slot_is_quantization(cache, 1, 0, k.cpu(), v.cpu())


def test_rewrite_overwrites_and_default_is_current(triton_device):
    cache = FP4KVCache(
        num_layers=1, num_heads=1, head_dim=32, chunk_tokens=24, max_chunks=3, device=triton_device
    )
    cache.start_chunk(0)
    cache.start_chunk(1)
    for seed in (1, 2):  # later denoising steps / the t=0 re-run overwrite the same slot
        k, v = (
            _chunk(seed, 1, 24, 1, 32, device=triton_device),
            _chunk(seed + 9, 1, 24, 1, 32, device=triton_device),
        )
        cache.update(0, k, v, backend="triton")
        _assert_slot_is_quantization(cache, 0, 1, k.cpu(), v.cpu())
    k0, v0 = _chunk(5, 1, 24, 1, 32, device=triton_device), _chunk(6, 1, 24, 1, 32, device=triton_device)
    cache.update(0, k0, v0, chunk_id=0, backend="triton")  # a context chunk (prompt-switch re-cache)
    _assert_slot_is_quantization(cache, 0, 0, k0.cpu(), v0.cpu())
    _assert_slot_is_quantization(cache, 0, 1, k.cpu(), v.cpu())


@given(seed=st.integers(0, 2**31 - 1), rule=st.sampled_from(["static6", "static4"]))
@settings(max_examples=5)
def test_round_trip_within_nvfp4_bound(seed, rule):
    """|x̂ − x| ≤ half an E2M1 step × the block's decode scale (or the excess above 6·d)."""
    cache = FP4KVCache(
        num_layers=1,
        num_heads=3,
        head_dim=64,
        chunk_tokens=160,
        max_chunks=2,
        scale_rule=rule,
        dtype=torch.float32,
    )
    cache.start_chunk(0)
    k, v = _chunk(seed, 1, 160, 3, 64, torch.float32), _chunk(seed + 1, 1, 160, 3, 64, torch.float32)
    cache.update(0, k, v, backend="torch")
    kd, vd = cache.dequantize(0, include_current=True, backend="torch")
    slot = cache.slot_of(0)
    for i, (x, xh) in enumerate(((k, kd), (v, vd))):
        s = cache.scale[0, i, slot].view(torch.float8_e4m3fn).float()  # [B, H, T, D/16]
        gs = cache.global_scale[0, i, slot].repeat_interleave(KV_SCALE_TILE, -1)[..., :160, None]
        d = (s * gs).repeat_interleave(16, -1).permute(0, 2, 1, 3)  # [B, T, H, D]
        r = (x / d).abs()
        half_step = torch.where(r <= 2, 0.25, torch.where(r <= 4, 0.5, 1.0)) * d
        bound = torch.maximum(half_step, (x.abs() - 6 * d).clamp_min(0)) * (1 + 2**-20) + 1e-30
        live = d > 0
        assert ((xh - x).abs() <= bound)[live].all()
        assert (xh[~live] == 0).all()


def test_dequantize_triton_matches_torch_in_attention_order(triton_device):
    cache = FP4KVCache(
        num_layers=2,
        num_heads=2,
        head_dim=32,
        chunk_tokens=40,
        max_chunks=3,
        device=triton_device,
        dtype=torch.float32,
    )
    data = {}
    for n in range(4):
        cache.start_chunk(n)
        data[n] = (
            _chunk(2 * n, 1, 40, 2, 32, device=triton_device),
            _chunk(2 * n + 1, 1, 40, 2, 32, device=triton_device),
        )
        cache.update(1, *data[n], backend="triton")
    assert cache.context_chunks() == [0, 2]
    for include_current in (False, True):
        kt, vt = cache.dequantize(1, include_current=include_current, backend="triton")
        kr, vr = cache.dequantize(1, include_current=include_current, backend="torch")
        assert_bitwise_equal(kt.cpu(), kr.cpu(), "k")
        assert_bitwise_equal(vt.cpu(), vr.cpu(), "v")
    k16, _ = cache.dequantize(1, include_current=True, dtype=torch.bfloat16, backend="triton")
    assert_bitwise_equal(k16.cpu(), kt.cpu().bfloat16(), "bf16 decode = the fp32 decode rounded once")
    chunks = [0, 2, 3]
    for j, c in enumerate(chunks):  # each 40-token block is that chunk's reference decode
        k_ref = ref.kv_dequantize(*ref.kv_quantize(data[c][0].cpu()), dtype=torch.float32)
        assert_bitwise_equal(kt[:, 40 * j : 40 * (j + 1)].cpu(), k_ref, f"chunk {c}")


# ---- poisoned buffers: a write touches exactly its slot -----------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_update_writes_only_its_slot(backend, triton_device):
    dev = triton_device if backend == "triton" else "cpu"
    cache = FP4KVCache(num_layers=2, num_heads=2, head_dim=32, chunk_tokens=136, max_chunks=3, device=dev)
    before = _poison(cache)
    cache.start_chunk(0)
    cache.start_chunk(1)
    k, v = _chunk(7, 1, 136, 2, 32, device=dev), _chunk(8, 1, 136, 2, 32, device=dev)
    cache.update(1, k, v, backend=backend)
    _assert_only_slot_written(cache, before, 1, cache.slot_of(1))
    _assert_slot_is_quantization(cache, 1, 1, k.cpu(), v.cpu())


# ---- update_quantized and BF16 storage --------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["fp4", "bf16"])
def test_update_quantized_copies_bits(storage):
    cache = FP4KVCache(
        num_layers=1,
        num_heads=2,
        head_dim=32,
        chunk_tokens=136,
        max_chunks=2,
        storage=storage,
        dtype=torch.float32,
    )
    cache.start_chunk(0)
    k, v = _chunk(3, 1, 136, 2, 32), _chunk(4, 1, 136, 2, 32)
    qk, qv = quantize_nvfp4(k, backend="torch"), quantize_nvfp4(v, backend="torch").to_blocked()
    cache.update_quantized(0, qk, qv)
    kd, vd = cache.dequantize(0, include_current=True, backend="torch")
    dt = torch.float32 if storage == "fp4" else torch.bfloat16  # BF16 storage rounds once
    assert_bitwise_equal(kd, dequantize_nvfp4(qk, dt, backend="torch").float(), "k")
    assert_bitwise_equal(vd, dequantize_nvfp4(qv, dt, backend="torch").float(), "v")


def test_bf16_storage_same_interface():
    cache = FP4KVCache(num_layers=2, num_heads=2, head_dim=32, chunk_tokens=24, max_chunks=3, storage="bf16")
    chunks = {}
    for n in range(4):
        cache.start_chunk(n)
        chunks[n] = (_chunk(n, 1, 24, 2, 32), _chunk(n + 50, 1, 24, 2, 32))
        cache.update(1, *chunks[n])
    k, v = cache.dequantize(1, include_current=True)
    assert_bitwise_equal(k, torch.cat([chunks[c][0] for c in (0, 2, 3)], 1), "k")
    assert_bitwise_equal(v, torch.cat([chunks[c][1] for c in (0, 2, 3)], 1), "v")
    assert cache.memory_report()["compression"] == pytest.approx(1.0)


def test_memory_report_model_geometry():
    cache = FP4KVCache(num_layers=1, num_heads=24, head_dim=128, chunk_tokens=7040, max_chunks=4)
    rep = cache.memory_report()
    assert rep["bf16_bytes_per_layer"] == 2 * 4 * 7040 * 24 * 128 * 2  # 346 MB (spec §2.2)
    assert rep["compression"] >= 3.5 and rep["bits_per_value"] < 4.6
    assert rep["bytes_per_layer"] == cache.nbytes_per_layer == cache.nbytes - cache.table.numel() * 4


# ---- dequantize(out=...): into the head of a larger (poisoned) workspace ----------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("include_current", [False, True])
def test_dequantize_into_out_writes_exactly_its_rows(backend, include_current, triton_device):
    dev = triton_device if backend == "triton" else "cpu"
    cache = FP4KVCache(num_layers=2, num_heads=2, head_dim=32, chunk_tokens=40, max_chunks=4, batch_size=2,
                       device=dev)
    for n in range(4):
        cache.start_chunk(n)
        cache.update(1, _chunk(3 * n, 2, 40, 2, 32, device=dev), _chunk(3 * n + 1, 2, 40, 2, 32, device=dev),
                     backend=backend)
    want = cache.dequantize(1, include_current=include_current, dtype=torch.float32, backend="torch")
    rows = want[0].shape[1]  # fp32: exact decode (Triton's interpreter truncates to bf16)
    ws = poison_like(torch.empty(2, 2, rows + 17, 2, 32, dtype=torch.float32, device=dev))
    before = ws.clone()
    out = (ws[0, :, :rows], ws[1, :, :rows])
    got = cache.dequantize(1, include_current=include_current, backend=backend, out=out)
    assert got[0].data_ptr() == ws[0].data_ptr()
    for g, w in zip(got, want, strict=True):
        assert_bitwise_equal(g.cpu(), w.cpu(), "decoded rows")
    assert_bitwise_equal(ws[:, :, rows:].cpu(), before[:, :, rows:].cpu(), "rows past out")


def test_dequantize_out_errors():
    cache = FP4KVCache(num_layers=1, num_heads=2, head_dim=32, chunk_tokens=8, max_chunks=3)
    cache.start_chunk(0)
    cache.start_chunk(1)
    good = torch.empty(1, 8, 2, 32)
    with pytest.raises(TypeError, match="pair"):
        cache.dequantize(0, out=good)
    with pytest.raises(ValueError, match=r"out\[1\] must have shape \[1, 8, 2, 32\]"):
        cache.dequantize(0, out=(good, torch.empty(1, 16, 2, 32)))
    with pytest.raises(ValueError, match="one dtype"):
        cache.dequantize(0, out=(good, good.bfloat16()))
    with pytest.raises(ValueError, match="differs"):
        cache.dequantize(0, dtype=torch.float16, out=(good, good.clone()))
    with pytest.raises(TypeError, match="dtype"):
        cache.dequantize(0, out=(good.int(), good.int()))
    with pytest.raises(ValueError, match="same strides"):
        cache.dequantize(0, out=(good, torch.empty(1, 2, 8, 32).transpose(1, 2)))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float8_e4m3fn])
def test_dequantize_with_per_tensor_scale_is_one_rounding(triton_device, out_dtype):
    """The FP8 window of ``compute="fp8"``: each code is RNE(decoded value · inv_scale) in E4M3, bit for
    bit, for K and V with different scales; rows outside the decoded window stay untouched. (fp32 output:
    the scaling itself, exact; FP8 output only on a GPU: the interpreter's fp32 → E4M3 conversion is wrong
    where rounding carries into the exponent, e.g. 0.4997 → 0.25.)"""
    if out_dtype == torch.float8_e4m3fn and triton_device == "cpu":
        pytest.skip("E4M3 conversion is checked on the GPU (the interpreter's is wrong at binade carries)")
    cache = FP4KVCache(num_layers=1, num_heads=2, head_dim=32, chunk_tokens=40, max_chunks=3, device=triton_device,
                       dtype=torch.float32)
    for n in range(3):
        cache.start_chunk(n)
        cache.update(0, _chunk(3 * n, 1, 40, 2, 32, device=triton_device),
                     _chunk(3 * n + 1, 1, 40, 2, 32, device=triton_device), backend="triton")
    from longlive_kernels.attention.kv_cache_ops import _dequantize_triton

    k32, v32 = cache.dequantize(0, include_current=True, backend="torch")
    inv = torch.tensor([448.0 / k32.abs().max().item(), 300.0 / v32.abs().max().item()], device=triton_device)
    poison = torch.full((1, 3 * 40 + 8, 2, 32), -448.0).to(out_dtype).to(triton_device)
    out_k, out_v = poison.clone(), poison.clone()
    _dequantize_triton(cache.data[0], cache.scale[0], cache.global_scale[0], cache.table, 3, out_dtype,
                       out_k[:, :120], out_v[:, :120], inv)
    bits = torch.uint8 if out_dtype == torch.float8_e4m3fn else torch.int32
    for got, ref32, s in ((out_k, k32, inv[0]), (out_v, v32, inv[1])):
        want = (ref32.cpu() * s.cpu()).to(out_dtype)
        assert_bitwise_equal(got[:, :120].cpu().view(bits), want.view(bits), "scaled window")
        assert_bitwise_equal(got[:, 120:].cpu().view(bits), poison[:, 120:].cpu().view(bits), "tail")
    assert abs(out_k[:, :120].float().abs().max().item() - 448.0) < 1e-3  # the scale maps amax to the top code
