// Small-M W4A16 GEMM on Hopper: out[M, N] = x[M, K] · Wᵀ, W an NVFP4 weight [N, K], x bf16, M ≤ 64.
//
// At M ≤ 64 the GEMM is bound by reading W once (a 3072 × 14336 NVFP4 weight is 24.8 MB: 8 µs at
// 3 TB/s, against 88 MB for the same weight in bf16), so this kernel is built to keep HBM busy:
// - A CTA owns 16·RB·WARPS weight rows and a contiguous range of K; every stage (KU sub-steps of 128
//   elements: 64·KU contiguous bytes of each weight row, their E4M3 scales, the bf16 activation
//   tile) is fetched with cp.async into a 2-4-stage shared-memory ring, so each SM keeps tens of KB
//   of weight bytes in flight without spending registers on them (the Gluon GEMV of gemm_gemv.py
//   double-buffers in registers and streams at 0.5-1.3 TB/s).
// - Measured on an H100 (bench/RESULTS.md, twenty-second session): 1.35-1.76x cuBLAS BF16 at M = 16,
//   0.70-1.12x at M = 64. The cp.async stream alone (MMAs ablated) reaches ~1.8 TB/s, and the decode
//   plus MMAs cost about as much again; TMA 1D bulk copies per row were 2-7x slower.
// - Twenty-third session: any way of reading a 22 MB weight (a linear read, this ring, 2D tensor-map
//   TMA, 1D bulk copies of a pre-tiled layout) takes ~11 us (tools/probe_weight_stream.cu), so the
//   stream is not what to change. Under ncu the kernel issues on ~40 % of cycles, stalled on the
//   decode's dependent ALU chains; twice the warps per CTA (warp groups splitting each stage's K)
//   lifted issue to ~45 % and no shape got faster, so it was dropped.
// - Roles are swapped (outᵀ = W · xᵀ): weight rows are the M side of mma.sync m16n8k16, tokens its N
//   side (8 per n-tile), so M = 1 wastes 7/8 of a cheap instruction, not 63/64 of a wgmma tile.
// - K is permuted inside each step so that a thread's A fragment is one contiguous 16-byte run (32
//   codes, two NVFP4 blocks) of a weight row: quad lane q owns elements [32q, 32q + 32) and the MMA k
//   index 16s + 8j + 2q + e of MMA s is element 32q + 4s + 2j + e. The activations use the same map,
//   which makes a thread's B fragments for two MMAs one 16-byte run of a token row. A dot product
//   does not depend on the order of its terms, so the result is the plain GEMM.
// - E2M1 → bf16 is exact and costs 4 instructions per register pair: the 3 magnitude bits land on
//   bf16 bits 6..8 and the sign on bit 15 (value · 2^-126), and one bf16x2 multiply by s_block·2^118
//   makes e2m1 · s_block · 2^-8 (at most 6 significant bits: exact); the epilogue multiplies by 2^8.
// - When the row tiles alone do not fill the GPU, K is split over a thread-block cluster of up to 8
//   CTAs; each leaves its FP32 partial tile in its shared memory and every CTA sums one slice of
//   the tile over the cluster's CTAs (distributed shared memory) in rank order: deterministic, one
//   launch, no global workspace.
// The epilogue applies the tensor scale(s) and the bias in FP32 and rounds once to the output dtype.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "longlive/launchers.h"

// Shapes whose ring does not fit are only instantiated to read their size (launch_fitting).
#pragma nv_diag_suppress 177

