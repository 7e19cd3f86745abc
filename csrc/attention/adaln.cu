// Fused adaLN forward (optionally behind the gated residual): one warp per token row, the row in
// registers, h written as bf16 or as row-wise FP8 E4M3 codes + the row's decode scale.
//
// Why a CUDA kernel next to the Triton one (longlive_kernels/attention/adaln_triton.py): at the 5B
// model's M = 1760 tokens × 3072 the Triton kernel reduces each row across a CTA (three CTA-wide
// reductions, each a shared-memory round trip and barrier) and keeps about two rows per SM in
// flight, so it waits on DRAM latency: 11.4 µs for the FP8 h (0.47× copy). Here a warp owns a row
// (shuffles only, no barriers), and 16 warps per SM put every row of M = 1760 in flight at once.
//
// Math, per row of C values (fp32 steps, each rounded, FMAs written out: the Triton kernel's):
//   r = bf16_rn(x + rn(gate · y))   (RESIDUAL; r is stored, and the norm reads the rounded r)
//   mean = rn(Σ r / C); var = rn(Σ fma(d, d) / C), d = r − mean; rstd = rn(1 / sqrt_rn(var + eps))
//   h = bf16_rn(fma(d · rstd, m, a)), m = 1 + scale (plus_one) or scale, a = shift (per frame)
//   FP8: the row-wise E4M3 encode of that h (longlive/fp4/fp8_rowwise.cuh)
// The sums run in another order than the Triton kernel's, so mean and rstd may differ in their last
// bits, and a rare h element by one bf16 ulp; the FP8 codes are exactly quantize_fp8_rowwise of this
// kernel's own bf16 h.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "longlive/fp4/fp8_rowwise.cuh"
#include "longlive/launchers.h"

