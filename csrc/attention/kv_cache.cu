// FP4 KV cache launchers: the in-place update (K and V of one chunk, one kernel) and the decode of the
// attended chunks to a dense [B, n*T, H, D] tensor.
//
// Update: one CTA per (batch*head, 128-token tile, K|V), heads fastest so that the CTAs running
// together read neighbouring 256-byte pieces of the same token rows. 256 threads; each keeps its
// kBlocksPerThread 16-value blocks in registers as raw words (one HBM read, half the registers of
// fp32) with their block amax, the CTA reduces the tile amax, then every thread encodes its blocks.
// A warp reads 4 rows x 256 contiguous bytes (bf16, D = 128) and writes 256 contiguous bytes.
// Measured on an H100 (2026-11-22, 7040 tokens x 24 heads x 128, static6): 73.7 -> 41.8 us
// (0.50 -> 0.88x copy) from the rule as a template parameter (no Four Over Six registers in static
// kernels), raw words instead of fp32 in registers (4 CTAs per SM instead of 2), the block amax
// taken from the raw words once (unsigned max of masked bits) and a head-fastest grid; the same
// kernel without the encode runs at 1.0x copy.
// Decode: one thread per 16-value block (8-byte load, 32-byte vector store); a CTA covers 4 tokens of
// one (chunk, batch, K|V), so its [B, L, H, D] writes are one contiguous run; 32-bit index math.
// FP8 window (compute="fp8"): a per-block table of 8 E4M3 codes and one byte permute per 4 codes; on an
// H100 (2026-11-23, tools/probe_fp8_path.py --decode-sweep, 4 chunks of 7040 x 24 x 128, K and V, L2
// flushed) 100.5 us = 0.89x copy with 2 blocks per thread, against 118.8 us (0.75x) for the Triton
// kernel that decodes, scales and converts every value in fp32; bit-identical to it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "longlive/attention/kv_cache.cuh"
#include "longlive/launchers.h"

namespace longlive {
namespace {

using fp4::kBlock;
using kv::kTileTokens;
constexpr int kThreads = 256;

// CTAs per SM to compile for: a thread's raw blocks take kBlocksPerThread * sizeof(T) * 4 registers;
// up to 32 of them leave room for the static encode in 64 registers (4 CTAs per SM). Four Over Six's
// second candidate needs twice the registers.
template <typename T, int kBlocksPerThread, bool kFourOverSix>
constexpr int update_min_ctas() {
  constexpr int raw_regs = kBlocksPerThread * int(sizeof(T)) * 4;
  constexpr int ctas = raw_regs <= 32 ? 4 : (raw_regs <= 64 ? 2 : 1);
  return kFourOverSix && ctas > 1 ? ctas / 2 : ctas;
}

// kNb = head_dim / 16 as a compile-time constant (0: read it from p), so block -> row is a shift.
template <typename T, int kBlocksPerThread, int kNb, bool kFourOverSix>
__global__ void __launch_bounds__(kThreads, update_min_ctas<T, kBlocksPerThread, kFourOverSix>())
    kv_update_kernel(KVCacheUpdateParams p) {
  __shared__ float red[kThreads / 32];
  const int64_t bh = blockIdx.x;
  const int64_t tile = blockIdx.y;
  const int64_t kv_idx = blockIdx.z;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const int slot = *p.slot;
  if (slot < 0 || slot >= p.slots) return;  // never write outside the slot table
  const int nb = kNb > 0 ? kNb : static_cast<int>(p.head_dim / kBlock);
  const int64_t rows_left = p.tokens - tile * kTileTokens;
  const int rows_in_tile = rows_left < kTileTokens ? static_cast<int>(rows_left) : kTileTokens;
  const T* x = static_cast<const T*>(kv_idx == 0 ? p.k : p.v) + b * p.stride_b + h * p.stride_h +
               tile * kTileTokens * p.stride_t;

  fp4::RawBlock<T> raw[kBlocksPerThread];
  float bamax[kBlocksPerThread];
#pragma unroll
  for (int i = 0; i < kBlocksPerThread; ++i) {
    const int blk = threadIdx.x + i * kThreads;
    const int row = blk / nb, cb = blk % nb;
    if (row < rows_in_tile) {
      raw[i] = fp4::load_raw16(x + row * p.stride_t + cb * kBlock);
    } else {
#pragma unroll
      for (int w = 0; w < int(sizeof(raw[i].v) / 16); ++w) raw[i].v[w] = make_uint4(0, 0, 0, 0);
    }
  }
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kBlocksPerThread; ++i) {
    bamax[i] = fp4::raw_block_amax(raw[i]);
    amax = fmaxf(amax, bamax[i]);
  }
  amax = kv::cta_max<kThreads>(amax, red);
  const float gs = __fdiv_rn(amax, fp4::rule_denominator(p.scale_rule));
  const float target = fp4::rule_target(p.scale_rule);
  const fp4::TensorScale ts = fp4::tensor_scale(gs);

