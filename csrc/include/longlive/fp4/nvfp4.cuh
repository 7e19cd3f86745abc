// NVFP4 device functions (no torch, no host code). Bit-exact with longlive_kernels/fp4/reference.py:
// every fp32 operation that the reference rounds is written with an _rn intrinsic so that nvcc
// cannot contract it into an FMA.
//
// Supported: E2M1 codes, E4M3 block scales (RNE, subnormals), static6/static4/four_over_six,
// RNE and Philox stochastic rounding, the 16-point RHT, 1x16 and 16x16 blocks.
// Unsupported: hardware e2m1 cvt (sm_100a only; not used so that one code path serves sm_90a).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include <type_traits>

#include "longlive/fp4/philox.cuh"

namespace longlive {
namespace fp4 {

constexpr int kBlock = 16;
constexpr float kE4M3Max = 448.0f;

enum ScaleRule : int { kStatic6 = 0, kStatic4 = 1, kFourOverSix = 2 };

__host__ __device__ inline float rule_target(int rule) { return rule == kStatic4 ? 4.0f : 6.0f; }
__host__ __device__ inline float rule_denominator(int rule) {
  return rule == kStatic6 ? 2688.0f : (rule == kStatic4 ? 1792.0f : 1536.0f);
}

// ---- element formats ---------------------------------------------------------------------------

__device__ __forceinline__ float e2m1_magnitude(int mag_code) {
  const float c = static_cast<float>(mag_code);
  return mag_code < 4 ? c * 0.5f : (mag_code < 6 ? c - 2.0f : (c - 5.0f) * 2.0f + 2.0f);
}

__device__ __forceinline__ float e2m1_decode(int code) {
  const float m = e2m1_magnitude(code & 7);
  return (code & 8) ? -m : m;
}

__device__ __forceinline__ int sign_bit(float v) { return (__float_as_uint(v) >> 31) & 1; }

// Round |v| to the E2M1 grid, ties to even, saturating at 6, in three instructions, two of them on the
// FMA pipe (the ALU pipe runs at half the issue rate on sm_90). On [0,2), [2,4), [4,6] the grid step 0.5, 1, 2
// is the fp32 ulp of the binade [2^(22+e), 2^(23+e)), e = max(floor(log2 a), 0). With
// M = max(a, 1.5) * 2^22 (exact inside the FMA, and a multiple of that ulp), s = RN(M - a) lies in
// M's binade, so r = M - s (exact) is a rounded to the grid; M / ulp is even at every tie (0.25, 0.75,
// 1.25, 1.75, 2.5, 3.5, 5), so s's ties to even are r's. Subtracting keeps s below the binade's top;
// just above a power of two s can fall one binade low, where the step is halved, but such an a rounds
// to that power of two under either step. Checked against the grid definition on the host for every
// fp32 a in [0, 7) (2026-11-22).
// The code of r: r * 2^-126 is exact and its fp32 bits 22..25 are the E2M1 code (E2M1 is fp32 with
// the exponent cut to 2 bits and the mantissa to 1; the scaling puts E2M1's 0.5 at fp32's 2^-127).
__device__ __forceinline__ float e2m1_rne_below7(float a) {  // a in [0, 7): [6, 7) rounds to 6
  const float m = fmaxf(a, 1.5f);
  const float s = __fmaf_rn(m, 4194304.0f, -a);
  return __fmaf_rn(m, 4194304.0f, -s);
}

__device__ __forceinline__ float e2m1_rne_value(float v) {
  return e2m1_rne_below7(fminf(fabsf(v), 6.0f));  // NaN -> 6 (only in dead blocks)
}

// bits(r * 2^-126) = code << 22 for a grid value r from e2m1_rne_*: inline PTX, so that no -ftz
// build flag can flush the subnormal product.
__device__ __forceinline__ uint32_t e2m1_code_bits(float r) {
  float scaled;
  asm("mul.rn.f32 %0, %1, 0f00800000;" : "=f"(scaled) : "f"(r));
  return __float_as_uint(scaled);
}

// The E2M1 codes of 8 grid values r, element i at nibble i, ORed with `signs`, in 9 integer
// multiply-adds and LOP3s on the FMA pipe. A pair (a, b) becomes p = bits_a + bits_b * 16 (code_a at
// bit 22, code_b at 26; bits_b * 2^10 vanishes mod 2^32, which keeps the multiplier from being a
// power of two that ptxas would turn into an ALU shift); pair k then moves to bits 8k.. with
// hi(p * (2^(10+8k) + 1)) for k <= 2 (p's low word, shifted, lands wholly in the high word, so the +1
// term cannot carry into it) and with lo(p * (4 + 2^10)) for k = 3.
__device__ __forceinline__ uint32_t e2m1_codes8(const float* r, uint32_t signs) {
  uint32_t pair[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    asm("mad.lo.u32 %0, %1, %2, %3;"
        : "=r"(pair[k])
        : "r"(e2m1_code_bits(r[2 * k + 1])), "r"(16u + 1024u), "r"(e2m1_code_bits(r[2 * k])));
  }
  uint32_t t[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    asm("mul.hi.u32 %0, %1, %2;" : "=r"(t[k]) : "r"(pair[k]), "r"((1u << (10 + 8 * k)) + 1u));
  }
  uint32_t out;
  asm("mad.lo.u32 %0, %1, %2, %3;" : "=r"(out) : "r"(pair[3]), "r"(4u + 1024u), "r"((t[0] | t[1]) | (t[2] | signs)));
  return out;
}

// Sign bits of 8 consecutive values at the nibble sign positions 4i+3: the sign bytes gathered with
// 6 byte permutes instead of a shift and a mask per value.
__device__ __forceinline__ uint32_t nibble_signs8(const float* x) {
  const auto b = [](float f) { return __float_as_uint(f); };
  const uint32_t even = __byte_perm(__byte_perm(b(x[0]), b(x[2]), 0x0073), __byte_perm(b(x[4]), b(x[6]), 0x0073), 0x5410);
  const uint32_t odd = __byte_perm(__byte_perm(b(x[1]), b(x[3]), 0x0073), __byte_perm(b(x[5]), b(x[7]), 0x0073), 0x5410);
  return ((even >> 4) & 0x08080808u) | (odd & 0x80808080u);
}

// Stochastic rounding: up iff u < (|v| - lo) / (hi - lo) (exact), saturating at 6.
__device__ __forceinline__ int e2m1_stochastic_code(float v, float u) {
  const float a = fabsf(v);
  const int lo_code = (a >= 0.5f) + (a >= 1.0f) + (a >= 1.5f) + (a >= 2.0f) + (a >= 3.0f) + (a >= 4.0f) + (a >= 6.0f);
  const float lo = e2m1_magnitude(lo_code);
  const float inv_step = lo_code < 4 ? 2.0f : (lo_code < 6 ? 1.0f : 0.5f);
  const float p = __fmul_rn(__fsub_rn(a, lo), inv_step);
  const int up = (u < p) && (lo_code < 7);
  return (lo_code + up) | (sign_bit(v) << 3);
}

// RNE of s in [0, 448] to E4M3 (saturating, subnormals kept); writes the decoded value.
__device__ __forceinline__ uint8_t e4m3_rne(float s, float& value) {
  const __nv_fp8_storage_t code = __nv_cvt_float_to_fp8(s, __NV_SATFINITE, __NV_E4M3);
  const __half_raw h = __nv_cvt_fp8_to_halfraw(code, __NV_E4M3);
  value = __half2float(__half(h));
  return static_cast<uint8_t>(code);
}

__device__ __forceinline__ float e4m3_decode(uint8_t code) {
  if ((code & 0x7F) == 0x7F) return __int_as_float(0x7fc00000);
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(h));
}

// ---- random Hadamard transform ----------------------------------------------------------------------

// x <- x (D H16 D) / 4, butterflies in the order of reference._fwht16.
__device__ __forceinline__ void rht16(float (&x)[kBlock], int mask) {
#pragma unroll
  for (int i = 0; i < kBlock; ++i) x[i] = ((mask >> i) & 1) ? -x[i] : x[i];
#pragma unroll
  for (int stage = 0; stage < 4; ++stage) {
    float y[kBlock];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      y[j] = __fadd_rn(x[2 * j], x[2 * j + 1]);
      y[8 + j] = __fsub_rn(x[2 * j], x[2 * j + 1]);
    }
#pragma unroll
    for (int i = 0; i < kBlock; ++i) x[i] = y[i];
  }
#pragma unroll
  for (int i = 0; i < kBlock; ++i) {
    const float q = x[i] * 0.25f;
    x[i] = ((mask >> i) & 1) ? -q : q;
  }
}

