"""Hopper (sm_90a) FP4-KV flash attention in Gluon: a producer warpgroup decodes every K/V tile once.

The fast path of :func:`~longlive_kernels.attention.fp4_kv_attention` on H100/H200 (FlashAttention-3
structure, FlashInfer's lesson for low-bit KV on Hopper: decode each tile once into 16-bit staging,
not once per MMA; ``nvfp4-hopper.md`` §4.2). One CTA = 128 query rows of one (batch, head), 12 warps:

- **producer** (1 warpgroup, ``setmaxnreg`` 40): TMA loads the packed E2M1 codes + E4M3 block scales
  of each 128-token K and V tile (3-stage ring, 18 KB per stage), decodes them **once** into
  double-buffered 128B-swizzled fp16 tiles (``e2m1 · s_block · 2^-14``, exact: one ``mul.f16x2``
  per two values), and signals the consumers through mbarriers. Tiles of the BF16 current chunk
  are TMA-loaded straight into the fp16 buffers and converted in place (scaled by a power of two
  per tile into the fp16 range, ``current_scales``; bf16 → fp16 is then exact).
- **consumers** (2 warpgroups × 64 rows, ``setmaxnreg`` 232): Q (scaled into fp16 by a power of
  two) stays in registers as the A operand of S = Q·Kᵀ; P goes to shared memory for O += P·V (both
  B operands from shared memory). Online softmax in fp32 registers (base 2). Pipelining inside a
  warpgroup (FA3): QKᵀ(j) and PV(j-1) are issued back to back, and the softmax of tile j runs while
  PV(j-1) is on the tensor cores. K and V buffers are released separately (K after its QKᵀ, V once
  its PV retired), so the producer always has about a tile of slack.

Scheduling details that the SASS needed (``compile_report``, checked by the tests): ptxas moves a
``wgmma.wait_group`` to the earliest point of its basic block, which put the PV wait right after
the first shuffle of the softmax (no overlap): the softmax sits in a block of its own (an
always-taken branch), and no CTA barrier follows the PV wait inside an iteration (P(j-1) is stored
and V(j-2) released at the top of the next one). A register operand of an in-flight wgmma is never
rewritten (Q is loop-invariant; P is in shared memory): the ptxas of Triton 3.6 does not protect
those (``gemm_hopper.py``).

Math = the portable kernel's (``fp4_kv_attention.py``): the same exact decode, the FP32 tile scale
folded into the softmax scale (K) and into the output accumulator's unit (V), fp32 softmax; P is
fp16 for every tile (the portable kernel uses bf16 P for the current chunk: this path is slightly
more precise there).

Decode: the E2M1 nibble ``sEEM`` becomes the fp16 bits ``s·2^15 | EEM·2^9`` (= e2m1·2^-14), two
values per 32-bit register, 3-4 logic ops per pair (``_DECODE_ASM``; SASS: IMAD.SHL, 2 LOP3,
LEA.HI, HMUL2). The pair a register naturally holds is (element k, element k+4) of a 4-byte word,
so the kernel works in a permuted head_dim order ``σ = [0, 4, 1, 5, 2, 6, 3, 7]`` within every
group of 8: Q is loaded in that order (QKᵀ is invariant under a common permutation of head_dim)
and O is stored with the inverse permutation (PV permutes the output columns).

Requirements (else the portable kernel runs): Hopper GPU, head_dim 128, FP4 storage, q bf16,
``compute="bf16"``, ``chunk_tokens % 128 == 0``, a current chunk (if passed) with ``Lc % 128 == 0``
whose tokens are rows of one stride (contiguous, or the K/V slice of a fused QKV tensor). The kernel compiles for sm_90a on CPU machines (tests check registers, spills,
wgmma count, asynchrony and the placement of the PV wait); it runs only on a GPU, after
:func:`probe_ok` ran it once in a child process.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._aot import register_aot
from .kv_cache import KV_SCALE_TILE

BLOCK_M = 128  # query rows per CTA (2 consumer warpgroups × 64)
BLOCK_N = 128  # keys per tile (= KV_SCALE_TILE: one FP32 tile scale per tile)
HEAD_DIM = 128
NUM_WARPS = 8  # the consumer warpgroups; the producer warpgroup comes on top
STAGES = 3  # packed K+V tiles in flight (18 KB each)
PRODUCER_REGS = 40  # the decode fits (34 used); consumers get (3·168 - 40) / 2 = 232
assert BLOCK_N == KV_SCALE_TILE
# the same, as constants of the Gluon kernels
_BM = gl.constexpr(BLOCK_M)
_BN = gl.constexpr(BLOCK_N)
_STAGES = gl.constexpr(STAGES)
_CONSUMER_WARPS = gl.constexpr(NUM_WARPS)
_PRODUCER_WARPS = gl.constexpr(4)
_PRODUCER_REGS = gl.constexpr(PRODUCER_REGS)
_SUB = gl.constexpr(32)  # rows the producer decodes per step (bounds its registers)
_LOG2E = 1.4426950408889634

# 4 packed bytes ($4: elements 0..7 of one 16-value block, element 2i in the low nibble of byte i) →
# 4 f16x2 registers, $k = (element k, element k+4) · s, with $5 = the f16x2 pair (s, s) of the
# block's E4M3 scale. A left shift by 12-4k puts nibbles k and k+4 at bits 12-15 of the two 16-bit
# lanes; the sign stays at bit 15, EEM moves to bits 9-11: the fp16 bits of e2m1·2^-14 (code 1 →
# the subnormal 2^-15). One mul.rn.f16x2 by the scale is exact (e2m1·e4m3·2^-14 is a multiple of
# 2^-24 with at most 6 significant bits, and at most 0.17).
_DECODE_ASM = gl.constexpr("""
{
.reg .b32 x, t;
shl.b32 x, $4, 12;
and.b32 t, x, 0x70007000;
shr.b32 t, t, 3;
and.b32 x, x, 0x80008000;
or.b32 x, x, t;
mul.rn.f16x2 $0, x, $5;
shl.b32 x, $4, 8;
and.b32 t, x, 0x70007000;
shr.b32 t, t, 3;
and.b32 x, x, 0x80008000;
or.b32 x, x, t;
mul.rn.f16x2 $1, x, $5;
shl.b32 x, $4, 4;
and.b32 t, x, 0x70007000;
shr.b32 t, t, 3;
and.b32 x, x, 0x80008000;
or.b32 x, x, t;
mul.rn.f16x2 $2, x, $5;
and.b32 t, $4, 0x70007000;
shr.b32 t, t, 3;
and.b32 x, $4, 0x80008000;
or.b32 x, x, t;
mul.rn.f16x2 $3, x, $5;
}
""")

# 4 bf16x2 words ($4..$7 = elements (0,1), (2,3), (4,5), (6,7) of a group of 8) → 4 f16x2 words in
# the σ order, $k = (element k, element k+4) · $8 (a power of two; cvt.rn once, exact for values
# that land in fp16's normal range).
_CONVERT_ASM = gl.constexpr("""
{
.reg .b32 a, b;
.reg .f32 fa, fb;
shl.b32 a, $4, 16;
shl.b32 b, $6, 16;
mov.b32 fa, a;
mov.b32 fb, b;
mul.rn.f32 fa, fa, $8;
mul.rn.f32 fb, fb, $8;
cvt.rn.f16x2.f32 $0, fb, fa;
and.b32 a, $4, 0xFFFF0000;
and.b32 b, $6, 0xFFFF0000;
mov.b32 fa, a;
mov.b32 fb, b;
mul.rn.f32 fa, fa, $8;
mul.rn.f32 fb, fb, $8;
cvt.rn.f16x2.f32 $1, fb, fa;
shl.b32 a, $5, 16;
shl.b32 b, $7, 16;
mov.b32 fa, a;
mov.b32 fb, b;
mul.rn.f32 fa, fa, $8;
mul.rn.f32 fb, fb, $8;
cvt.rn.f16x2.f32 $2, fb, fa;
and.b32 a, $5, 0xFFFF0000;
and.b32 b, $7, 0xFFFF0000;
mov.b32 fa, a;
mov.b32 fb, b;
mul.rn.f32 fa, fa, $8;
mul.rn.f32 fb, fb, $8;
cvt.rn.f16x2.f32 $3, fb, fa;
}
""")


def sigma_permutation(d: int) -> torch.Tensor:
    """Original head_dim column of every column the kernel works in (σ within each group of 8)."""
    c = torch.arange(d)
    return (c & ~7) | ((c & 1) << 2) | ((c >> 1) & 3)


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _perm_cols(c):
    """Logical (σ-ordered) column → original head_dim column."""
    return (c & -8) | ((c & 1) << 2) | ((c >> 1) & 3)


@gluon.jit
def _pairs_to_f16(w, R: gl.constexpr, D: gl.constexpr, LAYOUT: gl.constexpr):
    """int32 [R, .., ..] f16x2 words → fp16 [R, D] (word p holds columns 2p, 2p+1; LLVM keeps the
    registers as they are)."""
    lo = (w & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True)
    hi = (w >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.convert_layout(gl.join(lo, hi).reshape([R, D]), LAYOUT, assert_trivial=True)


@gluon.jit
def _decode_rows(pk_smem, sc_smem, dst, R: gl.constexpr, D: gl.constexpr, PK3: gl.constexpr,
                 OUT: gl.constexpr):
    """Decode R cache rows: packed [R, D/2] uint8 + E4M3 codes [R, D/16] (shared) → fp16 σ-ordered
    ``e2m1 · s · 2^-14`` [R, D] into ``dst``."""
    NB: gl.constexpr = D // 16
    SC: gl.constexpr = gl.SliceLayout(2, PK3)
    PK2: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    packed = gl.convert_layout(pk_smem.load(PK2).reshape([R, NB, 8]), PK3, assert_trivial=True)
    codes = sc_smem.load(SC)
    s16 = codes.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.float16)  # exact
    sb = s16.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    pairs = gl.expand_dims(sb | (sb << 16), 2)
    w = gl.inline_asm_elementwise(_DECODE_ASM, "=r,=r,=r,=r,r,r,r,r,r", [packed, pairs], dtype=gl.int32,
                                  is_pure=True, pack=4)
    dst.store(_pairs_to_f16(w, R, D, OUT))


@gluon.jit
def _convert_rows(src, dst, mult, R: gl.constexpr, D: gl.constexpr, W3: gl.constexpr, OUT: gl.constexpr):
    """In place (``src`` = ``dst`` viewed as bf16): R rows of a TMA-written bf16 tile → fp16
    σ-ordered ``x · mult``. Every thread reads and writes the same 16-byte units (σ permutes within
    a unit), so no barrier is needed between the loads and the stores."""
    x = src.load(OUT)
    bits = x.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    lo, hi = gl.split(bits.reshape([R, D // 2, 2]))
    w = gl.convert_layout((lo | (hi << 16)).reshape([R, D // 8, 4]), W3, assert_trivial=True)
    m = gl.full([R, D // 8, 4], 0.0, gl.float32, layout=W3) + mult
    y = gl.inline_asm_elementwise(_CONVERT_ASM, "=r,=r,=r,=r,r,r,r,r,f,f,f,f", [w, m], dtype=gl.int32,
                                  is_pure=True, pack=4)
    dst.store(_pairs_to_f16(y, R, D, OUT))


@gluon.jit
def _tile_source(j, n_cache_tiles, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T):
    """(chunk-slot row of tile j's first token in the [S·B·H·T] planes, 128-token tile index)."""
    c = j // tpc
    t = j - c * tpc
    slot = cur_slot
    if c < n_ctx:
        slot = gl.load(table_ptr + 2 + c)
    plane = (slot * B + b) * H + h
    return plane * T + t * 128, plane * tpc + t


@gluon.jit
def _tile_factors(j, n_cache_tiles, tpc, n_ctx, cur_slot, table_ptr, kg_ptr, vg_ptr, cg_ptr, b, h, B, H, T,
                  NTC, HAS_CURRENT: gl.constexpr):
    """(K, V) value per unit of the fp16 tile j: FP32 tile scale · 2^14 (cache), or 2^(e-14) for a
    current-chunk tile (``_current_scales_kernel``)."""
    if HAS_CURRENT:
        is_cur = j >= n_cache_tiles
    else:
        is_cur = j < 0
    if is_cur:
        base = (b * H + h) * NTC + (j - n_cache_tiles)
        fk = gl.load(cg_ptr + base)
        fv = gl.load(cg_ptr + B * H * NTC + base)
    else:
        _, gidx = _tile_source(j, n_cache_tiles, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T)
        fk = gl.load(kg_ptr + gidx) * 16384.0
        fv = gl.load(vg_ptr + gidx) * 16384.0
    return fk, fv


@gluon.jit
def _num_tiles(table_ptr, T, Lc, HAS_CURRENT: gl.constexpr):
    n_ctx = gl.load(table_ptr)
    cur_slot = gl.load(table_ptr + 1)
    tpc = T // 128
    if HAS_CURRENT:
        n_cache = n_ctx * tpc
        n_tiles = n_cache + Lc // 128
    else:
        n_cache = (n_ctx + 1) * tpc
        n_tiles = n_cache
    return n_ctx, cur_slot, tpc, n_cache, n_tiles


# ---------------------------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _issue_packed(j, n_cache, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T, kd_desc, ks_desc, vd_desc,
                  vs_desc, k_pk, k_sc, v_pk, v_sc, pk_ready):
    s = j % k_pk.shape[0]
    row, _ = _tile_source(j, n_cache, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T)
    bar = pk_ready.index(s)
    mbarrier.expect(bar, 2 * kd_desc.block_type.nbytes + 2 * ks_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(kd_desc, [row, 0], bar, k_pk.index(s))
    tma.async_copy_global_to_shared(ks_desc, [row // 2, 0], bar, k_sc.index(s))
    tma.async_copy_global_to_shared(vd_desc, [row, 0], bar, v_pk.index(s))
    tma.async_copy_global_to_shared(vs_desc, [row // 2, 0], bar, v_sc.index(s))


@gluon.jit
def _issue_current(j, n_cache, Lc, b, h, c_desc, dst, bar):
    """TMA the bf16 current-chunk tile j (rows of [B·Lc, H·D]) into an fp16 tile buffer."""
    mbarrier.expect(bar, c_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(c_desc, [b * Lc + (j - n_cache) * 128, h * c_desc.block_type.shape[1]], bar,
                                    dst._reinterpret(gl.bfloat16, dst.shape, dst.layout))


@gluon.jit
def _produce(x, j, n_cache, n_tiles, Lc, b, h, B, H, NTC, cg_ptr, pk, sc, dec, ready, empty, cur_bar, pk_ready,
             HAS_CURRENT: gl.constexpr, D: gl.constexpr, PK3: gl.constexpr, DEC: gl.constexpr,
             W3: gl.constexpr, CONV: gl.constexpr):
    """Fill dec[j % 2] with tile j of K (x=0) or V (x=1) and signal it. A current-chunk tile was
    TMA-loaded into the buffer itself earlier (``_prefetch_current``) and is converted in place."""
    buf = dec.index(j % 2)
    if HAS_CURRENT:
        is_cur = j >= n_cache
    else:
        is_cur = j < 0
    if is_cur:
        jc = j - n_cache
        mbarrier.wait(cur_bar, jc & 1)
        g = gl.load(cg_ptr + x * B * H * NTC + (b * H + h) * NTC + jc)
        mult = gl.where(g > 0, gl.div_rn(1.0, g), 1.0)  # exact: a power of two (0 for an all-zero tile)
        src = buf._reinterpret(gl.bfloat16, buf.shape, buf.layout)
        for r in gl.static_range(0, 128, _SUB):
            _convert_rows(src.slice(r, _SUB), buf.slice(r, _SUB), mult, _SUB, D, W3, CONV)
    else:
        mbarrier.wait(empty.index(j % 2), ((j // 2) & 1) ^ 1)
        stages: gl.constexpr = pk.shape[0]
        s = j % stages
        mbarrier.wait(pk_ready.index(s), (j // stages) & 1)
        # TMA wrote both boxes dense and row-major (no swizzle): read them through explicit
        # row-major views (the scale box is [64, 16]: two 8-byte rows per 16-byte TMA line)
        row_major: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        pk_rows = pk.index(s)._reinterpret(gl.uint8, [128, D // 2], row_major)
        sc_rows = sc.index(s)._reinterpret(gl.uint8, [128, D // 16], row_major)
        for r in gl.static_range(0, 128, _SUB):
            _decode_rows(pk_rows.slice(r, _SUB), sc_rows.slice(r, _SUB), buf.slice(r, _SUB), _SUB, D, PK3, DEC)
    fence_async_shared()  # generic-proxy writes → the consumers' wgmma (async proxy)
    mbarrier.arrive(ready.index(j % 2), count=1)


@gluon.jit
def _prefetch_current(j, n_cache, n_tiles, Lc, b, h, c_desc, dec, empty, cur_bar, HAS_CURRENT: gl.constexpr):
    """When tile j is a current-chunk tile: wait until its buffer is released, TMA it there."""
    if HAS_CURRENT and (j >= n_cache) & (j < n_tiles):
        mbarrier.wait(empty.index(j % 2), ((j // 2) & 1) ^ 1)
        _issue_current(j, n_cache, Lc, b, h, c_desc, dec.index(j % 2), cur_bar)


@gluon.jit
def _producer(kd_desc, ks_desc, vd_desc, vs_desc, ck_desc, cv_desc, cg_ptr, table_ptr, k_pk, k_sc, v_pk, v_sc,
              k_dec, v_dec, pk_ready, cur_bars, k_ready, k_empty, v_ready, v_empty, Lc, T, H, B, NTC,
              HAS_CURRENT: gl.constexpr):
    D: gl.constexpr = 2 * kd_desc.block_type.shape[1]
    NB: gl.constexpr = D // 16
    gl.static_assert(D == 128 and _SUB == 32, "layouts below assume head_dim 128, 32-row decode steps")
    # thread (row, t) decodes blocks t and t+4 of its row: two 8-byte loads, 4 STS.128 of fp16
    PK3: gl.constexpr = gl.BlockedLayout([1, 1, 8], [8, 4, 1], [4, 1, 1], [2, 1, 0])
    DEC: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
    # thread (row, t) converts groups t, t+4, t+8, t+12 of 8 bf16 (16-byte units)
    W3: gl.constexpr = gl.BlockedLayout([1, 1, 4], [8, 4, 1], [4, 1, 1], [2, 1, 0])
    CONV: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    gl.static_assert(NB == 8)

    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n_ctx, cur_slot, tpc, n_cache, n_tiles = _num_tiles(table_ptr, T, Lc, HAS_CURRENT)
    stages: gl.constexpr = k_pk.shape[0]
    for i in gl.static_range(stages):
        if i < n_cache:
            _issue_packed(i, n_cache, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T, kd_desc, ks_desc, vd_desc,
                          vs_desc, k_pk, k_sc, v_pk, v_sc, pk_ready)
    if HAS_CURRENT and n_cache == 0:
        _issue_current(0, n_cache, Lc, b, h, ck_desc, k_dec.index(0), cur_bars.index(0))
    # Order (deadlock-free with the consumers' releases): K(j) → [TMA K(j+1) if current: needs
    # QKᵀ(j-1) done] → [TMA V(j) if current: needs V(j-2) released = the consumers hold K(j)] → V(j).
    for j in range(n_tiles):
        _produce(0, j, n_cache, n_tiles, Lc, b, h, B, H, NTC, cg_ptr, k_pk, k_sc, k_dec, k_ready, k_empty,
                 cur_bars.index(0), pk_ready, HAS_CURRENT, D, PK3, DEC, W3, CONV)
        _prefetch_current(j + 1, n_cache, n_tiles, Lc, b, h, ck_desc, k_dec, k_empty, cur_bars.index(0), HAS_CURRENT)
        _prefetch_current(j, n_cache, n_tiles, Lc, b, h, cv_desc, v_dec, v_empty, cur_bars.index(1), HAS_CURRENT)
        _produce(1, j, n_cache, n_tiles, Lc, b, h, B, H, NTC, cg_ptr, v_pk, v_sc, v_dec, v_ready, v_empty,
                 cur_bars.index(1), pk_ready, HAS_CURRENT, D, PK3, DEC, W3, CONV)
        nxt = j + stages
        if nxt < n_cache:
            gl.thread_barrier()  # every producer thread has read stage j % stages (fenced above)
            _issue_packed(nxt, n_cache, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T, kd_desc, ks_desc, vd_desc,
                          vs_desc, k_pk, k_sc, v_pk, v_sc, pk_ready)


@gluon.jit
def _consumer(q_ptr, o_ptr, kg_ptr, vg_ptr, cg_ptr, table_ptr, p_smem, k_dec, v_dec, k_ready, k_empty, v_ready,
              v_empty, qk_scale, Lq, Lc, T, H, B, NTC, stride_qb, stride_qt, stride_qh, stride_ob, stride_ot,
              stride_oh, HAS_CURRENT: gl.constexpr):
    D: gl.constexpr = p_smem.shape[1]
    ROWS: gl.constexpr = p_smem.shape[0]
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[_CONSUMER_WARPS, 1],
                                                  instr_shape=[16, 128, 16])
    Q_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)

    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n_ctx, cur_slot, tpc, n_cache, n_tiles = _num_tiles(table_ptr, T, Lc, HAS_CURRENT)

    # Q tile, σ-ordered, scaled by 2^-e (max |q| in [1, 2)) into fp16, loaded straight into the
    # registers of the QKᵀ wgmma's A operand (loop-invariant: never rewritten while a wgmma runs)
    rows = pid_m * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, Q_OP))
    cols = _perm_cols(gl.arange(0, D, layout=gl.SliceLayout(0, Q_OP)))
    q_off = (b.to(gl.int64) * stride_qb + gl.expand_dims(rows.to(gl.int64) * stride_qt, 1) + h * stride_qh
             + gl.expand_dims(cols, 0))
    qf = gl.load(q_ptr + q_off, mask=gl.expand_dims(rows < Lq, 1), other=0.0).to(gl.float32)
    amax_q = gl.max(gl.max(gl.abs(qf), axis=1), axis=0)
    e_q = gl.minimum(gl.maximum(((amax_q.to(gl.int32, bitcast=True) >> 23) & 0xFF) - 127, -126), 126)
    q_down = ((127 - e_q) << 23).to(gl.float32, bitcast=True)
    q_up = ((127 + e_q) << 23).to(gl.float32, bitcast=True)
    q_op = (qf * q_down).to(gl.float16)
    q_sc = qk_scale * q_up

    zero = gl.zeros([ROWS, D], gl.float32, layout=MMA)
    # tile 0: S, softmax
    fk, fv = _tile_factors(0, n_cache, tpc, n_ctx, cur_slot, table_ptr, kg_ptr, vg_ptr, cg_ptr, b, h, B, H, T, NTC,
                           HAS_CURRENT)
    mbarrier.wait(k_ready.index(0), 0)
    s_tok = warpgroup_mma(q_op, k_dec.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s_tok,))
    mbarrier.arrive(k_empty.index(0), count=1)
    sc = q_sc * fk
    m_i = gl.max(s, axis=1) * sc
    p = gl.exp2(s * sc - gl.expand_dims(m_i, 1))
    l_i = gl.sum(p, axis=1)
    g_acc = gl.where(fv > 0, fv, 1.0)
    p16 = p.to(gl.float16)
    acc = zero

    # Iteration j: QKᵀ(j) and PV(j-1) are issued back to back; the softmax of tile j runs while
    # PV(j-1) is on the tensor cores. P(j-1) is stored, and V(j-2) released, at the top of the
    # next iteration: no CTA barrier follows the PV wait (ptxas would hoist it, and the wait with
    # it, above the softmax).
    fk, fv = _tile_factors(gl.minimum(1, n_tiles - 1), n_cache, tpc, n_ctx, cur_slot, table_ptr, kg_ptr, vg_ptr,
                           cg_ptr, b, h, B, H, T, NTC, HAS_CURRENT)
    for j in range(1, n_tiles):
        bj = j % 2
        bp = (j - 1) % 2
        fk_j, fv_j = fk, fv
        # the next tile's factors, a whole iteration before their use (global-load latency)
        fk, fv = _tile_factors(gl.minimum(j + 1, n_tiles - 1), n_cache, tpc, n_ctx, cur_slot, table_ptr, kg_ptr,
                               vg_ptr, cg_ptr, b, h, B, H, T, NTC, HAS_CURRENT)
        mbarrier.wait(k_ready.index(bj), (j // 2) & 1)
        s_tok = warpgroup_mma(q_op, k_dec.index(bj).permute((1, 0)), zero, use_acc=False, is_async=True)
        p_smem.store(p16)  # P(j-1); PV(j-2), the last reader of p_smem, retired in iteration j-1
        fence_async_shared()
        gl.thread_barrier()  # all P rows stored before the wgmma reads them
        mbarrier.arrive(v_empty.index(bj), count=1, pred=j >= 2)  # V(j-2): PV(j-2) retired
        mbarrier.wait(v_ready.index(bp), ((j - 1) // 2) & 1)
        o_tok = warpgroup_mma(p_smem, v_dec.index(bp), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s_tok,))  # QKᵀ(j) done; PV(j-1) may still run
        mbarrier.arrive(k_empty.index(bj), count=1)
        # The softmax of tile j, while PV(j-1) runs. ptxas schedules a wgmma wait as early as its
        # basic block allows (right after the softmax's first shuffle: the softmax then never
        # overlapped PV), so the softmax gets a block of its own: the branch is always taken (tile
        # factors are >= 0 or NaN by construction; a negative one, i.e. corrupted cache memory,
        # would skip the tile: wrong values, no hang).
        if not (fk_j < 0.0):
            sc = q_sc * fk_j
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * sc)
            p = gl.exp2(s * sc - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
            l_new = l_i * alpha + gl.sum(p, axis=1)
            p16 = p.to(gl.float16)
        else:
            m_new = m_i
            alpha = gl.full_like(m_i, 1.0)
            l_new = l_i
            p16 = gl.zeros_like(s).to(gl.float16)
        m_i = m_new
        l_i = l_new
        g_new = gl.where(fv_j > 0, fv_j, g_acc)  # an all-zero V tile has scale 0
        acc = warpgroup_mma_wait(0, deps=(o_tok,))
        acc = acc * gl.expand_dims(alpha * (g_acc / g_new), 1)
        g_acc = g_new

    bl = (n_tiles - 1) % 2
    p_smem.store(p16)
    fence_async_shared()
    gl.thread_barrier()
    # (V(n-2) and V(n-1) are not released: the producer has no tile left to put there)
    mbarrier.wait(v_ready.index(bl), ((n_tiles - 1) // 2) & 1)
    o_tok = warpgroup_mma(p_smem, v_dec.index(bl), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(o_tok,))

    out = acc * gl.expand_dims(g_acc / l_i, 1)
    o_rows = pid_m * ROWS + gl.arange(0, ROWS, layout=ROW)
    o_cols = _perm_cols(gl.arange(0, D, layout=gl.SliceLayout(0, MMA)))
    o_off = (b.to(gl.int64) * stride_ob + gl.expand_dims(o_rows.to(gl.int64) * stride_ot, 1) + h * stride_oh
             + gl.expand_dims(o_cols, 0))
    gl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=gl.expand_dims(o_rows < Lq, 1))


@gluon.jit
def _fp4_kv_attention_hopper_kernel(
    q_ptr,  # [B, Lq, H, D] bf16
    o_ptr,  # [B, Lq, H, D] bf16 out
    kd_desc,  # TMA over K packed E2M1 [S·B·H·T, D/2] uint8, box [128, D/2]
    ks_desc,  # TMA over K E4M3 block scales [S·B·H·T·D/16/16, 16] uint8, box [128·D/16/16, 16]
    vd_desc,  # (V)
    vs_desc,  # (V)
    ck_desc,  # TMA over the current chunk's K [B·Lc, H·D] bf16, box [128, D] (HAS_CURRENT)
    cv_desc,  # (V)
    kg_ptr,  # [S·B·H·T/128] fp32 K tile scales
    vg_ptr,  # [S·B·H·T/128] fp32 V tile scales
    cg_ptr,  # [2, B, H, Lc/128] fp32 current-chunk tile factors 2^(e-14) (HAS_CURRENT)
    table_ptr,  # [2 + S] int32: n_ctx, slot(current), slot(ctx_0), ...
    qk_scale,  # softmax_scale · log2(e)
    Lq,
    Lc,
    T,
    H,
    B,
    NTC,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_ob,
    stride_ot,
    stride_oh,
    HAS_CURRENT: gl.constexpr,
    num_warps: gl.constexpr,
):
    D: gl.constexpr = 2 * kd_desc.block_type.shape[1]
    gl.static_assert(num_warps == _CONSUMER_WARPS)
    F16_TILE: gl.constexpr = gl.NVMMASharedLayout.get_default_for([_BN, D], gl.float16)
    p_smem = gl.allocate_shared_memory(gl.float16, [_BM, _BN], F16_TILE)
    k_dec = gl.allocate_shared_memory(gl.float16, [2, _BN, D], F16_TILE)
    v_dec = gl.allocate_shared_memory(gl.float16, [2, _BN, D], F16_TILE)
    k_pk = gl.allocate_shared_memory(gl.uint8, [_STAGES] + kd_desc.block_type.shape, kd_desc.layout)
    v_pk = gl.allocate_shared_memory(gl.uint8, [_STAGES] + vd_desc.block_type.shape, vd_desc.layout)
    k_sc = gl.allocate_shared_memory(gl.uint8, [_STAGES] + ks_desc.block_type.shape, ks_desc.layout)
    v_sc = gl.allocate_shared_memory(gl.uint8, [_STAGES] + vs_desc.block_type.shape, vs_desc.layout)
    pk_ready = gl.allocate_shared_memory(gl.int64, [_STAGES, 1], mbarrier.MBarrierLayout())
    cur_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(_STAGES):
        mbarrier.init(pk_ready.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(cur_bars.index(i), count=1)
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=1)

    gl.warp_specialize([
        (_consumer, (q_ptr, o_ptr, kg_ptr, vg_ptr, cg_ptr, table_ptr, p_smem, k_dec, v_dec, k_ready, k_empty, v_ready,
                     v_empty, qk_scale, Lq, Lc, T, H, B, NTC, stride_qb, stride_qt, stride_qh, stride_ob, stride_ot,
                     stride_oh, HAS_CURRENT)),
        (_producer, (kd_desc, ks_desc, vd_desc, vs_desc, ck_desc, cv_desc, cg_ptr, table_ptr, k_pk, k_sc, v_pk, v_sc,
                     k_dec, v_dec, pk_ready, cur_bars, k_ready, k_empty, v_ready, v_empty, Lc, T, H, B, NTC,
                     HAS_CURRENT)),
    ], [_PRODUCER_WARPS], [_PRODUCER_REGS])


# ---------------------------------------------------------------------------------------------
# Current-chunk tile factors (Triton): 2^(e-14) per 128-token tile of K and V, e = ⌊log2 amax⌋
# ---------------------------------------------------------------------------------------------


@triton.jit
def _current_scales_kernel(
    k_ptr,  # [B, Lc, H, D] bf16 current-chunk K
    v_ptr,  # [B, Lc, H, D] bf16 current-chunk V (same strides)
    out_ptr,  # [2, B, H, NTC] fp32 out: the value of one unit of the tile's fp16 copy
    Lc,
    H,
    B,
    NTC,
    stride_b,
    stride_t,
    stride_h,
    D: tl.constexpr,
    BR: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    kv = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    if kv == 0:
        x_ptr = k_ptr + base
    else:
        x_ptr = v_ptr + base
    amax = 0.0
    for r0 in range(0, 128, BR):
        rows = pid_t * 128 + r0 + tl.arange(0, BR)
        offs = rows[:, None].to(tl.int64) * stride_t + tl.arange(0, D)[None, :]
        a = tl.abs(tl.load(x_ptr + offs, mask=rows[:, None] < Lc, other=0.0).to(tl.float32))
        a = tl.where(a != a, float("inf"), a)  # NaN: any finite factor; the NaN itself propagates
        amax = tl.maximum(amax, tl.max(tl.max(a, axis=1), axis=0))
    e = ((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.minimum(tl.maximum(e, -112), 127)  # the factor and its inverse stay normal fp32
    g = ((e - 14 + 127) << 23).to(tl.float32, bitcast=True)
    g = tl.where(amax > 0, g, 0.0)  # an all-zero tile: factor 0, like a zero cache tile
    tl.store(out_ptr + ((kv * B + b) * H + h) * NTC + pid_t, g)


register_aot(
    _current_scales_kernel,
    signature={"k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*fp32", "Lc": "i32", "H": "i32", "B": "i32",
               "NTC": "i32", "stride_b": "i64", "stride_t": "i64", "stride_h": "i64"},
    constexprs={"D": 128, "BR": 32},
)


def current_scales(current_k: torch.Tensor, current_v: torch.Tensor) -> torch.Tensor:
    """[2, B, H, Lc/128] fp32 ``2^(⌊log2 amax⌋ - 14)`` of every 128-token tile of the current chunk's
    K and V (the kernel stores ``x / factor`` in fp16: max magnitude in [2^14, 2^15)); 0 for an
    all-zero tile."""
    if current_k.stride() != current_v.stride():  # the kernel reads both with K's strides
        current_k, current_v = current_k.contiguous(), current_v.contiguous()
    b, lc, h, d = current_k.shape
    ntc = triton.cdiv(lc, 128)
    out = torch.empty((2, b, h, ntc), dtype=torch.float32, device=current_k.device)
    _current_scales_kernel[(ntc, b * h, 2)](
        current_k, current_v, out, lc, h, b, ntc, current_k.stride(0), current_k.stride(1), current_k.stride(2),
        D=d, BR=32, num_warps=4,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


@functools.cache
def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def supported(q, view, current_k, current_v, compute: str) -> bool:
    """Whether the Gluon kernel can run this call (see the module docstring)."""
    if compute != "bf16" or view.data is None or q.device.type != "cuda":
        return False
    if not _is_hopper(_device_index(q.device)):
        return False
    d = q.shape[-1]
    if d != HEAD_DIM or q.dtype != torch.bfloat16 or q.stride(-1) != 1:
        return False
    if view.chunk_tokens % BLOCK_N != 0 or view.data[0].numel() // (d // 2) >= 2**31 - BLOCK_N:
        return False
    if current_k is not None:
        for x in (current_k, current_v):
            if x.dtype != torch.bfloat16 or not _token_rows(x):
                return False
        if current_k.shape[1] % BLOCK_N != 0 or current_k.shape[0] * current_k.shape[1] >= 2**31 - BLOCK_N:
            return False
    return True


def _token_rows(x: torch.Tensor) -> bool:
    """[B, L, H, D] readable by TMA as the 2-D view [B·L, H·D] (row stride = the token stride):
    contiguous, or e.g. the K/V slice of a fused [B, L, 3, H, D] QKV tensor."""
    b, l, h, d = x.shape
    return (x.stride(3) == 1 and x.stride(2) == d and (b == 1 or x.stride(0) == l * x.stride(1))
            and (x.stride(1) * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0)


def _token_rows_descriptor(x: torch.Tensor, layout):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    b, l, h, d = x.shape
    return TensorDescriptor(x, [b * l, h * d], [x.stride(1), 1], [BLOCK_N, d], layout)


_DUMMY: dict[int, torch.Tensor] = {}


def _bf16_tile_layout():
    return gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.bfloat16)


def attention(q, view, current_k, current_v, softmax_scale: float) -> torch.Tensor:
    """Run the Gluon kernel (arguments as ``fp4_kv_attention._attention_triton``; check
    :func:`supported` first). Returns [B, Lq, H, D] bf16."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    b, lq, h, d = q.shape
    t = view.chunk_tokens
    out = torch.empty_like(q)
    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    kd_desc = TensorDescriptor.from_tensor(view.data[0].reshape(-1, d // 2), [BLOCK_N, d // 2], u8)
    vd_desc = TensorDescriptor.from_tensor(view.data[1].reshape(-1, d // 2), [BLOCK_N, d // 2], u8)
    rows_per_line = 16 // (d // 16)  # 16-byte lines of scale codes (TMA's minimum row)
    ks_desc = TensorDescriptor.from_tensor(view.scale[0].reshape(-1, 16), [BLOCK_N // rows_per_line, 16], u8)
    vs_desc = TensorDescriptor.from_tensor(view.scale[1].reshape(-1, 16), [BLOCK_N // rows_per_line, 16], u8)
    kg = view.global_scale[0].reshape(-1)
    vg = view.global_scale[1].reshape(-1)
    has_cur = current_k is not None
    if has_cur:
        lc = current_k.shape[1]
        ck_desc = _token_rows_descriptor(current_k, _bf16_tile_layout())
        cv_desc = _token_rows_descriptor(current_v, _bf16_tile_layout())
        cg = current_scales(current_k, current_v)
        ntc = cg.shape[-1]
    else:
        lc, ntc = 0, 1
        idx = _device_index(q.device)
        if idx not in _DUMMY:
            _DUMMY[idx] = torch.zeros((BLOCK_N, d), dtype=torch.bfloat16, device=q.device)
        ck_desc = cv_desc = TensorDescriptor.from_tensor(_DUMMY[idx], [BLOCK_N, d], _bf16_tile_layout())
        cg = kg
    grid = (triton.cdiv(lq, BLOCK_M), b * h)
    _fp4_kv_attention_hopper_kernel[grid](
        q, out, kd_desc, ks_desc, vd_desc, vs_desc, ck_desc, cv_desc, kg, vg, cg, view.table,
        softmax_scale * _LOG2E, lq, lc, t, h, b, ntc,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HAS_CURRENT=has_cur, num_warps=NUM_WARPS,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Probe: run the kernel once in a child process (a hang or a crash cannot take the caller down)
# ---------------------------------------------------------------------------------------------

PROBE_TIMEOUT_S = 300


def _probe_key(device_index: int) -> str:
    import hashlib

    with open(__file__, "rb") as f:
        src = hashlib.sha1(f.read()).hexdigest()[:16]
    return f"{src}|triton {triton.__version__}|torch {torch.__version__}|{torch.cuda.get_device_name(device_index)}"


def _probe_cache_path() -> str:
    root = os.environ.get("LONGLIVE_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "longlive_kernels"))
    return os.path.join(root, "fp4_kv_gluon_probe.json")


def run_probe(device_index: int, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Compile and run the kernel on small problems in a fresh process, compare with the portable
    kernel; (ok, message). A hang is killed after ``timeout`` seconds."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = str(device_index) if "CUDA_VISIBLE_DEVICES" not in os.environ else \
        os.environ["CUDA_VISIBLE_DEVICES"].split(",")[device_index]
    cmd = [sys.executable, "-m", "longlive_kernels.attention.fp4_kv_attention_hopper", "--probe"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {timeout:.0f} s (kernel hang?)"
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0 or "PROBE OK" not in proc.stdout:
        return False, f"probe failed (exit {proc.returncode}):\n{tail}"
    return True, proc.stdout.strip().splitlines()[-1]


_PROBED: dict[int, tuple[bool, str]] = {}


def probe_ok(device: torch.device) -> bool:
    """Result of :func:`run_probe` for this device (run once per process; cached on disk by kernel
    source, Triton/torch versions and GPU name). False while a CUDA graph is being captured and the
    probe has not run yet."""
    import json
    import warnings

    idx = _device_index(device)
    if idx in _PROBED:
        return _PROBED[idx][0]
    if torch.cuda.is_current_stream_capturing():
        return False
    key = _probe_key(idx)
    path = _probe_cache_path()
    cache = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        pass
    if key in cache:
        _PROBED[idx] = (bool(cache[key][0]), str(cache[key][1]))
    else:
        _PROBED[idx] = run_probe(idx)
        cache[key] = list(_PROBED[idx])
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(cache, f, indent=1)
        except OSError:
            pass
    if not _PROBED[idx][0]:
        warnings.warn(f"fp4_kv_attention: Hopper Gluon kernel disabled: {_PROBED[idx][1]}", RuntimeWarning,
                      stacklevel=3)
    return _PROBED[idx][0]


def _probe_cases():
    """(name, chunk_tokens, n_chunks, Lq, Lc or None, heads, batch): tiles per chunk 1 and 3, odd and
    even tile counts, a partial query tile, with and without a BF16 current chunk, zero tiles."""
    return [
        ("ctx3+cur", 384, 4, 200, 256, 2, 1),
        ("ctx3+slot", 384, 4, 128, None, 3, 1),
        ("t128,b2", 128, 3, 300, 128, 2, 2),
        ("t128,slot", 128, 2, 64, None, 1, 1),
        ("first-chunk+cur", 256, 1, 130, 384, 1, 1),
    ]


def _probe_main() -> int:
    import time

    from . import fp4_kv_attention as portable
    from .kv_cache import FP4KVCache

    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    worst = 0.0
    t0 = time.time()
    for name, t, n, lq, lc, h, b in _probe_cases():
        cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=128, chunk_tokens=t, max_chunks=4, batch_size=b,
                           device=dev)
        for c in range(n):
            cache.start_chunk(c)
            scale = torch.exp2(torch.randint(-3, 4, (1, 1, h, 1), device=dev).float())
            k = (torch.randn(b, t, h, 128, device=dev) * scale).bfloat16()
            v = (torch.randn(b, t, h, 128, device=dev) * scale).bfloat16()
            if c == 1:
                v[:, :128] = 0  # an all-zero V tile (tile scale 0)
            cache.update(0, k, v)
        q = torch.randn(b, lq, h, 128, device=dev).bfloat16()
        cur = {}
        if lc is not None:
            cur = {"current_k": torch.randn(b, lc, h, 128, device=dev).bfloat16() * 3,
                   "current_v": torch.randn(b, lc, h, 128, device=dev).bfloat16()}
        view = cache.layer_view(0)
        ck, cv = cur.get("current_k"), cur.get("current_v")
        assert supported(q, view, ck, cv, "bf16"), name
        got = attention(q, view, ck, cv, 128**-0.5)
        want = portable._attention_triton(q, view, ck, cv, 128**-0.5, "bf16", portable=True)
        torch.cuda.synchronize()
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        worst = max(worst, err)
        print(f"{name}: rel. err vs portable kernel {err:.2e}", flush=True)
        if not err <= 5e-3:
            print(f"PROBE MISMATCH {name}: {err:.3e}")
            return 1
    print(f"PROBE OK: worst rel. err vs portable {worst:.2e} ({time.time() - t0:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# sm_90a compile report (CPU machines: tests; no GPU needed)
# ---------------------------------------------------------------------------------------------


def setmaxnreg_regions(sass: str) -> list[tuple[str, int, int]]:
    """[(address, register limit, highest register used + 1)] for the code after each
    ``USETMAXREG`` in program order, up to the next one (a partition's body after its setmaxnreg)."""
    import re

    out, limit, used, start = [], None, 0, None
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        text = m.group(2)
        if "USETMAXREG" in text:
            if limit is not None:
                out.append((start, limit, used))
            limit, used, start = int(text.split()[-1], 0), 0, m.group(1)
            continue
        for r in re.findall(r"\bR(\d+)\b", text):
            used = max(used, int(r) + 1)
    if limit is not None:
        out.append((start, limit, used))
    return out


def compile_report(has_current: bool = True) -> dict:
    """Compile the kernel for sm_90a (as a launch at the model shape would), run ptxas -v and
    cuobjdump: registers, spills, shared memory, wgmma count and SASS instruction histogram of the
    consumer loop. Must run in a process without TRITON_INTERPRET."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)

    def desc(shape, dtype, block, layout):
        return mangle_type(TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), block, layout))

    rows = 4 * 24 * 7040
    sig = {"q_ptr": "*bf16", "o_ptr": "*bf16",
           "kd_desc": desc((rows, 64), torch.uint8, [BLOCK_N, 64], u8),
           "ks_desc": desc((rows // 2, 16), torch.uint8, [BLOCK_N // 2, 16], u8),
           "vd_desc": desc((rows, 64), torch.uint8, [BLOCK_N, 64], u8),
           "vs_desc": desc((rows // 2, 16), torch.uint8, [BLOCK_N // 2, 16], u8),
           "ck_desc": desc((7040, 24 * 128), torch.bfloat16, [BLOCK_N, 128], _bf16_tile_layout()),
           "cv_desc": desc((7040, 24 * 128), torch.bfloat16, [BLOCK_N, 128], _bf16_tile_layout()),
           "kg_ptr": "*fp32", "vg_ptr": "*fp32", "cg_ptr": "*fp32", "table_ptr": "*i32", "qk_scale": "fp32"}
    for n in ("Lq", "Lc", "T", "H", "B", "NTC"):
        sig[n] = "i32"
    for n in ("stride_qb", "stride_qt", "stride_qh", "stride_ob", "stride_ot", "stride_oh"):
        sig[n] = "i64"
    fn = _fp4_kv_attention_hopper_kernel
    names = list(fn.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, v in sig.items()
             if (isinstance(v, str) and v.startswith("*")) or a in ("stride_qt", "stride_qh", "stride_ot",
                                                                     "stride_oh", "T", "Lc")}
    constexprs = {"HAS_CURRENT": has_current, "num_warps": NUM_WARPS}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "k.ptx"), "w") as f:
            f.write(compiled.asm["ptx"])
        ptxas = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", os.path.join(tmp, "k.ptx"),
                                "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=False).stderr
        with open(os.path.join(tmp, "k.cubin"), "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, check=False).stdout
    ptx = compiled.asm["ptx"]
    regs = re.search(r"Used (\d+) registers", ptxas)
    return {
        "sass": sass,
        "regions": setmaxnreg_regions(sass),
        "ptxas": ptxas,
        "registers": int(regs.group(1)) if regs else None,
        "spills": "0 bytes spill stores, 0 bytes spill loads" not in ptxas,
        "serialized": "serialized" in ptxas,
        "smem": compiled.metadata.shared,
        "hgmma": len(re.findall(r"\bHGMMA\.64x128x16\.F32\b", sass)),
        "setmaxnreg": re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx),
        "sass_instructions": len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, flags=re.MULTILINE)),
        "mufu_ex2": len(re.findall(r"MUFU\.EX2", sass)),
        "hmul2": len(re.findall(r"\bHMUL2\b", sass)),
    }


if __name__ == "__main__":
    import sys

    if "--probe" in sys.argv:
        sys.exit(_probe_main())
    if "--report" in sys.argv:
        import json

        for cur in (True, False):
            rep = compile_report(cur)
            rep.pop("ptxas")
            print(json.dumps({"has_current": cur, **rep}))
