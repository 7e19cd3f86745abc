"""E2M1 block-scaled GEMM on Hopper: ``nvfp4_gemm(a, b) = a @ bᵀ`` with ``b`` an NVFP4 weight.

Kernels (all decode E2M1 × E4M3 inside the main loop into exact bf16/fp16 MMA operands, accumulate
in FP32 and apply both FP32 tensor scales and the bias in the epilogue — NVFP4 × NVFP4 semantics up
to the FP32 summation order, ``nvfp4-hopper.md`` §3.4):

- Hopper, M > 256 (default; ``LONGLIVE_GEMM_GLUON=0`` turns it off): the Gluon kernel of
  ``gemm_hopper.py`` (TMA pipeline, weight and W4A4 activation tiles decoded into shared memory while
  the previous wgmmas run; a partial last wave of tiles is split along K, deterministically). W4A4
  there defaults to ``predecode`` (the activation decoded once to bf16, exactly, then the W4A16
  kernel): faster on the H100 than decoding both operands per tile.
- CUDA extension built, M ≤ 64, K % 128 == 0 (default for W4A16 bf16 ``a``; ``backend="cuda"`` also
  takes W4A4, decoding ``a`` to bf16 first): the CUDA kernel of ``csrc/fp4/nvfp4_gemv.cu`` (weight
  rows streamed through a cp.async ring in 128-256-byte runs, ``mma.sync`` with weights on the M side,
  K split over a thread-block cluster and reduced in distributed shared memory; one launch).
- sm_80+, M ≤ 64 (opt-in: ``LONGLIVE_GEMM_GEMV=1`` or ``algorithm="gemv"``): the Gluon GEMV-style
  kernel of ``gemm_gemv.py`` (weight rows streamed once from global memory straight into
  ``mma.sync`` registers, K permuted so every thread's loads are contiguous; one launch). Correct on
  the H100, not yet faster than the portable split-K kernel there.
- Everywhere else (and ``algorithm="portable"``): the portable Triton kernel. W4A4 (``a`` NVFP4) decodes
  both operands to ``e2m1 · s_block · 2^-8`` (``gemm_dequant.py``); W4A16 (``a`` bf16/fp16) and
  W4A8 (``a`` float8_e4m3fn with an optional per-row / per-tensor scale) decode only ``b`` and run
  the MMA in ``a``'s dtype (fp16 for fp8 ``a``: exact). Small M (≤ ``SPLIT_K_MAX_M`` = 256) uses
  split-K over the grid's second axis; the last program of each output tile (an atomic counter
  per tile, self-resetting) sums the FP32 partials in a fixed order — deterministic, one launch.
- ``algorithm="dequantize"``: decode both operands (tensor scale 1, so still exact) to bf16 and run
  cuBLAS with FP32 output, then the same epilogue in PyTorch (an exact, memory-hungrier fallback).
- sm_100+: ``algorithm="auto"`` dispatches W4A4 to ``torch._scaled_mm`` with ``float4_e2m1fn_x2``
  and 128×4-swizzled scales (cuBLAS block-scaled FP4). Never run on the Hopper machines used here.

Host time matters at small M (the whole GEMM takes a few µs): in plain eager mode ``nvfp4_gemm`` calls
the implementation directly instead of through the ``torch.library`` dispatcher (``_backend.direct_call_ok``),
and host-side sizes use Python integers (``triton.cdiv`` costs µs per call). The fused paths are one
kernel launch per call (``predecode``: two; ``dequantize``: the decodes, cuBLAS and the PyTorch
epilogue ops; quantizing an activation with ``quantize_nvfp4`` adds its own launches).

This module holds the public function (input checks, backend and algorithm choice). The portable
Triton kernel is in ``gemm_triton.py``; its launcher and configurations, the other algorithms, the
Gluon dispatch and the ``longlive_kernels::nvfp4_gemm`` op in ``gemm_ops.py``.
"""

from __future__ import annotations

import math
import os

import torch

from .. import _checks
from .._backend import eager_op, has_cuda_extension, resolve_backend
from . import gemm_ops
from .format import BLOCK_SIZE, NVFP4Tensor
from .gemm_ops import (
    SPLIT_K_MAX_M,  # noqa: F401 (defined in gemm_ops: still importable from here)
    _gemm_op,
    _semaphores,  # noqa: F401 (tests call these two from here)
    _small_m_config,  # noqa: F401
)

