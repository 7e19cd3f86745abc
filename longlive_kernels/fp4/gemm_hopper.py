"""Hopper (sm_90a) NVFP4 GEMM in Gluon: TMA pipeline, operands decoded into shared memory, async wgmma.

``out[M, N] = x[M, K] · Wᵀ`` with W an NVFP4 weight [N, K] and x bf16/fp16 (W4A16) or NVFP4 (W4A4).
One CTA computes a [BW=128 weight rows × BT=256 tokens] tile with 8 warps (2 warpgroups,
``wgmma.m64n256k16``):

- A operand = the weight: TMA brings the packed codes of k-tile i into shared memory, every thread
  decodes 16-byte runs of one row with one inline-PTX routine per four bytes (outputs are already
  the bf16x2/f16x2 pairs of the operand) and stores them into a double-buffered, 128-byte-swizzled
  operand tile that wgmma reads from shared memory (SS). The decode of k-tile i overlaps the
  asynchronous wgmma of k-tile i-1 (``warpgroup_mma_wait(1)``).
- Why not registers (wgmma RS, the first version of this kernel): PTX forbids writing the A
  registers of a wgmma before a ``wgmma.wait_group`` retires it, and with a loop-carried A the
  registers of wgmma i are rewritten by the decode of k-tile i+1 while wgmma i still runs; the
  ptxas of Triton 3.6 (CUDA 12.8) allocated them that way (triton-lang/triton#9433, #11781 — fixed
  in ptxas 13.3), which gave wrong tiles and run-to-run differences on the H100.
  ``tests/fp4/test_gemm.py`` checks the compiled SASS for this hazard.
- B operand = the activations [BT, BK] in shared memory (128-byte swizzle): loaded by TMA (W4A16),
  or, for W4A4, TMA-loaded packed codes decoded the same way into a double-buffered fp16 tile.
- Synchronisation per k-tile: decoded stores → ``fence.proxy.async`` → CTA barrier → wgmma i →
  wait(≤1 pending) → barrier (wgmma i-1 retired in both warpgroups) → TMA refill of slot i-1.
- TMA zero-fills out-of-range rows/columns and clips the output store, so any M, any N and K not
  a multiple of the tile need no masks (scales and bias use masked loads).
- One CTA per SM (256-token tiles): where the tiles leave a partial last wave (N = 3072: 168 tiles
  at M = 1760, 672 at M = 7040, on 132 SMs), the last wave's tiles are split along K into up to 4
  programs (:func:`tail_split`); each stores an FP32 partial tile and the tile's last program to
  arrive sums them in split order (deterministic) before the epilogue. Whole tiles come first in
  the grid, so the split programs run as the whole ones finish.
- Block scales come from global memory (prefetched one k-tile ahead); the decoded operands are
  ``e2m1 · s_block · 2^-8`` (exact, ``gemm_dequant.py``), the tensor scales and bias are applied in
  the epilogue, and the tile leaves through shared memory and a TMA store.

Requirements (else :mod:`~longlive_kernels.fp4.gemm` falls back to its portable Triton kernel): a
Hopper GPU, ``K % 32 == 0`` and ``N % 8 == 0`` (TMA strides), 16-byte aligned contiguous operands,
bf16/fp16/fp32 output (fp32 uses 128-token tiles). The kernel is compiled for sm_90a on CPU machines
by the tests (register use, spills, wgmma, asynchronous MMAs and the register hazard are checked
there); it runs only on a GPU.
"""

from __future__ import annotations

import functools

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

BW, BT, BK = 128, 256, 64  # weight rows, tokens (128 for fp32 output), K per tile
NUM_WARPS = 8