// ---- vector load / store of 16 consecutive elements ---------------------------------------------------

// 16-byte words holding one block of T.
template <typename T>
struct RawBlock {
  uint4 v[sizeof(T) * kBlock / 16];
};

template <typename T>
__device__ __forceinline__ RawBlock<T> load_raw16(const T* p) {
  RawBlock<T> r;
  const uint4* src = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < int(sizeof(r.v) / 16); ++i) r.v[i] = __ldg(src + i);
  return r;
}

template <typename T>
__device__ __forceinline__ void unpack16(const RawBlock<T>& r, float (&x)[kBlock]);

template <>
__device__ __forceinline__ void unpack16<__nv_bfloat16>(const RawBlock<__nv_bfloat16>& r, float (&x)[kBlock]) {
  const uint32_t w[8] = {r.v[0].x, r.v[0].y, r.v[0].z, r.v[0].w, r.v[1].x, r.v[1].y, r.v[1].z, r.v[1].w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {  // a bf16 is the high half of its fp32: one shift or mask each
    x[2 * i] = __uint_as_float(w[i] << 16);
    x[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
  }
}

template <>
__device__ __forceinline__ void unpack16<__half>(const RawBlock<__half>& r, float (&x)[kBlock]) {
  const uint32_t w[8] = {r.v[0].x, r.v[0].y, r.v[0].z, r.v[0].w, r.v[1].x, r.v[1].y, r.v[1].z, r.v[1].w};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}

template <>
__device__ __forceinline__ void unpack16<float>(const RawBlock<float>& r, float (&x)[kBlock]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[4 * i] = __uint_as_float(r.v[i].x);
    x[4 * i + 1] = __uint_as_float(r.v[i].y);
    x[4 * i + 2] = __uint_as_float(r.v[i].z);
    x[4 * i + 3] = __uint_as_float(r.v[i].w);
  }
}

template <typename T>
__device__ __forceinline__ void load16(const T* p, float (&x)[kBlock]) {
  unpack16<T>(load_raw16(p), x);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const float (&x)[kBlock]);

template <>
__device__ __forceinline__ void store16<__nv_bfloat16>(__nv_bfloat16* p, const float (&x)[kBlock]) {
  uint4 raw[2];
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
  uint4* v = reinterpret_cast<uint4*>(p);
  v[0] = raw[0];
  v[1] = raw[1];
}

template <>
__device__ __forceinline__ void store16<__half>(__half* p, const float (&x)[kBlock]) {
  uint4 raw[2];
  __half2* h = reinterpret_cast<__half2*>(raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
  uint4* v = reinterpret_cast<uint4*>(p);
  v[0] = raw[0];
  v[1] = raw[1];
}

template <>
__device__ __forceinline__ void store16<float>(float* p, const float (&x)[kBlock]) {
  float4* v = reinterpret_cast<float4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = make_float4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
}

// ---- block quantization ----------------------------------------------------------------------------

// max |x| over the block with NaN counted as +Inf (the reference's poison rule). max.NaN propagates a
// NaN through the tree, so one compare per block replaces a compare and select per element.
__device__ __forceinline__ float fmax_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

__device__ __forceinline__ float block_amax(const float (&x)[kBlock]) {
  float m[kBlock / 2];
#pragma unroll
  for (int i = 0; i < kBlock / 2; ++i) m[i] = fmax_nan(fabsf(x[2 * i]), fabsf(x[2 * i + 1]));
#pragma unroll
  for (int w = kBlock / 4; w >= 1; w /= 2) {
#pragma unroll
    for (int i = 0; i < w; ++i) m[i] = fmax_nan(m[2 * i], m[2 * i + 1]);
  }
  return (m[0] != m[0]) ? __int_as_float(0x7f800000) : m[0];
}

// block_amax straight from the raw words, without unpacking: with the sign bits cleared, IEEE
// values order as unsigned integers and every NaN pattern sorts above Inf, so an unsigned max (two
// 16-bit lanes per instruction for 16-bit types) gives the same max, NaN -> +Inf.
__device__ __forceinline__ float half_bits_to_float(uint32_t bits, const __nv_bfloat16*) {
  return __uint_as_float(bits << 16);
}
__device__ __forceinline__ float half_bits_to_float(uint32_t bits, const __half*) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}

template <typename T>
__device__ __forceinline__ float raw_block_amax(const RawBlock<T>& r) {
  if constexpr (sizeof(T) == 2) {
    const uint32_t w[8] = {r.v[0].x, r.v[0].y, r.v[0].z, r.v[0].w, r.v[1].x, r.v[1].y, r.v[1].z, r.v[1].w};
    uint32_t m[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = __vmaxu2(w[2 * i] & 0x7FFF7FFFu, w[2 * i + 1] & 0x7FFF7FFFu);
    const uint32_t mm = __vmaxu2(__vmaxu2(m[0], m[1]), __vmaxu2(m[2], m[3]));
    const uint32_t top = max(mm >> 16, mm & 0xFFFFu);
    constexpr uint32_t inf_bits = std::is_same<T, __half>::value ? 0x7C00u : 0x7F80u;
    return top > inf_bits ? __int_as_float(0x7f800000) : half_bits_to_float(top, static_cast<const T*>(nullptr));
  } else {
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      m = max(m, max(max(r.v[i].x & 0x7FFFFFFFu, r.v[i].y & 0x7FFFFFFFu), max(r.v[i].z & 0x7FFFFFFFu, r.v[i].w & 0x7FFFFFFFu)));
    }
    return m > 0x7F800000u ? __int_as_float(0x7f800000) : __uint_as_float(m);
  }
}

// One scale candidate of a block: E4M3 scale byte, its value, and the per-element multiplier
// r = 1 / (scale · s_global) (correctly rounded; TE's block_scale_inverse).
struct Candidate {
  uint8_t scale;
  float scale_value;
  float decode;  // scale_value * s_global
  float inv;
  bool dead;  // all codes 0 (zero or poisoned block, or a decode factor of 0)
};

// The tensor's decode scale with what every block's candidates reuse: its correctly rounded
// reciprocal, computed once per thread instead of once per division.
struct TensorScale {
  float gs;
  float rcp;  // RN(1 / gs)
  bool bad;   // gs is Inf or NaN: every block is poisoned
  bool fast;  // gs in [2^-60, 2^60]: see make_candidate
};

__device__ __forceinline__ TensorScale tensor_scale(float gs) {
  TensorScale t;
  t.gs = gs;
  t.rcp = __frcp_rn(gs);
  t.bad = !isfinite(gs);
  t.fast = gs >= 0x1p-60f && gs <= 0x1p60f;
  return t;
}

// __fdiv_rn(x, target) for the rules' targets 4 and 6 without a division: x/4 is a correctly rounded
// product; x/6 is q0 = x·RN(1/6) plus one FMA correction, checked equal to x/6 on every finite fp32
// x >= 2^-125 (exhaustive, 2026-11-21); smaller x (subnormal quotients), Inf and NaN take __fdiv_rn.
__device__ __forceinline__ float div_by_six_normal(float x) {  // finite x >= 2^-125
  constexpr float kSixth = 1.0f / 6.0f;
  const float q0 = __fmul_rn(x, kSixth);
  return __fmaf_rn(__fmaf_rn(-6.0f, q0, x), kSixth, q0);
}

__device__ __forceinline__ float div_by_target(float x, float target) {
  if (target == 4.0f) return __fmul_rn(x, 0.25f);
  if (target != 6.0f || !(x >= 0x1p-125f && x <= 3.4028234663852886e38f)) return __fdiv_rn(x, target);
  return div_by_six_normal(x);
}

// __frcp_rn(d) for d in [2^-125, 2^125]: the approximate reciprocal and one Newton step, the
// sequence __frcp_rn itself runs after its range check.
__device__ __forceinline__ float rcp_rn_normal(float d) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(d));
  return __fmaf_rn(y, -__fmaf_rn(d, y, -1.0f), y);
}

