// Probe (issue 3, small M): how fast can one SM ring stream an NVFP4 weight out of HBM?
//
// The small-M W4A16 kernel (csrc/fp4/nvfp4_gemv.cu) with its MMAs ablated streams a 3072 × 14336 NVFP4
// weight at only ~1.8 TB/s. This probe times the weight stream alone, with no decode and no MMA, for
// four ways of moving the same bytes (H100, bench/RESULTS.md, twenty-third session: all four within ~5 %
// of each other, ~11 us for 22 MB, so the stream is not what limits that kernel):
//   linear   every thread reads 16-byte words of the whole buffer (grid-stride): the read ceiling
//   cp       the kernel's pattern: per stage, B contiguous bytes of each of R rows by cp.async, a
//            ring of S stages, plus the bf16 activation tile of M tokens from L2
//   tma      the same tile as one 2D tensor-map TMA copy per stage (mbarrier ring, one producer)
//   bulk     a pre-tiled layout: the stage is one contiguous R·B block, one 1D bulk copy
// Weight bytes only count toward TB/s (the activation tile is L2-resident). Timing: CUDA events,
// L2 flushed by reading a 256 MB buffer before each run (a memset would leave it full of dirty lines whose
// write-back costs the timed kernel ~4 us), median of 40.
//
// Build and run on the GPU host: nvcc -arch=sm_90a -O3 -std=c++17 tools/probe_weight_stream.cu -o
// /tmp/pws && /tmp/pws
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));               \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

__device__ uint32_t g_sink;
static int g_sms = 132;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- linear ------------------------------------------------------------------------------------------
__global__ void linear_read(const uint4* __restrict__ p, int64_t n16) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = __ldg(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) acc ^= __ldg(p + i).x;
  if (acc == 0x9E3779B9u) g_sink = acc;
}

// ---- cp.async ring ------------------------------------------------------------------------------------
template <int R, int B, int S, int M, int T>
__global__ void __launch_bounds__(T) ring_cp(const uint8_t* w, int64_t row_bytes, const uint8_t* x, int steps) {
  extern __shared__ __align__(128) uint8_t sm[];
  constexpr int kW = R * B, kX = M * 4 * B, kStage = kW + kX;
  const int tid = threadIdx.x;
  const int64_t row0 = int64_t(blockIdx.y) * R;
  const int64_t k0 = int64_t(blockIdx.x) * steps * B;
  auto load = [&](int i) {
    uint8_t* st = sm + (i % S) * kStage;
#pragma unroll
    for (int c = tid; c < kW / 16; c += T) {
      const int r = c / (B / 16), col = c % (B / 16);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(st + c * 16)),
                   "l"(w + (row0 + r) * row_bytes + k0 + int64_t(i) * B + col * 16));
    }
#pragma unroll
    for (int c = tid; c < kX / 16; c += T) {
      const int t = c / (4 * B / 16), col = c % (4 * B / 16);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(st + kW + c * 16)),
                   "l"(x + int64_t(t) * row_bytes * 4 + (k0 + int64_t(i) * B) * 4 + col * 16));
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  uint32_t acc = 0;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < steps) load(s);
    else asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int i = 0; i < steps; ++i) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 2));
    __syncthreads();
    if (i + S - 1 < steps) load(i + S - 1);
    else asm volatile("cp.async.commit_group;\n" ::);
    acc ^= reinterpret_cast<const uint32_t*>(sm + (i % S) * kStage)[tid];
  }
  if (acc == 0x9E3779B9u) g_sink = acc;
}

