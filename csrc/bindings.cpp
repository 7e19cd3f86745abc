// The one torch binding of longlive_kernels._C: argument checks, then the torch-free launchers.
// Ops are destination-passing (outputs allocated by the Python layer) and registered under
// TORCH_LIBRARY(longlive_kernels); the Python custom ops in longlive_kernels/ call them.
#include <Python.h>

#include <cstdio>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "longlive/launchers.h"

// Messages with values are formatted by snprintf and reach TORCH_CHECK as one C string: on the GPU
// image, c10::str's ostream insertion of a number crashed inside this extension (the libstdc++ the
// extension's compiler built against is not the one the torch process loads), while a single C
// string is passed through without a stream.
#define LL_CHECK(cond, ...)                                        \
  do {                                                             \
    if (!(cond)) {                                                 \
      char ll_msg_[512];                                           \
      std::snprintf(ll_msg_, sizeof(ll_msg_), __VA_ARGS__);        \
      TORCH_CHECK(false, static_cast<const char*>(ll_msg_));       \
    }                                                              \
  } while (0)

namespace longlive {
namespace {

const char* dtype_name(const at::Tensor& t) { return c10::toString(t.scalar_type()); }
long long dim_or(const at::Tensor& t, int d) { return t.dim() > d ? static_cast<long long>(t.size(d)) : -1; }

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return DType::kBF16;
    case at::kHalf: return DType::kF16;
    case at::kFloat: return DType::kF32;
    default: LL_CHECK(false, "%s must be bf16, fp16 or fp32, got %s", name, dtype_name(t));
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  LL_CHECK(t.is_cuda(), "%s must be a CUDA tensor", name);
}

void check_aligned16(const at::Tensor& t, const char* name) {
  LL_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, "%s must be 16-byte aligned", name);
}

void check_launch(cudaError_t err, const char* op) {
  LL_CHECK(err == cudaSuccess, "%s failed: %s", op, cudaGetErrorString(err));
}

void nvfp4_quantize_cuda(const at::Tensor& x, at::Tensor& data, at::Tensor& scale, at::Tensor& global_scale,
                         const at::Tensor& global_scale_in, at::Tensor& amax, int64_t scale_rule, bool stochastic, int64_t seed,
                         int64_t hadamard_mask, bool block_2d, bool given_scale) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [rows, K] with a contiguous last dim");
  const int64_t rows = x.size(0), k = x.size(1);
  LL_CHECK(k % 16 == 0, "x: K must be a multiple of 16, got %lld", static_cast<long long>(k));
  check_aligned16(x, "x");
  TORCH_CHECK((x.stride(0) * x.element_size()) % 16 == 0, "x: row stride must be a multiple of 16 bytes");
  TORCH_CHECK(data.is_contiguous() && data.scalar_type() == at::kByte && data.numel() == rows * k / 2,
              "data must be contiguous uint8 [rows, K/2]");
  TORCH_CHECK(scale.is_contiguous() && scale.scalar_type() == at::kByte && scale.numel() == rows * k / 16,
              "scale must be contiguous uint8 [rows, K/16]");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.numel() == 1, "global_scale must be fp32 [1]");
  TORCH_CHECK(!given_scale || (global_scale_in.is_cuda() && global_scale_in.scalar_type() == at::kFloat &&
                               global_scale_in.numel() == 1),
              "global_scale_in must be a CUDA fp32 tensor of one element when given_scale");
  TORCH_CHECK(amax.scalar_type() == at::kInt && amax.numel() == 1, "amax must be int32 [1]");
  TORCH_CHECK(scale_rule >= 0 && scale_rule <= 2, "scale_rule must be 0, 1 or 2");
  const c10::cuda::CUDAGuard guard(x.device());
  NVFP4QuantizeParams p;
  p.x = x.data_ptr();
  p.dtype = to_dtype(x, "x");
  p.rows = rows;
  p.k = k;
  p.stride_row = x.stride(0);
  p.data = data.data_ptr<uint8_t>();
  p.scale = scale.data_ptr<uint8_t>();
  p.global_scale = global_scale.data_ptr<float>();
  p.global_scale_in = global_scale_in.data_ptr<float>();
  p.amax_bits = amax.data_ptr<int32_t>();
  p.scale_rule = static_cast<int>(scale_rule);
  p.stochastic = stochastic;
  p.seed = static_cast<uint64_t>(seed);
  p.hadamard_mask = static_cast<int>(hadamard_mask);
  p.block_2d = block_2d;
  p.given_scale = given_scale;
  check_launch(nvfp4_quantize(p, c10::cuda::getCurrentCUDAStream()), "nvfp4_quantize");
}

