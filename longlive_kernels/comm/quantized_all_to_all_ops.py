"""Launchers of the quantized all-to-all Triton kernels (``quantized_all_to_all_triton.py``) and the
``longlive_kernels::`` ``torch.library`` ops behind ``quantized_all_to_all.py`` (amax, quantize +
pack into the wire buffer, unpack into the destinations; fake registrations); each op runs the
Triton launcher or ``comm/reference.py`` as its resolved ``backend`` argument says. With
``backend="cuda"`` the NVFP4 pack runs the CUDA quantize kernel of ``csrc/fp4`` once per
destination chunk where the chunk is a [rows, K] matrix of one row stride (Triton otherwise):
same bytes, 18.8 vs 23.6 µs for one 5B chunk's K on an H200. The unpack stays Triton (the CUDA
dequantize per chunk measured the same 18 µs).
"""

from __future__ import annotations

import torch
import triton

from .._backend import cuda_extension, interpret_mode
from ..fp4.format import SCALE_RULES
from . import reference
from .quantized_all_to_all_triton import _amax_kernel, _pack_kernel, _unpack_kernel

# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


_ELEMENTS = 4096  # per program (half for Four Over Six's two candidates); tools/probe_a2a_kernels.py sweeps
_NUM_WARPS = 4
_MAX_ROWS = 2**31 - 2**16  # the kernels index rows in int32