__device__ __forceinline__ Candidate finish_candidate(float s, float gs) {
  Candidate c;
  c.scale = e4m3_rne(s, c.scale_value);
  c.decode = __fmul_rn(c.scale_value, gs);
  return c;
}

// When gs and bamax lie in [2^-60, 2^60] and [2^-58, 2^58] (every block of any real tensor), the
// quotient (bamax / target) / gs is normal and is taken as Markstein's q + (y - gs q) rcp with
// q = y rcp, which equals __fdiv_rn when rcp is the correctly rounded reciprocal (checked on the
// host against exact rationals for 181k operand pairs, edge significands included, 2026-11-22).
__device__ __forceinline__ bool fast_block(const TensorScale& t, float bamax) {
  return t.fast && bamax >= 0x1p-58f && bamax <= 0x1p58f;
}

__device__ __forceinline__ Candidate make_candidate(float bamax, const TensorScale& t, float target, bool poison,
                                                    bool zero) {
  if (fast_block(t, bamax)) {  // implies !poison && !zero
    const float y = target == 4.0f ? __fmul_rn(bamax, 0.25f) : div_by_six_normal(bamax);
    const float q = __fmul_rn(y, t.rcp);
    Candidate c = finish_candidate(fminf(__fmaf_rn(__fmaf_rn(-t.gs, q, y), t.rcp, q), kE4M3Max), t.gs);
    // d = 0 (an E4M3 scale of 0) or d in [2^-69, 2^69]
    c.dead = c.decode == 0.0f;
    c.inv = c.dead ? __int_as_float(0x7f800000) : rcp_rn_normal(c.decode);
    return c;
  }
  float s = fminf(__fdiv_rn(div_by_target(bamax, target), t.gs), kE4M3Max);
  Candidate c = finish_candidate((s != s) ? 0.0f : s, t.gs);
  c.inv = __frcp_rn(c.decode);  // = __fdiv_rn(1, d) (both correctly rounded), fewer instructions
  c.dead = (c.decode == 0.0f) || poison || zero;
  c.scale = poison ? 0x7F : (zero ? 0 : c.scale);
  return c;
}

