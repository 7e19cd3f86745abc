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
constexpr int kWarps = 8;        // rows per CTA (all of one frame)
constexpr int kMaxIters = 16;    // vectors per lane: C <= 32 · 8 · 16 = 4096 (20 spilled)

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

// The frame's vectors in shared memory, each as two planes of float4 (columns 8v..8v+3, then
// 8v+4..8v+7 of every 16-byte vector v): a warp's lanes then read consecutive 16-byte words
// (a [C] plane read by vector would be a 32-byte stride: two-way bank conflicts).
struct FrameVectors {
  float4* lo;
  float4* hi;
  __device__ __forceinline__ void stage(const float* v, int64_t c, bool plus_one) const {
    for (int64_t q = threadIdx.x; q < c / 4; q += blockDim.x) {
      float4 w = __ldg(reinterpret_cast<const float4*>(v) + q);
      if (plus_one) w = make_float4(__fadd_rn(w.x, 1.0f), __fadd_rn(w.y, 1.0f), __fadd_rn(w.z, 1.0f), __fadd_rn(w.w, 1.0f));
      (q % 2 == 0 ? lo : hi)[q / 2] = w;
    }
  }
  __device__ __forceinline__ void read(int64_t vec, float (&out)[kVec]) const {
    const float4 a = lo[vec], b = hi[vec];
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
};

// grid (ceil(frame_len / kWarps), frames, batch): the CTA's rows share one frame, whose vectors it
// stages once (the fp32 vectors of a 3072-wide frame are 4x the bytes of a bf16 row: read per warp
// from L2 they, not the rows, were the traffic)
template <int ITERS, bool RESIDUAL, bool FP8>
__global__ void __launch_bounds__(kWarps * 32, RESIDUAL ? (ITERS >= 16 ? 1 : 2) : (ITERS >= 12 ? 2 : 3)) adaln_fwd_kernel(AdaLNForwardParams p) {
  extern __shared__ float4 smem[];
  const int lane = threadIdx.x & 31;
  const int64_t f = blockIdx.y, b = blockIdx.z;
  const int64_t i_frame = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const bool active = i_frame < p.frame_len;  // no early return: every thread reaches the barrier
  const int64_t t = f * p.frame_len + (active ? i_frame : 0);
  const int64_t row = b * p.tokens + t;
  const int64_t c = p.c;
  const int64_t nv = c / kVec;
  const __nv_bfloat16* xr = static_cast<const __nv_bfloat16*>(p.x) + b * p.stride_xb + t * p.stride_xl;

  uint4 v[ITERS];  // the row: x, then (RESIDUAL) the rounded r, then h
  uint4 y[RESIDUAL ? ITERS : 1];
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {  // every load of the row first: they fly while the vectors are staged
    const int64_t vec = i * 32 + lane;
    v[i] = active && vec < nv ? __ldg(reinterpret_cast<const uint4*>(xr) + vec) : make_uint4(0, 0, 0, 0);
  }
  if (RESIDUAL) {
    const __nv_bfloat16* yr = static_cast<const __nv_bfloat16*>(p.y) + b * p.stride_yb + t * p.stride_yl;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = i * 32 + lane;
      y[i] = active && vec < nv ? __ldg(reinterpret_cast<const uint4*>(yr) + vec) : make_uint4(0, 0, 0, 0);
    }
  }
  const FrameVectors mv{smem, smem + nv}, av{smem + 2 * nv, smem + 3 * nv}, gv{smem + 4 * nv, smem + 5 * nv};
  mv.stage(p.scale + b * p.stride_sb + f * p.stride_sf, c, p.plus_one);
  av.stage(p.shift + b * p.stride_tb + f * p.stride_tf, c, false);
  const bool gated = RESIDUAL && p.gate != nullptr;
  if (gated) gv.stage(p.gate + b * p.stride_gb + f * p.stride_gf, c, false);
  __syncthreads();
  if (!active) return;

  if (RESIDUAL) {
    __nv_bfloat16* rr = static_cast<__nv_bfloat16*>(p.r) + row * c;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = i * 32 + lane;
      if (vec < nv) {
        float g[kVec] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (gated) gv.read(vec, g);
        v[i].x = residual_pair(v[i].x, y[i].x, g[0], g[1], gated);
        v[i].y = residual_pair(v[i].y, y[i].y, g[2], g[3], gated);
        v[i].z = residual_pair(v[i].z, y[i].z, g[4], g[5], gated);
        v[i].w = residual_pair(v[i].w, y[i].w, g[6], g[7], gated);
        reinterpret_cast<uint4*>(rr)[vec] = v[i];
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
  const float mean = __fdiv_rn(warp_sum(s), cf);
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    if (i * 32 + lane < nv) {
      const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float d0 = __fsub_rn(lo_of(w[j]), mean), d1 = __fsub_rn(hi_of(w[j]), mean);
        sq = __fmaf_rn(d1, d1, __fmaf_rn(d0, d0, sq));
      }
    }
  }
  const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(warp_sum(sq), cf), p.eps)));

  // h = fma(d · rstd, m, a), rounded to bf16
  uint32_t mag = 0;
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int64_t vec = i * 32 + lane;
    if (vec < nv) {
      float m[kVec], a[kVec];
      mv.read(vec, m);
      av.read(vec, a);
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
  if (lane == 0) *reinterpret_cast<float2*>(p.stats + 2 * row) = make_float2(mean, rstd);
  if (FP8) {
    float hs, inv;
    fp8::row_scale(__reduce_max_sync(0xFFFFFFFFu, mag), hs, inv);
    if (lane == 0) p.h_scale[row] = hs;
    uint2* qr = reinterpret_cast<uint2*>(static_cast<uint8_t*>(p.h) + row * c);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int64_t vec = i * 32 + lane;
      if (vec < nv) qr[vec] = fp8::encode_vec(v[i], inv);
    }
  }
}

template <int ITERS, bool RESIDUAL, bool FP8>
cudaError_t launch_variant(const AdaLNForwardParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.frame_len + kWarps - 1) / kWarps),
                  static_cast<unsigned>(p.tokens / p.frame_len), static_cast<unsigned>(p.batch));
  const int planes = RESIDUAL && p.gate != nullptr ? 3 : 2;
  const size_t smem = static_cast<size_t>(planes) * p.c * sizeof(float);  // <= 48 KB for c <= 4096
  adaln_fwd_kernel<ITERS, RESIDUAL, FP8><<<grid, kWarps * 32, smem, stream>>>(p);
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
  const int64_t need = (c + 32 * kVec - 1) / (32 * kVec);
  for (int it : {2, 4, 6, 8, 12, kMaxIters})
    if (need <= it) return it;
  return 0;
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
  if ((p.frame_len + kWarps - 1) / kWarps > INT32_MAX || p.tokens / p.frame_len > 65535 || p.batch > 65535)
    return cudaErrorInvalidValue;  // grid limits
  switch (iters) {
    case 2: return launch<2>(p, stream);
    case 4: return launch<4>(p, stream);
    case 6: return launch<6>(p, stream);
    case 8: return launch<8>(p, stream);
    case 12: return launch<12>(p, stream);
    case kMaxIters: return launch<kMaxIters>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace longlive