namespace longlive {
namespace {

constexpr int kVec = 8;          // bf16 values per 16-byte vector
constexpr int kMaxC = 4096;      // C of the templates below (at most 8 vectors per thread, 512 threads)

__device__ __forceinline__ float lo_of(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_of(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 r = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&r);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// r = x + gate·y of one bf16 pair (Triton: y·gate, then the sum, one rounding to bf16)
__device__ __forceinline__ uint32_t residual_pair(uint32_t x, uint32_t y, float g_lo, float g_hi, bool gated) {
  float ylo = lo_of(y), yhi = hi_of(y);
  if (gated) {
    ylo = __fmul_rn(ylo, g_lo);
    yhi = __fmul_rn(yhi, g_hi);
  }
  return pack_bf16(__fadd_rn(lo_of(x), ylo), __fadd_rn(hi_of(x), yhi));
}

// deterministic CTA-wide reductions: a warp shuffle, then every thread combines the warp partials
// in the same order (so every thread holds the same value); `part` is this reduction's own slots
__device__ __forceinline__ float block_sum(float v, float* part) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float s = part[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) s = __fadd_rn(s, part[w]);
  return s;
}

__device__ __forceinline__ uint32_t block_max(uint32_t v, uint32_t* part) {
  v = __reduce_max_sync(0xFFFFFFFFu, v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) v = max(v, part[w]);
  return v;
}

__device__ __forceinline__ void load8(const float* v, int64_t col, float (&out)[kVec]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(v + col));
  const float4 b = __ldg(reinterpret_cast<const float4*>(v + col + 4));
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// one CTA per token row, ITERS 16-byte vectors per thread over exactly C / 8 vectors (the row-wise
// quantizer's shape, fp4/fp8_quantize.cu); the frame's vectors come through L1 (rows of one frame
// run on the same SMs)
template <int ITERS, bool RESIDUAL, bool FP8>
__global__ void __launch_bounds__(512) adaln_fwd_kernel(AdaLNForwardParams p) {
  __shared__ float part_sum[16], part_sq[16];
  __shared__ uint32_t part_max[16];
  const int64_t row = blockIdx.x;
  const int64_t b = row / p.tokens, t = row % p.tokens, f = t / p.frame_len;
  const int64_t c = p.c, nv = c / kVec;
  const __nv_bfloat16* xr = static_cast<const __nv_bfloat16*>(p.x) + b * p.stride_xb + t * p.stride_xl;

  uint4 v[ITERS];  // the row: x, then (RESIDUAL) the rounded r, then h
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {  // every load of the row before any use
    const int64_t vec = static_cast<int64_t>(i) * blockDim.x + threadIdx.x;
    v[i] = vec < nv ? __ldg(reinterpret_cast<const uint4*>(xr) + vec) : make_uint4(0, 0, 0, 0);
  }
  if (RESIDUAL) {
    const __nv_bfloat16* yr = static_cast<const __nv_bfloat16*>(p.y) + b * p.stride_yb + t * p.stride_yl;
    uint4 y[ITERS];
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = static_cast<int64_t>(i) * blockDim.x + threadIdx.x;
      y[i] = vec < nv ? __ldg(reinterpret_cast<const uint4*>(yr) + vec) : make_uint4(0, 0, 0, 0);
    }
    const bool gated = p.gate != nullptr;
    const float* gv = gated ? p.gate + b * p.stride_gb + f * p.stride_gf : nullptr;
    uint4* rr = reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.r) + row * c);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = static_cast<int64_t>(i) * blockDim.x + threadIdx.x;
      if (vec < nv) {
        float g[kVec] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (gated) load8(gv, vec * kVec, g);
        v[i].x = residual_pair(v[i].x, y[i].x, g[0], g[1], gated);
        v[i].y = residual_pair(v[i].y, y[i].y, g[2], g[3], gated);
        v[i].z = residual_pair(v[i].z, y[i].z, g[4], g[5], gated);
        v[i].w = residual_pair(v[i].w, y[i].w, g[6], g[7], gated);
        rr[vec] = v[i];
      }
    }
  }

  // statistics: masked vectors hold 0 (they add nothing to the sum; their d is excluded below)
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) s = __fadd_rn(__fadd_rn(s, lo_of(w[j])), hi_of(w[j]));
  }
  const float cf = static_cast<float>(c);
  const float mean = __fdiv_rn(block_sum(s, part_sum), cf);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    if (static_cast<int64_t>(i) * blockDim.x + threadIdx.x < nv) {
      const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float d0 = __fsub_rn(lo_of(w[j]), mean), d1 = __fsub_rn(hi_of(w[j]), mean);
        sq = __fmaf_rn(d1, d1, __fmaf_rn(d0, d0, sq));
      }
    }
  }
  const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(block_sum(sq, part_sq), cf), p.eps)));

  // h = fma(d · rstd, m, a), rounded to bf16
  const float* sv = p.scale + b * p.stride_sb + f * p.stride_sf;
  const float* tv = p.shift + b * p.stride_tb + f * p.stride_tf;
  uint32_t mag = 0;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int64_t vec = static_cast<int64_t>(i) * blockDim.x + threadIdx.x;
    if (vec < nv) {
      float m[kVec], a[kVec];
      load8(sv, vec * kVec, m);
      load8(tv, vec * kVec, a);
      if (p.plus_one) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) m[e] = __fadd_rn(m[e], 1.0f);
      }
      uint32_t* w = reinterpret_cast<uint32_t*>(&v[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float d0 = __fsub_rn(lo_of(w[j]), mean), d1 = __fsub_rn(hi_of(w[j]), mean);
        w[j] = pack_bf16(__fmaf_rn(__fmul_rn(d0, rstd), m[2 * j], a[2 * j]),
                         __fmaf_rn(__fmul_rn(d1, rstd), m[2 * j + 1], a[2 * j + 1]));
        if (FP8) mag = fp8::magnitude_max(mag, w[j]);
      }
      if (!FP8) reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.h) + row * c)[vec] = v[i];
    }
  }
  if (threadIdx.x == 0) *reinterpret_cast<float2*>(p.stats + 2 * row) = make_float2(mean, rstd);
  if (FP8) {
    float hs, inv;
    fp8::row_scale(block_max(mag, part_max), hs, inv);
    if (threadIdx.x == 0) p.h_scale[row] = hs;
    uint2* qr = reinterpret_cast<uint2*>(static_cast<uint8_t*>(p.h) + row * c);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = static_cast<int64_t>(i) * blockDim.x + threadIdx.x;
      if (vec < nv) qr[vec] = fp8::encode_vec(v[i], inv);
    }
  }
}

