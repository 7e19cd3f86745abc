"""Small-M NVFP4 GEMM on Hopper in Gluon: a memory-bound GEMV-style kernel for M ≤ 64 tokens.

``out[M, N] = x[M, K] · Wᵀ`` with W an NVFP4 weight [N, K] and x bf16/fp16 (W4A16) or NVFP4 (W4A4).
At M ≤ 64 the GEMM is bound by reading W (a 3072×3072 NVFP4 weight is 5.3 MB: ~2 µs at 3 TB/s), so
the kernel streams each weight row once, straight from global memory into MMA registers:

- Roles are swapped (``outᵀ = W · xᵀ``): the weight rows are the MMA's M side (``mma.sync``
  m16n8k16, 16 weight rows × 8 tokens per instruction), the tokens its N side, so M = 1 wastes at
  most 7/8 of a cheap instruction instead of 15/16 of a 64-row wgmma tile.
- K is permuted inside every 4·KT-element k-step so that each thread's A fragment is one contiguous
  run of KT elements (KT/2 packed bytes: one 16- or 8-byte load, one or two NVFP4 blocks, so one or
  two scales) of a weight row: the thread of quad lane q holds elements [KT·q, KT·q + KT) and the
  MMA's k index 16s + 8j + 2q + e is mapped to element KT·q + 4s + 2j + e. The activations use the
  same permutation, which again makes each thread's B fragment a contiguous run of one token row
  (16-byte loads). A dot product does not depend on the order of its terms, so the result is the
  plain GEMM; reshape/permute of the loaded registers reach the MMA operand layouts without moving
  data (checked at compile time: ``convert_layout(..., assert_trivial=True)``).
- The packed codes are decoded by the large-M kernel's inline-PTX generators (``gemm_hopper.py``,
  bf16 in their two-shift lane form: bf16x2/f16x2 pairs ``e2m1 · s_block`` (· 2^-8 for bf16), exact),
  then fed to ``mma.sync`` — a synchronous MMA, so register operands carry no asynchronous-read hazard.
- A CTA of W warps owns 16·RT·W weight rows (each warp 16·RT rows); all warps read the same
  activation slice (L1 serves the repeats). When the row tiles alone do not fill the GPU, K is
  split over the grid's second axis and the last CTA of each row tile (an atomic counter per tile,
  self-resetting) sums the FP32 partials in a fixed order: deterministic, one launch.
- Loads of k-step i+1 are issued before the MMAs of k-step i (register double buffering), so every
  warp keeps two k-steps of weight bytes in flight.

The epilogue applies the tensor scale(s) and the bias in FP32 and writes ``out`` rounded once.
Runs only on a GPU (Hopper; any sm_80+ would do); compiled for sm_90a on CPU machines by the tests.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from .gemm_hopper import _scale_pairs, _workspace, decode_bf16_ptx, decode_fp16_ptx

MAX_M = 64  # largest M this kernel is used for


# ---------------------------------------------------------------------------------------------
# Decode of one 32-bit word of packed codes (4 bytes = 8 elements, one block scale)
# ---------------------------------------------------------------------------------------------

# The routines of gemm_hopper.py for one 32-bit word of 4 packed bytes with one scale pair for all
# of them. inline_asm_elementwise sees the word broadcast over its 8 elements (pack=8: operands
# $4..$11 are copies of the word, $12..$19 of the scale pair) and returns the 8 elements as the four
# bf16x2/f16x2 registers $0..$3 (byte i → elements 2i, 2i+1), which are the MMA operand registers.
_WORD_BF16 = gl.constexpr(decode_bf16_ptx(("$12",) * 4, multiply=False))
_WORD_FP16 = gl.constexpr(decode_fp16_ptx(("$12",) * 4))
_WORD_CONSTRAINTS = gl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 16))

# The K permutation (module docstring): the permutes that bring the decoded weight words and the
# loaded activation pairs into MMA k order k = 16s + 8j + 2q + e (tests/fp4/test_gemm.py replays them
# on index tensors).
_W_PERM_KT32 = gl.constexpr((0, 2, 3, 4, 5, 1, 6))
_W_PERM_KT16 = gl.constexpr((0, 2, 3, 4, 1, 5))
_X_PERM = gl.constexpr((2, 3, 1, 4, 0))


@gluon.jit
def _as_halves(words, OP_DTYPE: gl.constexpr, PAIRS: gl.constexpr):
    """int32 words [.., n] → OP_DTYPE [.., n, 2] (the two 16-bit halves, low first) without moving data:
    the words travel through the loop as 32-bit registers (16-bit loop-carried values cost repacking)."""
    w2 = gl.expand_dims(gl.convert_layout(words, gl.SliceLayout(len(PAIRS.shape) - 1, PAIRS), assert_trivial=True),
                        len(PAIRS.shape) - 1)
    w2 = w2.broadcast_to(PAIRS.shape)
    if OP_DTYPE == gl.bfloat16:
        return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r", [w2], dtype=gl.bfloat16, is_pure=True, pack=2)
    else:
        return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r", [w2], dtype=gl.float16, is_pure=True, pack=2)


@gluon.jit
def _decode_words(words, pairs, OP_DTYPE: gl.constexpr):
    """int32 words [.., 8] and scale pairs [.., 8] (each broadcast over the word's 8 elements) →
    OP_DTYPE [.., 8]: element 2i + e = element e of byte i of the word, times the scale (exactly)."""
    if OP_DTYPE == gl.bfloat16:
        return gl.inline_asm_elementwise(_WORD_BF16, _WORD_CONSTRAINTS, [words, pairs], dtype=gl.bfloat16,
                                         is_pure=True, pack=8)
    else:
        return gl.inline_asm_elementwise(_WORD_FP16, _WORD_CONSTRAINTS, [words, pairs], dtype=gl.float16,
                                         is_pure=True, pack=8)


# ---------------------------------------------------------------------------------------------
# Layouts (constexpr functions)
# ---------------------------------------------------------------------------------------------


@gluon.constexpr_function
def _mma_layout(num_warps):
    return gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])


@gluon.constexpr_function
def _words_layout(R, KT, num_warps, WEIGHTS, RANK):
    """Packed codes of one 4·KT-element k-step as 32-bit words, [R, KT/2] (RANK 2, for the loads) or
    [R, KT/4 blocks, 2 words] (RANK 3). Lane (g, q) holds the KT/8 words [KT/8·q, KT/8·(q+1)) of rows
    g + 8i (WEIGHTS: + 16·W·t, warp w owning the 16-row bands w + W·t) or tokens g + 8t (every warp
    holding the same tokens)."""
    lg = lambda v: int(v).bit_length() - 1
    if RANK == 2:
        regs = [[0, 1 << b] for b in range(lg(KT // 8))]
        qb = [[0, KT // 8], [0, KT // 4]]
        row = lambda r: [r, 0]
    else:
        regs = [[0, 0, 1]] + ([[0, 1, 0]] if KT == 32 else [])
        qb = [[0, KT // 16, 0], [0, KT // 8, 0]]
        row = lambda r: [r, 0, 0]
    if WEIGHTS:
        regs += [row(8)] + [row(16 * num_warps << t) for t in range(lg(R // (16 * num_warps)))]
        warps = [row(16 << i) for i in range(lg(num_warps))]
    else:
        regs += [row(8 << t) for t in range(lg(R // 8))]
        warps = [row(0) for _ in range(lg(num_warps))]
    lanes = qb + [row(1), row(2), row(4)]
    shape = [R, KT // 2] if RANK == 2 else [R, KT // 4, 2]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                      shape=shape)


@gluon.constexpr_function
def _with_elements(layout):
    """A [.., 2 words] layout with a trailing dim of the 8 elements of each word, in registers."""
    rank = len(layout.shape)
    regs = [[0] * rank + [1 << b] for b in range(3)] + [v + [0] for v in layout.reg_bases]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=[v + [0] for v in layout.lane_bases],
                                      warp_bases=[v + [0] for v in layout.warp_bases], block_bases=[],
                                      shape=list(layout.shape) + [8])


@gluon.constexpr_function
def _token_pairs_layout(BM, KT, num_warps, HALVES):
    """Dense activations of one k-step as 32-bit words [BM, 2·KT] (two elements each; HALVES: as
    [BM, 2·KT, 2] elements): lane (g, q) holds tokens g + 8t, elements [KT·q, KT·(q+1))."""
    lg = lambda v: int(v).bit_length() - 1
    z = [0] if HALVES else []
    regs = ([[0, 0, 1]] if HALVES else []) + [[0, 1 << b] + z for b in range(lg(KT // 2))]
    regs += [[8 << t, 0] + z for t in range(lg(BM // 8))]
    lanes = [[0, KT // 2] + z, [0, KT] + z, [1, 0] + z, [2, 0] + z, [4, 0] + z]
    warps = [[0, 0] + z for _ in range(lg(num_warps))]
    shape = [BM, 2 * KT] + ([2] if HALVES else [])
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                      shape=shape)


# ---------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------


@gluon.jit
def _word_ptrs(base, row_off, k_word, NW: gl.constexpr, LAYOUT2: gl.constexpr):
    """Pointers [R, NW] to the words of one k-step at word column k_word (a multiple of NW) of the
    rows at offsets row_off ([R, 1], in words)."""
    col = gl.multiple_of(k_word, NW) + gl.expand_dims(gl.arange(0, NW, layout=gl.SliceLayout(0, LAYOUT2)), 0)
    return base + row_off + col


@gluon.jit
def _load_words(ptrs, live, k_word, K, NW: gl.constexpr, EVEN_K: gl.constexpr, LAYOUT3: gl.constexpr):
    """Words [R, NW/2, 2] at ``ptrs`` (vector loads of KT/8 words per thread and row) when ``live``
    (else zeros), viewed as [blocks, 2 words]; words at or past K/8 read as zero."""
    if EVEN_K:
        words = gl.load(ptrs, mask=live, other=0)
    else:
        col = k_word + gl.arange(0, NW, layout=gl.SliceLayout(0, ptrs.type.layout))
        words = gl.load(ptrs, mask=gl.expand_dims(col < K // 8, 0) & live, other=0)
    return gl.convert_layout(words.reshape([words.shape[0], NW // 2, 2]), LAYOUT3, assert_trivial=True)


@gluon.jit
def _load_scales(ptrs, live, k_block, K, NB: gl.constexpr, EVEN_K: gl.constexpr):
    """Block-scale codes [R, NB] at ``ptrs`` when ``live`` (else zeros; zero past K/16)."""
    if EVEN_K:
        return gl.load(ptrs, mask=live, other=0)
    else:
        col = k_block + gl.arange(0, NB, layout=gl.SliceLayout(0, ptrs.type.layout))
        return gl.load(ptrs, mask=gl.expand_dims(col < K // 16, 0) & live, other=0)


@gluon.jit
def _decode_step(words, scale_codes, R: gl.constexpr, KT: gl.constexpr, OP_DTYPE: gl.constexpr,
                 WORDS8: gl.constexpr):
    """Words [R, NB, 2] × block-scale codes [R, NB] of one k-step → the operand [R, 4·KT] in MMA k
    order: k = 16s + 8j + 2q + e holds element KT·q + 4s + 2j + e of the step. WORDS8 is the words'
    layout with a trailing 8-element register dim (the decoded elements of each word)."""
    NB: gl.constexpr = KT // 4
    w8 = gl.expand_dims(gl.convert_layout(words, gl.SliceLayout(3, WORDS8), assert_trivial=True), 3)
    p = _scale_pairs(gl.convert_layout(scale_codes, gl.SliceLayout(2, gl.SliceLayout(3, WORDS8)),
                                       assert_trivial=True), OP_DTYPE)
    p8 = gl.expand_dims(gl.expand_dims(p, 2), 3)
    v = _decode_words(w8.broadcast_to([R, NB, 2, 8]), p8.broadcast_to([R, NB, 2, 8]), OP_DTYPE)
    # v[r, nb, w, 4h + 2j + e] is element 16·nb + 8w + 4h + 2j + e of the step
    if KT == 32:  # nb = 2q + n1, s = 4·n1 + 2w + h: [r, q, n1, w, h, j, e] → [r, n1, w, h, j, q, e]
        v = v.reshape([R, 4, 2, 2, 2, 2, 2]).permute(_W_PERM_KT32.value)
    else:  # nb = q, s = 2w + h: [r, q, w, h, j, e] → [r, w, h, j, q, e]
        v = v.reshape([R, 4, 2, 2, 2, 2]).permute(_W_PERM_KT16.value)
    return v.reshape([R, 4 * KT])


@gluon.jit
def _gemv_kernel(
    w_ptr,  # [N, K/8] int32: packed E2M1 codes as 32-bit words, row stride stride_wn (words)
    w_scale_ptr,  # [N, K/16] uint8 E4M3, row stride stride_wsn
    w_gs_ptr,  # [1] fp32 tensor scale of W
    x_ptr,  # [M, K/2] int32: bf16/fp16 pairs, or [M, K/8] int32 packed E2M1 words (X_NVFP4); row stride stride_xm (words)
    x_scale_ptr,  # [M, K/16] uint8 E4M3 (X_NVFP4), row stride stride_xsm
    x_gs_ptr,  # [1] fp32 tensor scale of x (X_NVFP4)
    bias_ptr,  # [N] float (HAS_BIAS)
    out_ptr,  # [M, N] out dtype, row stride stride_om
    ws_ptr,  # [SPLIT_K, row tiles, BM, ROWS] fp32 partials (SPLIT_K > 1)
    sem_ptr,  # [row tiles] int32 arrival counters, zero on entry and on exit (SPLIT_K > 1)
    M,
    N,
    K,
    stride_wn,
    stride_wsn,
    stride_xm,
    stride_xsm,
    stride_om,
    k_per_split,  # K range of one split (multiple of 4·KT)
    X_NVFP4: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    EVEN_K: gl.constexpr,  # K is a multiple of 4·KT
    OP_DTYPE: gl.constexpr,
    BM: gl.constexpr,  # token tile: 8, 16, 32 or 64
    RT: gl.constexpr,  # 16-row weight tiles per warp
    KT: gl.constexpr,  # elements of a row per thread per k-step: 16 or 32
    SPLIT_K: gl.constexpr,
    num_warps: gl.constexpr,
):
    ROWS: gl.constexpr = 16 * RT * num_warps
    BK: gl.constexpr = 4 * KT
    NW: gl.constexpr = KT // 2  # 32-bit words of packed codes per row and k-step
    NB: gl.constexpr = KT // 4  # NVFP4 blocks per row and k-step
    MMA: gl.constexpr = _mma_layout(num_warps)
    DOT_A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    DOT_B: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    W_WORDS2: gl.constexpr = _words_layout(ROWS, KT, num_warps, True, 2)
    W_WORDS: gl.constexpr = _words_layout(ROWS, KT, num_warps, True, 3)
    W_SCALES: gl.constexpr = gl.SliceLayout(2, W_WORDS)
    X_WORDS2: gl.constexpr = _words_layout(BM, KT, num_warps, False, 2)
    X_WORDS: gl.constexpr = _words_layout(BM, KT, num_warps, False, 3)
    X_SCALES: gl.constexpr = gl.SliceLayout(2, X_WORDS)
    W_WORDS8: gl.constexpr = _with_elements(W_WORDS)
    X_WORDS8: gl.constexpr = _with_elements(X_WORDS)
    X_PAIRS: gl.constexpr = _token_pairs_layout(BM, KT, num_warps, False)
    X_HALVES: gl.constexpr = _token_pairs_layout(BM, KT, num_warps, True)
    OUT: gl.constexpr = gl.BlockedLayout([4, 1], [8, 4], [num_warps, 1], [0, 1])  # [ROWS, BM], n fastest

    tile = gl.program_id(0)
    row0 = tile * ROWS
    k_begin = gl.program_id(1) * k_per_split
    k_end = gl.minimum(k_begin + k_per_split, K)

    # Pointers of k-step k_begin; rows past N / M read the last row (their results are never stored).
    k0 = gl.multiple_of(k_begin, BK)
    w_rows = gl.minimum(row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, W_WORDS2)), N - 1)
    w_ptrs = _word_ptrs(w_ptr, gl.expand_dims(w_rows * stride_wn, 1), k0 // 8, NW, W_WORDS2)
    ws_rows = gl.minimum(row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, W_SCALES)), N - 1)
    ws_ptrs = (w_scale_ptr + gl.expand_dims(ws_rows * stride_wsn, 1) + k0 // 16
               + gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, W_SCALES)), 0))
    if X_NVFP4:
        x_rows = gl.minimum(gl.arange(0, BM, layout=gl.SliceLayout(1, X_WORDS2)), M - 1)
        x_ptrs = _word_ptrs(x_ptr, gl.expand_dims(x_rows * stride_xm, 1), k0 // 8, NW, X_WORDS2)
        xs_rows = gl.minimum(gl.arange(0, BM, layout=gl.SliceLayout(1, X_SCALES)), M - 1)
        xs_ptrs = (x_scale_ptr + gl.expand_dims(xs_rows * stride_xsm, 1) + k0 // 16
                   + gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, X_SCALES)), 0))
    else:
        x_rows = gl.minimum(gl.arange(0, BM, layout=gl.SliceLayout(1, X_PAIRS)), M - 1)
        x_cols = gl.expand_dims(gl.arange(0, BK // 2, layout=gl.SliceLayout(0, X_PAIRS)), 0)
        x_ptrs = x_ptr + gl.expand_dims(x_rows * stride_xm, 1) + (gl.multiple_of(k0 // 2, BK // 2) + x_cols)

    acc = gl.zeros((ROWS, BM), dtype=gl.float32, layout=MMA)
    # k-step k_begin in flight before the loop; each iteration issues the loads of the next step
    live = k_begin < k_end
    wq = _load_words(w_ptrs, live, k0 // 8, K, NW, EVEN_K, W_WORDS)
    wsc = _load_scales(ws_ptrs, live, k0 // 16, K, NB, EVEN_K)
    if X_NVFP4:
        xq = _load_words(x_ptrs, live, k0 // 8, K, NW, EVEN_K, X_WORDS)
        xsc = _load_scales(xs_ptrs, live, k0 // 16, K, NB, EVEN_K)
    else:
        if EVEN_K:
            xv = gl.load(x_ptrs, mask=live, other=0)
        else:
            xv = gl.load(x_ptrs, mask=live & (k0 // 2 + x_cols < K // 2), other=0)
    for k in range(k_begin, k_end, BK):
        # the next step; after the last one the pointers stay put (an unused in-bounds reload)
        live = k + BK < k_end
        kn = gl.where(live, k + BK, k)
        adv = gl.where(live, 1, 0)
        w_ptrs += adv * NW
        ws_ptrs += adv * NB
        wq_n = _load_words(w_ptrs, True, kn // 8, K, NW, EVEN_K, W_WORDS)
        wsc_n = _load_scales(ws_ptrs, True, kn // 16, K, NB, EVEN_K)
        if X_NVFP4:
            x_ptrs += adv * NW
            xs_ptrs += adv * NB
            xq_n = _load_words(x_ptrs, True, kn // 8, K, NW, EVEN_K, X_WORDS)
            xsc_n = _load_scales(xs_ptrs, True, kn // 16, K, NB, EVEN_K)
            b = _decode_step(xq, xsc, BM, KT, OP_DTYPE, X_WORDS8).permute((1, 0))
        else:
            x_ptrs += adv * (BK // 2)
            if EVEN_K:
                xv_n = gl.load(x_ptrs)
            else:
                xv_n = gl.load(x_ptrs, mask=kn // 2 + x_cols < K // 2, other=0)
            # element KT·q + 4s + 2j + e at [t, q, s, j, e] → MMA k order (s, j, q, e)
            xe = _as_halves(xv, OP_DTYPE, X_HALVES).reshape([BM, 4, NB, 2, 2])
            b = xe.permute(_X_PERM.value).reshape([BK, BM])
        a = _decode_step(wq, wsc, ROWS, KT, OP_DTYPE, W_WORDS8)
        acc = mma_v2(gl.convert_layout(a, DOT_A, assert_trivial=True),
                     gl.convert_layout(b, DOT_B, assert_trivial=True), acc)
        wq = wq_n
        wsc = wsc_n
        if X_NVFP4:
            xq = xq_n
            xsc = xsc_n
        else:
            xv = xv_n

    acc = gl.convert_layout(acc, OUT)
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, OUT))
    toks = gl.arange(0, BM, layout=gl.SliceLayout(0, OUT))
    if SPLIT_K > 1:
        num_tiles = gl.num_programs(0)
        tile_offs = gl.expand_dims(gl.arange(0, ROWS, layout=gl.SliceLayout(1, OUT)), 1) + gl.expand_dims(toks * ROWS, 0)
        gl.store(ws_ptr + (gl.program_id(1) * num_tiles + tile).to(gl.int64) * (ROWS * BM) + tile_offs, acc)
        gl.thread_barrier()
        arrived = gl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = gl.zeros((ROWS, BM), dtype=gl.float32, layout=OUT)
            for s in range(SPLIT_K):  # fixed order: deterministic
                acc += gl.load(ws_ptr + (s * num_tiles + tile).to(gl.int64) * (ROWS * BM) + tile_offs,
                               cache_modifier=".cg")
            _epilogue(acc, rows, toks, M, N, w_gs_ptr, x_gs_ptr, bias_ptr, out_ptr, stride_om, X_NVFP4,
                      HAS_BIAS, OP_DTYPE)
            gl.store(sem_ptr + tile, 0)
    else:
        _epilogue(acc, rows, toks, M, N, w_gs_ptr, x_gs_ptr, bias_ptr, out_ptr, stride_om, X_NVFP4, HAS_BIAS,
                  OP_DTYPE)


@gluon.jit
def _epilogue(acc, rows, toks, M, N, w_gs_ptr, x_gs_ptr, bias_ptr, out_ptr, stride_om, X_NVFP4: gl.constexpr,
              HAS_BIAS: gl.constexpr, OP_DTYPE: gl.constexpr):
    """out[tok, row] = acc[row, tok] · alpha + bias[row]; alpha undoes the bf16 decode's 2^-8 per
    decoded operand (fp16 decodes exactly to e2m1 · s)."""
    alpha = gl.load(w_gs_ptr)
    if OP_DTYPE == gl.bfloat16:
        alpha = alpha * 256.0
    if X_NVFP4:
        alpha = alpha * gl.load(x_gs_ptr)
        if OP_DTYPE == gl.bfloat16:
            alpha = alpha * 256.0
    acc = acc * alpha
    rmask = rows < N
    if HAS_BIAS:
        acc = acc + gl.expand_dims(gl.load(bias_ptr + rows, mask=rmask, other=0.0).to(gl.float32), 1)
    ptrs = out_ptr + gl.expand_dims(toks.to(gl.int64) * stride_om, 0) + gl.expand_dims(rows, 1)
    gl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(rmask, 1) & gl.expand_dims(toks < M, 0))


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

NUM_WARPS = 4
CTAS_PER_SM = 2  # K is split until about this many CTAs run per SM (tools/probe_gemv.py sweeps both)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _device_info(device_index: int) -> tuple[bool, int]:
    props = torch.cuda.get_device_properties(device_index)
    return (props.major, props.minor) >= (8, 0), props.multi_processor_count


def supported(a: torch.Tensor, a_nvfp4: bool, b_data: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """Whether this kernel can run the GEMM: a CUDA device with mma.sync (sm_80+), 1 ≤ M ≤ 64, bf16/fp16
    dense ``a`` or packed NVFP4 ``a``, bf16/fp16/fp32 output, operands that view as 32-bit words
    (contiguous last dim, 4-byte aligned rows)."""
    if a.device.type != "cuda" or not 1 <= a.shape[0] <= MAX_M or out_dtype not in (
            torch.bfloat16, torch.float16, torch.float32):
        return False
    if a_nvfp4 != (a.dtype == torch.uint8) or (not a_nvfp4 and a.dtype not in (torch.bfloat16, torch.float16)):
        return False
    for t in (a, b_data):
        nbytes_row = t.shape[-1] * t.element_size()
        if t.stride(-1) != 1 or nbytes_row % 4 or (t.stride(0) * t.element_size()) % 4 or t.data_ptr() % 4:
            return False
    ok, _ = _device_info(a.device.index if a.device.index is not None else torch.cuda.current_device())
    return ok


def config(m: int, n: int, k: int, sms: int) -> tuple[int, int, int, int]:
    """(BM, RT, KT, SPLIT_K): the token tile covering M; 16-element runs when 64 tokens would not fit
    the registers with 32; two 16-row tiles per warp for 32+ tokens or long N (fewer instructions and
    activation re-reads per weight byte), else one (fewer K splits, so fewer FP32 partials); split K
    until about ``CTAS_PER_SM`` CTAs run per SM (each warp keeps two k-steps of loads in flight)."""
    bm = max(8, 1 << max(0, (m - 1).bit_length()))
    kt = 32 if bm <= 32 else 16
    rt = 2 if (bm >= 32 or n >= 8192) else 1
    tiles = _cdiv(n, 16 * rt * NUM_WARPS)
    split = max(1, min(_cdiv(k, 4 * kt), _cdiv(CTAS_PER_SM * sms, tiles), 16))
    return bm, rt, kt, split


def gemm(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4) -> torch.Tensor:
    """``out = a @ bᵀ (+ bias)`` for M ≤ 64 (arguments as ``gemm._gemm_op``; check :func:`supported`)."""
    m = a.shape[0]
    n, k2 = b_data.shape
    k = 2 * k2
    dev = a.device
    _, sms = _device_info(dev.index if dev.index is not None else torch.cuda.current_device())
    bm, rt, kt, split = config(m, n, k, sms)
    bk = 4 * kt
    k_per_split = _cdiv(_cdiv(k, bk), split) * bk
    split = _cdiv(k, k_per_split)
    rows = 16 * rt * NUM_WARPS
    tiles = _cdiv(n, rows)
    out = torch.empty((m, n), dtype=out_dtype, device=dev)
    if split > 1:
        ws, sem = _workspace(dev, split * tiles * rows * bm, tiles)
    else:
        ws = sem = out  # unused
    # bf16 decodes with integer ops only (fp16's cvt.e4m3x2 runs on the slower conversion pipe)
    op_dtype = gl.float16 if (not a_nvfp4 and a.dtype == torch.float16) else gl.bfloat16
    w_words = b_data.view(torch.int32)  # K % 16 == 0: rows of K/8 words
    x = a.view(torch.int32)  # K % 16 == 0: bf16/fp16 pairs or packed words
    x_scale = a_scale.view(torch.uint8) if a_nvfp4 else b_scale.view(torch.uint8)
    _gemv_kernel[(tiles, split)](
        w_words, b_scale.view(torch.uint8), b_gs, x, x_scale, a_gs if a_nvfp4 else b_gs,
        bias if bias is not None else b_gs, out, ws, sem,
        m, n, k, w_words.stride(0), b_scale.stride(0), x.stride(0), x_scale.stride(0), out.stride(0), k_per_split,
        X_NVFP4=a_nvfp4, HAS_BIAS=bias is not None, EVEN_K=k % bk == 0, OP_DTYPE=op_dtype, BM=bm, RT=rt, KT=kt,
        SPLIT_K=split, num_warps=NUM_WARPS,
    )
    return out


__all__ = ["MAX_M", "config", "gemm", "supported"]
