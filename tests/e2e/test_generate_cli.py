"""End to end: the ``longlive generate`` console command in a fresh process, on the bundled demo model
(2 chunks; skipped when its weights are not installed) and on a random-weights tiny model (always runs).
The mp4 is decoded and checked: frame count of the chunk layout, frame size, not constant."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from longlive.config import ModelConfig
from longlive.data.prompts import chunk_frame_counts, num_frames_for_chunks
from longlive.data.video_folder import read_video
from longlive.inference.pipeline import DEMO_DIR, peek_config

DEMO_WEIGHTS = DEMO_DIR / "model.safetensors"


def _longlive(args, cwd, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "longlive.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _check_video(path, cfg: ModelConfig, chunks: int) -> np.ndarray:
    first, later = chunk_frame_counts(cfg.ar.chunk_frames, cfg.vae_stride[0])
    frames, _ = read_video(path)
    assert frames.shape == (num_frames_for_chunks(chunks, first_chunk_frames=first, chunk_frames=later),
                            *cfg.resolution, 3)
    assert frames.std() > 1.0, "constant colour"
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).max() > 0, "every frame is the same"
    return frames


@pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason=f"bundled demo weights not installed ({DEMO_WEIGHTS})")
def test_generate_bundled_demo_two_chunks(tmp_path):
    out = _longlive(["generate", "--chunks", "2", "-q"], cwd=tmp_path)  # default prompt, default output name
    assert "wrote 2 chunks" in out and "longlive_demo.mp4" in out
    frames = _check_video(tmp_path / "longlive_demo.mp4", peek_config(DEMO_WEIGHTS), 2)
    assert frames.mean() > 2.0  # not black


def test_generate_random_weights_two_chunks(tmp_path):
    args = ["generate", "--random-weights", "--config", "tiny", "--text-encoder", "hash", "--chunks", "2",
            "--steps", "1", "--out", "random.mp4", "-q"]
    assert "wrote 2 chunks" in _longlive(args, cwd=tmp_path)
    _check_video(tmp_path / "random.mp4", ModelConfig.from_name("tiny"), 2)


def test_precision_choices_are_the_dit_linear_modes():
    """The CLI spells its --precision choices out (its parser imports no torch, for a fast --help);
    they stay the modes ``CausalDiT.quantize_`` takes."""
    from longlive.cli import build_generate_parser
    from longlive.inference.loading import PRECISIONS

    (action,) = [a for a in build_generate_parser()._actions if a.dest == "precision"]
    assert tuple(action.choices) == PRECISIONS
