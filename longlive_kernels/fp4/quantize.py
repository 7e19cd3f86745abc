"""NVFP4 quantization: ``quantize_nvfp4`` (static6 / static4 / Four Over Six, RNE or stochastic
rounding, optional fused random Hadamard transform, 1×16 or 16×16 blocks).

Two passes when the tensor scale is computed (amax, then quantize), one when ``global_scale`` is
given (e.g. a scale computed by the producer kernel or carried over from the last step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import cuda_extension, eager_op, resolve_backend
from . import reference
from .format import (
    BLOCK_SIZE,
    ROUNDINGS,
    SCALE_RULES,
    TE_HADAMARD_MASK,
    NVFP4Tensor,
    hadamard_mask_from_seed,
)
from .nvfp4_triton import (
    broadcast_rows16,
    e2m1_rne_code,
    e2m1_stochastic_code,
    e2m1_decode,
    e4m3_rne,
    pack_nibbles,
    pairwise_sum_last,
    pairwise_sum_rows16,
    philox_uniform16,
    rht16,
)

_RULE_IDS = {"static6": 0, "static4": 1, "four_over_six": 2}

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(x_ptr, rows, K, stride_row, pid_r, pid_k, BR: tl.constexpr, BK: tl.constexpr):
    r = pid_r * BR + tl.arange(0, BR)
    c = pid_k * BK + tl.arange(0, BK)
    mask = (r[:, None] < rows) & (c[None, :] < K)
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_row + c[None, :], mask=mask, other=0.0)
    return x.to(tl.float32), r, c, mask


@triton.jit
def _amax_kernel(
    x_ptr,  # [rows, K] float, last dim contiguous
    amax_ptr,  # [1] int32: fp32 bits of max|x| (NaN → +Inf), pre-zeroed, atomic max
    rows,
    K,
    stride_row,
    hadamard_mask,
    BR: tl.constexpr,
    BK: tl.constexpr,
    HADAMARD: tl.constexpr,
):
    x, _, _, _ = _load_tile(x_ptr, rows, K, stride_row, tl.program_id(0), tl.program_id(1), BR, BK)
    if HADAMARD:
        x = tl.reshape(rht16(tl.reshape(x, (BR, BK // 16, 16)), hadamard_mask, BR, BK // 16), (BR, BK))
    a = tl.abs(x)
    a = tl.where(a != a, float("inf"), a)
    tl.atomic_max(amax_ptr, tl.max(tl.max(a, axis=1), axis=0).to(tl.int32, bitcast=True))


@triton.jit
def _quantize_candidate(xb, bamax, gs, u, poison, zero, TARGET: tl.constexpr, STOCHASTIC: tl.constexpr):
    """One scale candidate for blocks ``xb`` [BR, NB, 16]: returns (codes, scale code, scaled
    values v, decode factor d, dead); codes are zeroed where dead."""
    s = tl.minimum(tl.math.div_rn(tl.math.div_rn(bamax, TARGET), gs), 448.0)
    s = tl.where(s == s, s, 0.0)
    sv, scode = e4m3_rne(s)
    d = sv * gs
    v = xb * tl.math.div_rn(1.0, d)[:, :, None]
    if STOCHASTIC:
        codes = e2m1_stochastic_code(v, u)
    else:
        codes = e2m1_rne_code(v)
    dead = (d == 0) | poison | zero
    scode = tl.where(zero, 0, scode)
    scode = tl.where(poison, 0x7F, scode)
    return codes, scode, v, d, dead


@triton.jit
def _scaled_error_sum(v, codes, BR: tl.constexpr, NB: tl.constexpr):
    """[BR, NB]: Σ (|v| - |e2m1|)² per block, the tree of ``reference._four_over_six_error``."""
    t = tl.abs(v) - e2m1_decode(codes & 7)
    return pairwise_sum_last(t * t, BR, NB)


@triton.jit
def _four_over_six_error(e, d, dead):
    return tl.where(dead, float("inf"), (e * d) * d)


@triton.jit
def _quantize_blocks(xb, bamax, gs, u, poison, zero, TARGET: tl.constexpr, FOUR_OVER_SIX: tl.constexpr,
                     STOCHASTIC: tl.constexpr, BR: tl.constexpr, NB: tl.constexpr,
                     BLOCK_2D: tl.constexpr):
    """Codes [BR, NB, 16] and scale codes [BR, NB] of the blocks under a static rule (``TARGET``) or
    Four Over Six (the smaller scaled error of the →6 and →4 candidates, ties → 6; with ``BLOCK_2D``
    each 16-row tile sums its rows' errors before the choice)."""
    codes, scode, v, d, dead = _quantize_candidate(xb, bamax, gs, u, poison, zero, TARGET, STOCHASTIC)
    if FOUR_OVER_SIX:
        codes4, scode4, v4, d4, dead4 = _quantize_candidate(xb, bamax, gs, u, poison, zero, 4.0, STOCHASTIC)
        e6 = _scaled_error_sum(v, codes, BR, NB)
        e4 = _scaled_error_sum(v4, codes4, BR, NB)
        if BLOCK_2D:
            e6 = broadcast_rows16(pairwise_sum_rows16(e6, BR // 16, NB), BR // 16, NB)
            e4 = broadcast_rows16(pairwise_sum_rows16(e4, BR // 16, NB), BR // 16, NB)
        use4 = _four_over_six_error(e4, d4, dead4) < _four_over_six_error(e6, d, dead)
        codes = tl.where(use4[:, :, None], codes4, codes)
        scode = tl.where(use4, scode4, scode)
        dead = tl.where(use4, dead4, dead)
    return tl.where(dead[:, :, None], 0, codes), scode


@triton.jit
def _quantize_kernel(
    x_ptr,  # [rows, K] float, last dim contiguous
    data_ptr,  # [rows, K/2] uint8 out
    scale_ptr,  # [rows, K/16] uint8 out (E4M3 bits)
    gs_ptr,  # [1] fp32: the given decode scale (GIVEN_SCALE) or out
    amax_ptr,  # [1] int32 fp32-bits amax from _amax_kernel (unless GIVEN_SCALE)
    rows,
    K,
    stride_row,
    seed,
    hadamard_mask,
    DENOM: tl.constexpr,
    TARGET: tl.constexpr,
    FOUR_OVER_SIX: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    HADAMARD: tl.constexpr,
    BLOCK_2D: tl.constexpr,
    GIVEN_SCALE: tl.constexpr,
    BR: tl.constexpr,
    BK: tl.constexpr,
):
    NB: tl.constexpr = BK // 16
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    x, r, _, mask = _load_tile(x_ptr, rows, K, stride_row, pid_r, pid_k, BR, BK)
    xb = tl.reshape(x, (BR, NB, 16))
    if HADAMARD:
        xb = rht16(xb, hadamard_mask, BR, NB)
    a = tl.abs(xb)
    a = tl.where(a != a, float("inf"), a)
    bamax = tl.max(a, axis=2)  # [BR, NB]
    if BLOCK_2D:
        bamax = broadcast_rows16(tl.max(tl.reshape(bamax, (BR // 16, 16, NB)), axis=1), BR // 16, NB)

    if GIVEN_SCALE:
        gs = tl.load(gs_ptr)
    else:
        gs = tl.math.div_rn(tl.load(amax_ptr).to(tl.float32, bitcast=True), DENOM)
        if (pid_r == 0) & (pid_k == 0):
            tl.store(gs_ptr, gs)
    gs_b = tl.zeros_like(bamax) + gs
    poison = (bamax == float("inf")) | (gs_b != gs_b) | (tl.abs(gs_b) == float("inf"))
    zero = bamax == 0.0

    u = xb  # unused unless STOCHASTIC
    if STOCHASTIC:  # one Philox call per 8 elements: counter = (row·K + col) / 8
        groups = r[:, None].to(tl.int64) * (K // 8) + (pid_k * (BK // 8) + tl.arange(0, BK // 8))[None, :]
        u = tl.reshape(philox_uniform16(seed, groups, BR, BK // 8), (BR, NB, 16))

    codes, scode = _quantize_blocks(xb, bamax, gs, u, poison, zero, TARGET, FOUR_OVER_SIX, STOCHASTIC, BR, NB,
                                    BLOCK_2D)

    packed = pack_nibbles(tl.reshape(codes, (BR, BK)), BR, BK)
    c2 = pid_k * (BK // 2) + tl.arange(0, BK // 2)
    dmask = (r[:, None] < rows) & (c2[None, :] < K // 2)
    tl.store(data_ptr + r[:, None].to(tl.int64) * (K // 2) + c2[None, :], packed, mask=dmask)
    cs = pid_k * NB + tl.arange(0, NB)
    smask = (r[:, None] < rows) & (cs[None, :] < K // 16)
    tl.store(scale_ptr + r[:, None].to(tl.int64) * (K // 16) + cs[None, :], scode.to(tl.uint8), mask=smask)


def _tile_config(k: int, block_2d: bool, four_over_six: bool) -> tuple[int, int, int]:
    """(BR, BK, num_warps): 16-row tiles (16×16 blocks need them), up to 256 columns."""
    bk = 256 if k >= 256 else triton.next_power_of_2(k)
    bk = max(bk, 16)
    br = 16 if (four_over_six or bk > 128) else 32
    return br, bk, 4


def _quantize_triton(x2d, gs_in, rule, rounding, seed, hadamard_mask, block_2d):
    rows, k = x2d.shape
    dev = x2d.device
    data = torch.empty((rows, k // 2), dtype=torch.uint8, device=dev)
    scale = torch.empty((rows, k // BLOCK_SIZE), dtype=torch.uint8, device=dev)
    target, denom = SCALE_RULES[rule]
    br, bk, warps = _tile_config(k, block_2d, rule == "four_over_six")
    grid = (triton.cdiv(rows, br), triton.cdiv(k, bk))
    hmask = hadamard_mask if hadamard_mask is not None else 0
    given = gs_in is not None
    gs = gs_in.to(torch.float32).reshape(1).clone() if given else torch.empty(1, dtype=torch.float32, device=dev)
    amax = torch.zeros(1, dtype=torch.int32, device=dev)
    if not given:
        _amax_kernel[grid](
            x2d, amax, rows, k, x2d.stride(0), hmask,
            BR=br, BK=bk, HADAMARD=hadamard_mask is not None, num_warps=warps,
        )
    _quantize_kernel[grid](
        x2d, data, scale, gs, amax, rows, k, x2d.stride(0), seed, hmask,
        DENOM=denom, TARGET=target, FOUR_OVER_SIX=rule == "four_over_six",
        STOCHASTIC=rounding == "stochastic", HADAMARD=hadamard_mask is not None,
        BLOCK_2D=block_2d, GIVEN_SCALE=given, BR=br, BK=bk,
        num_warps=warps, enable_fp_fusion=False,
    )
    return data, scale.view(torch.float8_e4m3fn), gs.reshape(())


def _quantize_cuda(x2d, gs_in, rule, rounding, seed, hadamard_mask, block_2d):
    rows, k = x2d.shape
    dev = x2d.device
    data = torch.empty((rows, k // 2), dtype=torch.uint8, device=dev)
    scale = torch.empty((rows, k // BLOCK_SIZE), dtype=torch.uint8, device=dev)
    # The launcher zeroes `amax` and the kernel copies a given scale into `gs`: no extra torch launches.
    gs = torch.empty(1, dtype=torch.float32, device=dev)
    gs_read = gs_in.to(device=dev, dtype=torch.float32).reshape(1) if gs_in is not None else gs
    amax = torch.empty(1, dtype=torch.int32, device=dev)
    cuda_extension()  # loads the library that registers the op
    torch.ops.longlive_kernels.nvfp4_quantize_cuda(
        x2d, data, scale, gs, gs_read, amax, _RULE_IDS[rule], rounding == "stochastic", seed,
        -1 if hadamard_mask is None else hadamard_mask, block_2d, gs_in is not None,
    )
    return data, scale.view(torch.float8_e4m3fn), gs.reshape(())


# ---------------------------------------------------------------------------------------------
# torch.library op
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("longlive_kernels::quantize_nvfp4", mutates_args=())
def _quantize_op(
    x: torch.Tensor,
    global_scale: torch.Tensor | None,
    scale_rule: str,
    rounding: str,
    seed: int,
    hadamard_mask: int,
    block_2d: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    hmask = None if hadamard_mask < 0 else hadamard_mask
    if backend == "torch":
        data, scale, gs = reference.quantize(
            x2d, global_scale=global_scale, scale_rule=scale_rule, rounding=rounding,
            seed=seed, hadamard_mask=hmask, block_2d=block_2d,
        )
    else:
        run = _quantize_triton if backend == "triton" else _quantize_cuda
        data, scale, gs = run(x2d, global_scale, scale_rule, rounding, seed, hmask, block_2d)
    return data.reshape(*lead, k // 2), scale.reshape(*lead, k // BLOCK_SIZE), gs


@_quantize_op.register_fake
def _(x, global_scale, scale_rule, rounding, seed, hadamard_mask, block_2d, backend):
    k = x.shape[-1]
    lead = x.shape[:-1]
    return (
        x.new_empty((*lead, k // 2), dtype=torch.uint8),
        x.new_empty((*lead, k // BLOCK_SIZE), dtype=torch.float8_e4m3fn),
        x.new_empty((), dtype=torch.float32),
    )


_quantize_eager = eager_op(_quantize_op)  # eager calls skip the dispatcher (_backend.direct_call_ok)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def validate_quantize_input(x: torch.Tensor, name: str = "x") -> None:
    """The input checks of :func:`quantize_nvfp4` (shared with ops that quantize internally)."""
    _checks.check_dtype(name, x)
    _checks.check_nonempty(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least 1 dim, got a scalar")
    _checks.check_multiple(f"{name}.shape[-1]", x.shape[-1], BLOCK_SIZE, "last dim")
    _checks.check_last_dim_contiguous(name, x)


def resolve_hadamard(hadamard: bool, hadamard_seed: int | None) -> int | None:
    """(hadamard, hadamard_seed) → 16-bit sign mask or None (True without seed = TE's signs)."""
    if not hadamard:
        return None
    return TE_HADAMARD_MASK if hadamard_seed is None else hadamard_mask_from_seed(hadamard_seed)


def quantize_nvfp4(
    x: torch.Tensor,
    *,
    global_scale: torch.Tensor | None = None,
    scale_rule: str = "static6",
    rounding: str = "rne",
    seed: int | None = None,
    hadamard: bool = False,
    hadamard_seed: int | None = None,
    block_2d: bool = False,
    backend: str = "auto",
) -> NVFP4Tensor:
    """Quantize ``x`` to NVFP4.

    Parameters
    ----------
    x : torch.Tensor
        [..., K] bf16/fp16/fp32, K % 16 == 0, last dim contiguous, non-empty.
    global_scale : torch.Tensor, optional
        fp32 scalar decode scale to use instead of ``amax(x) / denominator`` (skips the amax pass).
    scale_rule : {"static6", "static4", "four_over_six"}
        ``static6`` is standard NVFP4 (block amax → 6, tensor denominator 6·448 = 2688);
        ``static4`` maps block amax → 4 (4·448); ``four_over_six`` keeps, per block, whichever of
        the →6 and →4 scales gives the smaller squared error (ties → 6), denominator 6·256
        (Four Over Six, arXiv 2512.02010; ``nvfp4-hopper.md`` §2); the error is measured on the
        scaled values, where the rounding happens (``reference._four_over_six_error``).
    rounding : {"rne", "stochastic"}
        Round to nearest even, or stochastic rounding with Philox4x32-10 (unbiased to 2⁻¹⁶ of a
        step; used for gradients). Element e = row·K + col of the flattened [rows, K] input takes 16
        bits of the Philox call with counter ⌊e/8⌋ (``reference.uniform16_from_philox``): one call per
        8 elements.
    seed : int, optional
        Philox key for stochastic rounding (default 0). Same seed → same result.
    hadamard : bool
        Apply the 16-point random Hadamard transform before quantizing (fused in the kernel);
        :meth:`NVFP4Tensor.dequantize` undoes it. Used for wgrad GEMM operands.
    hadamard_seed : int, optional
        Seed of the RHT sign vector (default: Transformer Engine's fixed signs).
    block_2d : bool
        One scale per 16×16 tile of the flattened [rows, K] matrix (weights, so that W and Wᵀ
        share scales), stored replicated on each row.
    backend : {"auto", "triton", "cuda", "torch"}

    Returns
    -------
    NVFP4Tensor
        data uint8 [..., K/2], scale float8_e4m3fn [..., K/16], global_scale fp32 [].

    Raises
    ------
    TypeError
        ``x`` not a bf16/fp16/fp32 tensor; ``global_scale`` not a tensor.
    ValueError
        Empty ``x``, K not a multiple of 16, non-contiguous last dim, unknown ``scale_rule`` or
        ``rounding``, ``global_scale`` not a 1-element tensor on x's device, or a backend that
        cannot run here (see :func:`longlive_kernels._backend.resolve_backend`).

    Notes
    -----
    Exact semantics and the non-finite policy: ``fp4/reference.py`` (blocks holding Inf/NaN
    decode to NaN). Element rounding matches ``ml_dtypes.float4_e2m1fn``.
    """
    validate_quantize_input(x)
    _checks.check_choice("scale_rule", scale_rule, tuple(SCALE_RULES))
    _checks.check_choice("rounding", rounding, ROUNDINGS)
    if global_scale is not None:
        _checks.check_tensor("global_scale", global_scale)
        if global_scale.numel() != 1:
            raise ValueError(f"global_scale must have 1 element, got shape {tuple(global_scale.shape)}")
        _checks.check_same_device(x=x, global_scale=global_scale)
    hmask = resolve_hadamard(hadamard, hadamard_seed)
    be = resolve_backend(backend, x.device, op="quantize_nvfp4", prefer=("cuda", "triton"))
    data, scale, gs = _quantize_eager(
        x, global_scale, scale_rule, rounding, int(seed or 0), -1 if hmask is None else hmask, block_2d, be
    )
    return NVFP4Tensor(
        data=data, scale=scale, global_scale=gs, shape=x.shape, dtype=x.dtype,
        scale_rule=scale_rule, block_2d=block_2d, hadamard_mask=hmask,
    )


register_aot(
    _amax_kernel,
    signature={"x_ptr": "*bf16", "amax_ptr": "*i32", "rows": "i32", "K": "i32", "stride_row": "i64",
               "hadamard_mask": "i32"},
    constexprs={"BR": 16, "BK": 256, "HADAMARD": True},
)
for _rule, _two_d, _sr, _had, _given in [
    ("static6", False, False, False, False),
    ("static6", True, True, True, True),
    ("four_over_six", True, False, False, False),
    ("four_over_six", False, True, True, False),
]:
    register_aot(
        _quantize_kernel,
        signature={"x_ptr": "*bf16", "data_ptr": "*u8", "scale_ptr": "*u8", "gs_ptr": "*fp32",
                   "amax_ptr": "*i32", "rows": "i32", "K": "i32", "stride_row": "i64", "seed": "i64",
                   "hadamard_mask": "i32"},
        constexprs={"DENOM": SCALE_RULES[_rule][1], "TARGET": SCALE_RULES[_rule][0],
                    "FOUR_OVER_SIX": _rule == "four_over_six", "STOCHASTIC": _sr, "HADAMARD": _had,
                    "BLOCK_2D": _two_d, "GIVEN_SCALE": _given, "BR": 16, "BK": 256},
        options={"enable_fp_fusion": False},
    )
