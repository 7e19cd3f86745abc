// Row-wise FP8 E4M3 encode shared by every kernel that writes row-wise FP8 activations
// (fp4/fp8_quantize.cu, attention/adaln.cu), bit for bit the Triton encode (longlive_kernels/fp4/fp8.py:
// _magnitude_bits, _row_amax_scale, _encode_row) and reference.quantize_fp8_rowwise:
//   amax = max |h| over the row, taken on the sign-cleared bf16 bits (a NaN sorts above +Inf)
//   s = max(amax / 448, 2^-126) (div.rn); 1 for an all-zero row; +Inf for a row holding NaN/Inf
//   code = e4m3_rn_satfinite(h · rn(1/s))
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace longlive {
namespace fp8 {

// running max of the sign-cleared bits of the two bf16 in w
__device__ __forceinline__ uint32_t magnitude_max(uint32_t m, uint32_t w) {
  return max(m, max(w & 0x7FFFu, (w >> 16) & 0x7FFFu));
}

// the row's decode scale s and encode factor 1/s from the row's largest magnitude bits
__device__ __forceinline__ void row_scale(uint32_t mag, float& s, float& inv) {
  const float amax = __uint_as_float(mag << 16);
  s = fmaxf(__fdiv_rn(amax, 448.0f), 1.1754943508222875e-38f);
  if (mag == 0) s = 1.0f;
  if (mag > 0x7F80u) s = __int_as_float(0x7F800000);  // a NaN in the row
  inv = __fdiv_rn(1.0f, s);
}

// two bf16 (one 32-bit word) times inv → two E4M3 codes, the first value in the low byte
__device__ __forceinline__ uint32_t encode_pair(uint32_t w, float inv) {
  const float lo = __fmul_rn(__uint_as_float(w << 16), inv);
  const float hi = __fmul_rn(__uint_as_float(w & 0xFFFF0000u), inv);
  uint16_t codes;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(codes) : "f"(hi), "f"(lo));
  return codes;
}

// eight bf16 (a 16-byte vector) → eight E4M3 codes (8 bytes)
__device__ __forceinline__ uint2 encode_vec(const uint4& v, float inv) {
  uint2 out;
  out.x = encode_pair(v.x, inv) | (encode_pair(v.y, inv) << 16);
  out.y = encode_pair(v.z, inv) | (encode_pair(v.w, inv) << 16);
  return out;
}

}  // namespace fp8
}  // namespace longlive
