"""Persistent variant of the Hopper W4A16 NVFP4 GEMM (``gemm_hopper.py``): one CTA per SM walks its tiles.

Same tiles, decode, synchronisation and tail split as :mod:`~longlive_kernels.fp4.gemm_hopper`, whose
CTAs each compute one tile and exit. Per tile that costs the pipeline fill (the first k-tile's TMA
latency), the drain of the output's TMA store and a CTA launch: about 2 µs against ~37 µs of main
loop at K = 3072. Here a grid of one CTA per SM takes work units (whole tiles, then the K-splits of
the last wave's tiles) round-robin, and the TMA ring runs on across unit boundaries: a load cursor
(unit, k-tile) issues the next units' first k-tiles while the current one finishes and runs its
epilogue. The epilogue stores the tile straight from the wgmma registers (the ring keeps the shared
memory an epilogue tile would need), or, with ``TMA_STORE`` and a 3-deep ring, through shared memory
and TMA as the one-tile kernel.
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


@gluon.jit
def _issue(w_desc, x_desc, w_bufs, x_bufs, bars, slot, off_w, off_t, k_tile, pred):
    """TMA of k-tile ``k_tile`` of a unit's W rows / tokens into ring ``slot`` (nothing unless ``pred``)."""
    bar = bars.index(slot)
    mbarrier.expect(bar, w_desc.block_type.nbytes + x_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [off_w, k_tile * w_desc.block_type.shape[1]], bar, w_bufs.index(slot),
                                    pred)
    tma.async_copy_global_to_shared(x_desc, [off_t, k_tile * x_desc.block_type.shape[1]], bar, x_bufs.index(slot),
                                    pred)


