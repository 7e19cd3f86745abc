"""``scatter_heads`` / ``scatter_tokens``: the store kernels of ``PeerExchange`` (Ulysses over
symmetric memory). Destinations here are local tensors standing in for peer buffers; the
multi-GPU exchange itself is tested in ``_workers.case_peer`` on NCCL."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from longlive_kernels.comm import peer_exchange
from longlive_kernels.comm.peer_exchange import scatter_heads, scatter_tokens

POISON = -777.0


@pytest.fixture(params=[False, True], ids=["block_first", "dest_first"])
def grid_order(request):
    """Both grid orders of the store kernel (destination as the slowest or the fastest index)."""
    saved = peer_exchange._DEST_FIRST
    peer_exchange._DEST_FIRST = request.param
    yield request.param
    peer_exchange._DEST_FIRST = saved


def _poisoned(n, shape, dtype, device):
    return [torch.full(shape, POISON, dtype=dtype, device=device) for _ in range(n)]


shapes = st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.integers(1, 3),
                   st.sampled_from([16, 32]), st.integers(0, 3), st.integers(0, 2**31 - 1))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, dtype=st.sampled_from([torch.bfloat16, torch.float32]))
@example(shape=(1, 3, 2, 2, 16, 1, 0), dtype=torch.bfloat16)
def test_scatter_heads_writes_exactly_the_rank_block(triton_device, grid_order, shape, dtype):
    b, s, p, h, d, rank, seed = shape
    rank %= p
    g = torch.Generator().manual_seed(seed)
    # a fused-qkv slice: token stride 3·H·D, not contiguous over the heads of other tensors
    qkv = torch.randn(b, s, 3, p * h, d, generator=g).to(triton_device, dtype)
    x = qkv[:, :, 1]
    got = _poisoned(p, (b, p * s, h, d), dtype, triton_device)
    want = _poisoned(p, (b, p * s, h, d), dtype, triton_device)
    scatter_heads(x, got, rank, backend="triton")
    scatter_heads(x, want, rank, backend="torch")
    for dest in range(p):
        assert torch.equal(got[dest], want[dest])
        block = got[dest][:, rank * s:(rank + 1) * s]
        assert torch.equal(block, x[:, :, dest * h:(dest + 1) * h])
        rest = torch.cat([got[dest][:, : rank * s], got[dest][:, (rank + 1) * s:]], 1)
        assert bool((rest == POISON).all())  # nothing outside the rank's token block


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, dtype=st.sampled_from([torch.bfloat16, torch.float32]))
@example(shape=(2, 2, 3, 1, 32, 2, 5), dtype=torch.float32)
def test_scatter_tokens_writes_exactly_the_rank_heads(triton_device, grid_order, shape, dtype):
    b, s, p, h, d, rank, seed = shape
    rank %= p
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(b, h, p * s, d, generator=g).to(triton_device, dtype).transpose(1, 2)  # SDPA's layout
    got = _poisoned(p, (b, s, p * h, d), dtype, triton_device)
    scatter_tokens(o, got, rank, backend="triton")
    for dest in range(p):
        assert torch.equal(got[dest][:, :, rank * h:(rank + 1) * h], o[:, dest * s:(dest + 1) * s])
        others = torch.cat([got[dest][:, :, : rank * h], got[dest][:, :, (rank + 1) * h:]], 2)
        assert bool((others == POISON).all())


def test_scatter_errors_name_the_problem():
    x = torch.randn(1, 4, 6, 16)
    with pytest.raises(ValueError, match="not divisible"):
        scatter_heads(x, [torch.empty(1, 16, 1, 16)] * 4, 0, backend="torch")
    with pytest.raises(ValueError, match="destination 1"):
        scatter_heads(x, [torch.empty(1, 8, 3, 16), torch.empty(1, 8, 3, 8)], 0, backend="torch")
    with pytest.raises(ValueError, match="rank"):
        scatter_heads(x, [torch.empty(1, 8, 3, 16)] * 2, 2, backend="torch")
    with pytest.raises(ValueError, match="contiguous last dim"):
        scatter_tokens(torch.randn(1, 8, 3, 16), [torch.empty(1, 4, 16, 6).transpose(2, 3)] * 2, 0,
                       backend="torch")
    with pytest.raises(ValueError, match="strides of destination 0"):
        scatter_tokens(torch.randn(1, 8, 3, 16), [torch.empty(1, 4, 6, 16), torch.empty(1, 6, 4, 16).transpose(1, 2)],
                       0, backend="torch")
    with pytest.raises(TypeError):
        scatter_tokens(torch.zeros(1, 8, 3, 16, dtype=torch.int32), [torch.empty(1, 4, 6, 16)] * 2, 0)


@pytest.mark.parametrize("same_strides", [True, False])
def test_fused_qkv_launch_fills_each_input_block(triton_device, grid_order, same_strides):
    """``PeerExchange.seq_to_head``'s stores of q, k, v (one launch, grid axis 2 = the input, when
    their strides agree; one launch each otherwise): each input lands in its own [B, S, h, D] block
    of every destination's [3, B, S, h, D] buffer."""
    from longlive_kernels.comm.peer_exchange import _scatter_heads

    b, s, p, h, d, rank = 2, 3, 2, 2, 16, 1
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(b, s, p * h, d, generator=g).to(triton_device) for _ in range(3)]
    if not same_strides:  # a slice of a fused projection output next to two dense tensors
        xs[0] = torch.randn(b, s, 2, p * h, d, generator=g).to(triton_device)[:, :, 1]
    dsts = _poisoned(p, (3, b, p * s, h, d), torch.float32, triton_device)
    _scatter_heads(xs, [[dst[i] for dst in dsts] for i in range(3)], rank, "triton")
    for dest in range(p):
        for i, x in enumerate(xs):
            assert torch.equal(dsts[dest][i, :, rank * s:(rank + 1) * s], x[:, :, dest * h:(dest + 1) * h])
            assert bool((dsts[dest][i, :, : rank * s] == POISON).all())


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 2), p=st.integers(1, 3), window=st.integers(0, 3), rank=st.integers(0, 2),
       seed=st.integers(0, 2**31 - 1))
