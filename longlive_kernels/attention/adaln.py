"""Fused adaLN (LayerNorm + per-frame ``(1 + scale)·x̂ + shift``), gated residual, and the fused
residual + next norm of the Wan block, forward and backward (spec §1.1, §4.2; nvfp4-hopper §6).

One block (``x`` the residual stream, ``e0..e5`` per-frame modulation vectors)::

    h    = adaln_modulate(x, e0, e1, frame_len=n)                    # LN1
    x, h = gated_residual_layernorm(x, attn(h), e2, w3, b3, frame_len=n)   # + LN3 (affine)
    x, h = gated_residual_adaln(x, cross(h), None, e3, e4, frame_len=n)    # + LN2
    x    = gated_residual(x, ffn(h), e5, frame_len=n)

Four memory passes over [tokens, C] where eager PyTorch makes about a dozen (each LayerNorm,
``1 + scale``, product, sum, gate product and residual add is its own kernel).

This module holds the public functions (input checks, backend choice). The Triton kernels are in
``adaln_triton.py``; their launchers and the ``longlive_kernels::`` ops (forward, backward,
autograd) in ``adaln_ops.py``.
"""

from __future__ import annotations

import torch

from .. import _checks
from .._backend import eager_op, resolve_backend
from ..fp4.fp8_tensorwise import check_fp8_scale
from .adaln_ops import _gated_residual_op, _ln_mod_fp8_op, _ln_mod_op, _res_ln_mod_op

# eager inference calls skip the dispatcher (same computation; see _backend.direct_call_ok)
_ln_mod = eager_op(_ln_mod_op)
_gated_residual = eager_op(_gated_residual_op)
_res_ln_mod = eager_op(_res_ln_mod_op)
_ln_mod_fp8 = eager_op(_ln_mod_fp8_op)

_SUPPORTED = ("triton", "torch")


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str, op: str) -> str:
    # evaluated eagerly under torch.compile: resolve_backend probes imports Dynamo cannot trace
    return resolve_backend(backend, torch.device(device_type), op=op, supported=_SUPPORTED,
                           prefer=("triton",))


def _resolve(backend: str, x: torch.Tensor, op: str) -> str:
    return _resolve_for(backend, x.device.type, op)


def _check_tokens(name: str, x: torch.Tensor, be: str) -> None:
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    _checks.check_dtype(name, x, dtypes)
    _checks.check_ndim(name, x, 3)
    _checks.check_nonempty(name, x)


def _check_frame_len(frame_len: object, n_tok: int) -> None:
    if isinstance(frame_len, bool) or not isinstance(frame_len, int):
        raise TypeError(f"frame_len must be an int, got {type(frame_len).__name__}")
    if frame_len <= 0:
        raise ValueError(f"frame_len must be positive, got {frame_len}")
    if n_tok % frame_len != 0:
        raise ValueError(
            f"x has {n_tok} tokens, not a multiple of frame_len={frame_len} (expected L = F·frame_len)"
        )


