"""Multi-process tests of the comm ops: gloo on CPU with 2 and 4 processes, NCCL on 2+ GPUs.

One spawn per (backend, world size) runs every case of ``_workers.py`` on every rank; each test
below asserts one case on all ranks. The spawn has a hard timeout, so a hang fails instead of
blocking the suite.
"""

from __future__ import annotations

import pytest
import torch

from longlive_kernels._backend import interpret_mode
from longlive_kernels.comm._spawn import run_distributed

from ._spawn_targets import fail_on_rank_1, hang_on_rank_1
from ._workers import CASES, run_cases
from ._workers_delayed import run_delayed

GLOO_TIMEOUT_S = 240.0
ALL = list(CASES)
P4 = ["roundtrip", "attention", "quantized_attention", "invalid", "head_chunks"]
# gloo ranks hold CPU tensors: Triton runs there only under the interpreter (CPU machines)
GLOO_BACKENDS = ["torch", "triton"] if interpret_mode() else ["torch"]

_cache: dict[tuple[str, int], list[dict]] = {}


def _results(backend: str, world_size: int, names: list[str], backends: list[str]) -> list[dict]:
    key = (backend, world_size)
    if key not in _cache:
        device = "cuda" if backend == "nccl" else "cpu"
        _cache[key] = run_distributed(run_cases, world_size, backend=backend, args=(device, names, backends),
                                      timeout_s=GLOO_TIMEOUT_S if backend == "gloo" else 300.0)
    return _cache[key]


def _assert_case(results: list[dict], case: str) -> None:
    for rank, res in enumerate(results):
        r = res[case]
        assert not r["failures"], f"rank {rank}: " + "\n".join(r["failures"])


@pytest.mark.parametrize("case", ALL)
def test_gloo_2_ranks(case):
    _assert_case(_results("gloo", 2, ALL, GLOO_BACKENDS), case)


@pytest.mark.parametrize("case", P4)
def test_gloo_4_ranks(case):
    _assert_case(_results("gloo", 4, P4, ["torch"]), case)


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.multigpu
@pytest.mark.parametrize("case", ALL)
def test_nccl(case):
    world = 4 if _gpus() >= 4 else 2
    _assert_case(_results("nccl", world, ALL, ["triton"]), case)


def test_gloo_delayed_scaling():
    """NVFP4 delayed scaling over a real all-to-all (2 ranks): the schedule and the data, bit for bit."""
    results = run_distributed(run_delayed, 2, backend="gloo", args=("cpu", GLOO_BACKENDS), timeout_s=GLOO_TIMEOUT_S)
    for rank, failures in enumerate(results):
        assert not failures, f"rank {rank}: " + "\n".join(failures)


@pytest.mark.multigpu
def test_nccl_delayed_scaling():
    if _gpus() < 2:
        pytest.skip("needs 2+ CUDA GPUs")
    world = 4 if _gpus() >= 4 else 2
    results = run_distributed(run_delayed, world, backend="nccl", args=("cuda", ["cuda", "triton"]), timeout_s=300.0)
    for rank, failures in enumerate(results):
        assert not failures, f"rank {rank}: " + "\n".join(failures)


def test_spawn_reports_rank_failures():
    with pytest.raises(RuntimeError, match="rank 1"):
        run_distributed(fail_on_rank_1, 2, timeout_s=60.0)


def test_spawn_times_out_on_hang():
    with pytest.raises(TimeoutError, match="did not finish"):
        run_distributed(hang_on_rank_1, 2, timeout_s=30.0)

