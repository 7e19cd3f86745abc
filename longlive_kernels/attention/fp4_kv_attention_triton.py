"""The portable Triton kernel of :func:`~.fp4_kv_attention.fp4_kv_attention` (sm_90a wgmma, CPU interpreter).

A flash-attention forward whose K/V tiles are read from the FP4 slots through the cache's device
index table and decoded in registers: the BF16 window never exists in device memory (spec §3.5,
``nvfp4-hopper.md`` §4.1). Online softmax in fp32 (base 2), no mask (bidirectional).

Decode, exact: a 128×D tile is ``e2m1 · s_block · s_tile``. The kernel builds
``e2m1 · s_block · 2^-7`` in fp16 (E2M1 → fp16 by bit placement, ``e2m1·2^-14``, times the E4M3
scale ·2^7 with one ``mul.f16x2`` per two values: ≤ 5 significant bits, so the product is exact,
subnormals included) and folds the FP32 tile scale into the softmax scale (K) and into the running
rescale of the output accumulator (V: the accumulator is kept in units of the last V tile's scale).
The MMAs are fp16×fp16→fp32 for cache tiles (more mantissa than bf16 for P), and in the q dtype for
the BF16 current chunk (LongLive's choice: the current chunk attends to itself unquantized).

``compute="fp8"``: Q (scaled by a power of two per 128-row tile), the decoded K and V tiles
(``e2m1 · s_block / 8``, rounded to E4M3: the product can need 5 significant bits, E4M3 keeps 4) and
P (·256) in FP8 E4M3 on the FP8 tensor cores (QGMMA).

Performance notes (SASS of BM = BN = 128, 8 warps, sm_90a; ``tools/aot_compile.py``): 237 registers,
no spills, 160 KB shared memory; the cache-tile loop issues ~950 instructions per thread per 128-key
tile (HGMMA ×16), of which ~330 decode 2×16K E2M1 values and ~330 are the online softmax. Triton 3.6
waits for every wgmma whose result is used in the same iteration right after issuing it (only the
accumulating PV dot stays asynchronous), so the QKᵀ MMA does not overlap the decode/softmax within a
CTA. Block config override for sweeps: ``LONGLIVE_FP4_KV_ATTN_CONFIG=BM,BN,warps,stages``;
``LONGLIVE_FP4_KV_NO_ASM=1`` uses the portable decode instead of the inline PTX.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._aot import register_aot
from .._backend import interpret_mode
from ..fp4.nvfp4_triton import e4m3_decode, e4m3_rne
from .kv_cache import KV_SCALE_TILE

_LOG2E = 1.4426950408889634

# E2M1 → fp16 ``e2m1·s·2^-7`` for 4 packed bytes. In: $4 = the 4 bytes (byte j holds elements 2j in
# the low nibble and 2j+1 in the high nibble), $5..$8 = the f16x2 pair (s·2^7, s·2^7) of byte j's
# block. Out: $0..$3 = the two fp16 values of byte j (element 2j in the low half). ``prmt`` puts the
# low nibble (from ``q << 4``) and the high nibble at bits 12-15 of the two 16-bit lanes; the sign
# stays at bit 15 and (exp, mantissa) move to bits 9-11: the fp16 bits of ``e2m1·2^-14``; one
# ``mul.f16x2`` by the scale is exact (<= 5 significant bits).
# Byte j: ``prmt`` selector 0x4000 + 0x1111·j (the low nibble of byte j from q4 into lane 0's top, the
# high nibble from $4 into lane 1's top), then the bit move and the scale multiply into $j.
_E2M1_F16_LANE = """prmt.b32 x, q4, $4, {selector:#06x};
and.b32 t, x, 0x70007000;
shr.b32 t, t, 3;
and.b32 x, x, 0x80008000;
or.b32 x, x, t;
mul.rn.f16x2 ${j}, x, ${scale};
"""
_E2M1_F16_ASM = tl.constexpr(
    "\n{\n.reg .b32 q4, x, t;\nshl.b32 q4, $4, 4;\n"
    + "".join(_E2M1_F16_LANE.format(selector=0x4000 + 0x1111 * j, j=j, scale=5 + j) for j in range(4))
    + "}\n"
)




# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _e2m1_f16(c):
    """int16 E2M1 codes → fp16 ``e2m1 · 2^-14`` (bit placement; code 1 → fp16 subnormal)."""
    return (((c & 8) << 12) | ((c & 7) << 9)).to(tl.float16, bitcast=True)


@triton.jit
def _fp8(x, EMULATE: tl.constexpr):
    """fp32 → FP8 E4M3 (RNE; |x| <= 448 by construction). EMULATE (interpreter, whose fp8 casts
    are not RNE): the E4M3 values as fp32, rounded exactly with ``e4m3_rne``."""
    if EMULATE:
        v, _ = e4m3_rne(tl.minimum(tl.abs(x), 448.0))
        return (v.to(tl.int32, bitcast=True) | (x.to(tl.int32, bitcast=True) & (-2147483648))).to(
            tl.float32, bitcast=True)
    else:
        return x.to(tl.float8e4nv)


@triton.jit
def _mma16(x, EMULATE: tl.constexpr):
    """A bf16/fp16 MMA operand; fp32 in the interpreter (its bf16 tl.dot is wrong)."""
    if EMULATE:
        return x.to(tl.float32)
    else:
        return x


@triton.jit
def _fp4_tile(
    data_ptr,  # [.., T, D/2] uint8 packed E2M1 (one K or V buffer of a layer)
    scale_ptr,  # [.., T, D/16] uint8 E4M3 bits
    row,  # [BN] int64 row index into the [.., T] planes
    mask,  # [BN] bool rows to load (others decode to 0)
    D: tl.constexpr,
    BN: tl.constexpr,
    MASKED: tl.constexpr,
    USE_ASM: tl.constexpr,
    OUT_FP8: tl.constexpr,
    EMULATE: tl.constexpr,
):
    """[BN, D] decoded cache rows: fp16 ``e2m1 · s_block · 2^-7`` (exact), or with OUT_FP8 the
    E4M3 rounding of ``e2m1 · s_block / 8``."""
    NB: tl.constexpr = D // 16
    d_off = row[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :]
    s_off = row[:, None] * NB + tl.arange(0, NB)[None, :]
    if MASKED:
        packed = tl.load(data_ptr + d_off, mask=mask[:, None], other=0)
        scode = tl.load(scale_ptr + s_off, mask=mask[:, None], other=0)
    else:
        packed = tl.load(data_ptr + d_off)
        scode = tl.load(scale_ptr + s_off)
    packed = tl.reshape(packed, (BN, NB, 8))  # 8 bytes = one 16-value block
    if USE_ASM:
        s = scode.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        s = e4m3_decode(scode.to(tl.int32))  # the interpreter's fp8 cast loses NaN
    s16 = (s * 128.0).to(tl.float16)  # exact: 2^-2 <= s·2^7 <= 57344
    if USE_ASM:
        s_bits = s16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        s_pair = (s_bits | (s_bits << 16))[:, :, None]  # f16x2 (s, s)
        w = tl.inline_asm_elementwise(_E2M1_F16_ASM, "=r,=r,=r,=r,r,r,r,r,r", [packed, s_pair],
                                      dtype=tl.int32, is_pure=True, pack=4)
        lo = w.to(tl.int16).to(tl.float16, bitcast=True)
        hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True)
        x = tl.reshape(tl.join(lo, hi), (BN, D))
        if OUT_FP8:  # e2m1·s·2^-7 · 16 is exact in fp16: one RNE to E4M3
            x = (x * 16.0).to(tl.float8e4nv)
    else:
        p = packed.to(tl.int16)
        lo = _e2m1_f16(p & 0xF) * s16[:, :, None]
        hi = _e2m1_f16((p >> 4) & 0xF) * s16[:, :, None]
        x = tl.reshape(tl.join(lo, hi), (BN, D))
        if OUT_FP8:
            x = _fp8(x.to(tl.float32) * 16.0, EMULATE)
    return x


@triton.jit
def _kv_tile(data_ptr, scale_ptr, gs_ptr, bf16_ptr, row, gidx, valid, d, dtype: tl.constexpr, D: tl.constexpr,
             BN: tl.constexpr, MASKED: tl.constexpr, USE_ASM: tl.constexpr, OUT_FP8: tl.constexpr, FP4: tl.constexpr,
             EMULATE: tl.constexpr):
    """One K or V tile of BN cache rows and its FP32 tile scale: decoded from the FP4 buffers
    (``_fp4_tile``), or loaded from the BF16 storage mode (scale 1)."""
    if FP4:
        t = _fp4_tile(data_ptr, scale_ptr, row, valid, D, BN, MASKED, USE_ASM, OUT_FP8, EMULATE)
        g = tl.load(gs_ptr + gidx)
    else:
        t = tl.load(bf16_ptr + row[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
        t = _mma16(t.to(dtype), EMULATE)
        g = 1.0
    return t, g


@triton.jit
def _fp4_kv_attention_kernel(
    q_ptr,  # [B, Lq, H, D] bf16/fp16
    kd_ptr,  # [S, B, H, T, D/2] uint8 packed E2M1 of K (FP4 storage)
    ks_ptr,  # [S, B, H, T, D/16] uint8 E4M3 block scales of K
    kg_ptr,  # [S, B, H, NT] fp32 decode scale per 128-token tile of K
    vd_ptr,  # [S, B, H, T, D/2] uint8 (V)
    vs_ptr,  # [S, B, H, T, D/16] uint8 (V)
    vg_ptr,  # [S, B, H, NT] fp32 (V)
    kb_ptr,  # [S, B, H, T, D] K values (BF16 storage; unused for FP4)
    vb_ptr,  # [S, B, H, T, D] V values (BF16 storage)
    table_ptr,  # [2 + S] int32: n_ctx, slot(current), slot(ctx_0), ...
    ck_ptr,  # [B, Lc, H, D] current chunk K in q's dtype (HAS_CURRENT)
    cv_ptr,  # [B, Lc, H, D] current chunk V (same strides as ck)
    o_ptr,  # [B, Lq, H, D] out, q's dtype
    qk_scale,  # softmax_scale · log2(e)
    Lq,
    Lc,
    T,
    H,
    B,
    NT,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_ct,
    stride_ch,
    stride_ob,
    stride_ot,
    stride_oh,
    D: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    TILE: tl.constexpr,
    FP4: tl.constexpr,
    FP8: tl.constexpr,
    HAS_CURRENT: tl.constexpr,
    ALIGNED: tl.constexpr,
    EVEN_LC: tl.constexpr,
    USE_ASM: tl.constexpr,
    EMULATE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    d = tl.arange(0, D)
    m_rows = pid_m * BM + tl.arange(0, BM)
    q_mask = m_rows[:, None] < Lq
    q_off = b.to(tl.int64) * stride_qb + m_rows[:, None].to(tl.int64) * stride_qt + h * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=q_mask, other=0.0)

    # Q for the cache tiles: scaled by 2^-e so that max|q| in [1, 2) (fp16 range), ·2^7 for fp8.
    qf = q.to(tl.float32)
    amax_q = tl.max(tl.max(tl.abs(qf), axis=1), axis=0)
    e_q = tl.minimum(tl.maximum(((amax_q.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -126), 126)
    if FP8:
        e_q = e_q - 7
    q_down = ((127 - e_q) << 23).to(tl.float32, bitcast=True)
    q_up = ((127 + e_q) << 23).to(tl.float32, bitcast=True)
    if FP8:
        q_c = _fp8(qf * q_down, EMULATE)
        k_unit = q_up * 8.0  # cache K tile in fp8 = e2m1·s/8
        v_unit = 1.0 / 32.0  # P·256 and V·1/8
    elif FP4:
        q_c = (qf * q_down).to(tl.float16)
        k_unit = q_up * 128.0  # cache K tile in fp16 = e2m1·s·2^-7
        v_unit = 128.0
    else:
        q_c = _mma16(q, EMULATE)
        k_unit = 1.0
        v_unit = 1.0

    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    g_acc = 1.0  # acc is in units of g_acc (the last V tile's decode scale)

    n_ctx = tl.load(table_ptr)
    cur_slot = tl.load(table_ptr + 1)
    n_keys = (n_ctx + (0 if HAS_CURRENT else 1)) * T
    for start in range(0, n_keys, BN):
        if ALIGNED:  # the tile lies in one chunk and one 128-token scale tile
            c = start // T
            slot = tl.where(c < n_ctx, tl.load(table_ptr + 2 + c), cur_slot).to(tl.int64)
            t0 = start - c * T
            plane = (slot * B + b) * H + h
            row = plane * T + t0 + tl.arange(0, BN)
            valid = row >= 0
            gidx = plane * NT + t0 // TILE
        else:  # per-row chunk lookup (chunk_tokens not a multiple of BN)
            tok = start + tl.arange(0, BN)
            valid = tok < n_keys
            c = tok // T
            slot_c = tl.load(table_ptr + 2 + c, mask=valid & (c < n_ctx), other=0)
            slot = tl.where(c < n_ctx, slot_c, cur_slot).to(tl.int64)
            t_in = tok - c * T
            plane = (slot * B + b) * H + h
            row = tl.where(valid, plane * T + t_in, 0)
            gidx = tl.where(valid, plane * NT + t_in // TILE, 0)
        k_t, gk = _kv_tile(kd_ptr, ks_ptr, kg_ptr, kb_ptr, row, gidx, valid, d, q.dtype, D, BN, not ALIGNED, USE_ASM,
                           FP8, FP4, EMULATE)
        s = tl.dot(q_c, tl.trans(k_t))
        # decode the V tile while the QKᵀ wgmma runs
        v_t, gv = _kv_tile(vd_ptr, vs_ptr, vg_ptr, vb_ptr, row, gidx, valid, d, q.dtype, D, BN, not ALIGNED, USE_ASM,
                           FP8, FP4, EMULATE)
        if ALIGNED:
            sc = qk_scale * k_unit * gk  # >= 0
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * sc)
            p = tl.math.exp2(s * sc - m_new[:, None])
        else:
            s = s * (qk_scale * k_unit * gk)[None, :]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        if FP4:
            if not ALIGNED:
                g_tile = tl.max(gv, axis=0)
                p = p * tl.where(g_tile > 0, gv / g_tile, 0.0)[None, :]
                gv = g_tile
            g_new = tl.where(gv > 0, gv * v_unit, g_acc)  # an all-zero tile has scale 0
            if FP8:
                p_c = _fp8(p * 256.0, EMULATE)
            else:
                p_c = p.to(tl.float16)
        else:
            g_new = 1.0
            p_c = _mma16(p.to(q.dtype), EMULATE)
        acc = acc * (alpha * (g_acc / g_new))[:, None]
        acc = tl.dot(p_c, v_t, acc)
        g_acc = g_new

    if HAS_CURRENT:
        for start in range(0, Lc, BN):
            n_rows = start + tl.arange(0, BN)
            valid = n_rows < Lc
            c_off = b.to(tl.int64) * stride_cb + n_rows[:, None].to(tl.int64) * stride_ct
            c_off += h * stride_ch + d[None, :]
            k_t = tl.load(ck_ptr + c_off, mask=valid[:, None], other=0.0)
            s = tl.dot(_mma16(q, EMULATE), tl.trans(_mma16(k_t, EMULATE)))
            v_t = tl.load(cv_ptr + c_off, mask=valid[:, None], other=0.0)
            if not EVEN_LC:
                s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
            acc = acc * (alpha * g_acc)[:, None]
            acc = tl.dot(_mma16(p.to(v_t.dtype), EMULATE), _mma16(v_t, EMULATE), acc)
            g_acc = 1.0

    out = acc * (g_acc / l_i)[:, None]
    o_off = b.to(tl.int64) * stride_ob + m_rows[:, None].to(tl.int64) * stride_ot + h * stride_oh + d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=q_mask)


def _use_asm() -> bool:
    return not interpret_mode() and os.environ.get("LONGLIVE_FP4_KV_NO_ASM", "0") != "1"


def _block_sizes(head_dim: int, fp8: bool) -> tuple[int, int, int, int]:
    """(BM, BN, num_warps, num_stages) on the GPU; small tiles in the interpreter."""
    if interpret_mode():
        return 16, 32 if fp8 else 16, 4, 1
    env = os.environ.get("LONGLIVE_FP4_KV_ATTN_CONFIG")  # "BM,BN,warps,stages" for tuning sweeps
    if env:
        bm, bn, w, st = (int(x) for x in env.split(","))
        return bm, bn, w, st
    return 128, 128 if head_dim <= 128 else 64, 8, 2


def attention(q, view, current_k, current_v, softmax_scale, compute):
    """Launch the kernel: ``q`` [B, Lq, H, D] over the cache layer ``view`` (``FP4KVCache.layer_view``)
    plus the optional current chunk; returns O like ``q``. The caller validated the arguments."""
    b, lq, h, d = q.shape
    fp8 = compute == "fp8"
    fp4 = view.data is not None
    bm, bn, warps, stages = _block_sizes(d, fp8)
    t = view.chunk_tokens
    aligned = t % bn == 0 and KV_SCALE_TILE % bn == 0
    out = torch.empty_like(q)
    has_cur = current_k is not None
    ck = current_k if has_cur else q
    cv = current_v if has_cur else q
    lc = current_k.shape[1] if has_cur else 0
    if fp4:
        kd, vd = view.data[0], view.data[1]
        ks, vs = view.scale[0], view.scale[1]
        kg, vg = view.global_scale[0], view.global_scale[1]
        kb = vb = kd
        nt = view.global_scale.shape[-1]
    else:
        kd = vd = ks = vs = kg = vg = view.table
        kb, vb = view.values[0], view.values[1]
        nt = 1
    grid = (triton.cdiv(lq, bm), b * h)
    _fp4_kv_attention_kernel[grid](
        q, kd, ks, kg, vd, vs, vg, kb, vb, view.table, ck, cv, out,
        softmax_scale * _LOG2E, lq, lc, t, h, b, nt,
        q.stride(0), q.stride(1), q.stride(2), ck.stride(0), ck.stride(1), ck.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        D=d, BM=bm, BN=bn, TILE=KV_SCALE_TILE, FP4=fp4, FP8=fp8, HAS_CURRENT=has_cur, ALIGNED=aligned,
        EVEN_LC=lc % bn == 0,
        USE_ASM=_use_asm(), EMULATE=interpret_mode(), num_warps=warps, num_stages=stages,
    )
    return out


def _aot_signature() -> dict[str, str]:
    sig = {"q_ptr": "*bf16", "kd_ptr": "*u8", "ks_ptr": "*u8", "kg_ptr": "*fp32", "vd_ptr": "*u8",
           "vs_ptr": "*u8", "vg_ptr": "*fp32", "kb_ptr": "*u8", "vb_ptr": "*u8", "table_ptr": "*i32",
           "ck_ptr": "*bf16", "cv_ptr": "*bf16", "o_ptr": "*bf16", "qk_scale": "fp32"}
    for name in ("Lq", "Lc", "T", "H", "B", "NT"):
        sig[name] = "i32"
    for name in ("stride_qb", "stride_qt", "stride_qh", "stride_cb", "stride_ct", "stride_ch",
                 "stride_ob", "stride_ot", "stride_oh"):
        sig[name] = "i64"
    return sig


for _compute_fp8 in (False, True):
    register_aot(
        _fp4_kv_attention_kernel,
        signature=_aot_signature(),
        constexprs={"D": 128, "BM": 128, "BN": 128, "TILE": KV_SCALE_TILE, "FP4": True, "FP8": _compute_fp8,
                    "HAS_CURRENT": True, "ALIGNED": True, "EVEN_LC": True, "USE_ASM": True,
                    "EMULATE": False},
        options={"num_warps": 8, "num_stages": 2},
        expect_wgmma=True,
    )
