"""Fused qk-RMSNorm + 3D RoPE (Wan2.2 interleaved pairs, (t, h, w) channel split), forward and
backward (spec §1.1, §4.1; nvfp4-hopper §6).

LongLive-2.0's Triton RoPE is inference-only (no backward; training falls back to Wan's fp64
complex chain). Here one kernel reads q and k once (strided views of a fused QKV projection are
fine), optionally RMS-normalizes each token over heads·D with the learnable weight, rotates the
interleaved pairs and writes contiguous outputs; the backward kernel applies the inverse rotation
and the RMSNorm backward, writing per-program partial sums of the weight gradients. Programs take
tokens round-robin with software-pipelined (cp.async) loads.

Angles: fp64-built cos/sin tables of shape [F + H + W, D/2] (a few KB, cached per (grid, offset,
theta, device)): row f < F holds the temporal angles of frame f + frame_offset, rows F + y and
F + H + x the height/width angles, so any absolute temporal position (> 1024 frames, multi-shot
offsets, SP-local slices) costs nothing extra. The kernel gathers, per pair, the row of the part
the pair belongs to.

This module holds the public function (input checks, backend choice). The Triton kernels are in
``rope_triton.py``; their launchers, the cos/sin tables and the ``longlive_kernels::`` ops
(forward, backward, autograd) in ``rope_ops.py``.
"""

from __future__ import annotations

import torch

from .. import _checks
from .._backend import eager_op, resolve_backend
from .rope_ops import RopeTableBuffers, _rope_fp8q_op, _rope_op, rope_tables  # noqa: F401 (tables: re-exported)

_rope = eager_op(_rope_op)  # eager inference calls skip the dispatcher (_backend.direct_call_ok)
_rope_fp8q = eager_op(_rope_fp8q_op)


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str) -> str:
    # evaluated eagerly under torch.compile: resolve_backend probes imports Dynamo cannot trace
    return resolve_backend(backend, torch.device(device_type), op="apply_rope_3d",
                           supported=("triton", "torch"), prefer=("triton",))


def _check_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return v


