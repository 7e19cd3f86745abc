"""The portable NVFP4 GEMM Triton kernel of ``nvfp4_gemm`` (``gemm.py``) and its AOT specialisations.

One program computes a [BM, BN] output tile: each k-step loads the packed E2M1 codes and E4M3 block
scales of ``b`` (and of ``a`` for W4A4) and decodes them into exact MMA operands
(``gemm_dequant.py``), or loads a dense ``a`` tile and converts it to the MMA dtype; FP32
accumulation; the epilogue applies the tensor scales, the optional row scale and the bias. With
``SPLIT_K > 1`` the programs of the grid's second axis write FP32 partials and the last one of each
tile (an atomic counter, reset on exit) sums them in a fixed order. Launchers: ``gemm_ops.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._aot import register_aot
from .gemm_dequant import OPERAND_SCALE, dequant_nvfp4_tile

# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id → (pid_m, pid_n), grouped so GROUP_M row tiles share B tiles in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _gemm_kernel(
    a_ptr,  # [M, K] bf16/fp16/fp8 (dense A) or [M, K/2] uint8 packed E2M1 (A_NVFP4)
    a_scale_ptr,  # [M, K/16] uint8 E4M3 (A_NVFP4) | [M] fp32 (A_SCALE_MODE 2) | [1] fp32 (mode 1)
    a_gs_ptr,  # [1] fp32 tensor (decode) scale of A (A_NVFP4)
    b_ptr,  # [N, K/2] uint8 packed E2M1
    b_scale_ptr,  # [N, K/16] uint8 E4M3
    b_gs_ptr,  # [1] fp32 tensor scale of B
    bias_ptr,  # [N] float (HAS_BIAS)
    out_ptr,  # [M, N] out dtype, row stride stride_om
    ws_ptr,  # [SPLIT_K, tiles, BM, BN] fp32 partials (SPLIT_K > 1)
    sem_ptr,  # [tiles] int32 arrival counters, zero on entry and on exit (SPLIT_K > 1)
    M,
    N,
    K,
    stride_am,
    stride_asm,
    stride_bn,
    stride_bsn,
    stride_om,
    k_per_split,  # K range of one split (multiple of BK)
    m_bucket,  # autotune key only
    A_NVFP4: tl.constexpr,
    A_SCALE_MODE: tl.constexpr,  # dense A: 0 none, 1 per-tensor, 2 per-row
    HAS_BIAS: tl.constexpr,
    MMA_DTYPE: tl.constexpr,
    FAST: tl.constexpr,
    DOT_F32: tl.constexpr,  # the CPU interpreter's tl.dot is wrong on bf16/fp16 operands
    EVEN_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    # Rows past the end read a valid row (results are masked at the store): no load predicates.
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    k_begin = tl.program_id(1) * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)

    kb = tl.arange(0, BK // 2)
    ks = tl.arange(0, BK // 16)
    kk = tl.arange(0, BK)
    b_rows = b_ptr + rows_b[:, None] * stride_bn
    bs_rows = b_scale_ptr + rows_b[:, None] * stride_bsn
    a_rows = a_ptr + rows_a[:, None] * stride_am
    as_rows = a_scale_ptr + rows_a[:, None] * stride_asm

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(k_begin, k_end, BK):
        # k is a multiple of BK: tell the compiler, so packed bytes and scales load as aligned vectors
        kp = tl.multiple_of(k // 2, BK // 2)
        kq = tl.multiple_of(k // 16, BK // 16)
        if EVEN_K:
            bp = tl.load(b_rows + (kp + kb)[None, :])
            bs = tl.load(bs_rows + (kq + ks)[None, :])
        else:
            bp = tl.load(b_rows + (kp + kb)[None, :], mask=(k + 2 * kb < K)[None, :], other=0)
            bs = tl.load(bs_rows + (kq + ks)[None, :], mask=(k + 16 * ks < K)[None, :], other=0)
        b_op = dequant_nvfp4_tile(bp, bs, BN, BK, MMA_DTYPE, FAST)
        if A_NVFP4:
            if EVEN_K:
                ap = tl.load(a_rows + (kp + kb)[None, :])
                asc = tl.load(as_rows + (kq + ks)[None, :])
            else:
                ap = tl.load(a_rows + (kp + kb)[None, :], mask=(k + 2 * kb < K)[None, :], other=0)
                asc = tl.load(as_rows + (kq + ks)[None, :], mask=(k + 16 * ks < K)[None, :], other=0)
            a_op = dequant_nvfp4_tile(ap, asc, BM, BK, MMA_DTYPE, FAST)
        else:
            if EVEN_K:
                a_op = tl.load(a_rows + (k + kk)[None, :])
            else:
                a_op = tl.load(a_rows + (k + kk)[None, :], mask=(k + kk < K)[None, :], other=0.0)
            a_op = a_op.to(MMA_DTYPE)
        if DOT_F32:
            acc = tl.dot(a_op.to(tl.float32), tl.trans(b_op.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a_op, tl.trans(b_op), acc)

    if SPLIT_K > 1:
        tile = pid_m * tl.cdiv(N, BN) + pid_n
        num_tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
        tile_offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        tl.store(ws_ptr + (tl.program_id(1) * num_tiles + tile).to(tl.int64) * (BM * BN) + tile_offs, acc)
        tl.debug_barrier()
        arrived = tl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for s in range(SPLIT_K):  # fixed order: deterministic
                acc += tl.load(ws_ptr + (s * num_tiles + tile).to(tl.int64) * (BM * BN) + tile_offs,
                               cache_modifier=".cg")
            _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr,
                      stride_om, A_NVFP4, A_SCALE_MODE, HAS_BIAS)
            tl.store(sem_ptr + tile, 0)
    else:
        _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr,
                  stride_om, A_NVFP4, A_SCALE_MODE, HAS_BIAS)


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr, stride_om,
              A_NVFP4: tl.constexpr, A_SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """out = acc · alpha (· row scale) + bias, alpha = fp32(gs_a · gs_b) · 2^(8 per NVFP4 operand)."""
    if A_NVFP4:
        alpha = (tl.load(a_gs_ptr) * tl.load(b_gs_ptr)) * (OPERAND_SCALE * OPERAND_SCALE)
    else:
        alpha = tl.load(b_gs_ptr) * OPERAND_SCALE
        if A_SCALE_MODE == 1:
            alpha = alpha * tl.load(a_scale_ptr)
    acc = acc * alpha
    m_mask = offs_m < M
    n_mask = offs_n < N
    if A_SCALE_MODE == 2:
        acc = acc * tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles them for sm_90a and checks for wgmma)
# ---------------------------------------------------------------------------------------------

_SIG = {"a_ptr": "*bf16", "a_scale_ptr": "*u8", "a_gs_ptr": "*fp32", "b_ptr": "*u8", "b_scale_ptr": "*u8",
        "b_gs_ptr": "*fp32", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "sem_ptr": "*i32",
        "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_asm": "i32", "stride_bn": "i32",
        "stride_bsn": "i32", "stride_om": "i32", "k_per_split": "i32", "m_bucket": "i32"}
for _a_fp4, _cfg in [(False, (128, 256, 64, 8, 3)), (True, (128, 256, 64, 8, 3)), (False, (128, 128, 64, 4, 4)),
                     (True, (128, 128, 128, 8, 3))]:
    _bm, _bn, _bk, _w, _s = _cfg
    register_aot(
        _gemm_kernel,
        signature={**_SIG, "a_ptr": "*u8" if _a_fp4 else "*bf16"},
        constexprs={"A_NVFP4": _a_fp4, "A_SCALE_MODE": 0, "HAS_BIAS": True, "MMA_DTYPE": tl.bfloat16,
                    "FAST": True, "DOT_F32": False, "EVEN_K": True, "SPLIT_K": 1, "BM": _bm, "BN": _bn, "BK": _bk, "GROUP_M": 8},
        options={"num_warps": _w, "num_stages": _s},
        expect_wgmma=True,
    )
