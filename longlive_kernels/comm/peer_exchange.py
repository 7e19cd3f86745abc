"""Ulysses exchanges by NVLink peer stores into symmetric memory (``UlyssesAttention(transport="peer")``).

NCCL's all-to-all costs an SP=2 attention layer of the 5B model ~0.35 ms against 1.75 ms of local
attention (2×H200, bench/RESULTS.md issue 6): a pack copy, the collective's own SM copies through
staging buffers, an unpack copy, for q, k, v and again for o. Within one node every GPU can store
straight into a peer's memory. :class:`PeerExchange` allocates its receive buffers in torch
symmetric memory (CUDA backend, multicast off), so each rank's Triton kernel
(:func:`scatter_heads`, :func:`scatter_tokens`) writes every destination's slice directly where
that destination's attention will read it — the layout conversion *is* the transfer. Two
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
from .peer_exchange_triton import MAX_DESTINATIONS, _rows_to_peers_kernel

__all__ = ["PeerExchange", "scatter_heads", "scatter_tokens"]

_BLOCK_ROWS = 32  # rows of D elements per program (tools/probe_peer_exchange.py sweeps these two)
_NUM_WARPS = 4
# destination as the fastest grid index: local and NVLink stores interleave instead of running one
# after the other (2xH200: q, k, v + o exchanges 0.190 -> 0.174 ms, tools/probe_peer_exchange.py)
_DEST_FIRST = True
_SHARED: dict[tuple, PeerExchange] = {}


def _copy_rows(srcs, dsts, *, dst_offset, n_i, n_j, s_dest, dst_strides, d_src=0) -> None:
    """Triton launch: rows (b, i, j) of D = src.shape[-1] elements from each of ``srcs`` (1-3
    tensors of one shape and strides: dims 0, 1, 2 plus ``s_dest`` per destination) to
    ``dsts[dest]`` at ``n·d_src + dst_offset`` + ``dst_strides``."""
    src = srcs[0]
    n_rows = src.shape[0] * n_i * n_j
    ptrs = list(dsts) + [dsts[0]] * (MAX_DESTINATIONS - len(dsts))
    sources = list(srcs) + [src] * (3 - len(srcs))
    blocks = triton.cdiv(n_rows, _BLOCK_ROWS)
    dest_first = _DEST_FIRST and blocks <= 65535  # grid y/z are limited to 65535
    grid = (len(dsts), blocks, len(srcs)) if dest_first else (blocks, len(dsts), len(srcs))
    _rows_to_peers_kernel[grid](
        *sources, *ptrs, dst_offset, n_i, n_j, n_rows, src.stride(0), src.stride(1), src.stride(2), s_dest,
        *dst_strides, d_src, D=src.shape[-1], BLOCK_R=_BLOCK_ROWS, P=len(dsts), DEST_FIRST=dest_first,
        num_warps=_NUM_WARPS,
    )


def _check_transfer(name: str, x: torch.Tensor, dsts, rank: int, want_dst: tuple[int, ...]) -> None:
    _checks.check_dtype(name, x)
    _checks.check_ndim(name, x, 4)
    _checks.check_last_dim_contiguous(name, x)
    if not 1 <= len(dsts) <= MAX_DESTINATIONS:
        raise ValueError(f"need 1..{MAX_DESTINATIONS} destinations, got {len(dsts)}")
    if not 0 <= rank < len(dsts):
        raise ValueError(f"rank must be in [0, {len(dsts)}), got {rank}")
    for d, t in enumerate(dsts):
        if t.dtype != x.dtype or tuple(t.shape) != want_dst or not t.is_contiguous() or t.device != x.device:
            raise ValueError(f"destination {d} must be a contiguous {x.dtype} tensor {list(want_dst)} on "
                             f"{x.device}, got {t.dtype} {list(t.shape)} on {t.device} "
                             f"(contiguous: {t.is_contiguous()})")


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
        P contiguous [B, P·s, H/P, D] buffers of x's dtype, one per destination rank (peer buffers
        mapped into this process, or local tensors).
    rank : int
        This rank's index (which token block of each destination it writes).
    backend : {"auto", "triton", "torch"}

    Raises
    ------
    ValueError
        Heads not divisible by P, destination of another shape/dtype/device or not contiguous.
    """
    _scatter_heads([x], [dst.unsqueeze(0) for dst in dsts], rank, backend)


def _scatter_heads(xs, dsts, rank: int, backend: str) -> None:
    """:func:`scatter_heads` of n inputs of one shape: ``dsts[d]`` is [n, B, P·s, H/P, D] and input i
    lands in ``dsts[d][i]``. Inputs of one stride pattern (n ≤ 3) go in one launch."""
    x = xs[0]
    p = len(dsts)
    if x.dim() == 4 and x.shape[2] % max(p, 1):
        raise ValueError(f"x has {x.shape[2]} heads, not divisible by {p} destinations")
    b, s, heads, d = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    h = heads // max(p, 1)
    for xi in xs:
        _check_transfer("x", xi, [dst[0] for dst in dsts], rank, (b, p * s, h, d))
    if _triton_ok(x, backend, "scatter_heads"):
        step = b * p * s * h * d  # elements between the inputs' blocks of a destination
        fused = len(xs) <= 3 and all(xi.stride() == x.stride() for xi in xs)
        launches = [(0, list(xs))] if fused else [(i, [xi]) for i, xi in enumerate(xs)]
        for first, group in launches:
            _copy_rows(group, dsts, dst_offset=first * step + rank * s * h * d, n_i=s, n_j=h,
                       s_dest=h * group[0].stride(2), dst_strides=(p * s * h * d, h * d, d), d_src=step)
        return
    for i, xi in enumerate(xs):
        for dest, dst in enumerate(dsts):
            dst[i, :, rank * s:(rank + 1) * s].copy_(xi[:, :, dest * h:(dest + 1) * h])


