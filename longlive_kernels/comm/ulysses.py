"""Ulysses all-to-all: ``ulysses_all_to_all`` ([B, S/P, H, D] ↔ [B, S, H/P, D]) with one
``all_to_all_single`` on one contiguous buffer, autograd (backward = the inverse all-to-all) and an
async handle so that compute can overlap the transfer.

Also the shared helpers of the comm ops: group size, dim checks, and the cross-rank agreement
check (``check_ranks=True``), which turns a rank-dependent shape into a ``ValueError`` on every
rank instead of a hung or corrupt collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from .. import _checks

_DTYPE_CODES = (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
)
_MAX_SIG_DIMS = 8


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def group_size(group: dist.ProcessGroup | None) -> int:
    """Number of ranks of ``group`` (``None`` = the default group); 1 when not initialized."""
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialized")
        return 1
    return dist.get_world_size(group)


def normalize_dims(name: str, x: torch.Tensor, scatter_dim: int, gather_dim: int) -> tuple[int, int]:
    """Check and return non-negative (scatter_dim, gather_dim) for ``x``."""
    nd = x.dim()
    for what, d in (("scatter_dim", scatter_dim), ("gather_dim", gather_dim)):
        if not isinstance(d, int) or isinstance(d, bool):
            raise TypeError(f"{what} must be an int, got {type(d).__name__}")
        if not -nd <= d < nd:
            raise ValueError(f"{what}={d} is out of range for {name} with shape {tuple(x.shape)}")
    sd, gd = scatter_dim % nd, gather_dim % nd
    if sd == gd:
        raise ValueError(f"scatter_dim and gather_dim must differ, both are {sd}")
    return sd, gd


def check_divisible(name: str, x: torch.Tensor, dim: int, world_size: int) -> None:
    """The scattered dim must split evenly over the group (heads % P, tokens % P)."""
    if x.shape[dim] % world_size != 0:
        raise ValueError(
            f"{name}.shape[{dim}] = {x.shape[dim]} is not divisible by the group size {world_size} "
            f"(Ulysses needs heads % P == 0 for seq→head and tokens % P == 0 for head→seq); "
            f"got shape {tuple(x.shape)}"
        )


def comm_device(group: dist.ProcessGroup | None, like: torch.device) -> torch.device:
    """Device for small metadata tensors of ``group`` (CUDA for NCCL, CPU otherwise)."""
    if dist.get_backend(group) == "nccl":
        return like if like.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tensor_signature(x: torch.Tensor) -> list[int]:
    """Fixed-length integers describing ``x``'s shape and dtype (for :func:`check_ranks_agree`)."""
    if x.dim() > _MAX_SIG_DIMS:
        raise ValueError(f"check_ranks supports up to {_MAX_SIG_DIMS} dims, got shape {tuple(x.shape)}")
    code = _DTYPE_CODES.index(x.dtype) if x.dtype in _DTYPE_CODES else len(_DTYPE_CODES)
    return [x.dim(), code, *x.shape, *([-1] * (_MAX_SIG_DIMS - x.dim()))]


def check_ranks_agree(group: dist.ProcessGroup | None, device: torch.device, signature: Sequence[int],
                      what: str) -> None:
    """All-gather ``signature`` (a list of ints of the same length on every rank) and raise the
    same ``ValueError`` on every rank when the ranks disagree. One tiny collective plus a host
    sync: a debugging / first-call check, not for every call of a hot loop."""
    p = group_size(group)
    sig = torch.tensor(list(signature), dtype=torch.int64, device=comm_device(group, device))
    gathered = torch.empty(p * sig.numel(), dtype=torch.int64, device=sig.device)
    # all_gather_single is the newer name (torch ≥ 2.12); the GPU machines may have an older torch
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(gathered, sig, group=group)
    rows = gathered.view(p, -1).cpu().tolist()
    if any(r != rows[0] for r in rows):
        listing = "; ".join(f"rank {i}: {r}" for i, r in enumerate(rows))
        raise ValueError(f"{what}: the ranks of the group disagree (all must match): {listing}")


# ---------------------------------------------------------------------------------------------
# The collective on one buffer, autograd-aware
# ---------------------------------------------------------------------------------------------


def _wire_view(t: torch.Tensor) -> torch.Tensor:
    """Collectives reject fp8 dtypes (gloo, some NCCL builds): move 1-byte floats as uint8."""
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


def all_to_all_buffer(send: torch.Tensor, recv: torch.Tensor, group, async_op: bool):
    """``all_to_all_single`` of a contiguous [P, ...] buffer (chunk j of ``send`` goes to rank j;
    chunk j of ``recv`` comes from rank j). Returns the work handle (or ``None``)."""
    return dist.all_to_all_single(_wire_view(recv), _wire_view(send), group=group, async_op=async_op)


class _AllToAllBuffer(torch.autograd.Function):
    """y = A2A(x) on [P, ...] buffers. A2A is a permutation whose transpose is A2A itself
    (recv_r[j] = send_j[r]), so the backward is the same all-to-all of the gradient."""

    @staticmethod
    def forward(ctx, send, group, work_box):
        recv = torch.empty_like(send)
        work = all_to_all_buffer(send, recv, group, async_op=work_box is not None)
        if work_box is not None:
            work_box.append(work)
        ctx.group = group
        return recv

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        all_to_all_buffer(grad, out, ctx.group, async_op=False)
        return out, None, None


