"""The per-tensor FP8 scale of a LayerNorm's output from its vectors alone (``layernorm_fp8_scale``):
public function, its ``longlive_kernels::`` op and the Triton kernel (one program per group).

One kernel launch, one program per group of vectors: the DiT needs a scale per block and denoising
step, and computes every block's in one launch per norm before its blocks run (the same formula as a
dozen eager torch ops took 41 µs of device time per block on the H100, twenty-sixth session).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import eager_op, resolve_backend
from ..fp4 import reference as fp8_reference
from ..fp4.fp8 import _max_nan


@triton.jit
def _layernorm_fp8_scale_kernel(
    m_ptr,  # [G, R or 1, C] float: scale (PLUS_ONE: m = 1 + scale) or LayerNorm weight; HAS_M
    a_ptr,  # [G, R or 1, C] float: shift or bias; HAS_A
    out_ptr,  # [G] fp32 out: one decode scale per group (program)
    rows,
    C,
    stride_mg,  # group strides
    stride_ag,
    stride_m,  # row strides (0: one row shared by all)
    stride_a,
    root,  # fp32(√(C − 1))
    margin,
    HAS_M: tl.constexpr,
    HAS_A: tl.constexpr,
    PLUS_ONE: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    m_ptr += g * stride_mg
    a_ptr += g * stride_ag
    rr = tl.arange(0, BR)[:, None]
    cols = tl.arange(0, BC)[None, :]
    acc = tl.zeros([BR, BC], dtype=tl.float32)
    # BR rows per step: the loads of a step are independent, so a program waits for DRAM once per
    # BR·BC elements, not once per row chunk (the one-row walk took 8.8 µs for two frames)
    for r0 in range(0, rows, BR):
        for c0 in range(0, C, BC):
            r = r0 + rr
            mask = (r < rows) & (c0 + cols < C)
            m = 1.0
            a = 0.0
            if HAS_M:
                m = tl.load(m_ptr + r * stride_m + c0 + cols, mask=mask, other=0.0).to(tl.float32)
                if PLUS_ONE:
                    m = m + 1.0
            if HAS_A:
                a = tl.load(a_ptr + r * stride_a + c0 + cols, mask=mask, other=0.0).to(tl.float32)
            v = tl.abs(m) * root + tl.abs(a)  # no FMA (enable_fp_fusion=False): the reference's two roundings
            acc = _max_nan(acc, tl.where(mask, v, 0.0))
    nan = tl.sum(tl.sum((acc != acc).to(tl.int32), 1), 0) > 0  # noqa: PLR0124 (the NaN test)
    top = tl.max(tl.max(acc, 1), 0)
    bound = tl.where(nan, float("nan"), top) * margin
    s = tl.maximum(tl.math.div_rn(bound, 448.0), 1.1754943508222875e-38)
    s = tl.where(bound == 0.0, 1.0, s)
    s = tl.where(bound != bound, float("inf"), s)  # noqa: PLR0124
    tl.store(out_ptr + g, s)


def _reference(m: torch.Tensor | None, a: torch.Tensor | None, c: int, plus_one: bool, margin: float) -> torch.Tensor:
    dev = (m if m is not None else a).device
    root = (c - 1) ** 0.5
    mv = torch.ones((1, 1, 1), device=dev) if m is None else (m.float() + 1.0 if plus_one else m.float())
    av = torch.zeros((1, 1, 1), device=dev) if a is None else a.float()
    return fp8_reference.fp8_scale_of_amax((mv.abs() * root + av.abs()).amax(dim=(1, 2)) * margin)


@torch.library.custom_op("longlive_kernels::layernorm_fp8_scale", mutates_args=())
def _scale_op(m: torch.Tensor | None, a: torch.Tensor | None, c: int, plus_one: bool, margin: float,
              backend: str) -> torch.Tensor:
    """m, a: [G, R or 1, C] (last dim unit stride) → [G] fp32 scales."""
    if backend == "torch":
        return _reference(m, a, c, plus_one, margin)
    given = [t for t in (m, a) if t is not None]
    out = torch.empty((given[0].shape[0],), dtype=torch.float32, device=given[0].device)
    rows = max(t.shape[1] for t in given)

    def strides(t):
        return (0, 0) if t is None else (t.stride(0), t.stride(1) if t.shape[1] > 1 else 0)

    (mg, mr), (ag, ar) = strides(m), strides(a)
    bc = min(1024, triton.next_power_of_2(c))
    br = min(triton.next_power_of_2(rows), max(1, 4096 // bc))
    _layernorm_fp8_scale_kernel[(out.shape[0],)](
        m if m is not None else out, a if a is not None else out, out, rows, c, mg, ag, mr, ar,
        float(torch.tensor((c - 1) ** 0.5, dtype=torch.float32)), margin,
        HAS_M=m is not None, HAS_A=a is not None, PLUS_ONE=plus_one, BR=br, BC=bc, num_warps=4,
        enable_fp_fusion=False,
    )
    return out


@_scale_op.register_fake
def _(m, a, c, plus_one, margin, backend):
    return torch.empty(((m if m is not None else a).shape[0],), dtype=torch.float32,
                       device=(m if m is not None else a).device)


_scale = eager_op(_scale_op)


def _group_rows(v: torch.Tensor, groups: int) -> torch.Tensor:
    """[G, R, C] rows of a [G, ..., C] vector (a view where the strides allow; last dim unit stride)."""
    v3 = v.reshape(groups, -1, v.shape[-1])
    return v3 if v3.stride(-1) == 1 or v3.shape[-1] == 1 else v3.contiguous()


def layernorm_fp8_scale(
    scale: torch.Tensor | None, shift: torch.Tensor | None, *, plus_one: bool = True, margin: float = 1.01,
    groups: int | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Per-tensor E4M3 decode scale that bounds every ``h = LayerNorm(x)·m + a``, from the vectors alone.

    A LayerNorm output obeys ``|x̂_i| ≤ √(C − 1)`` for any row (the deviations d sum to zero, so
    Cauchy–Schwarz on ``d_i = −Σ_{j≠i} d_j`` gives ``d_i² ≤ (C − 1)/C · Σ d²``; eps only shrinks x̂).
    Hence ``|h_i| ≤ √(C − 1)·|m_i| + |a_i|`` whatever the tokens, and one scale
    ``margin · max_i(√(C − 1)·|m_i| + |a_i|) / 448`` encodes every h of these vectors without
    saturating and without reading h: the ``fp8_scale`` of :func:`adaln_modulate` and the residual
    variants, whose codes then feed cuBLAS's per-tensor FP8 GEMM (``fp4.fp8_tensorwise``). The
    bound is loose (a Gaussian row of 3072 reaches ~4.5 of √3071 ≈ 55), which costs precision only
    below 2⁻⁶·448·scale, where E4M3 turns subnormal (bench/RESULTS.md, twenty-sixth session).

    Parameters
    ----------
    scale : torch.Tensor or None
        [..., C] float: the adaLN scale (``m = 1 + scale`` with ``plus_one``) or the LayerNorm
        weight (``m = weight``); None means m = 1. Any leading dims (e.g. [B, F, C] per frame, any
        strides): the bound is the maximum over them; element i of a row pairs with element i of the
        same row of ``shift`` (or of its single row).
    shift : torch.Tensor or None
        [..., C] float: adaLN shift or LayerNorm bias; None means 0.
    plus_one : bool
        ``m = 1 + scale`` (adaLN) rather than ``m = scale`` (affine LayerNorm).
    margin : float
        ≥ 1: covers the fp32 statistics and the rounding of h to bf16 (2⁻⁸) before the encode.
    groups : int, optional
        G independent sets of vectors in one launch (e.g. every DiT block's modulation of a
        denoising step): ``scale`` / ``shift`` are [G, ..., C] and the result is [G], entry g the
        scale of group g's vectors alone. Default: one set, a 0-dim result.
    backend : {"auto", "triton", "torch"}
        One Triton program per group (a single launch), or the same formula as torch ops; the same
        bits.

    Returns
    -------
    torch.Tensor
        0-dim fp32 (or [G] with ``groups``) on the vectors' device: ``bound / 448`` (the row-wise
        rule's scale of an amax equal to the bound: at least 2⁻¹²⁶; +Inf if a vector holds Inf/NaN).

    Raises
    ------
    TypeError
        Non-float vectors, or a non-float margin.
    ValueError
        Both vectors None, scalars, vectors of different last dims or devices, leading dims that
        differ (other than a single [C] row), C < 2, margin < 1, ``groups`` < 1 or not the first dim
        of every given vector, a backend that cannot run here.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a float, got {type(margin).__name__}")
    if not margin >= 1.0:
        raise ValueError(f"margin must be >= 1, got {margin!r}")
    given = {k: v for k, v in (("scale", scale), ("shift", shift)) if v is not None}
    if not given:
        raise ValueError("layernorm_fp8_scale needs scale or shift (both None bounds nothing but LayerNorm)")
    for name, v in given.items():
        _checks.check_dtype(name, v, _checks.FLOAT_DTYPES + (torch.float64,))
        if v.dim() == 0:
            raise ValueError(f"{name} must be a [..., C] vector, got a scalar")
    c = {v.shape[-1] for v in given.values()}
    if len(c) != 1:
        raise ValueError(f"scale and shift must share their last dim C, got {sorted(c)}")
    (c,) = c
    if c < 2:
        raise ValueError(f"the LayerNorm bound needs C >= 2 features, got C = {c}")
    dev = _checks.check_same_device(**given)
    g = 1 if groups is None else groups
    if groups is not None:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        for name, v in given.items():
            if v.dim() < 2 or v.shape[0] != groups:
                raise ValueError(f"with groups={groups}, {name} must be [groups, ..., C], got {list(v.shape)}")
    rows = {name: _group_rows(v, g) for name, v in given.items()}
    lead = {v.shape[1] for v in rows.values() if v.shape[1] != 1}
    if len(lead) > 1:
        raise ValueError("scale and shift must have equal leading dims, or one of them a single [C] row, got "
                         + " and ".join(f"{list(v.shape)}" for v in given.values()))
    be = resolve_backend(backend, dev, op="layernorm_fp8_scale", supported=("triton", "torch"), prefer=("triton",))
    out = _scale(rows.get("scale"), rows.get("shift"), c, plus_one, float(margin), be)
    return out if groups is not None else out.reshape(())


register_aot(
    _layernorm_fp8_scale_kernel,
    signature={"m_ptr": "*fp32", "a_ptr": "*fp32", "out_ptr": "*fp32", "rows": "i32", "C": "i32", "stride_mg": "i64",
               "stride_ag": "i64", "stride_m": "i64", "stride_a": "i64", "root": "fp32", "margin": "fp32"},
    constexprs={"HAS_M": True, "HAS_A": True, "PLUS_ONE": True, "BR": 4, "BC": 1024},
    options={"num_warps": 4, "enable_fp_fusion": False},
)

__all__ = ["layernorm_fp8_scale"]
