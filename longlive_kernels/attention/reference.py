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
#
# Cache policy (``longlive-spec.md`` §2.3–2.4 as a set of chunks instead of a rolled buffer):
# capacity ``max_chunks`` chunk slots including the current chunk. When chunk ``n`` starts, the
# cache keeps the global sink chunks (ids < ``sink_chunks``), the pinned shot sink (if any) and the
# most recent other resident chunks that still fit, evicts the rest, and gives ``n`` the lowest free
# physical slot (in steady state: the slot of the one chunk that left). Steady state without a shot
# sink: [0 | n−2 | n−1 | n]; with a shot sink s: [0 | s | n−1 | n] (LongLive's floating pin drifts
# to slot 1 first, but attends to the same SET of chunks on every chunk; nothing is copied here).
# Pinning never evicts by itself; a re-pin makes the previous shot sink an ordinary (evictable)
# chunk. Attention order = ascending chunk id (sinks, shot sink, window, current).
#
# Storage (per layer, K and V): packed E2M1 [slots, B, H, T, D/2], E4M3 block scales
# [slots, B, H, T, D/16] and one FP32 decode scale per (slot, B, H, 128-token tile): a 128×D tile
# of one head is exactly ``quantize_nvfp4`` of that tile (its own amax). Tile granularity makes the
# in-place update a single pass over the chunk (each program owns a tile, amax included) and costs
# 4 bytes per 128×D values (0.04%); its round-trip error is no worse than a per-slot scale
# (measured in ``kv_cache.py``'s module docstring).

from ..fp4 import reference as _fp4_ref  # noqa: E402

KV_SCALE_TILE = 128  # tokens per FP32 decode scale (per slot, batch, head)


class KVCachePolicy:
    """Plain-Python model of the FP4 KV cache bookkeeping (the spec that ``FP4KVCache``'s device
    index table is tested against).

    Parameters
    ----------
    max_chunks : int
        Capacity in chunks, including the current chunk (LongLive: 32 frames / 8 = 4).
    sink_chunks : int
        Global attention sink: chunks with id < ``sink_chunks`` are never evicted.
    """

    def __init__(self, max_chunks: int, sink_chunks: int):
        if not 0 <= sink_chunks < max_chunks:
            raise ValueError(f"need 0 <= sink_chunks < max_chunks, got {sink_chunks}, {max_chunks}")
        self.max_chunks = max_chunks
        self.sink_chunks = sink_chunks
        self.reset()

    def reset(self) -> None:
        self.current: int | None = None
        self.shot_sink: int | None = None
        self.slot: dict[int, int] = {}  # resident chunk id -> physical slot

    def start_chunk(self, n: int) -> None:
        """Chunk ``n`` (> every chunk started before) becomes current: evict, then assign a slot."""
        if n < 0 or (self.current is not None and n <= self.current):
            raise ValueError(f"chunk ids must increase: got {n} after {self.current}")
        keep = {c for c in self.slot if c < self.sink_chunks}
        if self.shot_sink is not None:
            keep.add(self.shot_sink)
        room = self.max_chunks - 1 - len(keep)
        recent = sorted((c for c in self.slot if c not in keep), reverse=True)[:room]
        keep.update(recent)
        self.slot = {c: s for c, s in self.slot.items() if c in keep}
        self.slot[n] = min(set(range(self.max_chunks)) - set(self.slot.values()))
        self.current = n

    def pin_shot_sink(self, c: int) -> None:
        """Chunk ``c`` (resident) becomes the shot sink, replacing the previous one."""
        if c not in self.slot:
            raise ValueError(f"chunk {c} is not resident")
        if c >= self.sink_chunks and self.sink_chunks + 2 > self.max_chunks:
            raise ValueError("no room for a shot sink: needs sink_chunks + 2 <= max_chunks")
        self.shot_sink = c

    def context_chunks(self) -> list[int]:
        """Resident chunks other than the current one, in attention order (ascending id)."""
        return sorted(c for c in self.slot if c != self.current)

    def table(self) -> list[int]:
        """The device index table: ``[n_ctx, slot(current) or -1, slot(ctx_0), ..., -1 padding]``
        (length ``2 + max_chunks``)."""
        ctx = self.context_chunks()
        cur = -1 if self.current is None else self.slot[self.current]
        return [len(ctx), cur] + [self.slot[c] for c in ctx] + [-1] * (self.max_chunks - len(ctx))


def kv_quantize(
    x: torch.Tensor, *, scale_rule: str = "static6", tile: int = KV_SCALE_TILE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 of one chunk of K or V in the cache layout.

    ``x`` [B, T, H, D] → ``(data uint8 [B, H, T, D/2], scale uint8 (E4M3 bits) [B, H, T, D/16],
    global_scale fp32 [B, H, ceil(T/tile)])``: every [tile, D] block of one (batch, head) is
    ``fp4.reference.quantize`` of that block alone (its amax gives its FP32 decode scale).
    """
    b, t, h, d = x.shape
    xt = x.permute(0, 2, 1, 3)  # [B, H, T, D]
    nt = -(-t // tile)
    data = torch.empty((b, h, t, d // 2), dtype=torch.uint8, device=x.device)
    scale = torch.empty((b, h, t, d // 16), dtype=torch.uint8, device=x.device)
    gs = torch.empty((b, h, nt), dtype=torch.float32, device=x.device)
    for bi in range(b):
        for hi in range(h):
            for ti in range(nt):
                rows = slice(ti * tile, min(t, (ti + 1) * tile))
                dq, sq, g = _fp4_ref.quantize(xt[bi, hi, rows], scale_rule=scale_rule)
                data[bi, hi, rows] = dq
                scale[bi, hi, rows] = sq.view(torch.uint8)
                gs[bi, hi, ti] = g
    return data, scale, gs


def kv_dequantize(
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    tile: int = KV_SCALE_TILE,
) -> torch.Tensor:
    """Inverse of :func:`kv_quantize`: ``(e2m1 · s_block) · s_global`` in fp32, cast once →
    [B, T, H, D] ``dtype``."""
    b, h, t, _ = data.shape
    gs_rows = global_scale.repeat_interleave(tile, dim=-1)[..., :t, None]  # [B, H, T, 1]
    vals = _fp4_ref.dequantize(data, scale.view(torch.float8_e4m3fn), torch.ones((), device=data.device),
                               dtype=torch.float32)
    return (vals * gs_rows).to(dtype).permute(0, 2, 1, 3)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
    block_q: int = 1024,
) -> torch.Tensor:
    """Bidirectional softmax attention ``softmax(q kᵀ · scale) v`` (no mask), exact in
    ``compute_dtype``, processed in blocks of ``block_q`` queries to bound memory.

    q [B, Lq, H, D], k/v [B, Lk, H, D] → [B, Lq, H, D] in ``compute_dtype``.
    """
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    kt = k.to(compute_dtype).permute(0, 2, 3, 1)  # [B, H, D, Lk]
    vt = v.to(compute_dtype).permute(0, 2, 1, 3)  # [B, H, Lk, D]
    out = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    for s in range(0, q.shape[1], block_q):
        qb = q[:, s : s + block_q].to(compute_dtype).permute(0, 2, 1, 3)  # [B, H, bq, D]
        p = torch.softmax((qb @ kt) * scale, dim=-1)
        out[:, s : s + block_q] = (p @ vt).permute(0, 2, 1, 3)
    return out
