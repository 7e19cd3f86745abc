"""Plain-PyTorch specification of every op in ``longlive_kernels.fp4`` (fp32 math, readable, slow).

The Triton and CUDA kernels reproduce these functions bit for bit; where rounding order matters
the operation order below *is* the spec:

- block scale ``s = e4m3_rn(min((block_amax / target) / s_global, 448))`` (two correctly rounded
  fp32 divisions, then RNE to E4M3 with subnormals);
- element ``q = e2m1_rne(x · r)`` with ``r = 1 / (s · s_global)`` (fp32 product, then one correctly
  rounded reciprocal per block; Transformer Engine's ``block_scale_inverse`` form);
- decoded value ``(q · s) · s_global`` (the first product is exact);
- Four Over Six: per candidate ``e = Σ (|v| - |e2m1(v)|)²`` over the block's scaled values ``v = x · r``
  as a pairwise tree of adjacent pairs ((e0+e1)+(e2+e3))+... (16×16 tiles: the 16 row sums again as
  a pairwise tree), compared as ``(e · d) · d`` with ``d = s · s_global``; ties keep 6.

Non-finite policy: a block holding ±Inf or NaN gets the E4M3 NaN scale (0x7F) and zero codes, so it
decodes to NaN; when the tensor scale is computed from such a tensor it is Inf and every block is
poisoned the same way. A NaN therefore never turns silently into a finite number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format import BLOCK_SIZE, E2M1_VALUES, SCALE_RULES

_INF = float("inf")
_FLT_MIN = 2.0**-126  # smallest normal fp32
_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Element formats
# ---------------------------------------------------------------------------------------------


def e2m1_values(device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 [16] value of each E2M1 code 0..15 (codes 8..15 are the negatives, 8 is −0)."""
    pos = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([pos, -pos])


