"""Plain-PyTorch specification of every op in ``longlive_kernels.comm`` (single process, readable,
slow). Semantics: ``shared/docs/longlive-spec.md`` §5.1 (Ulysses all-to-all), §5.4 (SP inference),
``shared/docs/nvfp4-hopper.md`` §1 (NVFP4) and §5 (quantized collectives).

Ulysses all-to-all over P ranks (rank r holds ``inputs[r]``)::

    out[r] = cat([chunk(inputs[j], P, scatter_dim)[r] for j in range(P)], dim=gather_dim)

seq→head: [B, S/P, H, D] → [B, S, H/P, D] (scatter_dim=2, gather_dim=1); head→seq is the inverse.
The gathered sequence is the concatenation of the ranks' local sequences in rank order; with
Balanced SP (local sequence = [clean_local ; noisy_local]) it is the rank-interleaved order
``[r0_clean, r0_noisy, r1_clean, r1_noisy, ...]`` (spec §5.2). Nothing is permuted.

Quantized all-to-all wire format. Rows are the (b, s, h) vectors of length D of a 4-D tensor
[B, S, H, D]; quantization works on whole rows (NVFP4 blocks are 16 consecutive elements of D), so
moving rows between ranks commutes with quantization. The chunk sent to rank j holds the rows of
``chunk(x, P, scatter_dim)[j]`` in row-major (b, s, h) order; one uint8 buffer [P, chunk_bytes]
holds all chunks, chunk j at byte ``j · chunk_bytes``::

    chunk = [header | x0 data | x0 scales | x1 data | x1 scales | ...]   (sections 16-byte aligned)
    NVFP4: header = one fp32 decode scale per tensor (the scale the sender quantized with), then one
           fp32 observed amax per tensor (delayed scaling: what the sender received in its previous
           call, see ``observed_amax``; unused otherwise);
           data = packed E2M1 [rows, D/2] (element 2i in the low nibble); scales = E4M3 [rows, D/16]
    FP8:   no header; data = E4M3 [rows, D]; scales = fp32 [rows] (one per row, amax/448)

NVFP4 payload: D/2 + D/16 bytes per row (72 for D = 128) against 2·D for bf16: 3.56× fewer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..fp4 import reference as fp4_ref
from ..fp4.format import BLOCK_SIZE, SCALE_RULES
from ..fp4.reference import div_rn

E4M3_MAX = 448.0
FORMATS = ("nvfp4", "fp8")
_ALIGN = 16


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


# ---------------------------------------------------------------------------------------------
# Ulysses all-to-all (bf16 / any dtype)
# ---------------------------------------------------------------------------------------------


def all_to_all_reference(
    inputs: Sequence[torch.Tensor], *, scatter_dim: int, gather_dim: int
) -> list[torch.Tensor]:
    """What every rank receives from a Ulysses all-to-all, given every rank's input (rank order)."""
    p = len(inputs)
    chunks = [x.chunk(p, dim=scatter_dim) for x in inputs]
    return [torch.cat([chunks[j][r] for j in range(p)], dim=gather_dim) for r in range(p)]


def split_rows(x: torch.Tensor, world_size: int, scatter_dim: int) -> torch.Tensor:
    """[B, S, H, D] → [P, rows, D]: the rows of ``chunk(x, P, scatter_dim)[j]`` for each j."""
    d = x.shape[-1]
    return x.unflatten(scatter_dim, (world_size, -1)).movedim(scatter_dim, 0).reshape(world_size, -1, d)


def join_rows(rows: torch.Tensor, chunk_shape: Sequence[int], gather_dim: int) -> torch.Tensor:
    """[P, rows, D'] from P sources → concatenation of the P chunks along ``gather_dim``."""
    p = rows.shape[0]
    full = rows.reshape(p, *chunk_shape[:-1], rows.shape[-1])
    return full.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


