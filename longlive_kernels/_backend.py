"""Backend selection shared by every op: ``backend="auto" | "triton" | "cuda" | "torch"``.

- ``"torch"``: the plain-PyTorch reference in ``<area>/reference.py`` (any device, slow).
- ``"triton"``: the Triton kernel. Runs on CUDA tensors, or on CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported (the CPU test mode).
- ``"cuda"``: the CUDA C++ kernel of the ``longlive_kernels._C`` extension (CUDA tensors only).
- ``"auto"``: on CUDA, the op's preferred compiled backend that is available; on CPU, ``"torch"``.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence

import torch

BACKENDS = ("auto", "triton", "cuda", "torch")


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; 4 elsewhere (the Triton interpreter), so that
    kernels sized "programs per SM" launch a few programs and the tests cover ragged splits."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """False with ``LONGLIVE_AUTOTUNE=0``: autotuned Triton kernels launch one fixed config instead of
    benchmarking their candidates per new shape (the GPU test suite sets it: hypothesis draws many
    shapes, and tuning each one dominated the run)."""
    return os.environ.get("LONGLIVE_AUTOTUNE", "1") != "0"


def _probe_triton() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _probe_extension():
    try:
        return importlib.import_module("longlive_kernels._C")
    except ImportError:
        return None


# Probed once at import, so that resolve_backend is a pure function of constants under
# torch.compile (Dynamo cannot trace import machinery).
_HAS_TRITON = _probe_triton()
_EXTENSION = _probe_extension()


def has_triton() -> bool:
    """True when Triton is importable."""
    return _HAS_TRITON


def cuda_extension():
    """The compiled ``longlive_kernels._C`` module, or ``None`` when it was not built."""
    return _EXTENSION


def has_cuda_extension() -> bool:
    """True when the CUDA extension is built and loadable."""
    return _EXTENSION is not None


def cuda_op_available(name: str) -> bool:
    """True when the built extension registers ``torch.ops.longlive_kernels.<name>`` (an extension
    built from an older tree may lack newer ops)."""
    return has_cuda_extension() and hasattr(torch.ops.longlive_kernels, name)


def resolve_backend(
    backend: str,
    device: torch.device,
    *,
    op: str,
    supported: Sequence[str] = ("triton", "cuda", "torch"),
    prefer: Sequence[str] = ("triton", "cuda"),
) -> str:
    """Turn a user's ``backend`` argument into the concrete backend that will run.

    Parameters
    ----------
    backend : str
        One of ``"auto"``, ``"triton"``, ``"cuda"``, ``"torch"``.
    device : torch.device
        Device of the op's input tensors.
    op : str
        Op name, used in error messages.
    supported : sequence of str
        Backends this op (with its current options) implements.
    prefer : sequence of str
        Order in which ``"auto"`` tries compiled backends on CUDA devices.

    Returns
    -------
    str
        ``"triton"``, ``"cuda"`` or ``"torch"``.

    Raises
    ------
    ValueError
        Unknown backend, a backend the op does not implement, or a backend that cannot run on
        ``device`` (``"cuda"`` on a CPU tensor, ``"triton"`` on CPU without ``TRITON_INTERPRET=1``,
        ``"cuda"`` without the compiled extension).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            for cand in prefer:
                if cand not in supported:
                    continue
                if cand == "cuda" and has_cuda_extension():
                    return "cuda"
                if cand == "triton" and has_triton():
                    return "triton"
        if "torch" in supported:
            return "torch"
        if "triton" in supported and has_triton() and (on_cuda or interpret_mode()):
            return "triton"
        raise ValueError(f"{op}: no backend can run on device {device} (supported: {tuple(supported)})")
    if backend not in supported:
        raise ValueError(
            f"{op}: backend={backend!r} does not implement these options; supported: {tuple(supported)}"
        )
    if backend == "cuda":
        if not on_cuda:
            raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got a tensor on {device}")
        if not has_cuda_extension():
            raise ValueError(
                f"{op}: backend='cuda' needs the compiled extension longlive_kernels._C; "
                "rebuild with `pip install --no-build-isolation -e .` on a machine with CUDA"
            )
    if backend == "triton":
        if not has_triton():
            raise ValueError(f"{op}: backend='triton' needs the triton package")
        if not on_cuda and not interpret_mode():
            raise ValueError(
                f"{op}: backend='triton' on a {device} tensor needs TRITON_INTERPRET=1 "
                "(set before importing triton); use backend='torch' on CPU"
            )
    return backend


# ---------------------------------------------------------------------------------------------
# Eager calls without the dispatcher
# ---------------------------------------------------------------------------------------------

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def direct_call_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether a ``torch.library`` custom op may run its Python implementation directly.

    The dispatcher costs 20-80 µs of host time per call: as much as a small kernel, and in a
    streaming forward (~40 op calls per block) enough to leave the GPU waiting on the host once
    sequence parallelism halves each rank's work. Calling the implementation computes the same in
    plain eager execution: not traced by torch.compile, no dispatch mode (FakeTensorMode,
    FlopCounterMode, ...) or functorch transform active, only plain non-meta tensors, and no input
    that autograd would have to see.
    """
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if t.__class__ not in _PLAIN_TENSOR_TYPES or t.is_meta or (grad and t.requires_grad):
            return False
    return True


def eager_op(op):
    """``op`` (a ``torch.library.custom_op``) as a function that calls its implementation directly
    where :func:`direct_call_ok` holds for its tensor arguments, and the op otherwise."""
    impl = op._init_fn

    def call(*args):
        if direct_call_ok(*[a for a in args if isinstance(a, torch.Tensor)]):
            return impl(*args)
        return op(*args)

    call.__name__ = call.__qualname__ = f"eager_{op._name}"
    call.op = op
    return call