namespace longlive {
namespace {

namespace cg = cooperative_groups;

constexpr int kSubK = 128;                  // K elements of one sub-step (4 quads × 32)
constexpr int kSubBytes = kSubK / 2;        // packed bytes of one weight row per sub-step
constexpr int kSubScales = kSubK / 16;      // E4M3 block scales of one weight row per sub-step
constexpr int kSubTokenBytes = kSubK * 2;   // bytes of one bf16 token row per sub-step
constexpr int kStageBudget = 110 * 1024;    // shared memory the ring may take (2..4 stages)
constexpr int kMaxSplits = 8;               // portable cluster size
constexpr int kMaxM = 64;

// MT n-tiles of 8 tokens; RB 16-row bands per warp; KU sub-steps of 128 K elements per stage (the
// bytes each weight row contributes to a stage: 64·KU contiguous, a whole cache line from KU = 2).
template <int MT, int RB, int WARPS, int KU>
struct Shape {
  static constexpr int kMT = MT;
  static constexpr int kRB = RB;
  static constexpr int kKU = KU;
  static constexpr int kThreads = 32 * WARPS;
  static constexpr int kRows = 16 * RB * WARPS;
  static constexpr int kTokens = 8 * MT;
  static constexpr int kStepK = kSubK * KU;
  static constexpr int kRowBytes = kSubBytes * KU;      // weight bytes of a row in a stage
  static constexpr int kRowScales = kSubScales * KU;    // scale bytes of a row in a stage
  static constexpr int kTokenBytes = kSubTokenBytes * KU;
  static constexpr int kWBytes = kRows * kRowBytes;
  static constexpr int kSBytes = kRows * kRowScales;
  static constexpr int kXBytes = kTokens * kTokenBytes;
  static constexpr int kStageBytes = kWBytes + kSBytes + kXBytes;
  static constexpr int kStages = kStageBudget / kStageBytes >= 4 ? 4 : (kStageBudget / kStageBytes >= 3 ? 3 : 2);
  static constexpr int kWChunksPerThread = kRows * kRowBytes / 16 / kThreads;  // = 2·RB·KU
  static constexpr int kSChunk = KU == 1 ? 8 : 16;                              // cp.async size of scales
  static constexpr int kSChunksPerRow = kRowScales / kSChunk;
  static constexpr int kSChunksPerThread = (kRows * kSChunksPerRow + kThreads - 1) / kThreads;
  static constexpr int kXChunksPerThread = (kTokens * kTokenBytes / 16 + kThreads - 1) / kThreads;
  // Independent accumulators per (band, n-tile): the MMAs of one k-step alternate between them, so
  // that small tiles are not one chain of dependent mma.sync (each ~30 cycles of latency).
  static constexpr int kAcc = MT * RB <= 2 ? 4 : (MT * RB <= 4 ? 2 : 1);
  static constexpr int kRedStride = kRows + 4;  // floats per token row of the partial tile (banks)
  static constexpr int kRedBytes = kTokens * kRedStride * 4;
  static constexpr int kSmem = kStages * kStageBytes > kRedBytes ? kStages * kStageBytes : kRedBytes;
};

// ---- PTX wrappers ----------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int kSel>
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "n"(kSel));
  return r;
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// c += A · B, A 16×16 (rows g, g+8 × k pairs), B 16×8, bf16 operands, FP32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---- decode -----------------------------------------------------------------------------------------

// Two E4M3 scale codes (byte 0: block 2q, byte 1: block 2q+1) → bf16x2 pairs (s·2^118, s·2^118).
// s·2^118 ≤ 448·2^118 < 2^127 and ≥ 2^-9·2^118: normal bf16, exact (4 significant bits).
__device__ __forceinline__ void scale_pairs(uint32_t codes, uint32_t (&pair)[2]) {
  const __half2_raw h2 = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes), __NV_E4M3);
  const float2 s = __half22float2(__half2(h2));
  const __nv_bfloat162 b = __floats2bfloat162_rn(s.x * 0x1p118f, s.y * 0x1p118f);
  const uint32_t bits = *reinterpret_cast<const uint32_t*>(&b);
  pair[0] = prmt<0x1010>(bits, 0);  // low half twice
  pair[1] = prmt<0x3232>(bits, 0);  // high half twice
}