def apply_rope_3d(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    frame_offset: int = 0,
    theta: float = 10000.0,
    norm_weight_q: torch.Tensor | None = None,
    norm_weight_k: torch.Tensor | None = None,
    eps: float = 1e-6,
    backend: str = "auto",
    q_fp8_scale: torch.Tensor | None = None,
    q_fp8_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D rotary embedding of q and k, optionally fused with Wan's qk-RMSNorm.

    Parameters
    ----------
    q, k : torch.Tensor
        [B, L, heads, head_dim] bf16/fp16/fp32, same shape; any strides with a unit last stride
        (e.g. ``qkv.view(B, L, 3, heads, D)[:, :, 0]``). L = F·H·W tokens in (frame, row, col)
        order.
    grid : (int, int, int)
        (F, H, W) latent frames, rows, cols (e.g. (8, 22, 40) for one 704×1280 chunk).
    frame_offset : int
        Added to every token's frame index: the absolute start frame of the chunk, + 8·shot index
        for the multi-shot offset (spec §2.5), or an SP rank's first local frame. Any size (the
        angles are computed in fp64, not sliced from a 1024-row table).
    theta : float
        RoPE base (10000 in Wan).
    norm_weight_q, norm_weight_k : torch.Tensor, optional
        [heads·head_dim] RMSNorm weights; when given, each token's q (k) is first normalized over
        all heads·head_dim channels (``x / sqrt(mean(x²) + eps) · weight``) in the same kernel.
    eps : float
        RMSNorm epsilon (1e-6 in Wan).
    backend : {"auto", "triton", "torch"}
    q_fp8_scale : torch.Tensor, optional
        [1] fp32 on q's device, positive: return q as FP8 E4M3 codes of (fp32 result) / q_fp8_scale
        (the division correctly rounded, RNE, magnitudes beyond 448 saturated), for FP8 attention
        (``fp4_kv_attention(q, ..., q_scale=q_fp8_scale)``): the kernel writes 1 byte per value
        instead of 2, and no cast pass over q follows. Inference only (no gradient). With the
        qk-RMSNorm, ``RMSNorm.amax_bound() / 448`` of the DiT is a scale that never saturates.
    q_fp8_out : torch.Tensor, optional
        float8_e4m3fn [B, L, heads, head_dim] buffer (unit last stride, any other strides, e.g. a
        head-major view) that receives q's codes; default a new contiguous tensor. Needs
        ``q_fp8_scale``.

    Returns
    -------
    (q_out, k_out) : tuple of torch.Tensor
        [B, L, heads, head_dim] contiguous, in q's / k's dtype; fp32 math, one rounding. With
        ``q_fp8_scale``: q_out is the float8_e4m3fn codes (``q_fp8_out`` when given).

    Raises
    ------
    TypeError
        Non-float tensors (fp64 only with ``backend="torch"``), non-int grid entries or offset.
    ValueError
        q/k not 4-D, shapes differ, empty, head_dim odd or < 6, F·H·W != L, weights not
        [heads·head_dim], theta/eps not positive, tensors on different devices, a backend that
        cannot run here; ``q_fp8_scale`` not a one-element fp32 tensor on q's device,
        ``q_fp8_out`` without it or not a float8_e4m3fn tensor of q's shape with a unit last stride,
        an FP8 output requested while a gradient is being recorded.

    Notes
    -----
    Spec §1.1: head_dim splits into (t, h, w) = (d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋) channels (44/42/42
    for d = 128) of interleaved complex pairs (2j, 2j+1); part p rotates pair j by
    ``pos_p · θ^(−2j/d_p)`` with pos = (frame + frame_offset, row, col); pair (a, b) becomes
    (a·cos − b·sin, a·sin + b·cos). RMSNorm as ``WanRMSNorm(heads·head_dim)`` (fp32 normalize,
    × weight; Wan additionally rounds before the weight product). Differentiable in q, k and the
    weights. §4.1: LongLive's Triton RoPE (inference only) is replaced by this op.
    """
    _checks.check_tensor("q", q)
    _checks.check_tensor("k", k)
    be = _resolve_for(backend, q.device.type)
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    for name, t in (("q", q), ("k", k)):
        _checks.check_dtype(name, t, dtypes)
        _checks.check_ndim(name, t, 4)
        _checks.check_nonempty(name, t)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, L, heads, head_dim], got {list(q.shape)} "
                         f"and {list(k.shape)}")
    _checks.check_same_device(q=q, k=k)
    _, n_tok, nh, d = q.shape
    if d % 2 != 0 or d < 6:
        raise ValueError(f"head_dim must be even and >= 6 (split into t/h/w pair groups "
                         f"d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋), got {d}")
    if not isinstance(grid, (tuple, list)) or len(grid) != 3:
        raise ValueError(f"grid must be a tuple (F, H, W), got {grid!r}")
    fhw = tuple(_check_int(f"grid[{i}]", g) for i, g in enumerate(grid))
    if min(fhw) <= 0:
        raise ValueError(f"grid entries must be positive, got {fhw}")
    if fhw[0] * fhw[1] * fhw[2] != n_tok:
        n_grid = fhw[0] * fhw[1] * fhw[2]
        raise ValueError(f"grid {fhw} has F·H·W = {n_grid} tokens but q/k have L = {n_tok}")
    frame_offset = _check_int("frame_offset", frame_offset)
    for name, v in (("theta", theta), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive float, got {v!r}")
    for name, w in (("norm_weight_q", norm_weight_q), ("norm_weight_k", norm_weight_k)):
        if w is None:
            continue
        _checks.check_dtype(name, w, dtypes)
        if w.shape != (nh * d,):
            raise ValueError(f"{name} must have shape [heads·head_dim] = [{nh * d}], got {list(w.shape)}")
        _checks.check_same_device(q=q, **{name: w})
    if norm_weight_q is not None and norm_weight_q.stride(-1) != 1:
        norm_weight_q = norm_weight_q.contiguous()
    if norm_weight_k is not None and norm_weight_k.stride(-1) != 1:
        norm_weight_k = norm_weight_k.contiguous()
    if q_fp8_scale is not None or q_fp8_out is not None:
        q_fp8_out = _check_fp8_out(q, k, norm_weight_q, norm_weight_k, q_fp8_scale, q_fp8_out)
        ko = _rope_fp8q(q, k, norm_weight_q, norm_weight_k, q_fp8_scale, q_fp8_out, fhw[0], fhw[1], fhw[2],
                        frame_offset, float(theta), float(eps), be)
        return q_fp8_out, ko
    return _rope(q, k, norm_weight_q, norm_weight_k, fhw[0], fhw[1], fhw[2], frame_offset,
                 float(theta), float(eps), be)[:2]


def _check_fp8_out(q, k, wq, wk, scale, out) -> torch.Tensor:
    """Check :func:`apply_rope_3d`'s FP8 arguments; returns the codes buffer (a new one if none)."""
    if scale is None:
        raise ValueError("q_fp8_out needs q_fp8_scale (the per-tensor scale of the codes)")
    _checks.check_scale_tensor("q_fp8_scale", scale, "q", q)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, wq, wk)):
        raise ValueError("q_fp8_scale: the FP8 output of q is inference-only; call it under torch.no_grad()")
    if out is None:
        return torch.empty(q.shape, dtype=torch.float8_e4m3fn, device=q.device)
    _checks.check_tensor("q_fp8_out", out)
    _checks.check_dtype("q_fp8_out", out, (torch.float8_e4m3fn,))
    if out.shape != q.shape:
        raise ValueError(f"q_fp8_out must have q's shape {list(q.shape)}, got {list(out.shape)}")
    _checks.check_last_dim_contiguous("q_fp8_out", out)
    _checks.check_same_device(q=q, q_fp8_out=out)
    return out