// ---- mbarrier ring (TMA 2D and 1D bulk) ------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint64_t* b, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(b)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(b)), "r"(bytes));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(b)));
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, int parity) {
  asm volatile(
      "{\n.reg .pred p;\nW: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W;\n}\n" ::"r"(
          smem_u32(b)),
      "r"(parity));
}
__device__ __forceinline__ void tma_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void bulk_1d(void* dst, const void* src, int bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

// kTiled = false: 2D TMA of the [R rows, B bytes] box at (k0 + i·B, row0); true: the stage is the
// contiguous block (tile y, step i) of a pre-tiled weight, one 1D bulk copy. The activation tile (M
// tokens × 4B bytes) comes by 2D TMA in 256-byte-wide boxes in both cases.
template <int R, int B, int S, int M, int CW, bool kTiled>
__global__ void __launch_bounds__(32 * (CW + 1)) ring_mbar(const __grid_constant__ CUtensorMap wmap,
                                                          const __grid_constant__ CUtensorMap xmap, const uint8_t* w,
                                                          int64_t row_bytes, int steps) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ uint64_t full[S], empty[S];
  uint8_t* sm = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // TMA boxes want alignment
  constexpr int kW = R * B, kX = M * 4 * B, kStage = kW + kX;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], CW);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const int row0 = blockIdx.y * R;
  const int kstep0 = blockIdx.x * steps;
  if (warp == 0) {
    if (lane == 0) {
      for (int i = 0; i < steps; ++i) {
        const int s = i % S;
        if (i >= S) mbar_wait(&empty[s], ((i / S) - 1) & 1);
        uint8_t* st = sm + s * kStage;
        mbar_expect_tx(&full[s], kStage);
        if constexpr (kTiled) {
          const int64_t tile = int64_t(blockIdx.y) * (row_bytes / B) + kstep0 + i;
          bulk_1d(st, w + tile * kW, kW, &full[s]);
        } else {
          tma_2d(st, &wmap, (kstep0 + i) * B, row0, &full[s]);
        }
        if constexpr (M > 0) {
#pragma unroll
          for (int c = 0; c < 4 * B / 256; ++c)
            tma_2d(st + kW + c * M * 256, &xmap, (kstep0 + i) * 4 * B + c * 256, 0, &full[s]);
        }
      }
    }
    return;
  }
  uint32_t acc = 0;
  for (int i = 0; i < steps; ++i) {
    const int s = i % S;
    mbar_wait(&full[s], (i / S) & 1);
    acc ^= reinterpret_cast<const uint32_t*>(sm + s * kStage)[threadIdx.x];
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  if (acc == 0x9E3779B9u) g_sink = acc;
}

// ---- host ------------------------------------------------------------------------------------------------
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static CUtensorMap make_map(void* base, uint64_t inner, uint64_t outer, uint32_t box_inner, uint32_t box_outer) {
  static EncodeTiled encode = nullptr;
  if (encode == nullptr) {
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000,
                                        cudaEnableDefault, &q));
  }
  CUtensorMap map;
  const cuuint64_t dims[2] = {inner, outer}, strides[1] = {inner};
  const cuuint32_t box[2] = {box_inner, box_outer}, estr[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, base, dims, strides, box, estr,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::printf("cuTensorMapEncodeTiled failed: %d\n", int(r));
    std::exit(1);
  }
  return map;
}

struct Bufs {
  uint8_t* w;
  uint8_t* x;
  void* flush;
  int64_t n, row_bytes;
};

template <class F>
static float time_ms(const Bufs& b, F&& launch) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) launch();
  CK(cudaGetLastError());
  std::vector<float> t;
  for (int i = 0; i < 40; ++i) {
    linear_read<<<g_sms * 8, 256>>>(reinterpret_cast<const uint4*>(b.flush), (256 << 20) / 16);  // clean L2
    CK(cudaEventRecord(e0));
    launch();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}


static void report(const char* name, const Bufs& b, float ms, int ctas) {
  std::printf("| %-34s | %6lld x %5lld | %5d | %8.2f | %6.2f |\n", name, (long long)b.n, (long long)b.row_bytes, ctas,
              ms * 1e3, double(b.n * b.row_bytes) / (ms * 1e-3) / 1e12);
}

static int pick_splits(int tiles, int row_steps, double per_sm) {
  int s = int((per_sm * g_sms) / tiles + 0.5);
  return std::max(1, std::min({s, 8, row_steps}));
}

template <int R, int B, int S, int M, int T>
static void run_cp(const Bufs& b, double per_sm) {
  constexpr int kSmem = S * (R * B + M * 4 * B);
  auto k = ring_cp<R, B, S, M, T>;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const int tiles = int(b.n / R), row_steps = int(b.row_bytes / B), splits = pick_splits(tiles, row_steps, per_sm);
  const int steps = row_steps / splits;
  const float ms = time_ms(b, [&] { k<<<dim3(splits, tiles), T, kSmem>>>(b.w, b.row_bytes, b.x, steps); });
  char name[96];
  std::snprintf(name, sizeof name, "cp R%d B%d S%d M%d T%d %.2f/SM", R, B, S, M, T, per_sm);
  report(name, b, ms * float(row_steps) / float(steps * splits), splits * tiles);
}