// Both Four Over Six candidates (targets 6 and 4) of a block: make_candidate twice, but a fast block
// (fast_block) converts both scales to E4M3 and back in one paired cvt each way.
__device__ __forceinline__ void four_over_six_candidate_pair(float bamax, const TensorScale& t, bool poison,
                                                             bool zero, Candidate& c6, Candidate& c4) {
  if (!fast_block(t, bamax)) {
    c6 = make_candidate(bamax, t, 6.0f, poison, zero);
    c4 = make_candidate(bamax, t, 4.0f, poison, zero);
    return;
  }
  const float y6 = div_by_six_normal(bamax), y4 = __fmul_rn(bamax, 0.25f);
  const float q6 = __fmul_rn(y6, t.rcp), q4 = __fmul_rn(y4, t.rcp);
  const float s6 = __fmaf_rn(__fmaf_rn(-t.gs, q6, y6), t.rcp, q6);
  const float s4 = __fmaf_rn(__fmaf_rn(-t.gs, q4, y4), t.rcp, q4);
  // satfinite RNE = e4m3_rne: s > 448 saturates to 448 as fminf(s, 448) would; s is finite here
  uint16_t codes;  // s6 -> low byte, s4 -> high byte
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(codes) : "f"(s4), "f"(s6));
  uint32_t halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(codes));
  const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&halves));
  c6.scale = static_cast<uint8_t>(codes & 0xFF);
  c4.scale = static_cast<uint8_t>(codes >> 8);
  c6.scale_value = v.x;
  c4.scale_value = v.y;
  c6.decode = __fmul_rn(v.x, t.gs);
  c4.decode = __fmul_rn(v.y, t.gs);
  c6.dead = c6.decode == 0.0f;
  c4.dead = c4.decode == 0.0f;
  c6.inv = c6.dead ? __int_as_float(0x7f800000) : rcp_rn_normal(c6.decode);
  c4.inv = c4.dead ? __int_as_float(0x7f800000) : rcp_rn_normal(c4.decode);
}