# ---------------------------------------------------------------------------------------------
# FP8 rows: E4M3 with one fp32 scale per row
# ---------------------------------------------------------------------------------------------


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row E4M3: ``scale = amax(|row|) / 448`` (fp32), ``q = e4m3_rn(clamp(x / scale, ±448))``.

    Returns ``(codes float8_e4m3fn [..., D], scale fp32 [..., 1])``. A zero row gets scale 0 and
    zero codes; a row holding ±Inf/NaN gets zero codes and a NaN scale (it decodes to NaN).
    """
    xf = x.float()
    mag = xf.abs()
    amax = torch.where(torch.isnan(mag), torch.full_like(mag, float("inf")), mag).amax(-1, keepdim=True)
    scale = div_rn(amax, E4M3_MAX)
    ok = torch.isfinite(scale) & (scale > 0)
    safe = torch.where(ok, scale, torch.ones_like(scale))
    codes = (xf / safe).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    codes = torch.where(ok, codes.view(torch.uint8), torch.zeros_like(codes.view(torch.uint8)))
    scale = torch.where(torch.isinf(amax), torch.full_like(scale, float("nan")), scale)
    return codes.view(torch.float8_e4m3fn), scale


def dequantize_fp8_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``e4m3 · scale`` in fp32, cast once to ``dtype``."""
    return (codes.float() * scale.float()).to(dtype)


