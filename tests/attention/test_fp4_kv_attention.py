"""fp4_kv_attention: the portable Triton kernel (FP4 tiles decoded in registers) vs fp64 attention over
the dequantized cache (the oracle: ``_fp4_kv_attention_helpers``), FP8 compute vs an FP8 emulation,
the torch backend, zero tiles and NaN poison, input errors. The decode routines, the model size and
the Gluon Hopper kernel: ``test_fp4_kv_attention_decode.py``, ``..._model_size.py``, ``..._gluon.py``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from longlive_kernels.attention import FP4KVCache, fp4_kv_attention
from longlive_kernels.attention import reference as ref
from longlive_kernels.testing import cosine, rel_err

from ._fp4_kv_attention_helpers import _check_against_reference, _fp8_emulation, _rand

TRITON_DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _filled_cache(seed, *, b, h, d, t, n_chunks, max_chunks=3, device="cpu", pin=None, storage="fp4"):
    """A cache after chunks 0..n_chunks-1 (every chunk written); returns (cache, last k, last v)."""
    cache = FP4KVCache(
        num_layers=2,
        num_heads=h,
        head_dim=d,
        chunk_tokens=t,
        max_chunks=max_chunks,
        batch_size=b,
        device=device,
        dtype=torch.float32,
        storage=storage,
    )
    for n in range(n_chunks):
        cache.start_chunk(n)
        k = _rand(seed + 2 * n, b, t, h, d, spread=2.0, device=device)
        v = _rand(seed + 2 * n + 1, b, t, h, d, spread=2.0, device=device)
        cache.update(1, k, v, backend="torch" if device == "cpu" else "auto")
        if pin == n:
            cache.pin_shot_sink(n)
    return cache, k, v


def _keys(cache, k, v, with_current):
    kc, vc = cache.dequantize(1, include_current=not with_current, backend="torch")
    if with_current:
        kc, vc = torch.cat([kc.float(), k.float()], 1), torch.cat([vc.float(), v.float()], 1)
    return kc, vc


# ---- the kernel vs fp64 attention (CPU interpreter: small shapes) ----------------------------------------


@given(
    seed=st.integers(0, 2**31 - 1),
    t=st.sampled_from([16, 40, 48]),
    n_chunks=st.integers(1, 4),
    lq=st.sampled_from([5, 16, 40]),
    with_current=st.booleans(),
    h=st.sampled_from([1, 2]),
    b=st.sampled_from([1, 2]),
)
@settings(max_examples=6)
@example(seed=1, t=48, n_chunks=4, lq=40, with_current=True, h=2, b=1)
@example(seed=2, t=40, n_chunks=3, lq=16, with_current=False, h=1, b=2)
@example(seed=1223, t=48, n_chunks=1, lq=5, with_current=True, h=1, b=1)  # failed while the interpreter truncated to bf16
def test_kernel_matches_fp64_attention_on_dequantized_cache(seed, t, n_chunks, lq, with_current, h, b):
    cache, k, v = _filled_cache(
        seed, b=b, h=h, d=64, t=t, n_chunks=n_chunks, device=TRITON_DEV, pin=1 if n_chunks > 2 else None
    )
    q = _rand(seed + 99, b, lq, h, 64, device=TRITON_DEV)
    if with_current:
        k, v = k[:, : min(t, lq + 3)].contiguous(), v[:, : min(t, lq + 3)].contiguous()  # any Lc
    kw = dict(current_k=k, current_v=v) if with_current else {}
    out = fp4_kv_attention(q, cache, 1, backend="triton", **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    kk, vv = _keys(cache, k, v, with_current)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu())


def test_kernel_bf16_storage_and_softmax_scale():
    cache, k, v = _filled_cache(5, b=1, h=2, d=64, t=32, n_chunks=3, device=TRITON_DEV, storage="bf16")
    q = _rand(6, 1, 20, 2, 64, device=TRITON_DEV)
    out = fp4_kv_attention(q, cache, 1, current_k=k, current_v=v, softmax_scale=0.05, backend="triton")
    kk, vv = _keys(cache, k, v, True)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu(), scale=0.05)


@given(seed=st.integers(0, 2**31 - 1), t=st.sampled_from([32, 40, 64]), with_current=st.booleans())
@settings(max_examples=4)
@example(seed=3, t=64, with_current=False)
def test_fp8_compute_error_is_fp8_rounding(seed, t, with_current):
    cache, k, v = _filled_cache(seed, b=1, h=2, d=64, t=t, n_chunks=3, device=TRITON_DEV)
    q = _rand(seed + 7, 1, 32, 2, 64, device=TRITON_DEV)
    kw = dict(current_k=k, current_v=v) if with_current else {}
    out = fp4_kv_attention(q, cache, 1, compute="fp8", backend="triton", **kw).cpu()
    kk, vv = _keys(cache, k, v, with_current)
    want = ref.attention(q.cpu(), kk.cpu(), vv.cpu())
    emul = _fp8_emulation(q.cpu(), kk.cpu(), vv.cpu())
    assert rel_err(out, want) <= 2 * rel_err(emul, want) + 1e-3
    assert cosine(out, want) > 0.99


def test_torch_backend_is_dequantize_then_sdpa():
    cache, k, v = _filled_cache(8, b=1, h=2, d=32, t=24, n_chunks=3)
    q = _rand(9, 1, 24, 2, 32)
    out = fp4_kv_attention(q, cache, 1, current_k=k, current_v=v, backend="torch")
    kk, vv = _keys(cache, k, v, True)
    _check_against_reference(out, q, kk, vv)


def test_zero_tiles_and_nan_poison():
    cache, k, v = _filled_cache(10, b=1, h=1, d=64, t=32, n_chunks=2, device=TRITON_DEV)
    cache.start_chunk(2)
    zeros = torch.zeros(1, 32, 1, 64, dtype=torch.bfloat16, device=TRITON_DEV)
    cache.update(1, zeros, zeros, backend="torch" if TRITON_DEV == "cpu" else "auto")  # amax 0: scale 0
    q = _rand(11, 1, 16, 1, 64, device=TRITON_DEV)
    out = fp4_kv_attention(q, cache, 1, backend="triton")
    kk, vv = _keys(cache, k, v, False)
    _check_against_reference(out.cpu(), q.cpu(), kk.cpu(), vv.cpu())
    v_nan = _rand(12, 1, 32, 1, 64, device=TRITON_DEV)
    v_nan[0, 3, 0, 5] = float("nan")
    cache.update(1, k, v_nan, chunk_id=0, backend="torch" if TRITON_DEV == "cpu" else "auto")
    assert fp4_kv_attention(q, cache, 1, backend="triton").isnan().all()  # every query sees the NaN block


# ---- bad input ------------------------------------------------------------------------------------------


def _small():
    cache, k, v = _filled_cache(0, b=1, h=2, d=64, t=16, n_chunks=2)
    return cache, _rand(1, 1, 16, 2, 64), k, v


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda c, q, k, v: fp4_kv_attention(q.float(), c, 1), TypeError, "dtype"),
        (lambda c, q, k, v: fp4_kv_attention(q[:, :, :1], c, 1), ValueError, "does not match"),
        (lambda c, q, k, v: fp4_kv_attention(q[..., :32], c, 1), ValueError, "does not match"),
        (lambda c, q, k, v: fp4_kv_attention(q[0], c, 1), ValueError, "dims"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 2), ValueError, "layer"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k), ValueError, "both"),
        (
            lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k.half(), current_v=v.half()),
            TypeError,
            "dtype",
        ),
        (
            lambda c, q, k, v: fp4_kv_attention(q, c, 1, current_k=k[:, :, :1], current_v=v[:, :, :1]),
            ValueError,
            "current_k",
        ),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, compute="fp4"), ValueError, "compute"),
        (lambda c, q, k, v: fp4_kv_attention(q, c, 1, backend="cuda"), ValueError, "backend"),
        (lambda c, q, k, v: fp4_kv_attention(q, None, 1), TypeError, "FP4KVCache"),
        (
            lambda c, q, k, v: fp4_kv_attention(
                q, FP4KVCache(num_layers=1, num_heads=2, head_dim=64, chunk_tokens=8), 0
            ),
            ValueError,
            "no current chunk",
        ),
        (
            lambda c, q, k, v: fp4_kv_attention(
                q,
                FP4KVCache(num_layers=1, num_heads=2, head_dim=64, chunk_tokens=8, storage="bf16"),
                0,
                compute="fp8",
                current_k=k,
                current_v=v,
            ),
            ValueError,
            "storage",
        ),
    ],
)
def test_bad_input_errors(call, exc, words):
    cache, q, k, v = _small()
    with pytest.raises(exc, match=words):
        call(cache, q, k, v)
