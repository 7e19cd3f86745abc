"""The generation state of one video (:class:`StreamSession`): KV cache, shot, RNG, and the
per-chunk loop of spec §2.8 — re-cache the window on a prompt switch, denoise with UniPC (every
forward writes the chunk's K/V into its slot), re-run at t = 0 so the slot holds clean K/V."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from longlive.data.prompts import ChunkPrompt, chunk_frame_counts

from .cache_policy import CacheAttention, CacheManager, CachePolicy, ChunkPlan, ForwardHandle
from .graphs import ChunkGraphs
from .prompt_schedule import resolve_chunk_prompt
from .results import ChunkOutput
from .scheduler import FlowUniPCScheduler, _check_steps
from .sp import SPCacheAttention

if TYPE_CHECKING:  # pipeline.py imports this module
    from .pipeline import Pipeline

__all__ = ["StreamSession"]


class StreamSession:
    """Generation state of one video: KV cache, shot, RNG. Make with :meth:`Pipeline.session`.

    Call :meth:`next_chunk` with each chunk's prompt; it returns the chunk's clean latents.
    """

    def __init__(
        self,
        pipe: Pipeline,
        *,
        steps: int = 4,
        seed: int = 0,
        guidance_scale: float = 1.0,
        negative_prompt: str | None = None,
        policy: CachePolicy | None = None,
        shift: float = 5.0,
    ):
        if not (
            isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0
        ):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        self.pipe = pipe
        self.model = pipe.model
        self.scheduler = FlowUniPCScheduler(_check_steps(steps), shift=shift)
        self.guidance_scale = float(guidance_scale)
        self.cfg = self.guidance_scale != 1.0
        self.policy = policy or pipe.policy
        self.sp = pipe.sp
        p = self.sp.world_size if self.sp is not None else 1
        cfg = self.model.config
        self.device = self.model.device
        self.num_heads = cfg.num_heads // p
        self.cache = CacheManager(
            self.model, self.policy, batch_size=2 if self.cfg else 1, num_heads=self.num_heads
        )
        self._attn = CacheAttention(self.cache.cache, compute=pipe.attention_compute)
        self._sp_attn = (
            None
            if self.sp is None
            else SPCacheAttention(self.sp, self.cache.cache, compute=pipe.attention_compute)
        )
        h, w = cfg.latent_size
        self.chunk_shape = (1, cfg.in_channels, cfg.ar.chunk_frames, h, w)
        self.local_tokens = self.cache.cache.chunk_tokens // p
        self.local_frames = (cfg.ar.chunk_frames // cfg.patch_size[0]) // p
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.negative = None
        if self.cfg:
            self.negative = pipe.encode_prompt(negative_prompt if negative_prompt is not None else "")
        self._prompt: tuple[str, torch.Tensor] | None = None
        self._prev_body: str | None = None
        first, later = chunk_frame_counts(cfg.ar.chunk_frames, pipe.vae.temporal_stride)
        self._frames = (first, later)
        # Graphs need the device-side slot table of FP4KVCache (both storages) and the fused ops.
        graphable = (
            getattr(pipe, "cuda_graphs", False)
            and self.device.type == "cuda"
            and self.model.ops == "kernels"
            and hasattr(self.cache.cache, "table")
        )
        self.graphs = ChunkGraphs(enabled=graphable)

    @property
    def chunk_index(self) -> int:
        """Index of the next chunk."""
        return self.cache.next_chunk

    def _context(self, text: str) -> torch.Tensor:
        if self._prompt is None or self._prompt[0] != text:
            self._prompt = (text, self.pipe.encode_prompt(text))
        ctx = self._prompt[1]
        return torch.cat([ctx, self.negative], 0) if self.cfg else ctx

    def _forward(
        self,
        x: torch.Tensor,
        t: float,
        ctx: torch.Tensor,
        plan: ChunkPlan,
        chunk: int | None = None,
        offset: int | None = None,
    ) -> torch.Tensor:
        """Flow prediction for this rank's frames ``x`` [1, C, F/P, H, W] at timestep ``t``."""
        xin = torch.cat([x, x], 0) if self.cfg else x
        tt = torch.full((xin.shape[0],), float(t), device=self.device)
        cid = plan.chunk if chunk is None else chunk
        offset = plan.frame_offset if offset is None else offset
        cache = self.cache.cache
        if self.sp is not None:
            offset += self.sp.rank * self.local_frames
            attn = (
                self._sp_attn
                if chunk is None
                else SPCacheAttention(
                    self.sp, cache, chunk=chunk, context=plan.context, compute=self.pipe.attention_compute
                )
            )
            handle = ForwardHandle(self.local_tokens, cid)
        elif chunk is not None:
            attn, handle = self.cache.recache_attention(chunk, plan), ForwardHandle(self.local_tokens, cid)
        else:
            attn, handle = self._attn, cache

        def forward(x_in, t_in, ctx_in, frame_offset):
            return self.model.forward_chunk(
                x_in, t_in, ctx_in, cache=handle, chunk_id=cid, frame_offset=frame_offset, attention=attn
            )

        if chunk is None:  # the current chunk's forwards: one graph per context length
            v = self.graphs(forward, (len(plan.context),), offset, xin, tt, ctx)
        else:  # re-cache forwards are rare (prompt switches): eager
            v = forward(xin, tt, ctx, offset)
        if self.cfg:
            v_c, v_u = v.float().chunk(2)
            return v_u + self.guidance_scale * (v_c - v_u)
        return v

    @torch.no_grad()
    def next_chunk(self, prompt: str | ChunkPrompt, *, scene_cut: bool | None = None) -> ChunkOutput:
        """Generate the next chunk.

        Parameters
        ----------
        prompt : str or ChunkPrompt
            The chunk's prompt. A prompt starting with ``"The scene transitions. "`` is a scene
            cut; a prompt whose text differs from the previous chunk's is a switch (re-cache).
        scene_cut : bool, optional
            Force (True) or forbid (False) a scene cut; the prefix is added/removed accordingly.

        Returns
        -------
        ChunkOutput
        """
        n = self.chunk_index
        text, body, cut, switch = resolve_chunk_prompt(prompt, n, self._prev_body, scene_cut=scene_cut)
        self._prev_body = body
        # stream-level syncs: a device-wide sync would also wait for the decoder's stream and serialise
        # decoding with denoising
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if stream is not None:
            stream.synchronize()
        t0 = time.perf_counter()
        ctx = self._context(text)
        plan = self.cache.begin_chunk(scene_cut=cut, switch=switch)
        for c in plan.recache:  # v1 KV re-cache: refresh the window's K/V with the new prompt
            self._forward(self.cache.clean[c], 0.0, ctx, plan, chunk=c, offset=self.cache.offsets[c])
        noise = torch.randn(
            self.chunk_shape, generator=self.generator, device=self.device, dtype=torch.float32
        )
        x = self.sp.local(noise) if self.sp is not None else noise
        sched = self.scheduler
        sched.reset()
        for t in sched.timesteps:
            x = sched.step(self._forward(x, t, ctx, plan), x)
        self._forward(x, 0.0, ctx, plan)  # t = 0 re-run: the slot now holds the clean K/V
        self.cache.end_chunk(plan, x)
        full = self.sp.gather(x) if self.sp is not None else x
        if stream is not None:
            stream.synchronize()
        frames = self._frames[0] if n == 0 else self._frames[1]
        return ChunkOutput(n, full, frames, text, plan, time.perf_counter() - t0)