// 8 E2M1 codes (one 32-bit word, element 2i + e = nibble e of byte i) → 4 bf16x2 registers, byte i →
// register i, times the scale pair. prmt's selector nibble 8 copies the sign of a byte whose top bit
// is clear: a zero byte.
__device__ __forceinline__ void decode_word(uint32_t w, uint32_t pair, uint32_t (&a)[4]) {
  const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
  uint32_t x[4] = {prmt<0x8480>(lo, hi), prmt<0x9591>(lo, hi), prmt<0xA6A2>(lo, hi), prmt<0xB7B3>(lo, hi)};
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = mul_bf16x2((x[i] * 0x1040u) & 0x81C081C0u, pair);
}

// 16-byte chunk c (0..15) of token t's row in the activation tile: XOR-swizzled so that the 8
// lanes of each LDS.128 phase (tokens g, g+1 × quads 0..3, chunk 4q + w) hit 8 different bank groups.
__device__ __forceinline__ int x_chunk(int t, int c) { return c ^ (((c >> 3) & 1) << 1) ^ (t & 1); }

// ---- pipeline ---------------------------------------------------------------------------------------

// This thread's cp.async sources at the CTA's first stage, and their places in a stage.
template <class S>
struct Sources {
  const uint8_t* w[S::kWChunksPerThread];  // weight chunks (rows past N clamped to N - 1: never stored)
  int w_dst[S::kWChunksPerThread];
  const uint8_t* s[S::kSChunksPerThread];  // scale chunks, or nullptr
  int s_dst[S::kSChunksPerThread];
  const char* x;                           // activation rows
  int64_t x_row_bytes;
  int m;
};

template <int kBytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  if constexpr (kBytes == 16) cp_async16(dst, src);
  else cp_async8(dst, src);
}