def e2m1_round_rne(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 ``v`` to the nearest E2M1 code, ties to the even code, saturating at ±6.

    Returns int32 codes in 0..15 (sign bit 3 from ``signbit(v)``). NaN maps to code 0.
    """
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=v.device)
    mag = v.abs().clamp(max=6.0)
    mag = torch.where(torch.isnan(mag), torch.zeros_like(mag), mag)
    dist = (mag.unsqueeze(-1) - grid).abs()
    best = dist == dist.amin(-1, keepdim=True)
    codes = torch.arange(8, device=v.device)
    unique = best.sum(-1, keepdim=True) == 1
    pick = best & (unique | (codes % 2 == 0))
    mag_code = pick.int().argmax(-1).to(torch.int32)
    return mag_code | (torch.signbit(v).to(torch.int32) << 3)


def e2m1_round_stochastic(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Stochastic rounding to E2M1: round |v| up to the next grid value iff ``u < p``, where
    ``p = (|v| − lo) / (hi − lo)`` (exact in fp32) and ``u`` is uniform in [0, 1). Saturates at 6."""
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=v.device)
    mag = v.abs()
    mag = torch.where(torch.isnan(mag), torch.zeros_like(mag), mag)
    lo_code = (mag.unsqueeze(-1) >= grid[1:]).sum(-1).to(torch.int32)  # 0..7
    lo = grid[lo_code.long()]
    hi = grid[(lo_code + 1).clamp(max=7).long()]
    p = (mag - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    up = (u < p) & (lo_code < 7)
    mag_code = lo_code + up.to(torch.int32)
    return mag_code | (torch.signbit(v).to(torch.int32) << 3)


def e4m3_round(s: torch.Tensor) -> torch.Tensor:
    """RNE of fp32 ``s`` ≥ 0 to float8_e4m3fn (subnormals kept; caller clamps to 448 first)."""
    return s.to(torch.float8_e4m3fn)


# ---------------------------------------------------------------------------------------------
# Philox4x32-10 (the counter-based RNG of Triton's tl.randint), used by stochastic rounding
# ---------------------------------------------------------------------------------------------


def _mul32(a: torch.Tensor | int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of two uint32 values held in int64."""
    ah, al = (a >> 16) & 0xFFFF, a & 0xFFFF
    bh, bl = (b >> 16) & 0xFFFF, b & 0xFFFF
    mid = ah * bl + al * bh
    low = al * bl
    carry_sum = ((mid & 0xFFFF) << 16) + low
    hi = ah * bh + (mid >> 16) + (carry_sum >> 32)
    return hi & _MASK32, carry_sum & _MASK32


def philox4(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four uint32 outputs (int64 tensors) of Philox4x32-10 with key ``seed`` and counter
    ``(offset_lo, offset_hi, 0, 0)`` — identical to ``tl.randint4x(seed, offset)``."""
    offset = offset.to(torch.int64)
    c0 = offset & _MASK32
    c1 = (offset >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul32(0xCD9E8D57, c2)
        hi_a, lo_a = _mul32(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return c0, c1, c2, c3


def philox_randint(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """First uint32 output of :func:`philox4` — identical to ``tl.randint(seed, offset)``."""
    return philox4(seed, offset)[0]


def philox_uniform16(seed: int, groups: torch.Tensor) -> torch.Tensor:
    """[*groups.shape, 8] fp32 uniforms in [0, 1) with 16 random bits: the 8 elements of each group share
    the Philox4x32-10 call with that group's counter, element j taking half ``j % 2`` (low half first)
    of output word ``j // 2``; ``u = half · 2⁻¹⁶`` (exact)."""
    words = torch.stack(philox4(seed, groups), dim=-1)  # [..., 4]
    halves = torch.stack([words & 0xFFFF, words >> 16], dim=-1)  # [..., 4, 2]: element order
    return halves.flatten(-2).to(torch.float32) * (2.0**-16)


def uniform16_from_philox(seed: int, n: int, device=None) -> torch.Tensor:
    """[n] stochastic-rounding uniforms of the elements 0..n−1 of a row-major tensor (n % 8 == 0):
    element e takes entry e % 8 of :func:`philox_uniform16` for the group counter ⌊e/8⌋.

    One Philox call per 8 elements instead of one per element (the CUDA and Triton quantizers spent
    most of their stochastic-rounding time in Philox); 16 bits bound the rounding bias by 2⁻¹⁶ of a
    step."""
    if n % 8:
        raise ValueError(f"n must be a multiple of 8, got {n}")
    return philox_uniform16(seed, torch.arange(n // 8, device=device, dtype=torch.int64)).reshape(n)


# ---------------------------------------------------------------------------------------------
# Random Hadamard transform
# ---------------------------------------------------------------------------------------------


def _fwht16(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform over the last dim (16), 4 butterfly stages in a fixed
    order: each stage maps (x[2j], x[2j+1]) → (x[2j]+x[2j+1] at j, x[2j]−x[2j+1] at 8+j)."""
    for _ in range(4):
        a, b = x[..., 0::2], x[..., 1::2]
        x = torch.cat([a + b, a - b], dim=-1)
    return x


def mask_to_signs(mask: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """16-bit mask → fp32 [16] of ±1 (bit i set = −1)."""
    bits = (mask >> torch.arange(16, device=device)) & 1
    return 1.0 - 2.0 * bits.to(torch.float32)


def random_hadamard_transform(x: torch.Tensor, mask: int) -> torch.Tensor:
    """``y = x · (D H16 D) / 4`` on each 16-element group of the last dim (fp32 result).

    ``D = diag(signs(mask))``; the matrix is symmetric and orthonormal, hence its own inverse.
    """
    signs = mask_to_signs(mask, x.device)
    xf = x.float().reshape(*x.shape[:-1], x.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    y = _fwht16(xf * signs) * 0.25 * signs
    return y.reshape(x.shape)



def div_rn(a: torch.Tensor, b: float) -> torch.Tensor:
    """``a / b`` correctly rounded on every device (the spec's divisions by a constant).

    torch on CUDA divides a tensor by a Python float as a multiply by the float's reciprocal, which
    differs from the division in the last bit for some inputs; a 0-dim divisor tensor on ``a``'s
    device takes the true division. The divisor is filled on the device: ``torch.tensor(b,
    device=cuda)`` copies from pageable host memory and so waits for the stream (a host sync in
    every all-to-all that derived its scale from the amax).
    """
    return a / torch.full((), b, dtype=a.dtype, device=a.device)

# ---------------------------------------------------------------------------------------------
# Quantize / dequantize
# ---------------------------------------------------------------------------------------------


def _pairwise_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a power-of-two sized dim as a tree of adjacent pairs (fixed rounding order)."""
    x = x.movedim(dim, -1)
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x.squeeze(-1)


def _tile_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, nb] → [ceil(rows/16), 16, nb], zero-padded."""
    pad = (-rows) % BLOCK_SIZE
    return F.pad(t, (0, 0, 0, pad)).view(-1, BLOCK_SIZE, t.shape[-1])


def _untile_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[ceil(rows/16), nb] → [rows, nb] by repeating each tile's value on its 16 rows."""
    return t.repeat_interleave(BLOCK_SIZE, dim=0)[:rows]


def _four_over_six_error(
    v: torch.Tensor, codes: torch.Tensor, d: torch.Tensor, dead: torch.Tensor, rows: int, block_2d: bool
) -> torch.Tensor:
    """Four Over Six's error of one candidate, [rows, nb] fp32 (+Inf where the candidate is dead).

    Measured in the scaled domain, where the rounding happened: ``e = Σ (|v| - |e2m1(v)|)²`` over the
    block (pairwise tree; 16×16 tiles then sum their 16 rows' ``e`` the same way), compared as
    ``(e · d) · d`` with ``d = s_block · s_global``. Up to fp32 rounding this is the squared error of
    the decoded block, ``Σ (x - e2m1 · d)²``, at two multiplies per element fewer than decoding.
    """
    mag = e2m1_values(v.device)[(codes & 7).long()]
    t = v.abs() - mag
    e = _pairwise_sum(t * t, dim=-1)
    if block_2d:
        e = _untile_rows(_pairwise_sum(_tile_rows(e, rows), dim=1), rows)
    err = (e * d) * d
    return torch.where(dead, torch.full_like(err, _INF), err)


def block_amax(xf: torch.Tensor, block_2d: bool) -> torch.Tensor:
    """[rows, K] fp32 → [rows, K/16] block amax (NaN counts as +Inf; 2-D tiles replicated per row)."""
    rows, k = xf.shape
    mag = xf.view(rows, k // BLOCK_SIZE, BLOCK_SIZE).abs()
    mag = torch.where(torch.isnan(mag), torch.full_like(mag, _INF), mag)
    bamax = mag.amax(-1)
    if block_2d:
        bamax = _untile_rows(_tile_rows(bamax, rows).amax(1), rows)
    return bamax


def quantize(
    x: torch.Tensor,
    *,
    global_scale: torch.Tensor | None = None,
    scale_rule: str = "static6",
    rounding: str = "rne",
    seed: int = 0,
    hadamard_mask: int | None = None,
    block_2d: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference NVFP4 quantization of ``x`` [..., K] (K % 16 == 0).

    Returns ``(data uint8 [..., K/2], scale float8_e4m3fn [..., K/16], global_scale fp32 [])``.
    Stochastic rounding draws ``u = uniform16_from_philox(seed, rows·K)[row·K + col]`` per element.
    """
    k = x.shape[-1]
    lead = x.shape[:-1]
    xf = x.reshape(-1, k).float()
    if hadamard_mask is not None:
        xf = random_hadamard_transform(xf, hadamard_mask)
    rows, nb = xf.shape[0], k // BLOCK_SIZE
    blocks = xf.view(rows, nb, BLOCK_SIZE)
    bamax = block_amax(xf, block_2d)
    _, denom = SCALE_RULES[scale_rule]

    if global_scale is None:
        gs = div_rn(bamax.amax(), denom)
    else:
        gs = global_scale.to(device=xf.device, dtype=torch.float32).reshape(())
    poison = (bamax == _INF) | ~torch.isfinite(gs)
    zero = bamax == 0
    u = None
    if rounding == "stochastic":
        u = uniform16_from_philox(seed, rows * k, xf.device).view(rows, nb, BLOCK_SIZE)

    def candidate(target: float):
        s = torch.clamp(div_rn(bamax, target) / gs, max=448.0)
        s8 = e4m3_round(torch.nan_to_num(s, nan=0.0))
        d = s8.float() * gs
        v = blocks * (torch.ones_like(d) / d).unsqueeze(-1)  # correctly rounded 1/d on every device
        codes = e2m1_round_rne(v) if u is None else e2m1_round_stochastic(v, u)
        dead = (d == 0) | poison | zero
        err = None
        if scale_rule == "four_over_six":
            err = _four_over_six_error(v, codes, d, dead, rows, block_2d)
        codes = torch.where(dead.unsqueeze(-1), torch.zeros_like(codes), codes)
        sbyte = s8.view(torch.uint8).to(torch.int32)
        sbyte = torch.where(zero, torch.zeros_like(sbyte), sbyte)
        sbyte = torch.where(poison, torch.full_like(sbyte, 0x7F), sbyte)
        return codes, sbyte, err

    codes, sbyte, err6 = candidate(SCALE_RULES[scale_rule][0])
    if scale_rule == "four_over_six":
        codes4, sbyte4, err4 = candidate(4.0)
        use4 = err4 < err6
        codes = torch.where(use4.unsqueeze(-1), codes4, codes)
        sbyte = torch.where(use4, sbyte4, sbyte)

    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    data = packed.reshape(*lead, k // 2)
    scale = sbyte.to(torch.uint8).view(torch.float8_e4m3fn).reshape(*lead, nb)
    return data, scale, gs.clone()


def unpack_codes(data: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] → int32 codes [..., K] (low nibble first)."""
    d = data.to(torch.int32)
    return torch.stack([d & 0xF, d >> 4], dim=-1).flatten(-2)


def dequantize(
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    hadamard_mask: int | None = None,
) -> torch.Tensor:
    """Reference decode: ``(e2m1 · s_block) · s_global`` in fp32 (then the inverse RHT if the data
    was transformed), cast once to ``dtype``. ``scale`` must be in the linear layout."""
    codes = unpack_codes(data)
    k = codes.shape[-1]
    vals = e2m1_values(data.device)[codes.long()]
    s = scale.float().reshape(*scale.shape[:-1], k // BLOCK_SIZE, 1)
    gs = global_scale.to(device=data.device, dtype=torch.float32)
    out = ((vals.view(*codes.shape[:-1], k // BLOCK_SIZE, BLOCK_SIZE) * s) * gs).reshape(codes.shape)
    if hadamard_mask is not None:
        out = random_hadamard_transform(out, hadamard_mask)
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------
# E2M1 block-scaled GEMM
# ---------------------------------------------------------------------------------------------


def nvfp4_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    a_global_scale: torch.Tensor | None,
    b_data: torch.Tensor,
    b_scale: torch.Tensor,
    b_global_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    a_nvfp4: bool = True,
) -> torch.Tensor:
    """Reference of ``nvfp4_gemm``: ``a @ bᵀ`` on decoded operands, in fp64.

    ``b`` (and ``a`` when ``a_nvfp4``) are [rows, K/2] packed codes with linear [rows, K/16] E4M3
    scales. The block-decoded values ``e2m1 · s_block`` (exact) are multiplied and summed in fp64,
    then scaled by ``fp32(s_a · s_b)`` (``s_b`` alone for a dense ``a``, times its optional fp32
    per-tensor or per-row ``a_scale``), the bias is added and the result is rounded once to
    ``out_dtype``. Kernels accumulate in fp32 in their own order, so they match this up to
    summation error (not bit for bit).
    """
    one = torch.ones((), dtype=torch.float32, device=b_data.device)
    bw = dequantize(b_data, b_scale, one, dtype=torch.float32).double()
    if a_nvfp4:
        aw = dequantize(a, a_scale, one, dtype=torch.float32).double()
        alpha = (a_global_scale.float().reshape(()) * b_global_scale.float().reshape(())).double()
    else:
        aw = a.double()
        alpha = b_global_scale.float().reshape(()).double()
        if a_scale is not None:
            rs = a_scale.float().reshape(-1, 1).double()
            alpha = alpha * (rs if rs.numel() > 1 else rs.reshape(()))
    out = (aw @ bw.T) * alpha
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


def fp8_scale_of_amax(amax: torch.Tensor) -> torch.Tensor:
    """Decode scale of an amax: ``amax / 448`` correctly rounded, at least 2⁻¹²⁶ (so 1/scale is
    finite), 1 for a zero amax, +Inf for an Inf/NaN amax."""
    amax = torch.where(torch.isnan(amax), torch.full_like(amax, _INF), amax)
    scale = torch.clamp(div_rn(amax, 448.0), min=_FLT_MIN)
    return torch.where(amax == 0, torch.ones_like(amax), scale)


def _fp8_encode(xf: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E4M3 codes of fp32 ``xf · (1/scale)`` (``scale`` broadcast against ``xf``): the reciprocal and
    the product each rounded once to fp32, then RNE saturating at ±448; NaN → 0x7F."""
    inv = torch.ones_like(scale) / scale  # tensor / tensor: the true division on every device
    v = (xf * inv).clamp(-448.0, 448.0)
    bits = v.to(torch.float8_e4m3fn).view(torch.uint8)
    bits = torch.where(torch.isnan(v), torch.full_like(bits, 0x7F), bits)  # one NaN code, as the GPU
    return bits.view(torch.float8_e4m3fn)


def quantize_fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 row-wise quantization of ``x`` [rows, K] (the FP8 path of ``fp4/fp8.py``).

    ``scale = amax(|row|) / 448`` (fp32, correctly rounded, at least 2⁻¹²⁶ so that 1/scale is
    finite; 1 for an all-zero row; NaN counts as +Inf) and ``q = e4m3_rn(clamp(x · inv, ±448))`` with
    ``inv = 1 / scale`` correctly rounded and the product rounded once to fp32 (NaN → code 0x7F). The
    encode multiplies by the reciprocal, as Transformer Engine's and torchao's FP8 casts do: one
    multiply per element in the kernels; it differs from a correctly rounded ``x / scale`` only where
    that quotient lies within one fp32 ulp of an E4M3 rounding midpoint.
    """
    xf = x.float()
    scale = fp8_scale_of_amax(xf.abs().amax(-1))
    return _fp8_encode(xf, scale.unsqueeze(-1)), scale


def quantize_fp8_tensorwise(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 quantization of all of ``x`` with one fp32 scale: the row-wise rule of
    :func:`quantize_fp8_rowwise` applied to the whole tensor (``scale = amax(|x|) / 448``), or to a
    given decode ``scale`` (a bound known without reading ``x``: values beyond ``448·scale``
    saturate). Returns (codes shaped as ``x``, 0-dim fp32 scale)."""
    xf = x.float()
    if scale is None:
        scale = fp8_scale_of_amax(xf.abs().amax() if xf.numel() else xf.new_zeros(()))
    scale = scale.reshape(()).float()
    return _fp8_encode(xf, scale), scale


def fp8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``(a · a_scale) @ (b · b_scale)ᵀ + bias`` in fp64 for FP8 ``a`` [M, K], ``b`` [N, K] with row
    scales ``a_scale`` [M], ``b_scale`` [N]; rounded once to ``out_dtype``."""
    out = (a.double() @ b.double().T) * a_scale.double().reshape(-1, 1) * b_scale.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)
