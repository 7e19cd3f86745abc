"""Backward of the gated residual ``r = x + gate·y`` (gate per latent frame, spec §1.1).

``dx = g`` (returned as is), ``dy = gate·g``, ``dgate[b, f] = Σ_{t ∈ frame f} g_t·y_t``. No row
reduction, so unlike the norm backward (``adaln._residual_norm_bwd_kernel``, whole rows per program)
each program takes a 2-D tile [BR rows, BC columns] per step over a contiguous row range of one
frame and accumulates ``g·y`` elementwise in registers, reduced once at the end to one [BC] partial
sum per program; ``partial_sums.sum_partials`` adds a frame's P partials. Whole-row programs kept
only ~0.6× copy bandwidth here on an H200 (the same row loop that moves 1.5× the bytes forward at
1.0×): short, many programs with independent 16-byte loads hide the latency better.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._aot import register_aot
from .._backend import interpret_mode
from .partial_sums import sum_partials


@triton.jit
def _gated_residual_bwd_kernel(
    g_ptr,  # [B, L, C] grad of r (strides stride_gb, stride_gl, 1)
    y_ptr,  # [B, L, C] residual branch (strides stride_yb, stride_yl, 1)
    gate_ptr,  # [B, F, C] per-frame gate (strides stride_tb, stride_tf, 1)
    dy_ptr,  # [B, L, C] out, contiguous
    part_ptr,  # [B, F, P, C] fp32 out: per-program Σ g·y (MOD_GRAD)
    L,
    C,
    frame_len,
    n_frames,
    rows_per_prog,
    stride_gb, stride_gl, stride_yb, stride_yl, stride_tb, stride_tf,
    MOD_GRAD: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    pid_p = tl.program_id(1)
    bf = tl.program_id(2).to(tl.int64)
    b = bf // n_frames
    f = bf % n_frames
    cols = pid_c * BC + tl.arange(0, BC)
    cmask = cols < C
    gate = tl.load(gate_ptr + b * stride_tb + f * stride_tf + cols, mask=cmask, other=0.0).to(tl.float32)
    r0 = pid_p * rows_per_prog
    r1 = tl.minimum(r0 + rows_per_prog, frame_len)
    acc = tl.zeros([BR, BC], dtype=tl.float32)
    for i in range(r0, r1, BR):
        rows = i + tl.arange(0, BR)
        t = (f * frame_len + rows).to(tl.int64)
        m = (rows < r1)[:, None] & cmask[None, :]
        # both loads before the store: a load after a store may not pass it (the compiler cannot
        # rule out aliasing), which serialized two DRAM latencies per step (2.5× slower on an H200)
        g = tl.load(g_ptr + b * stride_gb + t[:, None] * stride_gl + cols[None, :], mask=m, other=0.0)
        if MOD_GRAD:
            y = tl.load(y_ptr + b * stride_yb + t[:, None] * stride_yl + cols[None, :], mask=m, other=0.0)
        g = g.to(tl.float32)
        tl.store(dy_ptr + (b * L + t)[:, None] * C + cols[None, :], (g * gate[None, :]).to(dy_ptr.dtype.element_ty),
                 mask=m)
        if MOD_GRAD:
            acc += g * y.to(tl.float32)
    if MOD_GRAD:
        tl.store(part_ptr + (bf * tl.num_programs(1) + pid_p) * C + cols, tl.sum(acc, axis=0), mask=cmask)


def _new_out(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fresh output buffer (tests patch this to fill it with NaN, to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def gated_residual_backward(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frame_len: int,
                            gate_grad: bool, acc_dtype: torch.dtype, *, block_rows: int = 8,
                            block_cols: int = 256, programs_per_sm: int = 16, num_warps: int = 4):
    """(dy [B, L, C] in y's dtype, dgate [B, F, C] in ``acc_dtype`` or None).

    ``grad``, ``y``: [B, L, C] with unit last-dim stride; ``gate``: [B, F, C] likewise. The keyword
    arguments are the launch shape (programs ≈ ``programs_per_sm`` per SM, each a contiguous run of
    rows of one frame in [block_rows, block_cols] tiles).
    """
    bsz, n_tok, c = y.shape
    n_frames = n_tok // frame_len
    interp = interpret_mode() or not y.is_cuda
    if interp:
        block_rows, block_cols = 4, min(64, triton.next_power_of_2(c))
    n_cb = triton.cdiv(c, block_cols)
    sms = 4 if interp else _num_sms(y.device.index or 0)
    want = max(1, programs_per_sm * sms // (n_cb * bsz * n_frames))
    rows_per_prog = triton.cdiv(triton.cdiv(frame_len, want), block_rows) * block_rows
    n_p = triton.cdiv(frame_len, rows_per_prog)
    dy = _new_out((bsz, n_tok, c), y.dtype, y.device)
    part = _new_out((bsz, n_frames, n_p, c), torch.float32, y.device) if gate_grad else dy
    _gated_residual_bwd_kernel[(n_cb, n_p, bsz * n_frames)](
        grad, y, gate, dy, part, n_tok, c, frame_len, n_frames, rows_per_prog,
        grad.stride(0), grad.stride(1), y.stride(0), y.stride(1), gate.stride(0), gate.stride(1),
        MOD_GRAD=gate_grad, BR=block_rows, BC=block_cols, num_warps=num_warps,
    )
    if not gate_grad:
        return dy, None
    dgate = _new_out((bsz, n_frames, c), acc_dtype, y.device)
    sum_partials(part, [dgate], n_rows=n_p, rows_inner=n_p, outer_stride=0, group_stride=n_p * c, acc_stride=0)
    return dy, dgate


register_aot(
    _gated_residual_bwd_kernel,
    signature={"g_ptr": "*bf16", "y_ptr": "*bf16", "gate_ptr": "*fp32", "dy_ptr": "*bf16", "part_ptr": "*fp32",
               "L": "i32", "C": "i32", "frame_len": "i32", "n_frames": "i32", "rows_per_prog": "i32",
               "stride_gb": "i64", "stride_gl": "i64", "stride_yb": "i64", "stride_yl": "i64",
               "stride_tb": "i64", "stride_tf": "i64"},
    constexprs={"MOD_GRAD": True, "BR": 8, "BC": 256},
    options={"num_warps": 4},
)