void nvfp4_dequantize_cuda(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& global_scale,
                           at::Tensor& out, int64_t hadamard_mask) {
  check_cuda(data, "data");
  TORCH_CHECK(data.is_contiguous() && data.scalar_type() == at::kByte, "data must be contiguous uint8");
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2, "out must be contiguous [rows, K]");
  const int64_t rows = out.size(0), k = out.size(1);
  TORCH_CHECK(k % 16 == 0 && data.numel() == rows * k / 2, "data must be [rows, K/2] for out [rows, K]");
  TORCH_CHECK(scale.is_contiguous() && scale.scalar_type() == at::kByte && scale.numel() == rows * k / 16,
              "scale must be contiguous uint8 [rows, K/16]");
  TORCH_CHECK(global_scale.scalar_type() == at::kFloat && global_scale.numel() == 1, "global_scale must be fp32 [1]");
  check_aligned16(out, "out");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data.data_ptr()) % 8 == 0, "data must be 8-byte aligned");
  const c10::cuda::CUDAGuard guard(data.device());
  NVFP4DequantizeParams p;
  p.data = data.data_ptr<uint8_t>();
  p.scale = scale.data_ptr<uint8_t>();
  p.global_scale = global_scale.data_ptr<float>();
  p.out = out.data_ptr();
  p.out_dtype = to_dtype(out, "out");
  p.rows = rows;
  p.k = k;
  p.hadamard_mask = static_cast<int>(hadamard_mask);
  check_launch(nvfp4_dequantize(p, c10::cuda::getCurrentCUDAStream()), "nvfp4_dequantize");
}

void check_on(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  LL_CHECK(t.device() == ref.device(), "%s must be on x's device (cuda:%d), got %s:%d", name,
           static_cast<int>(ref.device().index()), t.is_cuda() ? "cuda" : "a non-CUDA device",
           static_cast<int>(t.device().index()));
}

