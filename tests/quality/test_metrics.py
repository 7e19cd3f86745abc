"""Quality metrics: perfect on ground truth, and they move the right way on degraded videos."""

import numpy as np
import pytest

from longlive.data.procedural import COLOUR_RGB, ProceduralConfig, SceneAttributes, generate_sample
from longlive.quality.detectors import detect_frames
from longlive.quality.metrics import (
    drift,
    evaluate_video,
    prompt_adherence,
    response_latency,
    temporal_consistency,
)

CFG = ProceduralConfig(num_chunks=12, colour_switch_probability=0.3)
LAYOUT = dict(fps=CFG.fps, first_chunk_frames=CFG.first_chunk_frames, chunk_frames=CFG.chunk_frames)


@pytest.fixture(scope="module")
def sample():
    return generate_sample(5, CFG)


def test_ground_truth_video_scores_perfectly(sample):
    by_prompt = evaluate_video(sample.frames, prompts=sample.prompts, **LAYOUT)
    by_truth = evaluate_video(sample.frames, expected=sample.truth.chunks, **LAYOUT)
    for r in (by_prompt, by_truth):
        assert r.adherence.score == 1.0 and r.adherence.strict == 1.0 and not r.adherence.mismatches
        assert r.consistency.stability == 1.0
        assert r.latencies and all(e.latency == 0 for e in r.latencies)
        kinds = {e.kind for e in r.latencies}
        assert kinds == {"scene_cut", "switch"}
    assert by_prompt.summary() == by_truth.summary()
    assert [e.chunk for e in by_prompt.latencies] == [
        c for c, ch in enumerate(sample.truth.chunks) if ch.is_switch
    ]


def test_content_delayed_by_one_chunk_has_latency_one(sample):
    late = sample.frames.copy()
    late[5 + 8 :] = sample.frames[5:-8]  # every chunk from 2 on shows what chunk c-1 should show
    r = evaluate_video(late, prompts=sample.prompts, **LAYOUT)
    assert r.adherence.score < 0.9
    assert all(e.latency == 1 for e in r.latencies if e.chunk >= 2 and e.latency is not None)
    assert any(e.latency == 1 for e in r.latencies)


def test_wrong_colour_lowers_colour_adherence_only(sample):
    frames = sample.frames.copy()
    bad_chunks = [3, 7]
    for c in bad_chunks:
        a, b = sample.truth.chunks[c].frames
        want = sample.truth.chunks[c].attributes.colour
        other = "blue" if want != "blue" else "red"
        seg = frames[a:b].astype(int)
        obj = (seg.max(-1) - seg.min(-1)) >= 70
        seg[obj] = COLOUR_RGB[other]
        frames[a:b] = seg
    r = evaluate_video(frames, prompts=sample.prompts, **LAYOUT)
    assert r.adherence.per_attribute["colour"] == pytest.approx(1 - len(bad_chunks) / CFG.num_chunks)
    assert all(v == 1.0 for k, v in r.adherence.per_attribute.items() if k != "colour")
    assert sorted({m[0] for m in r.adherence.mismatches}) == bad_chunks


def test_flicker_and_frame_diff_see_brightness_flicker(sample):
    base = evaluate_video(sample.frames, prompts=sample.prompts, **LAYOUT).consistency
    flick = sample.frames.astype(int)
    flick[1::2] += 25
    flick = np.clip(flick, 0, 255).astype(np.uint8)
    bad = evaluate_video(flick, prompts=sample.prompts, **LAYOUT).consistency
    assert base.flicker < 0.002
    assert bad.flicker > 0.05
    assert bad.frame_diff > base.frame_diff + 0.05


def _single_shot(seconds=24):
    cfg = ProceduralConfig(
        num_chunks=seconds,
        min_chunks_per_shot=seconds,
        max_chunks_per_shot=seconds,
        colour_switch_probability=0.0,
    )
    return cfg, generate_sample(1, cfg)


def test_drift_small_on_a_stable_shot_and_large_when_things_change():
    cfg, s = _single_shot()
    det = detect_frames(s.frames)
    d = drift(det, cfg.fps, window_seconds=5)
    assert d.window_frames == 40 and d.drift < 0.01, d
    # background brightening over time: +0 … +30 grey levels (≈ 12 % at the end)
    ramp = np.linspace(0, 30, len(s.frames))[:, None, None, None]
    obj = (s.frames.max(-1) - s.frames.min(-1)) >= 70
    brighter = np.where(obj[..., None], s.frames, np.clip(s.frames + ramp, 0, 255)).astype(np.uint8)
    db = drift(detect_frames(brighter), cfg.fps, window_seconds=5)
    assert db.background > 0.05 and db.drift == db.background
    # objects fading in colour (towards grey) in the second half
    faded = s.frames.astype(float)
    half = len(faded) // 2
    grey = faded[half:].mean(-1, keepdims=True)
    faded[half:] = np.where(obj[half:, ..., None], 0.75 * faded[half:] + 0.25 * grey, faded[half:])
    dc = drift(detect_frames(faded.astype(np.uint8)), cfg.fps, window_seconds=5)
    assert dc.colour > 0.05
    with pytest.raises(ValueError, match="at least 2 frames"):
        drift(detect_frames(s.frames[:1]), cfg.fps)


def test_prompt_adherence_skips_unstated_attributes_and_checks_input():
    want = [
        SceneAttributes("red", None, 1, "left", "dark"),
        SceneAttributes("red", "circle", 1, "up", "dark"),
    ]
    got = [
        SceneAttributes("red", "square", 1, "left", "dark"),
        SceneAttributes("red", "circle", 1, "left", "dark"),
    ]
    r = prompt_adherence(got, want)
    assert r.per_chunk[0] == 1.0 and r.per_chunk[1] == pytest.approx(6 / 7)
    assert r.strict == 0.5 and r.per_attribute["shape"] == 1.0 and r.per_attribute["direction"] == 0.5
    with pytest.raises(ValueError, match="chunks"):
        prompt_adherence(got, want[:1])
    with pytest.raises(ValueError, match="unknown"):
        prompt_adherence(got, want, attributes=("size",))
    with pytest.raises(TypeError):
        prompt_adherence(["red"], ["red"])


def test_response_latency_never_and_skipped_events():
    a = SceneAttributes("red", "circle", 1, "left", "dark")
    b = SceneAttributes("blue", "circle", 1, "left", "dark")
    expected = [a, a, b, b, b, a]
    detected = [a, a, a, a, b, a]
    ev = response_latency(detected, expected, [False] * 6)
    assert [(e.chunk, e.changed, e.latency) for e in ev] == [(2, ("colour",), 2), (5, ("colour",), 0)]
    ev = response_latency([a, a, a, a, a, a], expected, [False, False, True, False, False, False])
    assert ev[0].kind == "scene_cut" and ev[0].latency is None


def test_evaluate_video_input_checks(sample):
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_video(sample.frames, **LAYOUT)
    with pytest.raises(ValueError, match="frames but 11 chunks"):
        evaluate_video(sample.frames, prompts=sample.prompts[:-1], **LAYOUT)
    det = detect_frames(sample.frames)
    with pytest.raises(ValueError, match="cover"):
        temporal_consistency(det, [(0, 5)])
