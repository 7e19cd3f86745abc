// FP4 KV cache device functions (no torch, no host code): the in-place tile update and the decode.
// Bit-exact with longlive_kernels/attention/reference.py (kv_quantize / kv_dequantize): a 128-token x D
// tile of one (slot, batch, head) is NVFP4 of that tile alone (its amax gives its FP32 decode scale),
// built from the block routines of longlive/fp4/nvfp4.cuh.
//
// Layout of one layer (index 0 = K, 1 = V):
//   data  uint8 [2, S, B, H, T, D/2]   packed E2M1, element 2i in the low nibble
//   scale uint8 [2, S, B, H, T, D/16]  E4M3 block scales
//   gs    fp32  [2, S, B, H, ceil(T/128)]
#pragma once

#include <stdint.h>

#include "longlive/fp4/nvfp4.cuh"

namespace longlive {
namespace kv {

constexpr int kTileTokens = 128;  // tokens per FP32 decode scale

// Index of the [T, ...] plane of (kv, slot, b, h).
__host__ __device__ inline int64_t plane_index(int64_t kv, int64_t slot, int64_t b, int64_t h, int64_t slots,
                                               int64_t batch, int64_t heads) {
  return ((kv * slots + slot) * batch + b) * heads + h;
}

// Physical slot of attention position c: a context chunk (c < n_ctx) or the current chunk.
__device__ __forceinline__ int slot_at(const int32_t* table, int64_t c) {
  const int n_ctx = table[0];
  return c < n_ctx ? table[2 + c] : table[1];
}

// slot_at clamped into [0, slots): the decodes never read outside the buffers, whatever the table holds.
__device__ __forceinline__ int slot_at_clamped(const int32_t* table, int64_t c, int64_t slots) {
  const int slot = slot_at(table, c);
  return slot < 0 ? 0 : (slot >= slots ? static_cast<int>(slots - 1) : slot);
}

// Max over the CTA of a non-negative float (every thread gets the result). `red` holds one float per warp.
template <int kThreads>
__device__ __forceinline__ float cta_max(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) v = fmaxf(v, red[w]);
  return v;
}

// ((e2m1 * s_block) * gs) of one block, rounded once at the store.
__device__ __forceinline__ void decode_block(uint2 packed, uint8_t scale, float gs, float (&x)[fp4::kBlock]) {
  const float s = fp4::e4m3_decode(scale);
#pragma unroll
  for (int i = 0; i < fp4::kBlock; ++i) {
    const uint32_t w = i < 8 ? packed.x : packed.y;
    x[i] = __fmul_rn(__fmul_rn(fp4::e2m1_decode((w >> (4 * (i % 8))) & 0xF), s), gs);
  }
}

}  // namespace kv
}  // namespace longlive
