"""Per-tensor FP8 E4M3 scaling: one fp32 scale for a whole operand of the FP8 path.

Why a second scaling next to the row-wise one (``fp8.py``): cuBLASLt has a single row-wise
(outer-vector) FP8 algorithm at M = 1760, N = 3072 on the H100 (128 × 128 tiles, 2.55 waves), but
eight per-tensor ones, and its per-tensor heuristic runs that shape 1.09× faster (K = 3072) and 1.22×
faster (K = 14336) — while the row-wise kernel is 4–9 % faster at the larger shapes
(``tools/probe_fp8_tensorwise.py``, ``tools/probe_cublaslt_fp8.cu``; bench/RESULTS.md, twenty-sixth
session). cuBLASLt takes no mixed pair (a per-tensor weight with row-wise activations: status
NOT_SUPPORTED), so the per-tensor kernel needs both operands per-tensor.

The activation's scale must then be known before its producer writes it, without a pass over the
tensor: the LayerNorm bound (``attention.adaln.layernorm_fp8_scale``) gives it from the modulation
vectors alone. E4M3 keeps 3 mantissa bits over its whole normal range, so a loose scale costs
precision only for values below 2⁻⁶·448·scale, which turn subnormal.
"""

from __future__ import annotations

import torch

from .. import _checks
from . import reference


def quantize_fp8_tensorwise(x: torch.Tensor, *, scale: torch.Tensor | float | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize all of ``x`` to FP8 E4M3 with one fp32 scale.

    Parameters
    ----------
    x : torch.Tensor
        [...] bf16/fp16/fp32, non-empty (a weight, quantized once at load).
    scale : torch.Tensor or float, optional
        The decode scale to use (one fp32 element, or a positive finite float), e.g. a bound/448
        known without reading ``x``; values beyond ``448·scale`` saturate. Default:
        ``amax(|x|) / 448``.

    Returns
    -------
    (q, scale) : (torch.Tensor, torch.Tensor)
        q float8_e4m3fn shaped as ``x``, ``q = e4m3_rn_sat(x · (1/scale))`` (the row-wise rule of
        :func:`~longlive_kernels.fp4.quantize_fp8_rowwise` over the whole tensor); scale a 0-dim fp32
        tensor (Inf where x holds Inf/NaN: finite values then encode as zeros, the rest as NaN).

    Raises
    ------
    TypeError, ValueError
        Non-float or empty ``x``; ``scale`` not one fp32 element or not a positive finite float.

    Notes
    -----
    Plain torch ops on every device (``reference.quantize_fp8_tensorwise``): weights are quantized once,
    and activations get their per-tensor codes from their producer's kernel.
    """
    _checks.check_dtype("x", x)
    _checks.check_nonempty("x", x)
    return reference.quantize_fp8_tensorwise(x, check_fp8_scale("scale", scale, x.device))


def check_fp8_scale(name: str, scale: torch.Tensor | float | None, device: torch.device) -> torch.Tensor | None:
    """``scale`` as a 0-dim fp32 tensor on ``device`` (None stays None).

    Raises
    ------
    TypeError
        A tensor that is not fp32, or neither a tensor nor a real number.
    ValueError
        A tensor of more than one element or on another device; a float that is not positive and finite.
    """
    if isinstance(scale, torch.Tensor):
        _checks.check_dtype(name, scale, (torch.float32,))
    _checks.check_positive_bound(name, scale, device)
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        return scale.reshape(())
    return torch.tensor(float(scale), dtype=torch.float32, device=device)


def tensorwise_kernel_faster(m: int, n: int, k: int) -> bool:
    """Whether cuBLASLt's per-tensor FP8 GEMM beats its row-wise one for ``[m, k] @ [n, k]ᵀ``.

    From ``tools/probe_fp8_tensorwise.py`` (H100, device time, L2 flushed; per-tensor / row-wise):
    N = 3072: 1.09 (M = 1760, K = 3072), 1.22 (1760, 14336), 1.02 (7040 and 14080, K = 14336),
    0.95–0.96 (M ≥ 7040, K = 3072); N ≥ 9216: 1.01 at M = 1760 and 9216 columns, else 0.91–0.96.
    So: N ≤ 4096 with M ≤ 2048 or K ≥ 8192. Both kernels compute the same products (scales applied
    in the epilogue); a per-tensor pair runs the row-wise kernel with its scales broadcast.
    """
    return n <= 4096 and (m <= 2048 or k >= 8192)


def check_scale_shape(name: str, scale: torch.Tensor, rows: tuple[int, ...]) -> None:
    """An FP8 operand's scales: one per row (shape ``rows``) or one per tensor (one element)."""
    if tuple(scale.shape) != rows and scale.shape not in ((), (1,)):
        raise ValueError(f"{name} must have shape {rows} (row-wise) or () / (1,) (per-tensor), got "
                         f"{tuple(scale.shape)}")


def broadcast_scale(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows] fp32 scales from row scales or from one per-tensor scale (repeated)."""
    return scale.reshape(1).expand(rows).contiguous() if scale.numel() == 1 and rows != 1 else scale.reshape(-1)


__all__ = ["quantize_fp8_tensorwise"]
