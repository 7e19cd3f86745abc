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
  if (failures == 0) std::printf("test_launchers: all passed\n");
  return failures == 0 ? 0 : 1;
}