  const int64_t plane = kv::plane_index(kv_idx, slot, b, h, p.slots, p.batch, p.heads);
  const int64_t n_tiles = (p.tokens + kTileTokens - 1) / kTileTokens;
  if (threadIdx.x == 0) p.global_scale[plane * n_tiles + tile] = gs;
  // The tile's rows are contiguous in the plane: block `blk` of the tile is packed word `blk`.
  const int64_t first_row = plane * p.tokens + tile * kTileTokens;
  uint2* data = reinterpret_cast<uint2*>(p.data) + first_row * nb;
  uint8_t* scale = p.scale + first_row * nb;
#pragma unroll
  for (int i = 0; i < kBlocksPerThread; ++i) {
    const int blk = threadIdx.x + i * kThreads;
    if (blk / nb >= rows_in_tile) continue;
    float vals[kBlock];
    fp4::unpack16<T>(raw[i], vals);
    uint32_t packed[2];
    fp4::quantize_block_rne<kFourOverSix>(vals, bamax[i], ts, target, packed, scale[blk]);
    data[blk] = make_uint2(packed[0], packed[1]);
  }
}

// Grid: x = groups of kTokensPerCta tokens, y = chunk * batch, z = K|V; the CTA's items are the
// (token, head, 16-value block) triples of its tokens, consecutive in the [B, L, H, D] output.
constexpr int kTokensPerCta = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads) kv_dequantize_kernel(KVCacheDequantizeParams p) {
  const int nb = static_cast<int>(p.head_dim / kBlock);
  const int per_token = static_cast<int>(p.heads) * nb;
  const int64_t kv_idx = blockIdx.z;
  const int64_t c = blockIdx.y % p.n_chunks, b = blockIdx.y / p.n_chunks;
  const int slot = kv::slot_at_clamped(p.table, c, p.slots);
  const int64_t n_tiles = (p.tokens + kTileTokens - 1) / kTileTokens;
  T* out = static_cast<T*>(kv_idx == 0 ? p.out_k : p.out_v);
  for (int i = threadIdx.x; i < kTokensPerCta * per_token; i += kThreads) {
    const int64_t t = int64_t(blockIdx.x) * kTokensPerCta + i / per_token;
    if (t >= p.tokens) break;
    const int r = i % per_token;
    const int h = r / nb, cb = r % nb;
    const int64_t plane = kv::plane_index(kv_idx, slot, b, h, p.slots, p.batch, p.heads);
    const int64_t row = plane * p.tokens + t;
    const uint2 packed = __ldg(reinterpret_cast<const uint2*>(p.data + row * (p.head_dim / 2)) + cb);
    float x[kBlock];
    kv::decode_block(packed, p.scale[row * nb + cb], __ldg(p.global_scale + plane * n_tiles + t / kTileTokens), x);
    const int64_t out_row = ((b * p.n_chunks + c) * p.tokens + t) * p.heads + h;
    fp4::store16<T>(out + out_row * p.head_dim + cb * kBlock, x);
  }
}

// ---- FP8 window (compute="fp8") ----------------------------------------------------------------
// A block's 16 codes take 8 distinct magnitudes, so each is converted once: a table of 8 E4M3 bytes in
// two registers, ((mag * s) * gs) * inv rounded as the Triton kernel rounds it, and every nibble then
// picks its byte with one PRMT (__byte_perm reads the low 3 bits of a selector nibble: the magnitude)
// and gets its sign as bit 7. That is ~4 integer instructions per 4 values instead of a float decode,
// scale and conversion per value.

__device__ __forceinline__ uint32_t e4m3x2_rn_sat(float lo, float hi) {
  return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);  // lo -> byte 0
}

