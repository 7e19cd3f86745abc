"""``CausalDiT``: the Wan2.2-TI2V DiT made chunk-wise autoregressive (LongLive-2.0).

One definition serves the 5B model (official weights load by name, spec §1.1) and the small
presets. Forward modes:

- :meth:`CausalDiT.forward_chunk` — one denoising call for one chunk with a KV cache (spec §2):
  the chunk's K/V are written into the cache slot of ``chunk_id`` in every layer; queries attend
  [sink | shot sink | window | current chunk]. Re-calls for the same chunk (later steps, the t=0
  re-run that stores clean K/V) overwrite the slot.
- :meth:`CausalDiT.forward_teacher_forcing` — training over [clean ; noisy] tokens with the §5.2
  block mask; only the noisy half reaches the head (spec §6.1).
- :meth:`CausalDiT.forward` — plain bidirectional forward over a whole clip (base-model behaviour).

All return the flow (velocity) prediction v ≈ ε − x0 shaped like the input latents [B, C, F, H, W].
Linears are ``nn.Linear``; :meth:`CausalDiT.quantize_` swaps the 300 block linears to
NVFP4/W4A16/FP8 through ``longlive_kernels.fp4.quantize_model`` keeping the spec §3.2 skip list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import QUANT_SKIP_MODULES, ModelConfig
from .attention import AttentionBackend, DenseAttention, KVCacheAttention, MaskedAttention, make_kv_cache
from .blocks import OPS, DiTBlock, Head, TokenLayout
from .masks import TeacherForcingLayout

__all__ = ["LINEAR_MODES", "CausalDiT", "sinusoidal_embedding"]

LINEAR_MODES = ("bf16", "nvfp4", "w4a16", "fp8", "fp8_tensor")

# The linears fed by a LayerNorm (adaLN, LN3, LN2): in "fp8_tensor" mode their weights and inputs
# take one E4M3 scale per tensor; their inputs' scales bound the norms' outputs from the modulation
# vectors alone (``layernorm_fp8_scale``), so the norm's pass skips its row amax and cuBLAS runs
# its per-tensor FP8 kernel where that is faster (M ≤ 2048 at N = 3072: bench/RESULTS.md,
# twenty-sixth session). Opt-in: at 7040 tokens per GPU it ran 1-4 % slower end to end than "fp8"
# (twenty-seventh session); it is meant for sequence-parallel ranks of ≤ 2048 tokens.
FP8_TENSOR_LINEARS = ("blocks.*.self_attn.q", "blocks.*.self_attn.k", "blocks.*.self_attn.v",
                      "blocks.*.cross_attn.q", "blocks.*.ffn.0")


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding ``[cos(t·ω), sin(t·ω)]``, ω_i = 10000^(−i/(dim/2)); fp64 math, fp32 out.

    t: any shape → [*t.shape, dim]."""
    half = dim // 2
    pos = t.to(torch.float64).reshape(-1)
    omega = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = torch.outer(pos, omega)
    return torch.cat([ang.cos(), ang.sin()], dim=1).float().reshape(*t.shape, dim)


