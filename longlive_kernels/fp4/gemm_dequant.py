"""Triton device functions that turn NVFP4 tiles into GEMM operands (shared by the GEMM kernels).

Every decoded operand value is ``e2m1 · s_block · 2^-8`` — exact in bf16 and fp16 (a 2-bit times a
4-bit significand; magnitudes in [2^-18, 10.5]), so W4A4/W4A16 GEMMs on BF16/FP16 tensor cores with
FP32 accumulation reproduce NVFP4 semantics up to summation order. The factor ``2^8`` (per NVFP4
operand) and the FP32 tensor scales are applied once in the GEMM epilogue (``OPERAND_EXP``).

Two implementations with identical results:

- portable (``FAST=False``): fp32 arithmetic with ``e2m1_decode`` / ``e4m3_decode``; runs in the
  CPU interpreter (tests);
- fast (``FAST=True``, GPU only): one inline-PTX routine per 4 packed bytes. It places each E2M1
  code in a 16-bit lane as ``sign<<15 | mag<<6`` (bf16) or ``sign<<15 | mag<<9`` (fp16) — the value
  ``e2m1 · 2^-126`` resp. ``e2m1 · 2^-14`` (E2M1 subnormal 0.5 becomes a bf16/fp16 subnormal, which
  the packed multiply handles exactly) — then multiplies each bf16x2/f16x2 pair by the block scale
  pre-multiplied by ``2^118`` resp. ``2^6`` (``nvfp4-hopper.md`` §1.9, the Marlin-style bit trick).
  About 23 instructions per 8 elements, half of them on the FMA pipe (IMAD.SHL, HMUL2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .nvfp4_triton import e2m1_decode, e4m3_decode, unpack_nibbles

# log2 of the factor every decoded NVFP4 operand value is scaled down by (undone in the epilogue).
OPERAND_EXP = 8
OPERAND_SCALE = tl.constexpr(2.0**OPERAND_EXP)  # the same, for kernels

# bf16 lane from a clean nibble X (bits 0-3 of each 16-bit lane): X · 0x1040 = X<<6 | X<<12 (no
# overlap, no carry into the next lane); mask 0x81C0 keeps bits 6-8 (magnitude) and 15 (sign).
_ASM_BF16 = tl.constexpr("""
{
.reg .b32 l, h, x0, x1, y0, y1;
and.b32 l, $4, 0x0F0F0F0F;
shr.u32 h, $4, 4;
and.b32 h, h, 0x0F0F0F0F;
prmt.b32 x0, l, 0, 0x4140;
prmt.b32 x1, l, 0, 0x4342;
prmt.b32 y0, h, 0, 0x4140;
prmt.b32 y1, h, 0, 0x4342;
mul.lo.u32 x0, x0, 0x1040; and.b32 x0, x0, 0x81C081C0;
mul.lo.u32 x1, x1, 0x1040; and.b32 x1, x1, 0x81C081C0;
mul.lo.u32 y0, y0, 0x1040; and.b32 y0, y0, 0x81C081C0;
mul.lo.u32 y1, y1, 0x1040; and.b32 y1, y1, 0x81C081C0;
mul.rn.bf16x2 $0, x0, $5;
mul.rn.bf16x2 $1, x1, $6;
mul.rn.bf16x2 $2, y0, $5;
mul.rn.bf16x2 $3, y1, $6;
}
""")

# fp16 lane: u = X<<9 puts the magnitude at bits 9-11 and the sign at bit 12; adding 7·(sign bit)
# moves the sign to bit 15 (u + 7·2^12·s = 2^15·s + rest).
_ASM_FP16 = tl.constexpr("""
{
.reg .b32 l, h, x0, x1, y0, y1, s;
and.b32 l, $4, 0x0F0F0F0F;
shr.u32 h, $4, 4;
and.b32 h, h, 0x0F0F0F0F;
prmt.b32 x0, l, 0, 0x4140;
prmt.b32 x1, l, 0, 0x4342;
prmt.b32 y0, h, 0, 0x4140;
prmt.b32 y1, h, 0, 0x4342;
shl.b32 x0, x0, 9; and.b32 s, x0, 0x10001000; mad.lo.u32 x0, s, 7, x0;
shl.b32 x1, x1, 9; and.b32 s, x1, 0x10001000; mad.lo.u32 x1, s, 7, x1;
shl.b32 y0, y0, 9; and.b32 s, y0, 0x10001000; mad.lo.u32 y0, s, 7, y0;
shl.b32 y1, y1, 9; and.b32 s, y1, 0x10001000; mad.lo.u32 y1, s, 7, y1;
mul.rn.f16x2 $0, x0, $5;
mul.rn.f16x2 $1, x1, $6;
mul.rn.f16x2 $2, y0, $5;
mul.rn.f16x2 $3, y1, $6;
}
""")


@triton.jit
def e4m3_code_to_f32(code, FAST: tl.constexpr):
    """uint8 E4M3 codes → fp32 values (0x7F → NaN). FAST uses the hardware conversion."""
    if FAST:
        return code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        return e4m3_decode(code.to(tl.int32))


@triton.jit
def dequant_nvfp4_tile(
    packed,  # [R, BK/2] uint8, element 2i in the low nibble of byte i
    scode,  # [R, BK/16] uint8 E4M3 block-scale codes
    R: tl.constexpr,
    BK: tl.constexpr,
    OUT_DTYPE: tl.constexpr,  # tl.bfloat16 or tl.float16
    FAST: tl.constexpr,
):
    """Decode an NVFP4 tile to ``e2m1 · s_block · 2^-8`` in OUT_DTYPE, shape [R, BK] (exact)."""
    NB: tl.constexpr = BK // 16
    s = e4m3_code_to_f32(scode, FAST)  # [R, NB]
    if FAST:
        if OUT_DTYPE == tl.bfloat16:
            sf = (s * 3.3230699894622896e35).to(tl.bfloat16)  # s · 2^118 (exact)
        else:
            sf = (s * 64.0).to(tl.float16)  # s · 2^6 (exact)
        sb = tl.reshape(tl.broadcast_to(sf[:, :, None], (R, NB, 8)), (R, BK // 2))
        if OUT_DTYPE == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(
                asm=_ASM_BF16, constraints="=r,=r,=r,=r,r,r,r", args=[packed, sb],
                dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4,
            )
        else:
            lo, hi = tl.inline_asm_elementwise(
                asm=_ASM_FP16, constraints="=r,=r,=r,=r,r,r,r", args=[packed, sb],
                dtype=(tl.float16, tl.float16), is_pure=True, pack=4,
            )
        return tl.reshape(tl.join(lo, hi), (R, BK))
    else:
        v = e2m1_decode(unpack_nibbles(packed, R, BK // 2))  # [R, BK] fp32
        v = tl.reshape(v, (R, NB, 16)) * (s * 0.00390625)[:, :, None]  # exact: 2^-8 · s · e2m1
        return tl.reshape(v, (R, BK)).to(OUT_DTYPE)