// threads of a row's CTA: `iters` vectors each over nv vectors, whole warps
int64_t row_threads(int64_t nv, int iters) { return ((nv + iters - 1) / iters + 31) / 32 * 32; }

template <int ITERS, bool RESIDUAL, bool FP8>
cudaError_t launch_variant(const AdaLNForwardParams& p, cudaStream_t stream) {
  const int threads = static_cast<int>(row_threads(p.c / kVec, ITERS));
  adaln_fwd_kernel<ITERS, RESIDUAL, FP8><<<static_cast<unsigned>(p.batch * p.tokens), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int ITERS>
cudaError_t launch(const AdaLNForwardParams& p, cudaStream_t stream) {
  const bool residual = p.y != nullptr, fp8 = p.h_scale != nullptr;
  if (residual) return fp8 ? launch_variant<ITERS, true, true>(p, stream) : launch_variant<ITERS, true, false>(p, stream);
  return fp8 ? launch_variant<ITERS, false, true>(p, stream) : launch_variant<ITERS, false, false>(p, stream);
}

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// a per-frame vector's strides keep every 8-float run 16-byte aligned
bool vector_ok(const float* v, int64_t stride_b, int64_t stride_f) {
  return v != nullptr && aligned(v, 16) && stride_b % 4 == 0 && stride_f % 4 == 0 && stride_b >= 0 &&
         stride_f >= 0;
}

}  // namespace

int adaln_forward_iters(int64_t c) {
  // the row-wise quantizer's choice (the fewest idle lanes, then >= 128 threads: 3 x 128 for C = 3072)
  return c % kVec == 0 && c <= kMaxC ? fp8_rowwise_default_iters(c) : 0;
}

cudaError_t adaln_forward(const AdaLNForwardParams& p, cudaStream_t stream) {
  if (p.x == nullptr || p.h == nullptr || p.stats == nullptr) return cudaErrorInvalidValue;
  if (p.batch < 0 || p.tokens < 0 || p.c <= 0 || p.c % kVec != 0 || p.frame_len <= 0 ||
      p.tokens % p.frame_len != 0 || !(p.eps > 0.0f))
    return cudaErrorInvalidValue;
  const int iters = adaln_forward_iters(p.c);
  if (iters == 0) return cudaErrorInvalidValue;
  if (!aligned(p.x, 16) || p.stride_xl % kVec != 0 || p.stride_xb % kVec != 0 || p.stride_xl < p.c ||
      p.stride_xb < 0)
    return cudaErrorInvalidValue;
  if (!vector_ok(p.scale, p.stride_sb, p.stride_sf) || !vector_ok(p.shift, p.stride_tb, p.stride_tf))
    return cudaErrorInvalidValue;
  if (p.y != nullptr) {
    if (p.r == nullptr || !aligned(p.r, 16) || !aligned(p.y, 16) || p.stride_yl % kVec != 0 ||
        p.stride_yb % kVec != 0 || p.stride_yl < p.c || p.stride_yb < 0)
      return cudaErrorInvalidValue;
    if (p.gate != nullptr && !vector_ok(p.gate, p.stride_gb, p.stride_gf)) return cudaErrorInvalidValue;
  } else if (p.gate != nullptr || p.r != nullptr) {
    return cudaErrorInvalidValue;
  }
  if (!aligned(p.h, p.h_scale != nullptr ? 8 : 16) || !aligned(p.stats, 8)) return cudaErrorInvalidValue;
  if (p.batch * p.tokens == 0) return cudaSuccess;
  if (p.batch * p.tokens > INT32_MAX) return cudaErrorInvalidValue;  // one CTA per row
  switch (iters) {
    case 1: return launch<1>(p, stream);
    case 2: return launch<2>(p, stream);
    case 3: return launch<3>(p, stream);
    case 4: return launch<4>(p, stream);
    case 6: return launch<6>(p, stream);
    case 8: return launch<8>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace longlive
