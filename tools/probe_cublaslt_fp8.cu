// Which cuBLASLt FP8 algorithm is fastest for the row-wise-scaled GEMMs where the FP8 path misses
// issue 3's 1.4x (M = 1760, N = 3072)? torch._scaled_mm takes cuBLASLt's first heuristic result;
// this times every heuristic result and an exhaustive search over (algo, tile, stages, split-K,
// cluster) against cuBLASLt BF16 in the same process. Standalone; on the device:
//   I=$(python3 -c "import nvidia.cu13,os;print(os.path.dirname(nvidia.cu13.__file__))")
//   nvcc -arch=sm_90a -O2 -std=c++17 -I$I/include tools/probe_cublaslt_fp8.cu -L$I/lib \
//     -l:libcublasLt.so.13 -Xlinker -rpath=$I/lib -o /tmp/plt && /tmp/plt [--exhaustive]
// Timing: CUDA events, L2 flushed by reading 256 MB before each run, median of 30.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  printf("CUDA %s at %d\n", cudaGetErrorString(e_), __LINE__); exit(1); } } while (0)
#define LT(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { \
  printf("cuBLASLt status %d at %d\n", (int)s_, __LINE__); exit(1); } } while (0)

__global__ void fill_fp8(__nv_fp8_e4m3* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __nv_fp8_e4m3(((h & 0xffff) / 65536.0f - 0.5f) * 8.0f);
  }
}
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f));
  }
}
__global__ void fill_f32(float* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = 0.01f + 0.001f * (i % 7);
}
__global__ void read_all(const float4* p, size_t n, float* sink) {
  float4 acc = make_float4(0, 0, 0, 0);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float4 v = p[i]; acc.x += v.x; acc.y += v.y;
  }
  if (acc.x == 12345.f) *sink = acc.y;
}

struct Ctx { cublasLtHandle_t h; void* ws; size_t ws_bytes; float4* flush; float* sink; };

template <class F> float median_ms(Ctx& c, F run) {
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) run();
  std::vector<float> t;
  for (int i = 0; i < 30; ++i) {
    read_all<<<528, 512>>>(c.flush, (256u << 20) / 16, c.sink);
    CK(cudaEventRecord(a)); run(); CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
    float ms; CK(cudaEventElapsedTime(&ms, a, b)); t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Scale modes (cuBLASLt A = our weight, B = our activation):
//   0 outer: both OUTER_VEC_32F (row-wise, what torch._scaled_mm runs)
//   1 tensor: both SCALAR_32F (per-tensor)
//   2 block: weight BLK128x128_32F, activation VEC128_32F (DeepSeek-style 1x128 / 128x128)
//   3 mixed: weight SCALAR_32F, activation OUTER_VEC_32F
static const char* kModeName[] = {"row-wise (outer vec)", "per-tensor", "block 1x128 / 128x128",
                                  "weight tensor, activation row-wise"};

struct Problem {  // D[M, N] (row-major) = A[M, K] . B[N, K]^T, i.e. column-major D^T = B . A^T
  int M, N, K; bool fp8; int mode = 0;
  cublasLtMatmulDesc_t op; cublasLtMatrixLayout_t la, lb, ld;
  void *a, *b, *d; float *sa, *sb;
};

static void make(Problem& p) {
  auto dt = p.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  size_t el = p.fp8 ? 1 : 2;
  CK(cudaMalloc(&p.a, (size_t)p.M * p.K * el)); CK(cudaMalloc(&p.b, (size_t)p.N * p.K * el));
  CK(cudaMalloc(&p.d, (size_t)p.M * p.N * 2));
  size_t kb = p.K / 128 + 1;  // enough for every scale mode
  CK(cudaMalloc(&p.sa, p.M * kb * 4)); CK(cudaMalloc(&p.sb, p.N * kb * 4));
  if (p.fp8) {
    fill_fp8<<<1024, 256>>>((__nv_fp8_e4m3*)p.a, (size_t)p.M * p.K, 1);
    fill_fp8<<<1024, 256>>>((__nv_fp8_e4m3*)p.b, (size_t)p.N * p.K, 2);
  } else {
    fill_bf16<<<1024, 256>>>((__nv_bfloat16*)p.a, (size_t)p.M * p.K, 1);
    fill_bf16<<<1024, 256>>>((__nv_bfloat16*)p.b, (size_t)p.N * p.K, 2);
  }
  fill_f32<<<64, 256>>>(p.sa, p.M * kb); fill_f32<<<64, 256>>>(p.sb, p.N * kb);
  LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
  if (p.fp8) {
    // cuBLASLt's A is our weight B (N outer), its B our activation A (M outer).
    cublasLtMatmulMatrixScale_t modes[][2] = {
        {CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F},
        {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F},
        {CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F},
        {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F}};
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &modes[p.mode][0],
                                      sizeof modes[p.mode][0]));
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &modes[p.mode][1],
                                      sizeof modes[p.mode][1]));
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.sb, sizeof p.sb));
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p.sa, sizeof p.sa));
    int8_t fast = 1;
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  }
  LT(cublasLtMatrixLayoutCreate(&p.la, dt, p.K, p.N, p.K));
  LT(cublasLtMatrixLayoutCreate(&p.lb, dt, p.K, p.M, p.K));
  LT(cublasLtMatrixLayoutCreate(&p.ld, CUDA_R_16BF, p.N, p.M, p.N));
}

