"""The quality benchmark (bench/quality/bench_quality.py): its CPU W4A4 emulation equals the NVFP4 spec,
its scoring path gives ground-truth procedural videos >= 99 %, and a tiny random-weights run produces the
report, the plots and the skip notes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bq = _load("bench_quality")
emu = _load("cpu_nvfp4")
TINY = bq.Layout(height=128, width=128, fps=8.0, first_chunk_frames=4, chunk_frames=4)  # the demo model


# ---- the CPU W4A4 emulation ----------------------------------------------------------------
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), blocks=st.integers(1, 6),
       log_scale=st.floats(-20, 20))
def test_fake_quantize_equals_spec_bit_for_bit(seed, rows, blocks, log_scale):
    from longlive_kernels.fp4 import quantize_nvfp4

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16 * blocks, generator=g) * torch.exp2(torch.tensor(log_scale))
    x[0, :16] = 0.0  # an all-zero block
    if rows > 1:  # exact E2M1 ties after scaling by 6 / amax = 1
        x[1, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2) * torch.tensor([1.0, -1.0]).repeat_interleave(8)
    want = quantize_nvfp4(x, backend="torch").dequantize(torch.float32)
    got = emu.fake_quantize_nvfp4(x)
    assert torch.equal(got, want)


def test_emulated_linear_matches_nvfp4_linear_and_swaps_every_w4a4_module():
    from longlive_kernels.fp4.linear import NVFP4Linear

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.GELU(), torch.nn.Linear(48, 32, bias=False))
    q = torch.nn.Sequential(*(NVFP4Linear.from_linear(m, "nvfp4", backend="torch") if isinstance(m, torch.nn.Linear)
                              else m for m in net))
    x = torch.randn(3, 20, 64)
    want = q(x)
    assert emu.emulate_nvfp4_(q) == 2 and all(not isinstance(m, NVFP4Linear) for m in q.modules())
    got = q(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert ((got - want).norm() / want.norm()).item() < 1e-5  # fp32 vs fp64 summation only
    with pytest.raises(ValueError, match="mode 'nvfp4'"):
        emu.EmulatedNVFP4Linear(NVFP4Linear.from_linear(torch.nn.Linear(32, 16), "w4a16"))


# ---- the scoring path on ground truth --------------------------------------------------------
@pytest.mark.parametrize("layout", [TINY, bq.Layout(96, 160, 12.0, 9, 12)], ids=["tiny-demo", "96x160-12fps"])
def test_ground_truth_scores_at_least_99_percent_through_the_benchmark_path(layout):
    settings = bq.Settings(samples=12, chunks=8, drift_seconds=6.0, drift_window=2.0, drift_prompts=2)
    truth = bq.ground_truth_run(settings, layout)
    quality_report = _load("quality_report")
    s = quality_report.heldout_summary(truth.heldout)
    assert s["chunks"] == 96 and s["scene_cut_events"] > 5 and s["switch_events"] > 5
    for key in ("adherence", *quality_report.ATTRS, "stability", "scene_cut_responded", "switch_responded"):
        assert s[key] >= 99.0, (key, s[key])
    assert s["scene_cut_latency"] == 0 and s["switch_latency"] == 0
    for video in truth.drift:  # a still object and a spinning one on a panning checkerboard
        r = video.result
        assert r.adherence.score >= 0.99 and r.drift.drift <= 0.01, (video.prompts[0], r.adherence.mismatches[:3])


def test_heldout_prompts_use_unseen_phrasing_and_seeds():
    from longlive.data.procedural import parse_prompt

    samples = bq.heldout_samples(bq.Settings(samples=3), TINY)
    assert min(s.seed for s in samples) >= bq.HELDOUT_SEED_BASE
    for s in samples:
        for p, ch in zip(s.prompts, s.truth.chunks):
            assert parse_prompt(p) == ch.attributes
    prompt, attrs, _ = bq.drift_scene(0, TINY)
    assert attrs.direction == "still" and parse_prompt(prompt) == attrs


# ---- plumbing on random weights ----------------------------------------------------------------
def test_random_weights_run_writes_report_plots_and_skip_notes(tmp_path, capsys):
    out = tmp_path / "q.md"
    small = tmp_path / "tiny64.yaml"  # the tiny model over 64x64 video: 256 tokens per chunk, fast on CI
    small.write_text("preset: tiny\nlatent_size: [8, 8]\n")
    args = ["--random-weights", "--config", str(small), "--text-encoder", "hash", "--samples", "1", "--chunks", "2", "--steps", "1",
            "--drift-seconds", "1", "--drift-window", "0.5", "--modes", "bf16,nvfp4+fp4-kv,fp8",
            "--device", "cpu", "--out", str(out), "--save-videos"]
    assert bq.main(args) == 0
    text = out.read_text()
    for section in ("## Targets", "## Held-out prompts", "## Long single shot: drift", "## Generation speed"):
        assert section in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"ground truth", "bf16", "nvfp4+fp4-kv", "fp8"} <= set(rows)
    assert "skipped: fp8" in rows["fp8"] and "exact fp32 emulation" in rows["nvfp4+fp4-kv"]
    for suffix in ("over_time", "heldout", "frames"):
        assert (tmp_path / f"q_{suffix}.png").stat().st_size > 1000 and f"(q_{suffix}.png)" in text
    assert len(list(tmp_path.glob("q_*.mp4"))) == 4  # 2 videos x 2 modes that ran
    assert "wrote " in capsys.readouterr().out


def test_bad_arguments_fail_before_any_work(tmp_path, monkeypatch, capsys):
    assert bq.main(["--modes", "bf16,int3"]) == 2
    assert "unknown ['int3']" in capsys.readouterr().err
    assert bq.main(["--steps", "9", "--random-weights"]) == 2
    assert "--steps must be in 1..8" in capsys.readouterr().err
    assert bq.main(["--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr("longlive.inference.pipeline.DEMO_DIR", tmp_path / "demo")
    assert bq.main([]) == 2
    assert "demo weights are not installed" in capsys.readouterr().err