void nvfp4_gemv_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                     const at::Tensor& w_global_scale, const std::optional<at::Tensor>& x_global_scale,
                     const std::optional<at::Tensor>& bias, at::Tensor& out, int64_t splits, int64_t variant,
                     int64_t k_unroll, int64_t ablate) {
  check_cuda(x, "x");
  LL_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16,
           "x must be bf16 [M, K] with a contiguous last dim, got %s with %d dims", dtype_name(x),
           static_cast<int>(x.dim()));
  const int64_t m = x.size(0), k = x.size(1);
  LL_CHECK(m >= 1 && m <= 64, "x: M must be in [1, 64], got %lld", static_cast<long long>(m));
  LL_CHECK(k >= 128 && k % 128 == 0, "x: K must be a positive multiple of 128, got %lld", static_cast<long long>(k));
  check_aligned16(x, "x");
  TORCH_CHECK(x.stride(0) >= k && x.stride(0) % 8 == 0, "x: row stride must be >= K and a multiple of 8 elements");
  check_on(w, x, "w");
  LL_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kByte && w.size(1) * 2 == k,
           "w must be contiguous uint8 [N, K/2] for K=%lld, got %s [%lld, %lld]%s", static_cast<long long>(k),
           dtype_name(w), dim_or(w, 0), dim_or(w, 1), w.is_contiguous() ? "" : " (not contiguous)");
  const int64_t n = w.size(0);
  check_aligned16(w, "w");
  check_on(w_scale, x, "w_scale");
  TORCH_CHECK(w_scale.is_contiguous() && w_scale.scalar_type() == at::kByte && w_scale.numel() == n * k / 16,
              "w_scale must be contiguous uint8 [N, K/16]");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w_scale.data_ptr()) % 8 == 0, "w_scale must be 8-byte aligned");
  check_on(w_global_scale, x, "w_global_scale");
  TORCH_CHECK(w_global_scale.scalar_type() == at::kFloat && w_global_scale.numel() == 1,
              "w_global_scale must be fp32 [1]");
  if (x_global_scale) {
    check_on(*x_global_scale, x, "x_global_scale");
    TORCH_CHECK(x_global_scale->scalar_type() == at::kFloat && x_global_scale->numel() == 1,
                "x_global_scale must be fp32 [1]");
  }
  if (bias) {
    check_on(*bias, x, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(), "bias must be contiguous [N]");
  }
  check_on(out, x, "out");
  LL_CHECK(out.dim() == 2 && out.size(0) == m && out.size(1) == n && out.is_contiguous(),
           "out must be contiguous [M, N] = [%lld, %lld]", static_cast<long long>(m), static_cast<long long>(n));
  LL_CHECK(splits >= 0 && splits <= 8, "splits must be in [0, 8], got %lld", static_cast<long long>(splits));
  LL_CHECK(variant >= 0 && variant <= 3, "variant must be in [0, 3], got %lld", static_cast<long long>(variant));
  LL_CHECK(k_unroll == 0 || k_unroll == 1 || k_unroll == 2 || k_unroll == 4,
           "k_unroll must be 0, 1, 2 or 4, got %lld", static_cast<long long>(k_unroll));
  LL_CHECK(k_unroll == 0 || (k / 128) % k_unroll == 0, "k_unroll=%lld must divide K/128 = %lld",
           static_cast<long long>(k_unroll), static_cast<long long>(k / 128));
  const c10::cuda::CUDAGuard guard(x.device());
  NVFP4GemvParams p;
  p.x = x.data_ptr();
  p.stride_x = x.stride(0);
  p.w = w.data_ptr<uint8_t>();
  p.w_scale = static_cast<const uint8_t*>(w_scale.data_ptr());
  p.w_global_scale = w_global_scale.data_ptr<float>();
  p.x_global_scale = x_global_scale ? x_global_scale->data_ptr<float>() : nullptr;
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.bias_dtype = bias ? to_dtype(*bias, "bias") : DType::kF32;
  p.out = out.data_ptr();
  p.out_dtype = to_dtype(out, "out");
  p.m = m;
  p.n = n;
  p.k = k;
  p.splits = static_cast<int>(splits);
  p.variant = static_cast<int>(variant);
  p.k_unroll = static_cast<int>(k_unroll);
  p.ablate = static_cast<int>(ablate);
  check_launch(nvfp4_gemv(p, at::cuda::getCurrentCUDAStream()), "nvfp4_gemv");
}

