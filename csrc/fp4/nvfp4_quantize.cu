// NVFP4 quantization launcher: an amax pass (skipped with a given tensor scale), then one thread per
// 16-element block: 16-byte vector loads, fused RHT, scale selection, E2M1 encode, 8-byte packed store.
// Two kernels: a flat persistent one for contiguous rows with a static rule (the common case), and a
// row-tiled one for strided rows, 16x16 blocks and Four Over Six. Row-tiled layout: 256 threads = 16
// rows x 16 column blocks, rows fastest inside a warp so that 16x16 tiles reduce with warp shuffles
// (xor 1, 2, 4, 8) in the reference's pairwise order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "longlive/fp4/nvfp4.cuh"
#include "longlive/launchers.h"

namespace longlive {
namespace {

using fp4::kBlock;
constexpr int kThreads = 256;
constexpr int kRowsPerCta = 16;
constexpr int kBlocksPerCta = kThreads / kRowsPerCta;

// Tensor amax (NaN counts as +Inf): one warp per row (grid-stride), lanes over 16-element blocks,
// one atomicMax per CTA on the fp32 bits (non-negative floats order like their bit patterns).
template <typename T>
__global__ void __launch_bounds__(kThreads) amax_kernel(const T* __restrict__ x, int64_t rows, int64_t k,
                                                         int64_t stride_row, int hadamard_mask,
                                                         int32_t* __restrict__ amax_bits) {
  const int64_t nb = k / kBlock;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t warps = int64_t(gridDim.x) * (kThreads / 32);
  float m = 0.0f;
  for (int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + warp; row < rows; row += warps) {
    const T* xr = x + row * stride_row;
    for (int64_t cb = lane; cb < nb; cb += 32) {
      const fp4::RawBlock<T> raw = fp4::load_raw16(xr + cb * kBlock);
      if (hadamard_mask >= 0) {
        float v[kBlock];
        fp4::unpack16<T>(raw, v);
        fp4::rht16(v, hadamard_mask);
        m = fmaxf(m, fp4::block_amax(v));
      } else {
        m = fmaxf(m, fp4::raw_block_amax(raw));
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float warp_max[kThreads / 32];
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
    atomicMax(amax_bits, __float_as_int(m));
  }
}

__device__ __forceinline__ float tile_max16(float v) {
#pragma unroll
  for (int o = 1; o < 16; o *= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float tile_sum16(float v) {
#pragma unroll
  for (int o = 1; o < 16; o *= 2) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// kRowFastest: lanes walk rows (16x16 tiles reduce with shuffles); otherwise lanes walk column
// blocks, so a warp reads 1 KB of one row contiguously (1x16 blocks).
template <typename T, bool kFourOverSix, bool kStochastic, bool kHadamard, bool kRowFastest>
__global__ void __launch_bounds__(kThreads) quantize_kernel(NVFP4QuantizeParams p) {
  const int row_in_tile = kRowFastest ? threadIdx.x % kRowsPerCta : threadIdx.x / kBlocksPerCta;
  const int block_in_tile = kRowFastest ? threadIdx.x / kRowsPerCta : threadIdx.x % kBlocksPerCta;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerCta + row_in_tile;
  const int64_t cb = int64_t(blockIdx.y) * kBlocksPerCta + block_in_tile;
  const int64_t nb = p.k / kBlock;
  const bool valid = row < p.rows && cb < nb;  // invalid threads still join the tile shuffles

  float x[kBlock];
#pragma unroll
  for (int i = 0; i < kBlock; ++i) x[i] = 0.0f;
  if (valid) {
    fp4::load16<T>(static_cast<const T*>(p.x) + row * p.stride_row + cb * kBlock, x);
    if (kHadamard) fp4::rht16(x, p.hadamard_mask);
  }
  float bamax = fp4::block_amax(x);
  if (kRowFastest && p.block_2d) bamax = tile_max16(bamax);

  const float gs = p.given_scale ? *p.global_scale_in
                                 : __fdiv_rn(__int_as_float(*p.amax_bits), fp4::rule_denominator(p.scale_rule));
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *p.global_scale = gs;
  const fp4::TensorScale ts = fp4::tensor_scale(gs);
  const bool poison = (bamax == __int_as_float(0x7f800000)) || ts.bad;
  const bool zero = bamax == 0.0f;

  float u[kBlock] = {};
  if (kStochastic) fp4::philox_uniform16(p.seed, uint64_t(row * p.k + cb * kBlock), u);

  fp4::Candidate c, c4;
  if (kFourOverSix) {
    fp4::four_over_six_candidate_pair(bamax, ts, poison, zero, c, c4);
  } else {
    c = fp4::make_candidate(bamax, ts, fp4::rule_target(p.scale_rule), poison, zero);
  }
  uint32_t packed[2];
  if (!kFourOverSix) {
    float xq[kBlock];
    fp4::encode16<kStochastic>(x, c, u, packed, xq);
  } else {
    uint32_t packed4[2];
    float e6, e4;
    if (kStochastic) {
      float xq[kBlock], xq4[kBlock];
      fp4::encode16<true>(x, c, u, packed, xq);
      fp4::encode16<true>(x, c4, u, packed4, xq4);
      e6 = fp4::scaled_error_sum(x, xq, c);
      e4 = fp4::scaled_error_sum(x, xq4, c4);
    } else {
      fp4::four_over_six_candidates(x, bamax, c, c4, packed, packed4, e6, e4);
    }
    if (kRowFastest && p.block_2d) {
      e6 = tile_sum16(e6);
      e4 = tile_sum16(e4);
    }
    e6 = fp4::four_over_six_error(e6, c);
    e4 = fp4::four_over_six_error(e4, c4);
    if (e4 < e6) {
      c = c4;
      packed[0] = packed4[0];
      packed[1] = packed4[1];
    }
  }
  if (!valid) return;
  reinterpret_cast<uint2*>(p.data + row * (p.k / 2))[cb] = make_uint2(packed[0], packed[1]);
  p.scale[row * nb + cb] = c.scale;
}

// Contiguous rows, 1x16 blocks, static rules or RNE Four Over Six: the blocks are numbered flat (block b
// = elements 16b..16b+15, codes at byte 8b, scale at byte b), so the grid strides over them with no
// row/column arithmetic. Measured on an H200 (2026-11-21): 128-thread CTAs beat 256-thread ones, 2-4
// blocks in flight per thread (more registers, fewer warps) and capped registers (spills) were slower.
// Measured on an H100 (2026-11-22): four waves of CTAs without prefetching the next block beat one
// persistent wave with it (Four Over Six 0.69 -> 0.74x copy at 7040x14336, static6 0.97 -> 0.99x), and
// beat one CTA per 128 blocks (0.69x); both rules are bound by instruction issue, not by memory. Four
// Over Six is capped at 64 registers (8 CTAs per SM; 4 bytes spilled): 0.70 -> 0.76x copy against
// its 89 uncapped registers. Stochastic rounding too (149 registers uncapped, for 16 Philox streams in
// flight): 548 -> 468 us at 7040x14336. Later the same day: an L2 prefetch of the next block (no
// registers held) won ~2% for Four Over Six at both shapes; cp.async into shared slots (2-4 stages)
// lost 25-35%, bulk L2 prefetches of a warp's next 1 KB lost 0-10%, 2-16 waves did not beat 4.
constexpr int kFlatThreads = 128;
constexpr int kFlatWaves = 4;

template <typename T, bool kFourOverSix, bool kStochastic, bool kHadamard>
__global__ void __launch_bounds__(kFlatThreads, kFourOverSix || kStochastic ? 8 : 1) quantize_flat_kernel(NVFP4QuantizeParams p) {
  static_assert(!(kFourOverSix && kStochastic), "stochastic Four Over Six takes the row-tiled kernel");
  const int64_t n_blocks = p.rows * (p.k / kBlock);
  const int64_t stride = int64_t(gridDim.x) * kFlatThreads;
  const T* x_ptr = static_cast<const T*>(p.x);
  int64_t b = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (b >= n_blocks) return;
  fp4::RawBlock<T> cur = fp4::load_raw16(x_ptr + b * kBlock);  // in flight while the tensor scale loads
  const float gs = p.given_scale
                       ? *p.global_scale_in
                       : __fdiv_rn(__int_as_float(*p.amax_bits), fp4::rule_denominator(p.scale_rule));
  if (b == 0) *p.global_scale = gs;
  const fp4::TensorScale ts = fp4::tensor_scale(gs);
  const float target = kFourOverSix ? 6.0f : fp4::rule_target(p.scale_rule);

  for (;;) {
    // The next block's load waits at the end of this iteration; fetching it into L2 now shortens
    // that wait without holding registers across the encode.
    if (b + stride < n_blocks) asm volatile("prefetch.global.L2 [%0];" ::"l"(x_ptr + (b + stride) * kBlock));
    float x[kBlock];
    fp4::unpack16<T>(cur, x);
    if (kHadamard) fp4::rht16(x, p.hadamard_mask);
    const float bamax = kHadamard ? fp4::block_amax(x) : fp4::raw_block_amax(cur);
    uint32_t packed[2];
    uint8_t scale;
    if constexpr (kStochastic) {
      const bool poison = (bamax == __int_as_float(0x7f800000)) || ts.bad;
      const fp4::Candidate c = fp4::make_candidate(bamax, ts, target, poison, bamax == 0.0f);
      float u[kBlock];
      fp4::philox_uniform16(p.seed, uint64_t(b * kBlock), u);
      float xq[kBlock];
      fp4::encode16<true>(x, c, u, packed, xq);
      scale = c.scale;
    } else {
      fp4::quantize_block_rne<kFourOverSix>(x, bamax, ts, target, packed, scale);
    }
    reinterpret_cast<uint2*>(p.data)[b] = make_uint2(packed[0], packed[1]);
    p.scale[b] = scale;
    b += stride;
    if (b >= n_blocks) break;
    cur = fp4::load_raw16(x_ptr + b * kBlock);
  }
}

// Grid of the flat kernel: kFlatWaves times as many CTAs as fit on the device at once, each striding
// over the blocks (a few blocks per thread at the 5B model's shapes).
template <typename T, bool kFourOverSix, bool kStochastic, bool kHadamard>
void launch_flat(const NVFP4QuantizeParams& p, cudaStream_t stream) {
  const auto kernel = quantize_flat_kernel<T, kFourOverSix, kStochastic, kHadamard>;
  static int ctas = 0;  // per instantiation; the device does not change under one process's kernels
  if (ctas == 0) {
    int dev = 0, sms = 132, per_sm = 1;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFlatThreads, 0);
    ctas = sms * (per_sm > 0 ? per_sm : 1);
  }
  const int64_t needed = (p.rows * (p.k / kBlock) + kFlatThreads - 1) / kFlatThreads;
  const int grid = static_cast<int>(needed < int64_t(ctas) * kFlatWaves ? needed : int64_t(ctas) * kFlatWaves);
  kernel<<<grid, kFlatThreads, 0, stream>>>(p);
}

template <typename T, bool kFourOverSix, bool kStochastic, bool kHadamard>
cudaError_t launch_quantize(const NVFP4QuantizeParams& p, dim3 grid, cudaStream_t stream) {
  if constexpr (!(kFourOverSix && kStochastic)) {
    if (!p.block_2d && p.stride_row == p.k) {
      launch_flat<T, kFourOverSix, kStochastic, kHadamard>(p, stream);
      return cudaGetLastError();
    }
  }
  if (p.block_2d) {
    quantize_kernel<T, kFourOverSix, kStochastic, kHadamard, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    quantize_kernel<T, kFourOverSix, kStochastic, kHadamard, false><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T, bool kFourOverSix>
cudaError_t dispatch_flags(const NVFP4QuantizeParams& p, dim3 grid, cudaStream_t stream) {
  const bool had = p.hadamard_mask >= 0;
  if (p.stochastic) {
    return had ? launch_quantize<T, kFourOverSix, true, true>(p, grid, stream)
               : launch_quantize<T, kFourOverSix, true, false>(p, grid, stream);
  }
  return had ? launch_quantize<T, kFourOverSix, false, true>(p, grid, stream)
             : launch_quantize<T, kFourOverSix, false, false>(p, grid, stream);
}

template <typename T>
cudaError_t launch(const NVFP4QuantizeParams& p, cudaStream_t stream) {
  const int64_t nb = p.k / kBlock;
  if (!p.given_scale) {
    cudaError_t err = cudaMemsetAsync(p.amax_bits, 0, sizeof(int32_t), stream);
    if (err != cudaSuccess) return err;
    int sms = 132;
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int64_t ctas_needed = (p.rows + kThreads / 32 - 1) / (kThreads / 32);
    const int grid = static_cast<int>(ctas_needed < int64_t(sms) * 8 ? ctas_needed : int64_t(sms) * 8);
    amax_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(p.x), p.rows, p.k, p.stride_row,
                                                  p.hadamard_mask, p.amax_bits);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>((p.rows + kRowsPerCta - 1) / kRowsPerCta),
                  static_cast<unsigned>((nb + kBlocksPerCta - 1) / kBlocksPerCta));
  return p.scale_rule == fp4::kFourOverSix ? dispatch_flags<T, true>(p, grid, stream)
                                           : dispatch_flags<T, false>(p, grid, stream);
}

}  // namespace

cudaError_t nvfp4_quantize(const NVFP4QuantizeParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.k <= 0 || p.k % kBlock != 0) return cudaErrorInvalidValue;
  if (p.k / kBlock > int64_t(65535) * kBlocksPerCta) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kBF16: return launch<__nv_bfloat16>(p, stream);
    case DType::kF16: return launch<__half>(p, stream);
    case DType::kF32: return launch<float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace longlive