template <int R, int B, int S, int M, int CW, bool kTiled>
static void run_mbar(const Bufs& b, double per_sm) {
  constexpr int kSmem = S * (R * B + M * 4 * B) + 1024;
  auto k = ring_mbar<R, B, S, M, CW, kTiled>;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const CUtensorMap wmap = make_map(b.w, b.row_bytes, b.n, B, R);
  const CUtensorMap xmap = make_map(b.x, b.row_bytes * 4, M > 0 ? M : 1, 256, M > 0 ? M : 1);
  const int tiles = int(b.n / R), row_steps = int(b.row_bytes / B), splits = pick_splits(tiles, row_steps, per_sm);
  const int steps = row_steps / splits;
  const float ms =
      time_ms(b, [&] { k<<<dim3(splits, tiles), 32 * (CW + 1), kSmem>>>(wmap, xmap, b.w, b.row_bytes, steps); });
  char name[96];
  std::snprintf(name, sizeof name, "%s R%d B%d S%d M%d W%d %.2f/SM", kTiled ? "bulk" : "tma", R, B, S, M, CW, per_sm);
  report(name, b, ms * float(row_steps) / float(steps * splits), splits * tiles);
}

int main() {
  CK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s, %d SMs\n", prop.name, g_sms);
  std::printf("| pattern | rows x bytes | CTAs | us | TB/s |\n|---|---|---:|---:|---:|\n");
  const int64_t shapes[3][2] = {{14336, 1536}, {3072, 7168}, {3072, 1536}};  // (N, K/2): the issue's weights
  void* flush;
  CK(cudaMalloc(&flush, 256u << 20));
  for (const auto& sh : shapes) {
    Bufs b{};
    b.n = sh[0];
    b.row_bytes = sh[1];
    b.flush = flush;
    CK(cudaMalloc(&b.w, b.n * b.row_bytes));
    CK(cudaMalloc(&b.x, 64 * b.row_bytes * 4));
    CK(cudaMemset(b.w, 0x5A, b.n * b.row_bytes));
    CK(cudaMemset(b.x, 0x3C, 64 * b.row_bytes * 4));
    CK(cudaMemset(flush, 0x11, 256u << 20));
    for (int per_sm : {4, 8}) {
      const int64_t n16 = b.n * b.row_bytes / 16;
      const float ms = time_ms(b, [&] { linear_read<<<g_sms * per_sm, 256>>>(reinterpret_cast<const uint4*>(b.w), n16); });
      char name[64];
      std::snprintf(name, sizeof name, "linear 256 thr x %d/SM", per_sm);
      report(name, b, ms, g_sms * per_sm);
    }
    run_cp<64, 128, 4, 16, 128>(b, 2.25);  // the kernel today (variant 1, KU 2, M = 16)
    run_cp<64, 128, 4, 0, 128>(b, 2.25);
    run_cp<64, 256, 3, 16, 128>(b, 2.25);
    run_cp<64, 128, 8, 0, 128>(b, 2.25);
    run_mbar<64, 128, 4, 16, 4, false>(b, 2.25);
    run_mbar<64, 128, 4, 0, 4, false>(b, 2.25);
    run_mbar<64, 128, 8, 0, 4, false>(b, 2.25);
    run_mbar<64, 128, 8, 16, 4, false>(b, 1.0);
    run_mbar<64, 256, 4, 16, 4, false>(b, 2.25);
    run_mbar<128, 128, 6, 16, 4, false>(b, 1.0);
    run_mbar<128, 256, 4, 0, 4, false>(b, 1.0);
    run_mbar<64, 128, 4, 16, 4, true>(b, 2.25);
    run_mbar<64, 128, 8, 0, 4, true>(b, 2.25);
    run_mbar<128, 256, 4, 0, 4, true>(b, 1.0);
    CK(cudaFree(b.w));
    CK(cudaFree(b.x));
  }
  return 0;
}
