"""Triton device functions for NVFP4, shared by every kernel that encodes or decodes it
(quantize, dequantize, the FP4 KV cache, the quantized all-to-all, the GEMMs).

They reproduce ``fp4/reference.py`` bit for bit, on the GPU and in the CPU interpreter: the E4M3
and E2M1 roundings are done with exact fp32 arithmetic and integer bit manipulation instead of
hardware casts (the interpreter's fp8 casts are not faithful, and sm_90 has no E2M1 cvt).
Kernels that call them must be launched with ``enable_fp_fusion=False`` so that no multiply-add
is contracted into an FMA (the reference rounds each operation).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def e4m3_rne(s):
    """RNE of fp32 ``s`` in [0, 448] to E4M3 (subnormals kept). Returns (fp32 value, int32 code)."""
    bits = s.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6)  # subnormals share the quantum 2^-9 of the smallest normal binade
    quantum = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_quantum = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)
    m = s * inv_quantum  # exact (power-of-two scaling), 0 <= m <= 16
    m = (m + 8388608.0) - 8388608.0  # round half to even to an integer
    v = m * quantum
    vb = v.to(tl.int32, bitcast=True)
    normal_code = (((vb >> 23) & 0xFF) - 127 + 7) * 8 + ((vb >> 20) & 7)
    code = tl.where(v < 0.015625, m.to(tl.int32), normal_code)
    return v, code


@triton.jit
def e4m3_decode(code):
    """int32 E4M3 code (0..255) → fp32 value (0x7F/0xFF decode to NaN)."""
    c = code & 0x7F
    exp = c >> 3
    mant = (c & 7).to(tl.float32)
    sub = mant * 0.001953125
    normal = ((exp + 120) << 23).to(tl.float32, bitcast=True) * (1.0 + mant * 0.125)
    v = tl.where(exp == 0, sub, normal)
    v = tl.where(c == 0x7F, float("nan"), v).to(tl.int32, bitcast=True)
    return (v | ((code & 0x80) << 24)).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_rne_code(v):
    """fp32 → E2M1 code (int32 0..15), round to nearest, ties to even, saturating at ±6.

    Exact: on [0,2), [2,4), [4,6] the grid step (0.5, 1, 2) is the fp32 ulp of 2^22, 2^23, 2^24, so
    adding that magic number rounds |v| to the grid (RNE) and leaves (code − base) in the low
    mantissa bits; one integer subtraction of (magic bits − base) yields the code."""
    a = tl.minimum(tl.abs(v), 6.0)
    lt2 = a < 2.0
    lt4 = a < 4.0
    magic = tl.where(lt2, 4194304.0, tl.where(lt4, 8388608.0, 16777216.0))
    offset = tl.where(lt2, 0x4A800000, tl.where(lt4, 0x4B000000 - 2, 0x4B800000 - 4))
    code = (a + magic).to(tl.int32, bitcast=True) - offset
    sign = (v.to(tl.int32, bitcast=True) >> 28) & 8
    return code | sign


@triton.jit
def e2m1_stochastic_code(v, u):
    """fp32 → E2M1 code with stochastic rounding: up iff ``u < (|v| − lo)/(hi − lo)``."""
    a = tl.abs(v)
    lo_code = (
        (a >= 0.5).to(tl.int32)
        + (a >= 1.0).to(tl.int32)
        + (a >= 1.5).to(tl.int32)
        + (a >= 2.0).to(tl.int32)
        + (a >= 3.0).to(tl.int32)
        + (a >= 4.0).to(tl.int32)
        + (a >= 6.0).to(tl.int32)
    )
    lo = e2m1_magnitude(lo_code)
    inv_step = tl.where(lo_code < 4, 2.0, tl.where(lo_code < 6, 1.0, 0.5))
    p = (a - lo) * inv_step
    up = (u < p) & (lo_code < 7)
    sign = (v.to(tl.int32, bitcast=True) >> 31) & 1
    return (lo_code + up.to(tl.int32)) | (sign << 3)


@triton.jit
def e2m1_magnitude(mag_code):
    """E2M1 magnitude code 0..7 → fp32 value {0, .5, 1, 1.5, 2, 3, 4, 6}."""
    c = mag_code.to(tl.float32)
    return tl.where(mag_code < 4, c * 0.5, tl.where(mag_code < 6, c - 2.0, (c - 5.0) * 2.0 + 2.0))


@triton.jit
def e2m1_decode(code):
    """E2M1 code 0..15 (int32) → signed fp32 value (code 8 = −0).

    Built from the bits, no int→float conversion: a normal magnitude code m = e1 e0 m0 (m ≥ 2) is
    2^(e−1)·(1 + m0/2), i.e. fp32 bits (m << 22) + (126 << 23); the subnormals 0 and 0.5 are m · 0.5's
    bits, m · 0x3F000000."""
    m = code & 7
    bits = tl.where(m >= 2, (m << 22) + (126 << 23), m * 0x3F000000)
    return (bits | ((code & 8) << 28)).to(tl.float32, bitcast=True)  # sign bit, so code 8 is −0.0


@triton.jit
def philox_uniform16(seed, groups, R: tl.constexpr, G: tl.constexpr):
    """[R, G·8] fp32 uniforms in [0, 1) with 16 random bits for the 8 elements of each group counter in
    ``groups`` [R, G] (``reference.uniform16_from_philox``): one ``tl.randint4x`` per group, element j
    takes half j % 2 (low first) of word j // 2."""
    w0, w1, w2, w3 = tl.randint4x(seed, groups)
    j = tl.arange(0, 8)[None, None, :]
    w = tl.where(j < 4, tl.where(j < 2, w0[:, :, None], w1[:, :, None]),
                 tl.where(j < 6, w2[:, :, None], w3[:, :, None]))
    half = (w >> ((j & 1) * 16).to(tl.uint32)) & 0xFFFF
    return tl.reshape(half.to(tl.float32) * (1.0 / 65536.0), (R, G * 8))