def scatter_tokens(o: torch.Tensor, dsts, rank: int, *, backend: str = "auto") -> None:
    """Head→seq half of a Ulysses exchange, as stores: ``dsts[d][:, :, rank·h:(rank+1)·h] = o[:, d·s:(d+1)·s]``.

    Parameters
    ----------
    o : torch.Tensor
        [B, P·s, h, D] this rank's heads over the whole sequence (e.g. SDPA's [B, h, S, D] output
        transposed: any strides with a contiguous last dim).
    dsts : sequence of torch.Tensor
        P contiguous [B, s, P·h, D] buffers of o's dtype, one per destination rank.
    rank : int
        This rank's index (which head block of each destination it writes).
    backend : {"auto", "triton", "torch"}

    Raises
    ------
    ValueError
        Tokens not divisible by P, destination of another shape/dtype/device or not contiguous.
    """
    p = len(dsts)
    if o.dim() == 4 and o.shape[1] % max(p, 1):
        raise ValueError(f"o has {o.shape[1]} tokens, not divisible by {p} destinations")
    b, tokens, h, d = o.shape if o.dim() == 4 else (0, 0, 0, 0)
    s = tokens // max(p, 1)
    _check_transfer("o", o, dsts, rank, (b, s, p * h, d))
    if _triton_ok(o, backend, "scatter_tokens"):
        _copy_rows([o], dsts, dst_offset=rank * h * d, n_i=s, n_j=h, s_dest=s * o.stride(1),
                   dst_strides=(s * p * h * d, p * h * d, d))
        return
    for dest, dst in enumerate(dsts):
        dst[:, :, rank * h:(rank + 1) * h].copy_(o[:, dest * s:(dest + 1) * s])


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
    a fresh tensor. Inference only (no autograd). Sets ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``
    unless the caller set it (the lent H200 hosts keep NVLink multicast off).
    """

    def __init__(self, group, *, batch: int, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, inputs: int = 3, backend: str = "auto"):
        import torch.distributed._symmetric_memory as symm_mem

        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
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
        if hasattr(symm_mem, "enable_symm_mem_for_group"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated (a no-op) in newer torch
                symm_mem.enable_symm_mem_for_group(group.group_name)
        self._in = symm_mem.empty((inputs, batch, p * tokens, h, head_dim), dtype=dtype, device=device)
        self._out = symm_mem.empty((batch, tokens, heads, head_dim), dtype=dtype, device=device)
        self._in_handle = symm_mem.rendezvous(self._in, group.group_name)
        self._out_handle = symm_mem.rendezvous(self._out, group.group_name)
        self._in_peers = [self._in if r == rank else self._in_handle.get_buffer(r, self._in.shape, dtype)
                          for r in range(p)]
        self._out_peers = [self._out if r == rank else self._out_handle.get_buffer(r, self._out.shape, dtype)
                           for r in range(p)]

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

    def seq_to_head(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``inputs`` tensors [B, tokens, H, D] → views [B, P·tokens, H/P, D] (this rank's heads)."""
        if len(xs) != self.inputs or any(tuple(x.shape) != self.shape for x in xs):
            raise ValueError(f"PeerExchange.seq_to_head: expected {self.inputs} tensors of shape "
                             f"{list(self.shape)}, got {[list(x.shape) for x in xs]}")
        self._in_handle.barrier(channel=0)  # every peer is done reading its buffer
        _scatter_heads(xs, self._in_peers, self.rank, self.backend)  # q, k, v: one launch
        self._in_handle.barrier(channel=0)  # every store has landed
        return tuple(self._in[i] for i in range(self.inputs))

    def head_to_seq(self, o: torch.Tensor) -> torch.Tensor:
        """o [B, P·tokens, H/P, D] → [B, tokens, H, D] (a new tensor)."""
        b, t, heads, d = self.shape
        want = (b, self.world_size * t, heads // self.world_size, d)
        if tuple(o.shape) != want:
            raise ValueError(f"PeerExchange.head_to_seq: o must be {list(want)}, got {list(o.shape)}")
        p, r = self.world_size, self.rank
        h = heads // p
        out = torch.empty(self.shape, dtype=o.dtype, device=o.device)
        self._out_handle.barrier(channel=0)
        # own heads of own tokens go straight into the output; only the peers' blocks are copied out
        # of the shared buffer after the barrier
        dsts = [out if d == r else buf for d, buf in enumerate(self._out_peers)]
        scatter_tokens(o, dsts, r, backend=self.backend)
        self._out_handle.barrier(channel=0)
        if r > 0:
            out[:, :, : r * h].copy_(self._out[:, :, : r * h])
        if r < p - 1:
            out[:, :, (r + 1) * h:].copy_(self._out[:, :, (r + 1) * h:])
        return out