template <class S>
__device__ __forceinline__ void load_stage(uint8_t* stage, const Sources<S>& src, int ks, int tid) {
#pragma unroll
  for (int i = 0; i < S::kWChunksPerThread; ++i)
    cp_async16(stage + src.w_dst[i], src.w[i] + int64_t(ks) * S::kRowBytes);
#pragma unroll
  for (int i = 0; i < S::kSChunksPerThread; ++i)
    if (src.s[i] != nullptr) cp_async<S::kSChunk>(stage + src.s_dst[i], src.s[i] + int64_t(ks) * S::kRowScales);
  uint8_t* sx = stage + S::kWBytes + S::kSBytes;
  const char* x = src.x + int64_t(ks) * S::kTokenBytes;
#pragma unroll
  for (int i = 0; i < S::kXChunksPerThread; ++i) {  // chunk tid + i·kThreads of the tokens' chunks
    const int chunk = tid + i * S::kThreads, t = chunk / (16 * S::kKU), c = chunk % (16 * S::kKU);
    if (t < src.m)
      cp_async16(sx + t * S::kTokenBytes + ((c & ~15) | x_chunk(t, c & 15)) * 16, x + t * src.x_row_bytes + c * 16);
  }
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <class S>
__device__ __forceinline__ void compute_stage(const uint8_t* stage, float (&acc)[S::kAcc][S::kRB][S::kMT][4], int warp,
                                              int g, int q) {
#pragma unroll
  for (int u = 0; u < S::kKU; ++u) {  // sub-step u: bytes [64u, 64u + 64) of every row in the stage
    const uint8_t* sw = stage + u * kSubBytes;
    const uint8_t* ss = stage + S::kWBytes + u * kSubScales;
    const uint8_t* sx = stage + S::kWBytes + S::kSBytes + u * kSubTokenBytes;
    uint4 wlo[S::kRB], whi[S::kRB];
    uint32_t sp[S::kRB][2][2];
#pragma unroll
    for (int b = 0; b < S::kRB; ++b) {
      const int r = (warp * S::kRB + b) * 16 + g;
      wlo[b] = *reinterpret_cast<const uint4*>(sw + r * S::kRowBytes + q * 16);
      whi[b] = *reinterpret_cast<const uint4*>(sw + (r + 8) * S::kRowBytes + q * 16);
      scale_pairs(*reinterpret_cast<const uint16_t*>(ss + r * S::kRowScales + 2 * q), sp[b][0]);
      scale_pairs(*reinterpret_cast<const uint16_t*>(ss + (r + 8) * S::kRowScales + 2 * q), sp[b][1]);
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) {  // word t of the thread's 16 bytes: MMAs s = 2t, 2t + 1
      uint32_t alo[S::kRB][4], ahi[S::kRB][4];
#pragma unroll
      for (int b = 0; b < S::kRB; ++b) {
        decode_word(word_of(wlo[b], t), sp[b][0][t >> 1], alo[b]);
        decode_word(word_of(whi[b], t), sp[b][1][t >> 1], ahi[b]);
      }
#pragma unroll
      for (int nt = 0; nt < S::kMT; ++nt) {
        const int tok = nt * 8 + g;
        const uint4 xv =
            *reinterpret_cast<const uint4*>(sx + tok * S::kTokenBytes + x_chunk(tok, 4 * q + t) * 16);
#pragma unroll
        for (int b = 0; b < S::kRB; ++b) {
          const int c0 = (2 * t) % S::kAcc, c1 = (2 * t + 1) % S::kAcc;  // constant once unrolled
          mma_bf16(acc[c0][b][nt], alo[b][0], ahi[b][0], alo[b][1], ahi[b][1], xv.x, xv.y);
          mma_bf16(acc[c1][b][nt], alo[b][2], ahi[b][2], alo[b][3], ahi[b][3], xv.z, xv.w);
        }
      }
    }
  }
}

__device__ __forceinline__ float load_as_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case DType::kF16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

// Grid (splits, row tiles), cluster (splits, 1, 1): CTA (r, y) owns rows [y·kRows, (y+1)·kRows) and the
// r-th of `splits` contiguous ranges of K steps.
template <class S>
__global__ void __launch_bounds__(S::kThreads) gemv_kernel(const NVFP4GemvParams p) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, g = (tid & 31) >> 2, q = tid & 3;
  const int splits = gridDim.x, split = blockIdx.x;
  const int64_t row0 = int64_t(blockIdx.y) * S::kRows;
  const int nks = static_cast<int>(p.k / S::kStepK);
  const int ks0 = split * nks / splits, steps = (split + 1) * nks / splits - ks0;

  Sources<S> src;
#pragma unroll
  for (int i = 0; i < S::kWChunksPerThread; ++i) {  // chunk tid + i·kThreads of the rows' 16-byte chunks
    const int chunk = tid + i * S::kThreads, r = chunk / (S::kRowBytes / 16), c = chunk % (S::kRowBytes / 16);
    const int64_t row = row0 + r < p.n ? row0 + r : p.n - 1;
    src.w[i] = p.w + row * (p.k / 2) + int64_t(ks0) * S::kRowBytes + c * 16;
    src.w_dst[i] = r * S::kRowBytes + c * 16;
  }
#pragma unroll
  for (int i = 0; i < S::kSChunksPerThread; ++i) {
    const int chunk = tid + i * S::kThreads, r = chunk / S::kSChunksPerRow, c = chunk % S::kSChunksPerRow;
    const int64_t row = row0 + r < p.n ? row0 + r : p.n - 1;
    src.s[i] = r < S::kRows ? p.w_scale + row * (p.k / 16) + int64_t(ks0) * S::kRowScales + c * S::kSChunk : nullptr;
    src.s_dst[i] = S::kWBytes + r * S::kRowScales + c * S::kSChunk;
  }
  src.x = static_cast<const char*>(p.x) + int64_t(ks0) * S::kTokenBytes;
  src.x_row_bytes = p.stride_x * 2;
  src.m = static_cast<int>(p.m);

  float acc[S::kAcc][S::kRB][S::kMT][4] = {};

#pragma unroll
  for (int s = 0; s < S::kStages - 1; ++s) {
    if (s < steps) load_stage<S>(smem + s * S::kStageBytes, src, s, tid);
    cp_async_commit();
  }
  for (int i = 0; i < steps; ++i) {
    cp_async_wait<S::kStages - 2>();
    __syncthreads();  // stage i landed for every thread; stage i - 1 is free for refilling
    const int j = i + S::kStages - 1;
    if (j < steps) load_stage<S>(smem + (j % S::kStages) * S::kStageBytes, src, j, tid);
    cp_async_commit();
    if (!(p.ablate & 1)) compute_stage<S>(smem + (i % S::kStages) * S::kStageBytes, acc, warp, g, q);
  }
  cp_async_wait<0>();
  __syncthreads();

  // FP32 partial tile [token][row] in this CTA's shared memory.
#pragma unroll
  for (int c = 1; c < S::kAcc; ++c)
#pragma unroll
    for (int b = 0; b < S::kRB; ++b)
#pragma unroll
      for (int nt = 0; nt < S::kMT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[0][b][nt][i] += acc[c][b][nt][i];
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int b = 0; b < S::kRB; ++b)
#pragma unroll
    for (int nt = 0; nt < S::kMT; ++nt) {
      const int r = (warp * S::kRB + b) * 16 + g, t = nt * 8 + 2 * q;
      red[t * S::kRedStride + r] = acc[0][b][nt][0];
      red[(t + 1) * S::kRedStride + r] = acc[0][b][nt][1];
      red[t * S::kRedStride + r + 8] = acc[0][b][nt][2];
      red[(t + 1) * S::kRedStride + r + 8] = acc[0][b][nt][3];
    }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();

  // CTA `split` finishes elements [split·E/splits, (split+1)·E/splits) of the M × kRows tile.
  const float alpha = 256.0f * *p.w_global_scale * (p.x_global_scale != nullptr ? *p.x_global_scale : 1.0f);
  const int total = p.m * S::kRows;
  const int end = (split + 1) * total / splits;
  for (int e = split * total / splits + tid; e < end; e += S::kThreads) {
    const int t = e / S::kRows, r = e % S::kRows;
    float sum = 0.0f;
    for (int from = 0; from < splits; ++from) sum += cluster.map_shared_rank(red, from)[t * S::kRedStride + r];
    const int64_t row = row0 + r;
    if (row < p.n) {
      float v = sum * alpha;
      if (p.bias != nullptr) v += load_as_float(p.bias, p.bias_dtype, row);
      store_from_float(p.out, p.out_dtype, int64_t(t) * p.n + row, v);
    }
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

cudaError_t current_device_sms(int* sms) {
  static int cache[64] = {};  // per device index; an SM count never changes
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev < 64 && cache[dev] > 0) {
    *sms = cache[dev];
    return cudaSuccess;
  }
  err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess && dev < 64) cache[dev] = *sms;
  return err;
}