# 4 packed bytes ($8) and 4 per-byte scale pairs ($4..$7... see constraints) → 4 registers, each the
# bf16x2 (element 2j, element 2j+1) of byte j times its scale. Lane trick: a clean nibble X in the
# low bits of each 16-bit lane becomes bf16 bits sign<<15 | mag<<6 = e2m1·2^-126 as
# (X · 0x1040) & 0x81C0: the product is X<<6 | X<<12 (the two copies do not overlap, nor reach the
# next lane), whose bits 6-8 are the magnitude and bit 15 the sign; the scale pair carries s·2^118.
# PRMT builds X_j = (lo nibble of byte j) | (hi nibble of byte j) << 16 from L = q & 0x0F0F0F0F and
# H = (q >> 4) & 0x0F0F0F0F; selector nibbles 8|j copy the (zero) sign bit of an L byte → 0x00.
def decode_bf16_ptx(scales: tuple[str, str, str, str], multiply: bool = True) -> str:
    """The bf16 decode of the packed word ``$4`` into ``$0..$3``, byte j scaled by ``scales[j]``.
    ``multiply=False`` builds each lane as ``(X<<6 on mask 0x71C0) | (X<<12 elsewhere)`` (two shifts
    and a LOP3 instead of an IMAD and an AND): the GEMV keeps it, whose 64-token configuration
    spills registers with the IMAD form (ptxas 12.8)."""
    sel = ("0x8480", "0x9591", "0xA6A2", "0xB7B3")
    lane = ("mul.lo.u32 x, x, 0x1040; and.b32 x, x, 0x81C081C0;" if multiply else
            "shl.b32 u, x, 6; shl.b32 v, x, 12; lop3.b32 x, u, v, 0x71C071C0, 0xE4;")
    rows = "".join(f"prmt.b32 x, l, h, {sel[j]}; {lane} mul.rn.bf16x2 ${j}, x, {scales[j]};\n" for j in range(4))
    return ("\n{\n.reg .b32 l, h, x, u, v;\nand.b32 l, $4, 0x0F0F0F0F;\nshr.u32 h, $4, 4;\n"
            "and.b32 h, h, 0x0F0F0F0F;\n" + rows + "}\n")


_DECODE_BF16 = gl.constexpr(decode_bf16_ptx(("$5", "$6", "$7", "$8")))

# fp16: each nibble becomes the E4M3 byte sign<<7 | mag<<2 (= e2m1·2^-6, exact; lanes built with one
# LOP3 each), PRMT interleaves the low/high-nibble bytes of 2 packed bytes, and the hardware
# cvt.rn.f16x2.e4m3x2 widens 2 elements per instruction; the scale pair carries s·2^6, so the decoded
# value is exactly e2m1·s (no 2^-8 factor on this path).
def decode_fp16_ptx(scales: tuple[str, str, str, str]) -> str:
    """The fp16 decode of the packed word ``$4`` into ``$0..$3``, byte j scaled by ``scales[j]``."""
    return ("\n{\n.reg .b32 t, e0, e1, p0, p1;\n.reg .b16 h0, h1, h2, h3;\n"
            "and.b32 t, $4, 0x07070707;\nshl.b32 t, t, 2;\nshl.b32 e0, $4, 4;\n"
            "lop3.b32 e0, t, e0, 0x80808080, 0xF8;\nand.b32 t, $4, 0x70707070;\nshr.u32 t, t, 2;\n"
            "lop3.b32 e1, t, $4, 0x80808080, 0xF8;\nprmt.b32 p0, e0, e1, 0x5140;\n"
            "prmt.b32 p1, e0, e1, 0x7362;\nmov.b32 {h0, h1}, p0;\nmov.b32 {h2, h3}, p1;\n"
            + "".join(f"cvt.rn.f16x2.e4m3x2 ${j}, h{j};\n" for j in range(4))
            + "".join(f"mul.rn.f16x2 ${j}, ${j}, {scales[j]};\n" for j in range(4)) + "}\n")


_DECODE_FP16 = gl.constexpr(decode_fp16_ptx(("$5", "$6", "$7", "$8")))

# log2 of the factor the decoded operand values carry (undone in the epilogue), per operand dtype.
BF16_OPERAND_EXP = 8
FP16_OPERAND_EXP = 0


@gluon.jit
def _scale_pairs(codes, OP_DTYPE: gl.constexpr):
    """uint8 E4M3 codes → int32 (s', s') bf16x2/f16x2 pairs, s' = s·2^118 (bf16) or s·2^6 (fp16)."""
    s = codes.to(gl.float8e4nv, bitcast=True).to(gl.float32)
    if OP_DTYPE == gl.bfloat16:
        bits = (s * 3.3230699894622896e35).to(gl.bfloat16).to(gl.int16, bitcast=True)
    else:
        bits = (s * 64.0).to(gl.float16).to(gl.int16, bitcast=True)
    b = bits.to(gl.int32) & 0xFFFF
    return b | (b << 16)


@gluon.jit
def _decode_pairs(packed, pairs, OP_DTYPE: gl.constexpr):
    """uint8 [..] packed bytes + int32 [..] scale pairs (broadcastable) → int32 [..] operand pairs."""
    if OP_DTYPE == gl.bfloat16:
        return gl.inline_asm_elementwise(_DECODE_BF16, "=r,=r,=r,=r,r,r,r,r,r", [packed, pairs], dtype=gl.int32,
                                         is_pure=True, pack=4)
    else:
        return gl.inline_asm_elementwise(_DECODE_FP16, "=r,=r,=r,=r,r,r,r,r,r", [packed, pairs], dtype=gl.int32,
                                         is_pure=True, pack=4)


