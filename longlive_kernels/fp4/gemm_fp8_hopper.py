"""Hopper (sm_90a) row-wise FP8 GEMM in Gluon: the FP8 path's kernel where cuBLAS leaves a wave empty.

``out[M, N] = (x[M, K] · x_scale[:, None]) · (w[N, K] · w_scale[:, None])ᵀ + bias`` with E4M3 operands,
FP32 row scales and a bf16/fp16 output: what ``fp8.fp8_gemm`` / ``gemm_fp8.fp8_linear`` compute with
``torch._scaled_mm`` (row-wise scales, fast accumulation).

Why a kernel of our own: at M = 1760 with N = 3072 (the q/k/v/o and FFN-down projections of one
5B chunk) ``_scaled_mm``'s 128 × 128 tiles (torch's CUTLASS row-wise kernel) fill 2.55 waves of the
H100's 132 SMs, and the FP8 path stayed at 1.29-1.38× cuBLAS BF16 against issue 3's ≥ 1.4×
(``bench/RESULTS.md``, sixteenth session). This kernel is ``gemm_hopper``'s pipeline without the
decode, and it shares that kernel's schedule:

- One CTA computes [BW = 128 weight rows × BT = 256 tokens] with 8 warps (2 warpgroups,
  ``wgmma.m64n256k32`` E4M3 × E4M3 → FP32, both operands from 128-byte-swizzled shared memory);
  TMA brings 128-byte k-tiles (BK = 128) into a STAGES-deep ring; wgmma i runs while k-tile i+1 is
  awaited, and the slot of k-tile i-1 is refilled once both warpgroups retired its wgmma.
- Fast accumulation, as ``_scaled_mm(use_fast_accum=True)``: the products stay in the tensor
  core's accumulator for the whole K (Hopper adds FP8 products with ~13 mantissa bits; the error is
  measured against the fp64 reference in ``tests/fp4/test_gemm_fp8_hopper.py``).
- The last partial wave of tiles is split along K (``gemm_hopper.tail_split``; the last program of
  a tile sums the FP32 partials in split order, so the result is deterministic).
- Epilogue: ``acc · w_scale[n] · x_scale[m] (+ bias[n])`` in FP32, one rounding, out through shared
  memory and a TMA store. TMA zero-fills out-of-range rows and K columns and clips the store: any M,
  and any K, N with ``K % 16 == 0`` and ``N % 8 == 0`` (16-byte row strides).
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

from .gemm_hopper import (
    GROUP,
    _aligned,
    _cdiv,
    _is_hopper,
    _num_sms,
    _sum_splits,
    _tile_coords,
    _workspace,
    tail_split,
)

BW, BT, BK = 128, 256, 128  # weight rows, tokens, K (bytes) per tile
NUM_WARPS = 8
STAGES = 4  # 4 × (16 KB w + 32 KB x) = 192 KB; the 64 KB epilogue tile reuses that space
# persistent, by token tile: 3 × 48 KB + a 64 KB epilogue tile of its own (the loads run on during an
# epilogue); 5 × 32 KB + 32 KB
WS_STAGES = {256: 3, 128: 5}
LOAD_REGS = 40  # registers of the TMA warp


@gluon.jit
def _fp8_hopper_kernel(
    w_desc,  # TMA over w [N, K] float8_e4m3fn, box [BW, BK]
    x_desc,  # TMA over x [M, K] float8_e4m3fn, box [BT, BK]
    out_desc,  # TMA over out [M, N] bf16/fp16, box [BT, BW]
    w_scale_ptr,  # [N] fp32
    x_scale_ptr,  # [M] fp32
    bias_ptr,  # [N] (HAS_BIAS)
    M,
    N,
    K,
    ws_ptr,  # [tail tiles · split, TW, TT] fp32 partial tiles (TAIL_SPLIT)
    sem_ptr,  # [tail tiles] int32 arrival counters, zero on entry and on exit (TAIL_SPLIT)
    n_whole,  # programs [0, n_whole) compute whole tiles; the rest split the last tiles' K (TAIL_SPLIT)
    split,
    kt_per_split,
    HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr,
    GROUP: gl.constexpr,
    TAIL_SPLIT: gl.constexpr,
    num_warps: gl.constexpr,
):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK: gl.constexpr = w_desc.block_type.shape[1]
    TT: gl.constexpr = out_desc.block_type.shape[0]
    gl.static_assert(TW == 128 and num_warps == 8, "one 64-row wgmma per warpgroup")
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 32])

    pid = gl.program_id(0)
    off_w, off_t, k_first, n_k, tile = _tile_coords(pid, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                                    TAIL_SPLIT)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, TW, TK], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, TT, TK], x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    nbytes: gl.constexpr = w_desc.block_type.nbytes + x_desc.block_type.nbytes
    for s in gl.static_range(STAGES - 1):
        pred = s < n_k
        mbarrier.expect(bars.index(s), nbytes, pred=pred)
        tma.async_copy_global_to_shared(w_desc, [off_w, (k_first + s) * TK], bars.index(s), w_bufs.index(s), pred)
        tma.async_copy_global_to_shared(x_desc, [off_t, (k_first + s) * TK], bars.index(s), x_bufs.index(s), pred)

    acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
    for i in range(n_k):
        slot = i % STAGES
        mbarrier.wait(bars.index(slot), (i // STAGES) & 1)
        acc = warpgroup_mma(w_bufs.index(slot), x_bufs.index(slot).permute((1, 0)), acc, use_acc=i > 0,
                            is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        # wgmma i-1 has retired in both warpgroups after this barrier: TMA may refill its slot
        gl.thread_barrier()
        nxt = i + STAGES - 1
        nslot = nxt % STAGES
        pred = nxt < n_k
        mbarrier.expect(bars.index(nslot), nbytes, pred=pred)
        tma.async_copy_global_to_shared(w_desc, [off_w, (k_first + nxt) * TK], bars.index(nslot),
                                        w_bufs.index(nslot), pred)
        tma.async_copy_global_to_shared(x_desc, [off_t, (k_first + nxt) * TK], bars.index(nslot),
                                        x_bufs.index(nslot), pred)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    gl.thread_barrier()  # no warpgroup still reads the ring the epilogue tile may reuse
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))
    finish = pid >= 0
    if TAIL_SPLIT:
        acc, finish = _sum_splits(acc, pid, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma, False)
    if finish:
        rows = off_w + gl.arange(0, TW, layout=gl.SliceLayout(1, mma))
        cols = off_t + gl.arange(0, TT, layout=gl.SliceLayout(0, mma))
        w_s = gl.load(w_scale_ptr + rows, mask=rows < N, other=0.0)
        x_s = gl.load(x_scale_ptr + cols, mask=cols < M, other=0.0)
        acc = acc * gl.expand_dims(w_s, 1) * gl.expand_dims(x_s, 0)
        if HAS_BIAS:
            bias = gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
            acc = acc + gl.expand_dims(bias, 1)
        c_smem = gl.allocate_shared_memory(out_desc.dtype, [TT, TW], out_desc.layout)
        c_smem.permute((1, 0)).store(acc.to(out_desc.dtype))
        fence_async_shared()
        gl.thread_barrier()  # the whole tile is in shared memory before one thread issues the TMA store
        tma.async_copy_shared_to_global(out_desc, [off_t, off_w], c_smem)
        tma.store_wait(pendings=0)


@gluon.jit
def _ws_load_partition(w_desc, x_desc, w_bufs, x_bufs, ready, empty, M, N, K, n_whole, split, kt_per_split,
                       n_units, GROUP: gl.constexpr, TAIL_SPLIT: gl.constexpr):
    """One warp: TMA of every k-tile of this program's work units into the ring, a slot at a time
    as the MMA warps release it (it runs ahead into the next unit while they run an epilogue)."""
    S: gl.constexpr = w_bufs.type.shape[0]
    TW: gl.constexpr = w_bufs.type.shape[1]
    TK: gl.constexpr = w_bufs.type.shape[2]
    TT: gl.constexpr = x_bufs.type.shape[1]
    nbytes: gl.constexpr = w_desc.block_type.nbytes + x_desc.block_type.nbytes
    it = 0
    for u in range(gl.program_id(0), n_units, gl.num_programs(0)):
        off_w, off_t, k_first, n_k, _ = _tile_coords(u, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                                     TAIL_SPLIT)
        for i in range(n_k):
            s = it % S
            mbarrier.wait(empty.index(s), ((it // S) & 1) ^ 1)  # (a fresh barrier passes phase 1)
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(w_desc, [off_w, (k_first + i) * TK], ready.index(s), w_bufs.index(s))
            tma.async_copy_global_to_shared(x_desc, [off_t, (k_first + i) * TK], ready.index(s), x_bufs.index(s))
            it += 1


@gluon.jit
def _ws_mma_partition(out_desc, w_scale_ptr, x_scale_ptr, bias_ptr, w_bufs, x_bufs, ready, empty, c_smem, M, N,
                      K, ws_ptr, sem_ptr, n_whole, split, kt_per_split, n_units, HAS_BIAS: gl.constexpr,
                      GROUP: gl.constexpr, TAIL_SPLIT: gl.constexpr):
    """Eight warps: async wgmma over the ring (slot of k-tile i-1 released once wgmma i-1 retired),
    then the unit's split sum and epilogue; the TMA store of a tile overlaps the next unit's loop."""
    S: gl.constexpr = w_bufs.type.shape[0]
    TW: gl.constexpr = w_bufs.type.shape[1]
    TK: gl.constexpr = w_bufs.type.shape[2]
    TT: gl.constexpr = x_bufs.type.shape[1]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 32])
    it = 0
    for u in range(gl.program_id(0), n_units, gl.num_programs(0)):
        off_w, off_t, _, n_k, tile = _tile_coords(u, M, N, K, n_whole, split, kt_per_split, TW, TT, TK,
                                                        GROUP, TAIL_SPLIT)
        acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
        for i in range(n_k):
            s = it % S
            mbarrier.wait(ready.index(s), (it // S) & 1)
            acc = warpgroup_mma(w_bufs.index(s), x_bufs.index(s).permute((1, 0)), acc, use_acc=i > 0,
                                is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            # wgmma i-1 has retired (the arrive synchronizes both warpgroups first): its slot is free
            mbarrier.arrive(empty.index((it + S - 1) % S), pred=i > 0)
            it += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((it + S - 1) % S))
        finish = u >= 0
        if TAIL_SPLIT:
            acc, finish = _sum_splits(acc, u, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma, False)
        if finish:
            rows = off_w + gl.arange(0, TW, layout=gl.SliceLayout(1, mma))
            cols = off_t + gl.arange(0, TT, layout=gl.SliceLayout(0, mma))
            w_s = gl.load(w_scale_ptr + rows, mask=rows < N, other=0.0)
            x_s = gl.load(x_scale_ptr + cols, mask=cols < M, other=0.0)
            acc = acc * gl.expand_dims(w_s, 1) * gl.expand_dims(x_s, 0)
            if HAS_BIAS:
                bias = gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
                acc = acc + gl.expand_dims(bias, 1)
            tma.store_wait(pendings=0)  # the previous tile's store has read c_smem
            gl.thread_barrier()
            c_smem.permute((1, 0)).store(acc.to(out_desc.dtype))
            fence_async_shared()
            gl.thread_barrier()
            tma.async_copy_shared_to_global(out_desc, [off_t, off_w], c_smem)
    tma.store_wait(pendings=0)
    return (it,)


@gluon.jit
def _fp8_ws_kernel(w_desc, x_desc, out_desc, w_scale_ptr, x_scale_ptr, bias_ptr, M, N, K, ws_ptr, sem_ptr, n_whole,
                   split, kt_per_split, n_units, HAS_BIAS: gl.constexpr, STAGES: gl.constexpr, GROUP: gl.constexpr,
                   TAIL_SPLIT: gl.constexpr, LOAD_REGS: gl.constexpr, num_warps: gl.constexpr):
    """Persistent, warp-specialized variant (arguments as :func:`_fp8_hopper_kernel`; ``n_units``
    work units, each a whole tile or a K-split of a tail tile, taken round-robin by the programs):
    a 1-warp TMA partition and the 8 MMA warps meet only at the ring's ready/empty mbarriers."""
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK: gl.constexpr = w_desc.block_type.shape[1]
    TT: gl.constexpr = out_desc.block_type.shape[0]
    gl.static_assert(TW == 128 and num_warps == 8, "one 64-row wgmma per warpgroup")
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, TW, TK], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, TT, TK], x_desc.layout)
    c_smem = gl.allocate_shared_memory(out_desc.dtype, [TT, TW], out_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    gl.warp_specialize([
        (_ws_mma_partition, (out_desc, w_scale_ptr, x_scale_ptr, bias_ptr, w_bufs, x_bufs, ready, empty, c_smem, M,
                             N, K, ws_ptr, sem_ptr, n_whole, split, kt_per_split, n_units, HAS_BIAS, GROUP,
                             TAIL_SPLIT)),
        (_ws_load_partition, (w_desc, x_desc, w_bufs, x_bufs, ready, empty, M, N, K, n_whole, split, kt_per_split,
                              n_units, GROUP, TAIL_SPLIT)),
    ], [1], [LOAD_REGS])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def supported(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether this kernel can run ``a @ bᵀ``: a Hopper GPU, E4M3 operands with 16-byte aligned rows
    (``K % 16 == 0``), ``N % 8 == 0``, bf16/fp16 output."""
    if a.device.type != "cuda" or out_dtype not in (torch.bfloat16, torch.float16):
        return False
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return False
    if not _is_hopper(a.device.index if a.device.index is not None else torch.cuda.current_device()):
        return False
    return b.shape[0] % 8 == 0 and a.shape[1] % 16 == 0 and _aligned(a) and _aligned(b)


def _slots(device: torch.device) -> int:
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def launch_plan(m: int, n: int, k: int, device: torch.device, max_split: int | None = None,
                bt: int = BT) -> tuple[int, int, int, int]:
    """(tiles, n_whole, split, k-tiles per split): one CTA per SM (``gemm_hopper.tail_split``)."""
    tiles = _cdiv(n, BW) * _cdiv(m, bt)
    cap = {} if max_split is None else {"max_split": max_split}
    return (tiles, *tail_split(tiles, _cdiv(k, BK), _slots(device), **cap))


def row_plan(m: int, n: int, slots: int) -> int:
    """Rows [0, m1) of the output in 256-token tiles and the rest in 128-token tiles (a second
    launch), m1 a multiple of 256 chosen for the fewest rounds of tiles over ``slots`` SMs, a
    128-token tile counting half (no decode: its wgmmas are half as long). M = 1760, N = 3072:
    1280 (120 + 96 tiles, 1.5 rounds, against 2 for 168 tiles of 256)."""
    num_w = _cdiv(n, BW)
    best, best_m1 = _cdiv(num_w * _cdiv(m, 256), slots), m
    for m1 in range(0, m, 256):
        rounds = _cdiv(num_w * (m1 // 256), slots) + 0.5 * _cdiv(num_w * _cdiv(m - m1, 128), slots) + 0.05
        if rounds < best:
            best, best_m1 = rounds, m1
    return best_m1


def _launch(a, a_scale, b, b_scale, bias, out, bt, persistent, stages, max_split) -> None:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, k = a.shape
    n = b.shape[0]
    f8 = gl.float8e4nv
    w_desc = TensorDescriptor.from_tensor(b, [BW, BK], gl.NVMMASharedLayout.get_default_for([BW, BK], f8))
    x_desc = TensorDescriptor.from_tensor(a, [bt, BK], gl.NVMMASharedLayout.get_default_for([bt, BK], f8))
    o_gl = gl.bfloat16 if out.dtype == torch.bfloat16 else gl.float16
    out_desc = TensorDescriptor.from_tensor(out, [bt, BW], gl.NVMMASharedLayout.get_default_for([bt, BW], o_gl))
    tiles, n_whole, split, per = launch_plan(m, n, k, a.device, max_split, bt)
    if split > 1:
        part, sem = _workspace(a.device, (tiles - n_whole) * split * BW * bt, tiles - n_whole)
    else:
        part, sem = b_scale, b_scale  # unused
    units = n_whole + (tiles - n_whole) * split
    bias_arg = bias if bias is not None else b_scale
    if persistent:
        _fp8_ws_kernel[(min(units, _slots(a.device)),)](
            w_desc, x_desc, out_desc, b_scale, a_scale, bias_arg, m, n, k, part, sem, n_whole, split, per, units,
            HAS_BIAS=bias is not None, STAGES=stages or WS_STAGES[bt], GROUP=GROUP, TAIL_SPLIT=split > 1,
            LOAD_REGS=LOAD_REGS, num_warps=NUM_WARPS,
        )
    else:
        _fp8_hopper_kernel[(units,)](
            w_desc, x_desc, out_desc, b_scale, a_scale, bias_arg, m, n, k, part, sem, n_whole, split, per,
            HAS_BIAS=bias is not None, STAGES=stages or STAGES, GROUP=GROUP, TAIL_SPLIT=split > 1,
            num_warps=NUM_WARPS,
        )


def gemm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
         bias: torch.Tensor | None, out_dtype: torch.dtype, *, persistent: bool = True, stages: int | None = None,
         max_split: int | None = None, bt: int | None = None, two_part: bool = False) -> torch.Tensor:
    """``(a · a_scale[:, None]) @ (b · b_scale[:, None])ᵀ + bias`` (check :func:`supported` first).

    a [M, K] / b [N, K] float8_e4m3fn, a_scale [M] / b_scale [N] fp32 contiguous, bias [N] or None;
    ``persistent`` picks the warp-specialized persistent kernel (else one CTA per work unit);
    ``max_split`` caps the K-split of the last wave's tiles (1: none); ``bt`` the token tile;
    ``two_part``: rows split between 256- and 128-token launches by :func:`row_plan` (no K split)."""
    m = a.shape[0]
    out = torch.empty((m, b.shape[0]), dtype=out_dtype, device=a.device)
    if two_part:
        m1 = row_plan(m, b.shape[0], _slots(a.device))
        if m1 > 0:
            _launch(a[:m1], a_scale[:m1], b, b_scale, bias, out[:m1], 256, persistent, stages, 1)
        if m1 < m:
            _launch(a[m1:], a_scale[m1:], b, b_scale, bias, out[m1:], 128, persistent, stages, 1)
        return out
    _launch(a, a_scale, b, b_scale, bias, out, bt or BT, persistent, stages, max_split)
    return out