template <class S>
cudaError_t launch(const NVFP4GemvParams& p, int splits, cudaStream_t stream) {
  const auto kernel = gemv_kernel<S>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmem);
  if (err != cudaSuccess) return err;
  const int64_t tiles = (p.n + S::kRows - 1) / S::kRows;
  if (tiles > 65535) return cudaErrorInvalidValue;
  if (splits <= 0) {
    // From the H100 sweep (tools/probe_gemv.py --cuda): up to 16 tokens the kernel is bound by the
    // weight stream and wants ~2.25 CTAs per SM (beyond 4 splits no shape gained); with more tokens
    // it is bound by its MMAs, and extra splits only add activation re-reads and partial sums: one
    // CTA per SM.
    int sms = p.num_sms;
    if (sms <= 0 && (err = current_device_sms(&sms)) != cudaSuccess) return err;
    const int64_t target = S::kMT <= 2 ? (int64_t(sms) * 9 + 2) / 4 : sms;
    splits = static_cast<int>(S::kMT <= 2 ? (target + tiles / 2) / tiles : target / tiles);
    if (S::kMT <= 2 && splits > 4) splits = 4;
  }
  const int nks = static_cast<int>(p.k / S::kStepK);
  splits = splits < 1 ? 1 : splits;
  splits = splits > kMaxSplits ? kMaxSplits : splits;
  splits = splits > nks ? nks : splits;

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(splits, static_cast<unsigned>(tiles), 1);
  cfg.blockDim = dim3(S::kThreads, 1, 1);
  cfg.dynamicSmemBytes = S::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = splits;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  err = cudaLaunchKernelEx(&cfg, kernel, p);
  return err != cudaSuccess ? err : cudaGetLastError();
}