void fp8_rowwise_quantize_cuda(const at::Tensor& x, at::Tensor& q, at::Tensor& scale, bool gelu, int64_t iters) {
  check_cuda(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [rows, K] with a contiguous last dim");
  LL_CHECK(x.scalar_type() == at::kBFloat16, "x must be bf16, got %s", dtype_name(x));
  const int64_t rows = x.size(0), k = x.size(1);
  LL_CHECK(k % 8 == 0 && x.stride(0) % 8 == 0, "x: K and the row stride must be multiples of 8, got %lld and %lld",
           static_cast<long long>(k), static_cast<long long>(x.stride(0)));
  check_aligned16(x, "x");
  check_on(q, x, "q");
  LL_CHECK((q.scalar_type() == at::kByte || q.scalar_type() == at::kFloat8_e4m3fn) && q.is_contiguous() &&
               q.dim() == 2 && q.size(0) == rows && q.size(1) == k,
           "q must be contiguous uint8/float8_e4m3fn [%lld, %lld], got %s of %lld dims",
           static_cast<long long>(rows), static_cast<long long>(k), dtype_name(q), static_cast<long long>(q.dim()));
  check_on(scale, x, "scale");
  LL_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == rows,
           "scale must be contiguous fp32 with %lld elements", static_cast<long long>(rows));
  FP8RowwiseQuantizeParams p;
  p.x = x.data_ptr();
  p.rows = rows;
  p.k = k;
  p.stride_row = x.stride(0);
  p.q = static_cast<uint8_t*>(q.data_ptr());
  p.scale = scale.data_ptr<float>();
  p.gelu = gelu;
  p.iters = static_cast<int>(iters);
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(fp8_rowwise_quantize(p, at::cuda::getCurrentCUDAStream()), "fp8_rowwise_quantize");
}

void check_kv_buffers(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& gs) {
  check_cuda(data, "data");
  TORCH_CHECK(data.dim() == 6 && data.size(0) == 2 && data.is_contiguous() && data.scalar_type() == at::kByte,
              "data must be contiguous uint8 [2, S, B, H, T, D/2]");
  const int64_t d = data.size(5) * 2;
  TORCH_CHECK(scale.is_contiguous() && scale.scalar_type() == at::kByte && scale.dim() == 6 &&
                  scale.sizes().slice(0, 5) == data.sizes().slice(0, 5) && scale.size(5) * 16 == d,
              "scale must be contiguous uint8 [2, S, B, H, T, D/16]");
  TORCH_CHECK(gs.is_contiguous() && gs.scalar_type() == at::kFloat && gs.dim() == 5 &&
                  gs.sizes().slice(0, 4) == data.sizes().slice(0, 4) && gs.size(4) == (data.size(4) + 127) / 128,
              "global_scale must be contiguous fp32 [2, S, B, H, ceil(T/128)]");
  TORCH_CHECK(d % 16 == 0, "head_dim must be a multiple of 16");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data.data_ptr()) % 8 == 0, "data must be 8-byte aligned");
}

void kv_cache_update_cuda(const at::Tensor& k, const at::Tensor& v, at::Tensor& data, at::Tensor& scale,
                          at::Tensor& global_scale, const at::Tensor& table, int64_t slot_index, int64_t scale_rule) {
  check_kv_buffers(data, scale, global_scale);
  check_cuda(k, "k");
  const int64_t slots = data.size(1), batch = data.size(2), heads = data.size(3), tokens = data.size(4);
  const int64_t d = data.size(5) * 2;
  TORCH_CHECK(k.dim() == 4 && k.size(0) == batch && k.size(1) == tokens && k.size(2) == heads && k.size(3) == d,
              "k must be [B, T, H, D] matching the cache");
  TORCH_CHECK(v.sizes() == k.sizes() && v.strides() == k.strides() && v.scalar_type() == k.scalar_type(),
              "v must have k's shape, strides and dtype");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(0) % 8 == 0 && k.stride(1) % 8 == 0 && k.stride(2) % 8 == 0,
              "k/v must have a contiguous last dim and strides that are multiples of 8 elements");
  check_aligned16(k, "k");
  check_aligned16(v, "v");
  TORCH_CHECK(d <= 256, "head_dim must be <= 256 for the CUDA update");
  TORCH_CHECK(table.scalar_type() == at::kInt && table.is_contiguous() && table.device() == data.device() &&
                  slot_index >= 0 && slot_index < table.numel(),
              "table must be int32 on the cache's device and slot_index inside it");
  TORCH_CHECK(scale_rule >= 0 && scale_rule <= 2, "scale_rule must be 0, 1 or 2");
  const c10::cuda::CUDAGuard guard(k.device());
  KVCacheUpdateParams p;
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.dtype = to_dtype(k, "k");
  p.stride_b = k.stride(0);
  p.stride_t = k.stride(1);
  p.stride_h = k.stride(2);
  p.batch = batch;
  p.tokens = tokens;
  p.heads = heads;
  p.head_dim = d;
  p.slots = slots;
  p.data = data.data_ptr<uint8_t>();
  p.scale = scale.data_ptr<uint8_t>();
  p.global_scale = global_scale.data_ptr<float>();
  p.slot = table.data_ptr<int32_t>() + slot_index;
  p.scale_rule = static_cast<int>(scale_rule);
  check_launch(kv_cache_update(p, at::cuda::getCurrentCUDAStream()), "kv_cache_update");
}

