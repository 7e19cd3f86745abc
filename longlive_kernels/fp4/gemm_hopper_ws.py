"""Warp-specialized Hopper (sm_90a) W4A16 NVFP4 GEMM in Gluon: the E2M1 decode in its own warps.

``out[M, N] = x[M, K] · Wᵀ`` with W an NVFP4 weight [N, K] and x bf16/fp16, on the same tiles,
decode, tail split and epilogue as :mod:`~longlive_kernels.fp4.gemm_hopper`, whose single 8-warp
loop decodes k-tile i+1 while wgmma i runs: ncu put its tensor pipe at 77 % active against 90 %
without the decode, the gap being issue and latency in those 8 warps (bench/RESULTS.md, eighteenth
session). Here three partitions run concurrently and meet only at mbarriers:

- load (1 warp): TMA of the packed W k-tile into a ring of ``W_STAGES`` slots and of the x k-tile
  into a ring of ``X_STAGES`` slots;
- decode (``DEC_WARPS`` warps): packed W slot + block scales (global loads, one k-tile ahead) →
  the decoded bf16/fp16 operand in a ring of ``DEC_STAGES`` 128-byte-swizzled tiles;
- MMA (the default partition, 8 warps = 2 warpgroups): async ``wgmma.m64n256k16`` on the decoded W
  and the x slot; when wgmma i-1 retires, its decoded tile and x slot are released.

Each ring has a ready and an empty mbarrier per slot (count 1: Gluon's arrive synchronizes the
partition's warps, then one thread arrives). A generic-proxy access followed by an async-proxy one
(decoded stores → wgmma; LDS of a packed slot → its TMA refill) is ordered by a proxy fence before
the arrive. After the partitions join, the MMA warps run the epilogue (and the tail-split sum).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from . import gemm_hopper as gh

STAGES, DEC_STAGES = 4, 2  # 4 × (4 KB packed W + 32 KB x) + 2 × 16 KB decoded W
DEC_WARPS = 4
DEC_ROWS = 64  # of the 128 W rows of a tile; the MMA warps decode the others
DEC_REGS = 96  # registers per decode thread; the MMA warps get what is left of maxnreg · warps


@gluon.jit
def _issue_loads(w_desc, x_desc, w_bufs, x_bufs, ready, k_tile, slot, off_w, off_t, pred):
    """TMA of k-tile ``k_tile``'s packed W and x into ``slot`` (nothing where ``pred`` is false)."""
    bar = ready.index(slot)
    mbarrier.expect(bar, w_desc.block_type.nbytes + x_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [off_w, k_tile * w_desc.block_type.shape[1]], bar, w_bufs.index(slot),
                                    pred)
    tma.async_copy_global_to_shared(x_desc, [off_t, k_tile * x_desc.block_type.shape[1]], bar, x_bufs.index(slot),
                                    pred)


