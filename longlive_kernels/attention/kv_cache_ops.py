"""Launchers of the FP4 KV cache kernels (Triton: ``kv_cache_triton.py``; CUDA: the
``longlive_kernels._C`` extension; torch: ``reference.py``) and the ``longlive_kernels::``
``torch.library`` ops behind ``FP4KVCache.update`` / ``FP4KVCache.dequantize`` (``kv_cache.py``); each
op runs the launcher its resolved ``backend`` argument names.
"""

from __future__ import annotations

import torch
import triton

from .._backend import cuda_extension, cuda_op_available
from ..fp4.format import SCALE_RULES
from . import reference
from .kv_cache_triton import _kv_dequantize_kernel, _kv_update_kernel
from .reference import KV_SCALE_TILE

# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _update_triton(k, v, data, scale, gs, table, slot_index, scale_rule):
    _, s, b, h, t, half_d = data.shape
    d = 2 * half_d
    target, denom = SCALE_RULES[scale_rule]
    br = 16 if scale_rule == "four_over_six" else 32
    grid = (triton.cdiv(t, KV_SCALE_TILE), b * h, 2)
    _kv_update_kernel[grid](
        k, v, data, scale, gs, table[slot_index:], t, h, b, s, k.stride(0), k.stride(1), k.stride(2),
        DENOM=denom, TARGET=target, FOUR_OVER_SIX=scale_rule == "four_over_six", D=d,
        TILE=KV_SCALE_TILE, BR=br, num_warps=4, enable_fp_fusion=False,
    )


def _update_cuda(k, v, data, scale, gs, table, slot_index, scale_rule):
    vec_ok = all(x.data_ptr() % 16 == 0 and all(st % 8 == 0 for st in x.stride()[:3]) for x in (k, v))
    if not vec_ok or data.shape[-1] * 2 > 256:  # the CUDA kernel loads 16-value blocks as 16-byte vectors
        return _update_triton(k, v, data, scale, gs, table, slot_index, scale_rule)
    cuda_extension()
    rule_id = {"static6": 0, "static4": 1, "four_over_six": 2}[scale_rule]
    torch.ops.longlive_kernels.kv_cache_update_cuda(k, v, data, scale, gs, table, slot_index, rule_id)


def _update_torch(k, v, data, scale, gs, table, slot_index, scale_rule):
    idx = table[slot_index : slot_index + 1].long()
    for i, x in enumerate((k, v)):
        dq, sq, g = reference.kv_quantize(x, scale_rule=scale_rule)
        data[i].index_copy_(0, idx, dq[None])
        scale[i].index_copy_(0, idx, sq[None])
        gs[i].index_copy_(0, idx, g[None])


# ---------------------------------------------------------------------------------------------
# torch.library ops (one layer's buffers: data [2, S, B, H, T, D/2], scale [.., D/16], gs [.., NT])
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("longlive_kernels::kv_cache_update", mutates_args=("data", "scale", "gs"))
def _update_op(
    k: torch.Tensor,
    v: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    gs: torch.Tensor,
    table: torch.Tensor,
    slot_index: int,
    scale_rule: str,
    backend: str,
) -> None:
    run = {"torch": _update_torch, "triton": _update_triton, "cuda": _update_cuda}[backend]
    run(k, v, data, scale, gs, table, slot_index, scale_rule)


@_update_op.register_fake
def _(k, v, data, scale, gs, table, slot_index, scale_rule, backend):
    return None


def _dequantize_torch(data, scale, gs, table, n_chunks, dtype):
    idx = torch.cat([table[2 : 2 + n_chunks], table[1:2]])
    n_ctx = table[0:1]
    pos = torch.arange(n_chunks, device=table.device)
    idx = torch.where(pos < n_ctx, idx[:n_chunks], idx[-1]).long()  # position c -> slot
    outs = []
    for i in range(2):
        d, s, g = data[i].index_select(0, idx), scale[i].index_select(0, idx), gs[i].index_select(0, idx)
        chunks = [reference.kv_dequantize(d[c], s[c], g[c], dtype=dtype) for c in range(n_chunks)]
        outs.append(torch.cat(chunks, dim=1))
    return outs[0], outs[1]


