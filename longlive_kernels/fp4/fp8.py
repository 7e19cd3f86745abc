"""The Hopper-native FP8 path: row-wise FP8 E4M3 quantization and an FP8 GEMM with row/column
scales (``quantize_fp8_rowwise``, ``fp8_gemm``).

Not NVFP4-exact: weights (or an NVFP4 checkpoint's decoded weights) are re-quantized once to E4M3
with one FP32 scale per output row, activations per token row at run time; the GEMM multiplies
E4M3 on FP8 tensor cores (QGMMA) and applies ``a_scale[m] · b_scale[n]`` in the epilogue. This is the
recipe of LongLive's validated Hopper path (TorchAO FP8 row-wise W8A8, ``longlive-spec.md`` §3.2)
and of vLLM's NVFP4→FP8 conversion on Hopper (``nvfp4-hopper.md`` §3.1). Its error relative to the
exact NVFP4 GEMM is measured in ``tests/fp4/test_gemm.py`` and ``bench/fp4/bench_gemm.py``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import cuda_op_available, eager_op, interpret_mode, resolve_backend
from . import reference
from .fp8_tensorwise import broadcast_scale, check_scale_shape, tensorwise_kernel_faster
from .nvfp4_triton import e4m3_rne

E4M3_MAX = 448.0

# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _e4m3_signed_code(v, FAST: tl.constexpr):
    """fp32 → E4M3 code (int32 0..255), RNE, saturating at ±448, NaN → 0x7F."""
    if FAST:
        return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
    else:
        a = tl.minimum(tl.abs(v), 448.0)
        _, code = e4m3_rne(a)
        code = code | (((v.to(tl.int32, bitcast=True) >> 31) & 1) << 7)
        return tl.where(v != v, 0x7F, code)


@triton.jit
def _max_nan(a, b):
    """max(a, b), NaN if either is NaN (PTX ``max.NaN``): one instruction per element; the NaN is
    turned into an infinite scale once per row (``_row_amax_scale``)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _magnitude_bits(x):
    """|x| as the integer of its bits with the sign bit cleared: ordered as |x| is, NaN above +Inf, so
    the max of these is the bits of the amax (a NaN where the row holds one). Exact and without a
    conversion, so a bf16/fp16 row can stay packed in registers until its encode."""
    if x.dtype.primitive_bitwidth == 16:
        return x.to(tl.int16, bitcast=True) & 0x7FFF
    else:
        return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _amax_of_bits(m, dtype: tl.constexpr):
    """The amax in fp32 from the max of a ``dtype`` row's ``_magnitude_bits``."""
    if dtype.primitive_bitwidth == 16:
        return m.to(tl.int16).to(dtype, bitcast=True).to(tl.float32)
    else:
        return m.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _row_amax(x, axis: tl.constexpr):
    """max |x| along ``axis`` in fp32 (x float of any width); NaN where the row holds a NaN."""
    return _amax_of_bits(tl.max(_magnitude_bits(x), axis), x.dtype)


@triton.jit
def _row_amax_scale(amax):
    """(decode scale s, encode multiplier 1/s) of a row from its amax: s = amax/448 correctly rounded
    and at least 2⁻¹²⁶ (so 1/s is finite); 1 for an all-zero row; +Inf for a row holding Inf or NaN
    (amax Inf or NaN), whose 1/s = 0 then encodes finite values as zeros and the rest as NaN."""
    s = tl.maximum(tl.math.div_rn(amax, 448.0), 1.1754943508222875e-38)
    s = tl.where(amax == 0.0, 1.0, s)
    s = tl.where(amax != amax, float("inf"), s)  # noqa: PLR0124 (the NaN test)
    return s, tl.math.div_rn(1.0, s)


@triton.jit
def _encode_row(x, inv, FAST: tl.constexpr):
    """E4M3 codes (int32) of x·inv (x of any float dtype, taken to fp32), the product rounded once to
    fp32 and then to E4M3 (RNE, saturating): the row-wise quantizer's encode, one multiply per element."""
    return _e4m3_signed_code(x.to(tl.float32) * inv, FAST)