def test_inputs_land_in_their_own_destinations(triton_device, grid_order, b, p, window, rank, seed):
    """q into an exchange buffer, k and v into the tails of a KV window (``kv_out``): destinations
    of other allocations and strides than q's, written in as few launches as the strides allow,
    and nothing of the window outside the rank's token block of the tail is touched."""
    from longlive_kernels.comm.peer_exchange import _scatter_heads

    rank %= p
    s, h, d = 2, 2, 16
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, s, p * h, d, generator=g).to(triton_device) for _ in range(3)]
    q_dst = _poisoned(p, (b, p * s, h, d), torch.float32, triton_device)
    win = _poisoned(p, (2, b, window + p * s, h, d), torch.float32, triton_device)
    dsts = [q_dst, [w[0, :, window:] for w in win], [w[1, :, window:] for w in win]]
    _scatter_heads(xs, dsts, rank, "triton")
    for dest in range(p):
        for x, dst in zip(xs, (q_dst[dest], win[dest][0, :, window:], win[dest][1, :, window:])):
            assert torch.equal(dst[:, rank * s:(rank + 1) * s], x[:, :, dest * h:(dest + 1) * h])
        block = torch.zeros(win[dest].shape, dtype=torch.bool, device=triton_device)
        block[:, :, window + rank * s: window + (rank + 1) * s] = True
        assert bool((win[dest][~block] == POISON).all())
        assert bool((q_dst[dest][:, : rank * s] == POISON).all())


def test_symmetric_destinations_are_checked():
    """``symmetric_empty`` refuses a CPU device; a destination that is no view of a symmetric
    allocation of the group is refused with a message naming ``symmetric_empty``."""
    from longlive_kernels.comm import symmetric_empty

    with pytest.raises(ValueError, match="CUDA device"):
        symmetric_empty((2, 3), dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="symmetric_empty"):
        peer_exchange._peer_views(torch.empty(4, 8), "no-such-group", "kv_out[0]")