class AllToAllHandle:
    """An all-to-all in flight. ``wait()`` makes the caller's stream wait for the transfer (NCCL;
    gloo blocks the host) and returns the result; later calls return the same object."""

    def __init__(self, works: Sequence[object], finish: Callable[[], object]):
        self._works = list(works)
        self._finish = finish
        self._done = False
        self._result = None

    def wait(self):
        if not self._done:
            for w in self._works:
                if w is not None:
                    w.wait()
            self._result = self._finish()
            self._done = True
            self._works, self._finish = [], None
        return self._result


def scatter_to_buffer(x: torch.Tensor, world_size: int, scatter_dim: int) -> torch.Tensor:
    """[..., N, ...] → contiguous [P, ..., N/P, ...] (chunk j of dim ``scatter_dim`` first).
    A view, no copy, when all dims before ``scatter_dim`` have size 1."""
    return x.unflatten(scatter_dim, (world_size, -1)).movedim(scatter_dim, 0).contiguous()


def gather_from_buffer(recv: torch.Tensor, gather_dim: int) -> torch.Tensor:
    """[P, *chunk] → the P chunks concatenated along ``gather_dim`` (a view when all chunk dims
    before ``gather_dim`` have size 1, e.g. B = 1 and the sequence dim)."""
    return recv.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def ulysses_all_to_all(
    x: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    scatter_dim: int,
    gather_dim: int,
    async_op: bool = False,
    out: torch.Tensor | None = None,
    check_ranks: bool = False,
) -> torch.Tensor | AllToAllHandle:
    """Ulysses all-to-all: split ``x`` into P chunks along ``scatter_dim``, send chunk j to rank j,
    concatenate the P received chunks (rank order) along ``gather_dim``.

    seq→head: ``x`` [B, S/P, H, D], ``scatter_dim=2, gather_dim=1`` → [B, S, H/P, D];
    head→seq: [B, S, H/P, D], ``scatter_dim=1, gather_dim=2`` → [B, S/P, H, D]. The gathered
    sequence is the ranks' local sequences concatenated in rank order (with Balanced SP:
    ``[r0_clean, r0_noisy, r1_clean, r1_noisy, ...]``, spec §5.2).

    Exactly one ``all_to_all_single`` on one contiguous buffer [P, *chunk]: packing is one copy
    (none when the chunks are already contiguous, e.g. head→seq with B = 1) and unpacking is a
    view for seq→head with B = 1.

    Parameters
    ----------
    x : torch.Tensor
        Any dtype (fp8 travels as uint8), same shape on every rank.
    group : torch.distributed.ProcessGroup, optional
        The sequence-parallel group (default: the default group).
    scatter_dim, gather_dim : int
        Distinct dims of ``x``; ``x.shape[scatter_dim] % P == 0``.
    async_op : bool
        Return an :class:`AllToAllHandle` at once; ``handle.wait()`` returns the result (compute
        issued in between overlaps the transfer).
    out : torch.Tensor, optional
        Destination of the gathered shape and ``x``'s dtype (e.g. a KV-cache slice). Received into
        directly when it is contiguous and the gather is a view (B = 1, seq gather); copied into
        otherwise. Not differentiable.
    check_ranks : bool
        All-gather the shape/dtype/dims first and raise the same ``ValueError`` on every rank if
        they differ between ranks (one tiny collective + host sync; off in hot loops).

    Returns
    -------
    torch.Tensor or AllToAllHandle
        The gathered tensor [..., N/P at scatter_dim, M·P at gather_dim, ...].

    Raises
    ------
    TypeError
        ``x`` not a tensor, dims not ints.
    ValueError
        Dims out of range or equal, ``x.shape[scatter_dim] % P != 0``, ``out`` of the wrong
        shape/dtype/device or used with autograd, ranks disagreeing (``check_ranks``). Raised
        before any collective, so a bad shape never hangs the group.

    Notes
    -----
    Autograd: the backward is the inverse all-to-all (scatter and gather swapped), run
    synchronously. Spec: ``longlive-spec.md`` §5.1; DeepSpeed-Ulysses (arXiv 2309.14509).
    """
    _checks.check_tensor("x", x)
    sd, gd = normalize_dims("x", x, scatter_dim, gather_dim)
    p = group_size(group)
    check_divisible("x", x, sd, p)
    out_shape = list(x.shape)
    out_shape[sd] //= p
    out_shape[gd] *= p
    if out is not None:
        _checks.check_tensor("out", out)
        if list(out.shape) != out_shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must be {tuple(out_shape)} {x.dtype} on {x.device}, got {tuple(out.shape)} "
                f"{out.dtype} on {out.device}"
            )
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError("out= is not differentiable; call under torch.no_grad() or drop out=")
    if check_ranks and p > 1:
        check_ranks_agree(group, x.device, tensor_signature(x) + [sd, gd], "ulysses_all_to_all")

    if p == 1:
        y = x if out is None else out.copy_(x)
        return AllToAllHandle([], lambda: y) if async_op else y

    send = scatter_to_buffer(x, p, sd)
    chunk_shape = send.shape[1:]
    works: list[object] = []
    if out is not None:
        direct = out.is_contiguous() and math.prod(chunk_shape[:gd]) == 1
        recv = out.view(p, *chunk_shape) if direct else torch.empty_like(send)
        works.append(all_to_all_buffer(send, recv, group, async_op))

        def finish():
            if not direct:
                out.copy_(gather_from_buffer(recv, gd))
            return out
    else:
        recv = _AllToAllBuffer.apply(send, group, works if async_op else None)

        def finish():
            return gather_from_buffer(recv, gd)

    if async_op:
        return AllToAllHandle(works, finish)
    for w in works:
        if w is not None:
            w.wait()
    return finish()
