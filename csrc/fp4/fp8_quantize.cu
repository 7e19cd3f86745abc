// Row-wise FP8 E4M3 activation quantizer, optionally of gelu_tanh(x): one CTA per row, the whole
// row in registers (one HBM read), bit-identical to the Triton kernel
// (longlive_kernels/fp4/gemm_fp8.py: _fp8_rowwise_kernel) and to reference.quantize_fp8_rowwise.
//
// Why a CUDA kernel next to the Triton one: Triton tiles are powers of two, so the FFN's K = 14336
// row runs as a 16384-wide tile with an eighth of its lanes masked; here a row is ITERS 16-byte
// vectors per thread over exactly K / (8·ITERS) threads (K = 14336: 224 threads × 8 vectors).
//
// Math, per element (each step rounded to fp32, the one FMA written out, as the Triton kernel has it):
//   g = x · rcp(1 + ex2(x · fma(x·x, B, A)))   (GELU only: gelu_tanh = x·sigmoid(2u); A = −2·log2(e)·√(2/π),
//       B = 0.044715·A; ex2 and rcp are the .approx.ftz MUFU instructions)
//   h = bf16_rn(g)                      (what the unfused GELU would store)
//   amax = max of |h| over the row, taken on the sign-cleared bits (NaN above +Inf)
//   s = max(amax / 448, 2^-126) (div.rn); 1 for an all-zero row; +Inf for a row holding NaN/Inf
//   code = e4m3_rn_satfinite(h · rn(1/s))
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "longlive/launchers.h"

namespace longlive {
namespace {

constexpr int kVec = 8;  // bf16 values per 16-byte load

__device__ __forceinline__ float ex2_approx_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float rcp_approx_ftz(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// x · sigmoid(2u) = x / (1 + 2^(x·(A + B·x²))), A = −2·log2(e)·√(2/π), B = 0.044715·A
__device__ __forceinline__ float gelu_tanh(float x) {
  const float w = __fmul_rn(x, __fmaf_rn(__fmul_rn(x, x), -0.1029432395800235f, -2.302208198144325f));
  return __fmul_rn(x, rcp_approx_ftz(__fadd_rn(ex2_approx_ftz(w), 1.0f)));
}

__device__ __forceinline__ uint32_t gelu_pair(uint32_t w) {
  const float lo = __uint_as_float(w << 16), hi = __uint_as_float(w & 0xFFFF0000u);
  const __nv_bfloat162 r = __floats2bfloat162_rn(gelu_tanh(lo), gelu_tanh(hi));
  return *reinterpret_cast<const uint32_t*>(&r);
}

__device__ __forceinline__ uint32_t magnitude_max(uint32_t m, uint32_t w) {
  return max(m, max(w & 0x7FFFu, (w >> 16) & 0x7FFFu));
}

// two bf16 (one 32-bit word) times inv → two E4M3 codes, the first value in the low byte
__device__ __forceinline__ uint32_t encode_pair(uint32_t w, float inv) {
  const float lo = __fmul_rn(__uint_as_float(w << 16), inv);
  const float hi = __fmul_rn(__uint_as_float(w & 0xFFFF0000u), inv);
  uint16_t codes;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(codes) : "f"(hi), "f"(lo));
  return codes;
}

template <int ITERS, bool GELU>
__global__ void __launch_bounds__(512) fp8_rowwise_kernel(const __nv_bfloat16* __restrict__ x, int64_t stride_row,
                                                           int64_t k, uint8_t* __restrict__ q,
                                                           float* __restrict__ scale) {
  __shared__ uint32_t warp_max[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = x + row * stride_row;
  uint8_t* qr = q + row * k;

  uint4 v[ITERS];
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {  // every load before any use: ITERS 16-byte loads in flight
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * kVec;
    v[i] = c < k ? __ldg(reinterpret_cast<const uint4*>(xr + c)) : make_uint4(0, 0, 0, 0);
  }
  uint32_t mag = 0;  // masked lanes hold 0, and gelu(0) = 0
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    uint32_t* w = reinterpret_cast<uint32_t*>(&v[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (GELU) w[j] = gelu_pair(w[j]);
      mag = magnitude_max(mag, w[j]);
    }
  }
  mag = __reduce_max_sync(0xFFFFFFFFu, mag);
  const int warps = (blockDim.x + 31) / 32;
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x / 32] = mag;
  __syncthreads();
  for (int i = 0; i < warps; ++i) mag = max(mag, warp_max[i]);

  const float amax = __uint_as_float(mag << 16);
  float s = fmaxf(__fdiv_rn(amax, 448.0f), 1.1754943508222875e-38f);
  if (mag == 0) s = 1.0f;
  if (mag > 0x7F80u) s = __int_as_float(0x7F800000);  // a NaN in the row
  const float inv = __fdiv_rn(1.0f, s);
  if (threadIdx.x == 0) scale[row] = s;

#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * blockDim.x + threadIdx.x) * kVec;
    if (c < k) {
      const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
      uint2 out;
      out.x = encode_pair(w[0], inv) | (encode_pair(w[1], inv) << 16);
      out.y = encode_pair(w[2], inv) | (encode_pair(w[3], inv) << 16);
      *reinterpret_cast<uint2*>(qr + c) = out;
    }
  }
}

// threads of a row's CTA: ITERS vectors each over `vecs` vectors, whole warps
int64_t row_threads(int64_t vecs, int iters) { return ((vecs + iters - 1) / iters + 31) / 32 * 32; }

template <int ITERS>
cudaError_t launch(const FP8RowwiseQuantizeParams& p, int threads, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (p.gelu)
    fp8_rowwise_kernel<ITERS, true><<<grid, threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.x), p.stride_row, p.k, p.q, p.scale);
  else
    fp8_rowwise_kernel<ITERS, false><<<grid, threads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(p.x), p.stride_row, p.k, p.q, p.scale);
  return cudaGetLastError();
}

}  // namespace