_gemm_eager = eager_op(_gemm_op)  # eager calls skip the dispatcher (_backend.direct_call_ok)

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DENSE_A_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn)
ALGORITHMS = ("auto", "fused", "gemv", "portable", "predecode", "dequantize", "scaled_mm")
# backend="auto" takes the CUDA small-M kernel for W4A16 where it applies (bench/RESULTS.md: the
# fastest small-M kernel at all 8 shapes on the H100); LONGLIVE_GEMM_CUDA_GEMV=0 keeps Triton.
_CUDA_GEMV_AUTO = os.environ.get("LONGLIVE_GEMM_CUDA_GEMV", "1") == "1"


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def _check_nvfp4_operand(name: str, t: NVFP4Tensor) -> None:
    if t.swizzled:
        raise ValueError(
            f"{name} has swizzled (128×4-tiled) scales; nvfp4_gemm expects linear scales "
            f"[rows, K/16]: pass {name}.from_blocked()"
        )
    k = t.k
    if k % BLOCK_SIZE != 0:
        raise ValueError(f"{name}: K must be a multiple of {BLOCK_SIZE}, got {k}")
    if t.data.dtype != torch.uint8 or t.data.shape[-1] != k // 2 or t.data.numel() != t.rows * (k // 2):
        raise ValueError(f"{name}.data must be uint8 [..., K/2] for shape {tuple(t.shape)}, got "
                         f"{t.data.dtype} {tuple(t.data.shape)}")
    if t.scale.dtype != torch.float8_e4m3fn or t.scale.shape[-1] != k // BLOCK_SIZE:
        raise ValueError(f"{name}.scale must be float8_e4m3fn [..., K/16], got {t.scale.dtype} "
                         f"{tuple(t.scale.shape)}")
    _checks.check_last_dim_contiguous(f"{name}.data", t.data)
    _checks.check_last_dim_contiguous(f"{name}.scale", t.scale)
    if t.global_scale.numel() != 1:
        raise ValueError(f"{name}.global_scale must have 1 element, got shape {tuple(t.global_scale.shape)}")


def _rows2d(x: torch.Tensor, cols: int) -> torch.Tensor:
    return x.reshape(-1, cols) if x.dim() != 2 else x


def _resolve_algorithm(algorithm: str, device: torch.device, a_nvfp4: bool, backend: str) -> str:
    _checks.check_choice("algorithm", algorithm, ALGORITHMS)
    if algorithm == "scaled_mm" and not (a_nvfp4 and _has_native_fp4(device)):
        raise ValueError("algorithm='scaled_mm' needs NVFP4 `a` and a GPU with FP4 tensor cores "
                         "(compute capability >= 10.0) and torch.float4_e2m1fn_x2")
    if backend == "torch":
        return "fused"  # the reference ignores the algorithm
    if algorithm != "auto":
        return algorithm
    if a_nvfp4 and _has_native_fp4(device):
        return "scaled_mm"
    if a_nvfp4 and device.type == "cuda":
        return "predecode"  # (itself "fused" where the Hopper kernel does not apply)
    return "fused"


def _small_m_backend(backend: str, be: str, algorithm: str, m: int, k: int, a, a_scale, a_nvfp4: bool,
                     b: NVFP4Tensor) -> str:
    """``cuda`` where the CUDA small-M kernel runs the GEMM: asked for (else a ValueError naming what it
    takes; algorithms ``auto`` / ``fused`` / ``gemv``), or by ``auto`` (``LONGLIVE_GEMM_CUDA_GEMV=0``
    turns that off) for W4A16 on a CUDA device with the extension built, for the ``auto`` / ``fused``
    algorithms (``gemv`` names the Gluon kernel). W4A4 stays on Triton under ``auto``: the CUDA path
    decodes the activation in a launch of its own and lost at 3 of the 4 M = 16 shapes."""
    if backend not in ("auto", "cuda") or be == "torch":
        return be  # an explicit triton / torch call pays for none of the checks below
    dense = a if not a_nvfp4 else a.data
    applies = (algorithm in ("auto", "fused", "gemv")
               and gemm_ops.cuda_gemv_applies(m, k, dense, a_scale, a_nvfp4, b.data, b.scale)
               and not _has_native_fp4(dense.device))
    if be == "cuda" and not applies:
        got = "NVFP4" if a_nvfp4 else f"{dense.dtype}" + (" with a_scale" if a_scale is not None else "")
        raise ValueError(
            f"nvfp4_gemm: backend='cuda' runs the small-M kernel only: M ≤ {gemm_ops.CUDA_MAX_M}, K a multiple "
            f"of {gemm_ops.CUDA_K_MULTIPLE}, `a` bf16 (16-byte aligned rows) or NVFP4, `b` contiguous and "
            f"aligned, algorithm 'auto'/'fused'/'gemv'; got M={m}, K={k}, `a` {got}, algorithm={algorithm!r}")
    # (auto resolves to triton only on a CUDA device)
    if (backend == "auto" and be == "triton" and applies and not a_nvfp4 and algorithm != "gemv"
            and _CUDA_GEMV_AUTO and has_cuda_extension()):
        return "cuda"
    return be