static cublasStatus_t launch(Ctx& c, Problem& p, const cublasLtMatmulAlgo_t* algo) {
  float one = 1.f, zero = 0.f;
  return cublasLtMatmul(c.h, p.op, &one, p.b, p.la, p.a, p.lb, &zero, p.d, p.ld, p.d, p.ld, algo,
                        c.ws, c.ws_bytes, 0);
}

static void describe(const cublasLtMatmulAlgo_t& a, char* out) {
  int id = 0, tile = 0, stages = 0, split = 0, swz = 0, red = 0, cluster = 0; size_t w;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w);
  sprintf(out, "algo %d tile %d stages %d splitK %d swz %d red %d cluster %d", id, tile, stages, split, swz,
          red, cluster);
}

static float heuristics(Ctx& c, Problem& f8, cublasLtMatmulPreference_t pref, float t_bf, char* best_desc) {
  cublasLtMatmulHeuristicResult_t res[64]; int n = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c.h, f8.op, f8.la, f8.lb, f8.ld, f8.ld, pref, 64, res, &n);
  printf("  -- FP8 %s: %d heuristic results (status %d)\n", kModeName[f8.mode], n, (int)st);
  char desc[256]; float best = 1e9;
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < n; ++i) {
    if (launch(c, f8, &res[i].algo) != CUBLAS_STATUS_SUCCESS) { cudaGetLastError(); continue; }
    float t = median_ms(c, [&] { launch(c, f8, &res[i].algo); });
    describe(res[i].algo, desc);
    printf("  FP8 heuristic #%2d %7.2f us  x%.3f BF16  waves %.2f  %s\n", i, t * 1e3, t_bf / t,
           res[i].wavesCount, desc);
    if (t < best) { best = t; strcpy(best_desc, desc); }
  }
  return best;
}