@triton.jit
def _fp8_quantize_kernel(
    x_ptr,  # [rows, K] float, row stride stride_x
    q_ptr,  # [rows, K] uint8 out (E4M3 bits), contiguous
    scale_ptr,  # [rows] fp32 out: decode scale amax/448 (1 for all-zero rows)
    rows,
    K,
    stride_x,
    BR: tl.constexpr,
    BK: tl.constexpr,
    FAST: tl.constexpr,
):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = r < rows
    r64 = r.to(tl.int64)[:, None]
    amax = tl.zeros((BR,), dtype=tl.float32)
    for k in range(0, K, BK):
        c = k + tl.arange(0, BK)
        m = rmask[:, None] & (c < K)[None, :]
        x = tl.load(x_ptr + r64 * stride_x + c[None, :], mask=m, other=0.0).to(tl.float32)
        amax = _max_nan(amax, _row_amax(x, 1))
    scale, inv = _row_amax_scale(amax)
    tl.store(scale_ptr + r, scale, mask=rmask)
    for k in range(0, K, BK):
        c = k + tl.arange(0, BK)
        m = rmask[:, None] & (c < K)[None, :]
        x = tl.load(x_ptr + r64 * stride_x + c[None, :], mask=m, other=0.0).to(tl.float32)
        code = _encode_row(x, inv[:, None], FAST)
        tl.store(q_ptr + r64 * K + c[None, :], code.to(tl.uint8), mask=m)