// The checks and launcher fields shared by both decodes: the cache buffers, the index table, and
// out_k / out_v as [B, n*T, H, D] (n > 0) with a contiguous last dim, on the cache's device, alike.
KVCacheDequantizeParams kv_dequantize_params(const at::Tensor& data, const at::Tensor& scale,
                                             const at::Tensor& global_scale, const at::Tensor& table,
                                             const at::Tensor& out_k, const at::Tensor& out_v) {
  check_kv_buffers(data, scale, global_scale);
  const int64_t slots = data.size(1), batch = data.size(2), heads = data.size(3), tokens = data.size(4);
  const int64_t d = data.size(5) * 2;
  TORCH_CHECK(table.scalar_type() == at::kInt && table.is_contiguous() && table.numel() == 2 + slots &&
                  table.device() == data.device(),
              "table must be int32 [2 + S] on the cache's device");
  TORCH_CHECK(out_k.dim() == 4 && out_k.size(0) == batch && out_k.size(2) == heads && out_k.size(3) == d &&
                  out_k.size(1) % tokens == 0 && out_k.size(1) > 0 && out_k.stride(3) == 1 &&
                  out_k.device() == data.device(),
              "out_k must be [B, n*T, H, D] with a contiguous last dim, on the cache's device");
  TORCH_CHECK(out_v.sizes() == out_k.sizes() && out_v.strides() == out_k.strides() &&
                  out_v.scalar_type() == out_k.scalar_type() && out_v.device() == data.device(),
              "out_v must be like out_k");
  check_aligned16(out_k, "out_k");
  check_aligned16(out_v, "out_v");
  KVCacheDequantizeParams p;
  p.data = data.data_ptr<uint8_t>();
  p.scale = scale.data_ptr<uint8_t>();
  p.global_scale = global_scale.data_ptr<float>();
  p.table = table.data_ptr<int32_t>();
  p.out_k = out_k.data_ptr();
  p.out_v = out_v.data_ptr();
  p.batch = batch;
  p.tokens = tokens;
  p.heads = heads;
  p.head_dim = d;
  p.slots = slots;
  p.n_chunks = out_k.size(1) / tokens;
  return p;
}

void kv_cache_dequantize_cuda(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& global_scale,
                              const at::Tensor& table, at::Tensor& out_k, at::Tensor& out_v) {
  KVCacheDequantizeParams p = kv_dequantize_params(data, scale, global_scale, table, out_k, out_v);
  TORCH_CHECK(out_k.is_contiguous() && out_v.is_contiguous(), "out_k and out_v must be contiguous");
  p.out_dtype = to_dtype(out_k, "out_k");
  const c10::cuda::CUDAGuard guard(data.device());
  check_launch(kv_cache_dequantize(p, at::cuda::getCurrentCUDAStream()), "kv_cache_dequantize");
}

