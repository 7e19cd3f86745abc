"""E2M1 block-scaled GEMM on Hopper: ``nvfp4_gemm(a, b) = a @ bᵀ`` with ``b`` an NVFP4 weight.

Kernels (all decode E2M1 × E4M3 inside the main loop into exact bf16/fp16 MMA operands, accumulate
in FP32 and apply both FP32 tensor scales and the bias in the epilogue — NVFP4 × NVFP4 semantics up
to the FP32 summation order, ``nvfp4-hopper.md`` §3.4):

- Hopper, M > 256 (``LONGLIVE_GEMM_GLUON=1``): the Gluon kernel of ``gemm_hopper.py`` (TMA pipeline,
  weight and W4A4 activation tiles decoded into shared memory while the previous wgmma runs).
- sm_80+, M ≤ 64 (``LONGLIVE_GEMM_GEMV=1`` or ``algorithm="gemv"``): the Gluon GEMV-style kernel of
  ``gemm_gemv.py`` (weight rows streamed once from global memory straight into ``mma.sync``
  registers, K permuted so every thread's loads are contiguous; one launch).
- Both Gluon kernels are off by default until their GPU tests pass on the H100.
- Everywhere else (and ``algorithm="portable"``): the Triton kernel below. W4A4 (``a`` NVFP4) decodes
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
the implementation directly instead of through the ``torch.library`` dispatcher (``_direct_call_ok``),
and host-side sizes use Python integers (``triton.cdiv`` costs µs per call). The fused paths are one
kernel launch per call (``predecode``: two; ``dequantize``: the decodes, cuBLAS and the PyTorch
epilogue ops; quantizing an activation with ``quantize_nvfp4`` adds its own launches).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import torch
import triton
import triton.language as tl

from .. import _checks
from .._aot import register_aot
from .._backend import interpret_mode, resolve_backend
from . import reference
from .format import BLOCK_SIZE, NVFP4Tensor
from .gemm_dequant import OPERAND_SCALE, dequant_nvfp4_tile

SPLIT_K_MAX_M = 256  # M at or below which the split-K configuration is used
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DENSE_A_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn)
ALGORITHMS = ("auto", "fused", "gemv", "portable", "predecode", "dequantize", "scaled_mm")

try:  # the Gluon kernels (sm_90a large M, sm_80+ small M)
    from . import gemm_gemv as _gemv
    from . import gemm_hopper as _hopper
except ImportError:  # pragma: no cover - Triton without Gluon
    _hopper = _gemv = None
# Off by default until their GPU tests pass (LONGLIVE_GEMM_GLUON=1 / LONGLIVE_GEMM_GEMV=1 turn them on;
# algorithm="gemv" forces the small-M kernel). The large-M kernel's first version (wgmma with the
# weight in registers) gave wrong tiles on the H100 (gemm_hopper's docstring); this one reads both
# operands from shared memory.
_HOPPER_ENABLED = os.environ.get("LONGLIVE_GEMM_GLUON", "0") == "1"
_GEMV_ENABLED = os.environ.get("LONGLIVE_GEMM_GEMV", "0") == "1"
_HOPPER_FAILED: set = set()

# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id → (pid_m, pid_n), grouped so GROUP_M row tiles share B tiles in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _gemm_kernel(
    a_ptr,  # [M, K] bf16/fp16/fp8 (dense A) or [M, K/2] uint8 packed E2M1 (A_NVFP4)
    a_scale_ptr,  # [M, K/16] uint8 E4M3 (A_NVFP4) | [M] fp32 (A_SCALE_MODE 2) | [1] fp32 (mode 1)
    a_gs_ptr,  # [1] fp32 tensor (decode) scale of A (A_NVFP4)
    b_ptr,  # [N, K/2] uint8 packed E2M1
    b_scale_ptr,  # [N, K/16] uint8 E4M3
    b_gs_ptr,  # [1] fp32 tensor scale of B
    bias_ptr,  # [N] float (HAS_BIAS)
    out_ptr,  # [M, N] out dtype, row stride stride_om
    ws_ptr,  # [SPLIT_K, tiles, BM, BN] fp32 partials (SPLIT_K > 1)
    sem_ptr,  # [tiles] int32 arrival counters, zero on entry and on exit (SPLIT_K > 1)
    M,
    N,
    K,
    stride_am,
    stride_asm,
    stride_bn,
    stride_bsn,
    stride_om,
    k_per_split,  # K range of one split (multiple of BK)
    m_bucket,  # autotune key only
    A_NVFP4: tl.constexpr,
    A_SCALE_MODE: tl.constexpr,  # dense A: 0 none, 1 per-tensor, 2 per-row
    HAS_BIAS: tl.constexpr,
    MMA_DTYPE: tl.constexpr,
    FAST: tl.constexpr,
    DOT_F32: tl.constexpr,  # the CPU interpreter's tl.dot is wrong on bf16/fp16 operands
    EVEN_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    # Rows past the end read a valid row (results are masked at the store): no load predicates.
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    k_begin = tl.program_id(1) * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)

    kb = tl.arange(0, BK // 2)
    ks = tl.arange(0, BK // 16)
    kk = tl.arange(0, BK)
    b_rows = b_ptr + rows_b[:, None] * stride_bn
    bs_rows = b_scale_ptr + rows_b[:, None] * stride_bsn
    a_rows = a_ptr + rows_a[:, None] * stride_am
    as_rows = a_scale_ptr + rows_a[:, None] * stride_asm

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(k_begin, k_end, BK):
        # k is a multiple of BK: tell the compiler, so packed bytes and scales load as aligned vectors
        kp = tl.multiple_of(k // 2, BK // 2)
        kq = tl.multiple_of(k // 16, BK // 16)
        if EVEN_K:
            bp = tl.load(b_rows + (kp + kb)[None, :])
            bs = tl.load(bs_rows + (kq + ks)[None, :])
        else:
            bp = tl.load(b_rows + (kp + kb)[None, :], mask=(k + 2 * kb < K)[None, :], other=0)
            bs = tl.load(bs_rows + (kq + ks)[None, :], mask=(k + 16 * ks < K)[None, :], other=0)
        b_op = dequant_nvfp4_tile(bp, bs, BN, BK, MMA_DTYPE, FAST)
        if A_NVFP4:
            if EVEN_K:
                ap = tl.load(a_rows + (kp + kb)[None, :])
                asc = tl.load(as_rows + (kq + ks)[None, :])
            else:
                ap = tl.load(a_rows + (kp + kb)[None, :], mask=(k + 2 * kb < K)[None, :], other=0)
                asc = tl.load(as_rows + (kq + ks)[None, :], mask=(k + 16 * ks < K)[None, :], other=0)
            a_op = dequant_nvfp4_tile(ap, asc, BM, BK, MMA_DTYPE, FAST)
        else:
            if EVEN_K:
                a_op = tl.load(a_rows + (k + kk)[None, :])
            else:
                a_op = tl.load(a_rows + (k + kk)[None, :], mask=(k + kk < K)[None, :], other=0.0)
            a_op = a_op.to(MMA_DTYPE)
        if DOT_F32:
            acc = tl.dot(a_op.to(tl.float32), tl.trans(b_op.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a_op, tl.trans(b_op), acc)

    if SPLIT_K > 1:
        tile = pid_m * tl.cdiv(N, BN) + pid_n
        num_tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
        tile_offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        tl.store(ws_ptr + (tl.program_id(1) * num_tiles + tile).to(tl.int64) * (BM * BN) + tile_offs, acc)
        tl.debug_barrier()
        arrived = tl.atomic_add(sem_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for s in range(SPLIT_K):  # fixed order: deterministic
                acc += tl.load(ws_ptr + (s * num_tiles + tile).to(tl.int64) * (BM * BN) + tile_offs,
                               cache_modifier=".cg")
            _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr,
                      stride_om, A_NVFP4, A_SCALE_MODE, HAS_BIAS)
            tl.store(sem_ptr + tile, 0)
    else:
        _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr,
                  stride_om, A_NVFP4, A_SCALE_MODE, HAS_BIAS)


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, a_scale_ptr, a_gs_ptr, b_gs_ptr, bias_ptr, out_ptr, stride_om,
              A_NVFP4: tl.constexpr, A_SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """out = acc · alpha (· row scale) + bias, alpha = fp32(gs_a · gs_b) · 2^(8 per NVFP4 operand)."""
    if A_NVFP4:
        alpha = (tl.load(a_gs_ptr) * tl.load(b_gs_ptr)) * (OPERAND_SCALE * OPERAND_SCALE)
    else:
        alpha = tl.load(b_gs_ptr) * OPERAND_SCALE
        if A_SCALE_MODE == 1:
            alpha = alpha * tl.load(a_scale_ptr)
    acc = acc * alpha
    m_mask = offs_m < M
    n_mask = offs_n < N
    if A_SCALE_MODE == 2:
        acc = acc * tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------

# (BM, BN, BK, num_warps, num_stages) tried by the autotuner on Hopper for M > SPLIT_K_MAX_M.
_LARGE_M_CONFIGS = [
    (128, 128, 64, 4, 4),
    (128, 128, 128, 8, 3),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 256, 128, 8, 2),
    (64, 128, 128, 4, 4),
]


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Host-side integer helpers: triton.cdiv / triton.next_power_of_2 are constexpr functions whose every
# host call costs microseconds (an import and argument unwrapping), several per GEMM call.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


_SEMAPHORES: dict[tuple, torch.Tensor] = {}


def _semaphores(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one buffer per (device, stream); kernels leave them zeroed."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _SEMAPHORES.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _SEMAPHORES[key] = buf
    return buf


@functools.lru_cache(maxsize=4096)
def _small_m_config(m: int, n: int, k: int, sms: int, interp: bool) -> tuple[int, int, int, int, int, int]:
    """(BM, BN, BK, warps, stages, split_k) for small M (memory-bound for M ≲ 100 with NVFP4
    weights): 64-wide weight tiles and enough K splits that about two CTAs run per SM."""
    bm = max(16, min(64, _pow2(m)))
    bn = 64
    bk = (256 if bm <= 32 else 128) if k >= 256 else max(64, _pow2(k))
    if interp:
        bk = min(bk, 128)
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    k_iters = _cdiv(k, bk)
    split = max(1, min(k_iters, (2 * sms + tiles - 1) // tiles, 16))
    return bm, bn, bk, 4, 4, split


def _launch(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out, *, a_nvfp4, a_scale_mode, mma_dtype,
            config):
    m, n = out.shape
    k = b_data.shape[1] * 2
    bm, bn, bk, warps, stages, split = config
    k_per_split = _cdiv(_cdiv(k, bk), split) * bk
    split = _cdiv(k, k_per_split)
    tiles = _cdiv(m, bm) * _cdiv(n, bn)
    dev = out.device
    if split > 1:
        ws = torch.empty(split * tiles * bm * bn, dtype=torch.float32, device=dev)
        sem = _semaphores(dev, tiles)
    else:
        ws = sem = out  # unused
    dummy = b_gs
    fast = dev.type == "cuda" and not interpret_mode()
    _gemm_kernel[(tiles, split)](
        a, a_scale if a_scale is not None else dummy, a_gs if a_gs is not None else dummy,
        b_data, b_scale.view(torch.uint8), b_gs, bias if bias is not None else dummy, out, ws, sem,
        m, n, k,
        a.stride(0), a_scale.stride(0) if (a_nvfp4 and a_scale is not None) else 0,
        b_data.stride(0), b_scale.stride(0), out.stride(0), k_per_split, _pow2(m),
        A_NVFP4=a_nvfp4, A_SCALE_MODE=a_scale_mode, HAS_BIAS=bias is not None, MMA_DTYPE=mma_dtype,
        FAST=fast, DOT_F32=interpret_mode(), EVEN_K=k % bk == 0, SPLIT_K=split, BM=bm, BN=bn, BK=bk, GROUP_M=8,
        num_warps=warps, num_stages=stages,
    )


_AUTOTUNE_CACHE: dict[tuple, tuple] = {}


def _pick_config(m, n, k, a_nvfp4, mma_dtype, device, run) -> tuple:
    """Small M: heuristic split-K config. Large M: the fastest of ``_LARGE_M_CONFIGS`` (timed once
    per (M bucket, N, K, operand kinds) on the GPU; the interpreter uses one small config)."""
    interp = interpret_mode() or device.type != "cuda"
    if m <= SPLIT_K_MAX_M:
        sms = 8 if interp else _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        return _small_m_config(m, n, k, sms, interp)
    if interp:
        return (32, 32, 64, 4, 1, 1)
    key = (_pow2(m), n, k, a_nvfp4, str(mma_dtype), device.index)
    cfg = _AUTOTUNE_CACHE.get(key)
    if cfg is None:
        best, errors = None, []
        for bm, bn, bk, w, s in _LARGE_M_CONFIGS:
            c = (bm, bn, bk, w, s, 1)
            try:
                ms = triton.testing.do_bench(lambda c=c: run(c), warmup=5, rep=20)
            except Exception as exc:  # noqa: BLE001 - a config that does not fit (smem/registers) is skipped
                errors.append(f"{c}: {type(exc).__name__}: {exc}")
                continue
            if best is None or ms < best[0]:
                best = (ms, c)
        if best is None:
            raise RuntimeError("nvfp4_gemm: no kernel configuration compiled for this shape:\n" + "\n".join(errors))
        cfg = _AUTOTUNE_CACHE[key] = best[1]
    return cfg


def _run_gluon(module, label, key, args):
    """``module.gemm(*args)``, or None (with one warning per ``key``) when it fails to compile or
    launch: the caller then takes the portable Triton kernel."""
    if key in _HOPPER_FAILED:
        return None
    try:
        return module.gemm(*args)
    except Exception as exc:  # noqa: BLE001 - a compile failure falls back to the portable kernel
        _HOPPER_FAILED.add(key)
        warnings.warn(f"nvfp4_gemm: {label} Gluon kernel unavailable ({type(exc).__name__}: {exc}); "
                      "using the portable Triton kernel", RuntimeWarning, stacklevel=4)
        return None


def _try_hopper(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4):
    """The Gluon Hopper kernel when it applies (large M, TMA-friendly operands), else None."""
    if (_hopper is None or not _HOPPER_ENABLED or a.shape[0] <= SPLIT_K_MAX_M or interpret_mode()
            or not _hopper.supported(a, a_nvfp4, b_data, out_dtype)):
        return None
    return _run_gluon(_hopper, "Hopper", (a_nvfp4, a.dtype, out_dtype, bias is not None),
                      (a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4))


def _try_gemv(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4, force=False):
    """The Gluon small-M kernel (``gemm_gemv.py``) when it applies (M ≤ 64, sm_80+), else None."""
    if _gemv is None or not (force or _GEMV_ENABLED) or interpret_mode() or not _gemv.supported(
            a, a_nvfp4, b_data, out_dtype):
        return None
    return _run_gluon(_gemv, "small-M", ("gemv", a_nvfp4, a.dtype, out_dtype, bias is not None),
                      (a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4))


def _gemm_triton(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4, portable=False,
                 force_gemv=False):
    if not portable:
        out = _try_gemv(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4, force_gemv)
        if out is None:
            out = _try_hopper(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4)
        if out is not None:
            return out
    m = a.shape[0]
    n, k = b_data.shape[0], b_data.shape[1] * 2
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if a_nvfp4:
        mma_dtype, mode = tl.bfloat16, 0
    else:
        mma_dtype = tl.bfloat16 if a.dtype == torch.bfloat16 else tl.float16
        mode = 0 if a_scale is None else (1 if a_scale.numel() == 1 and m != 1 else 2)
        if a_scale is not None:
            a_scale = a_scale.reshape(-1).to(torch.float32).contiguous()
    a_in = a if a.dtype != torch.float8_e4m3fn else a.view(torch.uint8).view(torch.float8_e4m3fn)
    bias_in = bias.contiguous() if bias is not None else None
    a_sc = a_scale.view(torch.uint8) if (a_nvfp4 and a_scale is not None) else a_scale

    def run(cfg):
        _launch(a_in, a_sc, a_gs, b_data, b_scale, b_gs, bias_in, out, a_nvfp4=a_nvfp4,
                a_scale_mode=mode, mma_dtype=mma_dtype, config=cfg)

    cfg = _pick_config(m, n, k, a_nvfp4, mma_dtype, a.device, run)
    run(cfg)
    return out


def _unit_scale(t_data, t_scale, dtype):
    """Decode (e2m1 · s_block) with tensor scale 1 — exact in bf16."""
    from .dequantize import dequantize_nvfp4

    one = torch.ones((), dtype=torch.float32, device=t_data.device)
    k = t_data.shape[-1] * 2
    t = NVFP4Tensor(data=t_data, scale=t_scale, global_scale=one, shape=torch.Size((t_data.shape[0], k)))
    return dequantize_nvfp4(t, dtype)


def _gemm_dequantize(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4):
    """Exact fallback: operands decoded with tensor scale 1 (exact in bf16), cuBLAS, fp32 epilogue."""
    bw = _unit_scale(b_data, b_scale, torch.bfloat16 if (a_nvfp4 or a.dtype == torch.bfloat16) else torch.float16)
    if a_nvfp4:
        aw = _unit_scale(a, a_scale, torch.bfloat16)
        alpha = a_gs.float() * b_gs.float()
    else:
        aw = a.to(bw.dtype)
        alpha = b_gs.float() if a_scale is None else b_gs.float() * a_scale.float().reshape(-1, 1)
    if aw.is_cuda:
        acc = torch.mm(aw, bw.t(), out_dtype=torch.float32)
    else:
        acc = aw.float() @ bw.float().t()
    acc = acc * alpha
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)


def _gemm_predecode(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype):
    """W4A4 on Hopper as W4A16: decode the activation once to bf16 (tensor scale 1: exact), run the
    Gluon W4A16 kernel and apply the activation tensor scale in its epilogue. Trades M·K·2.6 bytes of
    extra memory traffic for the cheaper W4A16 main loop. None when the Hopper kernel does not apply."""
    if _hopper is None or not _HOPPER_ENABLED or interpret_mode() or a.shape[0] <= SPLIT_K_MAX_M:
        return None
    x_hat = _unit_scale(a, a_scale, torch.bfloat16)
    if not _hopper.supported(x_hat, False, b_data, out_dtype):
        return None
    return _hopper.gemm(x_hat, None, None, b_data, b_scale, b_gs, bias, out_dtype, False, a_tensor_scale=a_gs)


def _gemm_scaled_mm(a_data, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype):
    """sm_100+: cuBLAS block-scaled FP4 GEMM (``torch._scaled_mm``, swizzled 128×4 scales).
    Guarded; never run on the Hopper machines of this project."""
    from .format import to_blocked

    sa = to_blocked(a_scale).view(torch.float8_e4m3fn)
    sb = to_blocked(b_scale).view(torch.float8_e4m3fn)
    fp4 = torch.float4_e2m1fn_x2
    acc = torch._scaled_mm(a_data.view(fp4), b_data.view(fp4).t(), sa, sb, out_dtype=torch.bfloat16)
    acc = acc.float() * (a_gs.float() * b_gs.float())
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# torch.library op
# ---------------------------------------------------------------------------------------------


def _gemm_impl(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype, a_nvfp4, algorithm,
               backend):
    """The op's implementation (called directly in eager mode, see :func:`_direct_call_ok`)."""
    if backend == "torch":
        return reference.nvfp4_gemm(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias,
                                    out_dtype=out_dtype, a_nvfp4=a_nvfp4)
    if algorithm == "predecode" and a_nvfp4:
        out = _gemm_predecode(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype)
        if out is not None:
            return out
    if algorithm == "dequantize":
        return _gemm_dequantize(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias,
                                out_dtype, a_nvfp4)
    if algorithm == "scaled_mm":
        try:
            return _gemm_scaled_mm(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype)
        except RuntimeError as exc:  # e.g. a shape cuBLAS rejects: the fused kernel is always available
            warnings.warn(f"nvfp4_gemm: torch._scaled_mm FP4 failed ({exc}); using the fused kernel",
                          RuntimeWarning, stacklevel=2)
    return _gemm_triton(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype,
                        a_nvfp4, portable=algorithm == "portable", force_gemv=algorithm == "gemv")


