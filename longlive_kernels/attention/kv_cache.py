"""FP4 KV cache for streaming autoregressive video diffusion: ``FP4KVCache``.

Preallocated once (addresses never change, CUDA-graph friendly), per layer K and V as

    data  uint8 [slots, B, H, T, D/2]     packed E2M1, element 2i in the low nibble
    scale uint8 [slots, B, H, T, D/16]    E4M3 block scales (one per 16 along head_dim)
    gs    fp32  [slots, B, H, T/128]      decode scale per (slot, batch, head, 128-token tile)

with ``T = chunk_tokens`` and one slot per resident chunk. Head-major tiles make a 128-token K or
V tile of one head a contiguous 8 KB + 1 KB block for the attention kernel. Which chunks are
resident (global sink, shot sink, rolling window, current chunk) is decided by host-side Python
bookkeeping and mirrored into a small device int32 index table that kernels read, so no roll ever
copies data: a new chunk takes the slot of the chunk that leaves (spec: ``reference.KVCachePolicy``;
``longlive-spec.md`` §2.3–2.4).

Update = one kernel for K and V: each program owns one 128×D tile of one head, computes its amax,
its FP32 scale, the E4M3 block scales and the packed codes, and writes them in place; the result is
bit-identical to ``quantize_nvfp4`` of that tile.

Global-scale granularity, measured (round-trip rel. error over a [1024 tokens, 24 heads, 128] bf16
chunk; ``python bench/attention/bench_kv_cache.py --granularity``, CPU):

    data                                   per (slot, K|V)  per (slot, head)  per (slot, head, 128 tok)
    Gaussian                               9.510e-2         9.511e-2          9.517e-2
    K-like: head gains 2^U(-3,3), channel
      gains 2^U(-1,1), 1/64 tokens x16     9.387e-2         9.379e-2          9.327e-2
    Student-t(3), head gains 2^U(-3,3)     9.070e-2         9.072e-2          9.060e-2

The E4M3 block scales already span the dynamic range, so the granularity of the FP32 scale does not
change the error (within 0.7% of each other). It decides the kernel instead: only the
tile granularity lets the update quantize in a single pass (no grid-wide amax before the first byte
is written), at 4 bytes per 128×D values (0.04%).

This module holds the public class (input checks, backend choice). The Triton kernels are in
``kv_cache_triton.py``; their launchers and the ``longlive_kernels::`` ops (which also dispatch to
the CUDA extension) in ``kv_cache_ops.py``; the slot bookkeeping in ``kv_cache_slots.py``.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import _checks
from .._backend import cuda_op_available, eager_op, resolve_backend
from ..fp4.format import SCALE_RULES, NVFP4Tensor
from .kv_cache_ops import _dequantize_into_op, _dequantize_op, _update_op
from .kv_cache_slots import _SlotRing
from .reference import KV_SCALE_TILE

# eager calls skip the dispatcher (same computation; see _backend.direct_call_ok)
_update = eager_op(_update_op)
_dequantize = eager_op(_dequantize_op)
_dequantize_into = eager_op(_dequantize_into_op)

STORAGES = ("fp4", "bf16")


# ---------------------------------------------------------------------------------------------
# Public class
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KVLayerView:
    """One layer of an :class:`FP4KVCache` as the attention kernels read it.

    ``data``/``scale``/``global_scale`` are views of the FP4 buffers ([2, S, B, H, T, D/2],
    [2, S, B, H, T, D/16], [2, S, B, H, T/128]; index 0 = K, 1 = V), or ``values``
    [2, S, B, H, T, D] for BF16 storage; ``table`` is the device index table
    ``[n_ctx, slot(current), slot(ctx_0), ...]`` (int32 [2 + S]).
    """

    data: torch.Tensor | None
    scale: torch.Tensor | None
    global_scale: torch.Tensor | None
    values: torch.Tensor | None
    table: torch.Tensor
    n_ctx: int
    has_current: bool
    chunk_tokens: int


class FP4KVCache:
    """Self-attention KV cache of a streaming AR video DiT, stored in NVFP4 (or BF16).

    Parameters
    ----------
    num_layers, num_heads, head_dim : int
        Model geometry (with Ulysses SP: ``num_heads`` = heads per rank). ``head_dim`` % 16 == 0.
    chunk_tokens : int
        Tokens per chunk (LongLive 704×1280: 8 latent frames × 880 = 7040).
    max_chunks : int
        Capacity in chunks including the current one (LongLive: 32 frames / 8 = 4).
    sink_chunks : int
        Global attention sink: chunks with id < ``sink_chunks`` are never evicted (default 1).
    batch_size : int
    storage : {"fp4", "bf16"}
        NVFP4 (4.5 bits/value + one FP32 per 128×D tile) or plain BF16 with the same interface
        (for comparison, and for users without FP4 needs).
    scale_rule : {"static6", "static4", "four_over_six"}
        NVFP4 scale rule of :func:`~longlive_kernels.fp4.quantize_nvfp4` used by :meth:`update`.
    device : torch.device or str, optional
    dtype : torch.dtype
        Dtype :meth:`dequantize` returns (bf16 default; fp16/fp32 allowed).

    Notes
    -----
    Bookkeeping (which chunk is where) is host-side Python ints: no device sync. It is mirrored into
    ``table`` (int32 [2 + max_chunks], address fixed) that the kernels read, so update and attention
    launches are identical from chunk to chunk in steady state (CUDA-graph friendly). Policy:
    :class:`longlive_kernels.attention.reference.KVCachePolicy`. Slots are zero-initialised; a slot
    that was assigned but not yet written holds the previous occupant's data.

    Examples
    --------
    >>> cache = FP4KVCache(num_layers=30, num_heads=24, head_dim=128, chunk_tokens=7040, device="cuda")
    >>> for n in range(num_chunks):
    ...     cache.start_chunk(n)
    ...     for step in range(steps + 1):           # denoising steps, then the t=0 re-run
    ...         for layer in range(30):
    ...             cache.update(layer, k, v)       # overwrites chunk n's slot
    ...             o = fp4_kv_attention(q, cache, layer, current_k=k, current_v=v)
    ...     if scene_cut[n]:
    ...         cache.pin_shot_sink(n)
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        chunk_tokens: int,
        max_chunks: int = 4,
        sink_chunks: int = 1,
        batch_size: int = 1,
        storage: str = "fp4",
        scale_rule: str = "static6",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ):
        for name, val, low in [("num_layers", num_layers, 1), ("num_heads", num_heads, 1),
                               ("head_dim", head_dim, 16), ("chunk_tokens", chunk_tokens, 1),
                               ("max_chunks", max_chunks, 2), ("sink_chunks", sink_chunks, 0),
                               ("batch_size", batch_size, 1)]:
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
        _checks.check_multiple("head_dim", head_dim, 16)
        if sink_chunks >= max_chunks:
            raise ValueError(f"sink_chunks ({sink_chunks}) must be < max_chunks ({max_chunks}): the current "
                             "chunk needs a slot")
        _checks.check_choice("storage", storage, STORAGES)
        _checks.check_choice("scale_rule", scale_rule, tuple(SCALE_RULES))
        if dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.chunk_tokens, self.max_chunks, self.sink_chunks = chunk_tokens, max_chunks, sink_chunks
        self.batch_size, self.storage, self.scale_rule, self.dtype = batch_size, storage, scale_rule, dtype
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" must compare equal
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        shape = (num_layers, 2, max_chunks, batch_size, num_heads, chunk_tokens)
        self.num_scale_tiles = -(-chunk_tokens // KV_SCALE_TILE)
        if storage == "fp4":
            self.data = torch.zeros((*shape, head_dim // 2), dtype=torch.uint8, device=self.device)
            self.scale = torch.zeros((*shape, head_dim // 16), dtype=torch.uint8, device=self.device)
            self.global_scale = torch.zeros((*shape[:-1], self.num_scale_tiles), dtype=torch.float32,
                                            device=self.device)
            self.values = None
        else:
            self.data = self.scale = self.global_scale = None
            self.values = torch.zeros((*shape, head_dim), dtype=torch.bfloat16, device=self.device)
        self.table = torch.full((2 + max_chunks,), -1, dtype=torch.int32, device=self.device)
        self._ring = _SlotRing(max_chunks, sink_chunks)
        self._sync_table()

    # ---- bookkeeping -----------------------------------------------------------------------------

    def _sync_table(self) -> None:
        host = torch.tensor(self._ring.table(), dtype=torch.int32)
        if self.device.type == "cuda":
            host = host.pin_memory()  # the caching host allocator keeps it alive until the copy ran
        self.table.copy_(host, non_blocking=True)

    def host_table(self) -> list[int]:
        """The host mirror of :attr:`table`: ``[n_ctx, slot(current), slot(ctx_0), ..., -1...]``."""
        return self._ring.table()

    def reset(self) -> None:
        """Forget every chunk (buffers keep their bytes; their addresses never change)."""
        self._ring = _SlotRing(self.max_chunks, self.sink_chunks)
        self._sync_table()

    def start_chunk(self, chunk_id: int) -> None:
        """Make ``chunk_id`` the current chunk: evict per the policy, assign it a free slot.

        Call once per new chunk, before its denoising steps. ``chunk_id`` must exceed every chunk
        started before (since the last :meth:`reset`).
        """
        self._ring.start(int(chunk_id))
        self._sync_table()

    def pin_shot_sink(self, chunk_id: int) -> None:
        """At a scene cut (after the chunk's t=0 re-run): ``chunk_id`` becomes the shot sink, never
        evicted until the next pin; the previous shot sink becomes an ordinary window chunk."""
        self._ring.pin(int(chunk_id))
        self._sync_table()

    @property
    def current_chunk(self) -> int | None:
        return self._ring.current

    @property
    def shot_sink(self) -> int | None:
        return self._ring.shot

    def context_chunks(self) -> list[int]:
        """Chunk ids the current chunk attends to (excluding itself), in attention order."""
        return self._ring.context()

    def slot_of(self, chunk_id: int) -> int:
        """Physical slot of a resident chunk (``ValueError`` if it is not resident)."""
        return self._ring.slot_of(int(chunk_id))

    def _table_index(self, chunk_id: int | None) -> int:
        """Index into :attr:`table` of the entry holding the slot of ``chunk_id`` (default current)."""
        if chunk_id is None or chunk_id == self._ring.current:
            if self._ring.current is None:
                raise ValueError("no current chunk: call start_chunk(chunk_id) first")
            return 1
        ctx = self._ring.context()
        if chunk_id not in ctx:
            raise ValueError(f"chunk {chunk_id} is not resident (resident: {self._ring.resident()})")
        return 2 + ctx.index(chunk_id)

    # ---- writes ----------------------------------------------------------------------------------

    def _check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")

    def _check_chunk(self, name: str, x: torch.Tensor) -> None:
        _checks.check_dtype(name, x)
        _checks.check_ndim(name, x, 4)
        want = (self.batch_size, self.chunk_tokens, self.num_heads, self.head_dim)
        if x.shape[1] > self.chunk_tokens:
            raise ValueError(f"{name}: chunk of {x.shape[1]} tokens is larger than a slot "
                             f"({self.chunk_tokens} tokens)")
        if tuple(x.shape) != want:
            raise ValueError(f"{name} must have shape [B, chunk_tokens, H, D] = {list(want)}, got "
                             f"{list(x.shape)} (partial chunks are not supported)")
        _checks.check_last_dim_contiguous(name, x)
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device}, the cache on {self.device}")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, *, chunk_id: int | None = None,
               backend: str = "auto") -> None:
        """Quantize one chunk's K and V and write them in place into the chunk's slot (one kernel).

        Parameters
        ----------
        layer : int
        k, v : torch.Tensor
            [B, chunk_tokens, H, D] bf16/fp16/fp32, same dtype, last dim contiguous, already RoPE'd.
        chunk_id : int, optional
            A resident chunk (default: the current one). Re-writing a chunk (later denoising
            steps, the t=0 re-run, a prompt-switch re-cache) overwrites its slot.
        backend : {"auto", "triton", "cuda", "torch"}

        Raises
        ------
        TypeError
            Non-tensor or non-float inputs, or k and v of different dtypes.
        ValueError
            Layer out of range, wrong shape (more tokens than a slot, other batch/heads/head_dim),
            device mismatch, no current chunk, or a chunk that is not resident.
        """
        self._check_layer(layer)
        self._check_chunk("k", k)
        self._check_chunk("v", v)
        if k.dtype != v.dtype:
            raise TypeError(f"k and v must have the same dtype, got {k.dtype} and {v.dtype}")
        if k.stride() != v.stride():
            k, v = k.contiguous(), v.contiguous()
        idx = self._table_index(chunk_id)
        if self.storage == "bf16":
            slot = self.table[idx : idx + 1].long()
            for i, x in enumerate((k, v)):
                self.values[layer, i].index_copy_(0, slot, x.permute(0, 2, 1, 3).to(torch.bfloat16)[None])
            return
        supported = ("triton", "torch") + (("cuda",) if cuda_op_available("kv_cache_update_cuda") else ())
        be = resolve_backend(backend, self.device, op="FP4KVCache.update", supported=supported,
                             prefer=("cuda", "triton"))
        _update(k, v, self.data[layer], self.scale[layer], self.global_scale[layer], self.table, idx,
                self.scale_rule, be)

    def update_quantized(self, layer: int, k: NVFP4Tensor, v: NVFP4Tensor, *,
                         chunk_id: int | None = None) -> None:
        """Copy already-quantized K and V (e.g. from the quantized Ulysses all-to-all) into a slot
        without a BF16 round trip: packed codes and block scales are copied, the tensors' FP32
        decode scale is stored in every 128-token tile of the slot.

        ``k``/``v``: :class:`NVFP4Tensor` of shape [B, chunk_tokens, H, D] with one (0-dim) global
        scale, no Hadamard transform (linear or swizzled scales).
        """
        self._check_layer(layer)
        want = (self.batch_size, self.chunk_tokens, self.num_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, NVFP4Tensor):
                raise TypeError(f"{name} must be an NVFP4Tensor, got {type(t).__name__}")
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must have shape {list(want)}, got {list(t.shape)}")
            if t.hadamard_mask is not None:
                raise ValueError(f"{name} holds Hadamard-transformed data; the cache stores plain NVFP4")
            if t.global_scale.numel() != 1:
                raise ValueError(f"{name} must have one global scale, got shape "
                                 f"{tuple(t.global_scale.shape)}")
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device}, the cache on {self.device}")
        idx = self._table_index(chunk_id)
        slot = self.table[idx : idx + 1].long()
        for i, t in enumerate((k.from_blocked(), v.from_blocked())):
            if self.storage == "bf16":
                vals = t.dequantize(torch.bfloat16, backend="torch" if self.device.type == "cpu" else "auto")
                self.values[layer, i].index_copy_(0, slot, vals.permute(0, 2, 1, 3)[None])
                continue
            d = t.data.reshape(want[:3] + (self.head_dim // 2,)).permute(0, 2, 1, 3)
            s = t.scale.view(torch.uint8).reshape(want[:3] + (self.head_dim // 16,)).permute(0, 2, 1, 3)
            g = t.global_scale.to(torch.float32).reshape(1, 1, 1, 1).expand(1, *self.global_scale.shape[3:])
            self.data[layer, i].index_copy_(0, slot, d[None].contiguous())
            self.scale[layer, i].index_copy_(0, slot, s[None].contiguous())
            self.global_scale[layer, i].index_copy_(0, slot, g.contiguous())

    # ---- reads -----------------------------------------------------------------------------------

    def layer_view(self, layer: int) -> KVLayerView:
        """The buffers of one layer as the attention kernels read them (see :class:`KVLayerView`)."""
        self._check_layer(layer)
        fp4 = self.storage == "fp4"
        return KVLayerView(
            data=self.data[layer] if fp4 else None,
            scale=self.scale[layer] if fp4 else None,
            global_scale=self.global_scale[layer] if fp4 else None,
            values=None if fp4 else self.values[layer],
            table=self.table,
            n_ctx=len(self._ring.context()),
            has_current=self._ring.current is not None,
            chunk_tokens=self.chunk_tokens,
        )

    def dequantize(self, layer: int, *, include_current: bool = False, dtype: torch.dtype | None = None,
                   backend: str = "auto", out: tuple[torch.Tensor, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the context chunks (+ the current chunk) as dense tensors, for any attention
        backend.

        Parameters
        ----------
        layer : int
        include_current : bool
            Append the current chunk (as written by :meth:`update`).
        dtype : torch.dtype, optional
            bf16, fp16 or fp32 (default: the cache's ``dtype``); values are ``(e2m1 · s_block) ·
            s_tile`` in fp32, rounded once.
        backend : {"auto", "triton", "cuda", "torch"}
            ``"auto"`` on CUDA takes the Triton kernel first: it measured faster than the CUDA one
            (H100, 2026-11-22, three 7040-token chunks: 131.8 vs 153.6 µs, 0.84 vs 0.72× copy).
        out : (torch.Tensor, torch.Tensor), optional
            Destinations for K and V, each exactly [B, n·chunk_tokens, H, D] (any strides with a
            contiguous last dim, e.g. the head of a larger workspace); ``dtype`` is theirs. Written
            in place and returned.

        Returns
        -------
        (k, v) : tuple of torch.Tensor
            [B, n·chunk_tokens, H, D] each, chunks in attention order (ascending id),
            ``n = len(context_chunks()) + include_current``.

        Raises
        ------
        TypeError
            ``dtype`` (or ``out``'s dtype) not bf16/fp16/fp32; ``out`` not a pair of tensors.
        ValueError
            Layer out of range, ``include_current`` without a started chunk, ``out`` of another
            shape or device, with a non-contiguous last dim, or K and V of different dtypes or
            strides.
        """
        self._check_layer(layer)
        n = len(self._ring.context())
        if include_current:
            if self._ring.current is None:
                raise ValueError("include_current=True but no chunk was started")
            n += 1
        if out is not None:
            out_dtype = self._check_out(out, n)
            if dtype is not None and dtype != out_dtype:
                raise ValueError(f"dtype {dtype} differs from out's dtype {out_dtype}")
            dtype = out_dtype
        dtype = self.dtype if dtype is None else dtype
        if dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
        if self.storage == "bf16" and out is not None:
            for dst, src in zip(out, self.dequantize(layer, include_current=include_current, dtype=dtype),
                                strict=True):
                dst.copy_(src)
            return out
        if self.storage == "bf16":
            # slots from the device table (no host-to-device copy: a CUDA graph replays this for any slots)
            n_ctx = n - int(include_current)
            slots = self.table[2 : 2 + n_ctx]
            if include_current:
                slots = torch.cat([slots, self.table[1:2]])
            vals = self.values[layer].index_select(1, slots.long())  # [2, n, B, H, T, D]
            out = vals.permute(0, 2, 1, 4, 3, 5).reshape(2, self.batch_size, n * self.chunk_tokens,
                                                          self.num_heads, self.head_dim)
            return out[0].to(dtype), out[1].to(dtype)
        if n == 0:
            if out is not None:
                return out
            empty = torch.empty((self.batch_size, 0, self.num_heads, self.head_dim), dtype=dtype,
                                device=self.device)
            return empty, empty.clone()
        has_cuda = cuda_op_available("kv_cache_dequantize_cuda")
        supported = ("triton", "torch") + (("cuda",) if has_cuda else ())
        be = resolve_backend(backend, self.device, op="FP4KVCache.dequantize", supported=supported,
                             prefer=("triton", "cuda"))
        if out is not None:
            _dequantize_into(self.data[layer], self.scale[layer], self.global_scale[layer], self.table,
                             out[0], out[1], be)
            return out
        return _dequantize(self.data[layer], self.scale[layer], self.global_scale[layer], self.table, n,
                           dtype, be)

    def _check_out(self, out: object, n: int) -> torch.dtype:
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise TypeError(f"out must be a pair of tensors (k, v), got {type(out).__name__}")
        want = (self.batch_size, n * self.chunk_tokens, self.num_heads, self.head_dim)
        for name, t in zip(("out[0]", "out[1]"), out, strict=True):
            if tuple(t.shape) != want:
                raise ValueError(f"{name} must have shape {list(want)}, got {list(t.shape)}")
            _checks.check_dtype(name, t)
            _checks.check_last_dim_contiguous(name, t)
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device}, the cache on {self.device}")
        if out[0].dtype != out[1].dtype:
            raise ValueError(f"out[0] and out[1] must have one dtype, got {out[0].dtype} and {out[1].dtype}")
        if out[0].stride() != out[1].stride():  # the decode kernel takes one set of strides for both
            raise ValueError(f"out[0] and out[1] must have the same strides, got {out[0].stride()} and "
                             f"{out[1].stride()}")
        return out[0].dtype

    # ---- memory ----------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of all cache buffers (every layer, K and V)."""
        bufs = (self.data, self.scale, self.global_scale, self.values, self.table)
        return sum(b.numel() * b.element_size() for b in bufs if b is not None)

    @property
    def nbytes_per_layer(self) -> int:
        """Bytes of one layer's K and V buffers."""
        return (self.nbytes - self.table.numel() * 4) // self.num_layers

    def memory_report(self) -> dict[str, float]:
        """Per-layer bytes, the BF16 equivalent and the compression ratio."""
        bf16 = 2 * self.max_chunks * self.batch_size * self.num_heads * self.chunk_tokens * self.head_dim * 2
        per_layer = self.nbytes_per_layer
        return {
            "bytes_per_layer": per_layer,
            "bytes_total": self.nbytes,
            "bf16_bytes_per_layer": bf16,
            "compression": bf16 / per_layer,
            "bits_per_value": 8 * per_layer / (bf16 / 2),
        }

    def __repr__(self) -> str:
        return (f"FP4KVCache(layers={self.num_layers}, heads={self.num_heads}, head_dim={self.head_dim}, "
                f"chunk_tokens={self.chunk_tokens}, max_chunks={self.max_chunks}, "
                f"sink_chunks={self.sink_chunks}, "
                f"storage={self.storage}, current={self.current_chunk}, context={self.context_chunks()}, "
                f"shot_sink={self.shot_sink}, {self.nbytes / 2**20:.1f} MiB)")