class CausalDiT(nn.Module):
    """Causal Wan2.2-TI2V DiT.

    Parameters
    ----------
    config : ModelConfig
        Architecture (``ModelConfig.from_name("wan2.2-ti2v-5b" | "small-1.3b" | "tiny")``).
    ops : {"kernels", "torch"}
        ``"kernels"``: fused ``longlive_kernels`` ops where they exist (adaLN, qk-norm+RoPE, FP4 KV
        attention); ``"torch"``: plain eager PyTorch everywhere (baseline). Change with :meth:`set_ops`.
    zero_init_head : bool
        Zero the head weight (Wan's init, for training from scratch). Irrelevant when loading weights.

    Notes
    -----
    Build on the meta device for free (``with torch.device("meta"): CausalDiT(cfg)``) and load
    weights with ``load_state_dict(..., assign=True)`` (see :mod:`longlive.model.checkpoint`).
    """

    def __init__(self, config: ModelConfig, *, ops: str = "kernels", zero_init_head: bool = True):
        super().__init__()
        self.config = config
        c = config
        d = c.dim
        self.patch_embedding = nn.Conv3d(c.in_channels, d, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(
            DiTBlock(d, c.ffn_dim, c.num_heads, qk_norm=c.qk_norm, cross_attn_norm=c.cross_attn_norm, eps=c.eps)
            for _ in range(c.num_layers)
        )
        pt, ph, pw = c.patch_size
        self.head = Head(d, pt * ph * pw * c.out_channels, eps=c.eps)
        self.gradient_checkpointing = False
        self.linear_mode = "bf16"
        self.init_weights(zero_head=zero_init_head)
        self.set_ops(ops)

    # ---- setup ----------------------------------------------------------------------------------
    def init_weights(self, *, zero_head: bool = True) -> None:
        """Wan-style init: xavier-uniform linears and patch embedding, N(0, 0.02) text/time
        embeddings, zero biases, modulation ~ N(0, 1/dim), head zero (or xavier if ``zero_head=False``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.patch_embedding.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        if zero_head:
            nn.init.zeros_(self.head.head.weight)

    def set_ops(self, ops: str, *, kernel_backend: str = "auto") -> CausalDiT:
        """Switch between fused kernels (``"kernels"``) and plain torch (``"torch"``) in place."""
        if ops not in OPS:
            raise ValueError(f"CausalDiT.set_ops: ops must be one of {OPS}, got {ops!r}")
        self.ops = ops
        for m in list(self.blocks) + [self.head]:
            m.ops, m.kernel_backend = ops, kernel_backend
        return self

    def quantize_(self, mode: str, **kwargs) -> CausalDiT:
        """Swap the block linears to ``mode`` in place via ``longlive_kernels.fp4.quantize_model``
        (``"nvfp4"`` W4A4, ``"w4a16"``, ``"fp8"`` W8A8 with row-wise scales; ``"fp8_tensor"``: the
        same with per-tensor scales for the linears behind a LayerNorm, :data:`FP8_TENSOR_LINEARS`;
        ``"bf16"`` = no-op), keeping ``text_embedding``, ``patch_embedding``, ``time_embedding``,
        ``time_projection``, ``head`` in high precision (spec §3.2). Extra kwargs go to
        ``quantize_model``."""
        if mode not in LINEAR_MODES:
            raise ValueError(f"CausalDiT.quantize_: mode must be one of {LINEAR_MODES}, got {mode!r}")
        if mode == "bf16":
            return self
        if self.linear_mode != "bf16":
            raise ValueError(f"CausalDiT.quantize_: model is already in mode {self.linear_mode!r}")
        try:
            from longlive_kernels.fp4 import quantize_model
        except ImportError as exc:
            raise NotImplementedError(
                f"CausalDiT.quantize_({mode!r}) needs longlive_kernels.fp4.quantize_model, which is not available"
            ) from exc
        skip = [pat for name in QUANT_SKIP_MODULES for pat in (name, f"{name}.*")]  # fnmatch patterns
        if mode == "fp8_tensor":
            kwargs["fp8_tensor"] = FP8_TENSOR_LINEARS
        quantize_model(self, "fp8" if mode == "fp8_tensor" else mode, skip=skip, **kwargs)
        self.linear_mode = mode
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # ---- embeddings -----------------------------------------------------------------------------
    def _check_latents(self, name: str, x: torch.Tensor) -> tuple[int, int, int]:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"{name} must be a 5-D latent tensor [B, C, F, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        _b, ch, f, h, w = x.shape
        pt, ph, pw = c.patch_size
        if ch != c.in_channels:
            raise ValueError(f"{name} has {ch} channels; config {c.name!r} expects in_channels={c.in_channels} "
                             f"(latents [B, {c.in_channels}, F, H, W])")
        if f % pt or h % ph or w % pw or f == 0 or h == 0 or w == 0:
            raise ValueError(f"{name} latent size (F, H, W)=({f}, {h}, {w}) must be non-empty multiples of the "
                             f"patch {c.patch_size} of config {c.name!r} (e.g. {c.latent_size} at "
                             f"{c.resolution[0]}x{c.resolution[1]})")
        return f // pt, h // ph, w // pw

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Latents [B, C, F, H, W] → tokens [B, F'·H'·W', dim] and the token grid (F', H', W')."""
        grid = self._check_latents("latents", x)
        b, ch = x.shape[:2]
        pt, ph, pw = self.config.patch_size
        fg, hg, wg = grid
        patches = x.reshape(b, ch, fg, pt, hg, ph, wg, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, fg * hg * wg, ch * pt * ph * pw).to(self.dtype)
        wgt = self.patch_embedding.weight
        return F.linear(patches, wgt.reshape(wgt.shape[0], -1), self.patch_embedding.bias), grid

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, L, pt·ph·pw·C] → latents [B, C, F, H, W] (Wan's (p, q, r, c) order)."""
        b = tokens.shape[0]
        pt, ph, pw = self.config.patch_size
        fg, hg, wg = grid
        co = self.config.out_channels
        x = tokens.reshape(b, fg, hg, wg, pt, ph, pw, co).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, co, fg * pt, hg * ph, wg * pw)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text features [B, Lt, text_dim] or per-segment [B, S, Lt, text_dim] → [B, S, Lt, dim]."""
        c = self.config
        if context.dim() == 3:
            context = context.unsqueeze(1)
        if context.dim() != 4 or context.shape[-1] != c.text_dim:
            raise ValueError(f"context must be [B, Lt, {c.text_dim}] or [B, S, Lt, {c.text_dim}] (config "
                             f"{c.name!r}, text_dim {c.text_dim}), got {tuple(context.shape)}")
        return self.text_embedding(context.to(self.dtype))

    def embed_time(self, t: torch.Tensor, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps → (e [B, F, dim], e0 [B, F, 6, dim]), both fp32.

        t: scalar, [B] (shared by all frames) or [B, F] (per latent frame; ``F`` = token frames)."""
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            if t.shape[0] != batch:
                raise ValueError(f"t has shape {tuple(t.shape)}; expected [B={batch}] or [B, F={frames}]")
            t = t[:, None].expand(batch, frames)
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected [B={batch}, F={frames}] (one timestep per "
                             "latent frame), [B] or a scalar")
        sin = sinusoidal_embedding(t, self.config.freq_dim).to(self.dtype)
        e = self.time_embedding(sin)
        e0 = self.time_projection(e).unflatten(-1, (6, self.config.dim))
        return e.float(), e0.float()

    # ---- core -----------------------------------------------------------------------------------
    def _norm_fp8_scales(self, e0: torch.Tensor) -> torch.Tensor | None:
        """[num_layers, 3] fp32: every block's per-tensor E4M3 scale of its adaLN, LN3 and LN2 outputs
        for this forward's time embedding e0 [B, F, 6, C], in one launch per norm (``fp8_tensor``
        mode, inference, fused kernels); None otherwise. The modulation is summed as each block sums
        it, and :func:`layernorm_fp8_scale` bounds any LayerNorm row, so no h can saturate."""
        if self.linear_mode != "fp8_tensor" or torch.is_grad_enabled() or self.ops != "kernels":
            return None
        try:
            from longlive_kernels.attention import layernorm_fp8_scale
        except ImportError:
            return None
        n, be = len(self.blocks), self.blocks[0].kernel_backend
        mod = torch.stack([b.modulation for b in self.blocks]).float()  # [N, 1, 6, C]
        e = mod.unsqueeze(1) + e0.float().unsqueeze(0)  # [N, B, F, 6, C]
        norms = [b.norm3 for b in self.blocks]
        if all(nm is not None for nm in norms):
            ln3 = layernorm_fp8_scale(torch.stack([nm.weight for nm in norms]), torch.stack([nm.bias for nm in norms]),
                                      plus_one=False, groups=n, backend=be)
        else:  # no LN3 (cross_attn_norm=False): its h is not quantized, the entry is unused
            ln3 = torch.ones(n, device=e0.device)
        return torch.stack([layernorm_fp8_scale(e[..., 1, :], e[..., 0, :], groups=n, backend=be), ln3,
                            layernorm_fp8_scale(e[..., 4, :], e[..., 3, :], groups=n, backend=be)], 1)

    def _run_blocks(self, x, e0, context, *, attn: AttentionBackend, layout: TokenLayout) -> torch.Tensor:
        theta = self.config.rope_theta
        fp8_scales = self._norm_fp8_scales(e0)
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, e0, context, attn=attn, layer=i, layout=layout, theta=theta,
                               use_reentrant=False)
            else:
                x = block(x, e0, context, attn=attn, layer=i, layout=layout, theta=theta,
                          fp8_scales=None if fp8_scales is None else fp8_scales[i])
        return x

    def _head(self, x: torch.Tensor, e: torch.Tensor, grid) -> torch.Tensor:
        out = self.head(x, e, frame_len=grid[1] * grid[2])
        return self.unpatchify(out, grid)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, frame_offset: int = 0,
                attention: AttentionBackend | None = None) -> torch.Tensor:
        """Bidirectional forward over a whole clip (no cache, no mask): the base Wan model.

        x [B, C, F, H, W]; t scalar/[B]/[B, F]; context [B, Lt, text_dim] (or [B, S, Lt, text_dim]
        multi-shot, S dividing F) → flow prediction [B, C_out, F, H, W]."""
        tokens, grid = self.patchify(x)
        e, e0 = self.embed_time(t, x.shape[0], grid[0])
        ctx = self.embed_text(context)
        layout = TokenLayout(grid, 1, frame_offset)
        h = self._run_blocks(tokens, e0, ctx, attn=attention or DenseAttention(), layout=layout)
        return self._head(h, e, grid)

    def make_kv_cache(self, batch_size: int = 1, *, storage: str | None = None, chunk_frames: int | None = None,
                      grid_hw: tuple[int, int] | None = None, max_chunks: int | None = None,
                      sink_chunks: int | None = None, num_heads: int | None = None, device=None):
        """A KV cache for :meth:`forward_chunk` sized from the config (overridable).

        Parameters
        ----------
        storage : {"fp4", "bf16"}, optional
            Default ``config.ar.kv_storage``. With ``ops="torch"`` only ``"bf16"`` (plain-torch cache).
        chunk_frames, grid_hw : optional
            Latent frames per chunk and token grid (H', W'); default the config's geometry.
        max_chunks, sink_chunks : optional
            Cache policy; default ``config.ar`` (use ``max_chunks >= chunks`` for full history).
        num_heads : optional
            Heads stored (local heads under Ulysses SP); default all.
        """
        c = self.config
        cf = chunk_frames or c.ar.chunk_frames
        hg, wg = grid_hw or c.grid_size
        return make_kv_cache(
            num_layers=c.num_layers, num_heads=num_heads or c.num_heads, head_dim=c.head_dim,
            chunk_tokens=(cf // c.patch_size[0]) * hg * wg,
            max_chunks=max_chunks or c.ar.max_chunks,
            sink_chunks=c.ar.sink_chunks if sink_chunks is None else sink_chunks,
            batch_size=batch_size, storage=storage or c.ar.kv_storage, scale_rule=c.ar.kv_scale_rule,
            dtype=self.dtype, device=device or self.device, impl=self.ops,
        )

    def forward_chunk(self, x_chunk: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, cache,
                      chunk_id: int, frame_offset: int | None = None, attention_compute: str = "bf16",
                      attention: AttentionBackend | None = None) -> torch.Tensor:
        """One denoising call for one chunk with a KV cache.

        Parameters
        ----------
        x_chunk : Tensor [B, C, Fc, H, W]
            Noisy latents of the chunk (clean latents with t = 0 for the re-run that stores clean K/V).
        t : Tensor
            Timesteps: scalar, [B] or per frame [B, Fc].
        context : Tensor [B, Lt, text_dim]
            This chunk's prompt features.
        cache : FP4KVCache or BF16KVCache
            From :meth:`make_kv_cache`; its ``chunk_tokens`` must equal Fc·H'·W'.
        chunk_id : int
            Index of the chunk in the video; a repeated id overwrites that chunk's slot.
        frame_offset : int, optional
            Temporal RoPE position of the chunk's first latent frame; default ``chunk_id · Fc``.
            Multi-shot inference adds ``shot_index · config.ar.multi_shot_rope_offset``.
        attention_compute : {"bf16", "fp8"}
            Math of the FP4-KV attention kernel.
        attention : AttentionBackend, optional
            Override, e.g. Ulysses SP: ``SequenceParallelAttention(KVCacheAttention(cache), group)``
            with this rank's frames of the chunk in ``x_chunk``, ``frame_offset`` = the chunk's
            first frame + rank · Fc/P, and a cache of H/P heads and the full chunk's tokens.

        Returns
        -------
        Tensor [B, C_out, Fc, H, W] flow prediction.
        """
        tokens, grid = self.patchify(x_chunk)
        if attention is None and tokens.shape[1] != cache.chunk_tokens:
            raise ValueError(f"x_chunk has {tokens.shape[1]} tokens (grid {grid}); the cache was built for "
                             f"chunk_tokens={cache.chunk_tokens}")
        if frame_offset is None:
            frame_offset = chunk_id * grid[0]
        e, e0 = self.embed_time(t, x_chunk.shape[0], grid[0])
        ctx = self.embed_text(context)
        if getattr(cache, "current_chunk", None) != chunk_id:
            cache.start_chunk(chunk_id)
        attn = attention or KVCacheAttention(cache, compute=attention_compute)
        h = self._run_blocks(tokens, e0, ctx, attn=attn, layout=TokenLayout(grid, 1, frame_offset))
        return self._head(h, e, grid)

    def forward_teacher_forcing(self, clean: torch.Tensor, noisy: torch.Tensor, t_noisy: torch.Tensor,
                                context: torch.Tensor, *, t_clean: torch.Tensor | None = None,
                                chunk_frames: int | None = None, frame_offset: int = 0,
                                attention: AttentionBackend | None = None, attention_impl: str = "auto") -> torch.Tensor:
        """Teacher-forcing forward over [clean ; noisy] tokens (spec §5.2, §6.1).

        Parameters
        ----------
        clean, noisy : Tensor [B, C, F, H, W]
            Clean context latents and their noised copy (same shape).
        t_noisy : Tensor
            Timesteps of the noisy copy: [B, F] (one per latent frame, shared within a block), [B] or scalar.
        context : Tensor [B, Lt, text_dim] or [B, S, Lt, text_dim]
            One prompt, or one prompt per chunk (S = F / chunk_frames, multi-shot): each chunk's
            tokens (clean and noisy copies) attend only their chunk's prompt.
        t_clean : Tensor, optional
            Timesteps of the clean copy (default 0; > 0 for noise augmentation).
        chunk_frames : int, optional
            Latent frames per block (default ``config.ar.chunk_frames``).
        frame_offset : int
            Temporal RoPE position of frame 0 (Balanced SP: rank · F/P for the local slice).
        attention : AttentionBackend, optional
            Default :class:`MaskedAttention` over the plain [clean ; noisy] layout; under Balanced SP
            pass ``SequenceParallelAttention(MaskedAttention(layout with sp_size=P))`` and the
            rank's local slices.
        attention_impl : {"auto", "flex", "sdpa"}
            Implementation of the default masked attention.

        Returns
        -------
        Tensor [B, C_out, F, H, W]: flow prediction for the noisy latents (the clean half is not
        sent through the head).
        """
        if clean.shape != noisy.shape:
            raise ValueError(f"clean {tuple(clean.shape)} and noisy {tuple(noisy.shape)} latents must have one shape")
        b = clean.shape[0]
        tok_c, grid = self.patchify(clean)
        tok_n, _ = self.patchify(noisy)
        cf = (chunk_frames or self.config.ar.chunk_frames) // self.config.patch_size[0]
        frames = grid[0]
        if frames % cf:
            raise ValueError(f"teacher forcing: {frames} latent frames must be a multiple of chunk_frames={cf}")
        if t_clean is None:
            t_clean = torch.zeros(b, frames, device=self.device)
        e_n, e0_n = self.embed_time(t_noisy, b, frames)
        _, e0_c = self.embed_time(t_clean, b, frames)
        ctx = self.embed_text(context)
        s = ctx.shape[1]
        if s > 1 and frames % s:
            raise ValueError(f"teacher forcing: {s} prompts cannot split {frames} latent frames evenly "
                             f"(expected one prompt or F / chunk_frames = {frames // cf})")
        ctx = torch.cat([ctx, ctx], dim=1)  # segment order = [clean pieces ; noisy pieces]
        x = torch.cat([tok_c, tok_n], dim=1)
        e0 = torch.cat([e0_c, e0_n], dim=1)
        layout = TokenLayout(grid, 2, frame_offset)
        if attention is None:
            attention = MaskedAttention(TeacherForcingLayout(frames, grid[1] * grid[2], cf), impl=attention_impl)
        h = self._run_blocks(x, e0, ctx, attn=attention, layout=layout)
        return self._head(h[:, tok_c.shape[1]:], e_n, grid)

    def num_parameters(self) -> int:
        """Number of parameters (exact; 4,999,787,712 for wan2.2-ti2v-5b)."""
        return sum(p.numel() for p in self.parameters())

    # ---- FLOPs ----------------------------------------------------------------------------------
    def chunk_flops(self, q_tokens: int, kv_tokens: int, *, text_tokens: int | None = None) -> dict[str, float]:
        """FLOPs of one cached forward as counted in spec §2.9 (multiply-add = 2 FLOPs).

        Returns a dict with ``linear`` (self q/k/v/o, cross q/o, FFN per video token),
        ``self_attention`` (QKᵀ + PV over ``kv_tokens`` keys), ``cross`` (cross-attention K/V
        projections of the text and QKᵀ + PV over it) and ``total``."""
        c = self.config
        d, f, L = c.dim, c.ffn_dim, c.num_layers
        lt = c.text_len if text_tokens is None else text_tokens
        per_tok = L * (6 * d * d + 2 * d * f)
        linear = 2.0 * per_tok * q_tokens
        attn = 4.0 * q_tokens * kv_tokens * d * L
        cross = L * (2.0 * 2 * d * d * lt + 4.0 * q_tokens * lt * d)
        return {"linear": linear, "self_attention": attn, "cross": cross, "total": linear + attn + cross}

