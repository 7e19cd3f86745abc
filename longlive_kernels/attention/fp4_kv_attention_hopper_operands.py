"""Operand preparation of the Hopper FP4-KV attention kernel (``fp4_kv_attention_hopper.py``).

- The decode of packed E2M1 codes + E4M3 block scales into fp16 ``e2m1 · s · 2^-14`` (exact), two
  values per 32-bit register in the σ head_dim order (``_DECODE_ASM``, :func:`_decode_rows`).
- The in-place conversion of a TMA-loaded BF16 current-chunk tile into fp16 ``x · 2^-e`` in the
  same order (``_CONVERT_ASM``, :func:`_convert_rows`), with its per-tile power-of-two factors
  computed by :func:`current_scales` (Triton).
- :func:`sigma_permutation`: the σ order (``[0, 4, 1, 5, 2, 6, 3, 7]`` within every group of 8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .._aot import register_aot
from .kv_cache_triton import kv_tile_program


# 4 packed bytes ($4: elements 0..7 of one 16-value block, element 2i in the low nibble of byte i) →
# 4 f16x2 registers, $k = (element k, element k+4) · s, with $5 = the f16x2 pair (s, s) of the
# block's E4M3 scale. A left shift by 12-4k puts nibbles k and k+4 at bits 12-15 of the two 16-bit
# lanes; the sign stays at bit 15, EEM moves to bits 9-11: the fp16 bits of e2m1·2^-14 (code 1 →
# the subnormal 2^-15). One mul.rn.f16x2 by the scale is exact (e2m1·e4m3·2^-14 is a multiple of
# 2^-24 with at most 6 significant bits, and at most 0.17).
def _decode_asm() -> str:
    """The PTX of ``_DECODE_ASM``: output $k from nibbles k, k+4 (left shift 12, 8, 4, 0)."""
    body = []
    for k, shift in enumerate((12, 8, 4, 0)):
        src = "x" if shift else "$4"
        if shift:
            body.append(f"shl.b32 x, $4, {shift};")
        body += [f"and.b32 t, {src}, 0x70007000;", "shr.b32 t, t, 3;", f"and.b32 x, {src}, 0x80008000;",
                 "or.b32 x, x, t;", f"mul.rn.f16x2 ${k}, x, $5;"]
    return "\n{\n.reg .b32 x, t;\n" + "\n".join(body) + "\n}\n"


_DECODE_ASM = gl.constexpr(_decode_asm())

# 4 bf16x2 words ($4..$7 = elements (0,1), (2,3), (4,5), (6,7) of a group of 8) → 4 f16x2 words in
# the σ order, $k = (element k, element k+4) · $8 (a power of two; cvt.rn once, exact for values
# that land in fp16's normal range).
def _convert_asm() -> str:
    """The PTX of ``_CONVERT_ASM``: output $k from the low (k even) or high (k odd) halves of
    words ($4, $6) for k < 2, ($5, $7) otherwise."""
    body = []
    for k in range(4):
        lo, hi = ("$4", "$6") if k < 2 else ("$5", "$7")
        op = "shl.b32 {r}, {src}, 16;" if k % 2 == 0 else "and.b32 {r}, {src}, 0xFFFF0000;"
        body += [op.format(r="a", src=lo), op.format(r="b", src=hi), "mov.b32 fa, a;", "mov.b32 fb, b;",
                 "mul.rn.f32 fa, fa, $8;", "mul.rn.f32 fb, fb, $8;", f"cvt.rn.f16x2.f32 ${k}, fb, fa;"]
    return "\n{\n.reg .b32 a, b;\n.reg .f32 fa, fb;\n" + "\n".join(body) + "\n}\n"


_CONVERT_ASM = gl.constexpr(_convert_asm())


def sigma_permutation(d: int) -> torch.Tensor:
    """Original head_dim column of every column the kernel works in (σ within each group of 8)."""
    c = torch.arange(d)
    return (c & ~7) | ((c & 1) << 2) | ((c >> 1) & 3)




@gluon.jit
def _perm_cols(c):
    """Logical (σ-ordered) column → original head_dim column."""
    return (c & -8) | ((c & 1) << 2) | ((c >> 1) & 3)


@gluon.jit
def _pairs_to_f16(w, R: gl.constexpr, D: gl.constexpr, LAYOUT: gl.constexpr):
    """int32 [R, .., ..] f16x2 words → fp16 [R, D] (word p holds columns 2p, 2p+1; LLVM keeps the
    registers as they are)."""
    lo = (w & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True)
    hi = (w >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.convert_layout(gl.join(lo, hi).reshape([R, D]), LAYOUT, assert_trivial=True)


@gluon.jit
def _decode_rows(pk_smem, sc_smem, dst, R: gl.constexpr, D: gl.constexpr, PK3: gl.constexpr,
                 OUT: gl.constexpr):
    """Decode R cache rows: packed [R, D/2] uint8 + E4M3 codes [R, D/16] (shared) → fp16 σ-ordered
    ``e2m1 · s · 2^-14`` [R, D] into ``dst``."""
    NB: gl.constexpr = D // 16
    SC: gl.constexpr = gl.SliceLayout(2, PK3)
    PK2: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    packed = gl.convert_layout(pk_smem.load(PK2).reshape([R, NB, 8]), PK3, assert_trivial=True)
    codes = sc_smem.load(SC)
    s16 = codes.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.float16)  # exact
    sb = s16.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    pairs = gl.expand_dims(sb | (sb << 16), 2)
    w = gl.inline_asm_elementwise(_DECODE_ASM, "=r,=r,=r,=r,r,r,r,r,r", [packed, pairs], dtype=gl.int32,
                                  is_pure=True, pack=4)
    dst.store(_pairs_to_f16(w, R, D, OUT))


@gluon.jit
def _convert_rows(src, dst, mult, R: gl.constexpr, D: gl.constexpr, W3: gl.constexpr, OUT: gl.constexpr):
    """In place (``src`` = ``dst`` viewed as bf16): R rows of a TMA-written bf16 tile → fp16
    σ-ordered ``x · mult``. Every thread reads and writes the same 16-byte units (σ permutes within
    a unit), so no barrier is needed between the loads and the stores."""
    x = src.load(OUT)
    bits = x.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    lo, hi = gl.split(bits.reshape([R, D // 2, 2]))
    w = gl.convert_layout((lo | (hi << 16)).reshape([R, D // 8, 4]), W3, assert_trivial=True)
    m = gl.full([R, D // 8, 4], 0.0, gl.float32, layout=W3) + mult
    y = gl.inline_asm_elementwise(_CONVERT_ASM, "=r,=r,=r,=r,r,r,r,r,f,f,f,f", [w, m], dtype=gl.int32,
                                  is_pure=True, pack=4)
    dst.store(_pairs_to_f16(y, R, D, OUT))


# ---------------------------------------------------------------------------------------------
# Current-chunk tile factors (Triton): 2^(e-14) per 128-token tile of K and V, e = ⌊log2 amax⌋
# ---------------------------------------------------------------------------------------------


@triton.jit
def _current_scales_kernel(
    k_ptr,  # [B, Lc, H, D] bf16 current-chunk K
    v_ptr,  # [B, Lc, H, D] bf16 current-chunk V (same strides)
    out_ptr,  # [2, B, H, NTC] fp32 out: the value of one unit of the tile's fp16 copy
    Lc,
    H,
    B,
    NTC,
    stride_b,
    stride_t,
    stride_h,
    D: tl.constexpr,
    BR: tl.constexpr,
):
    pid_t = tl.program_id(0)
    x_ptr, b, h, kv = kv_tile_program(k_ptr, v_ptr, H, stride_b, stride_h)
    amax = 0.0
    for r0 in range(0, 128, BR):
        rows = pid_t * 128 + r0 + tl.arange(0, BR)
        offs = rows[:, None].to(tl.int64) * stride_t + tl.arange(0, D)[None, :]
        a = tl.abs(tl.load(x_ptr + offs, mask=rows[:, None] < Lc, other=0.0).to(tl.float32))
        a = tl.where(a != a, float("inf"), a)  # NaN: any finite factor; the NaN itself propagates
        amax = tl.maximum(amax, tl.max(tl.max(a, axis=1), axis=0))
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.minimum(tl.maximum(e, -112), 127)  # the factor and its inverse stay normal fp32
    g = ((e - 14 + 127) << 23).to(tl.float32, bitcast=True)
    g = tl.where(amax > 0, g, 0.0)  # an all-zero tile: factor 0, like a zero cache tile
    tl.store(out_ptr + ((kv * B + b) * H + h) * NTC + pid_t, g)


register_aot(
    _current_scales_kernel,
    signature={"k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*fp32", "Lc": "i32", "H": "i32", "B": "i32",
               "NTC": "i32", "stride_b": "i64", "stride_t": "i64", "stride_h": "i64"},
    constexprs={"D": 128, "BR": 32},
)


def current_scales(current_k: torch.Tensor, current_v: torch.Tensor) -> torch.Tensor:
    """[2, B, H, Lc/128] fp32 ``2^(⌊log2 amax⌋ - 14)`` of every 128-token tile of the current chunk's
    K and V (the kernel stores ``x / factor`` in fp16: max magnitude in [2^14, 2^15)); 0 for an
    all-zero tile."""
    if current_k.stride() != current_v.stride():  # the kernel reads both with K's strides
        current_k, current_v = current_k.contiguous(), current_v.contiguous()
    b, lc, h, d = current_k.shape
    ntc = triton.cdiv(lc, 128)
    out = torch.empty((2, b, h, ntc), dtype=torch.float32, device=current_k.device)
    _current_scales_kernel[(ntc, b * h, 2)](
        current_k, current_v, out, lc, h, b, ntc, current_k.stride(0), current_k.stride(1), current_k.stride(2),
        D=d, BR=32, num_warps=4,
    )
    return out
