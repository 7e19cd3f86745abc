"""Deterministic second stage of the backward kernels' per-column gradient sums.

The adaLN / gated-residual and RMSNorm+RoPE backward kernels each write one fp32 partial sum per
program, ``part[a, g, p, c]`` for accumulator a, group g (a latent frame, or a batch row) and
program p < n_used of the group. This kernel adds them for every accumulator in one launch, in a
fixed order (bitwise reproducible), either per group (a per-frame gradient, [groups, C]) or over
all groups (a gradient shared by every frame, [C]), instead of a ``torch.sum`` launch per
accumulator and another for the sum over frames: those took 3-9 µs each on an H200 next to a 35 µs
backward at 7040 tokens (``bench/attention/bench_rope_adaln.py --profile``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._aot import register_aot
from .._backend import interpret_mode

# Rows one program sums for a shared accumulator in a single launch (about 5 steps of 64 rows: at
# 64 frames × 12 programs that one long loop cost ~100 µs; two short launches cost ~5).
_MAX_SHARED_ROWS = 320


@triton.jit
def _sum_partials_kernel(
    part_ptr,  # fp32: accumulator a, group g, program p, column c at a·acc_stride + g·group_stride + p·C + c
    out0_ptr,  # sums of accumulator 0: [groups, C], or [C] when shared
    out1_ptr,  # of accumulator 1 (3rd grid dim > 1)
    out2_ptr,  # of accumulator 2 (3rd grid dim > 2)
    C,
    n_used,  # programs per group that wrote a partial
    n_groups,
    group_stride,
    acc_stride,
    SHARED: tl.constexpr,  # bit a set: accumulator a is summed over all groups into [C]
    F64: tl.constexpr,  # sum in fp64 (fp64 outputs)
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    g = tl.program_id(1)
    a = tl.program_id(2)
    shared = ((SHARED >> a) & 1) != 0
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (cols < C) & ((g == 0) | (not shared))  # a shared sum is written by group 0's programs
    acc_ty = tl.float64 if F64 else tl.float32
    # a shared accumulator reads the n_groups·n_used rows of all groups, in order; a per-group one
    # the n_used rows of its group
    n_rows = tl.where(shared, tl.where(g == 0, n_groups * n_used, 0), n_used)
    base = part_ptr + a.to(tl.int64) * acc_stride + tl.where(shared, 0, g).to(tl.int64) * group_stride
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=acc_ty)
    # narrow column blocks, tall row blocks, no pipelining: many programs with one or two steps
    # each (the partials are L2-resident; a long serial loop per program took 20 µs)
    for j0 in range(0, n_rows, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        row_off = (j // n_used).to(tl.int64) * group_stride + (j % n_used).to(tl.int64) * C
        v = tl.load(base + row_off[:, None] + cols[None, :], mask=(j < n_rows)[:, None] & cmask[None, :],
                    other=0.0)
        acc += v.to(acc_ty)
    total = tl.sum(acc, axis=0)
    out_off = tl.where(shared, 0, g).to(tl.int64) * C + cols
    if a == 0:
        tl.store(out0_ptr + out_off, total.to(out0_ptr.dtype.element_ty), mask=cmask)
    elif a == 1:
        tl.store(out1_ptr + out_off, total.to(out1_ptr.dtype.element_ty), mask=cmask)
    else:
        tl.store(out2_ptr + out_off, total.to(out2_ptr.dtype.element_ty), mask=cmask)


def sum_partials(part: torch.Tensor, outs: list[torch.Tensor], *, n_used: int, n_groups: int, group_stride: int,
                 acc_stride: int, shared: list[bool] | None = None) -> None:
    """``outs[a][g, c] = Σ_{p < n_used} part[a, g, p, c]``, or ``outs[a][c] = Σ_g Σ_p part[a, g, p, c]``
    where ``shared[a]``; one launch for up to 3 accumulators, summed in a fixed order.

    Parameters
    ----------
    part : torch.Tensor
        fp32 partial sums, addressed through ``group_stride`` / ``acc_stride`` (elements); the
        programs of a group are C apart.
    outs : list of torch.Tensor
        1-3 contiguous outputs (fp32 or fp64; bf16/fp16 round the fp32 sum once): [n_groups, C], or
        [C] when shared. C = their last dim.
    shared : list of bool, optional
        Per accumulator (default: none shared).

    Raises
    ------
    ValueError
        ``outs`` empty or longer than 3, or ``shared`` of another length.
    """
    if not 1 <= len(outs) <= 3:
        raise ValueError(f"outs must hold 1 to 3 tensors, got {len(outs)}")
    shared = [False] * len(outs) if shared is None else list(shared)
    if len(shared) != len(outs):
        raise ValueError(f"shared must have one flag per output ({len(outs)}), got {len(shared)}")
    c = outs[0].shape[-1]
    if any(shared) and n_groups * n_used > _MAX_SHARED_ROWS and n_groups > 1:
        # too many rows for one program per column block: per-group sums first, then their sum
        per_group = torch.empty((sum(shared), n_groups, c), dtype=torch.float32, device=part.device)
        stage = iter(per_group)
        firsts = [next(stage) if s else o for o, s in zip(outs, shared)]
        sum_partials(part, firsts, n_used=n_used, n_groups=n_groups, group_stride=group_stride,
                     acc_stride=acc_stride)
        sum_partials(per_group, [o for o, s in zip(outs, shared) if s], n_used=n_groups, n_groups=1,
                     group_stride=0, acc_stride=n_groups * c)
        return
    if interpret_mode() or not part.is_cuda:
        block_c, block_r, warps = min(64, triton.next_power_of_2(c)), 8, 4
    else:  # the fastest of a sweep on an H200 at the 5B model's sizes (2026-11-22)
        block_c = 128 if n_used <= 16 and not any(shared) else 32
        block_r = min(64, max(16, triton.next_power_of_2(n_used * (n_groups if any(shared) else 1))))
        warps = 4
    groups = 1 if all(shared) else n_groups
    padded = outs + [outs[0]] * (3 - len(outs))
    _sum_partials_kernel[(triton.cdiv(c, block_c), groups, len(outs))](
        part, *padded, c, n_used, n_groups, group_stride, acc_stride,
        SHARED=sum(1 << i for i, s in enumerate(shared) if s), F64=outs[0].dtype == torch.float64,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )


register_aot(
    _sum_partials_kernel,
    signature={"part_ptr": "*fp32", "out0_ptr": "*fp32", "out1_ptr": "*fp32", "out2_ptr": "*fp32", "C": "i32",
               "n_used": "i32", "n_groups": "i32", "group_stride": "i64", "acc_stride": "i64"},
    constexprs={"SHARED": 3, "F64": False, "BLOCK_R": 64, "BLOCK_C": 32},
    options={"num_warps": 4},
)