@gluon.jit
def _persistent_kernel(
    w_desc,  # TMA over W packed codes [N, K/2] uint8, box [BW, BK/2]
    x_desc,  # TMA over x [M, K] bf16/fp16, box [BT, BK]
    out_desc,  # TMA over out [M, N] (TMA_STORE), box [BT, BW]
    out_ptr,  # out [M, N] bf16/fp16/fp32, row stride stride_om
    w_scale_ptr,  # [N, K/16] uint8 E4M3, row stride stride_ws
    bias_ptr,  # [N] (HAS_BIAS)
    w_gs_ptr,  # [1] fp32 tensor scale of W
    x_gs_ptr,  # [1] fp32 tensor scale of x (X_GS)
    M,
    N,
    K,
    stride_ws,
    stride_om,
    ws_ptr,  # split-K partials and counters, as gemm_hopper (TAIL_SPLIT)
    sem_ptr,
    n_whole,
    split,
    kt_per_split,
    n_units,  # whole tiles + split programs of the tail tiles
    X_GS: gl.constexpr,
    EVEN_K: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr,
    GROUP: gl.constexpr,
    TAIL_SPLIT: gl.constexpr,
    TMA_STORE: gl.constexpr,
    num_warps: gl.constexpr,
):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK2: gl.constexpr = w_desc.block_type.shape[1]
    TK: gl.constexpr = 2 * TK2
    TT: gl.constexpr = x_desc.block_type.shape[0]
    NB: gl.constexpr = TK // 16
    OP_DTYPE: gl.constexpr = x_desc.dtype
    gl.static_assert(TW == 128 and TK == 64 and num_warps == 8, "layouts below assume a 128×64 A tile, 8 warps")
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 16])
    OP_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16)
    W_TPR: gl.constexpr = 32 * num_warps // TW
    W_BYTES: gl.constexpr = gl.BlockedLayout([1, TK2 // W_TPR], [32 // W_TPR, W_TPR], [num_warps, 1], [1, 0])
    W_BYTES3: gl.constexpr = gl.BlockedLayout([1, NB // W_TPR, 8], [32 // W_TPR, W_TPR, 1], [num_warps, 1, 1],
                                              [2, 1, 0])
    W_SCALES: gl.constexpr = gl.SliceLayout(2, W_BYTES3)

    w_bufs = gl.allocate_shared_memory(gl.uint8, [STAGES, TW, TK2], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, TT, TK], x_desc.layout)
    w_dec = gl.allocate_shared_memory(OP_DTYPE, [2, TW, TK], OP_SMEM)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    if TMA_STORE:
        c_smem = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)

    pid = gl.program_id(0)
    step = gl.num_programs(0)
    # load cursor: the next k-tile to load is k-tile lk of unit lu
    lu = pid
    lw, lt, lkf, lnk, _ = gh._tile_coords(lu, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP, TAIL_SPLIT)
    lk = pid * 0
    for s in gl.static_range(STAGES - 1):
        _issue(w_desc, x_desc, w_bufs, x_bufs, bars, s, lw, lt, lkf + lk, lu < n_units)
        lk += 1
        if lk >= lnk:
            lu += step
            lw, lt, lkf, lnk, _ = gh._tile_coords(lu, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                                  TAIL_SPLIT)
            lk = 0

    it = pid * 0  # k-tiles consumed by this program (ring slot it % STAGES, phase (it // STAGES) & 1)
    for u in range(pid, n_units, step):
        off_w, off_t, k_first, n_k, tile = gh._tile_coords(u, M, N, K, n_whole, split, kt_per_split, TW, TT, TK,
                                                           GROUP, TAIL_SPLIT)
        w_srows = gh._scale_rows(w_scale_ptr, off_w, N, stride_ws, TW, W_SCALES)
        w_sc = gh._load_scales(w_srows, k_first, K, NB, EVEN_K, W_SCALES)
        acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
        for i in range(n_k):
            slot = it % STAGES
            mbarrier.wait(bars.index(slot), (it // STAGES) & 1)
            # w_dec[it % 2] was last read by wgmma it-2, retired in both warpgroups before the barrier
            # that ended step it-1
            gh._decode_to_smem(w_bufs.index(slot), w_sc, w_dec.index(it % 2), TW, TK2, OP_DTYPE, W_BYTES, W_BYTES3)
            w_sc = gh._load_scales(w_srows, k_first + gl.minimum(i + 1, n_k - 1), K, NB, EVEN_K, W_SCALES)
            fence_async_shared()
            gl.thread_barrier()
            acc = warpgroup_mma(w_dec.index(it % 2), x_bufs.index(slot).permute((1, 0)), acc, use_acc=i > 0,
                                is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            gl.thread_barrier()  # wgmma it-1 retired in both warpgroups: its slot takes the cursor's k-tile
            _issue(w_desc, x_desc, w_bufs, x_bufs, bars, (it + STAGES - 1) % STAGES, lw, lt, lkf + lk, lu < n_units)
            lk += 1
            if lk >= lnk:
                lu += step
                lw, lt, lkf, lnk, _ = gh._tile_coords(lu, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                                      TAIL_SPLIT)
                lk = 0
            it += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        finish = u >= 0
        if TAIL_SPLIT:
            acc, finish = gh._sum_splits(acc, u, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma, False)
        if finish:
            if TMA_STORE:
                if out_desc.block_type.shape[0] == TT:
                    gh._epilogue(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, False, X_GS,
                                 HAS_BIAS, OP_DTYPE, TW, mma)  # (it waits for its TMA store)
                else:
                    _store_halves(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, X_GS, HAS_BIAS,
                                  OP_DTYPE, TW, TT, mma)
            else:
                _store_tile(acc, off_w, off_t, M, N, out_ptr, stride_om, bias_ptr, w_gs_ptr, x_gs_ptr, X_GS, HAS_BIAS,
                            OP_DTYPE, TW, TT, mma)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))
    if TMA_STORE:
        tma.store_wait(pendings=0)


@gluon.jit
def _store_halves(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, X_GS: gl.constexpr,
                  HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr, TW: gl.constexpr, TT: gl.constexpr,
                  mma: gl.constexpr):
    """The epilogue of ``gemm_hopper._epilogue`` through a half-tile ``c_smem`` ([TT/2, TW]): the
    token halves of the accumulator (a register split) leave by two TMA stores; the second store
    drains while the next unit's main loop runs."""
    if OP_DTYPE == gl.bfloat16:
        alpha = gl.load(w_gs_ptr) * 256.0  # undo the 2^-8 of the bf16-decoded weights
    else:
        alpha = gl.load(w_gs_ptr)
    if X_GS:
        alpha = alpha * gl.load(x_gs_ptr)
    acc = acc * alpha
    if HAS_BIAS:
        rows = off_w + gl.arange(0, TW, layout=gl.SliceLayout(1, mma))
        bias = gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
        acc = acc + gl.expand_dims(bias, 1)
    lo, hi = gl.split(acc.reshape([TW, 2, TT // 2]).permute((0, 2, 1)))
    tma.store_wait(pendings=0)  # the previous store has read c_smem
    gl.thread_barrier()
    c_smem.permute((1, 0)).store(lo.to(out_desc.dtype))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(out_desc, [off_t, off_w], c_smem)
    tma.store_wait(pendings=0)
    gl.thread_barrier()
    c_smem.permute((1, 0)).store(hi.to(out_desc.dtype))
    fence_async_shared()
    gl.thread_barrier()
    tma.async_copy_shared_to_global(out_desc, [off_t + TT // 2, off_w], c_smem)


@gluon.jit
def _store_tile(acc, off_w, off_t, M, N, out_ptr, stride_om, bias_ptr, w_gs_ptr, x_gs_ptr, X_GS: gl.constexpr,
                HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr, TW: gl.constexpr, TT: gl.constexpr,
                mma: gl.constexpr):
    """The epilogue of ``gemm_hopper._epilogue`` (same FP32 arithmetic, one rounding), stored from the
    accumulator's registers with masked global stores."""
    if OP_DTYPE == gl.bfloat16:
        alpha = gl.load(w_gs_ptr) * 256.0  # undo the 2^-8 of the bf16-decoded weights
    else:
        alpha = gl.load(w_gs_ptr)
    if X_GS:
        alpha = alpha * gl.load(x_gs_ptr)
    acc = acc * alpha
    rows = off_w + gl.arange(0, TW, layout=gl.SliceLayout(1, mma))
    if HAS_BIAS:
        bias = gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
        acc = acc + gl.expand_dims(bias, 1)
    cols = off_t + gl.arange(0, TT, layout=gl.SliceLayout(0, mma))
    ptrs = out_ptr + gl.expand_dims(cols.to(gl.int64) * stride_om, 0) + gl.expand_dims(rows, 1)
    mask = gl.expand_dims(rows < N, 1) & gl.expand_dims(cols < M, 0)
    gl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm(a, b_data, b_scale, b_gs, bias, out_dtype, a_tensor_scale=None, *, stages=None, tma_store=False,
         half_store=False, max_split=None) -> torch.Tensor:
    """``out = a @ bᵀ (+ bias)`` for a dense bf16/fp16 ``a`` [M, K] and an NVFP4 weight (packed
    ``b_data`` [N, K/2] uint8, ``b_scale`` [N, K/16] E4M3, tensor scale ``b_gs`` [1] fp32) on Hopper;
    the operands must pass :func:`gemm_hopper.supported`. ``a_tensor_scale`` ([1] fp32) multiplies
    the result. ``stages``: ring depth (default 4, or 3 with ``tma_store``); ``max_split`` as
    :func:`gemm_hopper.gemm`."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m = a.shape[0]
    n, k2 = b_data.shape
    k = 2 * k2
    bt = 256
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    op_dtype = gh._gl_dtype(a.dtype)
    w_desc = TensorDescriptor.from_tensor(b_data, [gh.BW, gh.BK // 2], u8)
    x_desc = TensorDescriptor.from_tensor(a, [bt, gh.BK], gl.NVMMASharedLayout.get_default_for([bt, gh.BK], op_dtype))
    ob = bt // 2 if half_store else bt
    out_desc = TensorDescriptor.from_tensor(out, [ob, gh.BW],
                                            gl.NVMMASharedLayout.get_default_for([ob, gh.BW], gh._gl_dtype(out_dtype)))
    w_scale = b_scale.view(torch.uint8)
    tiles, n_whole, split, per = gh.launch_plan(m, n, k, bt, a.device, max_split)
    if split > 1:
        part, sem = gh._workspace(a.device, (tiles - n_whole) * split * gh.BW * bt, tiles - n_whole)
    else:
        part = sem = b_gs  # unused
    units = n_whole + (tiles - n_whole) * split
    grid = (min(units, gh._num_sms(a.device.index if a.device.index is not None else torch.cuda.current_device())),)
    _persistent_kernel[grid](
        w_desc, x_desc, out_desc, out, w_scale, bias if bias is not None else b_gs, b_gs,
        a_tensor_scale if a_tensor_scale is not None else b_gs, m, n, k, w_scale.stride(0), out.stride(0), part, sem,
        n_whole, split, per, units, X_GS=a_tensor_scale is not None, EVEN_K=k % gh.BK == 0,
        HAS_BIAS=bias is not None, STAGES=stages or (3 if tma_store and not half_store else 4), GROUP=gh.GROUP,
        TAIL_SPLIT=split > 1, TMA_STORE=tma_store or half_store, num_warps=gh.NUM_WARPS,
    )
    return out
