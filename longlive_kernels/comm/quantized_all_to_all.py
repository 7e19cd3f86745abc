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

This module holds the public function (input checks, scales, buffer and collective). The Triton
kernels are in ``quantized_all_to_all_triton.py``; their launchers and the ``longlive_kernels::``
ops (amax, quantize + pack, unpack) in ``quantized_all_to_all_ops.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .. import _checks
from .._backend import eager_op, resolve_backend
from ..fp4.format import BLOCK_SIZE, SCALE_RULES, NVFP4Tensor
from ..fp4.reference import div_rn
from .quantized_all_to_all_ops import NOT_DELAYED, _amax_op, _pack_op, _unpack_op
from .reference import E4M3_MAX, FORMATS, payload_layout
from .ulysses import (
    AllToAllHandle,
    all_to_all_buffer,
    check_divisible,
    check_ranks_agree,
    group_size,
    normalize_dims,
    tensor_signature,
)

# eager calls skip the dispatcher (same computation; see _backend.direct_call_ok)
_amax, _pack, _unpack = eager_op(_amax_op), eager_op(_pack_op), eager_op(_unpack_op)

OUTPUTS = ("dequantized", "nvfp4", "fp8")
TENSOR_SCALES = ("auto", "group", "per_source")


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


class DelayedScaling:
    """NVFP4 tensor scales for the repeated all-to-alls of one call site (e.g. one layer's K and V),
    derived from amaxes the collective observes itself: no amax pass and no all-reduce after the
    first call (Transformer Engine's delayed-scaling recipe, the amax history carried in the payload).

    Call *t* quantizes with the state's scale. Its unpack takes the amax of what this rank received
    (``reference.observed_amax``: 6 · max block scale · decode scale) and puts it in the header of
    the chunks of call *t + 1*, so every rank learns every rank's observation without a collective.
    The group maximum G that arrives with call *t + 1* sets the scale of call *t + 2* to
    ``G · margin / (6 · 448)`` (the rule's denominator). All ranks hold the same scale, so an
    ``output="nvfp4"`` receiver gets one decode scale. The first call, with no history, takes the
    group amax A in the call (``tensor_scale="group"``); call 2 quantizes with ``A · margin / (6 ·
    448)``.

    Parameters
    ----------
    margin : float
        Headroom over the observed amax (a power of two keeps ``G · margin`` exact). If a later
        chunk's amax exceeds ``margin · G``, its largest blocks saturate at the E4M3 limit (448):
        they are clipped to 6 · 448 · scale, and ``saturated()`` reports it. The clipped blocks'
        observed amax then raises the scale by ``margin`` every two calls until the data fits (a
        jump of 6× with margin 2: four clipped calls).

    Notes
    -----
    One object per call site: it keeps its own wire buffers, and its calls must not overlap (wait
    for an ``async_op`` handle before the next call). A change of shape, dtype, device, group
    size, tensor count or scale rule starts it over. Every call's state lives on the device, so
    calls can be captured in a CUDA graph; capture after a site's first call, or the graph records
    the first call's in-call amax path (still exact, without the saving).
    """

    def __init__(self, margin: float = 2.0):
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not margin >= 1.0:
            raise ValueError(f"margin must be a number >= 1, got {margin!r}")
        self.margin = float(margin)
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next call takes its amax in the call."""
        self.scale = None  # [n] fp32 device: the decode scales the next call quantizes with
        self._key = self._send = self._recv = self._last_gs = None

    def saturated(self) -> torch.Tensor:
        """0-d bool device tensor (no host sync): did the last call, quantizing with a delayed scale,
        receive a block whose scale sat at the E4M3 maximum (its observed amax reached 6 · 448 ·
        decode scale), i.e. possibly clipped data? False after a call that took its amax in the call
        (its largest block fits exactly). Valid between a completed call and the next call."""
        if self._last_gs is None:
            raise RuntimeError("saturated() needs a completed call")
        if not self._last_delayed:
            return torch.zeros((), dtype=torch.bool, device=self._send.device)
        observed = self._send.view(torch.int32)[0, self._amax_words].view(torch.float32)
        return (observed >= torch.cat(self._last_gs) * E4M3_MAX * 6.0).any()  # the observation's rounding order

    def _buffers(self, key, p: int, chunk_bytes: int, amax_words: slice, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The persistent (send, recv) wire buffers (``amax_words``: the header words, in int32 units,
        that carry the observed amaxes); a new key starts the history over."""
        if key != self._key:
            self.reset()
            self._key, self._amax_words = key, amax_words
            self._send = torch.zeros((p, chunk_bytes), dtype=torch.uint8, device=device)  # amax words 0
            self._recv = torch.empty_like(self._send)
        return self._send, self._recv

    _last_gs = None
    _last_delayed = False


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
    delayed: DelayedScaling | None = None,
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
    backend : {"auto", "cuda", "triton", "torch"}
        ``"cuda"``: the CUDA quantize kernel of ``csrc/fp4`` for the NVFP4 pack where each
        destination chunk is a row-strided matrix (B = 1 or contiguous inputs), Triton for the rest. ``"auto"``: CUDA where the extension is built,
        else Triton on GPUs; the reference (``comm/reference.py``) on CPU.
    delayed : DelayedScaling, optional
        NVFP4 tensor scales from the amaxes this call site's earlier calls observed (no amax pass,
        no all-reduce after the first call; see :class:`DelayedScaling`). Excludes
        ``global_scale`` and ``tensor_scale="per_source"``.

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
    if delayed is not None:
        if not isinstance(delayed, DelayedScaling):
            raise TypeError(f"delayed must be a DelayedScaling, got {type(delayed).__name__}")
        if format != "nvfp4" or global_scale is not None or tensor_scale == "per_source":
            given = "given" if global_scale is not None else "None"
            raise ValueError("delayed scaling needs format='nvfp4', no global_scale and tensor_scale 'auto' or "
                             f"'group'; got format={format!r}, global_scale {given}, tensor_scale={tensor_scale!r}")
        tensor_scale = "group"  # the first call's
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
    be = resolve_backend(backend, x0.device, op="quantized_all_to_all", supported=("cuda", "triton", "torch"),
                         prefer=("cuda", "triton"))
    if check_ranks and p > 1:
        opts = [sd, gd, FORMATS.index(format), OUTPUTS.index(output), n, global_scale is None,
                TENSOR_SCALES.index(tensor_scale), tuple(SCALE_RULES).index(scale_rule), delayed is not None]
        check_ranks_agree(group, x0.device, tensor_signature(x0) + opts, "quantized_all_to_all")

    # NVFP4 decode scales: given, delayed, or the amax (one pass per tensor) + optional all-reduce(max).
    layout = payload_layout(format, n, chunk_shape)
    gs_all = [None] * n
    if delayed is not None:
        send, recv = delayed._buffers((p, layout.chunk_bytes, n, x0.dtype, x0.device, scale_rule, sd), p,
                                      layout.chunk_bytes, slice(layout.amax_word(0), layout.amax_word(n - 1) + 1),
                                      x0.device)
        delayed._last_delayed = delayed.scale is not None
    if delayed is not None and delayed.scale is not None:
        gs_all = list(delayed.scale.unbind(0))
    elif format == "nvfp4" and global_scale is not None:
        gs_all = [g.reshape(()).to(torch.float32) for g in gss]
    elif format == "nvfp4":
        amax_bits = torch.zeros(n, dtype=torch.int32, device=x0.device)
        for i, t in enumerate(xs):
            _amax(t, amax_bits, i, be)
        if tensor_scale == "group" and p > 1:
            # fp32 bits of non-negative floats order like int32: MAX of the bits is MAX of the values
            dist.all_reduce(amax_bits, op=dist.ReduceOp.MAX, group=group)
        gs_all = list(div_rn(amax_bits.view(torch.float32), SCALE_RULES[scale_rule][1]).unbind(0))
        if delayed is not None:  # a delayed site's first call: the next calls' scale until observations arrive
            delayed.scale = torch.stack(gs_all) * delayed.margin

    if delayed is None:
        send = torch.empty((p, layout.chunk_bytes), dtype=torch.uint8, device=x0.device)
    for i, t in enumerate(xs):
        _pack(t, send, gs_all[i], p, sd, format, scale_rule, layout.data_offset(i), layout.scale_offset(i),
              layout.header_word(i), be)
    if delayed is None:
        recv = torch.empty_like(send) if p > 1 else send
    elif p == 1:
        recv.copy_(send)  # the unpack raises send's amax words while it reads recv's
    work = all_to_all_buffer(send, recv, group, async_op) if p > 1 else None

    def finish():
        results = []
        if delayed is not None:
            send.view(torch.int32)[:, delayed._amax_words].zero_()  # the next call's amax words (sent by now)
            delayed._last_gs = [torch.empty(1, dtype=torch.float32, device=x0.device) for _ in range(n)]
        for i, t in enumerate(xs):
            sections = (layout.data_offset(i), layout.scale_offset(i), layout.header_word(i),
                        layout.data_bytes, layout.scale_bytes, be)
            obs = NOT_DELAYED if delayed is None else (
                send, delayed.scale, delayed._last_gs[i], layout.amax_word(i), i, delayed.margin,
                SCALE_RULES[scale_rule][1])
            if output == "dequantized":
                dst = outs[i]
                if dst is None:
                    dst = torch.empty(out_shape, dtype=t.dtype, device=t.device)
                _unpack(recv, dst, None, p, gd, format, True, *sections, *obs)
                results.append(dst)
                continue
            data, sc = _quantized_destination(outs[i], format, out_shape, t.device)
            _unpack(recv, data.view(torch.uint8), sc, p, gd, format, False, *sections, *obs)
            # the decode scale the data was quantized with (delayed: written by the unpack, since the
            # state's own entry already holds the next call's)
            used = gs_all[i] if delayed is None else delayed._last_gs[i]
            if format == "fp8":
                results.append((data, sc))
            elif outs[i] is not None:
                outs[i].global_scale.copy_(used.reshape(outs[i].global_scale.shape))
                results.append(outs[i])
            else:
                gs_out = used.reshape(()) if delayed is not None else used.reshape(()).clone()  # fresh per call
                results.append(NVFP4Tensor(data=data, scale=sc, global_scale=gs_out, shape=torch.Size(out_shape),
                                           dtype=t.dtype, scale_rule=scale_rule))
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