// Encode 16 elements with one candidate into two packed words (element 2i in the low nibble) and the
// signed E2M1 values of the codes (`xq`, before a dead candidate's codes are zeroed), for Four Over Six.
template <bool kStochastic>
__device__ __forceinline__ void encode16(const float (&x)[kBlock], const Candidate& c, const float (&u)[kBlock],
                                         uint32_t (&packed)[2], float (&xq)[kBlock]) {
#pragma unroll
  for (int w = 0; w < 2; ++w) {
    uint32_t word = 0;
    float r[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float v = __fmul_rn(x[8 * w + i], c.inv);
      if (kStochastic) {
        const int code = e2m1_stochastic_code(v, u[8 * w + i]);
        word |= static_cast<uint32_t>(code) << (4 * i);
        xq[8 * w + i] = e2m1_decode(code);
      } else {
        r[i] = e2m1_rne_value(v);
        xq[8 * w + i] = __uint_as_float(__float_as_uint(r[i]) | (__float_as_uint(v) & 0x80000000u));
      }
    }
    // A live candidate has inv > 0, so sign(v) == sign(x); a dead one stores 0.
    if (!kStochastic) word = e2m1_codes8(r, nibble_signs8(&x[8 * w]));
    packed[w] = c.dead ? 0u : word;
  }
}