@gluon.constexpr_function
def _bytes_layout(rows, tk2, warps, blocks):
    """Packed codes [rows, tk2] (or, with ``blocks``, their [rows, tk2/8, 8] block view) with each
    thread owning a contiguous run of one row, as gemm_hopper's decode."""
    tpr = 32 * warps // rows  # threads per weight row
    if blocks:
        return gl.BlockedLayout([1, tk2 // 8 // tpr, 8], [32 // tpr, tpr, 1], [warps, 1, 1], [2, 1, 0])
    return gl.BlockedLayout([1, tk2 // tpr], [32 // tpr, tpr], [warps, 1], [1, 0])


@gluon.jit
def _scale_rows(w_scale_ptr, N, stride_ws, row0, R: gl.constexpr, TK2: gl.constexpr):
    """Block-scale row pointers of W rows [row0, row0 + R) for this partition's decode layout."""
    BYTES3: gl.constexpr = _bytes_layout(R, TK2, gl.num_warps(), True)
    return gh._scale_rows(w_scale_ptr, row0, N, stride_ws, R, gl.SliceLayout(2, BYTES3))


@gluon.jit
def _row_scales(srows, k_tile, K, R: gl.constexpr, TK2: gl.constexpr):
    """Block scales of k-tile ``k_tile`` for the rows of ``srows`` (:func:`_scale_rows`)."""
    BYTES3: gl.constexpr = _bytes_layout(R, TK2, gl.num_warps(), True)
    return gh._load_scales(srows, k_tile, K, TK2 // 8, False, gl.SliceLayout(2, BYTES3))


@gluon.jit
def _decode_rows(w_bufs, w_dec, s, sd, row, srows, sc, k_next, K, R: gl.constexpr):
    """Decode rows [row, row + R) of packed slot ``s`` into decoded tile ``sd`` with block scales
    ``sc``; returns the scales of k-tile ``k_next`` (the prefetch for the next call)."""
    TK2: gl.constexpr = w_bufs.type.shape[2]
    BYTES: gl.constexpr = _bytes_layout(R, TK2, gl.num_warps(), False)
    BYTES3: gl.constexpr = _bytes_layout(R, TK2, gl.num_warps(), True)
    gh._decode_to_smem(w_bufs.index(s).slice(row, R, dim=0), sc, w_dec.index(sd).slice(row, R, dim=0), R, TK2,
                       w_dec.type.element_ty, BYTES, BYTES3)
    return _row_scales(srows, k_next, K, R, TK2)


@gluon.jit
def _decode_partition(w_scale_ptr, N, stride_ws, K, bufs, bars, off_w, k_first, n_k, DEC_ROWS: gl.constexpr):
    w_bufs, _, w_dec = bufs
    ready, d_ready, d_empty = bars
    S: gl.constexpr = w_bufs.type.shape[0]
    SD: gl.constexpr = w_dec.type.shape[0]
    TK2: gl.constexpr = w_bufs.type.shape[2]
    srows = _scale_rows(w_scale_ptr, N, stride_ws, off_w, DEC_ROWS, TK2)
    sc = _row_scales(srows, k_first, K, DEC_ROWS, TK2)
    for i in range(n_k):
        s = i % S
        sd = i % SD
        mbarrier.wait(ready.index(s), (i // S) & 1)
        mbarrier.wait(d_empty.index(sd), ((i // SD) & 1) ^ 1)  # (fresh barriers pass phase 1)
        sc = _decode_rows(w_bufs, w_dec, s, sd, 0, srows, sc, k_first + gl.minimum(i + 1, n_k - 1), K, DEC_ROWS)
        # decoded stores → wgmma, and this slot's packed-code loads → its TMA refill: generic then
        # async proxy (the MMA warps refill the slot after they have waited on d_ready)
        fence_async_shared()
        mbarrier.arrive(d_ready.index(sd), count=1)


@gluon.jit
def _mma_partition(w_desc, x_desc, w_scale_ptr, N, stride_ws, K, bufs, bars, off_w, off_t, k_first, n_k,
                   TT: gl.constexpr, DEC_ROWS: gl.constexpr):
    w_bufs, x_bufs, w_dec = bufs
    ready, d_ready, d_empty = bars
    S: gl.constexpr = w_bufs.type.shape[0]
    SD: gl.constexpr = w_dec.type.shape[0]
    TW: gl.constexpr = w_bufs.type.shape[1]
    TK2: gl.constexpr = w_bufs.type.shape[2]
    OWN: gl.constexpr = TW - DEC_ROWS  # rows these warps decode themselves (rows DEC_ROWS..TW-1)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 16])
    for p in gl.static_range(S - 1):
        _issue_loads(w_desc, x_desc, w_bufs, x_bufs, ready, k_first + p, p, off_w, off_t, p < n_k)
    if OWN > 0:
        srows = _scale_rows(w_scale_ptr, N, stride_ws, off_w + DEC_ROWS, OWN, TK2)
        sc = _row_scales(srows, k_first, K, OWN, TK2)
    acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
    for i in range(n_k):
        s = i % S
        sd = i % SD
        mbarrier.wait(ready.index(s), (i // S) & 1)
        if OWN > 0:
            # tile sd was last read by wgmma i-SD, retired before iteration i-SD+1's arrive
            sc = _decode_rows(w_bufs, w_dec, s, sd, DEC_ROWS, srows, sc, k_first + gl.minimum(i + 1, n_k - 1), K,
                              OWN)
            fence_async_shared()
            gl.thread_barrier()
        mbarrier.wait(d_ready.index(sd), (i // SD) & 1)
        acc = warpgroup_mma(w_dec.index(sd), x_bufs.index(s).permute((1, 0)), acc, use_acc=i > 0, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        # wgmma i-1 has retired in this warpgroup; the arrive first synchronizes both warpgroups, so
        # the decoded tile and slot (i-1) % S are free (its codes were decoded before d_ready[i-1])
        prev = gl.maximum(i - 1, 0)
        mbarrier.arrive(d_empty.index(prev % SD), count=1, pred=i > 0)
        nxt = i + S - 1
        _issue_loads(w_desc, x_desc, w_bufs, x_bufs, ready, k_first + nxt, nxt % S, off_w, off_t, nxt < n_k)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    return (acc,)


@gluon.jit
def _hopper_ws_gemm_kernel(
    w_desc,  # TMA over W packed codes [N, K/2] uint8, box [BW, BK/2]
    x_desc,  # TMA over x [M, K] bf16/fp16, box [BT, BK]
    out_desc,  # TMA over out [M, N], box [BT, BW]
    w_scale_ptr,  # [N, K/16] uint8 E4M3, row stride stride_ws
    bias_ptr,  # [N] (HAS_BIAS)
    w_gs_ptr,  # [1] fp32 tensor scale of W
    x_gs_ptr,  # [1] fp32 tensor scale of x (X_GS)
    M,
    N,
    K,
    stride_ws,
    ws_ptr,  # split-K partials and counters, as gemm_hopper (TAIL_SPLIT)
    sem_ptr,
    n_whole,
    split,
    kt_per_split,
    X_GS: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr,
    DEC_STAGES: gl.constexpr,
    DEC_WARPS: gl.constexpr,
    DEC_REGS: gl.constexpr,
    DEC_ROWS: gl.constexpr,  # W rows of a tile decoded by the decode warps (the MMA warps decode the rest)
    GROUP: gl.constexpr,
    TAIL_SPLIT: gl.constexpr,
    num_warps: gl.constexpr,
):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK2: gl.constexpr = w_desc.block_type.shape[1]
    TK: gl.constexpr = x_desc.block_type.shape[1]
    TT: gl.constexpr = out_desc.block_type.shape[0]
    OP_DTYPE: gl.constexpr = x_desc.dtype
    gl.static_assert(TW == 128 and TK == 64 and TK2 == 32 and num_warps == 8, "128 × 64 W tiles, 8 MMA warps")
    gl.static_assert(TT == 128 or TT == 256, "token tile of 128 or 256 rows")
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 16])
    OP_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16)

    pid = gl.program_id(0)
    off_w, off_t, k_first, n_k, tile = gh._tile_coords(pid, M, N, K, n_whole, split, kt_per_split, TW, TT, TK,
                                                       GROUP, TAIL_SPLIT)
    w_bufs = gl.allocate_shared_memory(gl.uint8, [STAGES, TW, TK2], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, TT, TK], x_desc.layout)
    w_dec = gl.allocate_shared_memory(OP_DTYPE, [DEC_STAGES, TW, TK], OP_SMEM)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    d_ready = gl.allocate_shared_memory(gl.int64, [DEC_STAGES, 1], mbarrier.MBarrierLayout())
    d_empty = gl.allocate_shared_memory(gl.int64, [DEC_STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
    for s in gl.static_range(DEC_STAGES):
        mbarrier.init(d_ready.index(s), count=1)
        mbarrier.init(d_empty.index(s), count=1)
    bufs = (w_bufs, x_bufs, w_dec)
    bars = (ready, d_ready, d_empty)
    acc = gl.warp_specialize([
        (_mma_partition, (w_desc, x_desc, w_scale_ptr, N, stride_ws, K, bufs, bars, off_w, off_t, k_first, n_k, TT,
                          DEC_ROWS)),
        (_decode_partition, (w_scale_ptr, N, stride_ws, K, bufs, bars, off_w, k_first, n_k, DEC_ROWS)),
    ], [DEC_WARPS], [DEC_REGS])[0]

    finish = pid >= 0
    if TAIL_SPLIT:
        acc, finish = gh._sum_splits(acc, pid, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma, False)
    if finish:
        c_smem = gl.allocate_shared_memory(out_desc.dtype, [TT, TW], out_desc.layout)
        gh._epilogue(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, False, X_GS, HAS_BIAS,
                     OP_DTYPE, TW, mma)


def maxnreg(dec_warps: int) -> int:
    """The kernel's register cap: the register file over all its threads, in steps of 8. ptxas
    allocates every partition within it (setmaxnreg only moves registers between warpgroups at run
    time), and the MMA warps need ~160 for their 128-register accumulator: so 12 warps at most."""
    return (65536 // (32 * (gh.NUM_WARPS + dec_warps))) // 8 * 8


def gemm(a, b_data, b_scale, b_gs, bias, out_dtype, a_tensor_scale=None, *, token_rows=None, stages=None,
         dec_stages=None, dec_warps=None, dec_regs=None, dec_rows=None, max_split=None) -> torch.Tensor:
    """``out = a @ bᵀ (+ bias)`` for a dense bf16/fp16 ``a`` [M, K] and an NVFP4 weight (packed
    ``b_data`` [N, K/2] uint8, ``b_scale`` [N, K/16] E4M3, tensor scale ``b_gs`` [1] fp32) on Hopper;
    the operands must pass :func:`gemm_hopper.supported`. ``a_tensor_scale`` ([1] fp32) multiplies
    the result. Keyword overrides: the token tile, the two ring depths, the decode warps and their
    registers, and the tail-split cap (as :func:`gemm_hopper.gemm`)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m = a.shape[0]
    n, k2 = b_data.shape
    k = 2 * k2
    bt = token_rows or (128 if out_dtype == torch.float32 else 256)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    op_dtype = gh._gl_dtype(a.dtype)
    w_desc = TensorDescriptor.from_tensor(b_data, [gh.BW, gh.BK // 2], u8)
    x_desc = TensorDescriptor.from_tensor(a, [bt, gh.BK], gl.NVMMASharedLayout.get_default_for([bt, gh.BK], op_dtype))
    out_desc = TensorDescriptor.from_tensor(out, [bt, gh.BW],
                                            gl.NVMMASharedLayout.get_default_for([bt, gh.BW], gh._gl_dtype(out_dtype)))
    w_scale = b_scale.view(torch.uint8)
    tiles, n_whole, split, per = gh.launch_plan(m, n, k, bt, a.device, max_split)
    if split > 1:
        part, sem = gh._workspace(a.device, (tiles - n_whole) * split * gh.BW * bt, tiles - n_whole)
    else:
        part = sem = b_gs  # unused
    grid = (n_whole + (tiles - n_whole) * split,)
    dec_warps = dec_warps or DEC_WARPS
    _hopper_ws_gemm_kernel[grid](
        w_desc, x_desc, out_desc, w_scale, bias if bias is not None else b_gs, b_gs,
        a_tensor_scale if a_tensor_scale is not None else b_gs, m, n, k, w_scale.stride(0), part, sem, n_whole,
        split, per, X_GS=a_tensor_scale is not None, HAS_BIAS=bias is not None, STAGES=stages or STAGES,
        DEC_STAGES=dec_stages or DEC_STAGES, DEC_WARPS=dec_warps, DEC_REGS=dec_regs or DEC_REGS,
        DEC_ROWS=dec_rows or DEC_ROWS, GROUP=gh.GROUP,
        TAIL_SPLIT=split > 1, num_warps=gh.NUM_WARPS, maxnreg=maxnreg(dec_warps),
    )
    return out