@gluon.jit
def _split_pairs(x, OP_DTYPE: gl.constexpr):
    """int32 pairs → (low half, high half) as OP_DTYPE tensors (LLVM folds the later re-pack)."""
    lo = (x & 0xFFFF).to(gl.int16).to(OP_DTYPE, bitcast=True)
    hi = (x >> 16).to(gl.int16).to(OP_DTYPE, bitcast=True)
    return lo, hi


@gluon.jit
def _scale_rows(ptr, off, n_rows, stride, R: gl.constexpr, LAYOUT: gl.constexpr):
    """Row base pointers [R, 1] of a [rows, K/16] scale matrix; rows past the end are clamped to
    the last row (their outputs are clipped by the TMA store), so no row mask is needed."""
    rows = gl.minimum(off + gl.arange(0, R, layout=gl.SliceLayout(1, LAYOUT)), n_rows - 1)
    return ptr + gl.expand_dims(rows.to(gl.int64) * stride, 1)


@gluon.jit
def _load_scales(row_ptrs, k_tile, K, NB: gl.constexpr, EVEN_K: gl.constexpr, LAYOUT: gl.constexpr):
    """[R, NB] uint8 block-scale codes of k-tile ``k_tile`` (zero past K)."""
    kb = gl.expand_dims(k_tile * NB + gl.arange(0, NB, layout=gl.SliceLayout(0, LAYOUT)), 0)
    if EVEN_K:
        return gl.load(row_ptrs + kb)
    else:
        return gl.load(row_ptrs + kb, mask=kb < K // 16, other=0)


@gluon.jit
def _decode_to_smem(src, scale_codes, dst, R: gl.constexpr, TK2: gl.constexpr, OP_DTYPE: gl.constexpr,
                    BYTES: gl.constexpr, BYTES3: gl.constexpr):
    """Packed E2M1 codes [R, TK2] (shared, unswizzled) × E4M3 block-scale codes [R, TK2/8] (registers,
    ``SliceLayout(2, BYTES3)``) → the decoded MMA operand [R, 2·TK2] stored into the 128-byte-swizzled
    shared tile ``dst``. Each thread decodes whole 16-byte runs of a row (16-byte loads and stores)."""
    NB: gl.constexpr = TK2 // 8
    PAIRS_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32)
    codes = gl.convert_layout(src.load(BYTES).reshape([R, NB, 8]), BYTES3, assert_trivial=True)
    pairs = _decode_pairs(codes, gl.expand_dims(_scale_pairs(scale_codes, OP_DTYPE), 2), OP_DTYPE)
    dst._reinterpret(gl.int32, [R, TK2], PAIRS_SMEM).store(
        gl.convert_layout(pairs.reshape([R, TK2]), BYTES, assert_trivial=True))


