"""``fp4_kv_attention(..., backend="sdpa")``: decode the attended chunks into a reused workspace with
the cache's decode kernel, then ``torch.nn.functional.scaled_dot_product_attention`` with cuDNN
attention first in the backend priority.

Why this path exists on Hopper: cuDNN's attention runs at ~700 TFLOP/s on an H100 at the 5B model's
shape (Lq 7040, Lk 28160, 24 heads × 128), while the fused Triton kernel that decodes FP4 tiles in
registers reaches 0.46× of it and FlashAttention-2 (torch's default SDPA priority puts it first)
0.49×. Decoding three context chunks costs ~130 µs (0.84× copy), 4% of one cuDNN call, so decode +
cuDNN keeps the NVFP4 cache's memory saving at close to BF16-cache speed. The price is a workspace of
one layer's window in the compute dtype (4 slots of 7040 tokens × 24 × 128: 346 MB for K and V),
allocated once per cache and reused by every layer and chunk (fixed addresses, CUDA-graph friendly):
the BF16 window exists for one layer at a time, never for the whole model.

Measured on an H100 (2026-11-22, ``bench/attention/bench_kv_cache.py --quick --attention-only``,
Lq 7040, Lk 28160): 3.848 ms = 0.91× cuDNN over a BF16 cache, 1.80× LongLive's dequantize + FA2.
Accuracy is LongLive's: the decoded K/V are rounded to q's dtype, rel. error 4.95e-3 vs fp64 on the
exactly decoded cache, where the fused kernel (``backend="triton"``, which keeps e2m1·scale exact in
fp16 and applies the FP32 tile scale in fp32) reaches 1.73e-3.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# cuDNN first, then torch's own order (FlashAttention-2, memory-efficient, math): shapes cuDNN cannot
# serve fall back as before.
_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]


# The FP8 workspace and q's codes head-major ([B, H, L, D] in memory; O stays token-major, which the
# output projection reads). By kernel time the DiT's call is within the ±2 % spread of cuDNN's kernel
# either way (H100, tools/probe_fp8_path.py: 2.409 against 2.454 ms token-major in one run, 2.473
# against 2.422 in another), but the DiT loop was ahead in three alternating pairs (40.6 / 40.9 / 41.4
# FPS against 39.2 / 40.2 / 41.1; RESULTS.md, 28th-29th sessions). Both layouts are GPU-tested;
# LONGLIVE_FP8_HEADS_MAJOR=0 selects token-major (A/B runs of the benches).
FP8_HEADS_MAJOR = os.environ.get("LONGLIVE_FP8_HEADS_MAJOR", "1") != "0"


def cudnn_first(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that puts cuDNN attention first in SDPA's priority on Hopper (sm_90), where it measured
    2× FlashAttention-2 (bench/RESULTS.md, issue 5 table); a no-op elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return sdpa_kernel(_PRIORITY, set_priority=True)
    return contextlib.nullcontext()


def sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """SDPA on [B, L, H, D] tensors (no mask), cuDNN first on Hopper; returns [B, Lq, H, D] contiguous."""
    with cudnn_first(q.device):
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
        )
    return o.transpose(1, 2).contiguous()


def _workspace(cache, rows: int, dtype: torch.dtype,
               heads_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V workspace views [B, rows, H, D] owned by ``cache``, token-major in memory or (with
    ``heads_major``) [B, H, rows, D]; grown (re-allocated) only when a call needs more rows, another
    dtype or another layout."""
    ws = getattr(cache, "_sdpa_workspace", None)
    layout = getattr(cache, "_sdpa_workspace_heads_major", None)
    too_short = ws is not None and ws.shape[3 if heads_major else 2] < rows
    if ws is None or ws.dtype != dtype or layout != heads_major or too_short:
        cap = max(rows, cache.max_chunks * cache.chunk_tokens)  # every context chunk + a current one
        b, h, d = cache.batch_size, cache.num_heads, cache.head_dim
        shape = (2, b, h, cap, d) if heads_major else (2, b, cap, h, d)
        ws = torch.empty(shape, dtype=dtype, device=cache.device)
        cache._sdpa_workspace, cache._sdpa_workspace_heads_major = ws, heads_major
    if heads_major:
        return ws[0, :, :, :rows].transpose(1, 2), ws[1, :, :, :rows].transpose(1, 2)
    return ws[0, :, :rows], ws[1, :, :rows]