static float exhaustive(Ctx& c, Problem& f8, float best, char* best_desc, float t_bf) {
  // Every algo id x tile x split-K in {1,2,3,4} x cluster shapes the algo offers.
  char desc[256];
  int ids[256], nid = 0;
  LT(cublasLtMatmulAlgoGetIds(c.h, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_8F_E4M3,
                              CUDA_R_16BF, CUDA_R_16BF, 256, ids, &nid));
  int tried = 0;
  for (int k = 0; k < nid; ++k) {
    cublasLtMatmulAlgo_t algo;
    if (cublasLtMatmulAlgoInit(c.h, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_8F_E4M3, CUDA_R_8F_E4M3,
                               CUDA_R_16BF, CUDA_R_16BF, ids[k], &algo) != CUBLAS_STATUS_SUCCESS) continue;
    size_t w; int tiles[128]; int ntile = 0;
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_TILE_IDS, nullptr, 0, &w);
    ntile = std::min<int>(w / sizeof(int), 128);
    cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_TILE_IDS, tiles, ntile * sizeof(int), &w);
    int clusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
                      CUBLASLT_CLUSTER_SHAPE_1x2x1};
    if (ntile == 0) { tiles[0] = 0; ntile = 1; }
    for (int ti = 0; ti < ntile; ++ti)
      for (int ci = 0; ci < 4; ++ci)
        for (int split = 1; split <= 4; ++split) {
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tiles[ti], sizeof(int));
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &clusters[ci],
                                               sizeof(int));
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(int));
          cublasLtMatmulHeuristicResult_t chk;
          if (cublasLtMatmulAlgoCheck(c.h, f8.op, f8.la, f8.lb, f8.ld, f8.ld, &algo, &chk) !=
              CUBLAS_STATUS_SUCCESS || chk.workspaceSize > c.ws_bytes) continue;
          if (launch(c, f8, &algo) != CUBLAS_STATUS_SUCCESS) { cudaGetLastError(); continue; }
          ++tried;
          float t = median_ms(c, [&] { launch(c, f8, &algo); });
          if (t < best * 1.02f) {
            describe(algo, desc);
            printf("  FP8 exhaustive %7.2f us  x%.3f BF16  %s\n", t * 1e3, t_bf / t, desc);
          }
          if (t < best) { best = t; describe(algo, best_desc); }
        }
  }
  printf("  (%d exhaustive configurations tried)\n", tried);
  return best;
}

// Usage: probe [--exhaustive]   (the exhaustive search runs for the first shape and every scale mode)
int main(int argc, char** argv) {
  bool exh = argc > 1 && std::string(argv[1]) == "--exhaustive";
  Ctx c; LT(cublasLtCreate(&c.h));
  c.ws_bytes = 64u << 20; CK(cudaMalloc(&c.ws, c.ws_bytes));
  CK(cudaMalloc(&c.flush, 256u << 20)); CK(cudaMemset(c.flush, 0, 256u << 20)); CK(cudaMalloc(&c.sink, 4));
  int shapes[][3] = {{1760, 3072, 3072}, {1760, 3072, 14336}, {7040, 3072, 3072}};
  bool first = true;
  for (auto& s : shapes) {
    Problem bf{s[0], s[1], s[2], false};
    make(bf); CK(cudaDeviceSynchronize());
    double flop = 2.0 * s[0] * s[1] * s[2];
    cublasLtMatmulPreference_t pref; LT(cublasLtMatmulPreferenceCreate(&pref));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c.ws_bytes,
                                            sizeof c.ws_bytes));
    cublasLtMatmulHeuristicResult_t res[1]; int n = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(c.h, bf.op, bf.la, bf.lb, bf.ld, bf.ld, pref, 1, res, &n));
    float t_bf = median_ms(c, [&] { launch(c, bf, &res[0].algo); });
    printf("\n=== M %d N %d K %d: BF16 heuristic #0 %.2f us (%.0f TFLOP/s)\n", s[0], s[1], s[2], t_bf * 1e3,
           flop / t_bf / 1e9);
    for (int mode = 0; mode < 4; ++mode) {
      Problem f8{s[0], s[1], s[2], true, mode};
      make(f8); CK(cudaDeviceSynchronize());
      char best_desc[256] = "";
      float best = heuristics(c, f8, pref, t_bf, best_desc);
      if (exh && first) best = exhaustive(c, f8, best, best_desc, t_bf);
      if (best < 1e8)
        printf("  best FP8 %s: %.2f us x%.3f BF16 (%s)\n", kModeName[mode], best * 1e3, t_bf / best, best_desc);
    }
    first = false;
  }
  return 0;
}