// Sum of 16 values as the pairwise tree of reference._pairwise_sum.
// The stages are written out: a `width /= 2` loop was left rolled, in local memory, by nvcc 13.0.
template <int kWidth>
__device__ __forceinline__ void pairwise_stage(float (&e)[kBlock]) {
#pragma unroll
  for (int i = 0; i < kWidth; ++i) e[i] = __fadd_rn(e[2 * i], e[2 * i + 1]);
}

__device__ __forceinline__ float pairwise_sum16(float (&e)[kBlock]) {
  pairwise_stage<8>(e);
  pairwise_stage<4>(e);
  pairwise_stage<2>(e);
  pairwise_stage<1>(e);
  return e[0];
}

// Four Over Six's error of one candidate, in the scaled domain (reference._four_over_six_error):
// e = sum over the block of (|x * inv| - |e2m1|)^2 as the pairwise tree of reference._pairwise_sum;
// 16x16 tiles sum their 16 rows' e the same way; the compared error is then (e * decode) * decode,
// +Inf for a dead candidate. `xq` from encode16.
__device__ __forceinline__ float scaled_error_sum(const float (&x)[kBlock], const float (&xq)[kBlock],
                                                  const Candidate& c) {
  float t[kBlock];
#pragma unroll
  for (int i = 0; i < kBlock; ++i) {
    const float d = __fsub_rn(fabsf(__fmul_rn(x[i], c.inv)), fabsf(xq[i]));
    t[i] = __fmul_rn(d, d);
  }
  return pairwise_sum16(t);
}

__device__ __forceinline__ float four_over_six_error(float e, const Candidate& c) {
  return c.dead ? __int_as_float(0x7f800000) : __fmul_rn(__fmul_rn(e, c.decode), c.decode);
}

// Four Over Six's fast path: when both scaled blocks stay below 7 -- every live block whose scale is
// neither saturated nor an E4M3 subnormal -- the rounding needs no clamp ([6, 7) rounds to 6 with or
// without it) and works on |x| (|x * inv| = |x| * inv). `bamax` bounds the block's magnitudes (the
// tile's amax for 16x16 blocks); false for dead candidates (inv Inf or NaN). bamax >= 0 scales
// monotonically, so one product with the larger inv (NaN kept) decides for both candidates.
__device__ __forceinline__ bool four_over_six_fast(float bamax, const Candidate& c6, const Candidate& c4) {
  return __fmul_rn(bamax, fmax_nan(c6.inv, c4.inv)) < 7.0f;
}

// The fast path's grid values of both candidates and their error sums (bit-exact with encode16 +
// scaled_error_sum).
__device__ __forceinline__ void four_over_six_grid(const float (&x)[kBlock], const Candidate& c6,
                                                   const Candidate& c4, float (&r6)[kBlock], float (&r4)[kBlock],
                                                   float& e6, float& e4) {
  float t6[kBlock], t4[kBlock];
#pragma unroll
  for (int i = 0; i < kBlock; ++i) {
    const float ax = fabsf(x[i]);
    const float a6 = __fmul_rn(ax, c6.inv), a4 = __fmul_rn(ax, c4.inv);
    r6[i] = e2m1_rne_below7(a6);
    r4[i] = e2m1_rne_below7(a4);
    const float d6 = __fsub_rn(a6, r6[i]), d4 = __fsub_rn(a4, r4[i]);
    t6[i] = __fmul_rn(d6, d6);
    t4[i] = __fmul_rn(d4, d4);
  }
  e6 = pairwise_sum16(t6);
  e4 = pairwise_sum16(t4);
}

