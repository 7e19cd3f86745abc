// Philox4x32-10 (= Triton's tl.randint4x(seed, offset)) and the uniforms of stochastic rounding
// (no torch, no host code). Bit-exact with longlive_kernels/fp4/reference.py (philox4,
// uniform16_from_philox).
#pragma once

#include <stdint.h>

namespace longlive {
namespace fp4 {

// The four outputs (c0, c1, c2, c3) of Philox4x32-10 with key seed, counter (offset_lo, offset_hi, 0, 0).
__device__ __forceinline__ uint4 philox4(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int i = 0; i < 10; ++i) {
    const uint32_t hi_b = __umulhi(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
    const uint32_t hi_a = __umulhi(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}

// Stochastic rounding's uniforms of the 16 elements first..first+15 (first % 16 == 0) of a row-major
// tensor: elements 8g..8g+7 share the Philox call with counter g, element 8g + j takes half j % 2 (low
// first) of word j / 2 (= reference.uniform16_from_philox). Two calls per block, not sixteen.
__device__ __forceinline__ void philox_uniform16(uint64_t seed, uint64_t first, float (&u)[16]) {
#pragma unroll
  for (int g = 0; g < 2; ++g) {
    const uint4 w = philox4(seed, first / 8 + g);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      u[8 * g + j] = static_cast<float>((words[j / 2] >> (16 * (j % 2))) & 0xFFFFu) * 1.52587890625e-05f;
    }
  }
}

}  // namespace fp4
}  // namespace longlive