def _tile(d: int, four_over_six: bool = False) -> tuple[int, int]:
    """(BR, BD): whole rows per program, ~``_ELEMENTS`` elements."""
    bd = max(16, triton.next_power_of_2(d))
    budget = _ELEMENTS // 2 if four_over_six else _ELEMENTS
    br = 16 if interpret_mode() else max(1, min(128, budget // bd))
    return br, bd


def _check_rows(rows: int) -> None:
    if rows > _MAX_ROWS:
        raise ValueError(f"quantized_all_to_all: {rows} rows of [B, S, H] exceed the kernels' int32 row index "
                         f"(at most {_MAX_ROWS})")


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


_RULE_IDS = {"static6": 0, "static4": 1, "four_over_six": 2}  # csrc/fp4 scale_rule numbering


def _chunk_matrices(t: torch.Tensor, p: int, split_dim: int):
    """The P destination chunks of ``t`` [B, S, H, D] split along ``split_dim`` as [rows, K] views
    of one row stride (rows = (b, s), K = heads·D), or None where they are not such matrices."""
    b, s, h, d = t.shape
    if t.stride(3) != 1 or t.stride(2) != d or (b > 1 and (split_dim == 1 or t.stride(0) != s * t.stride(1))):
        return None
    if split_dim == 1:
        sc = s // p
        return [t[:, j * sc:(j + 1) * sc].as_strided((b * sc, h * d), (t.stride(1), 1)) for j in range(p)]
    hc = h // p
    return [t[:, :, j * hc:(j + 1) * hc].as_strided((b * s, hc * d), (t.stride(1), 1)) for j in range(p)]


def _pack_cuda(x, buf, gs, world_size, scatter_dim, scale_rule, data_off, scale_off, hdr_word) -> bool:
    """NVFP4 pack through the CUDA quantize kernel, one launch per destination; False where the
    chunks are not row-strided matrices (the caller falls back to Triton)."""
    mats = _chunk_matrices(x, world_size, scatter_dim)
    if mats is None or gs is None or (x.stride(1) * x.element_size()) % 16:
        return False
    rows, k = mats[0].shape
    amax = torch.empty(1, dtype=torch.int32, device=x.device)  # unused: the scale is given
    cuda_extension()
    for j, m in enumerate(mats):
        torch.ops.longlive_kernels.nvfp4_quantize_cuda(
            m, buf[j, data_off:data_off + rows * k // 2], buf[j, scale_off:scale_off + rows * k // 16],
            buf[j, 4 * hdr_word:4 * hdr_word + 4].view(torch.float32), gs.reshape(1), amax,
            _RULE_IDS[scale_rule], False, 0, -1, False, True,
        )
    return True


def _amax_programs(x: torch.Tensor) -> int:
    """Programs of the amax grid: 4 per SM (each strides over the row tiles)."""
    return 4 * torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 64


def _amax_triton(x, amax_bits, index):
    b, s, h, d = x.shape
    rows = b * s * h
    _check_rows(rows)
    br, bd = _tile(d)
    programs = min(triton.cdiv(rows, br), _amax_programs(x))
    _amax_kernel[(programs,)](x, amax_bits[index:], rows, s, h, d, *_strides3(x), BR=br, BD=bd, num_warps=4)


def _pack_triton(x, buf, gs, world_size, scatter_dim, fmt, scale_rule, data_off, scale_off, hdr_word):
    b, s, h, d = x.shape
    rows = b * s * h
    _check_rows(rows)
    sc, hc = (s // world_size, h) if scatter_dim == 1 else (s, h // world_size)
    four6 = fmt == "nvfp4" and scale_rule == "four_over_six"
    br, bd = _tile(d, four6)
    chunk_bytes = buf.shape[1]
    _pack_kernel[(triton.cdiv(rows, br),)](
        x, buf, buf.view(torch.int32), gs if gs is not None else buf, rows, s, h, sc, hc, world_size,
        *_strides3(x), chunk_bytes, data_off, scale_off, hdr_word, D=d,
        FP8=fmt == "fp8", TARGET=SCALE_RULES[scale_rule][0], FOUR_OVER_SIX=four6, BR=br, BD=bd,
        num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )


def _unpack_triton(buf, out, out_scale, world_size, gather_dim, fmt, dequant, d, data_off, scale_off,
                   hdr_word, delayed=None):
    b, so, ho = out.shape[:3]
    rows = b * so * ho
    _check_rows(rows)
    sc, hc = (so // world_size, ho) if gather_dim == 1 else (so, ho // world_size)
    br, bd = _tile(d)
    o = out if dequant else out.view(torch.uint8)
    osc = o if dequant else (out_scale.view(torch.uint8) if fmt == "nvfp4" else out_scale.view(torch.int32))
    send, state, out_gs, amax_word, index, margin, den = delayed or (buf, buf, buf, 0, 0, 1.0, 1.0)
    _unpack_kernel[(triton.cdiv(rows, br),)](
        buf, buf.view(torch.int32), o, osc, send.view(torch.int32), state, out_gs, rows, so, ho, sc, hc,
        *_strides3(o), *_strides3(osc), buf.shape[1], data_off, scale_off, hdr_word, amax_word, index, world_size,
        margin, den, D=d, FP8=fmt == "fp8", DEQUANT=dequant, BR=br, BD=bd, OBSERVE=delayed is not None,
        num_warps=_NUM_WARPS, enable_fp_fusion=False,
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
    if backend == "cuda" and fmt == "nvfp4" and _pack_cuda(x, buf, global_scale, world_size, scatter_dim,
                                                            scale_rule, data_off, scale_off, hdr_word):
        return
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


# ``_unpack_op``'s last seven arguments (send, state, out_gs, amax_word, state_index, margin,
# denominator) when the call does not use delayed scaling.
NOT_DELAYED = (None, None, None, 0, 0, 1.0, 1.0)


@torch.library.custom_op("longlive_kernels::a2a_unpack", mutates_args=("out", "out_scale", "send", "state", "out_gs"))
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
    send: torch.Tensor | None,
    state: torch.Tensor | None,
    out_gs: torch.Tensor | None,
    amax_word: int,
    state_index: int,
    margin: float,
    denominator: float,
) -> None:
    """Unpack the received chunks; with ``send`` (NVFP4 delayed scaling, ``DelayedScaling``) also
    raise the next call's amax words in ``send`` by this call's observed amax, update
    ``state[state_index]`` from the amaxes the sources reported, and write the used decode scale
    to ``out_gs``; without it, pass :data:`NOT_DELAYED` for the last seven arguments. They have no
    defaults because torch 2.11's in-place dispatch indexes every mutated argument among the ones
    given (an omitted ``send`` raised IndexError on the GPU)."""
    d = out.shape[-1] if (dequant or fmt == "fp8") else out.shape[-1] * 2
    delayed = None if send is None else (send, state, out_gs, amax_word, state_index, margin, denominator)
    if backend != "torch":
        _unpack_triton(buf, out, out_scale, world_size, gather_dim, fmt, dequant, d, data_off, scale_off,
                       hdr_word, delayed)
        return
    chunk_shape = [*out.shape[:-1], d]
    chunk_shape[gather_dim] //= world_size
    gs = buf[:, 4 * hdr_word:4 * hdr_word + 4].contiguous().view(torch.float32).reshape(-1)
    scales = buf[:, scale_off:scale_off + scale_bytes]
    res = reference.unpack_tensor(
        buf[:, data_off:data_off + data_bytes], scales,
        gs if fmt == "nvfp4" else None, chunk_shape, gather_dim, fmt=fmt, dequantize=dequant, dtype=out.dtype,
    )
    if dequant:
        out.copy_(res)
    else:
        out.copy_(res[0].view(out.dtype))
        out_scale.copy_(res[1].view(out_scale.dtype))
    if delayed is not None:
        words = send.view(torch.int32)[:, amax_word]
        est = reference.observed_amax(scales, gs).reshape(1).view(torch.int32)
        words.copy_(torch.maximum(words, est))
        reported = buf.view(torch.int32)[:, amax_word].view(torch.float32).amax().reshape(1)
        new = reference.div_rn(reported * margin, denominator)
        state[state_index:state_index + 1] = torch.where(reported > 0, new, state[state_index:state_index + 1])
        out_gs.copy_(gs[:1])


@_unpack_op.register_fake
def _(buf, out, out_scale, world_size, gather_dim, fmt, dequant, data_off, scale_off, hdr_word, data_bytes,
      scale_bytes, backend, send, state, out_gs, amax_word, state_index, margin, denominator):
    return None
