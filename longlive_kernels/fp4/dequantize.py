"""NVFP4 decode: ``dequantize_nvfp4`` (E2M1 × E4M3 block scale × FP32 tensor scale, then the inverse
random Hadamard transform when the data was transformed)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import cuda_extension, eager_op, resolve_backend
from . import reference
from .format import BLOCK_SIZE, NVFP4Tensor
from .nvfp4_triton import e2m1_decode, e4m3_decode, rht16, unpack_nibbles


@triton.jit
def _dequantize_kernel(
    data_ptr,  # [rows, K/2] uint8
    scale_ptr,  # [rows, K/16] uint8 (E4M3 bits)
    gs_ptr,  # [1] fp32 decode scale
    out_ptr,  # [rows, K] out dtype
    rows,
    K,
    hadamard_mask,
    HADAMARD: tl.constexpr,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    NB: tl.constexpr = BK // 16
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    r = pid_r * BR + tl.arange(0, BR)
    rmask = r[:, None] < rows
    r64 = r[:, None].to(tl.int64)
    c2 = pid_k * (BK // 2) + tl.arange(0, BK // 2)
    packed = tl.load(data_ptr + r64 * (K // 2) + c2[None, :], mask=rmask & (c2[None, :] < K // 2), other=0)
    cs = pid_k * NB + tl.arange(0, NB)
    scode = tl.load(scale_ptr + r64 * (K // 16) + cs[None, :], mask=rmask & (cs[None, :] < K // 16), other=0)
    gs = tl.load(gs_ptr)
    vals = e2m1_decode(unpack_nibbles(packed, BR, BK // 2))  # [BR, BK]
    s = e4m3_decode(scode.to(tl.int32))  # [BR, NB]
    x = (tl.reshape(vals, (BR, NB, 16)) * s[:, :, None]) * gs
    if HADAMARD:
        x = rht16(x, hadamard_mask, BR, NB)
    c = pid_k * BK + tl.arange(0, BK)
    tl.store(out_ptr + r64 * K + c[None, :], tl.reshape(x, (BR, BK)).to(out_ptr.dtype.element_ty),
             mask=rmask & (c[None, :] < K))


def _dequantize_triton(data2d, scale2d, gs, dtype, hadamard_mask):
    rows, k = data2d.shape[0], data2d.shape[1] * 2
    out = torch.empty((rows, k), dtype=dtype, device=data2d.device)
    bk = 256 if k >= 256 else max(16, triton.next_power_of_2(k))
    br = 16 if bk > 128 else 32
    grid = (triton.cdiv(rows, br), triton.cdiv(k, bk))
    _dequantize_kernel[grid](
        data2d, scale2d.view(torch.uint8), gs.reshape(1).to(torch.float32), out, rows, k,
        hadamard_mask if hadamard_mask is not None else 0,
        HADAMARD=hadamard_mask is not None, BR=br, BK=bk, num_warps=4, enable_fp_fusion=False,
    )
    return out


def _dequantize_cuda(data2d, scale2d, gs, dtype, hadamard_mask):
    rows, k = data2d.shape[0], data2d.shape[1] * 2
    out = torch.empty((rows, k), dtype=dtype, device=data2d.device)
    cuda_extension()
    torch.ops.longlive_kernels.nvfp4_dequantize_cuda(
        data2d, scale2d.view(torch.uint8), gs.reshape(1).to(torch.float32), out,
        -1 if hadamard_mask is None else hadamard_mask,
    )
    return out


@torch.library.custom_op("longlive_kernels::dequantize_nvfp4", mutates_args=())
def _dequantize_op(
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor,
    dtype: torch.dtype,
    hadamard_mask: int,
    backend: str,
) -> torch.Tensor:
    k = data.shape[-1] * 2
    lead = data.shape[:-1]
    hmask = None if hadamard_mask < 0 else hadamard_mask
    d2 = data.reshape(-1, k // 2)
    s2 = scale.reshape(-1, k // BLOCK_SIZE)
    if backend == "torch":
        out = reference.dequantize(d2, s2, global_scale, dtype=dtype, hadamard_mask=hmask)
    else:
        run = _dequantize_triton if backend == "triton" else _dequantize_cuda
        out = run(d2.contiguous(), s2.contiguous(), global_scale, dtype, hmask)
    return out.reshape(*lead, k)


@_dequantize_op.register_fake
def _(data, scale, global_scale, dtype, hadamard_mask, backend):
    return data.new_empty((*data.shape[:-1], data.shape[-1] * 2), dtype=dtype)


_dequantize_eager = eager_op(_dequantize_op)  # eager calls skip the dispatcher (_backend.direct_call_ok)


def dequantize_nvfp4(
    t: NVFP4Tensor, dtype: torch.dtype | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """Decode an :class:`NVFP4Tensor` to a dense tensor.

    Parameters
    ----------
    t : NVFP4Tensor
        Linear or swizzled scales (swizzled ones are converted first).
    dtype : torch.dtype, optional
        bf16, fp16 or fp32 (default: ``t.dtype``). Values are computed in fp32 as
        ``(e2m1 · s_block) · s_global`` and rounded once to ``dtype``.
    backend : {"auto", "triton", "cuda", "torch"}

    Returns
    -------
    torch.Tensor
        ``t.shape``, ``dtype``, on ``t.device``.

    Raises
    ------
    TypeError
        ``t`` is not an NVFP4Tensor, or ``dtype`` is not a float dtype.
    ValueError
        Inconsistent component shapes, or a backend that cannot run here.
    """
    if not isinstance(t, NVFP4Tensor):
        raise TypeError(f"t must be an NVFP4Tensor, got {type(t).__name__}")
    dtype = dtype or t.dtype
    if dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
    if t.swizzled:
        t = t.from_blocked()
    k = t.k
    if tuple(t.data.shape) != (*t.shape[:-1], k // 2) or t.scale.numel() != t.rows * (k // BLOCK_SIZE):
        raise ValueError(
            f"NVFP4Tensor components do not match shape {tuple(t.shape)}: data {tuple(t.data.shape)}, "
            f"scale {tuple(t.scale.shape)}"
        )
    be = resolve_backend(backend, t.device, op="dequantize_nvfp4", prefer=("cuda", "triton"))
    hmask = -1 if t.hadamard_mask is None else t.hadamard_mask
    return _dequantize_eager(t.data, t.scale, t.global_scale, dtype, hmask, be)


register_aot(
    _dequantize_kernel,
    signature={"data_ptr": "*u8", "scale_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
               "rows": "i32", "K": "i32", "hadamard_mask": "i32"},
    constexprs={"HADAMARD": False, "BR": 16, "BK": 256},
    options={"enable_fp_fusion": False},
)
