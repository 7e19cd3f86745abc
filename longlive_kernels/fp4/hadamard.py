"""``random_hadamard_transform``: the 16-point random Hadamard transform (RHT) along the last dim.

``y = x · (D H16 D) / 4`` per 16-element group, D = diag(random signs). The matrix is symmetric
and orthonormal, so the transform is its own inverse for a given seed. It spreads outliers across
each 16-element NVFP4 block before quantization (TE's wgrad recipe, ``nvfp4-hopper.md`` §1.6).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import resolve_backend
from . import reference
from .format import BLOCK_SIZE, TE_HADAMARD_MASK, hadamard_mask_from_seed
from .nvfp4_triton import rht16


@triton.jit
def _rht_kernel(
    x_ptr,  # [rows, K] float, last dim contiguous
    out_ptr,  # [rows, K] same dtype
    rows,
    K,
    stride_row,
    mask_bits,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BK + tl.arange(0, BK)
    m = (r[:, None] < rows) & (c[None, :] < K)
    r64 = r[:, None].to(tl.int64)
    x = tl.load(x_ptr + r64 * stride_row + c[None, :], mask=m, other=0.0).to(tl.float32)
    y = tl.reshape(rht16(tl.reshape(x, (BR, BK // 16, 16)), mask_bits, BR, BK // 16), (BR, BK))
    tl.store(out_ptr + r64 * K + c[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


@torch.library.custom_op("longlive_kernels::random_hadamard_transform", mutates_args=())
def _rht_op(x: torch.Tensor, mask: int, backend: str) -> torch.Tensor:
    k = x.shape[-1]
    if backend == "torch":
        return reference.random_hadamard_transform(x, mask).to(x.dtype)
    x2d = x.reshape(-1, k)
    out = torch.empty((x2d.shape[0], k), dtype=x.dtype, device=x.device)
    bk = 256 if k >= 256 else max(16, triton.next_power_of_2(k))
    grid = (triton.cdiv(x2d.shape[0], 16), triton.cdiv(k, bk))
    _rht_kernel[grid](x2d, out, x2d.shape[0], k, x2d.stride(0), mask, BR=16, BK=bk, enable_fp_fusion=False)
    return out.reshape(x.shape)


@_rht_op.register_fake
def _(x, mask, backend):
    return torch.empty_like(x)


def _rht_backward(ctx, grad):
    return _rht_op(grad.contiguous(), ctx.mask, ctx.backend), None, None


def _rht_setup(ctx, inputs, output):
    _, ctx.mask, ctx.backend = inputs


_rht_op.register_autograd(_rht_backward, setup_context=_rht_setup)


def random_hadamard_transform(
    x: torch.Tensor, seed: int | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """Apply the 16-point random Hadamard transform along the last dim of ``x``.

    Parameters
    ----------
    x : torch.Tensor
        [..., K] bf16/fp16/fp32, K % 16 == 0, last dim contiguous.
    seed : int, optional
        Seed of the random sign vector (splitmix64 of the seed); ``None`` uses Transformer
        Engine's fixed signs. Applying the transform twice with the same seed returns ``x`` (up to
        rounding of ``x.dtype``).
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``; computed in fp32 with a fixed butterfly order.
        Differentiable (the backward is the same transform).

    Raises
    ------
    TypeError, ValueError
        Wrong dtype, K not a multiple of 16, non-contiguous last dim, empty input.
    """
    _checks.check_dtype("x", x)
    _checks.check_nonempty("x", x)
    _checks.check_multiple("x.shape[-1]", x.shape[-1], BLOCK_SIZE, "last dim")
    _checks.check_last_dim_contiguous("x", x)
    mask = TE_HADAMARD_MASK if seed is None else hadamard_mask_from_seed(seed)
    be = resolve_backend(backend, x.device, op="random_hadamard_transform", supported=("triton", "torch"))
    return _rht_op(x, mask, be)


register_aot(
    _rht_kernel,
    signature={"x_ptr": "*bf16", "out_ptr": "*bf16", "rows": "i32", "K": "i32", "stride_row": "i64",
               "mask_bits": "i32"},
    constexprs={"BR": 16, "BK": 256},
    options={"enable_fp_fusion": False},
)
