"""Attention of the current chunk over an :class:`FP4KVCache`: ``fp4_kv_attention``.

The portable kernel (``fp4_kv_attention_triton.py``) is a flash-attention forward whose K/V tiles
are read from the FP4 slots and decoded in registers: the BF16 window never exists in device memory
(LongLive instead dequantizes the whole window to BF16 before every attention call; spec §3.5,
``nvfp4-hopper.md`` §4.1). Its 16-bit path is within 2× of BF16 SDPA's error. ``compute="fp8"`` runs
Q, K, P, V in FP8 E4M3; its error is the FP8 rounding itself (~5% rel. on random data, like an ideal
per-tensor FP8 emulation).

Hopper fast path (``fp4_kv_attention_hopper.py``): on sm_90 the ``compute="bf16"`` call with FP4
storage, head_dim 128, bf16 q, ``chunk_tokens % 128 == 0`` (and a current chunk with ``Lc % 128 == 0``
whose tokens have one row stride, e.g. contiguous or sliced from a fused QKV tensor) runs a Gluon
FA3-style kernel instead (a producer warpgroup decodes each K/V tile once into fp16 shared memory; two
consumer warpgroups run asynchronous wgmma and the softmax). It is first run once in a child process
on small problems and compared with the portable kernel (a hang or a wrong result disables it with a
warning; the result is cached on disk). ``LONGLIVE_FP4_KV_GLUON=0`` disables it, ``=1`` skips the
probe. The Triton kernel stays the portable path (CPU interpreter, fp8 compute, BF16 storage, other
shapes).
"""

from __future__ import annotations

import os
import warnings

import torch

from .. import _checks
from .._backend import interpret_mode, resolve_backend
from ..fp4.reference import quantize_fp8_rowwise
from . import fp4_kv_attention_sdpa, fp4_kv_attention_triton
from .kv_cache import FP4KVCache

try:  # the Gluon (sm_90a) kernel; LONGLIVE_FP4_KV_GLUON=0 disables it, =1 skips its probe
    from . import fp4_kv_attention_hopper as _hopper
except ImportError:  # pragma: no cover - Triton without Gluon
    _hopper = None

COMPUTES = ("bf16", "fp8")
_GLUON_MODE = os.environ.get("LONGLIVE_FP4_KV_GLUON", "auto")  # "0" | "1" | "auto" (probe first)
_GLUON_FAILED: set = set()


def _try_gluon(q, view, current_k, current_v, softmax_scale, compute):
    """The Gluon Hopper kernel when it applies and its probe passed, else None."""
    if _hopper is None or _GLUON_MODE == "0" or interpret_mode():
        return None
    if not _hopper.supported(q, view, current_k, current_v, compute):
        return None
    key = (q.device, current_k is not None)
    if key in _GLUON_FAILED or (_GLUON_MODE != "1" and not _hopper.probe_ok(q.device)):
        return None
    try:
        return _hopper.attention(q, view, current_k, current_v, softmax_scale)
    except Exception as exc:  # noqa: BLE001 - a compile/launch failure falls back to the portable kernel
        _GLUON_FAILED.add(key)
        warnings.warn(f"fp4_kv_attention: Hopper Gluon kernel unavailable ({type(exc).__name__}: {exc}); "
                      "using the portable Triton kernel", RuntimeWarning, stacklevel=3)
        return None


def _attention_triton(q, view, current_k, current_v, softmax_scale, compute):
    """The Gluon Hopper kernel where it applies, else the portable Triton kernel."""
    out = _try_gluon(q, view, current_k, current_v, softmax_scale, compute)
    if out is not None:
        return out
    return fp4_kv_attention_triton.attention(q, view, current_k, current_v, softmax_scale, compute)


