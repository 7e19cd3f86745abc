"""Ulysses exchanges by NVLink peer stores into symmetric memory (``UlyssesAttention(transport="peer")``).

NCCL's all-to-all costs an SP=2 attention layer of the 5B model ~0.35 ms against 1.75 ms of local
attention (2×H200, bench/RESULTS.md issue 6): a pack copy, the collective's own SM copies through
staging buffers, an unpack copy, for q, k, v and again for o. Within one node every GPU can store
straight into a peer's memory. :class:`PeerExchange` allocates its receive buffers in torch
symmetric memory (CUDA backend, multicast off), so each rank's Triton kernel
(:func:`scatter_heads`, :func:`scatter_tokens`) writes every destination's slice directly where
that destination's attention will read it — the layout conversion *is* the transfer. A view of any
:func:`symmetric_empty` tensor can be the destination instead (the current chunk's slot of a BF16
KV cache, the layer's output buffer), so what arrives is not copied again. Two
symmetric-memory barriers per exchange order it: one before the stores (every peer has finished
reading the previous exchange's data from its buffer) and one after (every store has landed).
One barrier and two alternating buffers would do in a strictly alternating call sequence, but a
CUDA graph replays a fixed buffer sequence whatever eager exchanges ran in between, so the
exchange does not rely on the call order.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
import triton

from .. import _checks
from .._backend import resolve_backend
from .peer_exchange_triton import MAX_DESTINATIONS, MAX_SOURCES, _rows_to_peers_kernel

__all__ = ["PeerExchange", "scatter_heads", "scatter_tokens", "symmetric_empty"]

_BLOCK_ROWS = 32  # rows of D elements per program (tools/probe_peer_exchange.py sweeps these two)
_NUM_WARPS = 4
# destination as the fastest grid index: local and NVLink stores interleave instead of running one
# after the other (2xH200: q, k, v + o exchanges 0.190 -> 0.174 ms, tools/probe_peer_exchange.py)
_DEST_FIRST = True
_SHARED: dict[tuple, PeerExchange] = {}


def _copy_rows(srcs, dsts, *, dst_offset, n_i, n_j, s_dest) -> None:
    """Triton launch: rows (b, i, j) of D = src.shape[-1] elements from each of ``srcs`` (1-3
    tensors of one shape and strides: dims 0, 1, 2 plus ``s_dest`` per destination) to
    ``dsts[n][dest]`` (one strides for all) at ``dst_offset`` + its dims 0, 1, 2."""
    src, p = srcs[0], len(dsts[0])
    n_rows = src.shape[0] * n_i * n_j
    ptrs = []
    for n in range(MAX_SOURCES):
        row = dsts[min(n, len(dsts) - 1)]
        ptrs += list(row) + [row[0]] * (MAX_DESTINATIONS - p)
    sources = list(srcs) + [src] * (MAX_SOURCES - len(srcs))
    blocks = triton.cdiv(n_rows, _BLOCK_ROWS)
    dest_first = _DEST_FIRST and blocks <= 65535  # grid y/z are limited to 65535
    grid = (p, blocks, len(srcs)) if dest_first else (blocks, p, len(srcs))
    d_b, d_i, d_j = dsts[0][0].stride()[:3]
    _rows_to_peers_kernel[grid](
        *sources, *ptrs, dst_offset, n_i, n_j, n_rows, src.stride(0), src.stride(1), src.stride(2), s_dest,
        d_b, d_i, d_j, D=src.shape[-1], BLOCK_R=_BLOCK_ROWS, P=p, DEST_FIRST=dest_first,
        num_warps=_NUM_WARPS,
    )


def _span(t: torch.Tensor) -> int:
    """Elements from ``t``'s first to its last element (inclusive): the extent a strided view covers."""
    return 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides that matter: those of dims of size 1 are never used and read as 0."""
    return tuple(st if n > 1 else 0 for n, st in zip(t.shape, t.stride()))


def _check_transfer(name: str, x: torch.Tensor, dsts, rank: int, want_dst: tuple[int, ...]) -> None:
    _checks.check_dtype(name, x)
    _checks.check_ndim(name, x, 4)
    _checks.check_last_dim_contiguous(name, x)
    if not 1 <= len(dsts) <= MAX_DESTINATIONS:
        raise ValueError(f"need 1..{MAX_DESTINATIONS} destinations, got {len(dsts)}")
    if not 0 <= rank < len(dsts):
        raise ValueError(f"rank must be in [0, {len(dsts)}), got {rank}")
    for d, t in enumerate(dsts):
        if (t.dtype != x.dtype or tuple(t.shape) != want_dst or t.device != x.device or t.stride(-1) != 1
                or _strides(t) != _strides(dsts[0])):
            raise ValueError(f"destination {d} must be a {x.dtype} tensor {list(want_dst)} on {x.device} with a "
                             f"contiguous last dim and the strides of destination 0 {list(dsts[0].stride())}, "
                             f"got {t.dtype} {list(t.shape)} on {t.device}, strides {list(t.stride())}")


def _triton_ok(x: torch.Tensor, backend: str, op: str) -> bool:
    d = x.shape[-1]
    be = resolve_backend(backend, x.device, op=op, supported=("triton", "torch"), prefer=("triton",))
    return be == "triton" and d >= 16 and d & (d - 1) == 0


def scatter_heads(x: torch.Tensor, dsts, rank: int, *, backend: str = "auto") -> None:
    """Seq→head half of a Ulysses exchange, as stores: ``dsts[d][:, rank·s:(rank+1)·s] = x[:, :, d·h:(d+1)·h]``.

    Parameters
    ----------
    x : torch.Tensor
        [B, s, H, D] this rank's tokens (bf16/fp16/fp32, last dim contiguous, any other strides).
    dsts : sequence of torch.Tensor
        P [B, P·s, H/P, D] tensors of x's dtype and of one strides (last dim contiguous), one per
        destination rank (peer buffers mapped into this process, or local tensors).
    rank : int
        This rank's index (which token block of each destination it writes).
    backend : {"auto", "triton", "torch"}

    Raises
    ------
    ValueError
        Heads not divisible by P, destination of another shape/dtype/device/strides.
    """
    _scatter_heads([x], [list(dsts)], rank, backend)


def _scatter_heads(xs, dsts, rank: int, backend: str) -> None:
    """:func:`scatter_heads` of n inputs of one shape: input i lands in ``dsts[i][dest]``. Inputs of
    one stride pattern whose destinations share one strides (n ≤ 3) go in one launch."""
    x = xs[0]
    p = len(dsts[0])
    if len(dsts) != len(xs):
        raise ValueError(f"need one destination list per input, got {len(dsts)} for {len(xs)} inputs")
    if x.dim() == 4 and x.shape[2] % max(p, 1):
        raise ValueError(f"x has {x.shape[2]} heads, not divisible by {p} destinations")
    b, s, heads, d = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    h = heads // max(p, 1)
    for xi, di in zip(xs, dsts):
        _check_transfer("x", xi, di, rank, (b, p * s, h, d))
    if _triton_ok(x, backend, "scatter_heads"):
        groups: list[list[int]] = []
        for i, (xi, di) in enumerate(zip(xs, dsts)):
            g = next((g for g in groups if len(g) < MAX_SOURCES and _strides(xs[g[0]]) == _strides(xi)
                      and _strides(dsts[g[0]][0]) == _strides(di[0])), None)
            groups.append([i]) if g is None else g.append(i)
        for g in groups:
            _copy_rows([xs[i] for i in g], [dsts[i] for i in g], dst_offset=rank * s * dsts[g[0]][0].stride(1),
                       n_i=s, n_j=h, s_dest=h * xs[g[0]].stride(2))
        return
    for xi, di in zip(xs, dsts):
        for dest, dst in enumerate(di):
            dst[:, rank * s:(rank + 1) * s].copy_(xi[:, :, dest * h:(dest + 1) * h])


def scatter_tokens(o: torch.Tensor, dsts, rank: int, *, backend: str = "auto") -> None:
    """Head→seq half of a Ulysses exchange, as stores: ``dsts[d][:, :, rank·h:(rank+1)·h] = o[:, d·s:(d+1)·s]``.

    Parameters
    ----------
    o : torch.Tensor
        [B, P·s, h, D] this rank's heads over the whole sequence (e.g. SDPA's [B, h, S, D] output
        transposed: any strides with a contiguous last dim).
    dsts : sequence of torch.Tensor
        P [B, s, P·h, D] tensors of o's dtype and of one strides (last dim contiguous), one per
        destination rank.
    rank : int
        This rank's index (which head block of each destination it writes).
    backend : {"auto", "triton", "torch"}

    Raises
    ------
    ValueError
        Tokens not divisible by P, destination of another shape/dtype/device/strides.
    """
    p = len(dsts)
    if o.dim() == 4 and o.shape[1] % max(p, 1):
        raise ValueError(f"o has {o.shape[1]} tokens, not divisible by {p} destinations")
    b, tokens, h, d = o.shape if o.dim() == 4 else (0, 0, 0, 0)
    s = tokens // max(p, 1)
    _check_transfer("o", o, dsts, rank, (b, s, p * h, d))
    if _triton_ok(o, backend, "scatter_tokens"):
        _copy_rows([o], [list(dsts)], dst_offset=rank * h * dsts[0].stride(2), n_i=s, n_j=h, s_dest=s * o.stride(1))
        return
    for dest, dst in enumerate(dsts):
        dst[:, :, rank * h:(rank + 1) * h].copy_(o[:, dest * s:(dest + 1) * s])


class _SymmetricBuffer:
    """One :func:`symmetric_empty` allocation: its handle and the peer views handed out so far."""

    def __init__(self, tensor: torch.Tensor, handle, group_name: str, rank: int, world: int):
        self.tensor = tensor  # kept: the peers have it mapped for the life of the process
        self.handle, self.group_name, self.rank, self.world = handle, group_name, rank, world
        self.start = tensor.data_ptr()
        self.end = self.start + tensor.numel() * tensor.element_size()
        self.device = tensor.device
        self.views: dict[tuple, list[torch.Tensor]] = {}

    def peer_views(self, t: torch.Tensor) -> list[torch.Tensor]:
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        views = self.views.get(key)
        if views is None:
            offset = (t.data_ptr() - self.start) // t.element_size()
            views = [t if r == self.rank else
                     self.handle.get_buffer(r, (_span(t),), t.dtype, offset).as_strided(t.shape, t.stride())
                     for r in range(self.world)]
            self.views[key] = views
        return views


_SYMMETRIC: list[_SymmetricBuffer] = []


def symmetric_empty(shape, *, dtype: torch.dtype, device, group=None) -> torch.Tensor:
    """A tensor in torch symmetric memory that :class:`PeerExchange` of ``group`` may store into.

    Pass views of it as ``out`` of :meth:`PeerExchange.seq_to_head` / :meth:`~PeerExchange.head_to_seq`
    (or ``kv_out`` / ``out`` of ``UlyssesAttention(transport="peer")``): the peers' stores then land
    there directly, e.g. in the current chunk's slot of a BF16 KV cache, with no copy out of an
    exchange buffer.

    Parameters
    ----------
    shape : sequence of int
    dtype : torch.dtype
    device : torch.device
        This rank's GPU.
    group : ProcessGroup, optional
        The ranks that will store into it (default: the default group).

    Returns
    -------
    torch.Tensor
        Uninitialized, contiguous. Every rank's view at the same offset is the one its peers write.

    Notes
    -----
    Collective: every rank of ``group`` must allocate the same shapes in the same order. The
    allocation lives until the process ends (the peers keep it mapped). Sets ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` unless the caller set it.
    """
    import torch.distributed._symmetric_memory as symm_mem

    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    group = group if group is not None else dist.group.WORLD
    if torch.device(device).type != "cuda":
        raise ValueError(f"symmetric_empty needs a CUDA device, got {device}")
    if hasattr(symm_mem, "enable_symm_mem_for_group"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated (a no-op) in newer torch
            symm_mem.enable_symm_mem_for_group(group.group_name)
    t = symm_mem.empty(tuple(shape), dtype=dtype, device=device)
    handle = symm_mem.rendezvous(t, group.group_name)
    _SYMMETRIC.append(_SymmetricBuffer(t, handle, group.group_name, dist.get_rank(group),
                                       dist.get_world_size(group)))
    return t


def _record(t: torch.Tensor, group_name: str, name: str) -> _SymmetricBuffer:
    """The :func:`symmetric_empty` allocation of the group that holds all of ``t``."""
    end = t.data_ptr() + _span(t) * t.element_size()
    for rec in _SYMMETRIC:
        if rec.group_name == group_name and rec.device == t.device and rec.start <= t.data_ptr() and end <= rec.end:
            return rec
    raise ValueError(f"{name} must be a view of a symmetric_empty(..., group=) tensor of this exchange's group "
                     f"(the peers store into it), got a tensor at {t.data_ptr():#x} on {t.device}")


def _peer_views(t: torch.Tensor, group_name: str, name: str) -> list[torch.Tensor]:
    """Every rank's view of ``t`` (a view of a :func:`symmetric_empty` tensor of the group)."""
    return _record(t, group_name, name).peer_views(t)


class PeerExchange:
    """The seq→head and head→seq exchanges of one attention layer through symmetric memory.

    Parameters
    ----------
    group : ProcessGroup, optional
        NCCL group of the ranks of one node (default: the default group); P = its size ≤ 8.
    batch, tokens, heads, head_dim : int
        Local q/k/v shape [batch, tokens, heads, head_dim] (tokens per rank; heads % P == 0).
    dtype : torch.dtype
    device : torch.device
        This rank's GPU.
    inputs : int
        Tensors per seq→head exchange (3: q, k, v).
    backend : {"auto", "triton", "torch"}

    Notes
    -----
    Construction is collective (every rank of ``group`` must build the same exchange). Memory:
    inputs · B·P·tokens·heads/P·D + B·tokens·heads·D elements per rank. The views returned by
    :meth:`seq_to_head` are valid until the next :meth:`seq_to_head`; :meth:`head_to_seq` returns
    a fresh tensor unless given ``out``. Inference only (no autograd). Sets
    ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` unless the caller set it (the lent H200 hosts keep
    NVLink multicast off).
    """

    def __init__(self, group, *, batch: int, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, inputs: int = 3, backend: str = "auto"):
        group = group if group is not None else dist.group.WORLD
        p, rank = dist.get_world_size(group), dist.get_rank(group)
        if not 1 <= p <= MAX_DESTINATIONS or heads % p:
            raise ValueError(f"PeerExchange: need 1 <= P <= {MAX_DESTINATIONS} and heads % P == 0, got P = {p}, "
                             f"heads = {heads}")
        if torch.device(device).type != "cuda":
            raise ValueError(f"PeerExchange needs CUDA tensors, got device {device}")
        self.group, self.world_size, self.rank, self.backend = group, p, rank, backend
        self.shape = (batch, tokens, heads, head_dim)
        self.inputs = inputs
        h = heads // p
        self._in = symmetric_empty((inputs, batch, p * tokens, h, head_dim), dtype=dtype, device=device, group=group)
        self._out = symmetric_empty((batch, tokens, heads, head_dim), dtype=dtype, device=device, group=group)
        self._in_peers = _peer_views(self._in, group.group_name, "in")
        self._out_peers = _peer_views(self._out, group.group_name, "out")
        self._in_handle = _record(self._in, group.group_name, "in").handle

    @classmethod
    def shared(cls, group, *, batch: int, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
               device: torch.device, backend: str = "auto") -> PeerExchange:
        """One exchange per (group, shape, dtype, device) for the whole process (collective on the
        first call of a key): attention modules built per forward reuse its buffers."""
        group = group if group is not None else dist.group.WORLD
        key = (group.group_name, batch, tokens, heads, head_dim, dtype, torch.device(device), backend)
        ex = _SHARED.get(key)
        if ex is None:
            ex = _SHARED[key] = cls(group, batch=batch, tokens=tokens, heads=heads, head_dim=head_dim,
                                    dtype=dtype, device=device, backend=backend)
        return ex

    def seq_to_head(self, *xs: torch.Tensor, out=None) -> tuple[torch.Tensor, ...]:
        """``inputs`` tensors [B, tokens, H, D] → [B, P·tokens, H/P, D] (this rank's heads).

        ``out`` (optional): one entry per input, None or a [B, P·tokens, H/P, D] view of a
        :func:`symmetric_empty` tensor of the group (same view on every rank) that the input's
        exchange writes into instead of the exchange's own buffer (e.g. a KV-cache slot). Returns
        those tensors, or views of the exchange's buffer valid until the next call.
        """
        if len(xs) != self.inputs or any(tuple(x.shape) != self.shape for x in xs):
            raise ValueError(f"PeerExchange.seq_to_head: expected {self.inputs} tensors of shape "
                             f"{list(self.shape)}, got {[list(x.shape) for x in xs]}")
        out = [None] * self.inputs if out is None else list(out)
        if len(out) != self.inputs:
            raise ValueError(f"PeerExchange.seq_to_head: out needs {self.inputs} entries, got {len(out)}")
        dsts = [[buf[i] for buf in self._in_peers] if t is None else _peer_views(t, self.group.group_name, "out")
                for i, t in enumerate(out)]
        self._in_handle.barrier(channel=0)  # every peer is done reading its buffers
        _scatter_heads(xs, dsts, self.rank, self.backend)  # q, k, v: one launch where strides agree
        self._in_handle.barrier(channel=0)  # every store has landed
        return tuple(d[self.rank] for d in dsts)

    def head_to_seq(self, o: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """o [B, P·tokens, H/P, D] → [B, tokens, H, D]: a new tensor, or ``out`` (a [B, tokens, H, D]
        view of a :func:`symmetric_empty` tensor of the group, the same on every rank) where the
        peers' stores land directly."""
        b, t, heads, d = self.shape
        want = (b, self.world_size * t, heads // self.world_size, d)
        if tuple(o.shape) != want:
            raise ValueError(f"PeerExchange.head_to_seq: o must be {list(want)}, got {list(o.shape)}")
        if out is not None and tuple(out.shape) != self.shape:
            raise ValueError(f"PeerExchange.head_to_seq: out must be {list(self.shape)}, got {list(out.shape)}")
        p, r = self.world_size, self.rank
        h = heads // p
        fresh = out is None
        if fresh:
            out = torch.empty(self.shape, dtype=o.dtype, device=o.device)
            # own heads of own tokens go straight into the output; only the peers' blocks are
            # copied out of the shared buffer after the barrier
            dsts = [out if dest == r else buf for dest, buf in enumerate(self._out_peers)]
        else:  # a symmetric ``out``: every block lands there (checked before any barrier)
            dsts = _peer_views(out, self.group.group_name, "out")
        self._in_handle.barrier(channel=0)
        scatter_tokens(o, dsts, r, backend=self.backend)
        self._in_handle.barrier(channel=0)
        if not fresh:
            return out
        if r > 0:
            out[:, :, : r * h].copy_(self._out[:, :, : r * h])
        if r < p - 1:
            out[:, :, (r + 1) * h:].copy_(self._out[:, :, (r + 1) * h:])
        return out
