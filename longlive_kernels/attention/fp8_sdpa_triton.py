"""Triton kernel of :mod:`fp8_sdpa`: one pass that scales a [B, L, H, D] tensor by a device scalar and
casts it (bf16 → E4M3 codes for q and the current chunk, E4M3 → bf16 for the output). D is contiguous;
batch, token and head strides are free, so it reads token-major [B, L, H, D] and writes straight into
the head-major FP8 workspace cuDNN reads (or back)."""

import triton
import triton.language as tl

from .._aot import register_aot


@triton.jit
def _scale_cast_kernel(x_ptr, out_ptr, scale_ptr, L, C, sxb, sxl, sxh, sob, sol, soh, INVERT: tl.constexpr,
                       D: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = (pid_l * BL + tl.arange(0, BL)).to(tl.int64)
    cols = pid_c * BC + tl.arange(0, BC)  # over H·D: head cols // D, element cols % D
    head = (cols // D).to(tl.int64)
    elem = cols % D
    mask = (rows[:, None] < L) & (cols[None, :] < C)
    x = tl.load(x_ptr + b * sxb + rows[:, None] * sxl + (head * sxh + elem)[None, :], mask=mask, other=0.0)
    s = tl.load(scale_ptr)
    # div_rn: Triton's `/` is the approximate div.full.f32 on the GPU; the cast must see x / s rounded once
    y = tl.div_rn(x.to(tl.float32), s) if INVERT else x.to(tl.float32) * s
    tl.store(out_ptr + b * sob + rows[:, None] * sol + (head * soh + elem)[None, :],
             y.to(out_ptr.dtype.element_ty), mask=mask)


for _src, _dst, _invert in (("*bf16", "*fp8e4nv", True), ("*fp8e4nv", "*bf16", False)):  # q/K/V in, O out
    register_aot(
        _scale_cast_kernel,
        signature={"x_ptr": _src, "out_ptr": _dst, "scale_ptr": "*fp32", "L": "i32", "C": "i32", "sxb": "i64",
                   "sxl": "i64", "sxh": "i64", "sob": "i64", "sol": "i64", "soh": "i64"},
        constexprs={"INVERT": _invert, "D": 128, "BL": 32, "BC": 256},
    )