constexpr int kMaxSmem = 227 * 1024;

// The shape with the most sub-steps per stage, up to KU, whose ring fits in shared memory (KU = 1
// always fits).
template <int MT, int RB, int WARPS, int KU>
cudaError_t launch_fitting(const NVFP4GemvParams& p, cudaStream_t stream) {
  if constexpr (KU > 1 && Shape<MT, RB, WARPS, KU>::kSmem > kMaxSmem) {
    return launch_fitting<MT, RB, WARPS, KU / 2>(p, stream);
  } else {
    return launch<Shape<MT, RB, WARPS, KU>>(p, p.splits, stream);
  }
}

template <int MT, int KU>
cudaError_t launch_variant(const NVFP4GemvParams& p, int variant, cudaStream_t stream) {
  switch (variant) {
    case 1: return launch_fitting<MT, 1, 4, KU>(p, stream);
    case 2: return launch_fitting<MT, 1, 8, KU>(p, stream);
    case 3: return launch_fitting<MT, 2, 8, KU>(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <int MT>
cudaError_t launch_ku(const NVFP4GemvParams& p, int variant, int ku, cudaStream_t stream) {
  switch (ku) {
    case 1: return launch_variant<MT, 1>(p, variant, stream);
    case 2: return launch_variant<MT, 2>(p, variant, stream);
    case 4: return launch_variant<MT, 4>(p, variant, stream);
  }
  return cudaErrorInvalidValue;
}

bool aligned(const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace

int nvfp4_gemv_default_variant(int64_t m) { return m <= 16 ? 1 : (m <= 32 ? 2 : 3); }

cudaError_t nvfp4_gemv(const NVFP4GemvParams& p, cudaStream_t stream) {
  if (p.m < 1 || p.m > kMaxM || p.n < 1 || p.k < kSubK || p.k % kSubK != 0) return cudaErrorInvalidValue;
  if (p.x == nullptr || p.w == nullptr || p.w_scale == nullptr || p.w_global_scale == nullptr || p.out == nullptr)
    return cudaErrorInvalidValue;
  if (!aligned(p.x, 16) || (p.stride_x * 2) % 16 != 0 || p.stride_x < p.k || !aligned(p.w, 16) ||
      !aligned(p.w_scale, 8))
    return cudaErrorInvalidValue;
  if (p.splits < 0 || p.splits > kMaxSplits || p.variant < 0 || p.variant > 3) return cudaErrorInvalidValue;
  if (p.k_unroll != 0 && p.k_unroll != 1 && p.k_unroll != 2 && p.k_unroll != 4) return cudaErrorInvalidValue;
  const int variant = p.variant > 0 ? p.variant : nvfp4_gemv_default_variant(p.m);
  // The largest sub-step count that divides the K steps (16-byte scale loads need 16-byte alignment).
  const int64_t subs = p.k / kSubK;
  int ku = p.k_unroll;
  if (ku == 0) {  // 128 contiguous bytes per row and stage; 256 for large weights streamed by few tokens
    const bool large = p.m <= 16 && p.n * p.k >= (int64_t(40) << 20);
    ku = subs % 4 == 0 && large ? 4 : (subs % 2 == 0 ? 2 : 1);
    if (!aligned(p.w_scale, 16)) ku = 1;
  }
  if (subs % ku != 0 || (ku > 1 && !aligned(p.w_scale, 16))) return cudaErrorInvalidValue;
  if (p.m <= 8) return launch_ku<1>(p, variant, ku, stream);
  if (p.m <= 16) return launch_ku<2>(p, variant, ku, stream);
  if (p.m <= 32) return launch_ku<4>(p, variant, ku, stream);
  return launch_ku<8>(p, variant, ku, stream);
}

}  // namespace longlive