@triton.jit
def fwht16(x, R: tl.constexpr, NB: tl.constexpr):
    """Unnormalised Walsh–Hadamard transform of ``x`` [R, NB, 16] over its last dim, in the
    butterfly order of ``reference._fwht16``."""
    for _ in tl.static_range(4):
        pairs = tl.reshape(x, (R, NB, 8, 2))
        a, b = tl.split(pairs)
        y = tl.join(a + b, a - b)  # [R, NB, 8, 2]
        x = tl.reshape(tl.permute(y, (0, 1, 3, 2)), (R, NB, 16))
    return x


@triton.jit
def hadamard_signs(mask):
    """16-bit sign mask → fp32 [16] of ±1."""
    bit = (mask >> tl.arange(0, 16)) & 1
    return 1.0 - 2.0 * bit.to(tl.float32)


@triton.jit
def rht16(x, mask, R: tl.constexpr, NB: tl.constexpr):
    """``x · (D H16 D)/4`` on [R, NB, 16] (self-inverse)."""
    s = hadamard_signs(mask)[None, None, :]
    return fwht16(x * s, R, NB) * 0.25 * s


@triton.jit
def pairwise_sum_last(x, R: tl.constexpr, NB: tl.constexpr):
    """[R, NB, 16] → [R, NB], as the adjacent-pairs tree of ``reference._pairwise_sum``."""
    y = tl.reshape(x, (R, NB, 8, 2))
    a, b = tl.split(y)
    y = tl.reshape(a + b, (R, NB, 4, 2))
    a, b = tl.split(y)
    y = tl.reshape(a + b, (R, NB, 2, 2))
    a, b = tl.split(y)
    y = a + b  # [R, NB, 2]
    a, b = tl.split(y)
    return a + b


@triton.jit
def pairwise_sum_rows16(x, T: tl.constexpr, NB: tl.constexpr):
    """[T*16, NB] → [T, NB]: sums each group of 16 rows as an adjacent-pairs tree."""
    y = tl.permute(tl.reshape(x, (T, 8, 2, NB)), (0, 1, 3, 2))
    a, b = tl.split(y)
    y = tl.permute(tl.reshape(a + b, (T, 4, 2, NB)), (0, 1, 3, 2))
    a, b = tl.split(y)
    y = tl.permute(tl.reshape(a + b, (T, 2, 2, NB)), (0, 1, 3, 2))
    a, b = tl.split(y)
    y = tl.permute(a + b, (0, 2, 1))  # [T, NB, 2]
    a, b = tl.split(y)
    return a + b


@triton.jit
def broadcast_rows16(t, T: tl.constexpr, NB: tl.constexpr):
    """[T, NB] → [T*16, NB], each value repeated on its 16 rows."""
    return tl.reshape(tl.broadcast_to(t[:, None, :], (T, 16, NB)), (T * 16, NB))


@triton.jit
def pack_nibbles(codes, R: tl.constexpr, K: tl.constexpr):
    """int32 codes [R, K] → uint8 [R, K/2], element 2i in the low nibble."""
    lo, hi = tl.split(tl.reshape(codes, (R, K // 2, 2)))
    return (lo | (hi << 4)).to(tl.uint8)


@triton.jit
def unpack_nibbles(packed, R: tl.constexpr, K2: tl.constexpr):
    """uint8 [R, K2] → int32 codes [R, 2*K2]."""
    p = packed.to(tl.int32)
    return tl.reshape(tl.join(p & 0xF, (p >> 4) & 0xF), (R, 2 * K2))
