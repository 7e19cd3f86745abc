"""Detectors vs the procedural ground truth: ≥ 99 % correct (issue 10), also after mp4 and noise."""

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from longlive.data.procedural import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    ProceduralConfig,
    SceneAttributes,
    frames_to_tensor,
    generate_sample,
    render_scene,
)
from longlive.data.video_folder import read_video, write_video
from longlive.quality.detectors import as_uint8_frames, detect_chunks, detect_frames, label_components


def _score(cfg, seeds, transform=None):
    """Per-attribute chunk accuracy and per-frame accuracy over ``seeds``."""
    chunk_ok = {f: [] for f in SceneAttributes.FIELDS}
    frame_ok = {f: [] for f in ("colour", "shape", "count", "background")}
    for seed in seeds:
        s = generate_sample(seed, cfg)
        frames = s.frames if transform is None else transform(s.frames, seed)
        det = detect_frames(frames)
        for f in frame_ok:
            frame_ok[f].append(getattr(det, f) == getattr(s.truth, f))
        got = detect_chunks(det, [c.frames for c in s.truth.chunks], cfg.fps)
        for ch, g in zip(s.truth.chunks, got):
            for f in chunk_ok:
                chunk_ok[f].append(getattr(g, f) == getattr(ch.attributes, f))
    return (
        {f: float(np.mean(v)) for f, v in chunk_ok.items()},
        {f: float(np.mean(np.concatenate(v))) for f, v in frame_ok.items()},
        len(chunk_ok["colour"]),
    )


@pytest.mark.parametrize("phrasing, seeds", [("train", range(24)), ("heldout", range(5000, 5024))])
def test_detectors_at_least_99_percent_on_ground_truth(phrasing, seeds):
    # held-out phrasings describe the same worlds; their ground truth is checked the same way
    cfg = ProceduralConfig(num_chunks=8, phrasing=phrasing, spin_probability=0.4, two_object_probability=0.5)
    per_chunk, per_frame, n = _score(cfg, seeds)
    assert n == 24 * 8
    for name, acc in {**per_chunk, **{f"frame {k}": v for k, v in per_frame.items()}}.items():
        assert acc >= 0.99, f"{name}: {acc:.3f}"


@pytest.mark.parametrize(
    "cfg",
    [
        ProceduralConfig(height=64, width=64, num_chunks=6),
        ProceduralConfig(height=96, width=160, fps=12, first_chunk_frames=9, chunk_frames=12, num_chunks=4),
        ProceduralConfig(fps=4, first_chunk_frames=3, chunk_frames=4, num_chunks=8),
    ],
    ids=["64px", "96x160-12fps", "4fps"],
)
def test_detectors_other_sizes_and_rates(cfg):
    per_chunk, per_frame, _ = _score(cfg, range(100, 112))
    assert min(per_chunk.values()) >= 0.99, per_chunk
    assert min(per_frame.values()) >= 0.99, per_frame


def test_detectors_survive_mp4_and_noise(tmp_path):
    cfg = ProceduralConfig(num_chunks=6)

    def mp4(frames, seed):
        path = tmp_path / f"{seed}.mp4"
        write_video(path, frames, cfg.fps, crf=28)
        return read_video(path)[0]

    def noisy_blur(frames, seed):
        x = frames.astype(np.float32)
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[:, i : i + x.shape[1], j : j + x.shape[2]] for i in range(3) for j in range(3)) / 9
        x += np.random.default_rng(seed).normal(0, 8, x.shape)
        return np.clip(x, 0, 255).astype(np.uint8)

    for transform in (mp4, noisy_blur):
        per_chunk, _, _ = _score(cfg, range(200, 210), transform)
        assert min(per_chunk.values()) >= 0.95, (transform.__name__, per_chunk)


def test_float_layouts_give_the_same_detections():
    s = generate_sample(9, ProceduralConfig(height=64, width=64, num_chunks=3))
    ref = detect_frames(s.frames)
    for video, kw in (
        (frames_to_tensor(s.frames), {}),  # [3, T, H, W] in [-1, 1]
        (s.frames.astype(np.float32) / 255.0, {"value_range": (0.0, 1.0)}),  # [T, H, W, 3] in [0, 1]
        (torch.from_numpy(s.frames), {}),
    ):
        assert np.array_equal(as_uint8_frames(video, **kw), s.frames)
        det = detect_frames(video, **kw)
        assert np.array_equal(det.colour, ref.colour) and np.array_equal(det.shape, ref.shape)


def test_each_colour_shape_and_background_alone():
    for bg, levels in (
        ("dark", (30, 30)),
        ("light", (210, 210)),
        ("gradient", (35, 210)),
        ("checkered", (80, 145)),
    ):
        for colour in COLOURS:
            for shape in SHAPES:
                for angle in (0.0, 0.5):
                    frame = render_scene(64, 64, bg, levels, 3, [(shape, colour, 30.3, 33.7, 7.0, angle)])
                    det = detect_frames(frame[None])
                    got = (
                        COLOURS[det.colour[0]],
                        SHAPES[det.shape[0]],
                        BACKGROUNDS[det.background[0]],
                        det.count[0],
                    )
                    assert got == (colour, shape, bg, 1), (bg, colour, shape, angle, got)


def test_empty_frames_and_bad_input():
    det = detect_frames(np.full((3, 32, 32, 3), 40, np.uint8))
    assert (det.count == 0).all() and (det.colour == -1).all() and (det.shape == -1).all()
    assert np.isnan(det.centroid).all() and (det.background == BACKGROUNDS.index("dark")).all()
    (attrs,) = detect_chunks(det, [(0, 3)], fps=8)
    assert attrs.colour is None and attrs.count == 0 and attrs.direction is None
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        detect_frames(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8 or floating"):
        detect_frames(np.zeros((2, 32, 32, 3), np.int32))
    with pytest.raises(ValueError, match="window"):
        detect_chunks(det, [(0, 4)], fps=8)


def _bfs_components(mask):
    labels, n = -np.ones(mask.shape, int), 0
    _, h, w = mask.shape
    for f, y, x in zip(*np.nonzero(mask)):
        if labels[f, y, x] >= 0:
            continue
        queue = deque([(y, x)])
        labels[f, y, x] = n
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[f, ny, nx] and labels[f, ny, nx] < 0:
                    labels[f, ny, nx] = n
                    queue.append((ny, nx))
        n += 1
    return labels


@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.floats(0.2, 0.7), st.integers(0, 2**31))
def test_label_components_matches_bfs(t, h, w, density, seed):
    mask = np.random.default_rng(seed).random((t, h, w)) < density
    pixels, labels = label_components(mask)
    want = _bfs_components(mask).reshape(-1)[pixels]
    assert np.array_equal(pixels, np.flatnonzero(mask))
    # same partition, same numbering (both number components by their first pixel)
    assert np.array_equal(labels, want)