void kv_cache_dequantize_fp8_cuda(const at::Tensor& data, const at::Tensor& scale, const at::Tensor& global_scale,
                                  const at::Tensor& table, at::Tensor& out_k, at::Tensor& out_v,
                                  const at::Tensor& inv_scale, int64_t items_per_thread) {
  KVCacheDequantizeFP8Params p;
  p.base = kv_dequantize_params(data, scale, global_scale, table, out_k, out_v);
  LL_CHECK(out_k.scalar_type() == at::kFloat8_e4m3fn, "out_k must be float8_e4m3fn, got %s", dtype_name(out_k));
  TORCH_CHECK(out_k.stride(0) % 16 == 0 && out_k.stride(1) % 16 == 0 && out_k.stride(2) % 16 == 0,
              "out_k/out_v strides must be multiples of 16 bytes");
  TORCH_CHECK(inv_scale.scalar_type() == at::kFloat && inv_scale.numel() == 2 && inv_scale.is_contiguous() &&
                  inv_scale.device() == data.device(),
              "inv_scale must be contiguous fp32 [2] on the cache's device");
  p.inv_scale = inv_scale.data_ptr<float>();
  p.stride_b = out_k.stride(0);
  p.stride_t = out_k.stride(1);
  p.stride_h = out_k.stride(2);
  p.items_per_thread = static_cast<int>(items_per_thread);
  const c10::cuda::CUDAGuard guard(data.device());
  check_launch(kv_cache_dequantize_fp8(p, at::cuda::getCurrentCUDAStream()), "kv_cache_dequantize_fp8");
}

}  // namespace
}  // namespace longlive

TORCH_LIBRARY(longlive_kernels, m) {
  m.def(
      "nvfp4_quantize_cuda(Tensor x, Tensor(a!) data, Tensor(b!) scale, Tensor(c!) global_scale, "
      "Tensor global_scale_in, Tensor(d!) amax, int scale_rule, bool stochastic, int seed, int hadamard_mask, bool block_2d, "
      "bool given_scale) -> ()");
  m.def(
      "nvfp4_dequantize_cuda(Tensor data, Tensor scale, Tensor global_scale, Tensor(a!) out, "
      "int hadamard_mask) -> ()");
  m.def(
      "kv_cache_update_cuda(Tensor k, Tensor v, Tensor(a!) data, Tensor(b!) scale, Tensor(c!) global_scale, "
      "Tensor table, int slot_index, int scale_rule) -> ()");
  m.def(
      "kv_cache_dequantize_cuda(Tensor data, Tensor scale, Tensor global_scale, Tensor table, Tensor(a!) out_k, "
      "Tensor(b!) out_v) -> ()");
  m.def(
      "kv_cache_dequantize_fp8_cuda(Tensor data, Tensor scale, Tensor global_scale, Tensor table, "
      "Tensor(a!) out_k, Tensor(b!) out_v, Tensor inv_scale, int items_per_thread) -> ()");
  m.def("fp8_rowwise_quantize_cuda(Tensor x, Tensor(a!) q, Tensor(b!) scale, bool gelu, int iters) -> ()");
  m.def(
      "nvfp4_gemv_cuda(Tensor x, Tensor w, Tensor w_scale, Tensor w_global_scale, Tensor? x_global_scale, "
      "Tensor? bias, Tensor(a!) out, int splits, int variant, int k_unroll, int ablate=0) -> ()");
}

TORCH_LIBRARY_IMPL(longlive_kernels, CUDA, m) {
  m.impl("kv_cache_update_cuda", &longlive::kv_cache_update_cuda);
  m.impl("kv_cache_dequantize_cuda", &longlive::kv_cache_dequantize_cuda);
  m.impl("kv_cache_dequantize_fp8_cuda", &longlive::kv_cache_dequantize_fp8_cuda);
  m.impl("nvfp4_quantize_cuda", &longlive::nvfp4_quantize_cuda);
  m.impl("nvfp4_dequantize_cuda", &longlive::nvfp4_dequantize_cuda);
  m.impl("nvfp4_gemv_cuda", &longlive::nvfp4_gemv_cuda);
  m.impl("fp8_rowwise_quantize_cuda", &longlive::fp8_rowwise_quantize_cuda);
}

// A plain Python module so `import longlive_kernels._C` loads the library (ops live in torch.ops).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
