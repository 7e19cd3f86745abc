"""Warp-specialized variant of the Hopper W4A16 NVFP4 GEMM (``gemm_hopper.py``): the decode leaves the
MMA warps' instruction stream.

In ``gemm_hopper.py`` the same 8 warps decode k-tile i+1 and issue the wgmma of k-tile i, with two
CTA barriers per k-tile; its decode-free ablation runs 0.97-1.11× cuBLAS BF16 where the complete
kernel runs 0.82-0.91× (bench/RESULTS.md), so the decode is not hidden behind the tensor cores.
Here one CTA (the same 128 weight rows × 256 tokens tile, the same math and results) has two
partitions (``gl.warp_specialize``):

- **producer** (4 warps, ``setmaxnreg`` PRODUCER_REGS): TMA loads the packed codes of W and the
  activation tile of each k-tile into a ring of STAGES raw stages, decodes W (DECODE_ROWS rows per
  step, the inline-PTX decode of ``gemm_hopper``) into a ring of NDEC 128B-swizzled bf16/fp16 tiles,
  and signals each one through an mbarrier; it refills a raw stage once the consumers release it.
- **consumers** (8 warps, 2 warpgroups × 64 weight rows): wait for the decoded W and the
  activation tile, issue the asynchronous wgmma, and release the buffers of k-tile i-1 once
  ``warpgroup_mma_wait(1)`` has retired its wgmma. Epilogue (tail split, scales, bias, TMA store)
  as ``gemm_hopper``.

Barrier protocol, per buffer and use u (phase parity u & 1): raw_ready (TMA bytes landed; waited by
both partitions), raw_empty (consumers: wgmma of that k-tile retired), dec_ready (producer: decoded
tile stored and fenced), dec_empty (consumers: wgmma retired). The producer refills the stage of
k-tile i-1 only after it signalled k-tile i, so neither side waits on a release that depends on
its own next step.

Dense (bf16/fp16) activations only; W4A4 runs as ``predecode`` + this kernel. Compiled for sm_90a
on CPU machines by the tests; runs only on a GPU.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .gemm_hopper import _decode_to_smem, _epilogue, _load_scales, _scale_rows, _sum_splits, _tile_coords

STAGES = gl.constexpr(3)  # raw (TMA) stages: 3 × (4 KB W + 32 KB x) + 2 × 16 KB decoded + 64 KB output ≈ 204 KB
NDEC = gl.constexpr(2)  # decoded W buffers
PRODUCER_WARPS = gl.constexpr(4)
PRODUCER_REGS = gl.constexpr(96)
DECODE_ROWS = 128  # weight rows per decode step of the producer (one thread per row: 8 words in flight)


@gluon.jit
def _load_raw(w_desc, x_desc, w_raw, x_raw, bar, off_w, off_t, kt, pred):
    """TMA of k-tile ``kt``'s packed W codes and activation tile into one raw stage."""
    mbarrier.expect(bar, w_desc.block_type.nbytes + x_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [off_w, kt * w_desc.block_type.shape[1]], bar, w_raw, pred)
    tma.async_copy_global_to_shared(x_desc, [off_t, kt * x_desc.block_type.shape[1]], bar, x_raw, pred)


