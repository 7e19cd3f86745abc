"""Building blocks of the causal Wan2.2-TI2V DiT: adaLN block, self/cross-attention, head.

Parameter names and shapes follow the official Wan checkpoints (``shared/docs/longlive-spec.md``
§1.1), so ``state_dict()`` loads and writes ``blocks.N.self_attn.q.weight`` … directly:

``self_attn.{q,k,v,o}`` · ``self_attn.norm_{q,k}`` · ``norm3`` (LayerNorm, affine) ·
``cross_attn.{q,k,v,o}`` · ``cross_attn.norm_{q,k}`` · ``ffn.0`` / ``ffn.2`` · ``modulation [1, 6, C]``
and ``head.head`` / ``head.modulation [1, 2, C]``. ``norm1`` / ``norm2`` / ``head.norm`` have no
parameters and are fused into :func:`adaln`.

Math per block (per-frame modulation e0 [B, F, 6, C], fp32; x the residual stream)::

    x = x + SelfAttn(LN(x)·(1+e1) + e0) · e2
    x = x + CrossAttn(LN3(x), text)
    x = x + FFN(LN(x)·(1+e4) + e3) · e5

Ops come from :mod:`longlive_kernels.attention` when ``ops="kernels"`` and the kernel exists:
``adaln_modulate`` (LN1 + modulation), ``apply_rope_3d`` with the qk-RMSNorm fused in,
``gated_residual_layernorm`` (``x + e2·attn`` then LN3), ``gated_residual_adaln`` (``x + cross``
then LN2 + modulation) and ``gated_residual`` (``x + e5·ffn``). ``ops="torch"`` runs the plain eager
PyTorch versions below (the benchmark baseline, and the fallback while a kernel is missing).
Self-attention goes through a pluggable backend (:mod:`longlive.model.attention`) that receives
q, k, v [B, L, H, D] after RoPE and returns o [B, L, H, D].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPS",
    "CrossAttention",
    "DiTBlock",
    "Head",
    "RMSNorm",
    "SelfAttention",
    "TokenLayout",
    "adaln",
    "gated_residual",
    "kernel_ops_available",
    "residual_adaln",
    "residual_layernorm",
    "rope_qk",
]

OPS = ("kernels", "torch")


# ---------------------------------------------------------------------------------------------
# Op shims: longlive_kernels when present, else plain torch (fp32 math, one cast at the end).
# ---------------------------------------------------------------------------------------------
def _kernel(name: str):
    try:
        import longlive_kernels.attention as ka
    except ImportError:  # pragma: no cover - the package is part of this repo
        return None
    return getattr(ka, name, None)


def kernel_ops_available() -> dict[str, bool]:
    """Which fused ops of :mod:`longlive_kernels.attention` this model can call right now."""
    names = ("adaln_modulate", "apply_rope_3d", "gated_residual", "gated_residual_adaln",
             "gated_residual_layernorm", "FP4KVCache", "fp4_kv_attention")
    return {n: _kernel(n) is not None for n in names}


@dataclass(frozen=True)
class TokenLayout:
    """How a token sequence maps onto latent frames.

    The sequence holds ``copies`` consecutive token grids of ``grid = (F, H, W)`` each (frame-major,
    then row, then column); teacher forcing uses ``copies=2`` for [clean ; noisy]. Every copy takes
    temporal RoPE positions ``frame_offset … frame_offset + F − 1``.
    """

    grid: tuple[int, int, int]
    copies: int = 1
    frame_offset: int = 0

    @property
    def frame_len(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def frames(self) -> int:
        """Frames in the whole sequence (all copies)."""
        return self.grid[0] * self.copies

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.frame_len * self.copies


def _layer_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return F.layer_norm(xf, (xf.shape[-1],), eps=eps)


def adaln_torch(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, frame_len: int,
                eps: float) -> torch.Tensor:
    """``LN(x)·(1 + scale) + shift`` with per-frame shift/scale [B, F, C]; x [B, F·frame_len, C]."""
    b, n, c = x.shape
    f = shift.shape[1]
    xn = _layer_norm_fp32(x, eps).view(b, f, n // f, c)
    out = xn * (1.0 + scale.float()[:, :, None]) + shift.float()[:, :, None]
    return out.view(b, n, c).to(x.dtype)


def _fp8_kw(out_fp8: bool, fp8_scale) -> dict:
    return {"out_fp8": out_fp8} if fp8_scale is None or not out_fp8 else {"out_fp8": True, "fp8_scale": fp8_scale}


def adaln(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, frame_len: int, eps: float,
          ops: str = "kernels", backend: str = "auto", out_fp8: bool = False, fp8_scale=None):
    """Fused LayerNorm (no affine) + per-frame modulation; ``longlive_kernels`` ``adaln_modulate``.

    ``out_fp8`` asks for h as row-wise E4M3 ``(codes, row_scale)`` from the same pass (inference,
    for FP8 linears), or with ``fp8_scale`` (a one-element fp32 tensor, ``layernorm_fp8_scale`` of
    the same vectors) as per-tensor ``(codes, fp8_scale)``; the torch ops return the bf16 h instead
    (every consumer takes both)."""
    if x.shape[1] != shift.shape[1] * frame_len:
        raise ValueError(
            f"adaln: x has {x.shape[1]} tokens, expected frames·frame_len = {shift.shape[1]}·{frame_len}"
        )
    fn = _kernel("adaln_modulate") if ops == "kernels" else None
    if fn is not None:
        return fn(x, shift, scale, frame_len=frame_len, eps=eps, backend=backend, **_fp8_kw(out_fp8, fp8_scale))
    return adaln_torch(x, shift, scale, frame_len=frame_len, eps=eps)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, *, frame_len: int,
                   ops: str = "kernels", backend: str = "auto") -> torch.Tensor:
    """``x + y·gate`` with a per-frame gate [B, F, C], computed in fp32, returned in x's dtype."""
    fn = _kernel("gated_residual") if ops == "kernels" else None
    if fn is not None:
        return fn(x, y, gate, frame_len=frame_len, backend=backend)
    b, n, c = x.shape
    f = gate.shape[1]
    out = x.float().view(b, f, n // f, c) + y.float().view(b, f, n // f, c) * gate.float()[:, :, None]
    return out.view(b, n, c).to(x.dtype)


def residual_layernorm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, norm: nn.LayerNorm | None, *,
                       frame_len: int, eps: float, ops: str = "kernels", backend: str = "auto",
                       out_fp8: bool = False, fp8_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = x + y·gate`` then ``h = LN3(r)`` (affine LayerNorm, or identity when ``norm`` is None).

    One pass with ``longlive_kernels`` ``gated_residual_layernorm``; returns (r, h). ``out_fp8``,
    ``fp8_scale``: as :func:`adaln`."""
    fn = _kernel("gated_residual_layernorm") if ops == "kernels" and norm is not None else None
    if fn is not None:
        return fn(x, y, gate, norm.weight, norm.bias, frame_len=frame_len, eps=eps, backend=backend,
                  **_fp8_kw(out_fp8, fp8_scale))
    r = gated_residual(x, y, gate, frame_len=frame_len, ops=ops, backend=backend)
    if norm is None:
        return r, r
    h = F.layer_norm(r.float(), (r.shape[-1],), norm.weight.float(), norm.bias.float(), eps).to(r.dtype)
    return r, h


def residual_adaln(x: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *,
                   frame_len: int, eps: float, ops: str = "kernels", backend: str = "auto",
                   out_fp8: bool = False, fp8_scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = x + y`` (ungated) then ``h = LN(r)·(1 + scale) + shift``; returns (r, h).

    One pass with ``longlive_kernels`` ``gated_residual_adaln``. ``out_fp8``, ``fp8_scale``: as
    :func:`adaln`."""
    fn = _kernel("gated_residual_adaln") if ops == "kernels" else None
    if fn is not None:
        return fn(x, y, None, shift, scale, frame_len=frame_len, eps=eps, backend=backend,
                  **_fp8_kw(out_fp8, fp8_scale))
    r = (x.float() + y.float()).to(x.dtype)
    return r, adaln(r, shift, scale, frame_len=frame_len, eps=eps, ops=ops, backend=backend)


def _rope_angles(layout: TokenLayout, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [tokens_of_one_copy, head_dim/2] (fp32) of Wan's interleaved 3D RoPE (spec §1.1)."""
    f, h, w = layout.grid
    c = head_dim // 2
    split = (c - 2 * (c // 3), c // 3, c // 3)
    parts = []
    for n_pairs, pos in zip(split, (
        torch.arange(f, device=device, dtype=torch.float64) + layout.frame_offset,
        torch.arange(h, device=device, dtype=torch.float64),
        torch.arange(w, device=device, dtype=torch.float64),
    )):
        inv = theta ** (-torch.arange(0, n_pairs, device=device, dtype=torch.float64) * 2.0 / (2 * n_pairs))
        parts.append(torch.outer(pos, inv))
    ang = torch.cat([
        parts[0][:, None, None, :].expand(f, h, w, split[0]),
        parts[1][None, :, None, :].expand(f, h, w, split[1]),
        parts[2][None, None, :, :].expand(f, h, w, split[2]),
    ], dim=-1).reshape(f * h * w, c)
    return ang.cos().float(), ang.sin().float()


_ANGLE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _rope_tables(layout: TokenLayout, head_dim: int, theta: float, device):
    if torch.compiler.is_compiling():
        return _rope_angles(layout, head_dim, theta, device)
    key = (layout.grid, layout.frame_offset, head_dim, theta, str(device))
    if key not in _ANGLE_CACHE:
        if len(_ANGLE_CACHE) > 32:
            _ANGLE_CACHE.clear()
        _ANGLE_CACHE[key] = _rope_angles(layout, head_dim, theta, device)
    return _ANGLE_CACHE[key]


def rope_qk_torch(q: torch.Tensor, k: torch.Tensor, *, layout: TokenLayout, theta: float,
                  norm_weight_q: torch.Tensor | None, norm_weight_k: torch.Tensor | None,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch RMSNorm over the full heads·head_dim width (optional) + interleaved 3D RoPE."""
    b, n, nh, d = q.shape
    cos, sin = _rope_tables(layout, d, theta, q.device)

    def one(x: torch.Tensor, wgt: torch.Tensor | None) -> torch.Tensor:
        xf = x.float()
        if wgt is not None:
            flat = xf.reshape(b, n, nh * d)
            flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps) * wgt.float()
            xf = flat.view(b, n, nh, d)
        xf = xf.view(b * layout.copies, n // layout.copies, nh, d // 2, 2)
        a, bb = xf[..., 0], xf[..., 1]
        cc, ss = cos[None, :, None, :], sin[None, :, None, :]
        out = torch.stack((a * cc - bb * ss, a * ss + bb * cc), dim=-1)
        return out.view(b, n, nh, d).to(x.dtype)

    return one(q, norm_weight_q), one(k, norm_weight_k)


def rope_qk(q: torch.Tensor, k: torch.Tensor, *, layout: TokenLayout, theta: float,
            norm_weight_q: torch.Tensor | None, norm_weight_k: torch.Tensor | None, eps: float,
            ops: str = "kernels", backend: str = "auto",
            q_fp8: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """qk-RMSNorm + 3D RoPE on q, k [B, L, H, D]; the kernel's ``apply_rope_3d`` when available.

    Several copies of the grid (teacher forcing) are folded into the batch dimension, which is
    exact because RMSNorm and RoPE act per token. ``q_fp8 = (scale, out)`` (one copy of the grid,
    inference): q's result goes to ``out`` (float8_e4m3fn [B, L, H, D], any strides) as the E4M3
    codes of q / scale, and ``out`` is returned in q's place."""
    if q.shape[1] != layout.tokens:
        raise ValueError(f"rope: q has {q.shape[1]} tokens, layout {layout} has {layout.tokens}")
    if q_fp8 is not None and layout.copies != 1:
        raise ValueError(f"rope: an FP8 q needs one copy of the grid, the layout has {layout.copies}")
    fn = _kernel("apply_rope_3d") if ops == "kernels" else None
    if fn is None:
        qo, ko = rope_qk_torch(q, k, layout=layout, theta=theta, norm_weight_q=norm_weight_q,
                               norm_weight_k=norm_weight_k, eps=eps)
        if q_fp8 is not None:  # the 16-bit result, rounded again: only the kernel skips that rounding
            scale, out = q_fp8
            out.copy_((qo.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn))
            qo = out
        return qo, ko
    b, n, nh, d = q.shape
    c = layout.copies
    fp8_kw = {} if q_fp8 is None else {"q_fp8_scale": q_fp8[0], "q_fp8_out": q_fp8[1]}
    qo, ko = fn(q.reshape(b * c, n // c, nh, d), k.reshape(b * c, n // c, nh, d), grid=layout.grid,
                frame_offset=layout.frame_offset, theta=theta, norm_weight_q=norm_weight_q,
                norm_weight_k=norm_weight_k, eps=eps, backend=backend, **fp8_kw)
    if q_fp8 is not None:
        return qo, ko.reshape(b, n, nh, d)
    return qo.reshape(b, n, nh, d), ko.reshape(b, n, nh, d)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learnable ``weight`` (Wan's qk norm; fp32 math)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.weight.dtype == x.dtype:
            # torch's fused kernel: the same fp32 statistics and products, rounded once, in one pass
            # (tools/probe_rms_norm.py, H100, the cross-attention's q [7040, 3072] bf16: 33 µs against
            # 365 µs for the seven eager ops below; 87 of 21.6M outputs differ by one bf16 ulp, the
            # sum's order; the same max error against fp64)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)

    def amax_bound(self) -> torch.Tensor:
        """[1] fp32 on the weight's device: an upper bound of max|y| for y = this norm's output over
        C = ``weight.numel()`` values, also after RoPE: |x_i| ≤ ‖x‖₂ = √C·rms(x), so |y_i| ≤ √C·|w_i|;
        RoPE rotates pairs (keeping each pair's norm), so every output is ≤ √C·max|w|. The factor 1.01
        covers the fp32 arithmetic and the final 16-bit rounding (≤ 2⁻⁸ relative). FP8 attention takes
        it as q's / k's amax instead of a pass over them (``fp4_kv_attention(q_amax=...)``)."""
        w = self.weight.detach()
        return (torch.linalg.vector_norm(w.float(), float("inf")) * (1.01 * math.sqrt(w.numel()))).reshape(1)


def _takes_fp8(*linears: nn.Module) -> bool:
    """Whether h may reach these linears as row-wise FP8 ``(codes, row_scale)`` (inference, every
    one an FP8-mode ``NVFP4Linear``): its producer then quantizes it in its own pass, once for all."""
    return not torch.is_grad_enabled() and all(getattr(m, "takes_fp8_input", False) for m in linears)


def _linear(mod: nn.Module, h, **kw) -> torch.Tensor:
    """``mod(h)`` for a bf16 h or an FP8 ``(codes, scale)`` pair (row-wise or one per-tensor scale)."""
    return mod(h[0], x_scale=h[1], **kw) if isinstance(h, tuple) else mod(h, **kw)


class _AttentionProjections(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else None
        self.norm_k = RMSNorm(dim, eps) if qk_norm else None


class SelfAttention(_AttentionProjections):
    """q/k/v/o projections, fused qk-RMSNorm + 3D RoPE, attention through a backend. A backend with
    ``fp8_output`` (FP8 attention) hands an FP8 ``o`` projection its E4M3 output and one scale."""

    def forward(self, x: torch.Tensor, *, attn, layer: int, layout: TokenLayout, theta: float,
                ops: str, backend: str) -> torch.Tensor:
        b, n, _ = (x[0] if isinstance(x, tuple) else x).shape
        shape = (b, n, self.num_heads, self.head_dim)
        q = _linear(self.q, x).view(shape)
        k = _linear(self.k, x).view(shape)
        v = _linear(self.v, x).view(shape)
        kw, q_fp8 = {}, None
        if getattr(attn, "fp8_output", False):  # FP8 attention: q's and k's scales from the norms' bounds
            if self.norm_q is not None:
                kw = {"q_amax": self.norm_q.amax_bound(), "k_amax": self.norm_k.amax_bound()}
                q_fp8 = self._fp8_q(attn, shape, kw, layout)
            if _takes_fp8(self.o):
                kw["out_fp8"] = True  # E4M3 codes + scale straight into the FP8 GEMM
        q, k = rope_qk(
            q, k, layout=layout, theta=theta,
            norm_weight_q=self.norm_q.weight if self.norm_q is not None else None,
            norm_weight_k=self.norm_k.weight if self.norm_k is not None else None,
            eps=self.norm_q.eps if self.norm_q is not None else 1e-6, ops=ops, backend=backend, q_fp8=q_fp8,
        )
        o = attn(q, k, v, layer=layer, **kw)
        if isinstance(o, tuple):
            codes, scale = o
            return self.o(codes.reshape(b, n, -1), x_scale=scale.reshape(()).expand(b, n))
        return self.o(o.reshape(b, n, -1))

    @staticmethod
    def _fp8_q(attn, shape, kw: dict, layout: TokenLayout):
        """(scale, codes buffer) when the attention backend reads q as FP8 codes (``fp8_q_buffer``);
        moves q's bound in ``kw`` to the scale bound/448, which the bound keeps from saturating."""
        buf_fn = getattr(attn, "fp8_q_buffer", None)
        if buf_fn is None or layout.copies != 1 or torch.is_grad_enabled():
            return None
        bound = kw["q_amax"]
        buf = buf_fn(shape, bound.device)
        if buf is None:
            return None
        scale = bound / torch.full_like(bound, 448.0)  # E4M3's largest finite value; a true division
        del kw["q_amax"]
        kw["q_scale"] = scale
        return scale, buf


class CrossAttention(_AttentionProjections):
    """Video queries attend the projected text (no RoPE, no mask: all text positions, Wan quirk).

    ``context`` is [B, S, Lt, C]: the token sequence is split into S equal segments and segment s
    attends only prompt s (multi-shot prompts, one per chunk)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = (x[0] if isinstance(x, tuple) else x).shape
        s, lt = context.shape[1], context.shape[2]
        if n % s:
            raise ValueError(f"cross-attention: {n} tokens cannot be split into {s} prompt segments")
        q = _linear(self.q, x)
        k = self.k(context)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        v = self.v(context)
        h, d = self.num_heads, self.head_dim
        q = q.view(b * s, n // s, h, d).transpose(1, 2)
        k = k.view(b * s, lt, h, d).transpose(1, 2)
        v = v.view(b * s, lt, h, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, n, c))


class DiTBlock(nn.Module):
    """One Wan attention block with 6-vector per-frame adaLN modulation."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, *, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True) if cross_attn_norm else None
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))
        self.ops = "kernels"
        self.kernel_backend = "auto"

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, *, attn, layer: int,
                layout: TokenLayout, theta: float, fp8_scales: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, C]; e0 [B, frames, 6, C] fp32; context [B, S, Lt, C] (projected text).
        ``fp8_scales`` [3] fp32: per-tensor E4M3 scales of the adaLN, LN3 and LN2 outputs for FP8
        linears (``CausalDiT._norm_fp8_scales``); None: row-wise scales from each norm's pass."""
        ops, be, fl, eps = self.ops, self.kernel_backend, layout.frame_len, self.eps
        e = (self.modulation.float().unsqueeze(0) + e0.float()).unbind(2)  # 6 x [B, frames, C]
        sa, ca = self.self_attn, self.cross_attn
        fs = (None, None, None) if fp8_scales is None else fp8_scales.unbind(0)
        # with FP8 linears each norm hands its consumers E4M3 codes (one quantization, in its pass)
        h = adaln(x, e[0], e[1], frame_len=fl, eps=eps, ops=ops, backend=be, out_fp8=_takes_fp8(sa.q, sa.k, sa.v),
                  fp8_scale=fs[0])
        y = sa(h, attn=attn, layer=layer, layout=layout, theta=theta, ops=ops, backend=be)
        x, h = residual_layernorm(x, y, e[2], self.norm3, frame_len=fl, eps=eps, ops=ops, backend=be,
                                  out_fp8=_takes_fp8(ca.q), fp8_scale=fs[1])
        y = ca(h, context)
        x, h = residual_adaln(x, y, e[3], e[4], frame_len=fl, eps=eps, ops=ops, backend=be,
                              out_fp8=_takes_fp8(self.ffn[0]), fp8_scale=fs[2])
        return gated_residual(x, self._ffn(h), e[5], frame_len=fl, ops=ops, backend=be)

    def _ffn(self, h) -> torch.Tensor:
        """``ffn.2(gelu_tanh(ffn.0(h)))``; a second linear that takes the GELU as its input activation
        (``NVFP4Linear``: fused into its FP8 quantization) gets it, so the GELU is no pass of its own.
        h: bf16, or row-wise FP8 ``(codes, row_scale)`` for an FP8 ``ffn.0``."""
        up, act, down = self.ffn
        if "gelu_tanh" in getattr(down, "INPUT_ACTIVATIONS", ()) and isinstance(act, nn.GELU) \
                and act.approximate == "tanh":
            return down(_linear(up, h), input_activation="gelu_tanh")
        return down(act(_linear(up, h)))


class Head(nn.Module):
    """Output head: ``Linear(LN(x)·(1 + scale) + shift)`` with ``[shift, scale] = modulation + e``,
    e the (pre-projection) time embedding per frame."""

    def __init__(self, dim: int, out_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))
        self.ops = "kernels"
        self.kernel_backend = "auto"

    def forward(self, x: torch.Tensor, e: torch.Tensor, *, frame_len: int) -> torch.Tensor:
        """x [B, L, C]; e [B, frames, C] fp32 → [B, L, out_features]."""
        mod = self.modulation.float().unsqueeze(0) + e.float()[:, :, None]  # [B, F, 2, C]
        h = adaln(x, mod[:, :, 0], mod[:, :, 1], frame_len=frame_len, eps=self.eps, ops=self.ops,
                  backend=self.kernel_backend)
        return self.head(h)
