"""Fused qk-RMSNorm + 3D RoPE (Wan2.2 interleaved pairs, (t, h, w) channel split), forward and
backward (spec §1.1, §4.1; nvfp4-hopper §6).

LongLive-2.0's Triton RoPE is inference-only (no backward; training falls back to Wan's fp64
complex chain). Here one kernel reads q and k once (strided views of a fused QKV projection are
fine), optionally RMS-normalizes each token over heads·D with the learnable weight, rotates the
interleaved pairs and writes contiguous outputs; the backward kernel applies the inverse rotation
and the RMSNorm backward, writing per-program partial sums of the weight gradients. Programs take
tokens round-robin with software-pipelined (cp.async) loads.

Angles: fp64-built cos/sin tables of shape [F + H + W, D/2] (a few KB, cached per (grid, offset,
theta, device)): row f < F holds the temporal angles of frame f + frame_offset, rows F + y and
F + H + x the height/width angles, so any absolute temporal position (> 1024 frames, multi-shot
offsets, SP-local slices) costs nothing extra. The kernel gathers, per pair, the row of the part
the pair belongs to.
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
def _rotate_pairs(x, c, s, HG: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotate interleaved pairs (x[:, 2j], x[:, 2j+1]) of x [HG, BLOCK_D] by cos/sin [BLOCK_D/2]:
    (a·c − b·s, a·s + b·c)."""
    a, b = tl.split(tl.reshape(x, (HG, BLOCK_D // 2, 2)))
    c = c[None, :]
    s = s[None, :]
    return tl.reshape(tl.join(a * c - b * s, a * s + b * c), (HG, BLOCK_D))


@triton.jit
def _token_angles(cos_ptr, sin_ptr, tok, n_frames, GH, GW, pair, pmask,
                  HALF: tl.constexpr, NT: tl.constexpr, NHP: tl.constexpr):
    """cos/sin [BLOCK_D/2] of token ``tok`` (int32, frame-major (f, y, x) order) from the packed
    tables (32-bit divisions: a 64-bit one is a ~70-instruction software routine)."""
    hw = GH * GW
    f = tok // hw
    rem = tok - f * hw
    yy = rem // GW
    xx = rem - yy * GW
    row = tl.where(pair < NT, f, tl.where(pair < NT + NHP, n_frames + yy, n_frames + GH + xx))
    off = row * HALF + pair
    return tl.load(cos_ptr + off, mask=pmask, other=0.0), tl.load(sin_ptr + off, mask=pmask, other=0.0)


@triton.jit
def _tile_sum(v):
    """Σ over a [HG, BLOCK_D] tile, as one reduction (element order is irrelevant to a sum)."""
    return tl.sum(tl.reshape(v, (v.shape[0] * v.shape[1],), can_reorder=True), axis=0)


@triton.jit
def _offsets(heads, ch, g, stride_h, HG: tl.constexpr):
    """[HG, BLOCK_D] element offsets of heads g·HG + heads (head stride ``stride_h``)."""
    return (g * HG + heads)[:, None] * stride_h + ch[None, :]


@triton.jit
def _group_mask(heads, ch, g, NH, D: tl.constexpr, HG: tl.constexpr, NHG: tl.constexpr):
    """Mask of tile g; a compile-time "true" (folded away) when the tiles hold exactly NH heads of
    D = BLOCK_D channels."""
    bound = NH
    if NHG == 3:  # NH == 3·HG exactly
        bound = 3 * HG
    return (g * HG + heads < bound)[:, None] & (ch < D)[None, :]


# Work split (both kernels): grid (P, B); program p takes tokens p, p + P, p + 2P, ... of its batch
# row, so the P programs stream through adjacent tokens together, and the token loads are
# software-pipelined (``tl.range(num_stages=STAGES)``: cp.async into shared memory, STAGES - 1
# tokens in flight per program). q is done first, then k (half the live registers of a joint loop).
# A token's NH heads are NHG tiles of HG heads (24 = 3 × 8): no padded lanes, where one
# next-power-of-2 tile of 32 heads would compute 25 % masked lanes. NHG is 1 or 3 (written out: a
# Triton loop cannot carry a list of tensors); other head counts use one padded tile (NHG = 1).


@triton.jit
def _rope_fwd_rows(
    x_ptr, w_ptr, o_ptr, rstd_ptr, cos_ptr, sin_ptr, b, pid, n_p, L, NH, n_frames, GH, GW,
    sxb, sxl, sxh, eps,
    D: tl.constexpr, NT: tl.constexpr, NHP: tl.constexpr, NORM: tl.constexpr,
    HG: tl.constexpr, NHG: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
):
    """Tokens pid, pid + n_p, ... of batch ``b`` of one tensor (q or k): RMSNorm over all heads
    (NORM; 1/rms of each token to ``rstd_ptr`` for the backward), rotate, store."""
    HALF: tl.constexpr = D // 2
    heads = tl.arange(0, HG)
    ch = tl.arange(0, BLOCK_D)
    pair = tl.arange(0, BLOCK_D // 2)
    pmask = pair < HALF
    n = NH * D
    n_f = n.to(tl.float32)
    x_in = x_ptr + b * sxb
    out = o_ptr + b * L * n
    m0 = _group_mask(heads, ch, 0, NH, D, HG, NHG)
    if NORM:
        w0 = tl.load(w_ptr + _offsets(heads, ch, 0, D, HG), mask=m0, other=0.0).to(tl.float32)
    if NHG == 3:
        m1 = _group_mask(heads, ch, 1, NH, D, HG, NHG)
        if NORM:
            w1 = tl.load(w_ptr + _offsets(heads, ch, 1, D, HG), mask=m1, other=0.0).to(tl.float32)
        m2 = _group_mask(heads, ch, 2, NH, D, HG, NHG)
        if NORM:
            w2 = tl.load(w_ptr + _offsets(heads, ch, 2, D, HG), mask=m2, other=0.0).to(tl.float32)
    for t in tl.range(pid, L, n_p, num_stages=STAGES):
        t64 = tl.cast(t, tl.int64)
        row = x_in + t64 * sxl
        x0 = tl.load(row + _offsets(heads, ch, 0, sxh, HG), mask=m0, other=0.0).to(tl.float32)
        if NHG == 3:
            x1 = tl.load(row + _offsets(heads, ch, 1, sxh, HG), mask=m1, other=0.0).to(tl.float32)
            x2 = tl.load(row + _offsets(heads, ch, 2, sxh, HG), mask=m2, other=0.0).to(tl.float32)
        c, s = _token_angles(cos_ptr, sin_ptr, t, n_frames, GH, GW, pair, pmask, HALF, NT, NHP)
        if NORM:
            # Σx² of all tiles in one reduction (same layout: add the tiles first)
            sq = x0 * x0
            if NHG == 3:
                sq += x1 * x1
                sq += x2 * x2
            ss = _tile_sum(sq)
            # 1/√(mean(x²) + eps) with IEEE sqrt and division (rsqrt and ``/`` are approximate)
            ms = tl.math.div_rn(ss, n_f) + eps
            rstd = tl.math.div_rn(1.0 + 0.0 * ms, tl.sqrt_rn(ms))
            tl.store(rstd_ptr + b * L + t64, rstd)
            x0 = x0 * rstd * w0
            if NHG == 3:
                x1 = x1 * rstd * w1
                x2 = x2 * rstd * w2
        orow = out + t64 * n
        ty = o_ptr.dtype.element_ty
        tl.store(orow + _offsets(heads, ch, 0, D, HG), _rotate_pairs(x0, c, s, HG, BLOCK_D).to(ty), mask=m0)
        if NHG == 3:
            tl.store(orow + _offsets(heads, ch, 1, D, HG), _rotate_pairs(x1, c, s, HG, BLOCK_D).to(ty),
                     mask=m1)
            tl.store(orow + _offsets(heads, ch, 2, D, HG), _rotate_pairs(x2, c, s, HG, BLOCK_D).to(ty),
                     mask=m2)


@triton.jit
def _rope_fwd_kernel(
    q_ptr,  # [B, L, NH, D] float (strides sqb, sql, sqh, 1)
    k_ptr,  # [B, L, NH, D] float (strides skb, skl, skh, 1)
    wq_ptr,  # [NH·D] RMSNorm weight of q; NORM_Q
    wk_ptr,  # [NH·D] RMSNorm weight of k; NORM_K
    cos_ptr,  # [F + GH + GW, D/2] fp32
    sin_ptr,  # [F + GH + GW, D/2] fp32
    qo_ptr,  # [B, L, NH, D] out, contiguous
    ko_ptr,  # [B, L, NH, D] out, contiguous
    rstd_ptr,  # [2, B, L] fp32 out: 1/rms of each token of q (plane 0) and k (plane 1); NORM_Q/K
    L,
    NH,
    n_frames,
    GH,
    GW,
    sqb, sql, sqh, skb, skl, skh,
    eps,
    size_class,  # bit length of B·L: autotune key only (unused)
    D: tl.constexpr,
    NT: tl.constexpr,
    NHP: tl.constexpr,
    NORM_Q: tl.constexpr,
    NORM_K: tl.constexpr,
    HG: tl.constexpr,  # heads per tile (a power of 2)
    NHG: tl.constexpr,  # tiles per token (1 or 3)
    BLOCK_D: tl.constexpr,
    STAGES: tl.constexpr,  # software-pipeline depth of the token loops
    PROGS_PER_SM: tl.constexpr,  # tuning knob of the launch grid (unused here)
):
    pid = tl.program_id(0)
    n_p = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    plane = tl.num_programs(1) * L
    _rope_fwd_rows(q_ptr, wq_ptr, qo_ptr, rstd_ptr, cos_ptr, sin_ptr, b, pid, n_p, L, NH, n_frames, GH, GW,
                   sqb, sql, sqh, eps, D, NT, NHP, NORM_Q, HG, NHG, BLOCK_D, STAGES)
    _rope_fwd_rows(k_ptr, wk_ptr, ko_ptr, rstd_ptr + plane, cos_ptr, sin_ptr, b, pid, n_p, L, NH, n_frames,
                   GH, GW, skb, skl, skh, eps, D, NT, NHP, NORM_K, HG, NHG, BLOCK_D, STAGES)


@triton.jit
def _unnorm_grad(du, x, w, rstd, acc):
    """Per tile of the RMSNorm backward: (n = x·rstd, gn = du·w, acc + du·n)."""
    xn = x * rstd
    return xn, du * w, acc + du * xn


@triton.jit
def _rope_bwd_rows(
    g_ptr, x_ptr, w_ptr, dx_ptr, part_ptr, rstd_ptr, cos_ptr, sin_ptr, b, pid, n_p, L, NH, n_frames,
    GH, GW, sgb, sgl, sgh, sxb, sxl, sxh,
    D: tl.constexpr, NT: tl.constexpr, NHP: tl.constexpr, NORM: tl.constexpr,
    HG: tl.constexpr, NHG: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr,
):
    """Backward of :func:`_rope_fwd_rows`: inverse rotation, then (NORM) the RMSNorm backward
    ``dx = r·(gn − n·mean(gn·n))`` with ``gn = du·w``, ``n = x·r`` and the forward's ``r`` =
    1/rms; Σ du·n over the program's tokens goes to ``part_ptr``."""
    HALF: tl.constexpr = D // 2
    heads = tl.arange(0, HG)
    ch = tl.arange(0, BLOCK_D)
    pair = tl.arange(0, BLOCK_D // 2)
    pmask = pair < HALF
    n = NH * D
    n_f = n.to(tl.float32)
    g_in = g_ptr + b * sgb
    x_in = x_ptr + b * sxb
    out = dx_ptr + b * L * n
    zero = tl.zeros([HG, BLOCK_D], dtype=tl.float32)
    m0 = _group_mask(heads, ch, 0, NH, D, HG, NHG)
    acc0 = zero
    if NORM:
        w0 = tl.load(w_ptr + _offsets(heads, ch, 0, D, HG), mask=m0, other=0.0).to(tl.float32)
    if NHG == 3:
        m1 = _group_mask(heads, ch, 1, NH, D, HG, NHG)
        acc1 = zero
        if NORM:
            w1 = tl.load(w_ptr + _offsets(heads, ch, 1, D, HG), mask=m1, other=0.0).to(tl.float32)
        m2 = _group_mask(heads, ch, 2, NH, D, HG, NHG)
        acc2 = zero
        if NORM:
            w2 = tl.load(w_ptr + _offsets(heads, ch, 2, D, HG), mask=m2, other=0.0).to(tl.float32)
    for t in tl.range(pid, L, n_p, num_stages=STAGES):
        t64 = tl.cast(t, tl.int64)
        grow = g_in + t64 * sgl
        c, s = _token_angles(cos_ptr, sin_ptr, t, n_frames, GH, GW, pair, pmask, HALF, NT, NHP)
        s = 0.0 - s  # inverse rotation (sign of a zero sine is irrelevant)
        g0 = tl.load(grow + _offsets(heads, ch, 0, sgh, HG), mask=m0, other=0.0).to(tl.float32)
        du0 = _rotate_pairs(g0, c, s, HG, BLOCK_D)
        if NHG == 3:
            g1 = tl.load(grow + _offsets(heads, ch, 1, sgh, HG), mask=m1, other=0.0).to(tl.float32)
            du1 = _rotate_pairs(g1, c, s, HG, BLOCK_D)
            g2 = tl.load(grow + _offsets(heads, ch, 2, sgh, HG), mask=m2, other=0.0).to(tl.float32)
            du2 = _rotate_pairs(g2, c, s, HG, BLOCK_D)
        if NORM:
            rstd = tl.load(rstd_ptr + b * L + t64)
            xrow = x_in + t64 * sxl
            x0 = tl.load(xrow + _offsets(heads, ch, 0, sxh, HG), mask=m0, other=0.0).to(tl.float32)
            xn0, gn0, acc0 = _unnorm_grad(du0, x0, w0, rstd, acc0)
            sg = gn0 * xn0
            if NHG == 3:
                x1 = tl.load(xrow + _offsets(heads, ch, 1, sxh, HG), mask=m1, other=0.0).to(tl.float32)
                xn1, gn1, acc1 = _unnorm_grad(du1, x1, w1, rstd, acc1)
                sg += gn1 * xn1
                x2 = tl.load(xrow + _offsets(heads, ch, 2, sxh, HG), mask=m2, other=0.0).to(tl.float32)
                xn2, gn2, acc2 = _unnorm_grad(du2, x2, w2, rstd, acc2)
                sg += gn2 * xn2
            mg = tl.math.div_rn(_tile_sum(sg), n_f)  # one reduction over all tiles
            du0 = rstd * (gn0 - xn0 * mg)
            if NHG == 3:
                du1 = rstd * (gn1 - xn1 * mg)
                du2 = rstd * (gn2 - xn2 * mg)
        orow = out + t64 * n
        ty = dx_ptr.dtype.element_ty
        tl.store(orow + _offsets(heads, ch, 0, D, HG), du0.to(ty), mask=m0)
        if NHG == 3:
            tl.store(orow + _offsets(heads, ch, 1, D, HG), du1.to(ty), mask=m1)
            tl.store(orow + _offsets(heads, ch, 2, D, HG), du2.to(ty), mask=m2)
    if NORM:
        tl.store(part_ptr + _offsets(heads, ch, 0, D, HG), acc0, mask=m0)
        if NHG == 3:
            tl.store(part_ptr + _offsets(heads, ch, 1, D, HG), acc1, mask=m1)
            tl.store(part_ptr + _offsets(heads, ch, 2, D, HG), acc2, mask=m2)


@triton.jit
def _rope_bwd_kernel(
    gq_ptr,  # [B, L, NH, D] grad of q_out (strides gqb, gql, gqh, 1)
    gk_ptr,  # [B, L, NH, D] grad of k_out (strides gkb, gkl, gkh, 1)
    q_ptr,  # [B, L, NH, D] forward input q (strides sqb, sql, sqh, 1); NORM_Q
    k_ptr,  # [B, L, NH, D] forward input k (strides skb, skl, skh, 1); NORM_K
    wq_ptr,  # [NH·D]; NORM_Q
    wk_ptr,  # [NH·D]; NORM_K
    rstd_ptr,  # [2, B, L] fp32: the forward's 1/rms of each token of q, k; NORM_Q/K
    cos_ptr,  # [F + GH + GW, D/2] fp32
    sin_ptr,  # [F + GH + GW, D/2] fp32
    dq_ptr,  # [B, L, NH, D] out, contiguous
    dk_ptr,  # [B, L, NH, D] out, contiguous
    part_ptr,  # [2, B, P_max, NH·D] fp32 out: per-program Σ du·n for wq, wk
    L,
    NH,
    n_frames,
    GH,
    GW,
    part_stride_p,  # P_max: partial-sum slots per batch row (≥ programs)
    gqb, gql, gqh, gkb, gkl, gkh, sqb, sql, sqh, skb, skl, skh,
    size_class,  # bit length of B·L: autotune key only (unused)
    D: tl.constexpr,
    NT: tl.constexpr,
    NHP: tl.constexpr,
    NORM_Q: tl.constexpr,
    NORM_K: tl.constexpr,
    HG: tl.constexpr,  # heads per tile (a power of 2)
    NHG: tl.constexpr,  # tiles per token (1 or 3)
    BLOCK_D: tl.constexpr,
    STAGES: tl.constexpr,  # software-pipeline depth of the token loops
    PROGS_PER_SM: tl.constexpr,  # tuning knob of the launch grid (unused here)
):
    pid = tl.program_id(0)
    n_p = tl.num_programs(0)
    b = tl.program_id(1).to(tl.int64)
    n = NH * D
    part = part_ptr + (b * part_stride_p + pid) * n
    plane = tl.num_programs(1) * part_stride_p * n  # elements per weight's partials
    rstd_plane = tl.num_programs(1) * L
    _rope_bwd_rows(gq_ptr, q_ptr, wq_ptr, dq_ptr, part, rstd_ptr, cos_ptr, sin_ptr, b, pid, n_p, L, NH,
                   n_frames, GH, GW, gqb, gql, gqh, sqb, sql, sqh, D, NT, NHP, NORM_Q, HG, NHG, BLOCK_D,
                   STAGES)
    _rope_bwd_rows(gk_ptr, k_ptr, wk_ptr, dk_ptr, part + plane, rstd_ptr + rstd_plane, cos_ptr, sin_ptr, b,
                   pid, n_p, L, NH, n_frames, GH, GW, gkb, gkl, gkh, skb, skl, skh, D, NT, NHP, NORM_K,
                   HG, NHG, BLOCK_D, STAGES)


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
    return triton.autotune(configs=_BWD_CONFIGS if bwd else _FWD_CONFIGS, key=_KEY)(kernel)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs, so tests cover ragged token splits


def _programs(progs_per_sm: int, bsz: int, n_tok: int, device: torch.device) -> int:
    """Programs per batch row for a target of ``progs_per_sm`` programs per SM (at most one per
    token, at least one per batch row)."""
    return max(1, min(n_tok, progs_per_sm * _num_sms(device) // bsz))


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


@functools.lru_cache(maxsize=32)
def rope_tables(
    frames: int, height: int, width: int, head_dim: int, frame_offset: int, theta: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed fp32 cos/sin tables [frames + height + width, head_dim/2], built in fp64.

    Row ``f`` (< frames) holds, in the temporal pair columns, the angles of position
    ``f + frame_offset``; rows ``frames + y`` and ``frames + height + x`` hold the height and width
    angles in their pair columns; other entries are unused (0). Cached (LRU, 32 entries): one AR
    chunk reuses its table over all layers and denoising steps. Do not build a new entry inside a
    CUDA-graph capture (the cached tensor would live in the graph's pool).
    """
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


def _rope_fwd_triton(q, k, wq, wk, grid_fhw, frame_offset, theta, eps):
    """(q_out, k_out, [2, B, L] fp32 1/rms of each token of q, k — or None without RMSNorm)."""
    q, k = _unit_last(q), _unit_last(k)
    bsz, n_tok, nh, d = q.shape
    cos, sin = rope_tables(*grid_fhw, d, frame_offset, theta, q.device)
    qo = _new_out((bsz, n_tok, nh, d), q.dtype, q.device)
    ko = _new_out((bsz, n_tok, nh, d), k.dtype, k.device)
    norm = wq is not None or wk is not None
    rstd = _new_out((2, bsz, n_tok), torch.float32, q.device) if norm else None
    args = (q, k, q if wq is None else wq, k if wk is None else wk, cos, sin, qo, ko,
            qo if rstd is None else rstd, n_tok, nh, grid_fhw[0], grid_fhw[1], grid_fhw[2],
            *_head_strides(q), *_head_strides(k), eps, (bsz * n_tok).bit_length())
    _launch(_rope_fwd_kernel, False, n_tok, bsz, q.device, args,
            dict(NORM_Q=wq is not None, NORM_K=wk is not None, **_launch_meta(q)))
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


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str) -> str:
    # evaluated eagerly under torch.compile: resolve_backend probes imports Dynamo cannot trace
    return resolve_backend(backend, torch.device(device_type), op="apply_rope_3d",
                           supported=("triton", "torch"), prefer=("triton",))


def _check_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return v


def apply_rope_3d(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    frame_offset: int = 0,
    theta: float = 10000.0,
    norm_weight_q: torch.Tensor | None = None,
    norm_weight_k: torch.Tensor | None = None,
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D rotary embedding of q and k, optionally fused with Wan's qk-RMSNorm.

    Parameters
    ----------
    q, k : torch.Tensor
        [B, L, heads, head_dim] bf16/fp16/fp32, same shape; any strides with a unit last stride
        (e.g. ``qkv.view(B, L, 3, heads, D)[:, :, 0]``). L = F·H·W tokens in (frame, row, col)
        order.
    grid : (int, int, int)
        (F, H, W) latent frames, rows, cols (e.g. (8, 22, 40) for one 704×1280 chunk).
    frame_offset : int
        Added to every token's frame index: the absolute start frame of the chunk, + 8·shot index
        for the multi-shot offset (spec §2.5), or an SP rank's first local frame. Any size (the
        angles are computed in fp64, not sliced from a 1024-row table).
    theta : float
        RoPE base (10000 in Wan).
    norm_weight_q, norm_weight_k : torch.Tensor, optional
        [heads·head_dim] RMSNorm weights; when given, each token's q (k) is first normalized over
        all heads·head_dim channels (``x / sqrt(mean(x²) + eps) · weight``) in the same kernel.
    eps : float
        RMSNorm epsilon (1e-6 in Wan).
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    (q_out, k_out) : tuple of torch.Tensor
        [B, L, heads, head_dim] contiguous, in q's / k's dtype; fp32 math, one rounding.

    Raises
    ------
    TypeError
        Non-float tensors (fp64 only with ``backend="torch"``), non-int grid entries or offset.
    ValueError
        q/k not 4-D, shapes differ, empty, head_dim odd or < 6, F·H·W != L, weights not
        [heads·head_dim], theta/eps not positive, tensors on different devices, a backend that
        cannot run here.

    Notes
    -----
    Spec §1.1: head_dim splits into (t, h, w) = (d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋) channels (44/42/42
    for d = 128) of interleaved complex pairs (2j, 2j+1); part p rotates pair j by
    ``pos_p · θ^(−2j/d_p)`` with pos = (frame + frame_offset, row, col); pair (a, b) becomes
    (a·cos − b·sin, a·sin + b·cos). RMSNorm as ``WanRMSNorm(heads·head_dim)`` (fp32 normalize,
    × weight; Wan additionally rounds before the weight product). Differentiable in q, k and the
    weights. §4.1: LongLive's Triton RoPE (inference only) is replaced by this op.
    """
    _checks.check_tensor("q", q)
    _checks.check_tensor("k", k)
    be = _resolve_for(backend, q.device.type)
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    for name, t in (("q", q), ("k", k)):
        _checks.check_dtype(name, t, dtypes)
        _checks.check_ndim(name, t, 4)
        _checks.check_nonempty(name, t)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, L, heads, head_dim], got {list(q.shape)} "
                         f"and {list(k.shape)}")
    _checks.check_same_device(q=q, k=k)
    _, n_tok, nh, d = q.shape
    if d % 2 != 0 or d < 6:
        raise ValueError(f"head_dim must be even and >= 6 (split into t/h/w pair groups "
                         f"d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋), got {d}")
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"grid must be a tuple (F, H, W), got {grid!r}")
    fhw = tuple(_check_int(f"grid[{i}]", g) for i, g in enumerate(grid))
    if min(fhw) <= 0:
        raise ValueError(f"grid entries must be positive, got {fhw}")
    if fhw[0] * fhw[1] * fhw[2] != n_tok:
        n_grid = fhw[0] * fhw[1] * fhw[2]
        raise ValueError(f"grid {fhw} has F·H·W = {n_grid} tokens but q/k have L = {n_tok}")
    frame_offset = _check_int("frame_offset", frame_offset)
    for name, v in (("theta", theta), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive float, got {v!r}")
    for name, w in (("norm_weight_q", norm_weight_q), ("norm_weight_k", norm_weight_k)):
        if w is None:
            continue
        _checks.check_dtype(name, w, dtypes)
        if w.shape != (nh * d,):
            raise ValueError(f"{name} must have shape [heads·head_dim] = [{nh * d}], got {list(w.shape)}")
        _checks.check_same_device(q=q, **{name: w})
    if norm_weight_q is not None and norm_weight_q.stride(-1) != 1:
        norm_weight_q = norm_weight_q.contiguous()
    if norm_weight_k is not None and norm_weight_k.stride(-1) != 1:
        norm_weight_k = norm_weight_k.contiguous()
    return _rope_op(q, k, norm_weight_q, norm_weight_k, fhw[0], fhw[1], fhw[2], frame_offset,
                    float(theta), float(eps), be)[:2]


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles these for sm_90a)
# ---------------------------------------------------------------------------------------------

_STRIDES = ("sqb", "sql", "sqh", "skb", "skl", "skh")
_COMMON = {"L": "i32", "NH": "i32", "n_frames": "i32", "GH": "i32", "GW": "i32"}
_META = {"D": 128, "NT": 22, "NHP": 21, "HG": 8, "NHG": 3, "BLOCK_D": 128, "STAGES": 3, "PROGS_PER_SM": 2}
for _norm in (True, False):
    register_aot(
        _rope_fwd_kernel,
        signature={"q_ptr": "*bf16", "k_ptr": "*bf16", "wq_ptr": "*bf16", "wk_ptr": "*bf16",
                   "cos_ptr": "*fp32", "sin_ptr": "*fp32", "qo_ptr": "*bf16", "ko_ptr": "*bf16",
                   "rstd_ptr": "*fp32", **_COMMON, **{s: "i64" for s in _STRIDES}, "eps": "fp32",
                   "size_class": "i32"},
        constexprs={**_META, "NORM_Q": _norm, "NORM_K": _norm},
    )
    register_aot(
        _rope_bwd_kernel,
        signature={"gq_ptr": "*bf16", "gk_ptr": "*bf16", "q_ptr": "*bf16", "k_ptr": "*bf16",
                   "wq_ptr": "*bf16", "wk_ptr": "*bf16", "rstd_ptr": "*fp32", "cos_ptr": "*fp32",
                   "sin_ptr": "*fp32", "dq_ptr": "*bf16", "dk_ptr": "*bf16", "part_ptr": "*fp32", **_COMMON,
                   "part_stride_p": "i32",
                   **{s: "i64" for s in ("gqb", "gql", "gqh", "gkb", "gkl", "gkh") + _STRIDES},
                   "size_class": "i32"},
        constexprs={**_META, "NORM_Q": _norm, "NORM_K": _norm},
    )
