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


def _cache(seed: int, n_chunks: int, storage: str, t: int = 24, h: int = 2, d: int = 32, b: int = 1):
    cache = FP4KVCache(num_layers=2, num_heads=h, head_dim=d, chunk_tokens=t, max_chunks=4, batch_size=b,
                       storage=storage)
    for n in range(n_chunks):
        cache.start_chunk(n)
        cache.update(1, _rand(seed + 2 * n, b, t, h, d), _rand(seed + 2 * n + 1, b, t, h, d), backend="torch")
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
