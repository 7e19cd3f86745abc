"""The FP8 path as one call: ``fp8_linear(x, w_fp8, w_scale) = quantize_rowwise(x) @ w_fp8ᵀ`` (scaled).

The FP8 path (``fp8.py``: row-wise E4M3 activations and weights, cuBLAS ``torch._scaled_mm`` with
row/column scales) called as ``fp8_gemm(*quantize_fp8_rowwise(x), w8, ws8)`` measured 150–270 µs slower
than ``_scaled_mm`` alone on the H100 at M ≥ 1760 (bench_gemm, 2026-11-21), several times the
quantization's own traffic (≤ 130 MB, ~45 µs): host time between the two kernels (two dispatcher
round trips and two Python layers per call) during which the GPU idled. Here:

- one row-wise quantization kernel that reads each activation row from HBM once: a program holds
  a whole row in registers (16-byte loads, K ≤ 16384), reduces the row amax, and writes the E4M3 codes
  (``q = e4m3_rn_sat(x · (1/s))``, ``s = amax/448`` correctly rounded — bit-identical to
  ``reference.quantize_fp8_rowwise``) and the FP32 row scale. Traffic: M·K·(2 + 1) bytes + 4·M.
  Rows longer than 16384, and rows like K = 3072 that a power-of-two tile would pad, take two passes
  over chunks (the second read from L2; see ``_quant_config``). bf16 rows with K % 8 == 0 on a GPU
  take the CUDA kernel instead (``csrc/fp4/fp8_quantize.cu``: one CTA per row over exactly K / 8
  16-byte vectors, no power-of-two padding). Same bits; H100, device time
  (``tools/probe_fp8_quantize_cuda.py``): 1.13–1.15× the Triton kernel for K = 14336 with the GELU
  (27.6 µs at 1760 rows, 0.97× copy), 1.06–1.14× for K = 3072.
- then ``torch._scaled_mm`` (row-wise scales, fast accumulation, bias in cuBLAS's epilogue);
- in eager mode the custom op is bypassed (``_backend.direct_call_ok``): two launches per call, no
  other host work than the checks.

Roofline note (derived): the activation pass costs at least 3·M·K bytes of HBM traffic, which at
M = 1760, K = N = 3072 is ~6 µs next to cuBLAS FP8's ~30 µs; so that shape cannot reach 1.4× BF16 with a
separate quantization pass — the activation must arrive in FP8 from its producer (``fp8_linear``
also takes an already quantized ``(q, scale)`` pair).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import eager_op, interpret_mode, resolve_backend
from . import reference
from .fp8 import (
    _cuda_quantize_ok,
    _encode_row,
    _max_nan,
    _quantize_cuda,
    _row_amax,
    _row_amax_scale,
    _scaled_mm_by_default,
)
from .fp8 import _gemm_scaled_mm as _scaled_mm_rowwise
from .fp8 import _gemm_triton as _fp8_gemm_triton
from .fp8_tensorwise import check_scale_shape

MAX_SINGLE_PASS_K = 16384  # longest row held in registers

# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------


# gelu_tanh(x) = x·sigmoid(2u) = x / (1 + 2^(x·(A + B·x²))), u = √(2/π)·(x + 0.044715·x³):
# A = −2·log2(e)·√(2/π), B = 0.044715·A (both rounded to fp32 where they meet an fp32 tensor)
_GELU_A = tl.constexpr(-2.302208198144325)
_GELU_B = tl.constexpr(-0.1029432395800235)


@triton.jit
def _gelu_tanh(xf, FAST: tl.constexpr):
    """gelu_tanh of fp32 ``xf`` as ``xf · rcp(1 + ex2(xf · fma(xf², B, A)))``: 7 instructions (2 MUFU),
    numerically stable at both tails (x → −∞: −0; x → +∞: x). FAST (GPU): ``ex2.approx.ftz`` and
    ``rcp.approx.ftz``, exactly as ``csrc/fp4/fp8_quantize.cu`` computes it; else (interpreter) the
    same steps with the library's 2^x and 1/x."""
    w = xf * tl.fma(xf * xf, _GELU_B, _GELU_A)
    if FAST:
        e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [w], dtype=tl.float32, is_pure=True,
                                      pack=1)
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [e + 1.0], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        r = 1.0 / (tl.exp2(w) + 1.0)
    return xf * r