def attention(q, cache, layer, current_k, current_v, softmax_scale):
    """Attention of ``q`` [B, Lq, H, D] over the cache's context chunks plus the current chunk
    (``current_k``/``current_v`` [B, Lc, H, D] in q's dtype, or the cache's current slot when None).
    Inputs are checked by :func:`fp4_kv_attention`."""
    n_ctx = len(cache.context_chunks())
    ctx_rows = n_ctx * cache.chunk_tokens
    if current_k is None:
        k, v = _workspace(cache, ctx_rows + cache.chunk_tokens, q.dtype)
        cache.dequantize(layer, include_current=True, out=(k, v))
    else:
        k, v = _workspace(cache, ctx_rows + current_k.shape[1], q.dtype)
        if n_ctx:
            cache.dequantize(layer, out=(k[:, :ctx_rows], v[:, :ctx_rows]))
        k[:, ctx_rows:].copy_(current_k)
        v[:, ctx_rows:].copy_(current_v)
    return sdpa_bshd(q, k, v, softmax_scale)


def _amax_into(x: torch.Tensor, bound, out: torch.Tensor) -> None:
    """``out`` ([1] fp32) = the caller's bound of max|x| if given, else max|x| (one pass over x)."""
    from .fp8_sdpa import amax_bits

    if bound is None:
        amax_bits(x, out.view(torch.int32))
    elif isinstance(bound, torch.Tensor):
        out.copy_(bound.reshape(1))
    else:
        out.fill_(float(bound))


def q_codes_buffer(shape: tuple[int, int, int, int], device) -> torch.Tensor:
    """An empty float8_e4m3fn [B, L, H, D] for q's codes, in the FP8 workspace's memory layout
    (head-major with ``FP8_HEADS_MAJOR``, else token-major): where :func:`attention_fp8` casts q, and
    what the DiT's fused RoPE writes into (``CacheAttention.fp8_q_buffer``)."""
    from .fp8_sdpa import heads_major

    if FP8_HEADS_MAJOR:
        return heads_major(tuple(shape), torch.float8_e4m3fn, device)
    return torch.empty(shape, dtype=torch.float8_e4m3fn, device=device)


def attention_fp8(q, cache, layer, current_k, current_v, softmax_scale, out_fp8=False, *, q_amax=None,
                  k_amax=None, q_scale=None, out_dtype=torch.bfloat16):
    """:func:`attention` with FP8 E4M3 math (cuDNN FP8 SDPA, :mod:`fp8_sdpa`): the FP4 window is decoded
    straight into an FP8 workspace with one scale per K and V, ``6 · max`` of the layer's FP32 tile
    scales (an NVFP4 value is at most 6 · 448 · its tile scale, so every code fits E4M3); q and the
    current chunk are quantized with per-tensor scales, from their amax or from the caller's bounds
    ``q_amax`` / ``k_amax`` (no pass over the tensor), or q arrives as E4M3 codes with ``q_scale``
    (no pass at all). The workspace and q's codes are token-major in memory, or head-major with
    ``FP8_HEADS_MAJOR``; O is token-major. ``out_fp8``: cuDNN's E4M3 output and its scale,
    unconverted; else O in ``out_dtype``. Inputs are checked by :func:`fp4_kv_attention`."""
    from .fp8_sdpa import fp8_descales, fp8_sdpa, scale_cast
    from .kv_cache_ops import dequantize_fp8_into

    n_ctx = len(cache.context_chunks())
    ctx_rows = n_ctx * cache.chunk_tokens
    cur_rows = cache.chunk_tokens if current_k is None else current_k.shape[1]
    k8, v8 = _workspace(cache, ctx_rows + cur_rows, torch.float8_e4m3fn, heads_major=FP8_HEADS_MAJOR)
    gs = cache.global_scale[layer]  # [2, S, B, H, NT]: every slot of this layer, so no host sync
    q_is_fp8 = q.dtype == torch.float8_e4m3fn  # codes with the caller's q_scale (the fused RoPE's output)
    amax = torch.zeros(3, dtype=torch.float32, device=q.device)  # of q, current K, current V
    if not q_is_fp8:
        _amax_into(q, q_amax, amax[0:1])
    if current_k is not None:
        _amax_into(current_k, k_amax, amax[1:2])
        _amax_into(current_v, None, amax[2:3])
    sc = fp8_descales(gs, amax.view(torch.int32), current_k is not None)  # descale k, v; their inverses; q; 1/v
    n = n_ctx + (current_k is None)
    if n:
        dequantize_fp8_into(cache.data[layer], cache.scale[layer], gs, cache.table, k8[:, : n * cache.chunk_tokens],
                            v8[:, : n * cache.chunk_tokens], sc[2:4])
    if current_k is not None:
        scale_cast(current_k, sc[0:1], k8[:, ctx_rows:], divide=True)
        scale_cast(current_v, sc[1:2], v8[:, ctx_rows:], divide=True)
    if q_is_fp8:
        q8, descale_q = q, q_scale.reshape(1)
    else:
        q8 = q_codes_buffer(q.shape, q.device)
        descale_q = sc[4:5]
        scale_cast(q, descale_q, q8, divide=True)
    return fp8_sdpa(q8, k8, v8, descale_q, sc[0:1], sc[1:2], softmax_scale, out_dtype=out_dtype, scale_o=sc[5:6],
                    out_fp8=out_fp8)
