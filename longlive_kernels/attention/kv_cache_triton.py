"""Triton kernels of the FP4 KV cache (``kv_cache.py``): the in-place update (quantize one chunk's
K and V into its slot, one program per 128×D tile of one head) and the dequantize of the resident
chunks in attention order, and their AOT specialisations. Launchers: ``kv_cache_ops.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._aot import register_aot
from ..fp4.nvfp4_triton import e2m1_decode, e4m3_decode, pack_nibbles, unpack_nibbles
from ..fp4.quantize import _quantize_blocks
from .reference import KV_SCALE_TILE

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def kv_tile_program(k_ptr, v_ptr, H, stride_b, stride_h):
    """Program (token tile, b·H + h, K or V) of a [B, L, H, D] K/V pair: (that tensor's pointer at
    (b, 0, h), b, h, 0 for K / 1 for V)."""
    pid_bh = tl.program_id(1)
    kv = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    base = b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    if kv == 0:
        x_ptr = k_ptr + base
    else:
        x_ptr = v_ptr + base
    return x_ptr, b, h, kv


@triton.jit
def _load_rows(x_ptr, rows, T, stride_t, D: tl.constexpr):
    mask = rows[:, None] < T
    offs = rows[:, None].to(tl.int64) * stride_t + tl.arange(0, D)[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    return x.to(tl.float32), mask


@triton.jit
def _kv_update_kernel(
    k_ptr,  # [B, T, H, D] new keys of one chunk, last dim contiguous
    v_ptr,  # [B, T, H, D] new values (same dtype and strides as k)
    data_ptr,  # [2, S, B, H, T, D/2] uint8: this layer's packed E2M1 (K, then V)
    scale_ptr,  # [2, S, B, H, T, D/16] uint8: E4M3 block-scale bits
    gs_ptr,  # [2, S, B, H, NT] fp32: decode scale per 128-token tile
    slot_ptr,  # [1] int32: destination slot (an entry of the device index table)
    T,
    H,
    B,
    S,
    stride_b,
    stride_t,
    stride_h,
    DENOM: tl.constexpr,
    TARGET: tl.constexpr,
    FOUR_OVER_SIX: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    BR: tl.constexpr,
):
    NB: tl.constexpr = D // 16
    pid_t = tl.program_id(0)
    x_ptr, b, h, kv = kv_tile_program(k_ptr, v_ptr, H, stride_b, stride_h)
    slot = tl.load(slot_ptr)
    valid_slot = (slot >= 0) & (slot < S)  # never write outside the slot table
    slot = tl.where(valid_slot, slot, 0).to(tl.int64)
    plane = ((kv * S + slot) * B + b) * H + h  # index of the [T, ...] plane
    nt = tl.cdiv(T, TILE)

    amax = 0.0
    for r0 in range(0, TILE, BR):
        rows = pid_t * TILE + r0 + tl.arange(0, BR)
        x, _ = _load_rows(x_ptr, rows, T, stride_t, D)
        a = tl.abs(x)
        a = tl.where(a != a, float("inf"), a)
        amax = tl.maximum(amax, tl.max(tl.max(a, axis=1), axis=0))
    gs = tl.math.div_rn(amax, DENOM)
    tl.store(gs_ptr + plane * nt + pid_t, gs, mask=valid_slot)

    for r0 in range(0, TILE, BR):
        rows = pid_t * TILE + r0 + tl.arange(0, BR)
        x, mask = _load_rows(x_ptr, rows, T, stride_t, D)
        xb = tl.reshape(x, (BR, NB, 16))
        a = tl.abs(xb)
        a = tl.where(a != a, float("inf"), a)
        bamax = tl.max(a, axis=2)
        gs_b = tl.zeros_like(bamax) + gs
        poison = (bamax == float("inf")) | (gs_b != gs_b) | (tl.abs(gs_b) == float("inf"))
        zero = bamax == 0.0
        codes, scode = _quantize_blocks(xb, bamax, gs, xb, poison, zero, TARGET, FOUR_OVER_SIX, False, BR, NB,
                                        False)
        packed = pack_nibbles(tl.reshape(codes, (BR, D)), BR, D)
        row64 = plane * T + rows[:, None].to(tl.int64)
        m = mask & valid_slot
        tl.store(data_ptr + row64 * (D // 2) + tl.arange(0, D // 2)[None, :], packed, mask=m)
        tl.store(scale_ptr + row64 * NB + tl.arange(0, NB)[None, :], scode.to(tl.uint8), mask=m)


@triton.jit
def _kv_dequantize_kernel(
    data_ptr,  # [2, S, B, H, T, D/2] uint8 (one layer)
    scale_ptr,  # [2, S, B, H, T, D/16] uint8
    gs_ptr,  # [2, S, B, H, NT] fp32
    table_ptr,  # [2 + S] int32 device index table
    out_k_ptr,  # [B, n_chunks·T, H, D] out
    out_v_ptr,  # [B, n_chunks·T, H, D] out
    inv_scale_ptr,  # [2] fp32 multipliers for K and V (read only when SCALED: FP8 outputs)
    T,
    H,
    B,
    S,
    stride_ob,
    stride_ot,
    stride_oh,
    D: tl.constexpr,
    TILE: tl.constexpr,
    BR: tl.constexpr,
    SCALED: tl.constexpr = False,
):
    NB: tl.constexpr = D // 16
    pid_t = tl.program_id(0)
    pid_ckv = tl.program_id(1)
    pid_bh = tl.program_id(2)
    c = pid_ckv // 2
    kv = pid_ckv % 2
    b = pid_bh // H
    h = pid_bh % H
    n_ctx = tl.load(table_ptr)
    slot = tl.where(c < n_ctx, tl.load(table_ptr + 2 + c), tl.load(table_ptr + 1))
    slot = tl.minimum(tl.maximum(slot, 0), S - 1).to(tl.int64)
    plane = ((kv * S + slot) * B + b) * H + h
    nt = tl.cdiv(T, TILE)
    rows = pid_t * BR + tl.arange(0, BR)
    mask = rows[:, None] < T
    row64 = plane * T + rows[:, None].to(tl.int64)
    packed = tl.load(data_ptr + row64 * (D // 2) + tl.arange(0, D // 2)[None, :], mask=mask, other=0)
    scode = tl.load(scale_ptr + row64 * NB + tl.arange(0, NB)[None, :], mask=mask, other=0)
    gs = tl.load(gs_ptr + plane * nt + (pid_t * BR) // TILE)
    vals = e2m1_decode(unpack_nibbles(packed, BR, D // 2))
    s = e4m3_decode(scode.to(tl.int32))
    x = tl.reshape((tl.reshape(vals, (BR, NB, 16)) * s[:, :, None]) * gs, (BR, D))
    if SCALED:  # per-tensor FP8: x / descale, rounded once (RNE) by the store's conversion
        x = x * tl.load(inv_scale_ptr + kv)
    out_rows = (c * T + rows).to(tl.int64)
    offs = b.to(tl.int64) * stride_ob + out_rows[:, None] * stride_ot
    offs += h * stride_oh + tl.arange(0, D)[None, :]
    if kv == 0:
        tl.store(out_k_ptr + offs, x.to(out_k_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_v_ptr + offs, x.to(out_v_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles these for sm_90a)
# ---------------------------------------------------------------------------------------------

register_aot(
    _kv_update_kernel,
    signature={"k_ptr": "*bf16", "v_ptr": "*bf16", "data_ptr": "*u8", "scale_ptr": "*u8", "gs_ptr": "*fp32",
               "slot_ptr": "*i32", "T": "i32", "H": "i32", "B": "i32", "S": "i32", "stride_b": "i64",
               "stride_t": "i64", "stride_h": "i64"},
    constexprs={"DENOM": 2688.0, "TARGET": 6.0, "FOUR_OVER_SIX": False, "D": 128, "TILE": KV_SCALE_TILE,
                "BR": 32},
    options={"enable_fp_fusion": False},
)
for _out, _scaled in (("*bf16", False), ("*fp8e4nv", True)):  # bf16 window; FP8 window (cuDNN FP8 SDPA)
    register_aot(
        _kv_dequantize_kernel,
        signature={"data_ptr": "*u8", "scale_ptr": "*u8", "gs_ptr": "*fp32", "table_ptr": "*i32",
                   "out_k_ptr": _out, "out_v_ptr": _out, "inv_scale_ptr": "*fp32", "T": "i32", "H": "i32",
                   "B": "i32", "S": "i32", "stride_ob": "i64", "stride_ot": "i64", "stride_oh": "i64"},
        constexprs={"D": 128, "TILE": KV_SCALE_TILE, "BR": 64, "SCALED": _scaled},
        options={"enable_fp_fusion": False},
    )
