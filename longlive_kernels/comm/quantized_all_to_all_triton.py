"""Triton kernels of the quantized Ulysses all-to-all (``quantized_all_to_all.py``) and their AOT
specialisations: the amax pass (atomic max of the fp32 bits), quantize + pack of every row into the
chunk of its destination rank (NVFP4 or per-row FP8, wire format ``comm/reference.py``) and the
unpack of the received chunks into the gathered layout (codes + scales, or dequantized; with NVFP4
delayed scaling the unpack also observes the chunks' amax for the next call, ``_observe``).
Launchers: ``quantized_all_to_all_ops.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._aot import register_aot
from ..fp4.nvfp4_triton import (
    e2m1_decode,
    e4m3_rne,
    pack_nibbles,
    unpack_nibbles,
)
from ..fp4.quantize import _quantize_blocks

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _row_coords(r, S, H, Sc, Hc):
    """Row ``r`` of a [B, S, H] row grid → (b, s, h, peer rank j, row inside the [B, Sc, Hc] chunk
    exchanged with j). Exactly one of Sc < S (seq split) or Hc < H (head split) holds."""
    h = r % H
    s = (r // H) % S
    b = r // (H * S)
    j = s // Sc + h // Hc
    crow = ((b * Sc + s % Sc) * Hc + h % Hc).to(tl.int64)
    return b, s, h, j, crow


@triton.jit
def _e4m3_to_f32(code):
    """uint8 E4M3 codes → fp32 through the hardware conversion (sm_89+: cvt.f16x2.e4m3x2), the
    same values as ``e4m3_decode`` at a fraction of its integer work; 0x7F/0xFF → NaN made
    explicit (Triton's CPU interpreter decodes them as ±480)."""
    v = code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    return tl.where((code & 0x7F) == 0x7F, float("nan"), v)


@triton.jit
def _amax_kernel(
    x_ptr,  # [B, S, H, D] float, last dim contiguous
    amax_ptr,  # [1] int32: fp32 bits of max|x| (NaN → +Inf), pre-zeroed, atomic max
    rows,
    S,
    H,
    D,
    stride_b,
    stride_s,
    stride_h,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    # a grid of a few programs per SM striding over the row tiles: one atomic per program (an
    # atomic per tile, thousands on one word, serialized at the L2)
    c = tl.arange(0, BD)
    m = tl.zeros((BR, BD), dtype=tl.float32)
    for tile in range(tl.program_id(0), tl.cdiv(rows, BR), tl.num_programs(0)):
        r = tile * BR + tl.arange(0, BR)  # int32: rows < 2^31, checked by the launcher
        h = r % H
        s = (r // H) % S
        b = r // (H * S)
        mask = (r < rows)[:, None] & (c < D)[None, :]
        src = x_ptr + (b * stride_b + s * stride_s + h * stride_h)[:, None] + c[None, :]
        a = tl.abs(tl.load(src, mask=mask, other=0.0).to(tl.float32))
        m = tl.maximum(m, tl.where(a != a, float("inf"), a))
    tl.atomic_max(amax_ptr, tl.max(tl.max(m, axis=1), axis=0).to(tl.int32, bitcast=True))


@triton.jit
def _pack_kernel(
    x_ptr,  # [B, S, H, D] float, last dim contiguous
    buf_ptr,  # [P, chunk_bytes] uint8 out: the wire buffer
    buf32_ptr,  # the same buffer as int32 words [P, chunk_bytes/4] (header, FP8 row scales)
    gs_ptr,  # [1] fp32 NVFP4 decode scale (unused for FP8)
    rows,
    S,
    H,
    Sc,
    Hc,
    P,
    stride_b,
    stride_s,
    stride_h,
    chunk_bytes,
    data_off,
    scale_off,
    hdr_word,
    D: tl.constexpr,  # constexpr: row offsets (crow · D/2) then carry their alignment, so accesses vectorize
    FP8: tl.constexpr,
    TARGET: tl.constexpr,
    FOUR_OVER_SIX: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid * BR + tl.arange(0, BR)  # int32 (rows < 2^31, checked by the launcher): cheap div/mod
    rmask = r < rows
    b, s, h, j, crow = _row_coords(r, S, H, Sc, Hc)
    c = tl.arange(0, BD)
    mask = rmask[:, None] & (c < D)[None, :]
    src = x_ptr + (b * stride_b + s * stride_s + h * stride_h)[:, None] + c[None, :]
    x = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    chunk = j * chunk_bytes
    if FP8:
        a = tl.abs(x)
        a = tl.where(a != a, float("inf"), a)
        amax = tl.max(a, axis=1)  # [BR]
        scale = tl.math.div_rn(amax, 448.0)
        ok = (scale > 0.0) & (scale != float("inf"))
        v = tl.math.div_rn(x, tl.where(ok, scale, 1.0)[:, None])
        _, mag = e4m3_rne(tl.minimum(tl.abs(v), 448.0))
        code = mag | (((v.to(tl.int32, bitcast=True) >> 31) & 1) << 7)
        code = tl.where(ok[:, None], code, 0)
        scale = tl.where(amax == float("inf"), float("nan"), scale)
        tl.store(buf_ptr + (chunk + data_off + crow * D)[:, None] + c[None, :], code.to(tl.uint8), mask=mask)
        word = j * (chunk_bytes // 4) + scale_off // 4 + crow
        tl.store(buf32_ptr + word, scale.to(tl.int32, bitcast=True), mask=rmask)
    else:
        NB: tl.constexpr = BD // 16
        gs = tl.load(gs_ptr)
        xb = tl.reshape(x, (BR, NB, 16))
        a = tl.abs(xb)
        a = tl.where(a != a, float("inf"), a)
        bamax = tl.max(a, axis=2)  # [BR, NB]
        gs_b = tl.zeros_like(bamax) + gs
        poison = (bamax == float("inf")) | (gs_b != gs_b) | (tl.abs(gs_b) == float("inf"))
        zero = bamax == 0.0
        codes, scode = _quantize_blocks(xb, bamax, gs, xb, poison, zero, TARGET, FOUR_OVER_SIX, False, BR, NB,
                                        False)
        packed = pack_nibbles(tl.reshape(codes, (BR, BD)), BR, BD)
        c2 = tl.arange(0, BD // 2)
        dmask = rmask[:, None] & (c2 < D // 2)[None, :]
        tl.store(buf_ptr + (chunk + data_off + crow * (D // 2))[:, None] + c2[None, :], packed, mask=dmask)
        cs = tl.arange(0, NB)
        smask = rmask[:, None] & (cs < D // 16)[None, :]
        tl.store(buf_ptr + (chunk + scale_off + crow * (D // 16))[:, None] + cs[None, :], scode.to(tl.uint8),
                 mask=smask)
        if pid == 0:
            for jj in range(P):
                tl.store(buf32_ptr + jj * (chunk_bytes // 4) + hdr_word, gs.to(tl.int32, bitcast=True))


@triton.jit
def _observe(scode, smask, gs, rmask, buf32_ptr, send32_ptr, state_ptr, out_gs_ptr, chunk_bytes, hdr_word, amax_word,
             state_index, P, margin, denominator):
    """Delayed scaling inside the unpack: (1) this program's observed amax, 6 · max(E4M3 block scale
    · source decode scale) over its rows, raised into the amax word of every chunk of the next
    call's wire buffer (atomic max of non-negative fp32 bits); (2) program 0 takes the group amax
    the P sources reported in this call's headers (each observed in its own previous call) and, when
    it is positive, sets the delayed decode scale to amax · margin / denominator; it also writes out
    the decode scale this call's chunks carry."""
    sf = tl.where(smask & (scode != 0x7F), _e4m3_to_f32(scode), 0.0)
    est = tl.max(tl.max(sf, axis=1) * tl.where(rmask, gs, 0.0), axis=0) * 6.0
    words = chunk_bytes // 4
    for jj in range(P):
        tl.atomic_max(send32_ptr + jj * words + amax_word, est.to(tl.int32, bitcast=True), sem="relaxed")
    if tl.program_id(0) == 0:
        g = 0.0
        for jj in range(P):
            g = tl.maximum(g, tl.load(buf32_ptr + jj * words + amax_word).to(tl.float32, bitcast=True))
        old = tl.load(state_ptr + state_index)
        tl.store(state_ptr + state_index, tl.where(g > 0.0, tl.math.div_rn(g * margin, denominator), old))
        tl.store(out_gs_ptr, tl.load(buf32_ptr + hdr_word).to(tl.float32, bitcast=True))


@triton.jit
def _unpack_kernel(
    buf_ptr,  # [P, chunk_bytes] uint8: the received wire buffer (chunk j from rank j)
    buf32_ptr,  # the same buffer as int32 words
    out_ptr,  # DEQUANT: [B, So, Ho, D] float; else NVFP4 data [B, So, Ho, D/2] / FP8 codes [.., D] uint8
    out_scale_ptr,  # NVFP4 scales [B, So, Ho, D/16] uint8 / FP8 scales [B, So, Ho, 1] int32 (not DEQUANT)
    send32_ptr,  # OBSERVE: the next call's wire buffer as int32 words (its amax words pre-zeroed)
    state_ptr,  # OBSERVE: [n] fp32 delayed decode scales; entry state_index is updated
    out_gs_ptr,  # OBSERVE: [1] fp32 out: the decode scale these chunks were quantized with
    rows,
    So,
    Ho,
    Sc,
    Hc,
    ostride_b,
    ostride_s,
    ostride_h,
    sstride_b,
    sstride_s,
    sstride_h,
    chunk_bytes,
    data_off,
    scale_off,
    hdr_word,
    amax_word,
    state_index,
    P,
    margin,
    denominator,
    D: tl.constexpr,
    FP8: tl.constexpr,
    DEQUANT: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
    OBSERVE: tl.constexpr = False,  # NVFP4 delayed scaling (``reference.observed_amax``)
):
    r = tl.program_id(0) * BR + tl.arange(0, BR)  # int32, as in _pack_kernel
    rmask = r < rows
    b, s, h, j, crow = _row_coords(r, So, Ho, Sc, Hc)
    chunk = j * chunk_bytes
    dst = b * ostride_b + s * ostride_s + h * ostride_h
    sdst = b * sstride_b + s * sstride_s + h * sstride_h
    if FP8:
        c = tl.arange(0, BD)
        mask = rmask[:, None] & (c < D)[None, :]
        codes = tl.load(buf_ptr + (chunk + data_off + crow * D)[:, None] + c[None, :], mask=mask, other=0)
        sbits = tl.load(buf32_ptr + j * (chunk_bytes // 4) + scale_off // 4 + crow, mask=rmask, other=0)
        if DEQUANT:
            val = _e4m3_to_f32(codes) * sbits.to(tl.float32, bitcast=True)[:, None]
            tl.store(out_ptr + dst[:, None] + c[None, :], val.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + dst[:, None] + c[None, :], codes, mask=mask)
            tl.store(out_scale_ptr + sdst, sbits, mask=rmask)
    else:
        NB: tl.constexpr = BD // 16
        c2 = tl.arange(0, BD // 2)
        dmask = rmask[:, None] & (c2 < D // 2)[None, :]
        packed = tl.load(buf_ptr + (chunk + data_off + crow * (D // 2))[:, None] + c2[None, :], mask=dmask,
                         other=0)
        cs = tl.arange(0, NB)
        smask = rmask[:, None] & (cs < D // 16)[None, :]
        scode = tl.load(buf_ptr + (chunk + scale_off + crow * (D // 16))[:, None] + cs[None, :], mask=smask,
                        other=0)
        gs = 0.0
        if DEQUANT or OBSERVE:
            gs = tl.load(buf32_ptr + j * (chunk_bytes // 4) + hdr_word, mask=rmask, other=0)
            gs = gs.to(tl.float32, bitcast=True)
        if OBSERVE:
            _observe(scode, smask, gs, rmask, buf32_ptr, send32_ptr, state_ptr, out_gs_ptr, chunk_bytes, hdr_word,
                     amax_word, state_index, P, margin, denominator)
        if DEQUANT:
            vals = tl.reshape(e2m1_decode(unpack_nibbles(packed, BR, BD // 2)), (BR, NB, 16))
            x = (vals * _e4m3_to_f32(scode)[:, :, None]) * gs[:, None, None]
            c = tl.arange(0, BD)
            mask = rmask[:, None] & (c < D)[None, :]
            x = tl.reshape(x, (BR, BD)).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + dst[:, None] + c[None, :], x, mask=mask)
        else:
            tl.store(out_ptr + dst[:, None] + c2[None, :], packed, mask=dmask)
            tl.store(out_scale_ptr + sdst[:, None] + cs[None, :], scode, mask=smask)


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles these for sm_90a)
# ---------------------------------------------------------------------------------------------

register_aot(
    _amax_kernel,
    signature={"x_ptr": "*bf16", "amax_ptr": "*i32", "rows": "i32", "S": "i32", "H": "i32", "D": "i32",
               "stride_b": "i64", "stride_s": "i64", "stride_h": "i64"},
    constexprs={"BR": 32, "BD": 128},
)
for _fp8, _four6 in [(False, False), (False, True), (True, False)]:
    register_aot(
        _pack_kernel,
        signature={"x_ptr": "*bf16", "buf_ptr": "*u8", "buf32_ptr": "*i32", "gs_ptr": "*fp32", "rows": "i32",
                   "S": "i32", "H": "i32", "Sc": "i32", "Hc": "i32", "P": "i32",
                   "stride_b": "i64", "stride_s": "i64", "stride_h": "i64", "chunk_bytes": "i64",
                   "data_off": "i64", "scale_off": "i64", "hdr_word": "i32"},
        constexprs={"D": 128, "FP8": _fp8, "TARGET": 6.0, "FOUR_OVER_SIX": _four6, "BR": 16 if _four6 else 32,
                    "BD": 128},
        options={"enable_fp_fusion": False},
    )
_UNPACK_SIG = {
    "buf_ptr": "*u8", "buf32_ptr": "*i32", "out_ptr": "*bf16", "out_scale_ptr": "*u8", "send32_ptr": "*i32",
    "state_ptr": "*fp32", "out_gs_ptr": "*fp32", "rows": "i32", "So": "i32", "Ho": "i32", "Sc": "i32", "Hc": "i32",
    "ostride_b": "i64", "ostride_s": "i64", "ostride_h": "i64", "sstride_b": "i64", "sstride_s": "i64",
    "sstride_h": "i64", "chunk_bytes": "i64", "data_off": "i64", "scale_off": "i64", "hdr_word": "i32",
    "amax_word": "i32", "state_index": "i32", "P": "i32", "margin": "fp32", "denominator": "fp32",
}
for _fp8, _deq, _odt in [(False, True, "*bf16"), (False, False, "*u8"), (True, True, "*bf16"),
                         (True, False, "*u8")]:
    register_aot(
        _unpack_kernel,
        signature=_UNPACK_SIG | {"out_ptr": _odt, "out_scale_ptr": "*i32" if _fp8 else "*u8"},
        constexprs={"D": 128, "FP8": _fp8, "DEQUANT": _deq, "BR": 32, "BD": 128, "OBSERVE": False},
        options={"enable_fp_fusion": False},
    )
for _deq, _odt in [(True, "*bf16"), (False, "*u8")]:  # NVFP4 with delayed scaling
    register_aot(
        _unpack_kernel,
        signature=_UNPACK_SIG | {"out_ptr": _odt, "out_scale_ptr": "*u8"},
        constexprs={"D": 128, "FP8": False, "DEQUANT": _deq, "BR": 32, "BD": 128, "OBSERVE": True},
        options={"enable_fp_fusion": False},
    )