def _dequantize_triton(data, scale, gs, table, n_chunks, dtype, out_k=None, out_v=None, inv_scale=None, *,
                       rows_per_program: int = 64, num_warps: int = 4):
    """Decode ``n_chunks`` chunks (context, then the current slot); with ``inv_scale`` ([2] fp32 on the
    device) the values are multiplied by ``inv_scale[0]`` (K) / ``inv_scale[1]`` (V) before the store
    (FP8 outputs with a per-tensor scale). ``rows_per_program`` (a power of two dividing the 128-token
    scale tile) and ``num_warps`` are launch shapes (same result; 64 × 4 was the fastest of 32/64/128 rows
    × 4/8 warps for FP8 and bf16 outputs on an H100, ``tools/probe_fp8_path.py --decode-sweep``)."""
    _, s, b, h, t, half_d = data.shape
    d = 2 * half_d
    if out_k is None:
        out_k = torch.empty((b, n_chunks * t, h, d), dtype=dtype, device=data.device)
        out_v = torch.empty_like(out_k)
    br = rows_per_program
    if br < 1 or br & (br - 1) or KV_SCALE_TILE % br:
        raise ValueError(f"rows_per_program must be a power of two dividing {KV_SCALE_TILE}, got {br}")
    grid = (triton.cdiv(t, br), 2 * n_chunks, b * h)
    _kv_dequantize_kernel[grid](
        data, scale, gs, table, out_k, out_v, gs if inv_scale is None else inv_scale, t, h, b, s,
        out_k.stride(0), out_k.stride(1), out_k.stride(2),
        D=d, TILE=KV_SCALE_TILE, BR=br, SCALED=inv_scale is not None, num_warps=num_warps, enable_fp_fusion=False,
    )
    return out_k, out_v


def dequantize_fp8_into(data, scale, gs, table, out_k, out_v, inv_scale, *, backend: str = "auto",
                        items_per_thread: int = 2) -> None:
    """Decode the first ``out_k.shape[1] // T`` chunks in attention order (context, then the current
    slot) into the FP8 window of ``compute="fp8"``: each code is RNE_E4M3(decoded value · inv_scale[K|V]),
    saturating (bit-identical between the backends).

    data, scale, gs : one layer's cache buffers ([2, S, B, H, T, D/2] uint8, [.., D/16] uint8,
    [.., ceil(T/128)] fp32). out_k, out_v : float8_e4m3fn [B, n·T, H, D], D contiguous, same strides.
    inv_scale : [2] fp32 on the device. backend : ``"cuda"`` (the extension's table decode: each block's 8
    magnitudes converted once, every code one byte permute; needs 16-byte aligned rows), ``"triton"``, or
    ``"auto"`` (CUDA where it applies). items_per_thread : CUDA launch shape (1, 2 or 4; same result)."""
    aligned = all(x.data_ptr() % 16 == 0 and all(st % 16 == 0 for st in x.stride()[:3]) for x in (out_k, out_v))
    use_cuda = backend == "cuda" or (backend == "auto" and aligned and out_k.is_cuda
                                     and cuda_op_available("kv_cache_dequantize_fp8_cuda"))
    if use_cuda:
        cuda_extension()
        torch.ops.longlive_kernels.kv_cache_dequantize_fp8_cuda(data, scale, gs, table, out_k, out_v, inv_scale,
                                                                items_per_thread)
        return
    _dequantize_triton(data, scale, gs, table, out_k.shape[1] // data.shape[4], torch.float8_e4m3fn, out_k, out_v,
                       inv_scale)


def _dequantize_cuda(data, scale, gs, table, n_chunks, dtype):
    _, _, b, h, t, half_d = data.shape
    out_k = torch.empty((b, n_chunks * t, h, 2 * half_d), dtype=dtype, device=data.device)
    out_v = torch.empty_like(out_k)
    cuda_extension()
    torch.ops.longlive_kernels.kv_cache_dequantize_cuda(data, scale, gs, table, out_k, out_v)
    return out_k, out_v


@torch.library.custom_op("longlive_kernels::kv_cache_dequantize", mutates_args=())
def _dequantize_op(
    data: torch.Tensor,
    scale: torch.Tensor,
    gs: torch.Tensor,
    table: torch.Tensor,
    n_chunks: int,
    dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    run = {"torch": _dequantize_torch, "triton": _dequantize_triton, "cuda": _dequantize_cuda}[backend]
    return run(data, scale, gs, table, n_chunks, dtype)


@_dequantize_op.register_fake
def _(data, scale, gs, table, n_chunks, dtype, backend):
    _, _, b, h, t, half_d = data.shape
    out = data.new_empty((b, n_chunks * t, h, 2 * half_d), dtype=dtype)
    return out, torch.empty_like(out)


@torch.library.custom_op("longlive_kernels::kv_cache_dequantize_into", mutates_args=("out_k", "out_v"))
def _dequantize_into_op(
    data: torch.Tensor,
    scale: torch.Tensor,
    gs: torch.Tensor,
    table: torch.Tensor,
    out_k: torch.Tensor,
    out_v: torch.Tensor,
    backend: str,
) -> None:
    n_chunks = out_k.shape[1] // data.shape[4]
    if backend == "triton" or (backend == "cuda" and not (out_k.is_contiguous() and out_v.is_contiguous())):
        _dequantize_triton(data, scale, gs, table, n_chunks, out_k.dtype, out_k, out_v)  # (strided outputs)
        return
    if backend == "cuda":
        cuda_extension()
        torch.ops.longlive_kernels.kv_cache_dequantize_cuda(data, scale, gs, table, out_k, out_v)
        return
    k, v = _dequantize_torch(data, scale, gs, table, n_chunks, out_k.dtype)
    out_k.copy_(k)
    out_v.copy_(v)


@_dequantize_into_op.register_fake
def _(data, scale, gs, table, out_k, out_v, backend):
    return None
