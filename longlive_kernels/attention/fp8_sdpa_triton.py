"""Triton kernels of :mod:`fp8_sdpa`.

- ``_scale_cast_kernel``: one pass that scales a [B, L, H, D] tensor by a device scalar and casts it
  (bf16 → E4M3 codes for q and the current chunk, E4M3 → bf16 for the output). D is contiguous; batch,
  token and head strides are free, so it reads token-major [B, L, H, D] and writes straight into the
  head-major FP8 workspace cuDNN reads (or back).
- ``_amax_bits_kernel``: max |x| of such a tensor as the int32 bits of an fp32, by one atomic max per
  program (non-negative fp32 bit patterns order like int32; NaN's bits exceed +Inf's, so a NaN wins).
- ``_fp8_descales_kernel``: every per-tensor scale of one FP8 attention call from the cache's tile
  scales and those amaxes, in one tiny launch instead of a dozen eager ops.
"""

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


@triton.jit
def _amax_bits_kernel(x_ptr, out_ptr, B, L, C, sxb, sxl, sxh, D: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    # a few programs per SM stride over the [BL, BC] tiles (columns fastest) with one atomic each:
    # one atomic per tile (2,640 on one word for the 5B chunk's q) serialized at the L2
    n_l = tl.cdiv(L, BL)
    n_c = tl.cdiv(C, BC)
    m = tl.zeros((BL, BC), dtype=tl.int32)
    for t in range(tl.program_id(0), B * n_l * n_c, tl.num_programs(0)):
        b = (t // (n_l * n_c)).to(tl.int64)
        rows = ((t // n_c) % n_l * BL + tl.arange(0, BL)).to(tl.int64)
        cols = (t % n_c) * BC + tl.arange(0, BC)
        head = (cols // D).to(tl.int64)
        mask = (rows[:, None] < L) & (cols[None, :] < C)
        x = tl.load(x_ptr + b * sxb + rows[:, None] * sxl + (head * sxh + cols % D)[None, :], mask=mask,
                    other=0.0)
        m = tl.maximum(m, x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    tl.atomic_max(out_ptr, tl.max(tl.max(m, axis=1), axis=0), sem="relaxed")


@triton.jit
def _fp8_descales_kernel(gs_ptr, n_per_kv, amax_ptr, out_ptr, HAS_CURRENT: tl.constexpr, BLOCK: tl.constexpr):
    """out [6] = descale_k, descale_v, 1/descale_k, 1/descale_v, descale_q, 1/descale_v (cuDNN's scale_o).

    descale_{k,v} = max(E2M1_MAX · max tile scale, amax(current)/448): an NVFP4 value is at most
    6 · 448 · its tile scale, so every decoded code fits E4M3; descale_q = amax(q)/448. Divisions
    correctly rounded; scales clamped to the smallest normal fp32 (an all-zero tensor)."""
    tiny = 1.1754943508222875e-38
    offs = tl.arange(0, BLOCK)
    g_k = tl.zeros((BLOCK,), tl.float32)
    g_v = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_per_kv, BLOCK):
        m = start + offs < n_per_kv
        g_k = tl.maximum(g_k, tl.load(gs_ptr + start + offs, mask=m, other=0.0))
        g_v = tl.maximum(g_v, tl.load(gs_ptr + n_per_kv + start + offs, mask=m, other=0.0))
    d_k = tl.max(g_k, axis=0) * 6.0
    d_v = tl.max(g_v, axis=0) * 6.0
    if HAS_CURRENT:
        d_k = tl.maximum(d_k, tl.div_rn(tl.load(amax_ptr + 1).to(tl.float32, bitcast=True), 448.0))
        d_v = tl.maximum(d_v, tl.div_rn(tl.load(amax_ptr + 2).to(tl.float32, bitcast=True), 448.0))
    d_k = tl.maximum(d_k, tiny)
    d_v = tl.maximum(d_v, tiny)
    d_q = tl.maximum(tl.div_rn(tl.load(amax_ptr).to(tl.float32, bitcast=True), 448.0), tiny)
    tl.store(out_ptr, d_k)
    tl.store(out_ptr + 1, d_v)
    tl.store(out_ptr + 2, tl.div_rn(1.0, d_k))
    tl.store(out_ptr + 3, tl.div_rn(1.0, d_v))
    tl.store(out_ptr + 4, d_q)
    tl.store(out_ptr + 5, tl.div_rn(1.0, d_v))


register_aot(
    _amax_bits_kernel,
    signature={"x_ptr": "*bf16", "out_ptr": "*i32", "B": "i32", "L": "i32", "C": "i32", "sxb": "i64",
               "sxl": "i64", "sxh": "i64"},
    constexprs={"D": 128, "BL": 32, "BC": 256},
)
for _cur in (True, False):
    register_aot(
        _fp8_descales_kernel,
        signature={"gs_ptr": "*fp32", "n_per_kv": "i32", "amax_ptr": "*i32", "out_ptr": "*fp32"},
        constexprs={"HAS_CURRENT": _cur, "BLOCK": 1024},
    )

for _src, _dst, _invert in (("*bf16", "*fp8e4nv", True), ("*fp8e4nv", "*bf16", False)):  # q/K/V in, O out
    register_aot(
        _scale_cast_kernel,
        signature={"x_ptr": _src, "out_ptr": _dst, "scale_ptr": "*fp32", "L": "i32", "C": "i32", "sxb": "i64",
                   "sxl": "i64", "sxh": "i64", "sob": "i64", "sol": "i64", "soh": "i64"},
        constexprs={"INVERT": _invert, "D": 128, "BL": 64 if _invert else 128, "BC": 128},
    )
