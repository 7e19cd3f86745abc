"""Launchers of the adaLN Triton kernels (``adaln_triton.py``) and the ``longlive_kernels::``
``torch.library`` ops behind ``adaln.py`` (forward, backward, fake and autograd registrations); each
op runs the Triton launcher or ``reference.py`` as its resolved ``backend`` argument says.
"""

from __future__ import annotations

import functools

import torch
import triton

from .._backend import autotune_enabled, interpret_mode, num_sms
from . import reference
from .adaln_triton import _residual_norm_bwd_kernel, _residual_norm_fwd_kernel
from .partial_sums import sum_partials

# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

# Grid (P, F, B): P programs per latent frame, P·F·B ≈ PROGS_PER_SM·SMs (rounded down, so the
# grid is one wave when PROGS_PER_SM programs fit on an SM). The configs pair warps / pipeline
# depth / register cap with the programs per SM their sm_90a build allows at C = 3072 (3 tiles of
# 1024): forward 4 warps ≈ 48-128 registers → 4-9 programs per SM (the fewest instructions per
# row: 750-1950 warp-instructions), 8 warps ≈ 32-74 → 3-8; backward 4 warps ≈ 80-230 → 2-6,
# 8 warps ≈ 40-124 → 2-6 (capped at 80 registers: 3). Fewer, longer programs amortize the
# per-frame vectors and the backward's fp32 partial sums (P·C·4 bytes per frame and gradient).
# STAGES is kept as a tuning knob (it changes the generated loop, not the loads in flight).
_FWD_CONFIGS = [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w)
                for w, s, p in ((4, 3, 4), (4, 4, 3), (4, 3, 6), (8, 3, 3), (8, 4, 2), (16, 4, 2),
                                (4, 3, 8), (4, 3, 12), (2, 3, 16))]
_BWD_CONFIGS = [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w, maxnreg=r)
                for w, s, p, r in ((8, 3, 2, None), (8, 4, 2, None), (8, 3, 3, 80), (4, 3, 3, None),
                                   (4, 3, 2, None), (4, 4, 3, None), (8, 3, 4, None), (4, 3, 6, None),
                                   (4, 4, 4, None), (4, 2, 8, None))]
_INTERPRETER_CONFIG = {"PROGS_PER_SM": 2, "STAGES": 3}
# size_class: a tuning per power of 2 of B·L; MOD_GRAD (backward only) is skipped by the forward
_KEY = ["C", "size_class", "RESIDUAL", "GATED", "NORM", "PLUS_ONE", "MOD_GRAD", "FP8_OUT", "FP8_TENSOR"]


@functools.cache
def _tuned(kernel, bwd: bool):
    """The kernel wrapped in autotune (GPU); None in the interpreter or with autotuning off (one
    config)."""
    if interpret_mode() or not autotune_enabled():
        return None
    return triton.autotune(configs=_BWD_CONFIGS if bwd else _FWD_CONFIGS, key=_KEY)(kernel)