@torch.library.custom_op("longlive_kernels::nvfp4_gemm", mutates_args=())
def _gemm_op(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    a_global_scale: torch.Tensor | None,
    b_data: torch.Tensor,
    b_scale: torch.Tensor,
    b_global_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    a_nvfp4: bool,
    algorithm: str,
    backend: str,
) -> torch.Tensor:
    return _gemm_impl(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype, a_nvfp4,
                      algorithm, backend)


def _direct_call_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether an op may run its implementation without the dispatcher (which costs 20-80 µs of host
    time per call, as much as the whole small-M GEMM): plain eager execution — not traced by
    torch.compile, no dispatch mode (FakeTensorMode, ...) or functorch transform active, and no input
    that autograd would have to see."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._are_functorch_transforms_active():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


@_gemm_op.register_fake
def _(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype, a_nvfp4, algorithm,
      backend):
    return a.new_empty((a.shape[0], b_data.shape[0]), dtype=out_dtype)


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
    return "fused"


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
        ``scaled_mm`` on sm_100+ for W4A4, else ``fused``.
    backend : {"auto", "triton", "torch"}
        ``torch`` is the reference (``reference.nvfp4_gemm``: fp64 products of the decoded values).

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
        or a backend that cannot run here.

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
    be = resolve_backend(backend, dev, op="nvfp4_gemm", supported=("triton", "torch"), prefer=("triton",))
    algo = _resolve_algorithm(algorithm, dev, a_nvfp4, be)
    m = math.prod(lead)
    if m == 0:
        return torch.empty((*lead, n), dtype=out_dtype, device=dev)
    bd = _rows2d(b.data, k // 2)
    bs = _rows2d(b.scale, k // BLOCK_SIZE)
    if a_nvfp4:
        args = (_rows2d(a.data, k // 2), _rows2d(a.scale, k // BLOCK_SIZE),
                a.global_scale.reshape(1).float(), True)
    else:
        args = (_rows2d(a, k), a_scale, None, False)
    op = _gemm_impl if _direct_call_ok(args[0], args[1], bias) else _gemm_op
    out = op(args[0], args[1], args[2], bd, bs, b.global_scale.reshape(1).float(), bias, out_dtype, args[3], algo, be)
    return out.reshape(*lead, n)


# ---------------------------------------------------------------------------------------------
# AOT specialisations (CI compiles them for sm_90a and checks for wgmma)
# ---------------------------------------------------------------------------------------------

_SIG = {"a_ptr": "*bf16", "a_scale_ptr": "*u8", "a_gs_ptr": "*fp32", "b_ptr": "*u8", "b_scale_ptr": "*u8",
        "b_gs_ptr": "*fp32", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "sem_ptr": "*i32",
        "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_asm": "i32", "stride_bn": "i32",
        "stride_bsn": "i32", "stride_om": "i32", "k_per_split": "i32", "m_bucket": "i32"}
for _a_fp4, _cfg in [(False, (128, 256, 64, 8, 3)), (True, (128, 256, 64, 8, 3)), (False, (128, 128, 64, 4, 4)),
                     (True, (128, 128, 128, 8, 3))]:
    _bm, _bn, _bk, _w, _s = _cfg
    register_aot(
        _gemm_kernel,
        signature={**_SIG, "a_ptr": "*u8" if _a_fp4 else "*bf16"},
        constexprs={"A_NVFP4": _a_fp4, "A_SCALE_MODE": 0, "HAS_BIAS": True, "MMA_DTYPE": tl.bfloat16,
                    "FAST": True, "DOT_F32": False, "EVEN_K": True, "SPLIT_K": 1, "BM": _bm, "BN": _bn, "BK": _bk, "GROUP_M": 8},
        options={"num_warps": _w, "num_stages": _s},
        expect_wgmma=True,
    )