# ---------------------------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PayloadLayout:
    """Byte layout of one destination chunk holding ``n`` tensors of ``rows`` rows of ``d`` values."""

    fmt: str
    n: int
    rows: int
    d: int

    @property
    def header_bytes(self) -> int:
        return _align(8 * self.n) if self.fmt == "nvfp4" else 0

    @property
    def data_bytes(self) -> int:
        return self.rows * (self.d // 2 if self.fmt == "nvfp4" else self.d)

    @property
    def scale_bytes(self) -> int:
        return self.rows * (self.d // BLOCK_SIZE if self.fmt == "nvfp4" else 4)

    @property
    def chunk_bytes(self) -> int:
        return self.header_bytes + self.n * (_align(self.data_bytes) + _align(self.scale_bytes))

    def data_offset(self, i: int) -> int:
        """Byte offset of tensor ``i``'s data section inside a chunk."""
        return self.header_bytes + i * (_align(self.data_bytes) + _align(self.scale_bytes))

    def scale_offset(self, i: int) -> int:
        """Byte offset of tensor ``i``'s scale section inside a chunk (a multiple of 16)."""
        return self.data_offset(i) + _align(self.data_bytes)

    def header_word(self, i: int) -> int:
        """Index (in 4-byte words) of tensor ``i``'s fp32 decode scale inside a chunk (NVFP4)."""
        return i

    def amax_word(self, i: int) -> int:
        """Index (in 4-byte words) of tensor ``i``'s observed amax inside a chunk (NVFP4; delayed
        scaling; unused otherwise)."""
        return self.n + i


def payload_layout(fmt: str, n: int, chunk_shape: Sequence[int]) -> PayloadLayout:
    """Layout of a chunk carrying ``n`` tensors whose per-destination chunk is ``chunk_shape``."""
    rows = 1
    for s in chunk_shape[:-1]:
        rows *= int(s)
    return PayloadLayout(fmt, n, rows, int(chunk_shape[-1]))


def observed_amax(scales: torch.Tensor, global_scales: torch.Tensor) -> torch.Tensor:
    """Delayed scaling's estimate of the amax of a received NVFP4 chunk set: ``6 · max`` over the
    blocks of ``e4m3 block scale · decode scale of its source`` — an upper bound of every decoded
    value (|E2M1| ≤ 6), within one E4M3 rounding of the true amax for the static-6 rule. NaN block
    scales (poisoned blocks) are skipped. ``scales`` uint8 [P, bytes] (source j in row j),
    ``global_scales`` fp32 [P]; returns a 0-d fp32 tensor."""
    s = scales.view(torch.float8_e4m3fn).float()
    s = torch.where(torch.isnan(s), torch.zeros_like(s), s)
    per_source = s.amax(dim=1) if s.shape[1] else s.new_zeros(s.shape[0])
    return (per_source * global_scales.float()).amax() * 6.0


def pack_tensor(
    x: torch.Tensor,
    world_size: int,
    scatter_dim: int,
    *,
    fmt: str,
    global_scale: torch.Tensor | None = None,
    scale_rule: str = "static6",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [B, S, H, D] and split it by destination.

    Returns ``(data uint8 [P, data_bytes], scales uint8 [P, scale_bytes])`` (unpadded sections).
    NVFP4 uses ``fp4.reference.quantize`` with the fp32 decode scale ``global_scale``.
    """
    rows = split_rows(x, world_size, scatter_dim)  # [P, R, D]
    if fmt == "nvfp4":
        data, scale, _ = fp4_ref.quantize(rows, global_scale=global_scale, scale_rule=scale_rule)
        return data.reshape(world_size, -1), scale.view(torch.uint8).reshape(world_size, -1)
    codes, scale = quantize_fp8_rows(rows)
    return codes.view(torch.uint8).reshape(world_size, -1), scale.reshape(world_size, -1).view(torch.uint8)


def unpack_tensor(
    data: torch.Tensor,
    scales: torch.Tensor,
    global_scales: torch.Tensor | None,
    chunk_shape: Sequence[int],
    gather_dim: int,
    *,
    fmt: str,
    dequantize: bool,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Receiver side: sections from the P sources → the gathered tensor.

    ``data``/``scales`` are uint8 [P, bytes] (source j in row j), ``global_scales`` fp32 [P] (the
    NVFP4 decode scale of each source). Returns the dense gathered tensor of ``dtype`` when
    ``dequantize``, else ``(data, scale)`` in the gathered layout: NVFP4 (uint8 [..., D/2],
    float8_e4m3fn [..., D/16]) or FP8 (float8_e4m3fn [..., D], fp32 [..., 1]).
    """
    p = data.shape[0]
    d = int(chunk_shape[-1])
    if fmt == "nvfp4":
        packed = data.reshape(p, -1, d // 2)
        sc = scales.reshape(p, -1, d // BLOCK_SIZE).view(torch.float8_e4m3fn)
        if dequantize:
            vals = torch.stack([
                fp4_ref.dequantize(packed[j], sc[j], global_scales[j], dtype=torch.float32) for j in range(p)
            ])
            return join_rows(vals, chunk_shape, gather_dim).to(dtype)
        return join_rows(packed, chunk_shape, gather_dim), join_rows(sc, chunk_shape, gather_dim)
    codes = data.reshape(p, -1, d).view(torch.float8_e4m3fn)
    sc = scales.reshape(p, -1, 4).view(torch.float32)  # [P, R, 1]
    if dequantize:
        return join_rows(dequantize_fp8_rows(codes, sc, torch.float32), chunk_shape, gather_dim).to(dtype)
    return join_rows(codes, chunk_shape, gather_dim), join_rows(sc, chunk_shape, gather_dim)


def nvfp4_amax(x: torch.Tensor) -> torch.Tensor:
    """fp32 0-dim ``max|x|`` with NaN counted as +Inf (the tensor amax of NVFP4)."""
    mag = x.float().abs()
    return torch.where(torch.isnan(mag), torch.full_like(mag, float("inf")), mag).amax()


def quantized_all_to_all_reference(
    inputs: Sequence[torch.Tensor],
    *,
    scatter_dim: int,
    gather_dim: int,
    fmt: str = "nvfp4",
    tensor_scale: str = "group",
    scale_rule: str = "static6",
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Dense result every rank gets from a quantized all-to-all (single-process simulation).

    NVFP4 ``tensor_scale="group"``: every source quantizes with the decode scale of the group amax
    (``max_r amax(inputs[r]) / denominator``); ``"per_source"``: source r uses its own amax.
    """
    p = len(inputs)
    denom = SCALE_RULES[scale_rule][1]
    amaxes = torch.stack([nvfp4_amax(x) for x in inputs])
    gs = [div_rn(amaxes.amax(), denom) if tensor_scale == "group" else div_rn(a, denom) for a in amaxes]
    sent = [pack_tensor(x, p, scatter_dim, fmt=fmt, global_scale=gs[r], scale_rule=scale_rule)
            for r, x in enumerate(inputs)]
    chunk_shape = list(inputs[0].shape)
    chunk_shape[scatter_dim] //= p
    outs = []
    for r in range(p):
        data = torch.stack([sent[j][0][r] for j in range(p)])
        scales = torch.stack([sent[j][1][r] for j in range(p)])
        out = unpack_tensor(data, scales, torch.stack(gs), chunk_shape, gather_dim, fmt=fmt,
                            dequantize=True, dtype=dtype or inputs[0].dtype)
        outs.append(out)
    return outs