@gluon.jit
def _producer(w_desc, x_desc, w_scale_ptr, w_raw, x_raw, w_dec, raw_ready, raw_empty, dec_ready, dec_empty,
              M, N, K, stride_ws, n_whole, split, kt_per_split, EVEN_K: gl.constexpr, OP_DTYPE: gl.constexpr,
              GROUP: gl.constexpr, TAIL_SPLIT: gl.constexpr, SUB: gl.constexpr):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK2: gl.constexpr = w_desc.block_type.shape[1]
    TT: gl.constexpr = x_desc.block_type.shape[0]
    NB: gl.constexpr = TK2 // 8
    NSTAGE: gl.constexpr = w_raw.shape[0]
    ND: gl.constexpr = w_dec.shape[0]
    TPR: gl.constexpr = 32 * PRODUCER_WARPS // SUB  # threads per weight row in a decode step
    gl.static_assert(TW % SUB == 0 and NB % TPR == 0, "decode steps of SUB rows, whole blocks per thread")
    BYTES: gl.constexpr = gl.BlockedLayout([1, TK2 // TPR], [32 // TPR, TPR], [PRODUCER_WARPS, 1], [1, 0])
    BYTES3: gl.constexpr = gl.BlockedLayout([1, NB // TPR, 8], [32 // TPR, TPR, 1], [PRODUCER_WARPS, 1, 1],
                                            [2, 1, 0])
    SCALES: gl.constexpr = gl.SliceLayout(2, BYTES3)
    off_w, off_t, k_first, n_k, _ = _tile_coords(gl.program_id(0), M, N, K, n_whole, split, kt_per_split,
                                                 TW, TT, 2 * TK2, GROUP, TAIL_SPLIT)
    for p in gl.static_range(NSTAGE):
        _load_raw(w_desc, x_desc, w_raw.index(p), x_raw.index(p), raw_ready.index(p), off_w, off_t, k_first + p,
                  p < n_k)
    # decode steps of SUB rows (NSUB = 1, 2 or 4); each step's scales are prefetched a k-tile ahead
    NSUB: gl.constexpr = TW // SUB
    gl.static_assert(NSUB == 1 or NSUB == 2 or NSUB == 4, "1, 2 or 4 decode steps per tile")
    rows0 = _scale_rows(w_scale_ptr, off_w, N, stride_ws, SUB, SCALES)
    rows1 = rows0
    if NSUB >= 2:
        rows1 = _scale_rows(w_scale_ptr, off_w + SUB, N, stride_ws, SUB, SCALES)
    rows2 = rows0
    rows3 = rows1
    if NSUB == 4:
        rows2 = _scale_rows(w_scale_ptr, off_w + 2 * SUB, N, stride_ws, SUB, SCALES)
        rows3 = _scale_rows(w_scale_ptr, off_w + 3 * SUB, N, stride_ws, SUB, SCALES)
    sc0 = _load_scales(rows0, k_first, K, NB, EVEN_K, SCALES)
    sc1 = sc0
    if NSUB >= 2:
        sc1 = _load_scales(rows1, k_first, K, NB, EVEN_K, SCALES)
    sc2 = sc0
    sc3 = sc1
    if NSUB == 4:
        sc2 = _load_scales(rows2, k_first, K, NB, EVEN_K, SCALES)
        sc3 = _load_scales(rows3, k_first, K, NB, EVEN_K, SCALES)
    for i in range(n_k):
        s = i % NSTAGE
        d = i % ND
        nk = k_first + gl.minimum(i + 1, n_k - 1)  # next k-tile's scales (clamped: never past the last)
        nsc0 = _load_scales(rows0, nk, K, NB, EVEN_K, SCALES)
        nsc1 = nsc0
        if NSUB >= 2:
            nsc1 = _load_scales(rows1, nk, K, NB, EVEN_K, SCALES)
        nsc2 = nsc0
        nsc3 = nsc1
        if NSUB == 4:
            nsc2 = _load_scales(rows2, nk, K, NB, EVEN_K, SCALES)
            nsc3 = _load_scales(rows3, nk, K, NB, EVEN_K, SCALES)
        mbarrier.wait(raw_ready.index(s), (i // NSTAGE) & 1)
        mbarrier.wait(dec_empty.index(d), ((i // ND) & 1) ^ 1)
        src = w_raw.index(s)
        dst = w_dec.index(d)
        _decode_to_smem(src.slice(0, SUB), sc0, dst.slice(0, SUB), SUB, TK2, OP_DTYPE, BYTES, BYTES3)
        if NSUB >= 2:
            _decode_to_smem(src.slice(SUB, SUB), sc1, dst.slice(SUB, SUB), SUB, TK2, OP_DTYPE, BYTES, BYTES3)
        if NSUB == 4:
            _decode_to_smem(src.slice(2 * SUB, SUB), sc2, dst.slice(2 * SUB, SUB), SUB, TK2, OP_DTYPE, BYTES,
                            BYTES3)
            _decode_to_smem(src.slice(3 * SUB, SUB), sc3, dst.slice(3 * SUB, SUB), SUB, TK2, OP_DTYPE, BYTES,
                            BYTES3)
        fence_async_shared()  # generic-proxy stores → the consumers' wgmma (async proxy)
        gl.thread_barrier()  # every producer warp has stored its rows (and read stage s)
        mbarrier.arrive(dec_ready.index(d), count=1)
        # refill the stage of k-tile i-1: released once its wgmma retired (after k-tile i was issued)
        nxt = i - 1 + NSTAGE
        if (i >= 1) & (nxt < n_k):
            ps = (i - 1) % NSTAGE
            mbarrier.wait(raw_empty.index(ps), ((i - 1) // NSTAGE) & 1)
            _load_raw(w_desc, x_desc, w_raw.index(ps), x_raw.index(ps), raw_ready.index(ps), off_w, off_t,
                      k_first + nxt, True)
        sc0 = nsc0
        sc1 = nsc1
        sc2 = nsc2
        sc3 = nsc3


@gluon.jit
def _consumer(w_desc, x_desc, out_desc, bias_ptr, w_gs_ptr, x_gs_ptr, ws_ptr, sem_ptr, x_raw, w_dec, c_smem,
              raw_ready, raw_empty, dec_ready, dec_empty, M, N, K, n_whole, split, kt_per_split,
              X_GS: gl.constexpr, HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr, GROUP: gl.constexpr,
              TAIL_SPLIT: gl.constexpr):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK: gl.constexpr = 2 * w_desc.block_type.shape[1]
    TT: gl.constexpr = x_desc.block_type.shape[0]
    NSTAGE: gl.constexpr = x_raw.shape[0]
    ND: gl.constexpr = w_dec.shape[0]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 16])
    pid = gl.program_id(0)
    off_w, off_t, _, n_k, tile = _tile_coords(pid, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                              TAIL_SPLIT)
    acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
    for i in range(n_k):
        s = i % NSTAGE
        d = i % ND
        mbarrier.wait(dec_ready.index(d), (i // ND) & 1)
        mbarrier.wait(raw_ready.index(s), (i // NSTAGE) & 1)
        acc = warpgroup_mma(w_dec.index(d), x_raw.index(s).permute((1, 0)), acc, use_acc=i > 0, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        gl.thread_barrier()  # wgmma i-1 retired in both warpgroups before its buffers are released
        mbarrier.arrive(dec_empty.index((i + ND - 1) % ND), count=1, pred=i >= 1)
        mbarrier.arrive(raw_empty.index((i + NSTAGE - 1) % NSTAGE), count=1, pred=i >= 1)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    finish = pid >= 0
    if TAIL_SPLIT:
        acc, finish = _sum_splits(acc, pid, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma, False)
    if finish:
        _epilogue(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, False, X_GS, HAS_BIAS,
                  OP_DTYPE, TW, mma)


@gluon.jit
def _hopper_gemm_ws_kernel(
    w_desc,  # TMA over W packed codes [N, K/2] uint8, box [BW, BK/2]
    x_desc,  # TMA over x [M, K] bf16/fp16, box [BT, BK]
    out_desc,  # TMA over out [M, N], box [BT, BW]
    w_scale_ptr,  # [N, K/16] uint8 E4M3, row stride stride_ws
    bias_ptr,  # [N] (HAS_BIAS)
    w_gs_ptr,  # [1] fp32 tensor scale of W
    x_gs_ptr,  # [1] fp32 tensor scale of x (X_GS)
    ws_ptr,  # tail-split partials (TAIL_SPLIT), as gemm_hopper
    sem_ptr,  # tail-split counters (TAIL_SPLIT)
    M,
    N,
    K,
    stride_ws,
    n_whole,
    split,
    kt_per_split,
    X_GS: gl.constexpr,
    EVEN_K: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    OP_DTYPE: gl.constexpr,
    GROUP: gl.constexpr,
    TAIL_SPLIT: gl.constexpr,
    SUB: gl.constexpr,  # weight rows per decode step of the producer (32, 64 or 128)
    num_warps: gl.constexpr,
):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK2: gl.constexpr = w_desc.block_type.shape[1]
    TT: gl.constexpr = out_desc.block_type.shape[0]
    gl.static_assert(TW == 128 and TK2 == 32 and num_warps == 8, "a 128×64 W tile, 2 consumer warpgroups")
    OP_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16)
    w_raw = gl.allocate_shared_memory(gl.uint8, [STAGES, TW, TK2], w_desc.layout)
    x_raw = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    w_dec = gl.allocate_shared_memory(OP_DTYPE, [NDEC, TW, 2 * TK2], OP_SMEM)
    c_smem = gl.allocate_shared_memory(out_desc.dtype, [TT, TW], out_desc.layout)
    raw_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    raw_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    dec_ready = gl.allocate_shared_memory(gl.int64, [NDEC, 1], mbarrier.MBarrierLayout())
    dec_empty = gl.allocate_shared_memory(gl.int64, [NDEC, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(raw_ready.index(i), count=1)
        mbarrier.init(raw_empty.index(i), count=1)
    for i in gl.static_range(NDEC):
        mbarrier.init(dec_ready.index(i), count=1)
        mbarrier.init(dec_empty.index(i), count=1)
    gl.warp_specialize([
        (_consumer, (w_desc, x_desc, out_desc, bias_ptr, w_gs_ptr, x_gs_ptr, ws_ptr, sem_ptr, x_raw, w_dec, c_smem,
                     raw_ready, raw_empty, dec_ready, dec_empty, M, N, K, n_whole, split, kt_per_split, X_GS,
                     HAS_BIAS, OP_DTYPE, GROUP, TAIL_SPLIT)),
        (_producer, (w_desc, x_desc, w_scale_ptr, w_raw, x_raw, w_dec, raw_ready, raw_empty, dec_ready, dec_empty,
                     M, N, K, stride_ws, n_whole, split, kt_per_split, EVEN_K, OP_DTYPE, GROUP, TAIL_SPLIT, SUB)),
    ], [PRODUCER_WARPS], [PRODUCER_REGS])
