"""Numerical oracles and GPU timing shared by tests and benchmarks (``shared/docs/style.md``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def triton_device() -> str:
    """Device on which Triton kernels run in this process: "cuda" on a GPU machine, "cpu" under the
    interpreter (TRITON_INTERPRET=1)."""
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN anywhere → inf)."""
    o, r = out.double(), ref.double()
    if torch.isnan(o).any() or torch.isnan(r).any():
        return float("inf")
    return ((o - r).norm() / r.norm().clamp_min(1e-300)).item()


def sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20·log10(‖ref‖ / ‖out − ref‖)."""
    import math

    o, r = out.double(), ref.double()
    noise = (o - r).norm().item()
    return float("inf") if noise == 0 else 20 * math.log10(r.norm().item() / noise)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors (float64)."""
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).item()


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, name: str = "tensor") -> None:
    """Assert two tensors have identical shape, dtype and bytes (any NaN equals any NaN: payloads
    are not part of any spec here)."""
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
    if a.dtype.is_floating_point and a.element_size() >= 2:
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        assert torch.equal(nan_a, nan_b), f"{name}: NaN positions differ"
        a, b = torch.where(nan_a, 0, a), torch.where(nan_b, 0, b)
    av = a.contiguous().view(torch.uint8) if a.element_size() == 1 else a.contiguous().view(
        {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    )
    bv = b.contiguous().view(av.dtype)
    diff = (av != bv).nonzero()
    assert diff.numel() == 0, f"{name}: {diff.shape[0]} of {a.numel()} elements differ, first at {diff[0].tolist()}"


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor like ``t`` filled with a value a kernel never writes (NaN, or 0xA5 bytes)."""
    if t.dtype.is_floating_point and t.element_size() >= 2:
        return torch.full_like(t, float("nan"))
    return torch.full_like(t.view(torch.uint8), 0xA5).view(t.dtype)


# ≈ 1 ms of GPU spin (at ≤ 2 GHz) queued before each timed call when hide_host: the host enqueues the
# call meanwhile.
_HIDE_HOST_CYCLES = 2_000_000


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 10, iters: int = 50,
                 flush_l2: bool = True, hide_host: bool = False) -> float:
    """Median time of ``fn()`` in ms, CUDA events around each call, after warm-up (METHOD.md).

    With ``flush_l2`` a 256 MB buffer is *read* before every timed call so the inputs come from HBM.
    (Writing it instead would leave ~50 MB of dirty lines whose write-back lands inside the timed
    kernel, penalising short kernels by ~15 µs on an H100.)

    With ``hide_host`` a ~1 ms GPU spin is queued before the start event, so the span between the
    events holds only ``fn``'s kernels (as long as the host enqueues them within the spin): the GPU
    time of the call without its Python/launch overhead, which for a custom op is 20-300 µs and
    comparable to a memory-bound kernel. Without it the time is what an eager caller waits.
    """
    flush = torch.empty(64 * 1024 * 1024, dtype=torch.float32, device="cuda").fill_(1.0) if flush_l2 else None
    sink = torch.empty((), dtype=torch.float32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if flush is not None:
            torch.sum(flush, dim=0, out=sink)
        if hide_host:
            torch.cuda._sleep(_HIDE_HOST_CYCLES)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30, **kw) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second, GB/s), the memory ceiling
    every memory-bound benchmark reports its ratio against."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), **kw)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def device_header() -> str:
    """One line naming the GPU and the torch / triton / CUDA versions (for bench/RESULTS.md)."""
    import triton

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{name} | torch {torch.__version__} | triton {triton.__version__} | cuda {torch.version.cuda}"


def interpreter_rounds_bf16() -> bool:
    """Make the Triton interpreter's fp32 → bf16 casts round to nearest even, as the GPU's
    ``cvt.rn.bf16.f32`` does; returns True when it patched the interpreter.

    Triton 3.6's interpreter truncates them (``InterpreterBuilder.cast_impl`` converts the bits with
    no rounding mode), in explicit ``.to(tl.bfloat16)`` casts and in stores of fp32 values to bf16
    pointers alike. Every bf16 output of a kernel run under ``TRITON_INTERPRET=1`` then sits up to one
    ulp toward zero from the GPU's, and a kernel that re-reads a value it rounded (the fused residual
    + LayerNorm normalizes the stored residual) drifts further. Its bf16 → fp32 casts also flush bf16
    subnormals to zero; the patch makes them exact. The CPU tests call this once
    (``tests/conftest.py``) so that bf16 results can be compared with the torch references bit for
    bit; ``tests/test_interpreter_rounding.py`` checks that the patch still takes effect. A no-op
    outside the interpreter or when the interpreter has no ``cast_impl`` to patch.
    """
    import os

    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    stock = getattr(builder, "cast_impl", None)
    if stock is None or getattr(stock, "_longlive_rne", False):
        return False

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.bfloat16 and dst_type.scalar == tl.float32:  # exact (stock: subnormals → 0)
            wide = np.ascontiguousarray(src.data).view(np.uint16).astype(np.uint32) << 16
            return interpreter.TensorHandle(wide.view(np.float32), dst_type.scalar)
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return stock(self, src, dst_type)
        data = np.asarray(src.data, dtype=np.float32)
        bits = np.ascontiguousarray(data).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        out = np.where(np.isnan(data), np.uint16(0x7FC0), rounded)  # torch's canonical bf16 NaN
        return interpreter.TensorHandle(out.reshape(data.shape), dst_type.scalar)

    cast_impl._longlive_rne = True
    builder.cast_impl = cast_impl
    return True
