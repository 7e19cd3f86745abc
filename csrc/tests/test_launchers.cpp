// Host-side checks of the launchers that need no GPU: invalid parameters are rejected with
// cudaErrorInvalidValue before any device work.
#include <cstdio>

#include "longlive/launchers.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// `valid` with the fields `bad` changes must be rejected before any device work
template <typename Params, typename Launcher, typename Change>
static void expect_rejects(const Params& valid, Launcher launch, Change bad, const char* what) {
  Params p = valid;
  bad(p);
  expect(launch(p, nullptr) == cudaErrorInvalidValue, what);
}

int main() {
  longlive::NVFP4QuantizeParams q;
  q.rows = 4;
  q.k = 24;  // not a multiple of 16
  expect(longlive::nvfp4_quantize(q, nullptr) == cudaErrorInvalidValue, "quantize rejects K % 16 != 0");
  q.k = 0;
  expect(longlive::nvfp4_quantize(q, nullptr) == cudaErrorInvalidValue, "quantize rejects K == 0");
  q.k = 32;
  q.rows = 0;
  expect(longlive::nvfp4_quantize(q, nullptr) == cudaErrorInvalidValue, "quantize rejects rows == 0");

  longlive::NVFP4DequantizeParams d;
  d.rows = 2;
  d.k = 8;
  expect(longlive::nvfp4_dequantize(d, nullptr) == cudaErrorInvalidValue, "dequantize rejects K % 16 != 0");

  longlive::KVCacheDequantizeFP8Params f;  // a valid shape, then one bad field at a time
  alignas(16) static unsigned char out[16];
  static float inv[2] = {1.0f, 1.0f};
  f.base.batch = f.base.tokens = f.base.heads = f.base.slots = f.base.n_chunks = 1;
  f.base.head_dim = 128;
  f.base.out_k = f.base.out_v = out;
  f.inv_scale = inv;
  f.stride_b = f.stride_t = f.stride_h = 128;
  f.inv_scale = nullptr;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue, "fp8 decode rejects no inv_scale");
  f.inv_scale = inv;
  f.stride_t = 120;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue,
         "fp8 decode rejects a stride that is not a multiple of 16 bytes");
  f.stride_t = 128;
  f.base.out_v = out + 8;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue, "fp8 decode rejects unaligned out_v");
  f.base.out_v = out;
  f.items_per_thread = 3;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue, "fp8 decode rejects 3 items per thread");
  f.items_per_thread = 2;
  f.base.head_dim = 24;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue, "fp8 decode rejects head_dim % 16 != 0");
  f.base.head_dim = 128;
  f.base.tokens = int64_t(1) << 29;
  expect(longlive::kv_cache_dequantize_fp8(f, nullptr) == cudaErrorInvalidValue,
         "fp8 decode rejects a plane past 32-bit block indices");
  longlive::NVFP4GemvParams g;  // a valid shape, then one bad field at a time
  alignas(16) static unsigned char w[64 * 8], ws[64], x[2 * 128 * 2], o[2 * 4 * 4];
  static float gs = 1.0f;
  g.x = x;
  g.stride_x = 128;
  g.w = w;
  g.w_scale = ws;
  g.w_global_scale = &gs;
  g.out = o;
  g.m = 2;
  g.n = 4;
  g.k = 128;
  const auto gemv = longlive::nvfp4_gemv;
  expect_rejects(g, gemv, [](auto& p) { p.m = 65; }, "gemv rejects M > 64");
  expect_rejects(g, gemv, [](auto& p) { p.m = 0; }, "gemv rejects M == 0");
  expect_rejects(g, gemv, [](auto& p) { p.k = 144; }, "gemv rejects K % 128 != 0");
  expect_rejects(g, gemv, [](auto& p) { p.stride_x = 100; }, "gemv rejects a row stride below K");
  expect_rejects(g, gemv, [](auto& p) { p.stride_x = 132; }, "gemv rejects rows not 16-byte aligned");
  expect_rejects(g, gemv, [](auto& p) { p.w = w + 8; }, "gemv rejects an unaligned weight");
  expect_rejects(g, gemv, [](auto& p) { p.w_scale = ws + 4; }, "gemv rejects unaligned scales");
  expect_rejects(g, gemv, [](auto& p) { p.out = nullptr; }, "gemv rejects no output");
  expect_rejects(g, gemv, [](auto& p) { p.splits = 9; }, "gemv rejects 9 splits");
  expect_rejects(g, gemv, [](auto& p) { p.variant = 5; }, "gemv rejects variant 5");
  longlive::FP8RowwiseQuantizeParams r;
  alignas(16) static unsigned char rx[2 * 64 * 2], rq[2 * 64];
  static float rs[2];
  r.x = rx;
  r.q = rq;
  r.scale = rs;
  r.rows = 2;
  r.k = 64;
  r.stride_row = 64;
  const auto rowwise = longlive::fp8_rowwise_quantize;
  expect_rejects(r, rowwise, [](auto& p) { p.k = 60; }, "fp8 rowwise rejects K % 8 != 0");
  expect_rejects(r, rowwise, [](auto& p) { p.stride_row = 56; }, "fp8 rowwise rejects stride < K");
  expect_rejects(r, rowwise, [](auto& p) { p.x = rx + 8; }, "fp8 rowwise rejects unaligned x");
  expect_rejects(r, rowwise, [](auto& p) { p.q = nullptr; }, "fp8 rowwise rejects no output");
  expect_rejects(r, rowwise, [](auto& p) { p.iters = 5; }, "fp8 rowwise rejects 5 vectors/thread");
  expect_rejects(r, rowwise, [](auto& p) { p.iters = 1, p.k = p.stride_row = 8 * 512 + 8; },
                 "fp8 rowwise rejects a row over 512 threads");
  r.rows = 0;
  expect(longlive::fp8_rowwise_quantize(r, nullptr) == cudaSuccess, "fp8 rowwise: no rows, nothing launched");
  expect(longlive::fp8_rowwise_default_iters(3072) == 3 && longlive::fp8_rowwise_default_iters(14336) == 8 &&
             longlive::fp8_rowwise_default_iters(8) == 1,
         "fp8 rowwise default vectors per thread (3072: 3, 14336: 8, 8: 1)");
  if (failures == 0) std::printf("test_launchers: all passed\n");
  return failures == 0 ? 0 : 1;
}