def _attention_torch(q, cache, layer, current_k, current_v, softmax_scale):
    k, v = cache.dequantize(layer, include_current=current_k is None, backend="torch")
    if current_k is not None:
        k = torch.cat([k.to(q.dtype), current_k], dim=1)
        v = torch.cat([v.to(q.dtype), current_v], dim=1)
    o = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2), scale=softmax_scale
    )
    return o.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def fp4_kv_attention(
    q: torch.Tensor,
    cache: FP4KVCache,
    layer: int,
    *,
    current_k: torch.Tensor | None = None,
    current_v: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    compute: str = "bf16",
    backend: str = "auto",
    out_fp8: bool = False,
    q_amax: float | torch.Tensor | None = None,
    current_k_amax: float | torch.Tensor | None = None,
    q_scale: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over every context chunk of ``cache`` plus the current chunk.

    Parameters
    ----------
    q : torch.Tensor
        [B, Lq, H, D] bf16/fp16 (already RoPE'd), last dim contiguous; B, H, D as the cache. Or
        float8_e4m3fn codes with ``q_scale`` (``compute="fp8"`` only), e.g. written by
        ``apply_rope_3d(q_fp8_scale=...)``: the cuDNN FP8 path then reads them as they are (any
        token/head strides, head-major included); the other paths decode them to bf16 first.
    cache : FP4KVCache
    layer : int
    current_k, current_v : torch.Tensor, optional
        [B, Lc, H, D] in q's dtype: the current chunk's K/V, attended unquantized (LongLive's
        choice). If omitted, the current chunk is read from its slot (written by
        :meth:`FP4KVCache.update`); this is also the fastest path for ``compute="fp8"``.
    softmax_scale : float, optional
        Default ``D ** -0.5``.
    compute : {"bf16", "fp8"}
        16-bit tensor-core MMAs (cache tiles decoded exactly to fp16), or FP8 E4M3 Q/K/P/V on the
        FP8 tensor cores (FP4 storage only). On Hopper with ``nvidia-cudnn-frontend`` installed,
        ``"fp8"`` with backend ``"auto"``/``"sdpa"`` decodes the window into an FP8 workspace and runs
        cuDNN's FP8 SDPA (1.67× cuDNN BF16 on an H100; O rel. error ~6-10 %, :mod:`fp8_sdpa`), the
        current chunk quantized too; otherwise the Triton kernel (cache tiles in FP8, the current chunk
        16-bit).
    backend : {"auto", "sdpa", "triton", "torch"}
        ``"sdpa"`` decodes the window with the cache's decode kernel into a workspace reused by every
        layer, then runs torch SDPA with cuDNN attention first (``fp4_kv_attention_sdpa``;
        ``compute="bf16"`` only). ``"triton"``: the fused kernel that decodes K/V tiles in
        registers — on an H100/H200 the Gluon kernel of ``fp4_kv_attention_hopper`` when it applies
        (see the module docstring), else the portable Triton kernel. ``"torch"`` dequantizes the
        window with plain torch ops and calls SDPA (LongLive's way; ignores ``compute``). ``"auto"``:
        ``"sdpa"`` on Hopper GPUs for ``compute="bf16"`` (measured 2× the fused kernel there,
        bench/RESULTS.md), ``"triton"`` on other GPUs, ``"torch"`` on the CPU.
    out_fp8 : bool
        Return O as float8_e4m3fn codes with one fp32 scale, for an FP8 consumer (the output
        projection). On the cuDNN FP8 path these are cuDNN's own E4M3 output (no conversion pass and
        no second rounding); elsewhere the 16-bit output quantized per tensor (amax/448).
    q_amax, current_k_amax : float or torch.Tensor, optional
        Upper bounds of max|q| and max|current_k| that the caller knows without reading the tensors
        (a positive finite float, or a one-element floating tensor on q's device). Used by the cuDNN FP8
        path only: the per-tensor scale becomes ``bound / 448`` and that tensor's amax pass (~18 µs
        for the 5B chunk on an H100) is skipped. A bound below the true amax saturates the largest
        values to ±448 codes; a loose one costs precision only where values fall under E4M3's
        normal range (2⁻⁶ of the scale). The DiT passes its qk-RMSNorm's bound
        (``longlive.model.blocks.RMSNorm.amax_bound``).
    q_scale : torch.Tensor, optional
        [1] fp32 on q's device: q ≈ codes · q_scale. Required for, and only for, an FP8 q.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        [B, Lq, H, D] in q's dtype (for an FP8 q: current_k's dtype, or bf16). Keys:
        ``cache.context_chunks()`` in attention order, then the current chunk; no mask (bidirectional within the chunk). With ``out_fp8``: ``(codes, scale)``,
        float8_e4m3fn [B, Lq, H, D] and [1] fp32, O ≈ codes·scale; the 16-bit output of the same
        call is ``(codes.float() · scale)`` rounded once to q's dtype on the cuDNN FP8 path.

    Raises
    ------
    TypeError
        q not bf16/fp16/float8_e4m3fn, current K/V of another dtype (not bf16/fp16 for an FP8 q),
        ``cache`` not an FP4KVCache, ``q_scale`` not fp32.
    ValueError
        A bound (``q_amax``, ``current_k_amax``) that is not positive and finite, or a bound tensor
        with more than one element or on another device.
        Shape/head/head_dim/batch mismatch, only one of current_k/current_v, no current chunk
        while current_k is omitted, layer out of range, bad ``compute``/``backend``,
        ``compute="fp8"`` with BF16 storage or with ``backend="sdpa"``, head_dim not in {64, 128}
        for the Triton kernel; an FP8 q without ``q_scale`` or with ``compute="bf16"`` or ``q_amax``,
        ``q_scale`` with a 16-bit q or of more than one element.
    """
    if not isinstance(cache, FP4KVCache):
        raise TypeError(f"cache must be an FP4KVCache, got {type(cache).__name__}")
    _checks.check_dtype("q", q, (torch.bfloat16, torch.float16, torch.float8_e4m3fn))
    out_dtype = _check_q_scale(q, q_scale, compute, q_amax, current_k)
    _checks.check_ndim("q", q, 4)
    _checks.check_nonempty("q", q)
    _checks.check_last_dim_contiguous("q", q)
    b, _, h, d = q.shape
    if (b, h, d) != (cache.batch_size, cache.num_heads, cache.head_dim):
        raise ValueError(f"q [B, Lq, H, D] = {list(q.shape)} does not match the cache (B={cache.batch_size}, "
                         f"H={cache.num_heads}, D={cache.head_dim})")
    if q.device != cache.device:
        raise ValueError(f"q is on {q.device}, the cache on {cache.device}")
    cache._check_layer(layer)
    _checks.check_choice("compute", compute, COMPUTES)
    if (current_k is None) != (current_v is None):
        raise ValueError("pass both current_k and current_v, or neither")
    if current_k is not None:
        for name, x in (("current_k", current_k), ("current_v", current_v)):
            _checks.check_tensor(name, x)
            if x.dtype != out_dtype:
                raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}" if q_scale is None else
                                f"{name} must be bf16 or fp16 (q is FP8), got {x.dtype}")
            _checks.check_ndim(name, x, 4)
            if x.shape[0] != b or x.shape[2:] != q.shape[2:] or x.shape[1] == 0:
                raise ValueError(f"{name} must be [B, Lc, H, D] with B, H, D of q {list(q.shape)}, "
                                 f"got {list(x.shape)}")
            _checks.check_last_dim_contiguous(name, x)
            if x.device != q.device:
                raise ValueError(f"{name} is on {x.device}, q on {q.device}")
        if current_k.stride() != current_v.stride():
            current_k, current_v = current_k.contiguous(), current_v.contiguous()
    elif cache.current_chunk is None:
        raise ValueError("no current chunk: call cache.start_chunk() and cache.update(), or pass current_k/v")
    if compute == "fp8" and cache.storage != "fp4":
        raise ValueError("compute='fp8' needs storage='fp4'")
    _checks.check_positive_bound("q_amax", q_amax, q.device)
    _checks.check_positive_bound("current_k_amax", current_k_amax, q.device)
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    if compute == "fp8" and backend in ("auto", "sdpa") and q.is_cuda:
        from .fp8_sdpa import cudnn_fp8_sdpa_available

        if cudnn_fp8_sdpa_available(q.device):
            return fp4_kv_attention_sdpa.attention_fp8(q, cache, layer, current_k, current_v, scale, out_fp8,
                                                       q_amax=q_amax, k_amax=current_k_amax, q_scale=q_scale,
                                                       out_dtype=out_dtype)
        _warn_slow_fp8(q.device)
    if q_scale is not None:  # the FP8 kernels below take 16-bit q
        q = (q.float() * q_scale.reshape(())).to(out_dtype)
    o = _attention_16bit_out(q, cache, layer, current_k, current_v, scale, compute, backend)
    return _per_tensor_fp8(o) if out_fp8 else o


_WARNED_SLOW_FP8: set = set()


def _warn_slow_fp8(device: torch.device) -> None:
    """Once per device: on Hopper without cuDNN's FP8 attention, compute="fp8" takes the portable Triton
    FP8 kernel, 8.7 ms per 5B call on an H100 against ~3.8 ms for compute="bf16" (RESULTS.md, 27th
    session). The ``Pipeline`` switches to BF16 itself; direct callers are told here."""
    if device.type != "cuda" or device in _WARNED_SLOW_FP8:
        return
    if torch.cuda.get_device_capability(device)[0] != 9:
        return
    _WARNED_SLOW_FP8.add(device)
    warnings.warn("fp4_kv_attention(compute='fp8') on Hopper without the nvidia-cudnn-frontend package runs the "
                  "portable Triton FP8 kernel, ~2.3x slower than compute='bf16'; install it (pip install "
                  "longlive[fp8-attention]) for cuDNN's FP8 attention, ~1.4x faster than BF16", RuntimeWarning,
                  stacklevel=3)


def _check_q_scale(q, q_scale, compute, q_amax, current_k) -> torch.dtype:
    """Check an FP8 q's arguments; returns the output dtype (q's, or for an FP8 q current_k's or bf16)."""
    if q.dtype != torch.float8_e4m3fn:
        if q_scale is not None:
            raise ValueError(f"q_scale is for an FP8 q (float8_e4m3fn codes), q is {q.dtype}")
        return q.dtype
    if q_scale is None:
        raise ValueError("q is float8_e4m3fn: pass its per-tensor scale q_scale ([1] fp32, q ≈ codes · q_scale)")
    _checks.check_scale_tensor("q_scale", q_scale, "q", q)
    if compute != "fp8":
        raise ValueError(f"an FP8 q needs compute='fp8', got compute={compute!r}")
    if q_amax is not None:
        raise ValueError("q_amax bounds a 16-bit q; an FP8 q comes with its q_scale")
    if isinstance(current_k, torch.Tensor) and current_k.dtype in (torch.bfloat16, torch.float16):
        return current_k.dtype
    return torch.bfloat16


def _per_tensor_fp8(o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 codes of o / s, [1] s): ``quantize_fp8_rowwise`` with the whole tensor as one row
    (s = amax|o|/448 correctly rounded, 1 for an all-zero o)."""
    codes, s = quantize_fp8_rowwise(o.reshape(1, -1))
    return codes.view(o.shape), s


def _attention_16bit_out(q, cache, layer, current_k, current_v, scale, compute, backend) -> torch.Tensor:
    """The non-cuDNN-FP8 paths of :func:`fp4_kv_attention` (inputs already checked)."""
    d = q.shape[-1]
    if backend == "sdpa" or (backend == "auto" and compute == "bf16" and q.is_cuda
                             and torch.cuda.get_device_capability(q.device)[0] == 9):
        if compute != "bf16":
            raise ValueError("backend='sdpa' with compute='fp8' needs a Hopper GPU and the nvidia-cudnn-frontend "
                             "package (cuDNN FP8 SDPA); use compute='bf16' or backend='triton'")
        return fp4_kv_attention_sdpa.attention(q, cache, layer, current_k, current_v, scale)
    supported = ("triton", "torch") if d in (64, 128) else ("torch",)
    be = resolve_backend(backend, q.device, op="fp4_kv_attention", supported=supported, prefer=("triton",))
    if be == "torch":
        return _attention_torch(q, cache, layer, current_k, current_v, scale)
    return _attention_triton(q, cache.layer_view(layer), current_k, current_v, scale, compute)
