"""Pluggable self-attention backends for :class:`longlive.model.CausalDiT`.

Every backend is a callable ``backend(q, k, v, *, layer) -> o`` with q, k, v, o [B, L, H, D]
(after qk-RMSNorm and RoPE). The DiT never knows which one runs:

- :class:`DenseAttention` — bidirectional SDPA over the given tokens (one chunk, no history).
- :class:`MaskedAttention` — teacher forcing over [clean ; noisy] with the spec §5.2 mask:
  compiled ``flex_attention`` with a ``BlockMask`` on CUDA, SDPA with a dense boolean mask on CPU
  (flex has no CPU backward).
- :class:`KVCacheAttention` — cached inference: writes the chunk's K/V into the cache for
  ``layer`` and attends over [cache context | current chunk]. Uses ``longlive_kernels.attention``
  ``FP4KVCache`` + ``fp4_kv_attention``, or :class:`BF16KVCache` + SDPA (the plain-torch baseline).
- :class:`SequenceParallelAttention` — Ulysses hook: all-to-all seq→head on q/k/v, an inner backend
  over the full sequence with H/P heads, all-to-all head→seq on o.

:class:`BF16KVCache` implements the chunk-granular sink/window/shot-sink policy of spec §2.3–2.4
with the same method names as ``FP4KVCache`` (``start_chunk``, ``pin_shot_sink``,
``context_chunks``, ``update``, ``dequantize``, ``reset``).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

from .masks import TeacherForcingLayout


@functools.cache
def _cudnn_first():
    """``longlive_kernels``' cuDNN-first SDPA context, looked up once (lazily: importing the model
    does not import the kernels); a no-op context without the kernel package."""
    try:
        from longlive_kernels.attention.fp4_kv_attention_sdpa import cudnn_first
    except ImportError:  # the plain-torch baseline runs without the kernel package
        return lambda device: contextlib.nullcontext()
    return cudnn_first

__all__ = [
    "AttentionBackend",
    "BF16KVCache",
    "DenseAttention",
    "KVCacheAttention",
    "MaskedAttention",
    "SequenceParallelAttention",
    "make_kv_cache",
    "sdpa_bshd",
]


def sdpa_bshd(q, k, v, *, mask=None, scale=None) -> torch.Tensor:
    """``scaled_dot_product_attention`` on [B, L, H, D] tensors (mask: bool [Lq, Lk], True = keep).

    On Hopper, cuDNN attention goes first in SDPA's priority (torch's default order starts with
    FlashAttention-2, measured at half cuDNN's speed on an H100 at the 5B model's shapes,
    bench/RESULTS.md issue 5); shapes cuDNN cannot serve fall back to the default order.
    """
    with _cudnn_first()(q.device):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


class AttentionBackend:
    """Base class: ``__call__(q, k, v, *, layer) -> o``, all [B, L, H, D]."""

    name = "base"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int) -> torch.Tensor:
        raise NotImplementedError


class DenseAttention(AttentionBackend):
    """Bidirectional attention over the given tokens (SDPA)."""

    name = "dense"

    def __call__(self, q, k, v, *, layer):
        return sdpa_bshd(q, k, v)


class MaskedAttention(AttentionBackend):
    """Teacher-forcing attention with the §5.2 block mask of ``layout``.

    Parameters
    ----------
    layout : TeacherForcingLayout
        Token layout ([clean ; noisy], or the Balanced-SP natural interleaved order).
    impl : {"auto", "flex", "sdpa"}
        ``"flex"``: ``torch.compile``d ``flex_attention`` with a ``BlockMask`` (CUDA; on CPU runs
        the unfused eager path, forward only). ``"sdpa"``: dense boolean mask [N, N].
        ``"auto"``: flex on CUDA, sdpa elsewhere.
    """

    name = "masked"
    _compiled_flex = None

    def __init__(self, layout: TeacherForcingLayout, *, impl: str = "auto"):
        if impl not in ("auto", "flex", "sdpa"):
            raise ValueError(f"MaskedAttention: impl must be 'auto', 'flex' or 'sdpa', got {impl!r}")
        self.layout = layout
        self.impl = impl
        self._masks: dict[tuple[str, str], object] = {}

    def _get(self, kind: str, device: torch.device):
        key = (kind, str(device))
        if key not in self._masks:
            self._masks[key] = (self.layout.block_mask(device) if kind == "flex"
                                else self.layout.dense_mask(device))
        return self._masks[key]

    def __call__(self, q, k, v, *, layer):
        n = self.layout.num_tokens
        if q.shape[1] != n or k.shape[1] != n:
            raise ValueError(f"MaskedAttention: q/k have {q.shape[1]}/{k.shape[1]} tokens, layout expects {n}")
        impl = self.impl if self.impl != "auto" else ("flex" if q.is_cuda else "sdpa")
        if impl == "sdpa":
            return sdpa_bshd(q, k, v, mask=self._get("sdpa", q.device))
        from torch.nn.attention.flex_attention import flex_attention

        fn = flex_attention
        if q.is_cuda:
            if MaskedAttention._compiled_flex is None:
                MaskedAttention._compiled_flex = torch.compile(flex_attention, dynamic=False)
            fn = MaskedAttention._compiled_flex
        o = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=self._get("flex", q.device))
        return o.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
class BF16KVCache:
    """Chunk-slot KV cache in plain torch storing ``dtype`` (bf16 for inference; the model's fp32
    in exactness tests), same interface as ``FP4KVCache``.

    Policy (spec §2.3–2.4 at chunk granularity): ``max_chunks`` slots, the current chunk included;
    the first ``sink_chunks`` chunks are never evicted; a pinned shot sink (``pin_shot_sink``) is
    not evicted until the next pin; otherwise the oldest chunk is evicted when a new chunk needs
    a slot. Calls for the current chunk (denoising steps, the t=0 re-run) overwrite its slot.

    Parameters
    ----------
    num_layers, num_heads, head_dim : int
        Model geometry (heads are the local heads under Ulysses SP).
    chunk_tokens : int
        Tokens per chunk (7040 for 5B at 704x1280).
    max_chunks, sink_chunks : int
        Capacity in chunks (current included) and never-evicted leading chunks.
    batch_size : int
    dtype, device :
        Storage dtype (bf16 for inference) and device.
    """

    storage = "bf16"

    def __init__(self, *, num_layers: int, num_heads: int, head_dim: int, chunk_tokens: int,
                 max_chunks: int = 4, sink_chunks: int = 1, batch_size: int = 1,
                 dtype: torch.dtype = torch.bfloat16, device=None):
        if max_chunks < 1 or not 0 <= sink_chunks < max_chunks:
            raise ValueError(f"BF16KVCache: need max_chunks >= 1 and 0 <= sink_chunks < max_chunks, "
                             f"got max_chunks={max_chunks}, sink_chunks={sink_chunks}")
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.chunk_tokens, self.max_chunks, self.sink_chunks = chunk_tokens, max_chunks, sink_chunks
        self.batch_size = batch_size
        shape = (num_layers, batch_size, max_chunks * chunk_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.reset()

    def reset(self) -> None:
        """Forget every chunk (buffers are kept)."""
        self._slot_of: dict[int, int] = {}
        self.current_chunk: int | None = None
        self.shot_sink: int | None = None

    def start_chunk(self, chunk_id: int) -> None:
        """Begin a forward for ``chunk_id``: a re-call keeps its slot, a new chunk gets one (evicting)."""
        if chunk_id == self.current_chunk:
            return
        if self.current_chunk is not None and chunk_id < self.current_chunk:
            raise ValueError(f"BF16KVCache.start_chunk: chunk ids must not go back: current {self.current_chunk}, "
                             f"got {chunk_id} (call reset() to start a new video)")
        used = set(self._slot_of.values())
        free = [s for s in range(self.max_chunks) if s not in used]
        if not free:
            evictable = sorted(c for c in self._slot_of if c >= self.sink_chunks and c != self.shot_sink)
            if not evictable:
                raise ValueError(f"BF16KVCache: no evictable chunk (max_chunks={self.max_chunks}, "
                                 f"sink_chunks={self.sink_chunks}, pinned={self.shot_sink})")
            free = [self._slot_of.pop(evictable[0])]
        self._slot_of[chunk_id] = free[0]
        self.current_chunk = chunk_id

    def pin_shot_sink(self, chunk_id: int) -> None:
        """Keep ``chunk_id`` (first chunk of a shot) as the shot sink until the next pin."""
        if chunk_id not in self._slot_of:
            raise ValueError(f"BF16KVCache.pin_shot_sink: chunk {chunk_id} is not in the cache "
                             f"(resident: {sorted(self._slot_of)})")
        self.shot_sink = chunk_id

    def context_chunks(self) -> list[int]:
        """Chunk ids of the cached history the current chunk attends (current excluded)."""
        return sorted(c for c in self._slot_of if c != self.current_chunk)

    def _span(self, chunk_id: int) -> slice:
        s = self._slot_of[chunk_id]
        return slice(s * self.chunk_tokens, (s + 1) * self.chunk_tokens)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, chunk_id: int | None = None) -> None:
        """Write (RoPE'd) k, v [B, chunk_tokens, H, D] of the current chunk into its slot, in place."""
        cid = self.current_chunk if chunk_id is None else chunk_id
        if cid is None or cid not in self._slot_of:
            raise ValueError("BF16KVCache.update: call start_chunk(chunk_id) first")
        expect = (self.batch_size, self.chunk_tokens, self.num_heads, self.head_dim)
        if tuple(k.shape) != expect or tuple(v.shape) != expect:
            raise ValueError(f"BF16KVCache.update: k/v must be {expect}, got {tuple(k.shape)}/{tuple(v.shape)}")
        span = self._span(cid)
        self.k[layer, :, span].copy_(k)
        self.v[layer, :, span].copy_(v)

    def dequantize(self, layer: int, *, include_current: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, n·chunk_tokens, H, D] of the context chunks (+ current). Key order is slot order
        (attention without a mask is order-invariant); a view when the slots used are a prefix."""
        chunks = self.context_chunks() + ([self.current_chunk] if include_current and self.current_chunk is not None else [])
        slots = sorted(self._slot_of[c] for c in chunks)
        if slots == list(range(len(slots))):
            end = len(slots) * self.chunk_tokens
            return self.k[layer, :, :end], self.v[layer, :, :end]
        idx = [self._span(c) for c in chunks]
        return (torch.cat([self.k[layer, :, s] for s in idx], 1), torch.cat([self.v[layer, :, s] for s in idx], 1))


def make_kv_cache(*, num_layers: int, num_heads: int, head_dim: int, chunk_tokens: int, max_chunks: int,
                  sink_chunks: int, batch_size: int = 1, storage: str = "fp4", scale_rule: str = "static6",
                  dtype: torch.dtype = torch.bfloat16, device=None, impl: str = "kernels"):
    """A KV cache: ``longlive_kernels.attention.FP4KVCache`` (``impl="kernels"``) or
    :class:`BF16KVCache` (``impl="torch"``, bf16 storage only).

    Raises
    ------
    ValueError
        ``storage="fp4"`` with ``impl="torch"``, or when ``FP4KVCache`` is not available.
    """
    if storage not in ("fp4", "bf16"):
        raise ValueError(f"make_kv_cache: storage must be 'fp4' or 'bf16', got {storage!r}")
    cls = None
    if impl == "kernels":
        try:
            from longlive_kernels.attention import FP4KVCache as cls
        except ImportError:
            cls = None
    if cls is not None:
        return cls(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, chunk_tokens=chunk_tokens,
                   max_chunks=max_chunks, sink_chunks=sink_chunks, batch_size=batch_size, storage=storage,
                   scale_rule=scale_rule, device=device, dtype=dtype)
    if storage == "fp4":
        raise ValueError("make_kv_cache: storage='fp4' needs longlive_kernels.attention.FP4KVCache "
                         f"(impl={impl!r}, available: {cls is not None}); use storage='bf16'")
    return BF16KVCache(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, chunk_tokens=chunk_tokens,
                       max_chunks=max_chunks, sink_chunks=sink_chunks, batch_size=batch_size, dtype=dtype,
                       device=device)


class KVCacheAttention(AttentionBackend):
    """Cached chunk attention: update ``cache`` at ``layer`` with k, v, then attend
    [context chunks | current chunk]. The current chunk's own K/V enter in full precision.

    Parameters
    ----------
    cache : FP4KVCache or BF16KVCache
        ``start_chunk(chunk_id)`` must have been called for this forward.
    compute : {"bf16", "fp8"}
        Attention math of ``fp4_kv_attention`` (FP4 cache only).
    backend : str
        Kernel backend of ``fp4_kv_attention``.
    """

    name = "kv_cache"

    def __init__(self, cache, *, compute: str = "bf16", backend: str = "auto"):
        self.cache, self.compute, self.backend = cache, compute, backend

    def __call__(self, q, k, v, *, layer):
        cache = self.cache
        cache.update(layer, k, v)
        if isinstance(cache, BF16KVCache):
            kh, vh = cache.dequantize(layer, include_current=True)  # current slot holds exactly k, v
            return sdpa_bshd(q, kh, vh)
        scale = 1.0 / math.sqrt(q.shape[-1])
        try:
            from longlive_kernels.attention import fp4_kv_attention
        except ImportError:
            fp4_kv_attention = None
        if fp4_kv_attention is not None and q.dtype in (torch.bfloat16, torch.float16):
            return fp4_kv_attention(q, cache, layer, current_k=k, current_v=v, softmax_scale=scale,
                                    compute=self.compute, backend=self.backend)
        # fp32 models (exactness tests) or no fused kernel: dense history + current chunk, SDPA.
        kh, vh = cache.dequantize(layer)
        return sdpa_bshd(q, torch.cat([kh.to(k.dtype), k], 1), torch.cat([vh.to(v.dtype), v], 1), scale=scale)


# ---------------------------------------------------------------------------------------------
# Ulysses sequence parallelism hook
# ---------------------------------------------------------------------------------------------
def _all_to_all_torch(x: torch.Tensor, group, *, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Autograd-aware plain-torch all-to-all (fallback when ``longlive_kernels.comm`` is missing)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnf

    world = dist.get_world_size(group)
    if world == 1:
        return x
    ins = [t.contiguous() for t in x.chunk(world, dim=scatter_dim)]
    outs = dnf.all_to_all([torch.empty_like(ins[0]) for _ in range(world)], ins, group=group)
    return torch.cat(outs, dim=gather_dim)


class SequenceParallelAttention(AttentionBackend):
    """Ulysses: q, k, v [B, L/P, H, D] → all-to-all → [B, L, H/P, D] → ``inner`` → o back to
    [B, L/P, H, D]. ``inner`` sees the global sequence (Balanced SP: the natural interleaved
    order ``[r0_clean, r0_noisy, r1_clean, …]``, spec §5.2) with the rank's H/P heads; a KV cache
    behind it holds H/P heads (``CausalDiT.make_kv_cache(num_heads=H // P)``).

    Runs ``longlive_kernels.comm.UlyssesAttention`` (optionally NVFP4/FP8 K/V on the wire via
    ``kv_format``); a plain-torch all-to-all when that package part is missing.
    """

    name = "ulysses"

    def __init__(self, inner: AttentionBackend, group=None, *, kv_format: str | None = None, **ulysses_kwargs):
        self.inner, self.group = inner, group
        try:
            from longlive_kernels.comm import UlyssesAttention
        except ImportError:
            UlyssesAttention = None
        if UlyssesAttention is None and kv_format is not None:
            raise ValueError("SequenceParallelAttention: kv_format needs longlive_kernels.comm.UlyssesAttention")
        self._ulysses = (UlyssesAttention(inner, group, kv_format=kv_format, **ulysses_kwargs)
                         if UlyssesAttention is not None else None)

    def __call__(self, q, k, v, *, layer):
        if self._ulysses is not None:
            return self._ulysses(q, k, v, layer=layer)
        a2a = _all_to_all_torch
        q, k, v = (a2a(t, self.group, scatter_dim=2, gather_dim=1) for t in (q, k, v))
        o = self.inner(q, k, v, layer=layer)
        return a2a(o, self.group, scatter_dim=1, gather_dim=2)
