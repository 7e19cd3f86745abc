// Host launchers of every CUDA kernel: plain pointers, sizes and a stream; no torch.
// Declared here once, defined in csrc/<area>/<op>.cu, called from csrc/bindings.cpp and csrc/tests.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace longlive {

enum class DType : int { kBF16 = 0, kF16 = 1, kF32 = 2 };

// ---- fp4/nvfp4_quantize.cu -----------------------------------------------------------------------
struct NVFP4QuantizeParams {
  const void* x = nullptr;     // [rows, k] dtype, row stride `stride_row` elements, 16-byte aligned rows
  DType dtype = DType::kBF16;
  int64_t rows = 0, k = 0, stride_row = 0;
  uint8_t* data = nullptr;     // [rows, k/2] out
  uint8_t* scale = nullptr;    // [rows, k/16] out (E4M3 bits)
  float* global_scale = nullptr;  // [1] in (given_scale) or out
  int32_t* amax_bits = nullptr;   // [1] workspace, zeroed by the launcher
  int scale_rule = 0;          // 0 static6, 1 static4, 2 four_over_six
  bool stochastic = false;
  uint64_t seed = 0;
  int hadamard_mask = -1;      // -1: no RHT
  bool block_2d = false;
  bool given_scale = false;
};
cudaError_t nvfp4_quantize(const NVFP4QuantizeParams& p, cudaStream_t stream);

// ---- fp4/nvfp4_dequantize.cu ---------------------------------------------------------------------
struct NVFP4DequantizeParams {
  const uint8_t* data = nullptr;   // [rows, k/2]
  const uint8_t* scale = nullptr;  // [rows, k/16] E4M3 bits
  const float* global_scale = nullptr;  // [1]
  void* out = nullptr;             // [rows, k] out_dtype, contiguous
  DType out_dtype = DType::kBF16;
  int64_t rows = 0, k = 0;
  int hadamard_mask = -1;
};
cudaError_t nvfp4_dequantize(const NVFP4DequantizeParams& p, cudaStream_t stream);

}  // namespace longlive