// Both Four Over Six candidates of one RNE block (targets 6 and 4): packed codes and the error sums
// of scaled_error_sum, for 16x16 tiles, whose errors are summed over the tile before the choice.
__device__ __forceinline__ void four_over_six_candidates(const float (&x)[kBlock], float bamax,
                                                         const Candidate& c6, const Candidate& c4,
                                                         uint32_t (&w6)[2], uint32_t (&w4)[2], float& e6,
                                                         float& e4) {
  if (four_over_six_fast(bamax, c6, c4)) {
    float r6[kBlock], r4[kBlock];
    four_over_six_grid(x, c6, c4, r6, r4, e6, e4);
#pragma unroll
    for (int w = 0; w < 2; ++w) {
      const uint32_t signs = nibble_signs8(&x[8 * w]);
      w6[w] = e2m1_codes8(&r6[8 * w], signs);
      w4[w] = e2m1_codes8(&r4[8 * w], signs);
    }
    return;
  }
  const float u[kBlock] = {};  // RNE: encode16<false> never reads u
  float xq6[kBlock], xq4[kBlock];
  encode16<false>(x, c6, u, w6, xq6);
  encode16<false>(x, c4, u, w4, xq4);
  e6 = scaled_error_sum(x, xq6, c6);
  e4 = scaled_error_sum(x, xq4, c4);
}

// Four Over Six of one 1x16 RNE block: the packed codes of the candidate with the smaller error
// (ties -> 6); returns whether that is the 4 candidate. The fast path encodes only the kept one.
__device__ __forceinline__ bool four_over_six_block(const float (&x)[kBlock], float bamax, const Candidate& c6,
                                                    const Candidate& c4, uint32_t (&packed)[2]) {
  if (four_over_six_fast(bamax, c6, c4)) {
    float r6[kBlock], r4[kBlock], e6, e4;
    four_over_six_grid(x, c6, c4, r6, r4, e6, e4);
    const bool use4 = four_over_six_error(e4, c4) < four_over_six_error(e6, c6);
#pragma unroll
    for (int i = 0; i < kBlock; ++i) r6[i] = use4 ? r4[i] : r6[i];
#pragma unroll
    for (int w = 0; w < 2; ++w) packed[w] = e2m1_codes8(&r6[8 * w], nibble_signs8(&x[8 * w]));
    return use4;
  }
  uint32_t w4[2];
  float e6, e4;
  four_over_six_candidates(x, bamax, c6, c4, packed, w4, e6, e4);
  const bool use4 = four_over_six_error(e4, c4) < four_over_six_error(e6, c6);
  if (use4) {
    packed[0] = w4[0];
    packed[1] = w4[1];
  }
  return use4;
}

// NVFP4 of one 1x16 RNE block whose amax (NaN -> +Inf) is `bamax`: static rules encode with `target`;
// Four Over Six keeps the candidate (6 or 4) with the smaller scaled squared error, ties -> 6.
template <bool kFourOverSix>
__device__ __forceinline__ void quantize_block_rne(const float (&x)[kBlock], float bamax, const TensorScale& ts,
                                                   float target, uint32_t (&packed)[2], uint8_t& scale) {
  const bool poison = (bamax == __int_as_float(0x7f800000)) || ts.bad;
  const bool zero = bamax == 0.0f;
  if (kFourOverSix) {
    Candidate c6, c4;
    four_over_six_candidate_pair(bamax, ts, poison, zero, c6, c4);
    scale = four_over_six_block(x, bamax, c6, c4, packed) ? c4.scale : c6.scale;
  } else {
    const Candidate c = make_candidate(bamax, ts, target, poison, zero);
    const float u[kBlock] = {};  // RNE: encode16<false> never reads u
    float xq[kBlock];
    encode16<false>(x, c, u, packed, xq);
    scale = c.scale;
  }
}

}  // namespace fp4
}  // namespace longlive