int fp8_rowwise_default_iters(int64_t k) {
  // The fewest idle lanes, then the most vectors per thread that keep >= 128 threads per row
  // (H100, tools/probe_fp8_quantize_cuda.py: K = 3072 → 3 × 128 threads, 1.14× the Triton kernel at
  // 7040 rows against 0.96× for 1 × 384; K = 14336 with the GELU → 8 × 224, 27.6 / 99.4 µs at
  // 1760 / 7040 rows, against 29.3 / 102.1 µs for 4 × 448).
  const int64_t vecs = (k + kVec - 1) / kVec;
  int best = 0;
  int64_t best_idle = INT64_MAX;
  for (int it : {1, 2, 3, 4, 6, 8}) {
    const int64_t threads = row_threads(vecs, it);
    if (threads > 512 || (threads < 128 && best != 0)) continue;
    const int64_t idle = threads * it - vecs;
    if (idle <= best_idle) {
      best_idle = idle;
      best = it;
    }
  }
  return best;
}

cudaError_t fp8_rowwise_quantize(const FP8RowwiseQuantizeParams& p, cudaStream_t stream) {
  if (p.x == nullptr || p.q == nullptr || p.scale == nullptr) return cudaErrorInvalidValue;
  if (p.rows < 0 || p.rows > INT32_MAX || p.k <= 0 || p.k % kVec != 0 || p.stride_row < p.k ||
      p.stride_row % kVec != 0)
    return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || reinterpret_cast<uintptr_t>(p.q) % 8 != 0)
    return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  const int iters = p.iters > 0 ? p.iters : fp8_rowwise_default_iters(p.k);
  const int64_t vecs = p.k / kVec;
  const int64_t threads = row_threads(vecs, iters);
  if (threads > 512) return cudaErrorInvalidValue;  // iters too few for this K
  switch (iters) {
    case 1: return launch<1>(p, static_cast<int>(threads), stream);
    case 2: return launch<2>(p, static_cast<int>(threads), stream);
    case 3: return launch<3>(p, static_cast<int>(threads), stream);
    case 4: return launch<4>(p, static_cast<int>(threads), stream);
    case 6: return launch<6>(p, static_cast<int>(threads), stream);
    case 8: return launch<8>(p, static_cast<int>(threads), stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace longlive
