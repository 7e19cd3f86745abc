"""Fused adaLN (LayerNorm + per-frame ``(1 + scale)·x̂ + shift``), gated residual, and the fused
residual + next norm of the Wan block, forward and backward (spec §1.1, §4.2; nvfp4-hopper §6).

One block (``x`` the residual stream, ``e0..e5`` per-frame modulation vectors)::

    h    = adaln_modulate(x, e0, e1, frame_len=n)                    # LN1
    x, h = gated_residual_layernorm(x, attn(h), e2, w3, b3, frame_len=n)   # + LN3 (affine)
    x, h = gated_residual_adaln(x, cross(h), None, e3, e4, frame_len=n)    # + LN2
    x    = gated_residual(x, ffn(h), e5, frame_len=n)

Four memory passes over [tokens, C] where eager PyTorch makes about a dozen (each LayerNorm,
``1 + scale``, product, sum, gate product and residual add is its own kernel). Kernels: the P
programs of a latent frame take its rows round-robin (adjacent rows in flight together), keep the
frame's modulation vectors in registers, and issue every load of a row before its first store;
statistics and products in fp32, one rounding at the store. The
backward writes per-program partial sums of the per-frame gradients (dscale, dshift, dgate),
summed by one small kernel afterwards (``partial_sums.py``: deterministic, no atomics).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import autotune_enabled, interpret_mode, resolve_backend
from . import reference
from .partial_sums import sum_partials

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _mean(v, n):
    """Σv / n, correctly rounded (per-row scalars: exactness is free, Triton's ``/`` is approximate)."""
    return tl.math.div_rn(tl.sum(v, axis=0), n)


@triton.jit
def _inv_sqrt(v):
    """1/√v with IEEE sqrt and division (``tl.math.rsqrt`` is approximate on the GPU)."""
    return tl.math.div_rn(1.0 + 0.0 * v, tl.sqrt_rn(v))


@triton.jit
def _add_pairs(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _scale_tile(scale_v, cols, cmask, PLUS_ONE: tl.constexpr):
    """The multiplier of x̂ in fp32: 1 + scale (adaLN) or the LayerNorm weight."""
    m = tl.load(scale_v + cols, mask=cmask, other=0.0).to(tl.float32)
    if PLUS_ONE:
        m = m + 1.0
    return m


@triton.jit
def _tile_cols(g, C, CG: tl.constexpr, NCG: tl.constexpr, EVEN: tl.constexpr):
    """Columns and mask of the g-th tile of CG columns; with EVEN (C == NCG·CG) the mask is a
    compile-time "true" the compiler folds away (no compares, selects or predicated loads)."""
    cols = g * CG + tl.arange(0, CG)
    bound = C
    if EVEN:
        bound = NCG * CG
    return cols, cols < bound


# Work split (both kernels): grid (P, F, B); program p of frame f handles the frame's rows p, p + P,
# p + 2P, ... so the P programs of a frame stream through *adjacent* rows together (one contiguous
# region in flight per frame, not P regions a run apart), and keeps the frame's modulation vectors in
# registers for all its rows. ``tl.range(num_stages=STAGES)`` asks Triton to pipeline the row loads,
# but Triton 3.6 leaves these non-dot loads unpipelined (the sm_90a builds use no shared-memory
# stages): the bytes in flight come from several programs per SM, and from issuing all of a row's
# loads before its first store (a load may not pass an earlier store the compiler cannot prove
# disjoint; that ordering had serialized one DRAM latency per tile).
# A row is NCG tiles of CG columns (C = 3072: 3 × 1024) rather than one next-power-of-2 tile of 4096
# with a quarter of its lanes masked: 25 % fewer instructions and registers per row. NCG is 1 or 3
# (tiles written out: a Triton loop cannot carry a list of tensors); row sums add the tiles first.


@triton.jit
def _input_tiles(x_row, y_row, cols, cmask, RESIDUAL: tl.constexpr):
    """(x, y) of one tile in fp32 (y = 0 without RESIDUAL)."""
    x = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
    y = 0.0
    if RESIDUAL:
        y = tl.load(y_row + cols, mask=cmask, other=0.0).to(tl.float32)
    return x, y


@triton.jit
def _residual_tile(x, y, r_row, cols, cmask, gate, RESIDUAL: tl.constexpr, GATED: tl.constexpr):
    """x, or (RESIDUAL) r = x + gate·y stored to ``r_row`` and returned after its rounding (the
    norm sees the stored residual, as two separate ops would)."""
    if RESIDUAL:
        if GATED:
            y = y * gate
        r = (x + y).to(r_row.dtype.element_ty)
        tl.store(r_row + cols, r, mask=cmask)
        x = r.to(tl.float32)
    return x


@triton.jit
def _modulate_tile(d, rstd, m, a, h_row, cols, cmask):
    """h = (x − mean)·rstd·m + a of one tile (``d`` = x − mean), stored to ``h_row``."""
    tl.store(h_row + cols, (d * rstd * m + a).to(h_row.dtype.element_ty), mask=cmask)


@triton.jit
def _residual_norm_fwd_kernel(
    x_ptr,  # [B, L, C] float (strides stride_xb, stride_xl, 1)
    y_ptr,  # [B, L, C] float (strides stride_yb, stride_yl, 1); RESIDUAL
    gate_ptr,  # [B, F, C] per-frame gate (strides stride_gb, stride_gf, 1); GATED
    scale_ptr,  # [B, F, C] per-frame scale (strides stride_sb, stride_sf, 1); NORM
    shift_ptr,  # [B, F, C] per-frame shift (strides stride_tb, stride_tf, 1); NORM
    r_ptr,  # [B, L, C] out, contiguous: x + gate·y; RESIDUAL
    h_ptr,  # [B, L, C] out, contiguous: LN(r)·m + shift; NORM
    stats_ptr,  # [B, L, 2] fp32 out: (mean, rstd) of each normalized row, for the backward; NORM
    L,
    C,
    frame_len,
    stride_xb, stride_xl, stride_yb, stride_yl,
    stride_gb, stride_gf, stride_sb, stride_sf, stride_tb, stride_tf,
    eps,
    size_class,  # bit length of B·L: autotune key only (unused)
    RESIDUAL: tl.constexpr,
    GATED: tl.constexpr,
    NORM: tl.constexpr,
    PLUS_ONE: tl.constexpr,
    CG: tl.constexpr,  # columns per tile (a power of 2)
    NCG: tl.constexpr,  # tiles per row (1 or 3)
    EVEN: tl.constexpr,  # C == NCG·CG (no masked columns)
    STAGES: tl.constexpr,  # software-pipeline depth of the row loop
    PROGS_PER_SM: tl.constexpr,  # tuning knob of the launch grid (unused here)
):
    pid_p = tl.program_id(0)
    f = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    c_f = C.to(tl.float32)
    c0, k0 = _tile_cols(0, C, CG, NCG, EVEN)
    if NCG == 3:
        c1, k1 = _tile_cols(1, C, CG, NCG, EVEN)
        c2, k2 = _tile_cols(2, C, CG, NCG, EVEN)

    # the frame's vectors, once per program (unused ones are never read)
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    gate_v = gate_ptr + b * stride_gb + f * stride_gf
    scale_v = scale_ptr + b * stride_sb + f * stride_sf
    shift_v = shift_ptr + b * stride_tb + f * stride_tf
    if GATED:
        g0 = tl.load(gate_v + c0, mask=k0, other=0.0).to(tl.float32)
        if NCG == 3:
            g1 = tl.load(gate_v + c1, mask=k1, other=0.0).to(tl.float32)
            g2 = tl.load(gate_v + c2, mask=k2, other=0.0).to(tl.float32)
    if NORM:
        m0 = _scale_tile(scale_v, c0, k0, PLUS_ONE)
        a0 = tl.load(shift_v + c0, mask=k0, other=0.0).to(tl.float32)
        if NCG == 3:
            m1 = _scale_tile(scale_v, c1, k1, PLUS_ONE)
            a1 = tl.load(shift_v + c1, mask=k1, other=0.0).to(tl.float32)
            m2 = _scale_tile(scale_v, c2, k2, PLUS_ONE)
            a2 = tl.load(shift_v + c2, mask=k2, other=0.0).to(tl.float32)

    tok0 = f * frame_len  # int64: so are the row offsets below
    for i in tl.range(pid_p, frame_len, tl.num_programs(0), num_stages=STAGES):
        t = tok0 + i
        x_row = x_ptr + b * stride_xb + t * stride_xl
        y_row = y_ptr + b * stride_yb + t * stride_yl
        out_off = (b * L + t) * C
        r_row = r_ptr + out_off
        # every load of the row before its first store (a load may not pass an earlier store)
        x0, y0 = _input_tiles(x_row, y_row, c0, k0, RESIDUAL)
        if NCG == 3:
            x1, y1 = _input_tiles(x_row, y_row, c1, k1, RESIDUAL)
            x2, y2 = _input_tiles(x_row, y_row, c2, k2, RESIDUAL)
        x0 = _residual_tile(x0, y0, r_row, c0, k0, g0, RESIDUAL, GATED)
        if NCG == 3:
            x1 = _residual_tile(x1, y1, r_row, c1, k1, g1, RESIDUAL, GATED)
            x2 = _residual_tile(x2, y2, r_row, c2, k2, g2, RESIDUAL, GATED)
        if NORM:
            s = x0  # masked lanes are 0
            if NCG == 3:
                s = s + x1 + x2
            mean = _mean(s, c_f)
            d0 = tl.where(k0, x0 - mean, 0.0)
            sq = d0 * d0
            if NCG == 3:
                d1 = tl.where(k1, x1 - mean, 0.0)
                d2 = tl.where(k2, x2 - mean, 0.0)
                sq = sq + d1 * d1 + d2 * d2
            rstd = _inv_sqrt(_mean(sq, c_f) + eps)
            h_row = h_ptr + out_off
            _modulate_tile(d0, rstd, m0, a0, h_row, c0, k0)
            if NCG == 3:
                _modulate_tile(d1, rstd, m1, a1, h_row, c1, k1)
                _modulate_tile(d2, rstd, m2, a2, h_row, c2, k2)
            tl.store(stats_ptr + (b * L + t) * 2, mean)
            tl.store(stats_ptr + (b * L + t) * 2 + 1, rstd)


@triton.jit
def _norm_grad_tile(r_row, gh_row, cols, cmask, mean, rstd, m):
    """(g_h, x̂, g_h·m) of one tile in fp32 (x̂ = 0 on masked lanes)."""
    x = tl.load(r_row + cols, mask=cmask, other=0.0).to(tl.float32)
    gh = tl.load(gh_row + cols, mask=cmask, other=0.0).to(tl.float32)
    xhat = tl.where(cmask, (x - mean) * rstd, 0.0)
    return gh, xhat, gh * m


@triton.jit
def _branch_tiles(gr_row, y_row, cols, cmask, RESIDUAL: tl.constexpr, LOAD_Y: tl.constexpr):
    """(g_r, y) of one tile in fp32 (0 where not needed), loaded before the row's first store: a
    load after a store may not pass it (the compiler cannot rule out aliasing), which serialized
    one more DRAM latency per tile."""
    gr = 0.0
    y = 0.0
    if RESIDUAL:
        gr = tl.load(gr_row + cols, mask=cmask, other=0.0).to(tl.float32)
    if LOAD_Y:
        y = tl.load(y_row + cols, mask=cmask, other=0.0).to(tl.float32)
    return gr, y


@triton.jit
def _input_grad_tile(d, gr, y, dx_row, dy_row, cols, cmask, gate, acc_g,
                     NORM: tl.constexpr, RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                     MOD_GRAD: tl.constexpr):
    """Finish one tile: dx = d (+ g_r), stored (NORM); dy = dx·gate stored (GATED), and Σ dx·y
    (GATED and MOD_GRAD: y is read only for the gate's gradient)."""
    if RESIDUAL:
        d += gr
    if NORM:
        tl.store(dx_row + cols, d.to(dx_row.dtype.element_ty), mask=cmask)
    if GATED:
        tl.store(dy_row + cols, (d * gate).to(dy_row.dtype.element_ty), mask=cmask)
        if MOD_GRAD:
            acc_g += d * y
    return acc_g


@triton.jit
def _residual_norm_bwd_kernel(
    gh_ptr,  # [B, L, C] grad of h (strides stride_ghb, stride_ghl, 1); NORM
    gr_ptr,  # [B, L, C] grad of r (strides stride_grb, stride_grl, 1); RESIDUAL
    r_ptr,  # [B, L, C] the normalized input (x or r) (strides stride_rb, stride_rl, 1); NORM
    y_ptr,  # [B, L, C] residual branch (strides stride_yb, stride_yl, 1); GATED
    gate_ptr,  # [B, F, C] per-frame gate (strides stride_gb, stride_gf, 1); GATED
    scale_ptr,  # [B, F, C] per-frame scale (strides stride_sb, stride_sf, 1); NORM
    stats_ptr,  # [B, L, 2] fp32 (mean, rstd) of each row, written by the forward kernel; NORM
    dx_ptr,  # [B, L, C] out, contiguous; NORM
    dy_ptr,  # [B, L, C] out, contiguous; GATED
    part_ptr,  # [n_acc, B, F, P_max, C] fp32 out: per-program Σ of (dscale, dshift | dgate)
    L,
    C,
    frame_len,
    n_frames,  # F
    part_stride_p,  # P_max: partial-sum slots per frame (≥ programs per frame)
    stride_ghb, stride_ghl, stride_grb, stride_grl, stride_rb, stride_rl, stride_yb, stride_yl,
    stride_gb, stride_gf, stride_sb, stride_sf,
    size_class,  # bit length of B·L: autotune key only (unused)
    NORM: tl.constexpr,
    RESIDUAL: tl.constexpr,
    GATED: tl.constexpr,
    PLUS_ONE: tl.constexpr,
    MOD_GRAD: tl.constexpr,
    CG: tl.constexpr,  # columns per tile (a power of 2)
    NCG: tl.constexpr,  # tiles per row (1 or 3)
    EVEN: tl.constexpr,  # C == NCG·CG (no masked columns)
    STAGES: tl.constexpr,  # software-pipeline depth of the row loop
    PROGS_PER_SM: tl.constexpr,  # tuning knob of the launch grid (unused here)
):
    pid_p = tl.program_id(0)
    f = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    c_f = C.to(tl.float32)
    c0, k0 = _tile_cols(0, C, CG, NCG, EVEN)
    if NCG == 3:
        c1, k1 = _tile_cols(1, C, CG, NCG, EVEN)
        c2, k2 = _tile_cols(2, C, CG, NCG, EVEN)

    zero = tl.zeros([CG], dtype=tl.float32)
    # per-tile Σ over the program's rows: g_h·x̂ (dscale), g_h (dshift), dx·y (dgate)
    s0 = zero
    s1 = zero
    s2 = zero
    h0 = zero
    h1 = zero
    h2 = zero
    q0 = zero
    q1 = zero
    q2 = zero
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    gate_v = gate_ptr + b * stride_gb + f * stride_gf
    scale_v = scale_ptr + b * stride_sb + f * stride_sf
    if GATED:
        g0 = tl.load(gate_v + c0, mask=k0, other=0.0).to(tl.float32)
        if NCG == 3:
            g1 = tl.load(gate_v + c1, mask=k1, other=0.0).to(tl.float32)
            g2 = tl.load(gate_v + c2, mask=k2, other=0.0).to(tl.float32)
    if NORM:
        m0 = _scale_tile(scale_v, c0, k0, PLUS_ONE)
        if NCG == 3:
            m1 = _scale_tile(scale_v, c1, k1, PLUS_ONE)
            m2 = _scale_tile(scale_v, c2, k2, PLUS_ONE)

    tok0 = f * frame_len  # int64: so are the row offsets below
    for i in tl.range(pid_p, frame_len, tl.num_programs(0), num_stages=STAGES):
        t = tok0 + i
        out_off = (b * L + t) * C
        gr_row = gr_ptr + b * stride_grb + t * stride_grl
        y_row = y_ptr + b * stride_yb + t * stride_yl
        dx_row = dx_ptr + out_off
        dy_row = dy_ptr + out_off
        d0 = zero
        d1 = zero
        d2 = zero
        gr0, y0 = _branch_tiles(gr_row, y_row, c0, k0, RESIDUAL, GATED and MOD_GRAD)
        if NCG == 3:
            gr1, y1 = _branch_tiles(gr_row, y_row, c1, k1, RESIDUAL, GATED and MOD_GRAD)
            gr2, y2 = _branch_tiles(gr_row, y_row, c2, k2, RESIDUAL, GATED and MOD_GRAD)
        if NORM:
            # the forward's statistics (bitwise what recomputing them would give, two row
            # reductions fewer)
            mean = tl.load(stats_ptr + (b * L + t) * 2)
            rstd = tl.load(stats_ptr + (b * L + t) * 2 + 1)
            r_row = r_ptr + b * stride_rb + t * stride_rl
            gh_row = gh_ptr + b * stride_ghb + t * stride_ghl
            gh0, xh0, gx0 = _norm_grad_tile(r_row, gh_row, c0, k0, mean, rstd, m0)
            sum_gx = gx0
            sum_gxx = gx0 * xh0
            if NCG == 3:
                gh1, xh1, gx1 = _norm_grad_tile(r_row, gh_row, c1, k1, mean, rstd, m1)
                gh2, xh2, gx2 = _norm_grad_tile(r_row, gh_row, c2, k2, mean, rstd, m2)
                sum_gx = sum_gx + gx1 + gx2
                sum_gxx = sum_gxx + gx1 * xh1 + gx2 * xh2
            # both row sums in one reduction (one round of shuffles and barriers, not two)
            s_gx, s_gxx = tl.reduce((sum_gx, sum_gxx), 0, _add_pairs)
            mg = tl.math.div_rn(s_gx, c_f)
            mgx = tl.math.div_rn(s_gxx, c_f)
            d0 = tl.where(k0, rstd * (gx0 - mg - xh0 * mgx), 0.0)
            if NCG == 3:
                d1 = tl.where(k1, rstd * (gx1 - mg - xh1 * mgx), 0.0)
                d2 = tl.where(k2, rstd * (gx2 - mg - xh2 * mgx), 0.0)
            if MOD_GRAD:
                s0 += gh0 * xh0
                h0 += gh0
                if NCG == 3:
                    s1 += gh1 * xh1
                    h1 += gh1
                    s2 += gh2 * xh2
                    h2 += gh2
        q0 = _input_grad_tile(d0, gr0, y0, dx_row, dy_row, c0, k0, g0, q0, NORM, RESIDUAL, GATED, MOD_GRAD)
        if NCG == 3:
            q1 = _input_grad_tile(d1, gr1, y1, dx_row, dy_row, c1, k1, g1, q1, NORM, RESIDUAL, GATED,
                                  MOD_GRAD)
            q2 = _input_grad_tile(d2, gr2, y2, dx_row, dy_row, c2, k2, g2, q2, NORM, RESIDUAL, GATED,
                                  MOD_GRAD)

    if MOD_GRAD:
        slot = (b * n_frames + f) * part_stride_p + pid_p  # [B, F, P_max] index
        plane = tl.num_programs(2) * n_frames * part_stride_p * C  # elements per accumulator
        base = part_ptr + slot * C
        if NORM:
            tl.store(base + c0, s0, mask=k0)
            tl.store(base + plane + c0, h0, mask=k0)
            if NCG == 3:
                tl.store(base + c1, s1, mask=k1)
                tl.store(base + plane + c1, h1, mask=k1)
                tl.store(base + c2, s2, mask=k2)
                tl.store(base + plane + c2, h2, mask=k2)
            base += 2 * plane
        if GATED:
            tl.store(base + c0, q0, mask=k0)
            if NCG == 3:
                tl.store(base + c1, q1, mask=k1)
                tl.store(base + c2, q2, mask=k2)


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
                for w, s, p in ((4, 3, 4), (4, 4, 3), (4, 3, 6), (8, 3, 3), (8, 4, 2), (16, 4, 2))]
_BWD_CONFIGS = [triton.Config({"PROGS_PER_SM": p, "STAGES": s}, num_warps=w, maxnreg=r)
                for w, s, p, r in ((8, 3, 2, None), (8, 4, 2, None), (8, 3, 3, 80), (4, 3, 3, None),
                                   (4, 3, 2, None), (4, 4, 3, None), (8, 3, 4, None), (4, 3, 6, None),
                                   (4, 4, 4, None), (4, 2, 8, None))]
_INTERPRETER_CONFIG = {"PROGS_PER_SM": 2, "STAGES": 3}
# size_class: a tuning per power of 2 of B·L; MOD_GRAD (backward only) is skipped by the forward
_KEY = ["C", "size_class", "RESIDUAL", "GATED", "NORM", "PLUS_ONE", "MOD_GRAD"]


@functools.cache
def _tuned(kernel, bwd: bool):
    """The kernel wrapped in autotune (GPU); None in the interpreter or with autotuning off (one
    config)."""
    if interpret_mode() or not autotune_enabled():
        return None
    return triton.autotune(configs=_BWD_CONFIGS if bwd else _FWD_CONFIGS, key=_KEY)(kernel)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs per frame, so tests cover ragged row splits


def _programs_per_frame(progs_per_sm: int, groups: int, frame_len: int, device: torch.device) -> int:
    """P for a target of ``progs_per_sm`` programs per SM over ``groups`` = B·F frames (at most
    one row per program, at least one program per frame)."""
    return max(1, min(frame_len, progs_per_sm * _num_sms(device) // groups))


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


def _fwd_triton(x, y, gate, scale, shift, frame_len, eps, plus_one):
    """(r or None, h or None, [B, L, 2] fp32 (mean, rstd) or None) for the residual / norm
    variants."""
    bsz, n_tok, c = x.shape
    n_frames = n_tok // frame_len
    residual, gated, norm = y is not None, gate is not None, scale is not None
    x = _last_dim_unit(x)
    y = _last_dim_unit(y) if residual else x
    gate = _last_dim_unit(gate) if gated else x
    scale = _last_dim_unit(scale) if norm else x
    shift = _last_dim_unit(shift) if norm else x
    r = _new_out((bsz, n_tok, c), x.dtype, x.device) if residual else x
    h = _new_out((bsz, n_tok, c), x.dtype, x.device) if norm else x
    stats = _new_out((bsz, n_tok, 2), torch.float32, x.device) if norm else x
    args = (x, y, gate, scale, shift, r, h, stats, n_tok, c, frame_len,
            *_row_strides(x), *_row_strides(y), *_row_strides(gate), *_row_strides(scale),
            *_row_strides(shift), eps, (bsz * n_tok).bit_length())
    meta = {"RESIDUAL": residual, "GATED": gated, "NORM": norm, "PLUS_ONE": plus_one, **_col_tiles(c)}
    _launch(_residual_norm_fwd_kernel, False, frame_len, n_frames, bsz, x.device, args, meta)
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


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------

_SUPPORTED = ("triton", "torch")


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str, op: str) -> str:
    # evaluated eagerly under torch.compile: resolve_backend probes imports Dynamo cannot trace
    return resolve_backend(backend, torch.device(device_type), op=op, supported=_SUPPORTED,
                           prefer=("triton",))


def _resolve(backend: str, x: torch.Tensor, op: str) -> str:
    return _resolve_for(backend, x.device.type, op)


def _check_tokens(name: str, x: torch.Tensor, be: str) -> None:
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    _checks.check_dtype(name, x, dtypes)
    _checks.check_ndim(name, x, 3)
    _checks.check_nonempty(name, x)


def _check_frame_len(frame_len: object, n_tok: int) -> None:
    if isinstance(frame_len, bool) or not isinstance(frame_len, int):
        raise TypeError(f"frame_len must be an int, got {type(frame_len).__name__}")
    if frame_len <= 0:
        raise ValueError(f"frame_len must be positive, got {frame_len}")
    if n_tok % frame_len != 0:
        raise ValueError(
            f"x has {n_tok} tokens, not a multiple of frame_len={frame_len} (expected L = F·frame_len)"
        )


def _per_frame_vector(name: str, v: torch.Tensor, x: torch.Tensor, frame_len: int, be: str) -> torch.Tensor:
    """Check a per-frame vector [B, F, C] (or [B, F, 1, C] as chunked from e0) against x [B, L, C]."""
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    _checks.check_dtype(name, v, dtypes)
    if v.dim() == 4 and v.shape[2] == 1:
        v = v.squeeze(2)
    b, n_tok, c = x.shape
    expected = (b, n_tok // frame_len, c)
    if v.dim() != 3 or tuple(v.shape) != expected:
        raise ValueError(
            f"{name} must have shape [B, F, C] = {list(expected)} (F = L // frame_len = "
            f"{n_tok} // {frame_len}), got {list(v.shape)}"
        )
    _checks.check_same_device(x=x, **{name: v})
    return v


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


def _check_residual_branch(x: torch.Tensor, y: torch.Tensor, be: str) -> None:
    _check_tokens("y", y, be)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x {list(x.shape)}, got {list(y.shape)}")
    _checks.check_same_device(x=x, y=y)


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """adaLN: ``LayerNorm(x)·(1 + scale) + shift`` with per-latent-frame shift/scale.

    Parameters
    ----------
    x : torch.Tensor
        [B, L, C] bf16/fp16/fp32 tokens (any strides), L = F·frame_len.
    shift, scale : torch.Tensor
        [B, F, C] (or [B, F, 1, C]) bf16/fp16/fp32; token ``t`` uses frame ``t // frame_len``.
        Strided views (chunks of the [B, F, 6, C] modulation) are read in place.
    frame_len : int
        Tokens per latent frame (880 for 704×1280 with the 5B model).
    eps : float
        Added to the variance inside the rsqrt (1e-6 in Wan).
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [B, L, C] contiguous, x's dtype. Statistics (biased variance) and products in fp32,
        rounded once.

    Raises
    ------
    TypeError
        Non-float tensors (fp64 only with ``backend="torch"``), non-int ``frame_len``.
    ValueError
        x not 3-D or empty, L not a multiple of ``frame_len``, shift/scale not [B, L/frame_len, C],
        tensors on different devices, ``eps`` ≤ 0, a backend that cannot run here.

    Notes
    -----
    Spec §1.1 (LN1, LN2: ``norm(x)·(1 + e1) + e0``, LayerNorm without affine, eps 1e-6) and
    §4.2 (LongLive's inference-only Triton kernel). Differentiable in x, shift and scale.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "adaln_modulate")
    _check_tokens("x", x, be)
    _check_frame_len(frame_len, x.shape[1])
    shift = _per_frame_vector("shift", shift, x, frame_len, be)
    scale = _per_frame_vector("scale", scale, x, frame_len, be)
    return _ln_mod_op(x, scale, shift, frame_len, _check_eps(eps), True, be)[0]


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, *, frame_len: int, backend: str = "auto"
) -> torch.Tensor:
    """Gated residual ``x + gate·y`` with a per-frame gate.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32 (any strides), same shape.
    gate : torch.Tensor
        [B, F, C] (or [B, F, 1, C]) per-frame gate, L = F·frame_len.
    frame_len : int
        Tokens per latent frame.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [B, L, C] contiguous, x's dtype (fp32 math, one rounding).

    Raises
    ------
    TypeError, ValueError
        As :func:`adaln_modulate`; y not shaped like x.

    Notes
    -----
    Spec §1.1: ``x = x + SelfAttn(·)·e2``, ``x = x + FFN(·)·e5``.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _check_frame_len(frame_len, x.shape[1])
    gate = _per_frame_vector("gate", gate, x, frame_len, be)
    return _gated_residual_op(x, y, gate, frame_len, be)


def gated_residual_adaln(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then adaLN in one pass: ``r = x + gate·y`` (``x + y`` when gate is None),
    ``h = LayerNorm(r)·(1 + scale) + shift``.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32, same shape (e.g. residual stream and cross-attention output).
    gate : torch.Tensor or None
        [B, F, C] per-frame gate, or None for an ungated residual.
    shift, scale : torch.Tensor
        [B, F, C] per-frame adaLN vectors (e3, e4 for LN2).
    frame_len : int
    eps : float
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    (r, h) : tuple of torch.Tensor
        Both [B, L, C] contiguous in x's dtype; h normalizes r *after* its rounding to x's dtype
        (identical to the two ops run separately).

    Raises
    ------
    TypeError, ValueError
        As :func:`adaln_modulate` and :func:`gated_residual`.

    Notes
    -----
    Spec §1.1 block: ``x = x + CrossAttn(·)`` followed by ``LN2(x)·(1 + e4) + e3``.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual_adaln")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _check_frame_len(frame_len, x.shape[1])
    if gate is not None:
        gate = _per_frame_vector("gate", gate, x, frame_len, be)
    shift = _per_frame_vector("shift", shift, x, frame_len, be)
    scale = _per_frame_vector("scale", scale, x, frame_len, be)
    return _res_ln_mod_op(x, y, gate, scale, shift, frame_len, _check_eps(eps), True, be)[:2]


def gated_residual_layernorm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    frame_len: int | None = None,
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then affine LayerNorm in one pass: ``r = x + gate·y``,
    ``h = LayerNorm(r)·weight + bias``.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32, same shape (residual stream, self-attention output).
    gate : torch.Tensor or None
        [B, F, C] per-frame gate (e2), or None for ``x + y``.
    weight, bias : torch.Tensor or None
        [C] LayerNorm affine parameters (LN3); None means 1 / 0.
    frame_len : int, optional
        Tokens per frame; required with a gate (default: L).
    eps : float
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    (r, h) : tuple of torch.Tensor
        Both [B, L, C] contiguous in x's dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`gated_residual_adaln`; weight/bias not [C].

    Notes
    -----
    Spec §1.1 block: ``x = x + SelfAttn(·)·e2`` followed by ``LN3(x)`` (``cross_attn_norm``,
    with affine). Differentiable in x, y, gate, weight and bias.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual_layernorm")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _, n_tok, c = x.shape
    if frame_len is None:
        if gate is not None:
            raise ValueError("frame_len is required when a gate is given")
        frame_len = n_tok
    _check_frame_len(frame_len, n_tok)
    if gate is not None:
        gate = _per_frame_vector("gate", gate, x, frame_len, be)
    vecs = []
    for name, v, fill in (("weight", weight, 1.0), ("bias", bias, 0.0)):
        if v is None:
            v = x.new_full((c,), fill, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype)
        dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
        _checks.check_dtype(name, v, dtypes)
        if v.shape != (c,):
            raise ValueError(f"{name} must have shape [C] = [{c}], got {list(v.shape)}")
        _checks.check_same_device(x=x, **{name: v})
        # one [C] vector for every frame: the backward sums its gradient over the frames in fp32
        # (in the same launch as the per-frame sums) and autograd rounds once to its dtype
        vecs.append(v.to(torch.promote_types(v.dtype, torch.float32)))
    return _res_ln_mod_op(x, y, gate, vecs[0], vecs[1], frame_len, _check_eps(eps), False, be)[:2]


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles these for sm_90a)
# ---------------------------------------------------------------------------------------------

_FWD_SIG = {
    "x_ptr": "*bf16", "y_ptr": "*bf16", "gate_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
    "r_ptr": "*bf16", "h_ptr": "*bf16", "stats_ptr": "*fp32", "L": "i32", "C": "i32", "frame_len": "i32",
    **{s: "i64" for s in ("stride_xb", "stride_xl", "stride_yb", "stride_yl", "stride_gb", "stride_gf",
                          "stride_sb", "stride_sf", "stride_tb", "stride_tf")},
    "eps": "fp32", "size_class": "i32",
}
_BWD_SIG = {
    "gh_ptr": "*bf16", "gr_ptr": "*bf16", "r_ptr": "*bf16", "y_ptr": "*bf16", "gate_ptr": "*fp32",
    "scale_ptr": "*fp32", "stats_ptr": "*fp32", "dx_ptr": "*bf16", "dy_ptr": "*bf16", "part_ptr": "*fp32",
    "L": "i32", "C": "i32", "frame_len": "i32", "n_frames": "i32", "part_stride_p": "i32",
    **{s: "i64" for s in ("stride_ghb", "stride_ghl", "stride_grb", "stride_grl", "stride_rb", "stride_rl",
                          "stride_yb", "stride_yl", "stride_gb", "stride_gf", "stride_sb", "stride_sf")},
    "size_class": "i32",
}
_VARIANTS = [(False, False, True), (True, True, True), (True, False, True), (True, True, False)]
for _res, _gated, _norm in _VARIANTS:  # (RESIDUAL, GATED, NORM)
    register_aot(_residual_norm_fwd_kernel, signature=_FWD_SIG,
                 constexprs={"RESIDUAL": _res, "GATED": _gated, "NORM": _norm, "PLUS_ONE": True,
                             "CG": 1024, "NCG": 3, "EVEN": True, "STAGES": 4,
                             "PROGS_PER_SM": 2},
                 options={"num_warps": 8})
    register_aot(_residual_norm_bwd_kernel, signature=_BWD_SIG,
                 constexprs={"NORM": _norm, "RESIDUAL": _res, "GATED": _gated, "PLUS_ONE": True,
                             "MOD_GRAD": True, "CG": 1024, "NCG": 3, "EVEN": True, "STAGES": 3,
                             "PROGS_PER_SM": 2},
                 options={"num_warps": 8})
