"""``longlive bench``: listing, routing to the bench/ scripts, clear errors (unknown name, no GPU)."""

from __future__ import annotations

import pytest
import torch

from longlive import bench_cli
from longlive.cli import main


def test_list_names_every_benchmark(capsys):
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    for name in [*bench_cli.BENCHMARKS, "kernels"]:
        assert f"  {name} " in text
    for b in bench_cli.BENCHMARKS.values():
        assert (bench_cli.bench_dir() / b.script).is_file(), b.script


def test_unknown_benchmark(capsys):
    assert main(["bench", "frobnicate"]) == 2
    assert "unknown benchmark 'frobnicate'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("name", ["gemm", "quantize", "e2e", "kernels"])
def test_gpu_benchmarks_say_they_need_cuda(name, capsys):
    assert main(["bench", name]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cpu_mode_hint(capsys):
    assert main(["bench", "train"]) == 2
    assert "(on CPU: --cpu-smoke)" in capsys.readouterr().err


def test_script_help_and_exit_status_pass_through(capsys):
    path = bench_cli.bench_dir() / "quality" / "bench_quality.py"
    assert bench_cli.run_script(path, ["--help"]) == 0  # argparse's SystemExit(0) of the routed script
    assert "usage: longlive bench quality" in capsys.readouterr().out
    assert bench_cli.run_script(path, ["--steps", "0"]) == 2


def test_quality_routed_and_errors_before_work(capsys):
    assert main(["bench", "quality", "--modes", "bf16,nope"]) == 2
    assert "--modes: unknown ['nope']" in capsys.readouterr().err


def test_missing_bench_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGLIVE_BENCH_DIR", str(tmp_path))
    assert main(["bench", "quality"]) == 2
    assert "not found" in capsys.readouterr().err
