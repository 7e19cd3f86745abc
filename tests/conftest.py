"""Test configuration: CPU machines run Triton kernels in the interpreter; GPU-only tests skip."""

import os
import pathlib

# Subprocess tests (`python -m longlive.cli ...` in a tmp dir) import this checkout even when it is not
# pip-installed.
_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)

# One fixed config per Triton kernel instead of autotuning every shape hypothesis draws (benchmarks tune).
os.environ.setdefault("LONGLIVE_AUTOTUNE", "0")

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported

import pytest
import torch
from hypothesis import HealthCheck, settings

from longlive_kernels.testing import interpreter_rounds_bf16

# The interpreter's bf16 casts round as the GPU's do (stock Triton 3.6 truncates them).
interpreter_rounds_bf16()

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "gpu",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_multi = pytest.mark.skip(reason="needs 2+ CUDA GPUs")
    for item in items:
        if "gpu" in item.keywords and n_gpu == 0:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and n_gpu < 2:
            item.add_marker(skip_multi)


@pytest.fixture
def triton_device() -> str:
    """Device on which Triton kernels run here: cuda on a GPU machine, cpu under the interpreter."""
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
