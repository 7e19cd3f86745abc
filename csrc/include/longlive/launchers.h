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
  float* global_scale = nullptr;  // [1] out: the tensor scale used (a copy of global_scale_in if given)
  const float* global_scale_in = nullptr;  // [1] in, read when given_scale
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

// ---- fp4/nvfp4_gemv.cu (small-M W4A16 GEMM, sm_90a) ----------------------------------------------
// out[m, n] = (x · Ŵᵀ) · w_global_scale (· x_global_scale) + bias, Ŵ = e2m1 · s_block, FP32 sums,
// rounded once to out_dtype. The launcher picks a launch shape (variant) and the K split from m, n
// and the SM count unless given; every choice gives the same sum up to FP32 summation order, and one
// choice always the same bits.
struct NVFP4GemvParams {
  const void* x = nullptr;            // [m, k] bf16, row stride stride_x elements; 16-byte aligned rows
  int64_t stride_x = 0;
  const uint8_t* w = nullptr;         // [n, k/2] packed E2M1, contiguous, 16-byte aligned
  const uint8_t* w_scale = nullptr;   // [n, k/16] E4M3 bits, contiguous, 8-byte aligned
  const float* w_global_scale = nullptr;  // [1]
  const float* x_global_scale = nullptr;  // [1] or nullptr: a further factor (a W4A4 activation's)
  const void* bias = nullptr;         // [n] bias_dtype, or nullptr
  DType bias_dtype = DType::kF32;
  void* out = nullptr;                // [m, n] out_dtype, contiguous
  DType out_dtype = DType::kBF16;
  int64_t m = 0, n = 0, k = 0;        // 1 <= m <= 64; k % 128 == 0
  int num_sms = 0;                    // 0: asked from the current device
  int splits = 0;                     // K split over a cluster, 1..8; 0: chosen
  int variant = 0;                    // 1..3: (16-row bands per warp, warps) = (1,4) (1,8) (2,8); 0: chosen
  int k_unroll = 0;                   // 1, 2 or 4 sub-steps of 128 K per pipeline stage; 0: chosen
  int ablate = 0;                     // probe only: 1 = stream the operands but skip the MMAs
};
int nvfp4_gemv_default_variant(int64_t m);
cudaError_t nvfp4_gemv(const NVFP4GemvParams& p, cudaStream_t stream);

// ---- fp4/fp8_quantize.cu (row-wise E4M3 activations, optionally of gelu_tanh(x)) ------------------
// q[r, :] = e4m3_rn_satfinite(h[r, :] · rn(1/s[r])), s[r] = max(amax(h[r, :]) / 448, 2^-126) (1 for an
// all-zero row, +Inf for a row holding NaN/Inf), h = x or bf16_rn(gelu_tanh(x)); one CTA per row.
struct FP8RowwiseQuantizeParams {
  const void* x = nullptr;   // [rows, k] bf16, row stride stride_row elements, 16-byte aligned
  int64_t rows = 0, k = 0, stride_row = 0;  // k % 8 == 0, stride_row % 8 == 0, k <= 8 · 512 · iters
  uint8_t* q = nullptr;      // [rows, k] out: E4M3 codes, contiguous, 8-byte aligned
  float* scale = nullptr;    // [rows] out: the decode scale s
  bool gelu = false;
  int iters = 0;             // 16-byte vectors per thread: 1, 2, 3, 4, 6 or 8; 0: chosen from k
};
int fp8_rowwise_default_iters(int64_t k);
cudaError_t fp8_rowwise_quantize(const FP8RowwiseQuantizeParams& p, cudaStream_t stream);

// ---- attention/kv_cache.cu (FP4 KV cache: in-place update, decode) ---------------------------------
// One layer's buffers: data uint8 [2, S, B, H, T, D/2], scale uint8 [2, S, B, H, T, D/16],
// global_scale fp32 [2, S, B, H, ceil(T/128)] (index 0 = K, 1 = V).
struct KVCacheUpdateParams {
  const void* k = nullptr;  // [B, T, H, D] dtype, last dim contiguous, 16-byte aligned 16-value blocks
  const void* v = nullptr;  // same dtype and strides as k
  DType dtype = DType::kBF16;
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;  // elements
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0, slots = 0;  // head_dim % 16 == 0, <= 256
  uint8_t* data = nullptr;
  uint8_t* scale = nullptr;
  float* global_scale = nullptr;
  const int32_t* slot = nullptr;  // [1] destination slot, read on the device (an index-table entry)
  int scale_rule = 0;             // 0 static6, 1 static4, 2 four_over_six
};
cudaError_t kv_cache_update(const KVCacheUpdateParams& p, cudaStream_t stream);

struct KVCacheDequantizeParams {
  const uint8_t* data = nullptr;
  const uint8_t* scale = nullptr;
  const float* global_scale = nullptr;
  const int32_t* table = nullptr;  // [2 + S]: n_ctx, slot(current), slot(ctx_0), ...
  void* out_k = nullptr;           // [B, n_chunks*T, H, D] out_dtype, contiguous, 16-byte aligned
  void* out_v = nullptr;
  DType out_dtype = DType::kBF16;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0, slots = 0, n_chunks = 0;
};
cudaError_t kv_cache_dequantize(const KVCacheDequantizeParams& p, cudaStream_t stream);

// The FP8 window of compute="fp8": code = RNE_E4M3(((e2m1 * s_block) * gs) * inv_scale[K|V]), saturating,
// written at out + b*stride_b + (c*T + t)*stride_t + h*stride_h (bytes; D contiguous; pointers and
// strides multiples of 16). out_dtype is ignored.
struct KVCacheDequantizeFP8Params {
  KVCacheDequantizeParams base;
  const float* inv_scale = nullptr;  // [2] device: multipliers of K and V
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;
  int items_per_thread = 2;  // 1, 2 or 4 blocks in flight per thread (a launch shape; same result)
};
cudaError_t kv_cache_dequantize_fp8(const KVCacheDequantizeFP8Params& p, cudaStream_t stream);

}  // namespace longlive