@triton.jit
def _input(ptrs, mask, GELU: tl.constexpr, FAST: tl.constexpr):
    """A tile of the activation in its own dtype (kept packed until the encode); with GELU,
    ``gelu_tanh(x)`` (``_gelu_tanh``) rounded to x's dtype, what the unfused ``F.gelu(x, approximate="tanh")``
    would have stored up to that rounding's last bit."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if GELU:
        x = _gelu_tanh(x.to(tl.float32), FAST).to(x.dtype)
    return x


@triton.jit
def _fp8_rowwise_kernel(
    x_ptr,  # [rows, K] float, row stride stride_x
    q_ptr,  # [rows, K] uint8 out: E4M3 codes, contiguous
    scale_ptr,  # [rows] fp32 out: decode scale amax/448
    rows,
    K,
    stride_x,
    BR: tl.constexpr,  # rows per program
    BK: tl.constexpr,  # columns per chunk (a power of two ≥ K when SINGLE_PASS)
    VEC: tl.constexpr,  # contiguous elements per thread (16-byte loads of bf16/fp16)
    SINGLE_PASS: tl.constexpr,
    FAST: tl.constexpr,
    GELU: tl.constexpr = False,  # quantize gelu_tanh(x) (rounded to x's dtype) instead of x
):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = r < rows
    x_rows = x_ptr + r[:, None] * stride_x
    q_rows = q_ptr + r[:, None] * K
    c = tl.max_contiguous(tl.multiple_of(tl.arange(0, BK), VEC), VEC)
    if SINGLE_PASS:  # the whole row in registers: one HBM read
        m = rmask[:, None] & (c < K)[None, :]
        x = _input(x_rows + c[None, :], m, GELU, FAST)
        scale, inv = _row_amax_scale(_row_amax(x, 1))
        code = _encode_row(x, inv[:, None], FAST)
        tl.store(q_rows + c[None, :], code.to(tl.uint8), mask=m)
    else:  # amax over chunks, then quantize them again (the second read mostly hits L2)
        amax = tl.zeros((BR,), dtype=tl.float32)
        for k in range(0, K, BK):
            m = rmask[:, None] & (k + c < K)[None, :]
            x = _input(x_rows + (k + c)[None, :], m, GELU, FAST)
            amax = _max_nan(amax, _row_amax(x, 1))
        scale, inv = _row_amax_scale(amax)
        for k in range(0, K, BK):
            m = rmask[:, None] & (k + c < K)[None, :]
            x = _input(x_rows + (k + c)[None, :], m, GELU, FAST)
            code = _encode_row(x, inv[:, None], FAST)
            tl.store(q_rows + (k + c)[None, :], code.to(tl.uint8), mask=m)
    tl.store(scale_ptr + r, scale, mask=rmask)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _quant_config(rows: int, k: int, elem_bytes: int, interp: bool) -> tuple[int, int, int, bool, int]:
    """(BR, BK, VEC, single_pass, warps) of the row-wise quantizer.

    From ``tools/probe_fp8_quantize.py`` on an H100 (bf16, device time, L2 flushed; fourteenth
    session): a row K = 3072 that is not a power of two runs best as two passes over three 1024-column
    chunks, one row and 4 warps per program (7040 rows: 26.9 µs = 0.80× copy, against 41.0 µs for
    the whole row padded to 4096 in registers); a power-of-two-padded single pass wants ~32 elements
    per thread and one row per program (K = 14336: 16 warps, 129.5 µs = 0.77× copy, against 206 µs
    with 8 warps). Same codes and scales in every configuration (the probe checks)."""
    vec = max(1, 16 // elem_bytes)
    if interp:
        return 4, min(1024, max(16, triton.next_power_of_2(k))), vec, k <= 1024, 4
    if k > MAX_SINGLE_PASS_K:
        return 1, 4096, vec, False, 8
    bk = max(vec * 32, triton.next_power_of_2(k))
    if bk != k and k % 1024 == 0 and k <= 8192:  # no padded lanes: chunks of 1024, the 2nd read from L2
        return 1, 1024, vec, False, 4
    warps = max(1, min(16, bk // 1024))  # ~32 elements per thread
    br = max(1, min(8, 1024 // bk))  # short rows: several per program
    return br, bk, vec, True, warps


def _quantize(x2d: torch.Tensor, gelu: bool = False, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise E4M3 codes and scales of x2d (of ``gelu_tanh(x2d)`` with ``gelu``). ``impl``: "cuda",
    "triton", or "auto" (CUDA where ``_cuda_quantize_ok``; same bits either way)."""
    if impl == "cuda" or (impl == "auto" and _cuda_quantize_ok(x2d)):
        return _quantize_cuda(x2d, gelu)
    rows, k = x2d.shape
    scale = torch.empty((rows,), dtype=torch.float32, device=x2d.device)
    q = torch.empty((rows, k), dtype=torch.uint8, device=x2d.device)
    interp = interpret_mode() or not x2d.is_cuda
    br, bk, vec, single, warps = _quant_config(rows, k, x2d.element_size(), interp)
    _fp8_rowwise_kernel[(-(-rows // br),)](
        x2d, q, scale, rows, k, x2d.stride(0), BR=br, BK=bk, VEC=vec, SINGLE_PASS=single, FAST=not interp,
        GELU=gelu, num_warps=warps, enable_fp_fusion=False,
    )
    return q.view(torch.float8_e4m3fn), scale


@torch.library.custom_op("longlive_kernels::fp8_linear", mutates_args=())
def _linear_op(x: torch.Tensor, x_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None, out_dtype: torch.dtype, use_scaled_mm: bool, gelu: bool,
               backend: str) -> torch.Tensor:
    if backend == "torch":
        if x_scale is None:
            x, x_scale = reference.quantize_fp8_rowwise(F.gelu(x, approximate="tanh") if gelu else x)
        return reference.fp8_gemm(x, x_scale, w, w_scale, bias, out_dtype=out_dtype)
    if x_scale is None:
        x, x_scale = _quantize(x, gelu)
    if use_scaled_mm:
        return _scaled_mm_rowwise(x, x_scale, w, w_scale, bias, out_dtype)
    return _fp8_gemm_triton(x, x_scale, w, w_scale, bias.contiguous() if bias is not None else None, out_dtype)


@_linear_op.register_fake
def _(x, x_scale, w, w_scale, bias, out_dtype, use_scaled_mm, gelu, backend):
    return x.new_empty((x.shape[0], w.shape[0]), dtype=out_dtype)


_linear_eager = eager_op(_linear_op)  # eager calls skip the dispatcher (_backend.direct_call_ok)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------


def fp8_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    x_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    use_scaled_mm: bool | None = None,
    input_activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``quantize_rowwise(x) @ (w · w_scale)ᵀ + bias`` — the FP8 path of a linear layer in one call.

    Parameters
    ----------
    x : torch.Tensor
        [..., K] bf16/fp16/fp32 activations (quantized here, row-wise E4M3, the numerics of
        :func:`~longlive_kernels.fp4.quantize_fp8_rowwise`), or float8_e4m3fn codes with ``x_scale``.
    w : torch.Tensor
        [N, K] float8_e4m3fn weight (from :func:`~longlive_kernels.fp4.quantize_fp8_rowwise` or
        :func:`~longlive_kernels.fp4.quantize_fp8_tensorwise`).
    w_scale : torch.Tensor
        [N] fp32 row scales of ``w``, or one element (shape () or (1,)): a per-tensor scale.
    x_scale : torch.Tensor, optional
        [...] fp32 row scales, or one element (per-tensor codes, e.g. from ``adaln_modulate(...,
        out_fp8=True, fp8_scale=...)``), only with a float8_e4m3fn ``x`` (already quantized
        activations). With both scales per-tensor, cuBLAS runs its per-tensor FP8 kernel where that
        is the faster one (``fp8_tensorwise.tensorwise_kernel_faster``: N ≤ 4096 with M ≤ 2048 or
        K ≥ 8192); a float ``x`` is always quantized row-wise.
    bias : torch.Tensor, optional
        [N] float.
    out_dtype : {torch.bfloat16, torch.float16, torch.float32}, optional
        Default: ``x``'s dtype, bf16 for fp32/fp8 ``x``.
    use_scaled_mm : bool, optional
        cuBLAS through ``torch._scaled_mm`` (default on sm_89+ when K and N are multiples of 16 and
        ``out_dtype`` is bf16), else the Triton FP8 kernel of ``fp8.py``.
    input_activation : {None, "gelu_tanh"}
        Apply ``F.gelu(x, approximate="tanh")`` to ``x`` first, fused into the quantization (one read
        of ``x`` instead of a GELU pass plus the quantization's read: the Wan FFN's second linear).
        The GELU value is rounded to ``x``'s dtype before quantizing, as the unfused pair stores it;
        the kernels' GELU (``x·sigmoid(2u)`` through the ex2 and rcp MUFU instructions, the same in
        the Triton and the CUDA kernel) may differ from torch's tanh in that rounding's last bit.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [..., N] of ``out_dtype``. Same result as ``fp8_gemm(*quantize_fp8_rowwise(x), w, w_scale)``.

    Raises
    ------
    TypeError, ValueError
        Wrong dtypes or shapes, K mismatch, ``x_scale`` without FP8 ``x`` (or the reverse), tensors on
        different devices, backend unavailable.

    Notes
    -----
    Two kernel launches on CUDA (row-wise quantization, cuBLAS FP8 GEMM); one with ``x_scale``.
    """
    _checks.check_dtype("w", w, (torch.float8_e4m3fn,))
    _checks.check_dtype("w_scale", w_scale, (torch.float32,))
    _checks.check_ndim("w", w, 2)
    n, k = w.shape
    fp8_x = x.dtype == torch.float8_e4m3fn
    if fp8_x != (x_scale is not None):
        raise ValueError("x_scale must be given exactly when x is float8_e4m3fn (already quantized), got "
                         f"x of {x.dtype} and x_scale {'None' if x_scale is None else tuple(x_scale.shape)}")
    if not fp8_x:
        _checks.check_dtype("x", x)
    if input_activation not in (None, "gelu_tanh"):
        raise ValueError(f"input_activation must be None or 'gelu_tanh', got {input_activation!r}")
    if input_activation is not None and fp8_x:
        raise ValueError("input_activation needs unquantized x (it is applied before the quantization), got "
                         "float8_e4m3fn x with x_scale")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim, got a scalar")
    if x.shape[-1] != k:
        raise ValueError(f"K mismatch: x has K={x.shape[-1]}, w has K={k} (w is [N, K])")
    _checks.check_last_dim_contiguous("x", x)
    _checks.check_last_dim_contiguous("w", w)
    lead = tuple(x.shape[:-1])
    if x_scale is not None:
        _checks.check_dtype("x_scale", x_scale, (torch.float32,))
        check_scale_shape("x_scale", x_scale, lead)
    check_scale_shape("w_scale", w_scale, (n,))
    if bias is not None:
        _checks.check_dtype("bias", bias)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if out_dtype is None:
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype must be bf16, fp16 or fp32, got {out_dtype}")
    dev = _checks.check_same_device(x=x, w=w, w_scale=w_scale, x_scale=x_scale, bias=bias)
    be = resolve_backend(backend, dev, op="fp8_linear", supported=("triton", "torch"), prefer=("triton",))
    if use_scaled_mm is None:
        use_scaled_mm = _scaled_mm_by_default(be, dev, k, n, out_dtype)
    x2d = x.reshape(-1, k)
    if x2d.shape[0] == 0:
        return torch.empty((*lead, n), dtype=out_dtype, device=dev)
    xs = x_scale.reshape(-1).contiguous() if x_scale is not None else None
    out = _linear_eager(x2d, xs, w, w_scale.reshape(-1).contiguous(), bias, out_dtype, bool(use_scaled_mm),
                        input_activation == "gelu_tanh", be)
    return out.reshape(*lead, n)


# the DiT's activations: K = 3072 in 1024-column chunks; the FFN hidden K = 14336 with the fused GELU
for _cfg in ({"BR": 1, "BK": 1024, "SINGLE_PASS": False, "GELU": False, "num_warps": 4},
             {"BR": 1, "BK": 16384, "SINGLE_PASS": True, "GELU": True, "num_warps": 16}):
    register_aot(
        _fp8_rowwise_kernel,
        signature={"x_ptr": "*bf16", "q_ptr": "*u8", "scale_ptr": "*fp32", "rows": "i32", "K": "i32",
                   "stride_x": "i32"},
        constexprs={"BR": _cfg["BR"], "BK": _cfg["BK"], "VEC": 8, "SINGLE_PASS": _cfg["SINGLE_PASS"], "FAST": True,
                    "GELU": _cfg["GELU"]},
        options={"enable_fp_fusion": False, "num_warps": _cfg["num_warps"]},
    )

__all__ = ["fp8_linear"]