def _programs_per_frame(progs_per_sm: int, groups: int, frame_len: int, device: torch.device) -> int:
    """P for a target of ``progs_per_sm`` programs per SM over ``groups`` = B·F frames (at most
    one row per program, at least one program per frame)."""
    return max(1, min(frame_len, progs_per_sm * num_sms(device) // groups))


def _max_programs_per_frame(kernel, bwd: bool, groups: int, frame_len: int, device: torch.device) -> int:
    """Largest P any config may launch (sizes the backward's partial-sum buffer)."""
    tuned = _tuned(kernel, bwd)
    factors = ([_INTERPRETER_CONFIG["PROGS_PER_SM"]] if tuned is None
               else [c.kwargs["PROGS_PER_SM"] for c in tuned.configs])
    return _programs_per_frame(max(factors), groups, frame_len, device)


def _new_out(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fresh output buffer of a kernel (tests patch this to fill it with NaN, so any element a
    kernel forgets to write shows up)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(kernel, bwd: bool, frame_len: int, n_frames: int, bsz: int, device, args, meta) -> int:
    """Launch over (P, F, B); returns the P that ran (every one of its programs writes its partial
    slot)."""
    tuned = _tuned(kernel, bwd)
    groups = n_frames * bsz
    if tuned is None:
        cfg = _INTERPRETER_CONFIG
        n_p = _programs_per_frame(cfg["PROGS_PER_SM"], groups, frame_len, device)
        kernel[(n_p, n_frames, bsz)](*args, **cfg, num_warps=4, **meta)
        return n_p
    tuned[lambda m: (_programs_per_frame(m["PROGS_PER_SM"], groups, frame_len, device), n_frames, bsz)](
        *args, **meta)
    return _programs_per_frame(tuned.best_config.kwargs["PROGS_PER_SM"], groups, frame_len, device)


def _col_tiles(c: int) -> dict[str, int]:
    """CG, NCG, EVEN: 3 tiles of CG columns when c = 3·2^k (3072 → 3 × 1024), else one tile of
    next_power_of_2(c) columns (exact for powers of 2, padded otherwise)."""
    cg = c & -c  # largest power of 2 dividing c
    cg, ncg = (cg, 3) if c // cg == 3 else (triton.next_power_of_2(c), 1)
    return {"CG": cg, "NCG": ncg, "EVEN": c == cg * ncg}


def _row_strides(t: torch.Tensor) -> tuple[int, int]:
    """(batch, row) strides of a [B, L, C] tensor; (0, 0) for a [C] vector shared by all rows."""
    return (0, 0) if t.dim() == 1 else (t.stride(0), t.stride(1))


def _last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _fwd_triton(x, y, gate, scale, shift, frame_len, eps, plus_one, fp8=False, fp8_scale=None):
    """(r or None, h or None, [B, L, 2] fp32 (mean, rstd) or None) for the residual / norm
    variants; with ``fp8`` (norm variants) h is ``(E4M3 codes [B, L, C], row scales [B, L])``, or
    ``(codes, fp8_scale)`` when a per-tensor ``fp8_scale`` (one fp32 element) is given."""
    bsz, n_tok, c = x.shape
    n_frames = n_tok // frame_len
    residual, gated, norm = y is not None, gate is not None, scale is not None
    x = _last_dim_unit(x)
    y = _last_dim_unit(y) if residual else x
    gate = _last_dim_unit(gate) if gated else x
    scale = _last_dim_unit(scale) if norm else x
    shift = _last_dim_unit(shift) if norm else x
    r = _new_out((bsz, n_tok, c), x.dtype, x.device) if residual else x
    h = _new_out((bsz, n_tok, c), torch.uint8 if fp8 else x.dtype, x.device) if norm else x
    stats = _new_out((bsz, n_tok, 2), torch.float32, x.device) if norm else x
    tensor = fp8 and fp8_scale is not None
    hs = fp8_scale.reshape(1).contiguous() if tensor else (
        _new_out((bsz, n_tok), torch.float32, x.device) if fp8 else stats)
    args = (x, y, gate, scale, shift, r, h, stats, hs, n_tok, c, frame_len,
            *_row_strides(x), *_row_strides(y), *_row_strides(gate), *_row_strides(scale),
            *_row_strides(shift), eps, (bsz * n_tok).bit_length())
    meta = {"RESIDUAL": residual, "GATED": gated, "NORM": norm, "PLUS_ONE": plus_one, "FP8_OUT": fp8,
            "FP8_FAST": not interpret_mode(), "FP8_TENSOR": tensor, "enable_fp_fusion": False, **_col_tiles(c)}
    _launch(_residual_norm_fwd_kernel, False, frame_len, n_frames, bsz, x.device, args, meta)
    if fp8:
        h = (h.view(torch.float8_e4m3fn), hs)
    return (r if residual else None), (h if norm else None), (stats if norm else None)


def _bwd_triton(grad_h, grad_r, r, y, gate, scale, stats, frame_len, plus_one, mod_grad, acc_dtype,
                dx_dtype, dy_dtype):
    """(dx or None, dy or None, list of per-frame grads (dscale, dshift | dgate) or None): [B, F, C],
    or [C] for a scale / shift shared by every frame."""
    shared_mod = scale is not None and scale.dim() == 1
    norm, residual, gated = grad_h is not None, grad_r is not None, gate is not None
    ref = grad_h if norm else grad_r
    bsz, n_tok, c = ref.shape
    n_frames = n_tok // frame_len
    dev = ref.device
    grad_h = _last_dim_unit(grad_h) if norm else ref
    grad_r = _last_dim_unit(grad_r) if residual else ref
    r = _last_dim_unit(r) if norm else ref
    y = _last_dim_unit(y) if gated else ref
    gate = _last_dim_unit(gate) if gated else ref
    scale = _last_dim_unit(scale) if norm else ref
    stats = stats if norm else ref
    dx = _new_out((bsz, n_tok, c), dx_dtype, dev) if norm else ref
    dy = _new_out((bsz, n_tok, c), dy_dtype, dev) if gated else ref
    n_acc = (2 if norm else 0) + (1 if gated else 0)
    p_max = _max_programs_per_frame(_residual_norm_bwd_kernel, True, bsz * n_frames, frame_len, dev)
    part = (_new_out((n_acc, bsz, n_frames, p_max, c), torch.float32, dev) if mod_grad and n_acc else ref)
    args = (grad_h, grad_r, r, y, gate, scale, stats, dx, dy, part, n_tok, c, frame_len, n_frames, p_max,
            *_row_strides(grad_h), *_row_strides(grad_r), *_row_strides(r), *_row_strides(y),
            *_row_strides(gate), *_row_strides(scale), (bsz * n_tok).bit_length())
    meta = {"NORM": norm, "RESIDUAL": residual, "GATED": gated, "PLUS_ONE": plus_one,
            "MOD_GRAD": mod_grad and n_acc > 0, **_col_tiles(c)}
    n_used = _launch(_residual_norm_bwd_kernel, True, frame_len, n_frames, bsz, dev, args, meta)
    sums = None
    if mod_grad and n_acc:
        # separate tensors (op outputs may not alias each other), summed in one launch; a scale /
        # shift shared by all frames ([C]: the affine LayerNorm) gets its gradient summed over them
        shared = [shared_mod] * (n_acc - gated) + [False] * gated
        sums = [_new_out((c,) if s else (bsz, n_frames, c), acc_dtype, dev) for s in shared]
        sum_partials(part, sums, n_used=n_used, n_groups=bsz * n_frames, group_stride=p_max * c,
                     acc_stride=bsz * n_frames * p_max * c, shared=shared)
    return (dx if norm else None), (dy if gated else None), sums


# ---------------------------------------------------------------------------------------------
# torch.library ops
# ---------------------------------------------------------------------------------------------


def _acc_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    """dtype of the per-frame gradient outputs of the backward ops (fp64 only for fp64 inputs)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _empty(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.new_empty((0,), dtype=dtype)


def _stats_like(x: torch.Tensor, backend: str) -> torch.Tensor:
    """Shape of the forward ops' statistics output: [B, L, 2] fp32 (mean, rstd) from the Triton
    kernel, empty for the torch backend (its backward recomputes them)."""
    if backend == "torch":
        return _empty(x, torch.float32)
    return x.new_empty((x.shape[0], x.shape[1], 2), dtype=torch.float32)


def _no_stats_grad(ctx, output: tuple[torch.Tensor, ...]) -> None:
    """The statistics output gets no gradient, not even a zero-filled one (a launch per call): the
    backward receives None for it, and for an output that received no gradient."""
    ctx.mark_non_differentiable(output[-1])
    ctx.set_materialize_grads(False)


@torch.library.custom_op("longlive_kernels::layernorm_modulate", mutates_args=())
def _ln_mod_op(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, frame_len: int, eps: float,
    plus_one: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, statistics for the backward: see :func:`_stats_like`)."""
    if backend == "torch":
        h = reference.layernorm_modulate(x, scale, shift, frame_len=frame_len, eps=eps, plus_one=plus_one)
        return h, _stats_like(x, backend)
    _, h, stats = _fwd_triton(x, None, None, scale, shift, frame_len, eps, plus_one)
    return h, stats


@_ln_mod_op.register_fake
def _(x, scale, shift, frame_len, eps, plus_one, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format), _stats_like(x, backend)


@torch.library.custom_op("longlive_kernels::layernorm_modulate_backward", mutates_args=())
def _ln_mod_bwd_op(
    grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, stats: torch.Tensor, frame_len: int,
    eps: float, plus_one: bool, mod_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(x, scale)
    if backend == "torch":
        ct = reference._compute_dtype(x, None)
        dx, ds, db = reference._layernorm_modulate_grads(grad, x, scale, frame_len, eps, plus_one, ct)
        dx = dx.to(x.dtype)
    else:
        dx, _, sums = _bwd_triton(grad, None, x, None, None, scale, stats, frame_len, plus_one,
                                  mod_grad, acc, x.dtype, None)
        ds, db = (sums[0], sums[1]) if mod_grad else (None, None)
    if not mod_grad:
        return dx, _empty(x, acc), _empty(x, acc)
    return dx, ds.to(acc), db.to(acc)


@_ln_mod_bwd_op.register_fake
def _(grad, x, scale, stats, frame_len, eps, plus_one, mod_grad, backend):
    acc = _acc_dtype(x, scale)
    b, n_tok, c = x.shape
    shape = (b, n_tok // frame_len, c) if mod_grad else (0,)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc))


def _ln_mod_setup(ctx, inputs, output):
    x, scale, shift, frame_len, eps, plus_one, backend = inputs
    ctx.save_for_backward(x, scale, output[1])
    _no_stats_grad(ctx, output)
    ctx.cfg = (frame_len, eps, plus_one, backend)
    ctx.mod_dtypes = (scale.dtype, shift.dtype)


def _ln_mod_backward(ctx, grad, _grad_stats):
    if grad is None:  # only the (non-differentiable) statistics were differentiated
        return None, None, None, None, None, None, None
    x, scale, stats = ctx.saved_tensors
    frame_len, eps, plus_one, backend = ctx.cfg
    mod_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dx, ds, db = _ln_mod_bwd_op(grad, x, scale, stats, frame_len, eps, plus_one, mod_grad, backend)
    if not mod_grad:
        return dx, None, None, None, None, None, None
    return dx, ds.to(ctx.mod_dtypes[0]), db.to(ctx.mod_dtypes[1]), None, None, None, None


_ln_mod_op.register_autograd(_ln_mod_backward, setup_context=_ln_mod_setup)


@torch.library.custom_op("longlive_kernels::gated_residual", mutates_args=())
def _gated_residual_op(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frame_len: int,
                       backend: str) -> torch.Tensor:
    if backend == "torch":
        return reference.gated_residual(x, y, gate, frame_len=frame_len)
    return _fwd_triton(x, y, gate, None, None, frame_len, 0.0, False)[0]


@_gated_residual_op.register_fake
def _(x, y, gate, frame_len, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("longlive_kernels::gated_residual_backward", mutates_args=())
def _gated_residual_bwd_op(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frame_len: int,
                           gate_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(y, gate)
    if backend == "torch":
        _, dy, dgate = reference.gated_residual_backward(grad, y, gate.to(acc), frame_len=frame_len)
    else:
        _, dy, sums = _bwd_triton(None, grad, None, y, gate, None, None, frame_len, False, gate_grad,
                                  acc, None, y.dtype)
        dgate = sums[0] if gate_grad else None
    return dy, (dgate.to(acc) if gate_grad else _empty(y, acc))


@_gated_residual_bwd_op.register_fake
def _(grad, y, gate, frame_len, gate_grad, backend):
    b, n_tok, c = y.shape
    shape = (b, n_tok // frame_len, c) if gate_grad else (0,)
    return (torch.empty_like(y, memory_format=torch.contiguous_format),
            y.new_empty(shape, dtype=_acc_dtype(y, gate)))


def _gated_residual_setup(ctx, inputs, output):
    x, y, gate, frame_len, backend = inputs
    ctx.save_for_backward(y, gate)
    ctx.cfg = (frame_len, backend)
    ctx.x_dtype = x.dtype


def _gated_residual_backward(ctx, grad):
    y, gate = ctx.saved_tensors
    frame_len, backend = ctx.cfg
    gate_grad = ctx.needs_input_grad[2]
    dy, dgate = _gated_residual_bwd_op(grad, y, gate, frame_len, gate_grad, backend)
    return grad.to(ctx.x_dtype), dy, (dgate.to(gate.dtype) if gate_grad else None), None, None


_gated_residual_op.register_autograd(_gated_residual_backward, setup_context=_gated_residual_setup)


@torch.library.custom_op("longlive_kernels::residual_layernorm_modulate", mutates_args=())
def _res_ln_mod_op(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, scale: torch.Tensor,
    shift: torch.Tensor, frame_len: int, eps: float, plus_one: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, h, statistics of r for the backward: see :func:`_stats_like`). scale / shift are
    [B, F, C] per frame, or [C] shared by every frame."""
    if backend == "torch":
        r, h = reference.residual_layernorm_modulate(
            x, y, gate, _per_frame(scale, x, frame_len), _per_frame(shift, x, frame_len), frame_len=frame_len,
            eps=eps, plus_one=plus_one,
        )
        return r, h, _stats_like(x, backend)
    return _fwd_triton(x, y, gate, scale, shift, frame_len, eps, plus_one)


@_res_ln_mod_op.register_fake
def _(x, y, gate, scale, shift, frame_len, eps, plus_one, backend):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format), _stats_like(x, backend))


@torch.library.custom_op("longlive_kernels::residual_layernorm_modulate_backward", mutates_args=())
def _res_ln_mod_bwd_op(
    grad_r: torch.Tensor, grad_h: torch.Tensor, r: torch.Tensor, y: torch.Tensor,
    gate: torch.Tensor | None, scale: torch.Tensor, stats: torch.Tensor, frame_len: int, eps: float,
    plus_one: bool, mod_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dy | empty when ungated (dy = dx), dgate | empty, dscale | empty, dshift | empty)."""
    acc = _acc_dtype(r, scale, gate)
    if backend == "torch":
        ct = reference._compute_dtype(r, None)
        dx, dy, dgate, ds, db = reference.residual_layernorm_modulate_backward(
            grad_r, grad_h, r, y, None if gate is None else gate.to(ct), _per_frame(scale, r, frame_len).to(ct),
            frame_len=frame_len, eps=eps, plus_one=plus_one,
        )
        if scale.dim() == 1:
            ds, db = ds.sum(dim=(0, 1)), db.sum(dim=(0, 1))
        sums = [ds, db] + ([dgate] if gate is not None else [])
    else:
        dx, dy, sums = _bwd_triton(grad_h, grad_r, r, y if gate is not None else None, gate, scale,
                                   stats, frame_len, plus_one, True if mod_grad else gate is not None,
                                   acc, r.dtype, y.dtype)
    dy = dy if gate is not None else _empty(r, y.dtype)
    dgate = sums[2].to(acc) if gate is not None else _empty(r, acc)
    if not mod_grad:
        return dx, dy, dgate, _empty(r, acc), _empty(r, acc)
    return dx, dy, dgate, sums[0].to(acc), sums[1].to(acc)


@_res_ln_mod_bwd_op.register_fake
def _(grad_r, grad_h, r, y, gate, scale, stats, frame_len, eps, plus_one, mod_grad, backend):
    acc = _acc_dtype(r, scale, gate)
    b, n_tok, c = r.shape
    per_frame = (b, n_tok // frame_len, c)
    like = torch.empty_like(r, memory_format=torch.contiguous_format)
    dy = (torch.empty_like(y, memory_format=torch.contiguous_format) if gate is not None
          else r.new_empty((0,), dtype=y.dtype))
    dgate = r.new_empty(per_frame if gate is not None else (0,), dtype=acc)
    mod = ((c,) if scale.dim() == 1 else per_frame) if mod_grad else (0,)
    return like, dy, dgate, r.new_empty(mod, dtype=acc), r.new_empty(mod, dtype=acc)


def _per_frame(v: torch.Tensor, x: torch.Tensor, frame_len: int) -> torch.Tensor:
    """A [C] vector shared by every frame as a [B, F, C] view; per-frame vectors as they are."""
    if v.dim() != 1:
        return v
    return v.view(1, 1, -1).expand(x.shape[0], x.shape[1] // frame_len, -1)


def _res_ln_mod_setup(ctx, inputs, output):
    x, y, gate, scale, shift, frame_len, eps, plus_one, backend = inputs
    ctx.save_for_backward(output[0], y, gate, scale, output[2])
    _no_stats_grad(ctx, output)
    ctx.cfg = (frame_len, eps, plus_one, backend)
    ctx.dtypes = (x.dtype, y.dtype, scale.dtype, shift.dtype)


def _res_ln_mod_backward(ctx, grad_r, grad_h, _grad_stats):
    if grad_r is None and grad_h is None:
        return None, None, None, None, None, None, None, None, None
    r, y, gate, scale, stats = ctx.saved_tensors
    grad_r = torch.zeros_like(grad_h) if grad_r is None else grad_r  # r and h have one shape
    grad_h = torch.zeros_like(grad_r) if grad_h is None else grad_h
    frame_len, eps, plus_one, backend = ctx.cfg
    x_dt, y_dt, s_dt, t_dt = ctx.dtypes
    mod_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
    dx, dy, dgate, ds, db = _res_ln_mod_bwd_op(grad_r, grad_h, r, y, gate, scale, stats, frame_len, eps,
                                               plus_one, mod_grad, backend)
    if gate is None:
        dy, dgate = dx.to(y_dt), None
    else:
        dgate = dgate.to(gate.dtype)
    ds, db = (ds.to(s_dt), db.to(t_dt)) if mod_grad else (None, None)
    return dx.to(x_dt), dy, dgate, ds, db, None, None, None, None


_res_ln_mod_op.register_autograd(_res_ln_mod_backward, setup_context=_res_ln_mod_setup)


@torch.library.custom_op("longlive_kernels::layernorm_modulate_fp8", mutates_args=())
def _ln_mod_fp8_op(
    x: torch.Tensor, y: torch.Tensor | None, gate: torch.Tensor | None, scale: torch.Tensor,
    shift: torch.Tensor, frame_len: int, eps: float, plus_one: bool, backend: str,
    fp8_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inference: (r | empty without y, E4M3 codes of h [B, L, C], fp32 row scales [B, L]) — h (or
    r = x + gate·y, then h of r) as ``quantize_fp8_rowwise`` of the h the unfused op returns; with a
    per-tensor ``fp8_scale`` (one fp32 element), the codes are ``quantize_fp8_tensorwise(h,
    fp8_scale)`` and the third output is empty (the scale is the caller's)."""
    if backend == "torch":
        from ..fp4.reference import quantize_fp8_rowwise, quantize_fp8_tensorwise

        sc, sh = _per_frame(scale, x, frame_len), _per_frame(shift, x, frame_len)
        if y is None:
            r = _empty(x, x.dtype)
            h = reference.layernorm_modulate(x, sc, sh, frame_len=frame_len, eps=eps, plus_one=plus_one)
        else:
            r, h = reference.residual_layernorm_modulate(x, y, gate, sc, sh, frame_len=frame_len, eps=eps,
                                                         plus_one=plus_one)
        if fp8_scale is not None:
            return r, quantize_fp8_tensorwise(h, fp8_scale)[0], _empty(x, torch.float32)
        codes, hs = quantize_fp8_rowwise(h.reshape(-1, h.shape[-1]))
        return r, codes.view(h.shape), hs.view(h.shape[:-1])
    r, (codes, hs), _ = _fwd_triton(x, y, gate, scale, shift, frame_len, eps, plus_one, fp8=True,
                                    fp8_scale=fp8_scale)
    hs = _empty(x, torch.float32) if fp8_scale is not None else hs  # an output may not alias an input
    return (r if r is not None else _empty(x, x.dtype)), codes, hs


@_ln_mod_fp8_op.register_fake
def _(x, y, gate, scale, shift, frame_len, eps, plus_one, backend, fp8_scale=None):
    r = torch.empty_like(x, memory_format=torch.contiguous_format) if y is not None else x.new_empty((0,))
    hs = x.new_empty((0,), dtype=torch.float32) if fp8_scale is not None else x.new_empty(x.shape[:2],
                                                                                          dtype=torch.float32)
    return r, torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device), hs
