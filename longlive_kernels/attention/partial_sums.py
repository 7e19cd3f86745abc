"""Deterministic second stage of the backward kernels' per-column gradient sums.

The adaLN / gated-residual and RMSNorm+RoPE backward kernels each write one fp32 partial sum per
program (``[n_acc, groups, P_max, C]``: P programs share a latent frame or a batch row). This kernel
adds them for every accumulator in one launch, in a fixed order (bitwise reproducible), instead of
one ``torch.sum`` launch per accumulator — those cost 3-9 µs each on an H200 next to a 35 µs
backward at 7040 tokens (``bench/attention/bench_rope_adaln.py --profile``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._aot import register_aot
from .._backend import interpret_mode


@triton.jit
def _sum_partials_kernel(
    part_ptr,  # fp32 partials; accumulator a, group g, row j, column c at
    # a·acc_stride + g·group_stride + (j // rows_inner)·outer_stride + (j % rows_inner)·C + c
    out0_ptr,  # [groups, C] sums of accumulator 0
    out1_ptr,  # [groups, C] of accumulator 1 (3rd grid dim > 1)
    out2_ptr,  # [groups, C] of accumulator 2 (3rd grid dim > 2)
    C,
    n_rows,  # rows summed per (accumulator, group, column)
    rows_inner,
    outer_stride,
    group_stride,
    acc_stride,
    F64: tl.constexpr,  # sum in fp64 (fp64 outputs)
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    a = tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc_ty = tl.float64 if F64 else tl.float32
    base = part_ptr + a.to(tl.int64) * acc_stride + g * group_stride
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=acc_ty)
    # narrow column blocks and tall row blocks: many programs, few dependent steps each (the
    # partials are L2-resident; a long serial loop per program made this a latency-bound 20 µs)
    for j0 in tl.range(0, n_rows, BLOCK_R, num_stages=3):
        j = j0 + tl.arange(0, BLOCK_R)
        row_off = (j // rows_inner).to(tl.int64) * outer_stride + (j % rows_inner).to(tl.int64) * C
        v = tl.load(base + row_off[:, None] + cols[None, :], mask=(j < n_rows)[:, None] & cmask[None, :],
                    other=0.0)
        acc += v.to(acc_ty)
    total = tl.sum(acc, axis=0)
    if a == 0:
        tl.store(out0_ptr + g * C + cols, total.to(out0_ptr.dtype.element_ty), mask=cmask)
    elif a == 1:
        tl.store(out1_ptr + g * C + cols, total.to(out1_ptr.dtype.element_ty), mask=cmask)
    else:
        tl.store(out2_ptr + g * C + cols, total.to(out2_ptr.dtype.element_ty), mask=cmask)


def sum_partials(part: torch.Tensor, outs: list[torch.Tensor], *, n_rows: int, rows_inner: int,
                 outer_stride: int, group_stride: int, acc_stride: int) -> None:
    """``outs[a][g, c] = Σ_j part[a, g, j, c]`` over ``n_rows`` rows j (layout in the kernel's
    comment), one launch for up to 3 accumulators, summed in a fixed order.

    Parameters
    ----------
    part : torch.Tensor
        fp32 partial sums (any shape; addressed through the strides, in elements).
    outs : list of torch.Tensor
        1-3 contiguous outputs of ``groups·C`` elements each (fp32 or fp64), C = their last dim.

    Raises
    ------
    ValueError
        ``outs`` empty or longer than 3.
    """
    if not 1 <= len(outs) <= 3:
        raise ValueError(f"outs must hold 1 to 3 tensors, got {len(outs)}")
    c = outs[0].shape[-1]
    groups = outs[0].numel() // c
    if interpret_mode() or not part.is_cuda:
        block_c, block_r, warps = min(64, triton.next_power_of_2(c)), 8, 4
    else:
        block_c = 32
        block_r = min(128, max(16, triton.next_power_of_2(n_rows)))
        warps = 8 if block_r >= 128 else 4
    padded = outs + [outs[0]] * (3 - len(outs))
    _sum_partials_kernel[(triton.cdiv(c, block_c), groups, len(outs))](
        part, *padded, c, n_rows, rows_inner, outer_stride, group_stride, acc_stride,
        F64=outs[0].dtype == torch.float64, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )


register_aot(
    _sum_partials_kernel,
    signature={"part_ptr": "*fp32", "out0_ptr": "*fp32", "out1_ptr": "*fp32", "out2_ptr": "*fp32", "C": "i32",
               "n_rows": "i32", "rows_inner": "i32", "outer_stride": "i64", "group_stride": "i64",
               "acc_stride": "i64"},
    constexprs={"F64": False, "BLOCK_R": 128, "BLOCK_C": 32},
    options={"num_warps": 8},
)