def _has_native_fp4(device: torch.device) -> bool:
    return (device.type == "cuda" and hasattr(torch, "float4_e2m1fn_x2")
            and torch.cuda.get_device_capability(device)[0] >= 10)


def nvfp4_gemm(
    a: NVFP4Tensor | torch.Tensor,
    b: NVFP4Tensor,
    *,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    a_scale: torch.Tensor | None = None,
    algorithm: str = "auto",
    backend: str = "auto",
) -> torch.Tensor:
    """``a @ bᵀ (+ bias)`` with ``b`` an NVFP4 matrix (TN layout, as cuBLAS).

    Parameters
    ----------
    a : NVFP4Tensor or torch.Tensor
        [..., K]. NVFP4 (W4A4, exact NVFP4 semantics), or a dense bf16 / fp16 (W4A16) or
        float8_e4m3fn (W4A8) tensor with a contiguous last dim.
    b : NVFP4Tensor
        [N, K] (e.g. a Linear weight [out, in]) with linear (not swizzled) scales. If ``a`` and
        ``b`` carry a Hadamard mask it must be the same one (the product is invariant under a
        shared orthogonal transform of K; the wgrad GEMM of NVFP4 training relies on it).
    bias : torch.Tensor, optional
        [N], added in FP32 in the epilogue.
    out_dtype : {torch.bfloat16, torch.float16, torch.float32}
    a_scale : torch.Tensor, optional
        Only for float8 ``a``: FP32 per-tensor (1 element) or per-row ([M]) decode scale.
    algorithm : {"auto", "fused", "gemv", "portable", "predecode", "dequantize", "scaled_mm"}
        ``fused``: decode inside the main loop — when enabled (module docstring), the Gluon kernels:
        ``gemm_gemv.py`` for M ≤ 64 (bf16/fp16 or NVFP4 ``a``), ``gemm_hopper.py`` on Hopper for
        M > 256 (TMA pipeline; ``K % 32 == 0``, ``N % 8 == 0``); otherwise the portable Triton kernel
        (split-K for M ≤ 256). ``gemv``: the small-M Gluon kernel even when not enabled by default
        (where it applies; otherwise as ``fused``).
        ``portable``: always the portable Triton kernel.
        ``predecode`` (W4A4, Hopper, M > 256): decode ``a`` once to bf16 (exact) and run the W4A16
        kernel — cheaper main loop for extra memory traffic; otherwise as ``fused``.
        ``dequantize``: decode operands to bf16 (exact), cuBLAS with FP32 output, torch epilogue.
        ``scaled_mm``: sm_100+ only, W4A4 through ``torch._scaled_mm`` with FP4 operands (not run
        on Hopper; rounds to bf16 before the tensor scales are applied). ``auto`` picks
        ``scaled_mm`` on sm_100+ for W4A4, ``predecode`` for W4A4 on other GPUs, else ``fused``.
    backend : {"auto", "triton", "cuda", "torch"}
        ``torch`` is the reference (``reference.nvfp4_gemm``: fp64 products of the decoded values).
        ``cuda``: the small-M CUDA kernel (``csrc/fp4/nvfp4_gemv.cu``): M ≤ 64, K % 128 == 0, bf16
        or NVFP4 ``a`` (decoded once to bf16, exactly), algorithm ``auto`` / ``fused`` / ``gemv``;
        anything else is a ValueError. ``auto`` takes it for W4A16 where it applies.

    Returns
    -------
    torch.Tensor
        [..., N] of ``out_dtype``: ``(Σ_k â·b̂) · s_a · s_b + bias`` rounded once to ``out_dtype``,
        where â, b̂ are the decoded ``e2m1 · s_block`` values and s_a, s_b the tensor scales.

    Raises
    ------
    TypeError
        ``b`` not an NVFP4Tensor; ``a`` of an unsupported type or dtype; bad ``out_dtype``/bias dtype.
    ValueError
        K mismatch, K not a multiple of 16, swizzled scales, mismatched Hadamard masks, tensors on
        different devices, ``a_scale`` with a non-fp8 ``a`` or of the wrong size, unknown algorithm,
        a backend that cannot run here, or ``backend="cuda"`` outside the small-M kernel's domain.

    Notes
    -----
    Exactness: the decoded operands are exact in bf16 and wgmma accumulates in FP32, so W4A4 differs
    from an infinitely precise NVFP4 GEMM only by FP32 summation order and the final rounding
    (``nvfp4-hopper.md`` §3.4). M of any size ≥ 1 works; K need not be a multiple of the tile.
    """
    if not isinstance(b, NVFP4Tensor):
        raise TypeError(f"b must be an NVFP4Tensor [N, K], got {type(b).__name__}")
    _check_nvfp4_operand("b", b)
    if len(b.shape) != 2:
        raise ValueError(f"b must be 2-D [N, K], got shape {tuple(b.shape)}")
    n, k = b.shape
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    a_nvfp4 = isinstance(a, NVFP4Tensor)
    if a_nvfp4:
        _check_nvfp4_operand("a", a)
        lead = tuple(a.shape[:-1])
        ka = a.k
        if a_scale is not None:
            raise ValueError("a_scale is only for a float8 `a`; an NVFP4 `a` carries its own scales")
        if a.hadamard_mask != b.hadamard_mask:
            raise ValueError(f"a and b must carry the same Hadamard mask, got {a.hadamard_mask} and "
                             f"{b.hadamard_mask}")
    elif isinstance(a, torch.Tensor):
        _checks.check_dtype("a", a, DENSE_A_DTYPES)
        if a.dim() == 0:
            raise ValueError("a must have at least 1 dim, got a scalar")
        _checks.check_last_dim_contiguous("a", a)
        lead = tuple(a.shape[:-1])
        ka = a.shape[-1]
        if b.hadamard_mask is not None:
            raise ValueError("b carries a Hadamard mask but a is dense; quantize a with the same mask")
        if a_scale is not None:
            if a.dtype != torch.float8_e4m3fn:
                raise ValueError(f"a_scale is only accepted for float8_e4m3fn `a`, got a of {a.dtype}")
            _checks.check_tensor("a_scale", a_scale)
            if a_scale.numel() not in (1, math.prod(lead)):
                raise ValueError(f"a_scale must have 1 or M={math.prod(lead)} elements, got "
                                 f"{tuple(a_scale.shape)}")
    else:
        raise TypeError(f"a must be an NVFP4Tensor or a torch.Tensor, got {type(a).__name__}")
    if ka != k:
        raise ValueError(f"K mismatch: a has K={ka}, b has K={k} (b is [N, K], computing a @ bᵀ)")
    if bias is not None:
        _checks.check_dtype("bias", bias)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    dev = _checks.check_same_device(
        a=a.data if a_nvfp4 else a, b=b.data, bias=bias, a_scale=a_scale,
        b_global_scale=b.global_scale, a_global_scale=a.global_scale if a_nvfp4 else None,
    )
    be = resolve_backend(backend, dev, op="nvfp4_gemm", supported=("triton", "cuda", "torch"), prefer=("triton",))
    m = math.prod(lead)
    be = _small_m_backend(backend, be, algorithm, m, k, a, a_scale, a_nvfp4, b)
    algo = _resolve_algorithm(algorithm, dev, a_nvfp4, be)
    if m == 0:
        return torch.empty((*lead, n), dtype=out_dtype, device=dev)
    bd = _rows2d(b.data, k // 2)
    bs = _rows2d(b.scale, k // BLOCK_SIZE)
    if a_nvfp4:
        args = (_rows2d(a.data, k // 2), _rows2d(a.scale, k // BLOCK_SIZE),
                a.global_scale.reshape(1).float(), True)
    else:
        args = (_rows2d(a, k), a_scale, None, False)
    out = _gemm_eager(args[0], args[1], args[2], bd, bs, b.global_scale.reshape(1).float(), bias, out_dtype, args[3], algo, be)
    return out.reshape(*lead, n)
