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
values per 32-bit register, 3-4 logic ops per pair (``_DECODE_ASM`` in
``fp4_kv_attention_hopper_operands.py``, with the current chunk's conversion; SASS: IMAD.SHL, 2 LOP3,
LEA.HI, HMUL2). The pair a register naturally holds is (element k, element k+4) of a 4-byte word,
so the kernel works in a permuted head_dim order ``σ = [0, 4, 1, 5, 2, 6, 3, 7]`` within every
group of 8: Q is loaded in that order (QKᵀ is invariant under a common permutation of head_dim)
and O is stored with the inverse permutation (PV permutes the output columns).

Requirements (else the portable kernel runs): Hopper GPU, head_dim 128, FP4 storage, q bf16,
``compute="bf16"``, ``chunk_tokens % 128 == 0``, a current chunk (if passed) with ``Lc % 128 == 0``
whose tokens are rows of one stride (contiguous, or the K/V slice of a fused QKV tensor). The
kernel compiles for sm_90a on CPU machines (tests check registers, spills, wgmma count, asynchrony
and the placement of the PV wait: ``fp4_kv_attention_hopper_check.compile_report``); it runs only on
a GPU, after :func:`probe_ok` ran it once in a child process.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .fp4_kv_attention_hopper_operands import _convert_rows, _decode_rows, _perm_cols, current_scales
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

# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------


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
             W3: gl.constexpr, CONV: gl.constexpr, ABLATE: gl.constexpr):
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
        if (ABLATE & 1) == 0:
            # ablation 4 decodes half the rows: what a CTA pair sharing each decoded tile would do
            dec_rows: gl.constexpr = 128 // (1 + ((ABLATE >> 2) & 1))
            for r in gl.static_range(0, dec_rows, _SUB):
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
              HAS_CURRENT: gl.constexpr, ABLATE: gl.constexpr):
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
                 cur_bars.index(0), pk_ready, HAS_CURRENT, D, PK3, DEC, W3, CONV, ABLATE)
        _prefetch_current(j + 1, n_cache, n_tiles, Lc, b, h, ck_desc, k_dec, k_empty, cur_bars.index(0), HAS_CURRENT)
        _prefetch_current(j, n_cache, n_tiles, Lc, b, h, cv_desc, v_dec, v_empty, cur_bars.index(1), HAS_CURRENT)
        _produce(1, j, n_cache, n_tiles, Lc, b, h, B, H, NTC, cg_ptr, v_pk, v_sc, v_dec, v_ready, v_empty,
                 cur_bars.index(1), pk_ready, HAS_CURRENT, D, PK3, DEC, W3, CONV, ABLATE)
        nxt = j + stages
        if nxt < n_cache:
            gl.thread_barrier()  # every producer thread has read stage j % stages (fenced above)
            _issue_packed(nxt, n_cache, tpc, n_ctx, cur_slot, table_ptr, b, h, B, H, T, kd_desc, ks_desc, vd_desc,
                          vs_desc, k_pk, k_sc, v_pk, v_sc, pk_ready)


@gluon.jit
def _consumer(q_ptr, o_ptr, kg_ptr, vg_ptr, cg_ptr, table_ptr, p_smem, k_dec, v_dec, k_ready, k_empty, v_ready,
              v_empty, qk_scale, Lq, Lc, T, H, B, NTC, stride_qb, stride_qt, stride_qh, stride_ob, stride_ot,
              stride_oh, HAS_CURRENT: gl.constexpr, ABLATE: gl.constexpr):
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
            if (ABLATE & 2) != 0:  # timing only: the softmax without its exponentials (MUFU.EX2)
                p = s * sc - gl.expand_dims(m_new, 1)
                alpha = m_i - m_new + 1.0
            else:
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
    ABLATE: gl.constexpr,  # 0; timing ablations (wrong results): 1 = no K/V decode, 2 = no exponentials,
    # 4 = half the K/V decode
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
                     stride_oh, HAS_CURRENT, ABLATE)),
        (_producer, (kd_desc, ks_desc, vd_desc, vs_desc, ck_desc, cv_desc, cg_ptr, table_ptr, k_pk, k_sc, v_pk, v_sc,
                     k_dec, v_dec, pk_ready, cur_bars, k_ready, k_empty, v_ready, v_empty, Lc, T, H, B, NTC,
                     HAS_CURRENT, ABLATE)),
    ], [_PRODUCER_WARPS], [_PRODUCER_REGS])


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


def attention(q, view, current_k, current_v, softmax_scale: float, *, _ablate: int = 0) -> torch.Tensor:
    """Run the Gluon kernel (arguments as ``fp4_kv_attention_triton.attention``; check
    :func:`supported` first). Returns [B, Lq, H, D] bf16. ``_ablate`` (timing probes only, wrong
    results): 1 skips the K/V decode, 2 the softmax's exponentials, 3 both, 4 decodes half of
    every tile (``bench/attention/bench_kv_cache.py --gluon-ablations``)."""
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
        HAS_CURRENT=has_cur, ABLATE=_ablate, num_warps=NUM_WARPS,
    )
    return out


# the checks live in their own module; re-exported here, where callers and tests look for them
from .fp4_kv_attention_hopper_check import (
    PROBE_TIMEOUT_S,
    compile_report,
    probe_ok,
    run_probe,
    setmaxnreg_regions,
)
from .fp4_kv_attention_hopper_operands import sigma_permutation

__all__ = ["PROBE_TIMEOUT_S", "attention", "compile_report", "current_scales", "probe_ok", "run_probe",
           "setmaxnreg_regions", "sigma_permutation", "supported"]
