"""GEMM operand preparation for NVFP4 training: ``transpose_nvfp4`` (Q(W)ᵀ without re-quantizing),
``dequantize_nvfp4_t`` (the decoded transpose of a 1×16-block activation, for the wgrad GEMM) and
``transpose_pad_rows`` (dYᵀ for the wgrad GEMM, token dimension padded).

With 16×16 weight blocks the quantization of Wᵀ is the transpose of the quantization of W: every
element is divided by the same tile scale and tensor scale (Transformer Engine's reason for 2-D
weight blocks, ``nvfp4-hopper.md`` §1.6). The dgrad GEMM ``dY · Q(Wᵀ)`` therefore reuses the forward's
packed weight: this kernel moves nibbles and scales, reading 0.56 bytes per element instead of
re-reading and re-quantizing the high-precision weight (and it guarantees that forward and backward
use identical weights). For ``static6``/``static4`` it equals ``quantize_nvfp4(W.t(), block_2d=True)``
bit for bit (tested); for ``four_over_six`` the 4/6 choice was made on W's tiles.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import eager_op, resolve_backend
from .format import BLOCK_SIZE, NVFP4Tensor
from .nvfp4_triton import e2m1_decode, e4m3_decode, pack_nibbles, unpack_nibbles


@triton.jit
def _transpose_kernel(
    data_ptr,  # [R, C/2] uint8 packed codes
    scale_ptr,  # [R, C/16] uint8 E4M3 codes (16×16 tiles, replicated on the tile's rows)
    out_data_ptr,  # [C, R/2] uint8 out
    out_scale_ptr,  # [C, R/16] uint8 out
    R,
    C,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * BR + tl.arange(0, BR)
    c2 = pid_c * (BC // 2) + tl.arange(0, BC // 2)
    r64 = r.to(tl.int64)
    packed = tl.load(data_ptr + r64[:, None] * (C // 2) + c2[None, :],
                     mask=(r < R)[:, None] & (c2 < C // 2)[None, :], other=0)
    codes_t = tl.trans(unpack_nibbles(packed, BR, BC // 2))  # [BC, BR]
    out = pack_nibbles(codes_t, BC, BR)  # [BC, BR/2]
    c = pid_c * BC + tl.arange(0, BC)
    r2 = pid_r * (BR // 2) + tl.arange(0, BR // 2)
    tl.store(out_data_ptr + c.to(tl.int64)[:, None] * (R // 2) + r2[None, :], out,
             mask=(c < C)[:, None] & (r2 < R // 2)[None, :])
    # scale_t[c, j] = scale[16 j, c // 16]
    j = pid_r * (BR // 16) + tl.arange(0, BR // 16)
    s = tl.load(scale_ptr + (j.to(tl.int64) * 16)[None, :] * (C // 16) + (c // 16)[:, None],
                mask=(c < C)[:, None] & (j < R // 16)[None, :], other=0)
    tl.store(out_scale_ptr + c.to(tl.int64)[:, None] * (R // 16) + j[None, :], s,
             mask=(c < C)[:, None] & (j < R // 16)[None, :])


def _transpose_torch(data: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, c = data.shape[0], data.shape[1] * 2
    d = data.to(torch.int32)
    codes = torch.stack([d & 0xF, d >> 4], dim=-1).reshape(r, c)
    ct = codes.t().contiguous()
    packed = (ct[:, 0::2] | (ct[:, 1::2] << 4)).to(torch.uint8)
    s = scale.view(torch.uint8)[0::BLOCK_SIZE]  # one row per 16-row tile: [R/16, C/16]
    st = s.t().repeat_interleave(BLOCK_SIZE, dim=0).contiguous()  # [C, R/16]
    return packed, st.view(torch.float8_e4m3fn)


@torch.library.custom_op("longlive_kernels::transpose_nvfp4", mutates_args=())
def _transpose_op(data: torch.Tensor, scale: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "torch":
        return _transpose_torch(data, scale)
    r, c = data.shape[0], data.shape[1] * 2
    out_d = torch.empty((c, r // 2), dtype=torch.uint8, device=data.device)
    out_s = torch.empty((c, r // BLOCK_SIZE), dtype=torch.uint8, device=data.device)
    br, bc = 32, 64
    grid = (triton.cdiv(r, br), triton.cdiv(c, bc))
    _transpose_kernel[grid](data, scale.view(torch.uint8), out_d, out_s, r, c, BR=br, BC=bc, num_warps=4)
    return out_d, out_s.view(torch.float8_e4m3fn)


@_transpose_op.register_fake
def _(data, scale, backend):
    r, c = data.shape[0], data.shape[1] * 2
    return (data.new_empty((c, r // 2)), data.new_empty((c, r // BLOCK_SIZE), dtype=torch.float8_e4m3fn))


_transpose_eager = eager_op(_transpose_op)  # eager calls skip the dispatcher (_backend.direct_call_ok)


def _padded_rows(m: int, pad_rows_to: int) -> int:
    """M rounded up to a multiple of ``pad_rows_to`` (an int ≥ 1, else ValueError)."""
    if isinstance(pad_rows_to, bool) or not isinstance(pad_rows_to, int) or pad_rows_to < 1:
        raise ValueError(f"pad_rows_to must be an int >= 1, got {pad_rows_to!r}")
    return -(-m // pad_rows_to) * pad_rows_to


def transpose_nvfp4(t: NVFP4Tensor, *, backend: str = "auto") -> NVFP4Tensor:
    """The NVFP4 tensor of ``Wᵀ`` from the 16×16-block quantization of a 2-D ``W`` [R, C].

    Parameters
    ----------
    t : NVFP4Tensor
        2-D [R, C], ``block_2d=True``, linear scales, no Hadamard mask, R % 16 == 0 (so that Wᵀ's
        last dim holds whole blocks).
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    NVFP4Tensor
        [C, R], same tensor scale, rule and dtype, ``block_2d=True``.

    Raises
    ------
    TypeError
        ``t`` is not an NVFP4Tensor.
    ValueError
        Not 2-D, not 16×16 blocks, swizzled scales, a Hadamard mask, R not a multiple of 16, or a
        backend that cannot run here.
    """
    if not isinstance(t, NVFP4Tensor):
        raise TypeError(f"t must be an NVFP4Tensor, got {type(t).__name__}")
    if len(t.shape) != 2:
        raise ValueError(f"t must be 2-D, got shape {tuple(t.shape)}")
    if not t.block_2d:
        raise ValueError("transpose_nvfp4 needs 16×16 blocks (block_2d=True); 1×16 blocks must be re-quantized")
    if t.swizzled:
        raise ValueError("t has swizzled scales; pass t.from_blocked()")
    if t.hadamard_mask is not None:
        raise ValueError("t carries a Hadamard transform along its rows; its transpose is not an NVFP4 tensor")
    r, c = t.shape
    _checks.check_multiple("t.shape[0]", r, BLOCK_SIZE, "rows")
    be = resolve_backend(backend, t.device, op="transpose_nvfp4", supported=("triton", "torch"))
    data, scale = _transpose_eager(t.data.contiguous(), t.scale.contiguous(), be)
    return dataclasses.replace(t, data=data, scale=scale, shape=torch.Size((c, r)))


@triton.jit
def _dequantize_t_kernel(
    data_ptr,  # [M, K/2] uint8 packed codes (1×16 blocks along K)
    scale_ptr,  # [M, K/16] uint8 E4M3 codes
    gs_ptr,  # [1] fp32 tensor scale
    out_ptr,  # [K, MP] out dtype: the decoded Xᵀ, columns M..MP zero
    M,
    K,
    MP,
    BM: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    r = pid_m * BM + tl.arange(0, BM)
    r64 = r.to(tl.int64)[:, None]
    c2 = pid_k * (BK // 2) + tl.arange(0, BK // 2)
    cs = pid_k * (BK // 16) + tl.arange(0, BK // 16)
    rmask = (r < M)[:, None]
    packed = tl.load(data_ptr + r64 * (K // 2) + c2[None, :], mask=rmask & (c2 < K // 2)[None, :], other=0)
    sc = tl.load(scale_ptr + r64 * (K // 16) + cs[None, :], mask=rmask & (cs < K // 16)[None, :], other=0)
    v = e2m1_decode(unpack_nibbles(packed, BM, BK // 2))  # [BM, BK]
    x = (tl.reshape(v, (BM, BK // 16, 16)) * e4m3_decode(sc.to(tl.int32))[:, :, None]) * tl.load(gs_ptr)
    x = tl.where(rmask[:, :, None], x, 0.0)  # padding tokens are exact zeros (never NaN)
    xt = tl.trans(tl.reshape(x, (BM, BK)))  # [BK, BM]
    c = pid_k * BK + tl.arange(0, BK)
    tl.store(out_ptr + c.to(tl.int64)[:, None] * MP + r[None, :], xt.to(out_ptr.dtype.element_ty),
             mask=(c < K)[:, None] & (r < MP)[None, :])


@torch.library.custom_op("longlive_kernels::dequantize_nvfp4_t", mutates_args=())
def _dequantize_t_op(data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor, rows_padded: int,
                     dtype: torch.dtype, backend: str) -> torch.Tensor:
    m, k = data.shape[0], data.shape[1] * 2
    if backend == "torch":
        from . import reference

        x = reference.dequantize(data, scale, global_scale, dtype=torch.float32)
        out = torch.zeros((k, rows_padded), dtype=dtype, device=data.device)
        out[:, :m] = x.t().to(dtype)
        return out
    out = torch.empty((k, rows_padded), dtype=dtype, device=data.device)
    bm, bk = 64, 64
    grid = (triton.cdiv(rows_padded, bm), triton.cdiv(k, bk))
    _dequantize_t_kernel[grid](data, scale.view(torch.uint8), global_scale.reshape(1).float(), out, m, k, rows_padded,
                               BM=bm, BK=bk, num_warps=4, enable_fp_fusion=False)
    return out


@_dequantize_t_op.register_fake
def _(data, scale, global_scale, rows_padded, dtype, backend):
    return data.new_empty((data.shape[1] * 2, rows_padded), dtype=dtype)


_dequantize_t_eager = eager_op(_dequantize_t_op)


def dequantize_nvfp4_t(t: NVFP4Tensor, *, pad_rows_to: int = 1, dtype: torch.dtype | None = None,
                       backend: str = "auto") -> torch.Tensor:
    """Decode a 2-D NVFP4 tensor [M, K] straight into its transpose [K, M'] (one pass, no [M, K] copy).

    Parameters
    ----------
    t : NVFP4Tensor
        2-D [M, K], linear scales, no Hadamard mask (block_2d either way).
    pad_rows_to : int
        M' = M rounded up to this multiple; the extra columns of the result are zeros (e.g. 64 for
        the token dimension of the NVFP4 wgrad GEMM).
    dtype : torch.dtype, optional
        bf16/fp16/fp32 (default ``t.dtype``); values ``(e2m1 · s_block) · s_global`` rounded once.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [K, M'] of ``dtype``: equal to ``dequantize_nvfp4(t).t()`` with zero padding.

    Raises
    ------
    TypeError, ValueError
        Not an NVFP4Tensor, not 2-D, swizzled scales, a Hadamard mask, a bad dtype or padding.
    """
    if not isinstance(t, NVFP4Tensor):
        raise TypeError(f"t must be an NVFP4Tensor, got {type(t).__name__}")
    if len(t.shape) != 2 or t.swizzled or t.hadamard_mask is not None:
        raise ValueError("dequantize_nvfp4_t needs a 2-D NVFP4Tensor with linear scales and no Hadamard mask, got "
                         f"{t!r}")
    dtype = dtype or t.dtype
    if dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
    mp = _padded_rows(t.shape[0], pad_rows_to)
    be = resolve_backend(backend, t.device, op="dequantize_nvfp4_t", supported=("triton", "torch"))
    return _dequantize_t_eager(t.data.contiguous(), t.scale.contiguous(), t.global_scale, mp, dtype, be)


@triton.jit
def _transpose_pad_kernel(
    x_ptr,  # [M, N] (row stride stride_m, unit column stride)
    out_ptr,  # [N, MP] out: xᵀ, columns M..MP zero
    M,
    N,
    MP,
    stride_m,
    BM: tl.constexpr,
    BN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = pid_m * BM + tl.arange(0, BM)
    c = pid_n * BN + tl.arange(0, BN)
    x = tl.load(x_ptr + r.to(tl.int64)[:, None] * stride_m + c[None, :], mask=(r < M)[:, None] & (c < N)[None, :],
                other=0.0)
    tl.store(out_ptr + c.to(tl.int64)[:, None] * MP + r[None, :], tl.trans(x), mask=(c < N)[:, None] & (r < MP)[None, :])


@torch.library.custom_op("longlive_kernels::transpose_pad_rows", mutates_args=())
def _transpose_pad_op(x: torch.Tensor, rows_padded: int, backend: str) -> torch.Tensor:
    m, n = x.shape
    if backend == "torch":
        out = x.new_zeros((n, rows_padded))
        out[:, :m] = x.t()
        return out
    out = torch.empty((n, rows_padded), dtype=x.dtype, device=x.device)
    bm, bn = 64, 64
    grid = (triton.cdiv(rows_padded, bm), triton.cdiv(n, bn))
    _transpose_pad_kernel[grid](x, out, m, n, rows_padded, x.stride(0), BM=bm, BN=bn, num_warps=4)
    return out


@_transpose_pad_op.register_fake
def _(x, rows_padded, backend):
    return x.new_empty((x.shape[1], rows_padded))


_transpose_pad_eager = eager_op(_transpose_pad_op)


def transpose_pad_rows(x: torch.Tensor, *, pad_rows_to: int = 1, backend: str = "auto") -> torch.Tensor:
    """``xᵀ`` of a 2-D tensor [M, N] as a contiguous [N, M'] tensor, M' = M rounded up to ``pad_rows_to``,
    the extra columns zero: the wgrad operand ``dYᵀ`` (token dimension last, padded to the GEMM's K
    tile) in one pass.

    On an H100 torch's ``x.t().contiguous()`` runs its generic strided copy at ~0.5 TB/s (2.05 ms of
    the NVFP4 training step of one 5B block's linears, ``bench/fp4/bench_linear_train.py --profile``);
    this tiled kernel reads and writes whole 64 × 64 tiles.

    Parameters
    ----------
    x : torch.Tensor
        [M, N] bf16, fp16 or fp32 with a contiguous last dim.
    pad_rows_to : int
        M' is a multiple of it (≥ 1).
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [N, M'] of x's dtype, equal to ``F.pad(x, (0, 0, 0, M' - M)).t()``.

    Raises
    ------
    TypeError, ValueError
        Not a float tensor, not 2-D, a strided last dim, ``pad_rows_to < 1``, or a backend that cannot run
        here.
    """
    _checks.check_tensor("x", x)
    _checks.check_dtype("x", x, _checks.FLOAT_DTYPES)
    _checks.check_ndim("x", x, 2)
    _checks.check_last_dim_contiguous("x", x)
    mp = _padded_rows(x.shape[0], pad_rows_to)
    be = resolve_backend(backend, x.device, op="transpose_pad_rows", supported=("triton", "torch"))
    return _transpose_pad_eager(x, mp, be)


register_aot(
    _transpose_pad_kernel,
    signature={"x_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "N": "i32", "MP": "i32", "stride_m": "i64"},
    constexprs={"BM": 64, "BN": 64},
)
register_aot(
    _dequantize_t_kernel,
    signature={"data_ptr": "*u8", "scale_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16", "M": "i32", "K": "i32",
               "MP": "i32"},
    constexprs={"BM": 64, "BK": 64},
    options={"enable_fp_fusion": False},
)
register_aot(
    _transpose_kernel,
    signature={"data_ptr": "*u8", "scale_ptr": "*u8", "out_data_ptr": "*u8", "out_scale_ptr": "*u8", "R": "i32",
               "C": "i32"},
    constexprs={"BR": 32, "BC": 64},
)
