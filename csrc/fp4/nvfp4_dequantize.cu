// NVFP4 decode launcher: one thread per 16-element block (8-byte packed load, one scale byte,
// optional inverse RHT, 16-byte vector stores).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "longlive/fp4/nvfp4.cuh"
#include "longlive/launchers.h"

namespace longlive {
namespace {

using fp4::kBlock;
constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(NVFP4DequantizeParams p) {
  const int64_t nb = p.k / kBlock;
  const int64_t b = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= p.rows * nb) return;
  const uint2 packed = __ldg(reinterpret_cast<const uint2*>(p.data) + b);
  const float s = fp4::e4m3_decode(p.scale[b]);
  const float gs = *p.global_scale;
  float x[kBlock];
#pragma unroll
  for (int i = 0; i < kBlock; ++i) {
    const uint32_t w = i < 8 ? packed.x : packed.y;
    const int code = (w >> (4 * (i % 8))) & 0xF;
    x[i] = __fmul_rn(__fmul_rn(fp4::e2m1_decode(code), s), gs);
  }
  if (p.hadamard_mask >= 0) fp4::rht16(x, p.hadamard_mask);
  fp4::store16<T>(static_cast<T*>(p.out) + b * kBlock, x);
}

template <typename T>
cudaError_t launch(const NVFP4DequantizeParams& p, cudaStream_t stream) {
  const int64_t blocks = p.rows * (p.k / kBlock);
  const unsigned grid = static_cast<unsigned>((blocks + kThreads - 1) / kThreads);
  dequantize_kernel<T><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t nvfp4_dequantize(const NVFP4DequantizeParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.k <= 0 || p.k % kBlock != 0) return cudaErrorInvalidValue;
  switch (p.out_dtype) {
    case DType::kBF16: return launch<__nv_bfloat16>(p, stream);
    case DType::kF16: return launch<__half>(p, stream);
    case DType::kF32: return launch<float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace longlive