@triton.jit
def _fp8_gemm_kernel(
    a_ptr,  # [M, K] float8_e4m3fn
    b_ptr,  # [N, K] float8_e4m3fn
    a_scale_ptr,  # [M] fp32
    b_scale_ptr,  # [N] fp32
    bias_ptr,  # [N] float (HAS_BIAS)
    out_ptr,  # [M, N]
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    PROMOTE: tl.constexpr,  # FP8 products summed in the tensor core's accumulator before an fp32 add
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, BK)
    a_rows = a_ptr + (offs_m % M).to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + (offs_n % N).to(tl.int64)[:, None] * stride_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        kmask = (k + kk < K)[None, :]
        a = tl.load(a_rows + (k + kk)[None, :], mask=kmask, other=0.0)
        b = tl.load(b_rows + (k + kk)[None, :], mask=kmask, other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=PROMOTE)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = acc * tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    acc = acc * tl.load(b_scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _quantize_triton(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, k = x2d.shape
    q = torch.empty((rows, k), dtype=torch.uint8, device=x2d.device)
    scale = torch.empty((rows,), dtype=torch.float32, device=x2d.device)
    br = 4 if interpret_mode() else 8
    bk = min(1024, max(16, triton.next_power_of_2(k)))
    fast = x2d.is_cuda and not interpret_mode()
    _fp8_quantize_kernel[(triton.cdiv(rows, br),)](
        x2d, q, scale, rows, k, x2d.stride(0), BR=br, BK=bk, FAST=fast, num_warps=4, enable_fp_fusion=False
    )
    return q.view(torch.float8_e4m3fn), scale


def _cuda_quantize_ok(x2d: torch.Tensor) -> bool:
    """The CUDA quantizer (``csrc/fp4/fp8_quantize.cu``) takes this activation: bf16 on a GPU, rows of
    16-byte vectors (K and the row stride multiples of 8, 16-byte aligned), K ≤ 32768."""
    k = x2d.shape[1]
    return (x2d.is_cuda and x2d.dtype == torch.bfloat16 and k % 8 == 0 and k <= 32768
            and x2d.stride(0) % 8 == 0 and x2d.data_ptr() % 16 == 0
            and cuda_op_available("fp8_rowwise_quantize_cuda"))


def _quantize_cuda(x2d: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise E4M3 codes and scales by the CUDA kernel (one CTA per row; ``gelu``: of
    ``gelu_tanh(x2d)`` rounded to bf16), bit-identical to the Triton kernels."""
    rows, k = x2d.shape
    q = torch.empty((rows, k), dtype=torch.float8_e4m3fn, device=x2d.device)
    scale = torch.empty((rows,), dtype=torch.float32, device=x2d.device)
    torch.ops.longlive_kernels.fp8_rowwise_quantize_cuda(x2d, q, scale, gelu, 0)
    return q, scale


# Hopper's FP8 MMA accumulates with ~13 mantissa bits, truncating (DeepSeek-V3 §3.5.2; SageAttention2
# measured FP22). Triton's default on sm_90 never promotes, so the error grows with K (1e-3 relative at
# K = 3072); promoting to an fp32 register sum after every BK = 128 products (DeepGEMM's interval)
# bounds it by ~(BK/32 + 1)·2^-13 whatever K is. None = Triton's default (for measurements).
FP8_PROMOTE_EVERY: int | None = 128

# (BM, BN, BK, warps, stages) for the Triton FP8 GEMM on Hopper; the interpreter uses the first.
_FP8_CONFIGS = [(128, 256, 128, 8, 3), (128, 128, 128, 4, 4), (256, 128, 128, 8, 3), (64, 128, 128, 4, 4)]
_FP8_TUNED: dict[tuple, tuple] = {}


def _gemm_triton(a, a_scale, b, b_scale, bias, out_dtype):
    m, k = a.shape
    n = b.shape[0]
    a_scale, b_scale = broadcast_scale(a_scale, m), broadcast_scale(b_scale, n)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    interp = interpret_mode() or not a.is_cuda
    bias_in = bias.contiguous() if bias is not None else None

    def run(cfg):
        bm, bn, bk, w, s = cfg
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _fp8_gemm_kernel[grid](
            a, b, a_scale, b_scale, bias_in if bias_in is not None else a_scale, out, m, n, k,
            a.stride(0), b.stride(0), out.stride(0), HAS_BIAS=bias is not None, DOT_F32=interp,
            PROMOTE=min(bk, FP8_PROMOTE_EVERY) if FP8_PROMOTE_EVERY else None,
            BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=w, num_stages=s,
        )

    if interp:
        run((32, 32, 32, 4, 1))
        return out
    key = (triton.next_power_of_2(m), n, k, a.device.index)
    cfg = _FP8_TUNED.get(key)
    if cfg is None:
        timings, errors = [], []
        for c in _FP8_CONFIGS:
            try:
                timings.append((triton.testing.do_bench(lambda c=c: run(c), warmup=5, rep=20), c))
            except Exception as exc:  # noqa: BLE001 - configs that do not fit are skipped
                errors.append(f"{c}: {type(exc).__name__}: {exc}")
        if not timings:
            raise RuntimeError("fp8_gemm: no kernel configuration compiled for this shape:\n" + "\n".join(errors))
        cfg = _FP8_TUNED[key] = min(timings)[1]
    run(cfg)
    return out


@functools.cache
def _scaled_mm_works(device_index: int) -> bool:
    cap = torch.cuda.get_device_capability(device_index)
    return cap >= (8, 9) and hasattr(torch, "_scaled_mm")


def _scaled_mm_by_default(backend: str, dev: torch.device, k: int, n: int, out_dtype: torch.dtype) -> bool:
    """cuBLAS unless the output is wider than its bf16 (it would round an fp32 request to bf16)."""
    return (backend == "triton" and dev.type == "cuda" and not interpret_mode() and k % 16 == 0 and n % 16 == 0
            and out_dtype == torch.bfloat16 and _scaled_mm_works(dev.index or 0))


# (M, N, K, device, per-tensor) that cuBLAS has no FP8 algorithm for (CUBLAS_STATUS_NOT_SUPPORTED from its
# heuristic, e.g. M = 64, K = 20480, N = 256 on an H200): those run the Triton kernel.
_SCALED_MM_UNSUPPORTED: set[tuple[int, int, int, int | None, bool]] = set()


def _gemm_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype):
    """cuBLAS scaled FP8 GEMM (``torch._scaled_mm``, fast accumulation), bf16 output: per-tensor
    where both scales are one element and that kernel is the faster one
    (``fp8_tensorwise.tensorwise_kernel_faster``), else row-wise (a one-element scale broadcast to
    its rows); the Triton kernel for shapes cuBLAS does not support."""
    (m, k), n = a.shape, b.shape[0]
    tensorwise = a_scale.numel() == 1 and b_scale.numel() == 1 and tensorwise_kernel_faster(m, n, k)
    key = (m, n, k, a.device.index, tensorwise)
    if tensorwise:
        a_scale, b_scale = a_scale.reshape(()), b_scale.reshape(())
    else:
        a_scale, b_scale = broadcast_scale(a_scale, m).reshape(-1, 1), broadcast_scale(b_scale, n).reshape(1, -1)
    if key not in _SCALED_MM_UNSUPPORTED:
        try:
            out = torch._scaled_mm(
                a, b.t(), scale_a=a_scale, scale_b=b_scale,
                bias=bias.to(torch.bfloat16) if bias is not None else None, out_dtype=torch.bfloat16,
                use_fast_accum=True,
            )
            return out if out_dtype == torch.bfloat16 else out.to(out_dtype)
        except RuntimeError as exc:  # a host-side heuristic failure: nothing was launched
            if "NOT_SUPPORTED" not in str(exc):
                raise
            _SCALED_MM_UNSUPPORTED.add(key)
    return _gemm_triton(a, a_scale, b, b_scale, bias, out_dtype)


# ---------------------------------------------------------------------------------------------
# torch.library ops
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("longlive_kernels::quantize_fp8_rowwise", mutates_args=())
def _quantize_op(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    k = x.shape[-1]
    x2d = x.reshape(-1, k)
    if backend == "torch":
        q, s = reference.quantize_fp8_rowwise(x2d)
    elif backend == "cuda":
        q, s = _quantize_cuda(x2d)
    else:
        q, s = _quantize_triton(x2d)
    return q.reshape(x.shape), s.reshape(x.shape[:-1])


@_quantize_op.register_fake
def _(x, backend):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("longlive_kernels::fp8_gemm", mutates_args=())
def _gemm_op(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, use_scaled_mm: bool, backend: str) -> torch.Tensor:
    if backend == "torch":
        return reference.fp8_gemm(a, a_scale, b, b_scale, bias, out_dtype=out_dtype)
    if use_scaled_mm:
        return _gemm_scaled_mm(a, a_scale, b, b_scale, bias, out_dtype)
    return _gemm_triton(a, a_scale, b, b_scale, bias, out_dtype)


@_gemm_op.register_fake
def _(a, a_scale, b, b_scale, bias, out_dtype, use_scaled_mm, backend):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# eager calls skip the dispatcher (same computation; see _backend.direct_call_ok)
_quantize_eager, _gemm_eager = eager_op(_quantize_op), eager_op(_gemm_op)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def quantize_fp8_rowwise(x: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of ``x`` to FP8 E4M3 with one FP32 scale per row.

    Parameters
    ----------
    x : torch.Tensor
        [..., K] bf16/fp16/fp32, last dim contiguous, non-empty.
    backend : {"auto", "triton", "cuda", "torch"}
        ``"cuda"`` (``csrc/fp4/fp8_quantize.cu``, one CTA per row) takes bf16 rows with K % 8 == 0,
        K ≤ 32768, 16-byte aligned; ``"auto"`` picks it on a GPU where it applies, else Triton. All
        give the same bits.

    Returns
    -------
    (q, scale) : (torch.Tensor, torch.Tensor)
        q float8_e4m3fn [..., K] with ``q = e4m3_rn_sat(x · (1/scale))`` (the reciprocal and the
        product each rounded once to fp32, as Transformer Engine's and torchao's FP8 casts); scale
        fp32 [...] with ``scale = amax(|row|) / 448`` (correctly rounded, at least 2⁻¹²⁶; 1 for an
        all-zero row), so ``x ≈ q · scale``. A row holding Inf/NaN gets scale +Inf: its finite
        values encode as signed zeros, the others as NaN (``reference.quantize_fp8_rowwise``).

    Raises
    ------
    TypeError, ValueError
        Wrong dtype, scalar or empty input, non-contiguous last dim, backend unavailable, or
        ``backend="cuda"`` for rows it does not take.
    """
    _checks.check_dtype("x", x)
    _checks.check_nonempty("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim, got a scalar")
    _checks.check_last_dim_contiguous("x", x)
    be = resolve_backend(backend, x.device, op="quantize_fp8_rowwise", supported=("triton", "cuda", "torch"),
                         prefer=("cuda", "triton"))
    if be == "cuda" and not _cuda_quantize_ok(x.reshape(-1, x.shape[-1])):
        if backend == "cuda":
            raise ValueError(
                "quantize_fp8_rowwise: backend='cuda' takes bf16 rows with K % 8 == 0, K <= 32768, 16-byte "
                f"aligned (and the extension's fp8_rowwise_quantize_cuda); got {x.dtype} x of shape "
                f"{tuple(x.shape)}")
        be = "triton"
    return _quantize_eager(x, be)


def fp8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    use_scaled_mm: bool | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``(a · a_scale[:, None]) @ (b · b_scale[:, None])ᵀ + bias`` with FP8 E4M3 operands.

    Parameters
    ----------
    a : torch.Tensor
        [..., K] float8_e4m3fn (e.g. from :func:`quantize_fp8_rowwise`).
    a_scale : torch.Tensor
        [...] fp32 row scales of ``a``, or one element (shape () or (1,)): a per-tensor scale.
    b : torch.Tensor
        [N, K] float8_e4m3fn (a weight, row-wise or per-tensor quantized).
    b_scale : torch.Tensor
        [N] fp32, or one element (per-tensor). With both scales per-tensor, cuBLAS runs its
        per-tensor kernel where that is the faster one (``fp8_tensorwise.tensorwise_kernel_faster``).
    bias : torch.Tensor, optional
        [N] float.
    out_dtype : {torch.bfloat16, torch.float16, torch.float32}
    use_scaled_mm : bool, optional
        Use cuBLAS through ``torch._scaled_mm`` (row-wise scales, fast accumulation, bf16 output
        then cast). Default: on CUDA devices with FP8 support (sm_89+) when K and N are multiples
        of 16 and ``out_dtype`` is bf16; otherwise the Triton kernel (fp32 partial sums promoted
        every 128 products, see ``FP8_PROMOTE_EVERY``), which also runs the shapes cuBLAS rejects.
    backend : {"auto", "triton", "torch"}

    Returns
    -------
    torch.Tensor
        [..., N] of ``out_dtype``.

    Raises
    ------
    TypeError, ValueError
        Wrong dtypes or shapes, K mismatch, tensors on different devices, backend unavailable.
    """
    _checks.check_dtype("a", a, (torch.float8_e4m3fn,))
    _checks.check_dtype("b", b, (torch.float8_e4m3fn,))
    _checks.check_dtype("a_scale", a_scale, (torch.float32,))
    _checks.check_dtype("b_scale", b_scale, (torch.float32,))
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"out_dtype must be bf16, fp16 or fp32, got {out_dtype}")
    _checks.check_ndim("b", b, 2)
    if a.dim() == 0:
        raise ValueError("a must have at least 1 dim, got a scalar")
    n, k = b.shape
    if a.shape[-1] != k:
        raise ValueError(f"K mismatch: a has K={a.shape[-1]}, b has K={k} (b is [N, K])")
    lead = a.shape[:-1]
    check_scale_shape("a_scale", a_scale, tuple(lead))
    check_scale_shape("b_scale", b_scale, (n,))
    if bias is not None:
        _checks.check_dtype("bias", bias)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    _checks.check_last_dim_contiguous("a", a)
    _checks.check_last_dim_contiguous("b", b)
    dev = _checks.check_same_device(a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    be = resolve_backend(backend, dev, op="fp8_gemm", supported=("triton", "torch"), prefer=("triton",))
    if use_scaled_mm is None:
        use_scaled_mm = _scaled_mm_by_default(be, dev, k, n, out_dtype)
    a2 = a.reshape(-1, k)
    if a2.shape[0] == 0:
        return torch.empty((*lead, n), dtype=out_dtype, device=dev)
    out = _gemm_eager(a2, a_scale.reshape(-1).contiguous(), b, b_scale.reshape(-1).contiguous(), bias, out_dtype,
                      bool(use_scaled_mm), be)
    return out.reshape(*lead, n)


register_aot(
    _fp8_quantize_kernel,
    signature={"x_ptr": "*bf16", "q_ptr": "*u8", "scale_ptr": "*fp32", "rows": "i32", "K": "i32",
               "stride_x": "i64"},
    constexprs={"BR": 8, "BK": 1024, "FAST": True},
    options={"enable_fp_fusion": False},
)
for _cfg in _FP8_CONFIGS[:2]:
    register_aot(
        _fp8_gemm_kernel,
        signature={"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32",
                   "bias_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
                   "stride_am": "i32", "stride_bn": "i32", "stride_om": "i32"},
        constexprs={"HAS_BIAS": True, "DOT_F32": False, "PROMOTE": _cfg[2], "BM": _cfg[0], "BN": _cfg[1], "BK": _cfg[2],
                    "GROUP_M": 8},
        options={"num_warps": _cfg[3], "num_stages": _cfg[4]},
        expect_wgmma=True,
    )
