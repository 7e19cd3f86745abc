"""Plain-PyTorch specification of every op in ``longlive_kernels.attention`` (fp32/fp64 math,
readable, slow). Semantics: ``shared/docs/longlive-spec.md`` §1.1 (block, RoPE, adaLN) and
§2.2–2.5 (KV cache, sink, window, shot sink)."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# RoPE / adaLN / qk-RMSNorm / gated residual  (owner: rope.py, adaln.py)
# ---------------------------------------------------------------------------------------------
#
# Compute precision: ``compute_dtype`` (default fp64 for fp64 inputs, else fp32); outputs are
# cast once to the input's dtype. The kernels compute in fp32 and round once at the store.
# Every backward below is the analytic gradient of its forward (gradcheck-tested in fp64); the
# Triton backward kernels reproduce these formulas.


def _compute_dtype(x: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
    if compute_dtype is not None:
        return compute_dtype
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rope_3d_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of the (temporal, height, width) parts of a head: (d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋)
    (Wan ``rope_params``; 44/42/42 for d = 128)."""
    s = head_dim // 6
    return head_dim - 4 * s, 2 * s, 2 * s


def rope_3d_angles(
    grid: tuple[int, int, int],
    head_dim: int,
    *,
    frame_offset: int = 0,
    theta: float = 10000.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """fp64 rotation angle of every (token, complex pair): [F·H·W, head_dim/2].

    Token ``l = (f·H + y)·W + x`` rotates pair ``j`` of part ``p`` (dim ``d_p``) by
    ``pos_p · θ^(−2j/d_p)`` with ``pos = (f + frame_offset, y, x)`` (spec §1.1: Wan's
    ``rope_params`` tables, computed analytically so positions may exceed 1024).
    """
    f, h, w = grid
    parts = rope_3d_split(head_dim)
    pos = (
        torch.arange(f, dtype=torch.float64, device=device) + float(frame_offset),
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
    )
    angles = []
    for p, (dim, position) in enumerate(zip(parts, pos)):
        inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        a = torch.outer(position, inv_freq)  # [n_p, dim/2]
        shape = [f, h, w, dim // 2]
        view = [1, 1, 1, dim // 2]
        view[p] = shape[p]
        angles.append(a.view(view).expand(shape))
    return torch.cat(angles, dim=-1).reshape(f * h * w, head_dim // 2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) of ``x`` [B, L, heads, D] by per-token angles
    (cos/sin [L, D/2]): (a·cos − b·sin, a·sin + b·cos)."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)


def _rms_normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, heads, D] normalized by the RMS over heads·D: (n, rstd [B, L, 1, 1])."""
    rstd = torch.rsqrt(x.square().mean(dim=(-2, -1), keepdim=True) + eps)
    return x * rstd, rstd


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
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optional qk-RMSNorm, then 3D RoPE, on q and k [B, L, heads, D] (spec §1.1).

    RMSNorm (``WanRMSNorm(heads·D)``): ``n = x / sqrt(mean(x², over heads·D) + eps)``, then
    ``u = n · weight`` ([heads·D] weight). Wan rounds ``n`` to the input dtype before the weight
    product; this spec (and the kernels) keep it in the compute dtype and round once at the end.
    """
    outs = []
    ang = rope_3d_angles(grid, q.shape[-1], frame_offset=frame_offset, theta=theta, device=q.device)
    for x, w in ((q, norm_weight_q), (k, norm_weight_k)):
        ct = _compute_dtype(x, compute_dtype)
        cos, sin = ang.cos().to(ct), ang.sin().to(ct)
        u = x.to(ct)
        if w is not None:
            u = _rms_normalize(u, eps)[0] * w.to(ct).view(x.shape[-2], x.shape[-1])
        outs.append(_rotate(u, cos, sin).to(x.dtype))
    return outs[0], outs[1]


def apply_rope_3d_backward(
    grad_q: torch.Tensor,
    grad_k: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    frame_offset: int = 0,
    theta: float = 10000.0,
    norm_weight_q: torch.Tensor | None = None,
    norm_weight_k: torch.Tensor | None = None,
    eps: float = 1e-6,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`apply_rope_3d`: (dq, dk, d norm_weight_q, d norm_weight_k).

    RoPE is a rotation, so ``du = R(−angle)·g``. With the RMSNorm (``n = x·r``):
    ``dw = Σ_tokens du·n``, ``gn = du·w``, ``dx = r·(gn − n·mean(gn·n))`` (means over heads·D).
    Weight gradients are None when the norm is off.
    """
    ang = rope_3d_angles(grid, q.shape[-1], frame_offset=frame_offset, theta=theta, device=q.device)
    grads = []
    for g, x, w in ((grad_q, q, norm_weight_q), (grad_k, k, norm_weight_k)):
        ct = _compute_dtype(x, compute_dtype)
        du = _rotate(g.to(ct), ang.cos().to(ct), -ang.sin().to(ct))
        if w is None:
            grads.append((du.to(x.dtype), None))
            continue
        n, rstd = _rms_normalize(x.to(ct), eps)
        wv = w.to(ct).view(x.shape[-2], x.shape[-1])
        dw = (du * n).sum(dim=(0, 1)).flatten()
        gn = du * wv
        dx = rstd * (gn - n * (gn * n).mean(dim=(-2, -1), keepdim=True))
        grads.append((dx.to(x.dtype), dw.to(w.dtype)))
    return grads[0][0], grads[1][0], grads[0][1], grads[1][1]


def per_frame(v: torch.Tensor, frame_len: int) -> torch.Tensor:
    """Broadcast a per-frame vector [B, F, C] to tokens [B, F·frame_len, C] (token t → frame
    t // frame_len)."""
    return v.repeat_interleave(frame_len, dim=1)


def _frame_sum(t: torch.Tensor, frame_len: int) -> torch.Tensor:
    """Sum a per-token tensor [B, L, C] over the tokens of each frame: [B, L/frame_len, C]."""
    return t.unflatten(1, (-1, frame_len)).sum(dim=2)


def _layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm without affine over the last dim: (x̂, rstd [..., 1]) (biased variance)."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    rstd = torch.rsqrt(xc.square().mean(dim=-1, keepdim=True) + eps)
    return xc * rstd, rstd


def layernorm_modulate(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    plus_one: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``LN(x)·(1 + scale) + shift`` (adaLN, ``plus_one``) or ``LN(x)·scale + shift`` (affine LN).

    x [B, L, C]; scale, shift [B, F, C] per latent frame (token t uses frame t // frame_len,
    L = F·frame_len); LN without affine over C, eps inside the rsqrt (spec §1.1 LN1/LN2/LN3).
    Output in x's dtype.
    """
    ct = _compute_dtype(x, compute_dtype)
    xhat, _ = _layer_norm(x.to(ct), eps)
    m = per_frame(scale.to(ct), frame_len)
    h = xhat * (1 + m if plus_one else m) + per_frame(shift.to(ct), frame_len)
    return h.to(x.dtype)


def adaln_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, frame_len: int, eps: float = 1e-6,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """adaLN: ``LN(x)·(1 + scale) + shift`` with per-frame shift/scale [B, F, C] (spec §1.1)."""
    return layernorm_modulate(x, scale, shift, frame_len=frame_len, eps=eps, compute_dtype=compute_dtype)


def layernorm_modulate_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    plus_one: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`layernorm_modulate`: (dx [x dtype], dscale, dshift [scale dtype]).

    ``gx̂ = g·m`` (m = 1 + scale or scale), ``dx = rstd·(gx̂ − mean(gx̂) − x̂·mean(gx̂·x̂))``,
    ``dscale = Σ_frame g·x̂``, ``dshift = Σ_frame g``.
    """
    ct = _compute_dtype(x, compute_dtype)
    dx, dscale, dshift = _layernorm_modulate_grads(grad, x, scale, frame_len, eps, plus_one, ct)
    return dx.to(x.dtype), dscale.to(scale.dtype), dshift.to(scale.dtype)


def _layernorm_modulate_grads(grad, x, scale, frame_len, eps, plus_one, ct):
    xhat, rstd = _layer_norm(x.to(ct), eps)
    g = grad.to(ct)
    m = per_frame(scale.to(ct), frame_len)
    gxhat = g * (1 + m if plus_one else m)
    dx = rstd * (gxhat - gxhat.mean(-1, keepdim=True) - xhat * (gxhat * xhat).mean(-1, keepdim=True))
    return dx, _frame_sum(g * xhat, frame_len), _frame_sum(g, frame_len)


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, *, frame_len: int,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x + gate·y`` with a per-frame gate [B, F, C] (``x + y`` when gate is None); x's dtype
    (spec §1.1: ``x = x + SelfAttn(...)·e2``, ``x = x + FFN(...)·e5``)."""
    ct = _compute_dtype(x, compute_dtype)
    yc = y.to(ct)
    if gate is not None:
        yc = yc * per_frame(gate.to(ct), frame_len)
    return (x.to(ct) + yc).to(x.dtype)


def gated_residual_backward(
    grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, *, frame_len: int,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`gated_residual` (gated): (dx = g, dy = g·gate, dgate = Σ_frame g·y)."""
    ct = _compute_dtype(grad, compute_dtype)
    g = grad.to(ct)
    dy = g * per_frame(gate.to(ct), frame_len)
    dgate = _frame_sum(g * y.to(ct), frame_len)
    return grad, dy.to(y.dtype), dgate.to(gate.dtype)


def residual_layernorm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    plus_one: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = x + gate·y`` then ``h = LN(r)·(1 + scale) + shift`` (or ``·scale`` without
    ``plus_one``): (r, h), both in x's dtype. The normalization reads r *after* its rounding to
    x's dtype, exactly as if the two ops ran one after the other."""
    r = gated_residual(x, y, gate, frame_len=frame_len, compute_dtype=compute_dtype)
    h = layernorm_modulate(r, scale, shift, frame_len=frame_len, eps=eps, plus_one=plus_one,
                           compute_dtype=compute_dtype)
    return r, h


def residual_layernorm_modulate_backward(
    grad_r: torch.Tensor,
    grad_h: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    scale: torch.Tensor,
    *,
    frame_len: int,
    eps: float = 1e-6,
    plus_one: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`residual_layernorm_modulate` given r (its first output):
    (dx, dy, dgate or None, dscale, dshift) with ``dx = grad_r + LN-backward(grad_h)``,
    ``dy = dx·gate`` (``dx`` when ungated), ``dgate = Σ_frame dx·y``."""
    ct = _compute_dtype(r, compute_dtype)
    dr, dscale, dshift = _layernorm_modulate_grads(grad_h, r, scale, frame_len, eps, plus_one, ct)
    dscale, dshift = dscale.to(scale.dtype), dshift.to(scale.dtype)
    dx = grad_r.to(ct) + dr
    if gate is None:
        return dx.to(r.dtype), dx.to(y.dtype), None, dscale, dshift
    dy = dx * per_frame(gate.to(ct), frame_len)
    dgate = _frame_sum(dx * y.to(ct), frame_len)
    return dx.to(r.dtype), dy.to(y.dtype), dgate.to(gate.dtype), dscale, dshift


# ---------------------------------------------------------------------------------------------
# FP4 KV cache / attention over the cache  (owner: kv_cache.py, fp4_kv_attention.py)
# ---------------------------------------------------------------------------------------------
