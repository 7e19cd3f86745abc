"""Quantized Ulysses all-to-all: ``quantized_all_to_all`` (NVFP4 or per-row FP8).

One Triton kernel per tensor quantizes and packs values + scales for every destination into one
uint8 buffer laid out by destination (wire format: ``comm/reference.py``), one
``all_to_all_single`` moves it, and one Triton kernel per tensor unpacks the received chunks into
the gathered layout: an :class:`~longlive_kernels.fp4.NVFP4Tensor` (to write straight into the FP4
KV cache or feed FP4-KV attention, no BF16 copy), FP8 codes + row scales, or a dequantized tensor.
Several tensors (K and V) share one buffer and one collective.

NVFP4 tensor scale: with ``tensor_scale="group"`` the ranks all-reduce(max) their amax first (a
4-byte-per-tensor collective, as Transformer Engine does before an NVFP4 all-gather), so that the
received tensor has ONE decode scale and is bit-identical to ``quantize_nvfp4`` of the gathered
tensor with that scale; it is also the scale a single-GPU run would pick for the whole chunk
(spec §3.5: one amax per 7040-token × 24-head KV slot). With ``"per_source"`` each rank quantizes
with its own amax and sends it in the chunk header: no extra collective, but only a dense output
can hold P different scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import interpret_mode, resolve_backend
from ..fp4.format import BLOCK_SIZE, SCALE_RULES, NVFP4Tensor
from ..fp4.nvfp4_triton import (
    e2m1_decode,
    e4m3_decode,
    e4m3_rne,
    pack_nibbles,
    unpack_nibbles,
)
from ..fp4.quantize import _quantize_blocks
from ..fp4.reference import div_rn
from . import reference
from .reference import FORMATS, payload_layout
from .ulysses import (
    AllToAllHandle,
    all_to_all_buffer,
    check_divisible,
    check_ranks_agree,
    group_size,
    normalize_dims,
    tensor_signature,
)

OUTPUTS = ("dequantized", "nvfp4", "fp8")
TENSOR_SCALES = ("auto", "group", "per_source")

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _row_coords(r, S, H, Sc, Hc):
    """Row ``r`` of a [B, S, H] row grid → (b, s, h, peer rank j, row inside the [B, Sc, Hc] chunk
    exchanged with j). Exactly one of Sc < S (seq split) or Hc < H (head split) holds."""
    h = r % H
    s = (r // H) % S
    b = r // (H * S)
    j = s // Sc + h // Hc
    crow = (b * Sc + s % Sc) * Hc + h % Hc
    return b, s, h, j, crow


@triton.jit
def _amax_kernel(
    x_ptr,  # [B, S, H, D] float, last dim contiguous
    amax_ptr,  # [1] int32: fp32 bits of max|x| (NaN → +Inf), pre-zeroed, atomic max
    rows,
    S,
    H,
    D,
    stride_b,
    stride_s,
    stride_h,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    h = r % H
    s = (r // H) % S
    b = r // (H * S)
    c = tl.arange(0, BD)
    mask = (r < rows)[:, None] & (c < D)[None, :]
    src = x_ptr + (b * stride_b + s * stride_s + h * stride_h)[:, None] + c[None, :]
    a = tl.abs(tl.load(src, mask=mask, other=0.0).to(tl.float32))
    a = tl.where(a != a, float("inf"), a)
    tl.atomic_max(amax_ptr, tl.max(tl.max(a, axis=1), axis=0).to(tl.int32, bitcast=True))


@triton.jit
def _pack_kernel(
    x_ptr,  # [B, S, H, D] float, last dim contiguous
    buf_ptr,  # [P, chunk_bytes] uint8 out: the wire buffer
    buf32_ptr,  # the same buffer as int32 words [P, chunk_bytes/4] (header, FP8 row scales)
    gs_ptr,  # [1] fp32 NVFP4 decode scale (unused for FP8)
    rows,
    S,
    H,
    D,
    Sc,
    Hc,
    P,
    stride_b,
    stride_s,
    stride_h,
    chunk_bytes,
    data_off,
    scale_off,
    hdr_word,
    FP8: tl.constexpr,
    TARGET: tl.constexpr,
    FOUR_OVER_SIX: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid.to(tl.int64) * BR + tl.arange(0, BR)
    rmask = r < rows
    b, s, h, j, crow = _row_coords(r, S, H, Sc, Hc)
    c = tl.arange(0, BD)
    mask = rmask[:, None] & (c < D)[None, :]
    src = x_ptr + (b * stride_b + s * stride_s + h * stride_h)[:, None] + c[None, :]
    x = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    chunk = j * chunk_bytes
    if FP8:
        a = tl.abs(x)
        a = tl.where(a != a, float("inf"), a)
        amax = tl.max(a, axis=1)  # [BR]
        scale = tl.math.div_rn(amax, 448.0)
        ok = (scale > 0.0) & (scale != float("inf"))
        v = tl.math.div_rn(x, tl.where(ok, scale, 1.0)[:, None])
        _, mag = e4m3_rne(tl.minimum(tl.abs(v), 448.0))
        code = mag | (((v.to(tl.int32, bitcast=True) >> 31) & 1) << 7)
        code = tl.where(ok[:, None], code, 0)
        scale = tl.where(amax == float("inf"), float("nan"), scale)
        tl.store(buf_ptr + (chunk + data_off + crow * D)[:, None] + c[None, :], code.to(tl.uint8), mask=mask)
        word = j * (chunk_bytes // 4) + scale_off // 4 + crow
        tl.store(buf32_ptr + word, scale.to(tl.int32, bitcast=True), mask=rmask)
    else:
        NB: tl.constexpr = BD // 16
        gs = tl.load(gs_ptr)
        xb = tl.reshape(x, (BR, NB, 16))
        a = tl.abs(xb)
        a = tl.where(a != a, float("inf"), a)
        bamax = tl.max(a, axis=2)  # [BR, NB]
        gs_b = tl.zeros_like(bamax) + gs
        poison = (bamax == float("inf")) | (gs_b != gs_b) | (tl.abs(gs_b) == float("inf"))
        zero = bamax == 0.0
        codes, scode = _quantize_blocks(xb, bamax, gs, xb, poison, zero, TARGET, FOUR_OVER_SIX, False, BR, NB,
                                        False)
        packed = pack_nibbles(tl.reshape(codes, (BR, BD)), BR, BD)
        c2 = tl.arange(0, BD // 2)
        dmask = rmask[:, None] & (c2 < D // 2)[None, :]
        tl.store(buf_ptr + (chunk + data_off + crow * (D // 2))[:, None] + c2[None, :], packed, mask=dmask)
        cs = tl.arange(0, NB)
        smask = rmask[:, None] & (cs < D // 16)[None, :]
        tl.store(buf_ptr + (chunk + scale_off + crow * (D // 16))[:, None] + cs[None, :], scode.to(tl.uint8),
                 mask=smask)
        if pid == 0:
            for jj in range(P):
                tl.store(buf32_ptr + jj * (chunk_bytes // 4) + hdr_word, gs.to(tl.int32, bitcast=True))


@triton.jit
def _unpack_kernel(
    buf_ptr,  # [P, chunk_bytes] uint8: the received wire buffer (chunk j from rank j)
    buf32_ptr,  # the same buffer as int32 words
    out_ptr,  # DEQUANT: [B, So, Ho, D] float; else NVFP4 data [B, So, Ho, D/2] / FP8 codes [.., D] uint8
    out_scale_ptr,  # NVFP4 scales [B, So, Ho, D/16] uint8 / FP8 scales [B, So, Ho, 1] int32 (not DEQUANT)
    rows,
    So,
    Ho,
    D,
    Sc,
    Hc,
    ostride_b,
    ostride_s,
    ostride_h,
    sstride_b,
    sstride_s,
    sstride_h,
    chunk_bytes,
    data_off,
    scale_off,
    hdr_word,
    FP8: tl.constexpr,
    DEQUANT: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = r < rows
    b, s, h, j, crow = _row_coords(r, So, Ho, Sc, Hc)
    chunk = j * chunk_bytes
    dst = b * ostride_b + s * ostride_s + h * ostride_h
    sdst = b * sstride_b + s * sstride_s + h * sstride_h
    if FP8:
        c = tl.arange(0, BD)
        mask = rmask[:, None] & (c < D)[None, :]
        codes = tl.load(buf_ptr + (chunk + data_off + crow * D)[:, None] + c[None, :], mask=mask, other=0)
        sbits = tl.load(buf32_ptr + j * (chunk_bytes // 4) + scale_off // 4 + crow, mask=rmask, other=0)
        if DEQUANT:
            val = e4m3_decode(codes.to(tl.int32)) * sbits.to(tl.float32, bitcast=True)[:, None]
            tl.store(out_ptr + dst[:, None] + c[None, :], val.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + dst[:, None] + c[None, :], codes, mask=mask)
            tl.store(out_scale_ptr + sdst, sbits, mask=rmask)
    else:
        NB: tl.constexpr = BD // 16
        c2 = tl.arange(0, BD // 2)
        dmask = rmask[:, None] & (c2 < D // 2)[None, :]
        packed = tl.load(buf_ptr + (chunk + data_off + crow * (D // 2))[:, None] + c2[None, :], mask=dmask,
                         other=0)
        cs = tl.arange(0, NB)
        smask = rmask[:, None] & (cs < D // 16)[None, :]
        scode = tl.load(buf_ptr + (chunk + scale_off + crow * (D // 16))[:, None] + cs[None, :], mask=smask,
                        other=0)
        if DEQUANT:
            gs = tl.load(buf32_ptr + j * (chunk_bytes // 4) + hdr_word, mask=rmask, other=0)
            gs = gs.to(tl.float32, bitcast=True)
            vals = tl.reshape(e2m1_decode(unpack_nibbles(packed, BR, BD // 2)), (BR, NB, 16))
            x = (vals * e4m3_decode(scode.to(tl.int32))[:, :, None]) * gs[:, None, None]
            c = tl.arange(0, BD)
            mask = rmask[:, None] & (c < D)[None, :]
            x = tl.reshape(x, (BR, BD)).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + dst[:, None] + c[None, :], x, mask=mask)
        else:
            tl.store(out_ptr + dst[:, None] + c2[None, :], packed, mask=dmask)
            tl.store(out_scale_ptr + sdst[:, None] + cs[None, :], scode, mask=smask)


def _tile(d: int, four_over_six: bool = False) -> tuple[int, int]:
    """(BR, BD): whole rows per program, ~4K elements (2K for Four Over Six's two candidates)."""
    bd = max(16, triton.next_power_of_2(d))
    budget = 2048 if four_over_six else 4096
    br = 16 if interpret_mode() else max(1, min(64, budget // bd))
    return br, bd


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _amax_triton(x, amax_bits, index):
    b, s, h, d = x.shape
    rows = b * s * h
    br, bd = _tile(d)
    _amax_kernel[(triton.cdiv(rows, br),)](x, amax_bits[index:], rows, s, h, d, *_strides3(x), BR=br, BD=bd,
                                           num_warps=4)


def _pack_triton(x, buf, gs, world_size, scatter_dim, fmt, scale_rule, data_off, scale_off, hdr_word):
    b, s, h, d = x.shape
    rows = b * s * h
    sc, hc = (s // world_size, h) if scatter_dim == 1 else (s, h // world_size)
    four6 = fmt == "nvfp4" and scale_rule == "four_over_six"
    br, bd = _tile(d, four6)
    chunk_bytes = buf.shape[1]
    _pack_kernel[(triton.cdiv(rows, br),)](
        x, buf, buf.view(torch.int32), gs if gs is not None else buf, rows, s, h, d, sc, hc, world_size,
        *_strides3(x), chunk_bytes, data_off, scale_off, hdr_word,
        FP8=fmt == "fp8", TARGET=SCALE_RULES[scale_rule][0], FOUR_OVER_SIX=four6, BR=br, BD=bd,
        num_warps=4, enable_fp_fusion=False,
    )


def _unpack_triton(buf, out, out_scale, world_size, gather_dim, fmt, dequant, d, data_off, scale_off,
                   hdr_word):
    b, so, ho = out.shape[:3]
    rows = b * so * ho
    sc, hc = (so // world_size, ho) if gather_dim == 1 else (so, ho // world_size)
    br, bd = _tile(d)
    o = out if dequant else out.view(torch.uint8)
    osc = o if dequant else (out_scale.view(torch.uint8) if fmt == "nvfp4" else out_scale.view(torch.int32))
    _unpack_kernel[(triton.cdiv(rows, br),)](
        buf, buf.view(torch.int32), o, osc, rows, so, ho, d, sc, hc, *_strides3(o), *_strides3(osc),
        buf.shape[1], data_off, scale_off, hdr_word,
        FP8=fmt == "fp8", DEQUANT=dequant, BR=br, BD=bd, num_warps=4, enable_fp_fusion=False,
    )


# ---------------------------------------------------------------------------------------------
# torch.library ops (pack/unpack mutate the wire buffer / the destinations)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("longlive_kernels::a2a_amax", mutates_args=("amax_bits",))
def _amax_op(x: torch.Tensor, amax_bits: torch.Tensor, index: int, backend: str) -> None:
    if backend == "torch":
        bits = reference.nvfp4_amax(x).reshape(1).view(torch.int32)
        amax_bits[index:index + 1] = torch.maximum(amax_bits[index:index + 1], bits)
    else:
        _amax_triton(x, amax_bits, index)


@_amax_op.register_fake
def _(x, amax_bits, index, backend):
    return None


@torch.library.custom_op("longlive_kernels::a2a_quantize_pack", mutates_args=("buf",))
def _pack_op(
    x: torch.Tensor,
    buf: torch.Tensor,
    global_scale: torch.Tensor | None,
    world_size: int,
    scatter_dim: int,
    fmt: str,
    scale_rule: str,
    data_off: int,
    scale_off: int,
    hdr_word: int,
    backend: str,
) -> None:
    if backend != "torch":
        _pack_triton(x, buf, global_scale, world_size, scatter_dim, fmt, scale_rule, data_off, scale_off,
                     hdr_word)
        return
    data, scales = reference.pack_tensor(x, world_size, scatter_dim, fmt=fmt, global_scale=global_scale,
                                         scale_rule=scale_rule)
    buf[:, data_off:data_off + data.shape[1]] = data
    buf[:, scale_off:scale_off + scales.shape[1]] = scales
    if fmt == "nvfp4":
        gs_bits = global_scale.reshape(1).to(torch.float32).view(torch.uint8)
        buf[:, 4 * hdr_word:4 * hdr_word + 4] = gs_bits


@_pack_op.register_fake
def _(x, buf, global_scale, world_size, scatter_dim, fmt, scale_rule, data_off, scale_off, hdr_word, backend):
    return None


@torch.library.custom_op("longlive_kernels::a2a_unpack", mutates_args=("out", "out_scale"))
def _unpack_op(
    buf: torch.Tensor,
    out: torch.Tensor,
    out_scale: torch.Tensor | None,
    world_size: int,
    gather_dim: int,
    fmt: str,
    dequant: bool,
    data_off: int,
    scale_off: int,
    hdr_word: int,
    data_bytes: int,
    scale_bytes: int,
    backend: str,
) -> None:
    d = out.shape[-1] if (dequant or fmt == "fp8") else out.shape[-1] * 2
    if backend != "torch":
        _unpack_triton(buf, out, out_scale, world_size, gather_dim, fmt, dequant, d, data_off, scale_off,
                       hdr_word)
        return
    chunk_shape = [*out.shape[:-1], d]
    chunk_shape[gather_dim] //= world_size
    gs = buf[:, 4 * hdr_word:4 * hdr_word + 4].contiguous().view(torch.float32).reshape(-1)
    res = reference.unpack_tensor(
        buf[:, data_off:data_off + data_bytes], buf[:, scale_off:scale_off + scale_bytes],
        gs if fmt == "nvfp4" else None, chunk_shape, gather_dim, fmt=fmt, dequantize=dequant, dtype=out.dtype,
    )
    if dequant:
        out.copy_(res)
    else:
        out.copy_(res[0].view(out.dtype))
        out_scale.copy_(res[1].view(out_scale.dtype))


@_unpack_op.register_fake
def _(buf, out, out_scale, world_size, gather_dim, fmt, dequant, data_off, scale_off, hdr_word, data_bytes,
      scale_bytes, backend):
    return None


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def _as_list(name: str, v, n: int, single: bool) -> list:
    if v is None:
        return [None] * n
    if single:
        return [v]
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise TypeError(f"{name} must be a sequence of {n} items (one per input tensor), "
                        f"got {type(v).__name__}")
    return list(v)


def _check_out(o, i: int, shape: list[int], fmt: str, output: str, device: torch.device) -> None:
    name = f"out[{i}]"
    if output == "dequantized":
        _checks.check_dtype(name, o)
        if list(o.shape) != shape or o.device != device:
            raise ValueError(f"{name} must be {tuple(shape)} on {device}, got {tuple(o.shape)} on {o.device}")
        _checks.check_last_dim_contiguous(name, o)
        return
    if output == "nvfp4":
        if not isinstance(o, NVFP4Tensor) or o.swizzled:
            raise TypeError(f"{name} must be an NVFP4Tensor with linear scales, got {type(o).__name__}")
        data, sc = o.data, o.scale
        want = ([*shape[:-1], shape[-1] // 2], [*shape[:-1], shape[-1] // BLOCK_SIZE])
        dts = (torch.uint8, torch.float8_e4m3fn)
    else:
        if not isinstance(o, (tuple, list)) or len(o) != 2:
            raise TypeError(f"{name} must be a (codes, scale) pair, got {type(o).__name__}")
        data, sc = o
        want = (shape, [*shape[:-1], 1])
        dts = (torch.float8_e4m3fn, torch.float32)
    for nm, t, w, dt in ((f"{name}.data", data, want[0], dts[0]), (f"{name}.scale", sc, want[1], dts[1])):
        _checks.check_tensor(nm, t)
        if list(t.shape) != w or t.dtype != dt or t.device != device:
            raise ValueError(f"{nm} must be {tuple(w)} {dt} on {device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
        _checks.check_last_dim_contiguous(nm, t)


def quantized_all_to_all(
    x: torch.Tensor | Sequence[torch.Tensor],
    group: dist.ProcessGroup | None = None,
    *,
    scatter_dim: int,
    gather_dim: int,
    format: str = "nvfp4",  # the name the API promises, though it shadows the builtin
    output: str = "dequantized",
    global_scale: torch.Tensor | Sequence[torch.Tensor] | None = None,
    tensor_scale: str = "auto",
    scale_rule: str = "static6",
    out=None,
    async_op: bool = False,
    check_ranks: bool = False,
    backend: str = "auto",
):
    """Ulysses all-to-all of quantized data: quantize + pack at the source (one kernel), one
    ``all_to_all_single`` of a uint8 buffer, unpack at the destination (one kernel).

    Parameters
    ----------
    x : torch.Tensor or sequence of torch.Tensor
        [B, S, H, D] bf16/fp16/fp32, last dim contiguous (other strides free, e.g. views of a
        fused QKV output). A sequence (e.g. ``(k, v)``) of same-shape tensors shares one buffer,
        one amax all-reduce and one collective. NVFP4 needs D % 16 == 0.
    group : torch.distributed.ProcessGroup, optional
        The sequence-parallel group (default: the default group).
    scatter_dim, gather_dim : {1, 2}
        ``(2, 1)`` seq→head: [B, S/P, H, D] → [B, S, H/P, D]; ``(1, 2)`` head→seq.
    format : {"nvfp4", "fp8"}
        NVFP4: E2M1 + E4M3 scale per 16 values + one fp32 tensor scale, D/2 + D/16 bytes per row
        (3.56× fewer than bf16 at D = 128). FP8: E4M3 + one fp32 scale (amax/448) per
        (token, head) row, D + 4 bytes per row (1.94×).
    output : {"dequantized", "nvfp4", "fp8"}
        ``"dequantized"``: a tensor of ``x``'s dtype. ``"nvfp4"`` (format nvfp4): an
        :class:`NVFP4Tensor` [B, S, H/P, D] with linear scales. ``"fp8"`` (format fp8): a pair
        ``(codes float8_e4m3fn [..., D], scale fp32 [..., 1])``.
    global_scale : torch.Tensor or sequence, optional
        NVFP4 fp32 decode scale(s) to use instead of the amax (skips the amax pass and the
        all-reduce; e.g. the scale of the previous denoising step). For ``output="nvfp4"`` it must
        be the same on every rank (the receiver labels the data with its own value).
    tensor_scale : {"auto", "group", "per_source"}
        NVFP4 scale without ``global_scale``: ``"group"`` = all-reduce(max) of the ranks' amax (the
        only choice for ``output="nvfp4"``); ``"per_source"`` = each rank's own amax, carried in
        the payload, no extra collective. ``"auto"``: group for NVFP4 output, per_source otherwise.
    scale_rule : {"static6", "static4", "four_over_six"}
        NVFP4 block-scale rule (``quantize_nvfp4``); the FP4 KV cache of the paper uses 4/6.
    out : optional
        Destination(s) (same structure as the result), e.g. views into a KV cache: a tensor for
        ``"dequantized"`` (any float dtype, last dim contiguous), an ``NVFP4Tensor`` whose
        ``data``/``scale`` may be strided views, or a ``(codes, scale)`` pair.
    async_op : bool
        Return an :class:`~longlive_kernels.comm.ulysses.AllToAllHandle`; ``wait()`` unpacks.
    check_ranks : bool
        All-gather shapes/options first and raise the same ``ValueError`` on every rank if they
        differ (one tiny collective + host sync; for debugging and first calls).
    backend : {"auto", "triton", "torch"}
        ``"auto"``: Triton on CUDA, the reference (``comm/reference.py``) on CPU.

    Returns
    -------
    Tensor, NVFP4Tensor, (Tensor, Tensor), a list of those for a sequence input, or a handle.

    Raises
    ------
    TypeError
        Bad types (tensors, dtypes, ``out`` structure).
    ValueError
        Not 4-D, dims other than {1, 2}, the scattered dim not divisible by P, D % 16 != 0 for
        NVFP4, inputs of different shapes, bad options, inputs that require grad (no backward:
        use :func:`~longlive_kernels.comm.ulysses_all_to_all` to train), ranks disagreeing
        (``check_ranks``). All raised before any collective.

    Notes
    -----
    Exactness: with ``tensor_scale="group"`` or a shared ``global_scale``, the NVFP4 output is bit
    for bit ``quantize_nvfp4(gathered, global_scale=s, scale_rule=...)`` and the dequantized
    output is its ``dequantize_nvfp4``. NaN/Inf follow ``fp4/reference.py`` (poisoned blocks
    decode to NaN); an FP8 row holding NaN/Inf decodes to NaN.
    """
    xs, single = _validate_inputs(x)
    x0, n, d = xs[0], len(xs), xs[0].shape[-1]
    sd, gd = normalize_dims("x", x0, scatter_dim, gather_dim)
    if {sd, gd} != {1, 2}:
        raise ValueError(f"scatter_dim/gather_dim must be 1 and 2 (seq and heads of [B, S, H, D]), "
                         f"got {sd}, {gd}")
    for name, value, choices in (("format", format, FORMATS), ("output", output, OUTPUTS),
                                 ("tensor_scale", tensor_scale, TENSOR_SCALES),
                                 ("scale_rule", scale_rule, tuple(SCALE_RULES))):
        _checks.check_choice(name, value, choices)
    if output not in ("dequantized", format):
        raise ValueError(f"output={output!r} needs format={output!r}, got format={format!r}")
    if format == "nvfp4":
        _checks.check_multiple("x.shape[-1]", d, BLOCK_SIZE, "head dim for NVFP4")
    p = group_size(group)
    check_divisible("x", x0, sd, p)
    gss = _as_list("global_scale", global_scale, n, single)
    for i, g in enumerate(gss if global_scale is not None else []):
        _checks.check_tensor(f"global_scale[{i}]", g)
        if g.numel() != 1:
            raise ValueError(f"global_scale must have 1 element, got shape {tuple(g.shape)}")
        _checks.check_same_device(x=x0, global_scale=g)
    if tensor_scale == "auto":
        tensor_scale = "group" if output == "nvfp4" else "per_source"
    if output == "nvfp4" and tensor_scale == "per_source" and global_scale is None:
        raise ValueError("output='nvfp4' needs one tensor scale: use tensor_scale='group' or pass "
                         "global_scale")
    chunk_shape, out_shape = list(x0.shape), list(x0.shape)
    chunk_shape[sd] //= p
    out_shape[sd] //= p
    out_shape[gd] *= p
    outs = _as_list("out", out, n, single)
    for i, o in enumerate(outs):
        if o is not None:
            _check_out(o, i, out_shape, format, output, x0.device)
    be = resolve_backend(backend, x0.device, op="quantized_all_to_all", supported=("triton", "torch"),
                         prefer=("triton",))
    if check_ranks and p > 1:
        opts = [sd, gd, FORMATS.index(format), OUTPUTS.index(output), n, global_scale is None,
                TENSOR_SCALES.index(tensor_scale), tuple(SCALE_RULES).index(scale_rule)]
        check_ranks_agree(group, x0.device, tensor_signature(x0) + opts, "quantized_all_to_all")

    # NVFP4 decode scales: given, or the amax (one pass per tensor) + optional all-reduce(max).
    gs_all = [None] * n
    if format == "nvfp4" and global_scale is not None:
        gs_all = [g.reshape(()).to(torch.float32) for g in gss]
    elif format == "nvfp4":
        amax_bits = torch.zeros(n, dtype=torch.int32, device=x0.device)
        for i, t in enumerate(xs):
            _amax_op(t, amax_bits, i, be)
        if tensor_scale == "group" and p > 1:
            # fp32 bits of non-negative floats order like int32: MAX of the bits is MAX of the values
            dist.all_reduce(amax_bits, op=dist.ReduceOp.MAX, group=group)
        gs_all = list(div_rn(amax_bits.view(torch.float32), SCALE_RULES[scale_rule][1]).unbind(0))

    layout = payload_layout(format, n, chunk_shape)
    send = torch.empty((p, layout.chunk_bytes), dtype=torch.uint8, device=x0.device)
    for i, t in enumerate(xs):
        _pack_op(t, send, gs_all[i], p, sd, format, scale_rule, layout.data_offset(i), layout.scale_offset(i),
                 layout.header_word(i), be)
    recv = torch.empty_like(send) if p > 1 else send
    work = all_to_all_buffer(send, recv, group, async_op) if p > 1 else None

    def finish():
        results = []
        for i, t in enumerate(xs):
            sections = (layout.data_offset(i), layout.scale_offset(i), layout.header_word(i),
                        layout.data_bytes, layout.scale_bytes, be)
            if output == "dequantized":
                dst = outs[i]
                if dst is None:
                    dst = torch.empty(out_shape, dtype=t.dtype, device=t.device)
                _unpack_op(recv, dst, None, p, gd, format, True, *sections)
                results.append(dst)
                continue
            data, sc = _quantized_destination(outs[i], format, out_shape, t.device)
            _unpack_op(recv, data.view(torch.uint8), sc, p, gd, format, False, *sections)
            if format == "fp8":
                results.append((data, sc))
            elif outs[i] is not None:
                outs[i].global_scale.copy_(gs_all[i])
                results.append(outs[i])
            else:
                results.append(NVFP4Tensor(data=data, scale=sc, global_scale=gs_all[i].clone(),
                                           shape=torch.Size(out_shape), dtype=t.dtype, scale_rule=scale_rule))
        return results[0] if single else results

    return AllToAllHandle([work], finish) if async_op else finish()


def _validate_inputs(x) -> tuple[list[torch.Tensor], bool]:
    single = isinstance(x, torch.Tensor)
    xs = [x] if single else list(x) if isinstance(x, (list, tuple)) else None
    if not xs:
        raise TypeError(f"x must be a tensor or a non-empty sequence of tensors, got {type(x).__name__}")
    for i, t in enumerate(xs):
        name = "x" if single else f"x[{i}]"
        _checks.check_dtype(name, t)
        _checks.check_nonempty(name, t)
        _checks.check_ndim(name, t, 4)
        _checks.check_last_dim_contiguous(name, t)
        if t.shape != xs[0].shape or t.dtype != xs[0].dtype or t.device != xs[0].device:
            raise ValueError(f"all inputs must share shape, dtype and device; x[0] is {tuple(xs[0].shape)} "
                             f"{xs[0].dtype} on {xs[0].device}, {name} is {tuple(t.shape)} {t.dtype} "
                             f"on {t.device}")
        if torch.is_grad_enabled() and t.requires_grad:
            raise ValueError("quantized_all_to_all has no backward; run it under torch.no_grad() or use "
                             "ulysses_all_to_all for training")
    return xs, single


def _quantized_destination(o, fmt: str, shape: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(data, scale) to unpack into: the caller's ``out`` or fresh tensors in the gathered layout."""
    if o is not None:
        return (o.data, o.scale) if fmt == "nvfp4" else tuple(o)
    lead, d = shape[:-1], shape[-1]
    if fmt == "nvfp4":
        return (torch.empty([*lead, d // 2], dtype=torch.uint8, device=device),
                torch.empty([*lead, d // BLOCK_SIZE], dtype=torch.float8_e4m3fn, device=device))
    return (torch.empty(shape, dtype=torch.float8_e4m3fn, device=device),
            torch.empty([*lead, 1], dtype=torch.float32, device=device))


register_aot(
    _amax_kernel,
    signature={"x_ptr": "*bf16", "amax_ptr": "*i32", "rows": "i32", "S": "i32", "H": "i32", "D": "i32",
               "stride_b": "i64", "stride_s": "i64", "stride_h": "i64"},
    constexprs={"BR": 32, "BD": 128},
)
for _fp8, _four6 in [(False, False), (False, True), (True, False)]:
    register_aot(
        _pack_kernel,
        signature={"x_ptr": "*bf16", "buf_ptr": "*u8", "buf32_ptr": "*i32", "gs_ptr": "*fp32", "rows": "i32",
                   "S": "i32", "H": "i32", "D": "i32", "Sc": "i32", "Hc": "i32", "P": "i32",
                   "stride_b": "i64", "stride_s": "i64", "stride_h": "i64", "chunk_bytes": "i64",
                   "data_off": "i64", "scale_off": "i64", "hdr_word": "i32"},
        constexprs={"FP8": _fp8, "TARGET": 6.0, "FOUR_OVER_SIX": _four6, "BR": 16 if _four6 else 32,
                    "BD": 128},
        options={"enable_fp_fusion": False},
    )
for _fp8, _deq, _odt in [(False, True, "*bf16"), (False, False, "*u8"), (True, True, "*bf16"),
                         (True, False, "*u8")]:
    register_aot(
        _unpack_kernel,
        signature={"buf_ptr": "*u8", "buf32_ptr": "*i32", "out_ptr": _odt,
                   "out_scale_ptr": "*i32" if _fp8 else "*u8", "rows": "i32", "So": "i32", "Ho": "i32",
                   "D": "i32", "Sc": "i32", "Hc": "i32", "ostride_b": "i64", "ostride_s": "i64",
                   "ostride_h": "i64", "sstride_b": "i64", "sstride_s": "i64", "sstride_h": "i64",
                   "chunk_bytes": "i64", "data_off": "i64", "scale_off": "i64", "hdr_word": "i32"},
        constexprs={"FP8": _fp8, "DEQUANT": _deq, "BR": 32, "BD": 128},
        options={"enable_fp_fusion": False},
    )
