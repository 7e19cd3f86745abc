"""Launchers of the RoPE Triton kernels (``rope_triton.py``), the packed cos/sin tables they read
(:func:`rope_tables`) and the ``longlive_kernels::`` ``torch.library`` ops behind ``rope.py``
(forward, backward, fake and autograd registrations); each op runs the Triton launcher or
``reference.py`` as its resolved ``backend`` argument says.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
import triton

from .._backend import autotune_enabled, interpret_mode, num_sms
from ..fp4.format import E4M3_MAX
from . import reference
from .partial_sums import sum_partials
from .rope_triton import _rope_bwd_kernel, _rope_fwd_kernel

# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

# Grid (P, B): P·B ≈ PROGS_PER_SM·SMs programs (rounded down: one wave when that many fit on an
# SM). The configs pair warps / pipeline depth / register cap with the programs per SM their sm_90a
# build allows at 24 heads × 128 (3 tiles of 8 heads): at 4 warps a thread holds the same 8
# channels of 3 heads, so one cos/sin gather serves 3 heads (8 warps: 1.5-1.9× the instructions
# per token). Plain rotation ≈ 72 registers (7 programs per SM), with the RMSNorm ≈ 154 forward
# and 254 backward (3 and 2 programs; 8 warps capped at 128 registers: 2 programs of 8 warps).
# STAGES - 1 tokens per program are in flight (cp.async). Fewer programs amortize the weights and
# the backward's NH·D fp32 partial sums (PROGS_PER_SM·SMs·NH·D·4 bytes per weight at any length).
_FWD_CONFIGS = [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w, maxnreg=r)
                for w, s, p, r in ((4, 3, 4, None), (4, 3, 6, None), (4, 4, 3, None), (4, 3, 3, None),
                                   (4, 4, 2, None), (8, 3, 2, 128))]
_BWD_CONFIGS = [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w, maxnreg=r)
                for w, s, p, r in ((4, 3, 2, None), (4, 3, 4, None), (4, 4, 2, None), (4, 3, 6, None),
                                   (8, 3, 2, 128), (16, 3, 1, None))]
_INTERPRETER_CONFIG = {"PROGS_PER_SM": 2, "STAGES": 3}
_KEY = ["NH", "D", "size_class", "NORM_Q", "NORM_K"]  # size_class: a tuning per power of 2 of B·L


@functools.cache
def _tuned(kernel, bwd: bool):
    """The kernel wrapped in autotune (GPU); None in the interpreter or with autotuning off (one
    config)."""
    if interpret_mode() or not autotune_enabled():
        return None
    return triton.autotune(configs=_BWD_CONFIGS if bwd else _FWD_CONFIGS, key=_KEY if bwd else _KEY + ["Q_FP8"])(kernel)


def _programs(progs_per_sm: int, bsz: int, n_tok: int, device: torch.device) -> int:
    """Programs per batch row for a target of ``progs_per_sm`` programs per SM (at most one per
    token, at least one per batch row)."""
    return max(1, min(n_tok, progs_per_sm * num_sms(device) // bsz))


def _max_programs(kernel, bwd: bool, bsz: int, n_tok: int, device: torch.device) -> int:
    """Largest P any config may launch (sizes the backward's partial-sum buffer)."""
    tuned = _tuned(kernel, bwd)
    factors = ([_INTERPRETER_CONFIG["PROGS_PER_SM"]] if tuned is None
               else [c.kwargs["PROGS_PER_SM"] for c in tuned.configs])
    return _programs(max(factors), bsz, n_tok, device)


def _new_out(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fresh output buffer of a kernel (tests patch this to fill it with NaN, so any element a
    kernel forgets to write shows up)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(kernel, bwd: bool, n_tok: int, bsz: int, device, args, meta) -> int:
    """Launch over (P, B); returns the P that ran (each program writes its partial slot)."""
    tuned = _tuned(kernel, bwd)
    if tuned is None:
        cfg = _INTERPRETER_CONFIG
        n_p = _programs(cfg["PROGS_PER_SM"], bsz, n_tok, device)
        kernel[(n_p, bsz)](*args, **cfg, num_warps=4, **meta)
        return n_p
    tuned[lambda m: (_programs(m["PROGS_PER_SM"], bsz, n_tok, device), bsz)](*args, **meta)
    return _programs(tuned.best_config.kwargs["PROGS_PER_SM"], bsz, n_tok, device)


def rope_tables(
    frames: int, height: int, width: int, head_dim: int, frame_offset: int, theta: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed fp32 cos/sin tables [frames + height + width, head_dim/2], built in fp64.

    Row ``f`` (< frames) holds, in the temporal pair columns, the angles of position
    ``f + frame_offset``; rows ``frames + y`` and ``frames + height + x`` hold the height and width
    angles in their pair columns; other entries are unused (0). Cached (LRU, 32 entries): one AR
    chunk reuses its table over all layers and denoising steps. Inside
    :meth:`RopeTableBuffers.active` the buffers' fixed-address tables are returned instead.
    """
    buffers = _ACTIVE_TABLES.get()
    if buffers is not None:
        return buffers.lookup(frames, height, width, head_dim, frame_offset, theta, device)
    return _cached_tables(frames, height, width, head_dim, frame_offset, theta, device)


@functools.lru_cache(maxsize=32)
def _cached_tables(
    frames: int, height: int, width: int, head_dim: int, frame_offset: int, theta: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables of :func:`rope_tables`, LRU-cached by geometry and offset. Never built inside a
    CUDA-graph capture (the cached tensor would live in the graph's pool)."""
    parts = reference.rope_3d_split(head_dim)
    half = head_dim // 2
    counts = (frames, height, width)
    ang = torch.zeros(sum(counts), half, dtype=torch.float64, device=device)
    row, col = 0, 0
    for p, (dim, cnt) in enumerate(zip(parts, counts)):
        pos = torch.arange(cnt, dtype=torch.float64, device=device) + (float(frame_offset) if p == 0 else 0.0)
        inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        ang[row:row + cnt, col:col + dim // 2] = torch.outer(pos, inv_freq)
        row, col = row + cnt, col + dim // 2
    return ang.cos().float().contiguous(), ang.sin().float().contiguous()


_ACTIVE_TABLES: contextvars.ContextVar[RopeTableBuffers | None] = contextvars.ContextVar(
    "longlive_rope_table_buffers", default=None)


class RopeTableBuffers:
    """Fixed-address RoPE tables, so that a CUDA graph captured at one temporal offset replays at
    any other.

    The RoPE kernels read their cos/sin tables from memory and take ``frame_offset`` only to pick
    the table. Inside :meth:`active`, :func:`rope_tables` returns this object's buffer pair of the
    requested geometry (frames, height, width, head_dim, theta, device), created on first use and
    holding the tables of :attr:`frame_offset`; :meth:`set_offset` rewrites every buffer in place.
    A graph captured inside :meth:`active` therefore reads whatever offset was last set before
    its replay.

    Raises
    ------
    ValueError
        A lookup for another offset than :attr:`frame_offset` (the caller forgot
        :meth:`set_offset`), or before any offset was set.
    RuntimeError
        A new geometry looked up while a CUDA graph is being captured (run the forward once
        eagerly inside :meth:`active` first).
    """

    def __init__(self) -> None:
        self.frame_offset: int | None = None
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_offset(self, frame_offset: int) -> None:
        """Make every buffer hold the tables of ``frame_offset`` (device copies, stream-ordered;
        call outside a capture)."""
        if isinstance(frame_offset, bool) or not isinstance(frame_offset, int):
            raise TypeError(f"frame_offset must be an int, got {frame_offset!r}")
        if frame_offset != self.frame_offset:
            for (f, h, w, d, theta, device), (cos, sin) in self._buffers.items():
                new_cos, new_sin = _cached_tables(f, h, w, d, frame_offset, theta, device)
                cos.copy_(new_cos)
                sin.copy_(new_sin)
        self.frame_offset = frame_offset

    def lookup(self, frames: int, height: int, width: int, head_dim: int, frame_offset: int, theta: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffer pair of this geometry (see the class docstring for the errors)."""
        if frame_offset != self.frame_offset:
            raise ValueError(f"RopeTableBuffers: a kernel asked for frame_offset={frame_offset}, the buffers "
                             f"hold {self.frame_offset} (call set_offset first)")
        key = (frames, height, width, head_dim, float(theta), torch.device(device))
        pair = self._buffers.get(key)
        if pair is None:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"RopeTableBuffers: new RoPE geometry {key} during a CUDA-graph capture; "
                                   "run the forward once eagerly inside active() first")
            pair = tuple(t.clone() for t in _cached_tables(frames, height, width, head_dim, frame_offset,
                                                           theta, device))
            self._buffers[key] = pair
        return pair

    @contextlib.contextmanager
    def active(self):
        """Within the block (this thread/context), :func:`rope_tables` answers from these buffers."""
        token = _ACTIVE_TABLES.set(self)
        try:
            yield self
        finally:
            _ACTIVE_TABLES.reset(token)


def _head_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _head_tiles(nh: int) -> tuple[int, int]:
    """(HG, NHG): NHG = 3 tiles of HG heads when nh = 3·2^k (24 → 3 × 8), else one tile of
    next_power_of_2(nh) heads (exact for powers of 2, padded otherwise)."""
    hg = nh & -nh  # largest power of 2 dividing nh
    if nh // hg == 3:
        return hg, 3
    return triton.next_power_of_2(nh), 1


def _launch_meta(q: torch.Tensor):
    _bsz, _n_tok, nh, d = q.shape
    nt, nhh, _ = reference.rope_3d_split(d)
    hg, nhg = _head_tiles(nh)
    return {"D": d, "NT": nt // 2, "NHP": nhh // 2, "HG": hg, "NHG": nhg,
            "BLOCK_D": max(2, triton.next_power_of_2(d))}


def _rope_fwd_triton(q, k, wq, wk, grid_fhw, frame_offset, theta, eps, q_scale=None, q_out=None):
    """(q_out, k_out, [2, B, L] fp32 1/rms of each token of q, k — or None without RMSNorm).

    With ``q_scale`` ([1] fp32), q_out holds the E4M3 codes of q / q_scale: written into ``q_out``
    (float8_e4m3fn [B, L, H, D], any strides with a unit last one) when given, else a new contiguous
    tensor."""
    q, k = _unit_last(q), _unit_last(k)
    bsz, n_tok, nh, d = q.shape
    cos, sin = rope_tables(*grid_fhw, d, frame_offset, theta, q.device)
    if q_scale is None:
        qo = _new_out((bsz, n_tok, nh, d), q.dtype, q.device)
    else:
        qo = q_out if q_out is not None else _new_out((bsz, n_tok, nh, d), torch.float8_e4m3fn, q.device)
    ko = _new_out((bsz, n_tok, nh, d), k.dtype, k.device)
    norm = wq is not None or wk is not None
    rstd = _new_out((2, bsz, n_tok), torch.float32, q.device) if norm else None
    q_dst = qo.view(torch.uint8) if q_scale is not None and interpret_mode() else qo  # see rope_triton._out
    args = (q, k, q if wq is None else wq, k if wk is None else wk, cos, sin, q_dst, ko,
            qo if rstd is None else rstd, cos if q_scale is None else q_scale, n_tok, nh, grid_fhw[0],
            grid_fhw[1], grid_fhw[2], *_head_strides(q), *_head_strides(k), *_head_strides(qo), eps,
            (bsz * n_tok).bit_length())
    _launch(_rope_fwd_kernel, False, n_tok, bsz, q.device, args,
            dict(NORM_Q=wq is not None, NORM_K=wk is not None, Q_FP8=q_scale is not None, **_launch_meta(q)))
    if norm and (wq is None or wk is None):  # the plane of the tensor without RMSNorm: defined
        rstd[0 if wq is None else 1].zero_()
    return qo, ko, rstd


def _rope_bwd_triton(gq, gk, q, k, wq, wk, rstd, grid_fhw, frame_offset, theta):
    gq, gk = _unit_last(gq), _unit_last(gk)
    q = _unit_last(q) if wq is not None else gq
    k = _unit_last(k) if wk is not None else gk
    bsz, n_tok, nh, d = gq.shape
    cos, sin = rope_tables(*grid_fhw, d, frame_offset, theta, gq.device)
    dq = _new_out((bsz, n_tok, nh, d), q.dtype, gq.device)
    dk = _new_out((bsz, n_tok, nh, d), k.dtype, gq.device)
    norm = wq is not None or wk is not None
    p_max = _max_programs(_rope_bwd_kernel, True, bsz, n_tok, gq.device)
    part = _new_out((2, bsz, p_max, nh * d), torch.float32, gq.device) if norm else gq
    args = (gq, gk, q, k, gq if wq is None else wq, gk if wk is None else wk, rstd if norm else gq, cos, sin,
            dq, dk, part, n_tok, nh, grid_fhw[0], grid_fhw[1], grid_fhw[2], p_max,
            *_head_strides(gq), *_head_strides(gk), *_head_strides(q), *_head_strides(k),
            (bsz * n_tok).bit_length())
    n_used = _launch(_rope_bwd_kernel, True, n_tok, bsz, gq.device, args,
                   dict(NORM_Q=wq is not None, NORM_K=wk is not None, **_launch_meta(gq)))
    if not norm:
        return dq, dk, None, None
    n = nh * d
    dwq = _new_out((n,), wq.dtype, gq.device) if wq is not None else None  # summed in fp32, stored
    dwk = _new_out((n,), wk.dtype, gq.device) if wk is not None else None  # in the weight's dtype
    planes = part if wq is not None else part[1:]  # the first plane summed is wq's, or wk's alone
    outs = [w for w in (dwq, dwk) if w is not None]
    sum_partials(planes, outs, n_used=n_used, n_groups=bsz, group_stride=p_max * n, acc_stride=bsz * p_max * n,
                 shared=[True] * len(outs))
    return dq, dk, dwq, dwk


# ---------------------------------------------------------------------------------------------
# torch.library ops
# ---------------------------------------------------------------------------------------------


def _acc_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _stats_like(q: torch.Tensor, weight_q, weight_k, backend: str) -> torch.Tensor:
    """The forward op's statistics output: [2, B, L] fp32 1/rms of each token of q, k from the
    Triton kernel with an RMSNorm; empty otherwise (the torch backward recomputes them)."""
    if backend == "torch" or (weight_q is None and weight_k is None):
        return q.new_empty((0,), dtype=torch.float32)
    return q.new_empty((2, q.shape[0], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("longlive_kernels::rope_3d", mutates_args=())
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor | None, weight_k: torch.Tensor | None,
    frames: int, height: int, width: int, frame_offset: int, theta: float, eps: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_out, k_out, statistics for the backward: see :func:`_stats_like`)."""
    grid = (frames, height, width)
    if backend == "torch":
        qo, ko = reference.apply_rope_3d(q, k, grid=grid, frame_offset=frame_offset, theta=theta,
                                         norm_weight_q=weight_q, norm_weight_k=weight_k, eps=eps)
        return qo.contiguous(), ko.contiguous(), _stats_like(q, weight_q, weight_k, backend)
    qo, ko, rstd = _rope_fwd_triton(q, k, weight_q, weight_k, grid, frame_offset, theta, eps)
    return qo, ko, (rstd if rstd is not None else _stats_like(q, None, None, backend))


@_rope_op.register_fake
def _(q, k, weight_q, weight_k, frames, height, width, frame_offset, theta, eps, backend):
    return (q.new_empty(q.shape), k.new_empty(k.shape), _stats_like(q, weight_q, weight_k, backend))


@torch.library.custom_op("longlive_kernels::rope_3d_fp8q", mutates_args=("q_out",))
def _rope_fp8q_op(
    q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor | None, weight_k: torch.Tensor | None,
    q_scale: torch.Tensor, q_out: torch.Tensor, frames: int, height: int, width: int, frame_offset: int,
    theta: float, eps: float, backend: str,
) -> torch.Tensor:
    """k_out; ``q_out`` (float8_e4m3fn [B, L, H, D], any strides) ← the E4M3 codes of the fp32 result
    for q divided by ``q_scale`` (correctly rounded, RNE, saturated to ±448). Inference only."""
    grid = (frames, height, width)
    if backend == "torch":
        qf, ko = reference.apply_rope_3d(q.float(), k, grid=grid, frame_offset=frame_offset, theta=theta,
                                         norm_weight_q=weight_q, norm_weight_k=weight_k, eps=eps)
        q_out.copy_((qf / q_scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn))
        return ko.contiguous()
    return _rope_fwd_triton(q, k, weight_q, weight_k, grid, frame_offset, theta, eps, q_scale, q_out)[1]


@_rope_fp8q_op.register_fake
def _(q, k, weight_q, weight_k, q_scale, q_out, frames, height, width, frame_offset, theta, eps, backend):
    return k.new_empty(k.shape)


@torch.library.custom_op("longlive_kernels::rope_3d_backward", mutates_args=())
def _rope_bwd_op(
    grad_q: torch.Tensor, grad_k: torch.Tensor, q: torch.Tensor | None, k: torch.Tensor | None,
    weight_q: torch.Tensor | None, weight_k: torch.Tensor | None, stats: torch.Tensor, frames: int,
    height: int, width: int, frame_offset: int, theta: float, eps: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, d weight_q | empty, d weight_k | empty); weight grads summed in fp32 (fp64 for
    fp64) and rounded once to the weight's dtype."""
    grid = (frames, height, width)
    if backend == "torch":
        dq, dk, dwq, dwk = reference.apply_rope_3d_backward(
            grad_q, grad_k, q if q is not None else grad_q, k if k is not None else grad_k, grid=grid,
            frame_offset=frame_offset, theta=theta,
            norm_weight_q=None if weight_q is None else weight_q.to(_acc_dtype(grad_q, weight_q)),
            norm_weight_k=None if weight_k is None else weight_k.to(_acc_dtype(grad_k, weight_k)), eps=eps,
        )
        dq, dk = dq.contiguous(), dk.contiguous()
    else:
        dq, dk, dwq, dwk = _rope_bwd_triton(grad_q, grad_k, q, k, weight_q, weight_k, stats, grid,
                                            frame_offset, theta)
    dwq = dwq.to(weight_q.dtype) if weight_q is not None else grad_q.new_empty((0,))
    dwk = dwk.to(weight_k.dtype) if weight_k is not None else grad_k.new_empty((0,))
    return dq, dk, dwq, dwk


@_rope_bwd_op.register_fake
def _(grad_q, grad_k, q, k, weight_q, weight_k, stats, frames, height, width, frame_offset, theta, eps,
      backend):
    n = grad_q.shape[-2] * grad_q.shape[-1]
    return (grad_q.new_empty(grad_q.shape), grad_k.new_empty(grad_k.shape),
            grad_q.new_empty((0,)) if weight_q is None else weight_q.new_empty((n,)),
            grad_k.new_empty((0,)) if weight_k is None else weight_k.new_empty((n,)))


def _rope_setup(ctx, inputs, output):
    q, k, wq, wk, frames, height, width, frame_offset, theta, eps, backend = inputs
    # q/k are needed only for the RMSNorm backward; without it the backward is a pure rotation
    ctx.save_for_backward(q if wq is not None else None, k if wk is not None else None, wq, wk, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the statistics (a launch each call)
    ctx.cfg = (frames, height, width, frame_offset, theta, eps, backend)


def _rope_backward(ctx, grad_q, grad_k, _grad_stats):
    if grad_q is None and grad_k is None:
        return None, None, None, None, None, None, None, None, None, None, None
    q, k, wq, wk, stats = ctx.saved_tensors
    grad_q = torch.zeros_like(grad_k) if grad_q is None else grad_q  # q and k have one shape
    grad_k = torch.zeros_like(grad_q) if grad_k is None else grad_k
    dq, dk, dwq, dwk = _rope_bwd_op(grad_q, grad_k, q, k, wq, wk, stats, *ctx.cfg)
    dwq = dwq if wq is not None and ctx.needs_input_grad[2] else None  # already in the weights' dtypes
    dwk = dwk if wk is not None and ctx.needs_input_grad[3] else None
    return dq, dk, dwq, dwk, None, None, None, None, None, None, None


_rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)