@gluon.jit
def _tile_coords(pid, M, N, K, n_whole, split, kt_per_split, TW: gl.constexpr, TT: gl.constexpr,
                 TK: gl.constexpr, GROUP: gl.constexpr, TAIL_SPLIT: gl.constexpr):
    """(off_w, off_t, first k-tile, k-tiles, tile) of program ``pid``. Grouped tile order: GROUP
    weight tiles sweep the token tiles together (W stays in L2). With TAIL_SPLIT, program
    n_whole + u computes split u % split (k-tiles [k_first, k_first + n_k)) of tile n_whole + u // split.
    K ≥ 32, so at least one k-tile; saying so removes the zero-trip path of the k-loop, whose
    accumulator initialisation ptxas would otherwise see inside the wgmma pipeline (and serialize)."""
    k_tiles = gl.maximum((K + TK - 1) // TK, 1)
    tile = pid
    k_first = pid * 0
    n_k = k_tiles
    if TAIL_SPLIT:
        unit = gl.maximum(pid - n_whole, 0)
        part = pid >= n_whole
        tile = gl.where(part, n_whole + unit // split, pid)
        k_first = gl.where(part, (unit % split) * kt_per_split, 0)
        n_k = gl.maximum(gl.where(part, gl.minimum(kt_per_split, k_tiles - k_first), k_tiles), 1)
    num_w = (N + TW - 1) // TW
    num_t = (M + TT - 1) // TT
    per_group = GROUP * num_t
    first_w = (tile // per_group) * GROUP
    group_w = gl.minimum(num_w - first_w, GROUP)
    off_w = (first_w + (tile % per_group) % group_w) * TW
    off_t = ((tile % per_group) // group_w) * TT
    return off_w, off_t, k_first, n_k, tile


@gluon.jit
def _hopper_gemm_kernel(
    w_desc,  # TMA over W packed codes [N, K/2] uint8, box [BW, BK/2]
    x_desc,  # TMA over x [M, K] bf16/fp16 (box [BT, BK]) or its packed codes [M, K/2] (box [BT, BK/2])
    out_desc,  # TMA over out [M, N] bf16/fp16, box [BT, BW]
    w_scale_ptr,  # [N, K/16] uint8 E4M3, row stride stride_ws
    x_scale_ptr,  # [M, K/16] uint8 E4M3 (X_NVFP4), row stride stride_xs
    bias_ptr,  # [N] (HAS_BIAS)
    w_gs_ptr,  # [1] fp32 tensor scale of W
    x_gs_ptr,  # [1] fp32 tensor scale of x (X_NVFP4 or X_GS)
    M,
    N,
    K,
    stride_ws,
    stride_xs,
    ws_ptr,  # [tail tiles · split, TW, TT] fp32 partial tiles (TAIL_SPLIT)
    sem_ptr,  # [tail tiles] int32 arrival counters, zero on entry and on exit (TAIL_SPLIT)
    n_whole,  # programs [0, n_whole) compute whole tiles; the rest split the last tiles' K (TAIL_SPLIT)
    split,  # K-splits per tail tile (TAIL_SPLIT)
    kt_per_split,  # k-tiles of one split (TAIL_SPLIT)
    X_NVFP4: gl.constexpr,
    X_GS: gl.constexpr,  # dense x carries a tensor scale (an NVFP4 activation decoded with scale 1)
    EVEN_K: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    OP_DTYPE: gl.constexpr,
    STAGES: gl.constexpr,
    ABLATE: gl.constexpr,  # timing experiments only (wrong results): 1 scales loaded once, 2 no decode,
    # 3 split programs store their partial as the output, 4 the last split program sums no partials
    GROUP: gl.constexpr,
    TAIL_SPLIT: gl.constexpr,  # the last partial wave of tiles is split along K (see tail_split)
    SPLIT_LOADS: gl.constexpr,  # a power of two ≥ split: the partial loads unrolled in the split sum
    num_warps: gl.constexpr,
):
    TW: gl.constexpr = w_desc.block_type.shape[0]
    TK2: gl.constexpr = w_desc.block_type.shape[1]
    TK: gl.constexpr = 2 * TK2
    TT: gl.constexpr = out_desc.block_type.shape[0]
    NB: gl.constexpr = TK // 16
    gl.static_assert(TW == 128 and TK == 64 and num_warps == 8, "layouts below assume a 128×64 A tile, 8 warps")
    gl.static_assert(TT == 128 or TT == 256, "token tile of 128 or 256 rows")

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1], instr_shape=[16, TT, 16])
    OP_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16)
    # Packed tiles are decoded with each thread owning a contiguous run of one row (TPR threads per
    # row): [R, TK2] bytes, their [R, NB, 8] block view, and the [R, NB] block scales.
    W_TPR: gl.constexpr = 32 * num_warps // TW
    W_BYTES: gl.constexpr = gl.BlockedLayout([1, TK2 // W_TPR], [32 // W_TPR, W_TPR], [num_warps, 1], [1, 0])
    W_BYTES3: gl.constexpr = gl.BlockedLayout([1, NB // W_TPR, 8], [32 // W_TPR, W_TPR, 1], [num_warps, 1, 1],
                                              [2, 1, 0])
    W_SCALES: gl.constexpr = gl.SliceLayout(2, W_BYTES3)
    X_TPR: gl.constexpr = 32 * num_warps // TT
    X_BYTES: gl.constexpr = gl.BlockedLayout([1, TK2 // X_TPR], [32 // X_TPR, X_TPR], [num_warps, 1], [1, 0])
    X_BYTES3: gl.constexpr = gl.BlockedLayout([1, NB // X_TPR, 8], [32 // X_TPR, X_TPR, 1], [num_warps, 1, 1],
                                              [2, 1, 0])
    X_SCALES: gl.constexpr = gl.SliceLayout(2, X_BYTES3)

    pid = gl.program_id(0)
    off_w, off_t, k_first, n_k, tile = _tile_coords(pid, M, N, K, n_whole, split, kt_per_split, TW, TT, TK, GROUP,
                                                    TAIL_SPLIT)

    w_bufs = gl.allocate_shared_memory(gl.uint8, [STAGES, TW, TK2], w_desc.layout)
    x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    # Decoded operands live in shared memory (wgmma SS), double-buffered: wgmma i-1 may still read
    # buffer (i-1)%2 while buffer i%2 is written. A register A operand (wgmma RS) is not used: ptxas
    # 12.x reuses the A registers of an in-flight wgmma (the wrong tiles and run-to-run differences
    # measured on the H100; tests/fp4/test_gemm.py checks the SASS for it).
    w_dec = gl.allocate_shared_memory(OP_DTYPE, [2, TW, TK], OP_SMEM)
    if X_NVFP4:
        x_dec = gl.allocate_shared_memory(OP_DTYPE, [2, TT, TK], OP_SMEM)

    nbytes: gl.constexpr = w_desc.block_type.nbytes + x_desc.block_type.nbytes
    XK: gl.constexpr = x_desc.block_type.shape[1]
    for s in gl.static_range(STAGES - 1):
        pred = s < n_k
        mbarrier.expect(bars.index(s), nbytes, pred=pred)
        tma.async_copy_global_to_shared(w_desc, [off_w, (k_first + s) * TK2], bars.index(s), w_bufs.index(s), pred)
        tma.async_copy_global_to_shared(x_desc, [off_t, (k_first + s) * XK], bars.index(s), x_bufs.index(s), pred)

    w_srows = _scale_rows(w_scale_ptr, off_w, N, stride_ws, TW, W_SCALES)
    w_sc = _load_scales(w_srows, k_first, K, NB, EVEN_K, W_SCALES)
    if X_NVFP4:
        x_srows = _scale_rows(x_scale_ptr, off_t, M, stride_xs, TT, X_SCALES)
        x_sc = _load_scales(x_srows, k_first, K, NB, EVEN_K, X_SCALES)

    acc = gl.zeros((TW, TT), dtype=gl.float32, layout=mma)
    for i in range(n_k):
        slot = i % STAGES
        mbarrier.wait(bars.index(slot), (i // STAGES) & 1)
        # Buffers i%2 were last read by wgmma i-2, retired in every warpgroup before the barrier
        # that ended iteration i-1.
        if ABLATE != 2:
            _decode_to_smem(w_bufs.index(slot), w_sc, w_dec.index(i % 2), TW, TK2, OP_DTYPE, W_BYTES, W_BYTES3)
        if X_NVFP4:
            _decode_to_smem(x_bufs.index(slot), x_sc, x_dec.index(i % 2), TT, TK2, OP_DTYPE, X_BYTES, X_BYTES3)
        # prefetch the next k-tile's block scales (consumed one iteration later)
        nk = k_first + gl.minimum(i + 1, n_k - 1)  # (clamped: never read past the last k-tile)
        if ABLATE != 1:
            w_sc = _load_scales(w_srows, nk, K, NB, EVEN_K, W_SCALES)
        if X_NVFP4:
            x_sc = _load_scales(x_srows, nk, K, NB, EVEN_K, X_SCALES)
            b_op = x_dec.index(i % 2).permute((1, 0))
        else:
            b_op = x_bufs.index(slot).permute((1, 0))
        # every thread's decoded stores are visible to the async proxy before any wgmma reads them
        fence_async_shared()
        gl.thread_barrier()
        acc = warpgroup_mma(w_dec.index(i % 2), b_op, acc, use_acc=i > 0, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        # wgmma i-1 is complete in both warpgroups and every thread has its values of slot i-1 in
        # registers (its decoded stores used them): after the barrier, TMA may refill that slot with
        # k-tile i + STAGES - 1. No proxy fence: reads that have returned cannot see the later async
        # write, and the fence's MEMBAR would wait for the scale loads just issued (~L2 latency).
        gl.thread_barrier()
        nxt = i + STAGES - 1
        nslot = nxt % STAGES
        pred = nxt < n_k
        mbarrier.expect(bars.index(nslot), nbytes, pred=pred)
        tma.async_copy_global_to_shared(w_desc, [off_w, (k_first + nxt) * TK2], bars.index(nslot),
                                        w_bufs.index(nslot), pred)
        tma.async_copy_global_to_shared(x_desc, [off_t, (k_first + nxt) * XK], bars.index(nslot),
                                        x_bufs.index(nslot), pred)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    gl.thread_barrier()  # no warpgroup still reads the operand tiles the epilogue tile may alias
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))
    finish = pid >= 0
    if TAIL_SPLIT and ABLATE != 3:
        finish = _arrive_split(acc, pid, n_whole, tile, split, ws_ptr, sem_ptr, TW, TT, mma)
    if finish:
        c_smem = gl.allocate_shared_memory(out_desc.dtype, [TT, TW], out_desc.layout)
        if TAIL_SPLIT and ABLATE < 3 and pid >= n_whole:
            _split_epilogue(ws_ptr, tile - n_whole, split, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc,
                            c_smem, X_NVFP4, X_GS, HAS_BIAS, OP_DTYPE, TW, TT, SPLIT_LOADS, num_warps)
        else:
            _epilogue(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, X_NVFP4, X_GS, HAS_BIAS,
                      OP_DTYPE, TW, mma)


@gluon.jit
def _arrive_split(acc, pid, n_whole, tile, split, ws_ptr, sem_ptr, TW: gl.constexpr, TT: gl.constexpr,
                  MMA: gl.constexpr):
    """A split program stores its FP32 partial tile (row-major) and counts itself in (an atomic
    counter per tail tile); True for the tile's last program to arrive, which resets the counter and
    then sums the partials (:func:`_split_epilogue`), and for whole-tile programs."""
    finish = pid >= 0
    if pid >= n_whole:
        t = tile - n_whole
        own = (pid - n_whole) % split
        rows = gl.arange(0, TW, layout=gl.SliceLayout(1, MMA))
        cols = gl.arange(0, TT, layout=gl.SliceLayout(0, MMA))
        offs = gl.expand_dims(rows * TT, 1) + gl.expand_dims(cols, 0)
        gl.store(ws_ptr + ((t * split + own).to(gl.int64) * (TW * TT)) + offs, acc)
        gl.thread_barrier()
        arrived = gl.atomic_add(sem_ptr + t, 1, sem="acq_rel", scope="gpu")
        finish = arrived == split - 1
        if finish:
            gl.store(sem_ptr + t, 0)
    return finish


@gluon.jit
def _alpha(w_gs_ptr, x_gs_ptr, X_NVFP4: gl.constexpr, X_GS: gl.constexpr, OP_DTYPE: gl.constexpr):
    """The epilogue's FP32 factor: the tensor scales (and 2^8 for bf16-decoded weights)."""
    if OP_DTYPE == gl.bfloat16:
        alpha = gl.load(w_gs_ptr) * 256.0  # undo the 2^-8 of the bf16-decoded weights
    else:
        alpha = gl.load(w_gs_ptr)
    if X_NVFP4 or X_GS:
        alpha = alpha * gl.load(x_gs_ptr)  # W4A4 always decodes to fp16 (no extra factor)
    return alpha


@gluon.jit
def _tma_store_tile(out_desc, c_smem, off_t, off_w):
    """The output tile, written into ``c_smem`` by every thread, out by one TMA store."""
    fence_async_shared()
    gl.thread_barrier()  # the whole tile is in shared memory before one thread issues the TMA store
    tma.async_copy_shared_to_global(out_desc, [off_t, off_w], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _split_epilogue(ws_ptr, t, split, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem,
                    X_NVFP4: gl.constexpr, X_GS: gl.constexpr, HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr,
                    TW: gl.constexpr, TT: gl.constexpr, SPLIT_LOADS: gl.constexpr, num_warps: gl.constexpr):
    """The last program of tail tile ``t`` sums the ``split`` partials in split order (deterministic,
    whichever program arrived last) and runs :func:`_epilogue`'s arithmetic, 64 tokens at a time:
    every partial's 16-byte loads of a chunk are in flight together. (Summing the whole tile in the
    accumulator's layout left too few registers for more than a few loads in flight: 12-18 µs per
    split tile on the H100, seventeenth session.)"""
    RT: gl.constexpr = 64
    L: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (RT // 4), RT // 4], [num_warps, 1], [1, 0])
    alpha = _alpha(w_gs_ptr, x_gs_ptr, X_NVFP4, X_GS, OP_DTYPE)
    rows = gl.arange(0, TW, layout=gl.SliceLayout(1, L))
    offs = gl.expand_dims(rows * TT, 1) + gl.expand_dims(gl.arange(0, RT, layout=gl.SliceLayout(0, L)), 0)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + off_w + rows, mask=off_w + rows < N, other=0.0).to(gl.float32)
    base = ws_ptr + (t * split).to(gl.int64) * (TW * TT)
    for c in gl.static_range(0, TT, RT):
        acc = gl.zeros((TW, RT), dtype=gl.float32, layout=L)
        for s in gl.static_range(SPLIT_LOADS):  # absent splits add -0.0: x + (-0.0) == x bit for bit
            acc += gl.load(base + s * (TW * TT) + c + offs, mask=(offs >= 0) & (s < split), other=-0.0,
                           cache_modifier=".cg")
        acc = acc * alpha
        if HAS_BIAS:
            acc = acc + gl.expand_dims(bias, 1)
        c_smem.slice(c, RT, dim=0).permute((1, 0)).store(acc.to(out_desc.dtype))
    _tma_store_tile(out_desc, c_smem, off_t, off_w)


@gluon.jit
def _epilogue(acc, off_w, off_t, N, bias_ptr, w_gs_ptr, x_gs_ptr, out_desc, c_smem, X_NVFP4: gl.constexpr,
              X_GS: gl.constexpr, HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr, TW: gl.constexpr,
              mma: gl.constexpr):
    """Tensor scales and bias in FP32, one rounding, the tile out through shared memory (``c_smem``,
    [TT, TW] in the output's TMA layout) and TMA."""
    acc = acc * _alpha(w_gs_ptr, x_gs_ptr, X_NVFP4, X_GS, OP_DTYPE)
    if HAS_BIAS:
        rows = off_w + gl.arange(0, TW, layout=gl.SliceLayout(1, mma))
        bias = gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
        acc = acc + gl.expand_dims(bias, 1)
    c_smem.permute((1, 0)).store(acc.to(out_desc.dtype))
    _tma_store_tile(out_desc, c_smem, off_t, off_w)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

STAGES_W4A16 = 4  # 4 × (32 KB x + 4 KB W) + 2 × 16 KB decoded W (epilogue tile aliased): ~176 KB
STAGES_W4A4 = 4  # 4 × (8 KB x + 4 KB W) + 2 × (32 KB decoded x + 16 KB decoded W): ~144 KB
GROUP = 8


def _gl_dtype(dtype: torch.dtype):
    return {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32,
            torch.uint8: gl.uint8}[dtype]


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0


@functools.cache
def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


def supported(a: torch.Tensor, a_nvfp4: bool, b_data: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether the Hopper kernel can run this GEMM (see the module docstring)."""
    if a.device.type != "cuda" or out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if not _is_hopper(a.device.index if a.device.index is not None else torch.cuda.current_device()):
        return False
    n, k = b_data.shape[0], b_data.shape[1] * 2
    if k % 32 != 0 or n % 8 != 0 or not _aligned(b_data):
        return False
    if a_nvfp4:
        return a.dtype == torch.uint8 and _aligned(a)
    return a.dtype in (torch.bfloat16, torch.float16) and _aligned(a)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # (triton.cdiv costs microseconds per host call)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Each K-split of a tail tile keeps at least this many k-tiles (a pipeline's worth of TMA loads), and
# a tail tile is split at most MAX_TAIL_SPLIT ways: every split costs a 128 KB FP32 partial written
# and read back by the tile's last program (bench/fp4/bench_gemm_hopper.py times the choice).
MIN_SPLIT_K_TILES = 4
MAX_TAIL_SPLIT = 4


def tail_split(tiles: int, k_tiles: int, slots: int, max_split: int = MAX_TAIL_SPLIT) -> tuple[int, int, int]:
    """(n_whole, split, k-tiles per split) for ``tiles`` output tiles on ``slots`` concurrent CTAs.

    With one CTA per tile, ``tiles % slots`` tiles run in a last, partly empty wave (M = 1760 with
    N = 3072 on an H100: 168 tiles of 128 × 256 on 132 SMs, 1.27 waves timed as 2). The whole waves
    keep one program per tile; each tile of the last wave is split along K into up to
    ``slots // tail`` programs (at most ``max_split``), so that wave takes about 1/split of a tile's
    time plus the sum of the partials. ``split == 1`` means no split (``n_whole == tiles``)."""
    tail = tiles % slots
    split = min(max_split, slots // tail if tail else 1, k_tiles // MIN_SPLIT_K_TILES)
    if tail == 0 or split < 2:
        return tiles, 1, k_tiles
    per = _cdiv(k_tiles, split)
    return tiles - tail, _cdiv(k_tiles, per), per


def launch_plan(m: int, n: int, k: int, bt: int, device: torch.device,
                max_split: int | None = None) -> tuple[int, int, int, int]:
    """(tiles, n_whole, split, k-tiles per split) of a launch with ``bt``-token tiles on ``device``:
    one CTA per SM for 256-token tiles, two for 128 (:func:`tail_split`)."""
    tiles = _cdiv(n, BW) * _cdiv(m, bt)
    slots = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) * (256 // bt)
    return (tiles, *tail_split(tiles, _cdiv(k, BK), slots, MAX_TAIL_SPLIT if max_split is None else max_split))


@functools.cache
def _smem_layout(block: tuple[int, int] | None, dtype: torch.dtype | None):
    """The shared-memory layout of a TMA block (``None``: unswizzled bytes, the packed operands).
    Cached: building Gluon layouts (dataclasses with validation) is host time on every launch."""
    if block is None:
        return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    return gl.NVMMASharedLayout.get_default_for(list(block), _gl_dtype(dtype))


_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, numel: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 partials, zeroed int32 counters) per (device, stream), grown on demand (shared by this
    kernel and the GEMV's split K); kernels leave the counters zeroed, and work on one stream is
    ordered, so calls can share them."""
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    ws, sem = _WORKSPACE.get(key, (None, None))
    if ws is None or ws.numel() < numel or sem.numel() < tiles:
        ws = torch.empty(max(numel, 1 << 20), dtype=torch.float32, device=device)
        sem = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
        _WORKSPACE[key] = (ws, sem)
    return ws, sem


def gemm(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4, a_tensor_scale=None, *,
         token_rows=None, stages=None, ablate=0, max_split=None) -> torch.Tensor:
    """``out = a @ bᵀ (+ bias)`` on Hopper (arguments as ``gemm._gemm_op``; check :func:`supported`).
    ``a_tensor_scale`` ([1] fp32, dense ``a`` only) multiplies the result (a pre-decoded NVFP4 ``a``).
    ``token_rows`` / ``stages`` override the token tile and the pipeline depth; ``max_split`` caps the
    K-split of the last wave's tiles (:func:`tail_split`; default ``MAX_TAIL_SPLIT``, 1: no split).
    ``ablate`` (wrong results: timing experiments of ``bench/fp4/bench_gemm_hopper.py`` and
    ``tools/probe_tail_split.py``): 1 loads the weight scales once, 2 skips the weight decode, 3 / 4
    store the split programs' partials as the output / sum none of them."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m = a.shape[0]
    n, k2 = b_data.shape
    k = 2 * k2
    # 256-token tiles (one CTA per SM) beat 128 (two per SM) at every large-M shape of issue 3 on the
    # H100, wave quantization included (bench_gemm_hopper.py); fp32 output keeps 128 (64 KB staging).
    bt = token_rows or (128 if out_dtype == torch.float32 else 256)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    u8 = _smem_layout(None, None)
    w_desc = TensorDescriptor.from_tensor(b_data, [BW, BK // 2], u8)
    if a_nvfp4:
        op_dtype = gl.float16
        x_desc = TensorDescriptor.from_tensor(a, [bt, BK // 2], u8)
        x_scale = a_scale.view(torch.uint8)
        stages = stages or STAGES_W4A4
    else:
        op_dtype = _gl_dtype(a.dtype)
        x_desc = TensorDescriptor.from_tensor(a, [bt, BK], _smem_layout((bt, BK), a.dtype))
        x_scale = b_data  # unused
        stages = stages or STAGES_W4A16  # bt=128: ~112 KB, two CTAs per SM (bt=256: one)
    out_desc = TensorDescriptor.from_tensor(out, [bt, BW], _smem_layout((bt, BW), out_dtype))
    w_scale = b_scale.view(torch.uint8)
    tiles, n_whole, split, per = launch_plan(m, n, k, bt, a.device, max_split)
    if split > 1:
        part, sem = _workspace(a.device, (tiles - n_whole) * split * BW * bt, tiles - n_whole)
    else:
        part = sem = b_gs  # unused
    grid = (n_whole + (tiles - n_whole) * split,)
    x_gs = a_gs if a_gs is not None else (a_tensor_scale if a_tensor_scale is not None else b_gs)
    _hopper_gemm_kernel[grid](
        w_desc, x_desc, out_desc, w_scale, x_scale, bias if bias is not None else b_gs, b_gs, x_gs,
        m, n, k, w_scale.stride(0), x_scale.stride(0), part, sem, n_whole, split, per,
        X_NVFP4=a_nvfp4, X_GS=a_tensor_scale is not None, EVEN_K=k % BK == 0, HAS_BIAS=bias is not None,
        OP_DTYPE=op_dtype, STAGES=stages, ABLATE=ablate, GROUP=GROUP, TAIL_SPLIT=split > 1,
        SPLIT_LOADS=1 << (split - 1).bit_length(), num_warps=NUM_WARPS,
    )
    return out