def _per_frame_vector(name: str, v: torch.Tensor, x: torch.Tensor, frame_len: int, be: str) -> torch.Tensor:
    """Check a per-frame vector [B, F, C] (or [B, F, 1, C] as chunked from e0) against x [B, L, C]."""
    dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
    _checks.check_dtype(name, v, dtypes)
    if v.dim() == 4 and v.shape[2] == 1:
        v = v.squeeze(2)
    b, n_tok, c = x.shape
    expected = (b, n_tok // frame_len, c)
    if v.dim() != 3 or tuple(v.shape) != expected:
        raise ValueError(
            f"{name} must have shape [B, F, C] = {list(expected)} (F = L // frame_len = "
            f"{n_tok} // {frame_len}), got {list(v.shape)}"
        )
    _checks.check_same_device(x=x, **{name: v})
    return v


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


def _check_residual_branch(x: torch.Tensor, y: torch.Tensor, be: str) -> None:
    _check_tokens("y", y, be)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x {list(x.shape)}, got {list(y.shape)}")
    _checks.check_same_device(x=x, y=y)


def _fp8_out(x, y, gate, scale, shift, frame_len, eps, plus_one, be, fp8_scale):
    """(r | None, (codes, row scales | the per-tensor scale)) of the ``out_fp8=True`` variants
    (inference only)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, y, gate, scale, shift)):
        raise ValueError("out_fp8=True has no backward: run it under torch.no_grad() (or pass tensors that "
                         "do not require grad)")
    fs = check_fp8_scale("fp8_scale", fp8_scale, x.device)
    r, codes, hs = _ln_mod_fp8(x, y, gate, scale, shift, frame_len, eps, plus_one, be, fs)
    return (r if y is not None else None), (codes, hs if fs is None else fs)


def _no_fp8_scale(fp8_scale: object, out_fp8: bool) -> None:
    if fp8_scale is not None and not out_fp8:
        raise ValueError("fp8_scale is the per-tensor scale of FP8 h: it needs out_fp8=True")


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    backend: str = "auto",
    out_fp8: bool = False,
    fp8_scale: torch.Tensor | float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """adaLN: ``LayerNorm(x)·(1 + scale) + shift`` with per-latent-frame shift/scale.

    Parameters
    ----------
    x : torch.Tensor
        [B, L, C] bf16/fp16/fp32 tokens (any strides), L = F·frame_len.
    shift, scale : torch.Tensor
        [B, F, C] (or [B, F, 1, C]) bf16/fp16/fp32; token ``t`` uses frame ``t // frame_len``.
        Strided views (chunks of the [B, F, 6, C] modulation) are read in place.
    frame_len : int
        Tokens per latent frame (880 for 704×1280 with the 5B model).
    eps : float
        Added to the variance inside the rsqrt (1e-6 in Wan).
    backend : {"auto", "triton", "torch"}
    out_fp8 : bool
        See below (Returns).
    fp8_scale : torch.Tensor or float, optional
        With ``out_fp8``: encode h with this one per-tensor decode scale (a one-element fp32 tensor
        on x's device, or a positive float) instead of row scales, e.g.
        :func:`layernorm_fp8_scale` of the same vectors; no row amax is taken.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        [B, L, C] contiguous, x's dtype. Statistics (biased variance) and products in fp32,
        rounded once. With ``out_fp8``, ``(codes, row_scale)``: float8_e4m3fn [B, L, C] and fp32
        [B, L], bit for bit ``quantize_fp8_rowwise`` of that h, from the same pass (the row is in
        registers, so its amax costs no extra read): the input of ``fp8_linear(codes, w, ws,
        x_scale=row_scale)``. On the GPU the two outputs are autotuned separately; a launch with
        another warp count sums a row in another order, so a rare element of its h may differ in
        the last bit from the bf16 h of another launch. With ``fp8_scale``, ``(codes, scale)``:
        ``quantize_fp8_tensorwise(h, scale=fp8_scale)`` and the 0-dim fp32 scale, the input of
        ``fp8_linear(codes, w, ws, x_scale=scale)`` (cuBLAS's per-tensor FP8 GEMM with a per-tensor
        ``ws``). Inference only (ValueError where autograd would need a backward).

    Raises
    ------
    TypeError
        Non-float tensors (fp64 only with ``backend="torch"``), non-int ``frame_len``, an
        ``fp8_scale`` that is not fp32 or a float.
    ValueError
        x not 3-D or empty, L not a multiple of ``frame_len``, shift/scale not [B, L/frame_len, C],
        tensors on different devices, ``eps`` ≤ 0, a backend that cannot run here, ``fp8_scale``
        without ``out_fp8`` or not one positive element.

    Notes
    -----
    Spec §1.1 (LN1, LN2: ``norm(x)·(1 + e1) + e0``, LayerNorm without affine, eps 1e-6) and
    §4.2 (LongLive's inference-only Triton kernel). Differentiable in x, shift and scale.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "adaln_modulate")
    _check_tokens("x", x, be)
    _check_frame_len(frame_len, x.shape[1])
    shift = _per_frame_vector("shift", shift, x, frame_len, be)
    scale = _per_frame_vector("scale", scale, x, frame_len, be)
    _no_fp8_scale(fp8_scale, out_fp8)
    if out_fp8:
        return _fp8_out(x, None, None, scale, shift, frame_len, _check_eps(eps), True, be, fp8_scale)[1]
    return _ln_mod(x, scale, shift, frame_len, _check_eps(eps), True, be)[0]


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, *, frame_len: int, backend: str = "auto"
) -> torch.Tensor:
    """Gated residual ``x + gate·y`` with a per-frame gate.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32 (any strides), same shape.
    gate : torch.Tensor
        [B, F, C] (or [B, F, 1, C]) per-frame gate, L = F·frame_len.
    frame_len : int
        Tokens per latent frame.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [B, L, C] contiguous, x's dtype (fp32 math, one rounding).

    Raises
    ------
    TypeError, ValueError
        As :func:`adaln_modulate`; y not shaped like x.

    Notes
    -----
    Spec §1.1: ``x = x + SelfAttn(·)·e2``, ``x = x + FFN(·)·e5``.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _check_frame_len(frame_len, x.shape[1])
    gate = _per_frame_vector("gate", gate, x, frame_len, be)
    return _gated_residual(x, y, gate, frame_len, be)


def gated_residual_adaln(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    backend: str = "auto",
    out_fp8: bool = False,
    fp8_scale: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then adaLN in one pass: ``r = x + gate·y`` (``x + y`` when gate is None),
    ``h = LayerNorm(r)·(1 + scale) + shift``.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32, same shape (e.g. residual stream and cross-attention output).
    gate : torch.Tensor or None
        [B, F, C] per-frame gate, or None for an ungated residual.
    shift, scale : torch.Tensor
        [B, F, C] per-frame adaLN vectors (e3, e4 for LN2).
    frame_len : int
    eps : float
    backend : {"auto", "triton", "torch"}
    out_fp8 : bool
        h as ``(codes, row_scale)``, as in :func:`adaln_modulate` (inference only).
    fp8_scale : torch.Tensor or float, optional
        h as ``(codes, fp8_scale)`` with this per-tensor scale, as in :func:`adaln_modulate`.

    Returns
    -------
    (r, h) : tuple of torch.Tensor
        Both [B, L, C] contiguous in x's dtype; h normalizes r *after* its rounding to x's dtype
        (identical to the two ops run separately).

    Raises
    ------
    TypeError, ValueError
        As :func:`adaln_modulate` and :func:`gated_residual`.

    Notes
    -----
    Spec §1.1 block: ``x = x + CrossAttn(·)`` followed by ``LN2(x)·(1 + e4) + e3``.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual_adaln")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _check_frame_len(frame_len, x.shape[1])
    if gate is not None:
        gate = _per_frame_vector("gate", gate, x, frame_len, be)
    shift = _per_frame_vector("shift", shift, x, frame_len, be)
    scale = _per_frame_vector("scale", scale, x, frame_len, be)
    _no_fp8_scale(fp8_scale, out_fp8)
    if out_fp8:
        return _fp8_out(x, y, gate, scale, shift, frame_len, _check_eps(eps), True, be, fp8_scale)
    return _res_ln_mod(x, y, gate, scale, shift, frame_len, _check_eps(eps), True, be)[:2]


def gated_residual_layernorm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    frame_len: int | None = None,
    eps: float = 1e-6,
    backend: str = "auto",
    out_fp8: bool = False,
    fp8_scale: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then affine LayerNorm in one pass: ``r = x + gate·y``,
    ``h = LayerNorm(r)·weight + bias``.

    Parameters
    ----------
    x, y : torch.Tensor
        [B, L, C] bf16/fp16/fp32, same shape (residual stream, self-attention output).
    gate : torch.Tensor or None
        [B, F, C] per-frame gate (e2), or None for ``x + y``.
    weight, bias : torch.Tensor or None
        [C] LayerNorm affine parameters (LN3); None means 1 / 0.
    frame_len : int, optional
        Tokens per frame; required with a gate (default: L).
    eps : float
    backend : {"auto", "triton", "torch"}
    out_fp8 : bool
        h as ``(codes, row_scale)``, as in :func:`adaln_modulate` (inference only).
    fp8_scale : torch.Tensor or float, optional
        h as ``(codes, fp8_scale)`` with this per-tensor scale, as in :func:`adaln_modulate`.

    Returns
    -------
    (r, h) : tuple of torch.Tensor
        Both [B, L, C] contiguous in x's dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`gated_residual_adaln`; weight/bias not [C].

    Notes
    -----
    Spec §1.1 block: ``x = x + SelfAttn(·)·e2`` followed by ``LN3(x)`` (``cross_attn_norm``,
    with affine). Differentiable in x, y, gate, weight and bias.
    """
    _checks.check_tensor("x", x)
    be = _resolve(backend, x, "gated_residual_layernorm")
    _check_tokens("x", x, be)
    _check_residual_branch(x, y, be)
    _, n_tok, c = x.shape
    if frame_len is None:
        if gate is not None:
            raise ValueError("frame_len is required when a gate is given")
        frame_len = n_tok
    _check_frame_len(frame_len, n_tok)
    if gate is not None:
        gate = _per_frame_vector("gate", gate, x, frame_len, be)
    vecs = []
    for name, v, fill in (("weight", weight, 1.0), ("bias", bias, 0.0)):
        if v is None:
            v = x.new_full((c,), fill, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype)
        dtypes = _checks.FLOAT_DTYPES + ((torch.float64,) if be == "torch" else ())
        _checks.check_dtype(name, v, dtypes)
        if v.shape != (c,):
            raise ValueError(f"{name} must have shape [C] = [{c}], got {list(v.shape)}")
        _checks.check_same_device(x=x, **{name: v})
        # one [C] vector for every frame: the backward sums its gradient over the frames in fp32
        # (in the same launch as the per-frame sums) and autograd rounds once to its dtype
        vecs.append(v.to(torch.promote_types(v.dtype, torch.float32)))
    _no_fp8_scale(fp8_scale, out_fp8)
    if out_fp8:
        return _fp8_out(x, y, gate, vecs[0], vecs[1], frame_len, _check_eps(eps), False, be, fp8_scale)
    return _res_ln_mod(x, y, gate, vecs[0], vecs[1], frame_len, _check_eps(eps), False, be)[:2]