// Codes of the 8 E2M1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} of a block: bytes 0-3 in t0, 4-7 in t1.
__device__ __forceinline__ uint2 e4m3_magnitude_table(float s, float gs, float inv) {
  const float m[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  float v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __fmul_rn(__fmul_rn(__fmul_rn(m[i], s), gs), inv);
  return make_uint2(e4m3x2_rn_sat(v[0], v[1]) | (e4m3x2_rn_sat(v[2], v[3]) << 16),
                    e4m3x2_rn_sat(v[4], v[5]) | (e4m3x2_rn_sat(v[6], v[7]) << 16));
}

// 4 codes from the nibbles of `w` selected by `half` (0: nibbles 0-3, 1: nibbles 4-7).
__device__ __forceinline__ uint32_t lookup4(uint2 table, uint32_t w, int half) {
  const uint32_t mag = __byte_perm(table.x, table.y, half ? (w >> 16) : w);
  // nibble signs (bit 3 of each) of bytes b_{2half}, b_{2half+1} of w, each byte duplicated: the even
  // nibble's sign moves 3 -> 7 by the shift, the odd one's is bit 7 already
  const uint32_t s = __byte_perm(w & 0x88888888u, 0, half ? 0x3322 : 0x1100);
  return mag | ((s << 4) & 0x00800080u) | (s & 0x80008000u);
}

// kNb = head_dim / 16 as a compile-time constant (0: from p); a block's index in its plane fits 32 bits
// (checked by the launcher), so the token of a block is one cheap division.
template <int kItems, int kNb>
__global__ void __launch_bounds__(kThreads) kv_dequantize_fp8_kernel(KVCacheDequantizeFP8Params p) {
  const KVCacheDequantizeParams& q = p.base;
  const int nb = kNb > 0 ? kNb : static_cast<int>(q.head_dim / kBlock);
  const int plane_blocks = static_cast<int>(q.tokens) * nb;
  const int kv_idx = blockIdx.y & 1, c = blockIdx.y >> 1;
  const int heads = static_cast<int>(q.heads);
  const int b = blockIdx.z / heads, h = blockIdx.z - b * heads;
  const int slot = kv::slot_at_clamped(q.table, c, q.slots);
  const int64_t plane = kv::plane_index(kv_idx, slot, b, h, q.slots, q.batch, q.heads);
  const int64_t n_tiles = (q.tokens + kTileTokens - 1) / kTileTokens;
  const uint2* data = reinterpret_cast<const uint2*>(q.data) + plane * plane_blocks;
  const uint8_t* scale = q.scale + plane * plane_blocks;
  const float* gs = q.global_scale + plane * n_tiles;
  const float inv = __ldg(p.inv_scale + kv_idx);
  uint8_t* out = static_cast<uint8_t*>(kv_idx == 0 ? q.out_k : q.out_v) + b * p.stride_b + c * q.tokens * p.stride_t +
                 h * p.stride_h;
  const int first = blockIdx.x * kThreads * kItems + threadIdx.x;
  uint2 packed[kItems];
  uint8_t sc[kItems];
  float g[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {  // every load in flight before the first use
    const int blk = first + i * kThreads;
    if (blk < plane_blocks) {
      packed[i] = __ldg(data + blk);
      sc[i] = __ldg(scale + blk);
      g[i] = __ldg(gs + blk / nb / kTileTokens);
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int blk = first + i * kThreads;
    if (blk >= plane_blocks) break;
    const uint2 table = e4m3_magnitude_table(fp4::e4m3_decode(sc[i]), g[i], inv);
    const uint4 codes = make_uint4(lookup4(table, packed[i].x, 0), lookup4(table, packed[i].x, 1),
                                   lookup4(table, packed[i].y, 0), lookup4(table, packed[i].y, 1));
    const int t = blk / nb;
    *reinterpret_cast<uint4*>(out + t * p.stride_t + (blk - t * nb) * kBlock) = codes;
  }
}

template <int kItems, int kNb>
cudaError_t launch_dequantize_fp8(const KVCacheDequantizeFP8Params& p, cudaStream_t stream) {
  const KVCacheDequantizeParams& q = p.base;
  const int64_t per_cta = int64_t(kThreads) * kItems;
  const dim3 grid(static_cast<unsigned>((q.tokens * (q.head_dim / kBlock) + per_cta - 1) / per_cta),
                  static_cast<unsigned>(2 * q.n_chunks), static_cast<unsigned>(q.batch * q.heads));
  kv_dequantize_fp8_kernel<kItems, kNb><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int kItems>
cudaError_t dispatch_dequantize_fp8(const KVCacheDequantizeFP8Params& p, cudaStream_t stream) {
  switch (p.base.head_dim) {
    case 64: return launch_dequantize_fp8<kItems, 4>(p, stream);
    case 128: return launch_dequantize_fp8<kItems, 8>(p, stream);
    default: return launch_dequantize_fp8<kItems, 0>(p, stream);
  }
}

template <typename T, int kBpt, int kNb>
cudaError_t launch_update(const KVCacheUpdateParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.batch * p.heads),
                  static_cast<unsigned>((p.tokens + kTileTokens - 1) / kTileTokens), 2);
  if (p.scale_rule == fp4::kFourOverSix) {
    kv_update_kernel<T, kBpt, kNb, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    kv_update_kernel<T, kBpt, kNb, false><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_update(const KVCacheUpdateParams& p, cudaStream_t stream) {
  switch (p.head_dim) {  // blocks per thread = 128 * (D / 16) / 256
    case 64: return launch_update<T, 2, 4>(p, stream);
    case 128: return launch_update<T, 4, 8>(p, stream);
    case 256: return launch_update<T, 8, 16>(p, stream);
    default: break;
  }
  const int64_t blocks_per_thread = (kTileTokens * (p.head_dim / kBlock) + kThreads - 1) / kThreads;
  if (blocks_per_thread <= 1) return launch_update<T, 1, 0>(p, stream);
  if (blocks_per_thread <= 2) return launch_update<T, 2, 0>(p, stream);
  if (blocks_per_thread <= 4) return launch_update<T, 4, 0>(p, stream);
  return launch_update<T, 8, 0>(p, stream);
}

template <typename T>
cudaError_t launch_dequantize(const KVCacheDequantizeParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.tokens + kTokensPerCta - 1) / kTokensPerCta),
                  static_cast<unsigned>(p.n_chunks * p.batch), 2);
  kv_dequantize_kernel<T><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t kv_cache_update(const KVCacheUpdateParams& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.tokens <= 0 || p.heads <= 0 || p.slots <= 0) return cudaErrorInvalidValue;
  if (p.head_dim <= 0 || p.head_dim % kBlock != 0 || p.head_dim > 256) return cudaErrorInvalidValue;
  if (p.scale_rule < 0 || p.scale_rule > 2) return cudaErrorInvalidValue;
  if ((p.tokens + kTileTokens - 1) / kTileTokens > 65535 || p.batch * p.heads > INT32_MAX) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kBF16: return dispatch_update<__nv_bfloat16>(p, stream);
    case DType::kF16: return dispatch_update<__half>(p, stream);
    case DType::kF32: return dispatch_update<float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t kv_cache_dequantize(const KVCacheDequantizeParams& p, cudaStream_t stream) {
  if (p.batch <= 0 || p.tokens <= 0 || p.heads <= 0 || p.slots <= 0 || p.n_chunks <= 0) return cudaErrorInvalidValue;
  if (p.head_dim <= 0 || p.head_dim % kBlock != 0) return cudaErrorInvalidValue;
  if (p.n_chunks * p.batch > 65535 || p.heads * (p.head_dim / kBlock) > (1 << 24)) return cudaErrorInvalidValue;
  switch (p.out_dtype) {
    case DType::kBF16: return launch_dequantize<__nv_bfloat16>(p, stream);
    case DType::kF16: return launch_dequantize<__half>(p, stream);
    case DType::kF32: return launch_dequantize<float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t kv_cache_dequantize_fp8(const KVCacheDequantizeFP8Params& p, cudaStream_t stream) {
  const KVCacheDequantizeParams& q = p.base;
  if (q.batch <= 0 || q.tokens <= 0 || q.heads <= 0 || q.slots <= 0 || q.n_chunks <= 0) return cudaErrorInvalidValue;
  if (q.head_dim <= 0 || q.head_dim % kBlock != 0 || p.inv_scale == nullptr) return cudaErrorInvalidValue;
  if (2 * q.n_chunks > 65535 || q.batch * q.heads > 65535) return cudaErrorInvalidValue;
  if (q.tokens * (q.head_dim / kBlock) + 4 * kThreads > INT32_MAX) return cudaErrorInvalidValue;  // 32-bit block index
  const uintptr_t align = reinterpret_cast<uintptr_t>(q.out_k) | reinterpret_cast<uintptr_t>(q.out_v) |
                          static_cast<uintptr_t>(p.stride_b | p.stride_t | p.stride_h);
  if (align % 16 != 0) return cudaErrorInvalidValue;  // 16-byte code stores
  switch (p.items_per_thread) {
    case 1: return dispatch_dequantize_fp8<1>(p, stream);
    case 2: return dispatch_dequantize_fp8<2>(p, stream);
    case 4: return dispatch_dequantize_fp8<4>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace longlive
