"""KV-cache policy of streaming inference: attention sink, rolling window, multi-shot sink with the
RoPE shot offset, and prompt-switch KV re-cache (spec §2.3–2.6).

Three pieces:

- :class:`CachePolicy` — the user-selectable knobs (frozen dataclass, checked up front).
- :func:`plan_chunks` — a plain-Python model of the bookkeeping: for a prompt schedule it says,
  per chunk, which earlier chunks are attended, the temporal RoPE offset, which chunks are
  re-cached on a prompt switch and whether the chunk becomes the shot sink. It is written
  declaratively ("the sinks, the shot sink, then the most recent chunks that fit") and is the
  oracle the runtime is tested against.
- :class:`CacheManager` — the runtime: owns the model's KV cache (``FP4KVCache`` with storage
  ``"fp4"`` or ``"bf16"``, or the plain-torch ``BF16KVCache``), starts chunks, pins shot sinks,
  keeps the clean latents of resident chunks for re-caching, and builds the attention backends
  for the re-cache forwards.

Semantics
---------
Chunk ``n`` attends ``[global sink | shot sink | most recent chunks | itself]`` with at most
``max_chunks`` chunks in total (itself included). The first ``sink_chunks`` chunks of the video
are never evicted. With ``shot_sink``, the first chunk of every shot (a scene cut) is pinned
after its t=0 re-run and kept until the next cut (spec §2.4). Every scene cut adds
``rope_shot_offset`` to the temporal RoPE positions of all later chunks: chunk ``n`` of shot
``s`` starts at position ``n·F + s·rope_shot_offset`` (F = latent frames per chunk; spec §2.5).

Prompt switch within a shot (LongLive v1 semantics, spec §2.6; v2.0 dropped it): before the
first chunk with the new prompt is denoised, every resident window chunk (oldest first; sinks
too with ``recache_sinks``) is re-run at t = 0 on its clean latents with the **new** prompt and
its own RoPE position; its K/V slot is overwritten. A re-run of chunk ``c`` attends the resident
chunks older than ``c`` (already refreshed ones included) and itself, exactly like its original
t = 0 re-run. A scene cut never re-caches (the new shot starts fresh from the sinks).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch

from longlive.model.attention import AttentionBackend, BF16KVCache, sdpa_bshd

__all__ = [
    "CacheAttention",
    "CacheManager",
    "CachePolicy",
    "ChunkPlan",
    "ForwardHandle",
    "RecacheAttention",
    "attend_with_cache",
    "cached_kv",
    "plan_chunks",
]


@dataclass(frozen=True)
class CachePolicy:
    """Which KV-cache features streaming inference uses.

    Parameters
    ----------
    max_chunks : int
        Chunks attended at most, the current one included (LongLive: 4 = 32 latent frames).
    sink_chunks : int
        Leading chunks of the video never evicted (global attention sink; 0 disables).
    shot_sink : bool
        Pin the first chunk of each shot until the next scene cut (multi-shot sink).
    rope_shot_offset : int
        Temporal RoPE positions inserted at every scene cut (0 disables; LongLive: 8).
    recache_on_switch : bool
        Refresh the window's K/V with the new prompt on a prompt switch within a shot.
    recache_sinks : bool
        Also refresh the global sink and the shot sink on a switch (default: keep them, they anchor
        the shot's appearance).
    storage : {"fp4", "bf16"}
        KV-cache storage: NVFP4 (``FP4KVCache``) or BF16.
    """

    max_chunks: int = 4
    sink_chunks: int = 1
    shot_sink: bool = True
    rope_shot_offset: int = 8
    recache_on_switch: bool = True
    recache_sinks: bool = False
    storage: str = "fp4"

    def __post_init__(self) -> None:
        for name in ("max_chunks", "sink_chunks", "rope_shot_offset"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"CachePolicy.{name} must be an int, got {v!r}")
        if self.max_chunks < 2:
            raise ValueError(
                f"CachePolicy.max_chunks must be >= 2 (one history chunk + the current), "
                f"got {self.max_chunks}"
            )
        if not 0 <= self.sink_chunks < self.max_chunks:
            raise ValueError(
                f"CachePolicy.sink_chunks must be in [0, max_chunks={self.max_chunks}), "
                f"got {self.sink_chunks}"
            )
        if self.shot_sink and self.sink_chunks + 2 > self.max_chunks:
            raise ValueError(
                f"CachePolicy: a shot sink needs sink_chunks + 2 <= max_chunks (global sink, shot sink "
                f"and the current chunk), got sink_chunks={self.sink_chunks}, "
                f"max_chunks={self.max_chunks}; set shot_sink=False or raise max_chunks"
            )
        if self.rope_shot_offset < 0:
            raise ValueError(f"CachePolicy.rope_shot_offset must be >= 0, got {self.rope_shot_offset}")
        if self.storage not in ("fp4", "bf16"):
            raise ValueError(f"CachePolicy.storage must be 'fp4' or 'bf16', got {self.storage!r}")

    @classmethod
    def from_config(cls, config, **overrides) -> CachePolicy:
        """The policy of a :class:`~longlive.config.ModelConfig`'s ``ar`` section, with overrides."""
        ar = config.ar
        base = {
            "max_chunks": ar.max_chunks,
            "sink_chunks": ar.sink_chunks,
            "rope_shot_offset": ar.multi_shot_rope_offset,
            "storage": ar.kv_storage,
            "shot_sink": ar.sink_chunks + 2 <= ar.max_chunks,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def replace(self, **changes) -> CachePolicy:
        return replace(self, **changes)


@dataclass(frozen=True)
class ChunkPlan:
    """What happens around chunk ``chunk`` (see the module docstring).

    Attributes
    ----------
    chunk, shot : int
        Chunk index in the video and shot index (0 for the first shot).
    frame_offset : int
        Temporal RoPE position of the chunk's first latent frame (token-grid frames).
    context : tuple of int
        Earlier chunks the chunk attends (ascending).
    recache : tuple of int
        Chunks re-run at t = 0 with the new prompt before the chunk is denoised (ascending).
    scene_cut, switch : bool
        The chunk starts a shot / its prompt differs from the previous chunk's.
    pin : bool
        The chunk becomes the shot sink after its t = 0 re-run.
    """

    chunk: int
    shot: int
    frame_offset: int
    context: tuple[int, ...]
    recache: tuple[int, ...] = ()
    scene_cut: bool = False
    switch: bool = False
    pin: bool = False


def _recache_set(
    policy: CachePolicy, context, sinks: set[int], switch: bool, scene_cut: bool
) -> tuple[int, ...]:
    if not (policy.recache_on_switch and switch and not scene_cut):
        return ()
    return tuple(c for c in context if policy.recache_sinks or c not in sinks)


def plan_chunks(policy: CachePolicy, flags, *, frames_per_chunk: int) -> list[ChunkPlan]:
    """Plain-Python model of the cache bookkeeping over a whole video.

    Parameters
    ----------
    policy : CachePolicy
    flags : sequence of (scene_cut, switch) pairs or objects with ``is_scene_cut``/``is_switch``
        One per chunk (e.g. ``longlive.data.prompts.ChunkPrompt``); chunk 0 is never a cut.
    frames_per_chunk : int
        Token-grid frames per chunk (RoPE positions per chunk).

    Returns
    -------
    list of ChunkPlan
    """
    plans = []
    shot, shot_sink = 0, None
    for n, f in enumerate(flags):
        cut, switch = (
            (f.is_scene_cut, f.is_switch) if hasattr(f, "is_scene_cut") else (bool(f[0]), bool(f[1]))
        )
        cut = cut and n > 0
        shot += cut
        glob = set(range(min(n, policy.sink_chunks)))
        protected = glob | ({shot_sink} if shot_sink is not None else set())
        room = policy.max_chunks - 1 - len(protected)
        recent = sorted((c for c in range(n) if c not in protected), reverse=True)[: max(room, 0)]
        context = tuple(sorted(protected | set(recent)))
        pin = cut and policy.shot_sink
        plans.append(
            ChunkPlan(
                n,
                shot,
                n * frames_per_chunk + shot * policy.rope_shot_offset,
                context,
                _recache_set(policy, context, protected, switch, cut),
                cut,
                switch,
                pin,
            )
        )
        if pin:
            shot_sink = n
    return plans


class ForwardHandle:
    """Stand-in for the ``cache`` argument of ``CausalDiT.forward_chunk`` when the pipeline gives the
    attention backend itself (re-cache forwards of an older chunk, sequence-parallel ranks that hold
    ``chunk_tokens / P`` tokens): it carries the token count to check and the chunk id, so
    ``forward_chunk`` neither starts a chunk nor builds its default backend."""

    def __init__(self, chunk_tokens: int, current_chunk: int):
        self.chunk_tokens = chunk_tokens
        self.current_chunk = current_chunk

    def start_chunk(self, chunk_id: int) -> None:  # pragma: no cover - guarded by current_chunk
        raise RuntimeError(
            f"ForwardHandle: forward_chunk tried to start chunk {chunk_id}; the CacheManager starts chunks"
        )


def _slot_of(cache, chunk: int) -> int:
    if hasattr(cache, "slot_of"):
        return cache.slot_of(chunk)
    return cache._slot_of[chunk]  # BF16KVCache has no public accessor (yet)


def cached_kv(cache, layer: int, chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense K, V [B, n·chunk_tokens, H, D] of resident context ``chunks`` (ascending), in the cache dtype."""
    chunks = list(chunks)
    if isinstance(cache, BF16KVCache):
        t = cache.chunk_tokens
        spans = [slice(_slot_of(cache, c) * t, (_slot_of(cache, c) + 1) * t) for c in chunks]
        if not spans:
            empty = cache.k.new_empty((cache.batch_size, 0, cache.num_heads, cache.head_dim))
            return empty, empty
        return (
            torch.cat([cache.k[layer][:, s] for s in spans], 1),
            torch.cat([cache.v[layer][:, s] for s in spans], 1),
        )
    ctx = list(cache.context_chunks())
    missing = [c for c in chunks if c not in ctx]
    if missing:
        raise ValueError(f"cached_kv: chunks {missing} are not in the cache's context {ctx}")
    k, v = cache.dequantize(layer)  # ascending chunk id (attention order)
    if chunks == ctx:
        return k, v
    t = cache.chunk_tokens
    idx = (
        torch.cat([torch.arange(ctx.index(c) * t, (ctx.index(c) + 1) * t, device=k.device) for c in chunks])
        if chunks
        else torch.empty(0, dtype=torch.long, device=k.device)
    )
    return k.index_select(1, idx), v.index_select(1, idx)


def attend_with_cache(q, k, v, cache, layer: int, chunks=None, *, compute: str = "bf16", out_fp8: bool = False,
                      q_amax=None, k_amax=None, q_scale=None):
    """Softmax attention of q over [cached ``chunks`` | current k, v] (all [B, L, H, D]).

    ``chunks=None`` attends every context chunk through ``fp4_kv_attention`` (``compute`` = its
    MMA precision) when the cache is an ``FP4KVCache`` and q is bf16/fp16; otherwise (fp32 on a
    CPU, BF16KVCache, a subset of chunks) the cached K/V are dequantized and SDPA runs.
    ``out_fp8`` asks ``fp4_kv_attention`` with FP8 compute for its E4M3 output ``(codes, scale)``
    (for an FP8 output projection); every other path returns the 16-bit o. ``q_amax`` / ``k_amax``:
    bounds of max|q|, max|k| for the FP8 path's scales (``fp4_kv_attention``'s ``q_amax`` /
    ``current_k_amax``). ``q_scale``: q is float8_e4m3fn codes, q ≈ codes · q_scale (from
    :meth:`CacheAttention.fp8_q_buffer`'s caller); paths other than FP8 attention decode it first."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    fp8_attention = compute == "fp8" and chunks is None and not isinstance(cache, BF16KVCache)
    if q_scale is not None and not fp8_attention:
        q, q_scale = (q.float() * q_scale.reshape(())).to(k.dtype), None
    if chunks is None and not isinstance(cache, BF16KVCache) and q.dtype in (torch.bfloat16, torch.float16,
                                                                              torch.float8_e4m3fn):
        try:
            from longlive_kernels.attention import fp4_kv_attention
        except ImportError:
            fp4_kv_attention = None
        if fp4_kv_attention is not None:
            return fp4_kv_attention(
                q,
                cache,
                layer,
                current_k=k,
                current_v=v,
                softmax_scale=scale,
                compute=compute if cache.storage == "fp4" else "bf16",
                out_fp8=out_fp8 and compute == "fp8" and cache.storage == "fp4",
                q_amax=q_amax,
                current_k_amax=k_amax,
                q_scale=q_scale,
            )
    if chunks is None:
        chunks = cache.context_chunks()
    kc, vc = cached_kv(cache, layer, chunks)
    return sdpa_bshd(q, torch.cat([kc.to(k.dtype), k], 1), torch.cat([vc.to(v.dtype), v], 1), scale=scale)


class CacheAttention(AttentionBackend):
    """Attention of a denoising / t = 0 forward of the current chunk: write its K/V into its slot,
    attend [context | current] (``compute``: MMA precision of the FP4-KV kernel)."""

    name = "cache"

    def __init__(self, cache, *, compute: str = "bf16"):
        self.cache, self.compute = cache, compute

    @property
    def fp8_output(self) -> bool:
        """Whether ``__call__(..., out_fp8=True)`` can hand back FP8 attention output (FP8 compute)."""
        return self.compute == "fp8"

    def fp8_q_buffer(self, shape: tuple[int, int, int, int], device: torch.device) -> torch.Tensor | None:
        """An empty float8_e4m3fn [B, L, H, D] for q's codes, in the memory layout FP8 attention reads
        (token- or head-major), when this backend runs cuDNN's FP8 attention (FP8 compute, FP4 cache,
        Hopper with nvidia-cudnn-frontend); else None, and q should stay 16-bit. The caller writes
        the codes (the fused qk-norm + RoPE does, ``apply_rope_3d(q_fp8_out=...)``) and passes the
        scale as ``q_scale``: no cast pass over q follows."""
        fp8_fp4 = self.compute == "fp8" and getattr(self.cache, "storage", None) == "fp4"
        if not fp8_fp4 or torch.device(device).type != "cuda":
            return None
        if os.environ.get("LONGLIVE_FP8_Q", "1") == "0":  # A/B switch of the benches: q cast in the attention
            return None
        try:
            from longlive_kernels.attention import fp4_kv_attention_sdpa
            from longlive_kernels.attention.fp8_sdpa import cudnn_fp8_sdpa_available
        except ImportError:
            return None
        if not cudnn_fp8_sdpa_available(device):
            return None
        return fp4_kv_attention_sdpa.q_codes_buffer(shape, device)

    def __call__(self, q, k, v, *, layer, out_fp8: bool = False, q_amax=None, k_amax=None, q_scale=None):
        self.cache.update(layer, k, v)
        return attend_with_cache(q, k, v, self.cache, layer, compute=self.compute, out_fp8=out_fp8, q_amax=q_amax,
                                 k_amax=k_amax, q_scale=q_scale)


class RecacheAttention(AttentionBackend):
    """Attention of a re-cache forward of chunk ``chunk`` (not the current one): overwrite its slot
    with the new K/V, attend the resident chunks older than it plus itself."""

    name = "recache"

    def __init__(self, cache, chunk: int, context):
        self.cache, self.chunk, self.context = cache, chunk, [c for c in context if c < chunk]

    def __call__(self, q, k, v, *, layer):
        self.cache.update(layer, k, v, chunk_id=self.chunk)
        return attend_with_cache(q, k, v, self.cache, layer, self.context)


class CacheManager:
    """Runtime bookkeeping over one KV cache (see the module docstring).

    Parameters
    ----------
    model : CausalDiT
        Builds the cache (``make_kv_cache``) and fixes the chunk geometry.
    policy : CachePolicy
    batch_size : int
        Cache batch (2 with classifier-free guidance: row 1 holds the negative prompt's K/V).
    num_heads : int, optional
        Heads stored (H / P under sequence parallelism).
    device : optional
        Cache device (default the model's).

    Attributes
    ----------
    cache : FP4KVCache or BF16KVCache
    plans : list of ChunkPlan
        One per chunk begun so far (what actually happened, for inspection and tests).
    """

    def __init__(
        self, model, policy: CachePolicy, *, batch_size: int = 1, num_heads: int | None = None, device=None
    ):
        self.model, self.policy = model, policy
        cfg = model.config
        self.frames_per_chunk = cfg.ar.chunk_frames // cfg.patch_size[0]
        self.cache = model.make_kv_cache(
            batch_size,
            storage=policy.storage,
            max_chunks=policy.max_chunks,
            sink_chunks=policy.sink_chunks,
            num_heads=num_heads,
            device=device,
        )
        self.reset()

    def reset(self) -> None:
        """Start a new video (the buffers are kept)."""
        self.cache.reset()
        self.shot = 0
        self.next_chunk = 0
        self.plans: list[ChunkPlan] = []
        self.clean: dict[int, torch.Tensor] = {}  # resident chunk -> clean latents (for re-cache)
        self.offsets: dict[int, int] = {}

    @property
    def sinks(self) -> set[int]:
        s = set(range(min(self.next_chunk, self.policy.sink_chunks)))
        if self.cache.shot_sink is not None:
            s.add(self.cache.shot_sink)
        return s

    def begin_chunk(self, *, scene_cut: bool = False, switch: bool = False) -> ChunkPlan:
        """Start the next chunk: evict per the policy, give it a slot, bump the shot on a cut.

        Returns the chunk's plan; ``plan.recache`` lists the chunks the caller must re-run at t = 0
        with the new prompt (:meth:`recache_forward`) before denoising the chunk."""
        n = self.next_chunk
        cut = bool(scene_cut) and n > 0
        self.shot += cut
        self.cache.start_chunk(n)
        context = tuple(self.cache.context_chunks())
        for c in [c for c in self.clean if c not in context]:
            del self.clean[c]
        for c in [c for c in self.offsets if c not in context]:
            del self.offsets[c]
        offset = n * self.frames_per_chunk + self.shot * self.policy.rope_shot_offset
        self.offsets[n] = offset
        missing = [
            c for c in _recache_set(self.policy, context, self.sinks, switch, cut) if c not in self.clean
        ]
        if missing:
            raise RuntimeError(
                f"CacheManager: clean latents of chunks {missing} are gone; call end_chunk() for every chunk"
            )
        plan = ChunkPlan(
            n,
            self.shot,
            offset,
            context,
            _recache_set(self.policy, context, self.sinks, switch, cut),
            cut,
            bool(switch),
            cut and self.policy.shot_sink,
        )
        self.plans.append(plan)
        self.next_chunk = n + 1
        return plan

    def end_chunk(self, plan: ChunkPlan, clean_latents: torch.Tensor | None) -> None:
        """After the chunk's t = 0 re-run: keep its clean latents (when re-cache is on), pin it at a cut."""
        if self.policy.recache_on_switch and clean_latents is not None:
            self.clean[plan.chunk] = clean_latents
        if plan.pin:
            self.cache.pin_shot_sink(plan.chunk)

    def recache_attention(self, chunk: int, plan: ChunkPlan) -> RecacheAttention:
        """The attention backend of the re-cache forward of ``chunk`` within ``plan``."""
        return RecacheAttention(self.cache, chunk, plan.context)
