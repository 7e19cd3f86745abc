"""Launchers of the portable NVFP4 GEMM Triton kernel (``gemm_triton.py``: configurations, split-K
workspace and semaphores, the large-M autotuner), the other algorithms of ``nvfp4_gemm`` (the Gluon
kernels of ``gemm_hopper.py`` / ``gemm_gemv.py``, ``predecode``, ``dequantize``, ``scaled_mm``) and the
``longlive_kernels::nvfp4_gemm`` ``torch.library`` op behind ``gemm.py`` (and its fake registration);
the op runs ``reference.py`` or the algorithm its resolved ``backend`` / ``algorithm`` arguments name.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from .._backend import interpret_mode
from . import reference
from .format import NVFP4Tensor
from .gemm_triton import _gemm_kernel

SPLIT_K_MAX_M = 256  # M at or below which the split-K configuration is used

try:  # the Gluon kernels (sm_90a large M, sm_80+ small M)
    from . import gemm_gemv as _gemv
    from . import gemm_hopper as _hopper
except ImportError:  # pragma: no cover - Triton without Gluon
    _hopper = _gemv = None
# The large-M Hopper kernel is on by default (its GPU tests pass on the H100 and it is 1.3-1.6× the
# portable kernel there; LONGLIVE_GEMM_GLUON=0 turns it off). The small-M kernel stays opt-in
# (LONGLIVE_GEMM_GEMV=1, or algorithm="gemv"): correct on the H100 but not faster than the split-K
# portable kernel at M = 64 (bench/RESULTS.md).
_HOPPER_ENABLED = os.environ.get("LONGLIVE_GEMM_GLUON", "1") == "1"
_GEMV_ENABLED = os.environ.get("LONGLIVE_GEMM_GEMV", "0") == "1"
_HOPPER_FAILED: set = set()

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


CUDA_MAX_M = 64  # the CUDA small-M kernel (csrc/fp4/nvfp4_gemv.cu): M ≤ 64, K % 128 == 0
CUDA_K_MULTIPLE = 128


def cuda_gemv_applies(m: int, k: int, a: torch.Tensor, a_scale, a_nvfp4: bool, b_data: torch.Tensor,
                      b_scale: torch.Tensor) -> bool:
    """True when the CUDA small-M kernel runs this GEMM: M ≤ 64, K % 128 == 0, a bf16 (W4A16) or NVFP4
    (W4A4, decoded once to bf16) activation, and the alignments its loads need (bf16 rows 16-byte
    aligned, the weight bytes 16-byte and its scales 8-byte aligned and contiguous)."""
    if not (1 <= m <= CUDA_MAX_M and k % CUDA_K_MULTIPLE == 0):
        return False
    if not a_nvfp4:
        a2 = a.reshape(-1, k)
        if not (a.dtype == torch.bfloat16 and a_scale is None and a2.stride(0) % 8 == 0
                and a2.data_ptr() % 16 == 0):
            return False
    return (b_data.is_contiguous() and b_scale.is_contiguous() and b_data.data_ptr() % 16 == 0
            and b_scale.data_ptr() % 8 == 0)


def _gemm_cuda(a, a_scale, a_gs, b_data, b_scale, b_gs, bias, out_dtype, a_nvfp4, splits=0, variant=0,
               k_unroll=0, ablate=0):
    """The CUDA small-M kernel (``csrc/fp4/nvfp4_gemv.cu``; the caller checked ``cuda_gemv_applies``).
    W4A4 decodes ``a`` once to bf16 with tensor scale 1 (exact) and passes its tensor scale to the
    epilogue. ``splits`` / ``variant`` / ``k_unroll`` (0: the launcher's choice) and ``ablate`` (1: skip
    the MMAs, a wrong result) exist for the launch-shape probe (``tools/probe_gemv.py --cuda``)."""
    if a_nvfp4:
        x, x_gs = _unit_scale(a, a_scale, torch.bfloat16), a_gs
    else:
        x, x_gs = a, None
    out = torch.empty((x.shape[0], b_data.shape[0]), dtype=out_dtype, device=x.device)
    torch.ops.longlive_kernels.nvfp4_gemv_cuda(x, b_data, b_scale.view(torch.uint8), b_gs, x_gs, bias, out,
                                               splits, variant, k_unroll, ablate)
    return out


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
    """Eager calls reach this body directly (``_backend.eager_op``), bypassing the dispatcher."""
    if backend == "torch":
        return reference.nvfp4_gemm(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias,
                                    out_dtype=out_dtype, a_nvfp4=a_nvfp4)
    if backend == "cuda":
        return _gemm_cuda(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype, a_nvfp4)
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


@_gemm_op.register_fake
def _(a, a_scale, a_global_scale, b_data, b_scale, b_global_scale, bias, out_dtype, a_nvfp4, algorithm,
      backend):
    return a.new_empty((a.shape[0], b_data.shape[0]), dtype=out_dtype)

