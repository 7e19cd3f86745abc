"""Objective quality metrics of generated procedural-world videos (issue 10, item 3).

- **Prompt adherence**: per chunk, the detected attributes (:mod:`.detectors`) against the
  attributes its prompt states; ``score`` = mean over chunks of the fraction of stated
  attributes matched, ``strict`` = fraction of chunks matching every stated attribute.
- **Temporal consistency**: mean absolute frame-to-frame change (``frame_diff``, 0..1 of the
  full scale), ``flicker`` = mean |second difference| of the mean frame luma (0..1), both over
  frames inside one shot; ``stability`` = fraction of consecutive frame pairs inside a chunk whose
  colour, shape, count and background detections agree.
- **Drift** between the first and last ``window_seconds`` (default 10 s): relative change of the
  mean object area, change of the mean object colour (max over RGB, /255) and of the mean
  background grey (/255); ``drift`` is the largest. Meaningful for a single-prompt video.
- **Response latency** to scene cuts and prompt switches: chunks from the event's chunk until
  the attributes that changed there are all detected (0 = the chunk itself); ``None`` when they
  never appear before the next event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.procedural import ChunkTruth, SceneAttributes, parse_prompt
from ..data.prompts import (
    SCENE_CUT_PREFIX,
    chunk_frame_bounds,
    num_frames_for_chunks,
    schedule_from_chunk_prompts,
)
from .detectors import FrameDetections, detect_frames, summarize_window

__all__ = [
    "AdherenceResult",
    "ConsistencyResult",
    "DriftResult",
    "EventLatency",
    "QualityResult",
    "drift",
    "evaluate_video",
    "prompt_adherence",
    "response_latency",
    "temporal_consistency",
]

FIELDS = SceneAttributes.FIELDS


@dataclass
class AdherenceResult:
    score: float  # mean over chunks of the fraction of stated attributes matched
    strict: float  # fraction of chunks matching every stated attribute
    per_attribute: dict[str, float]  # accuracy per attribute over the chunks stating it
    per_chunk: np.ndarray  # [chunks] fraction matched
    mismatches: list[tuple[int, str, object, object]] = field(
        default_factory=list
    )  # (chunk, attr, want, got)


@dataclass
class ConsistencyResult:
    frame_diff: float
    flicker: float
    stability: float


@dataclass
class DriftResult:
    drift: float
    size: float
    colour: float
    background: float
    window_frames: int


@dataclass
class EventLatency:
    chunk: int
    kind: str  # "scene_cut" or "switch"
    changed: tuple[str, ...]  # attributes that changed at the event
    latency: int | None  # chunks until they all appear; None = never before the next event


@dataclass
class QualityResult:
    adherence: AdherenceResult
    consistency: ConsistencyResult
    drift: DriftResult
    latencies: list[EventLatency]
    expected: list[SceneAttributes]
    detected: list[SceneAttributes]
    detections: FrameDetections
    bounds: list[tuple[int, int]]
    fps: float

    def summary(self) -> dict[str, float]:
        """Flat numbers for tables (percentages in 0..100, latencies in chunks, NaN when undefined)."""
        out = {"adherence_%": 100 * self.adherence.score, "strict_adherence_%": 100 * self.adherence.strict}
        out.update({f"{k}_%": 100 * v for k, v in self.adherence.per_attribute.items()})
        out.update(
            {
                "frame_diff": self.consistency.frame_diff,
                "flicker": self.consistency.flicker,
                "stability_%": 100 * self.consistency.stability,
                "drift_%": 100 * self.drift.drift,
            }
        )
        for kind in ("scene_cut", "switch"):
            ev = [e for e in self.latencies if e.kind == kind]
            got = [e.latency for e in ev if e.latency is not None]
            out[f"{kind}_latency"] = float(np.mean(got)) if got else float("nan")
            out[f"{kind}_responded_%"] = 100 * len(got) / len(ev) if ev else float("nan")
        return out

    def per_chunk(self) -> dict[str, np.ndarray]:
        """Time series per chunk for plots: start time (s), adherence, frame_diff, area, background."""
        det = self.detections
        starts = np.array([a for a, _ in self.bounds], np.float64)

        def mean_over(values):
            return np.array(
                [
                    np.nanmean(values[a:b]) if np.isfinite(values[a:b]).any() else np.nan
                    for a, b in self.bounds
                ]
            )

        return {
            "time_s": starts / self.fps,
            "adherence": self.adherence.per_chunk,
            "frame_diff": mean_over(det.frame_diff),
            "object_area": mean_over(np.where(det.count > 0, det.area, np.nan)),
            "background_level": mean_over(det.background_level),
        }


def _check_lists(detected: Sequence, expected: Sequence) -> None:
    if len(detected) != len(expected):
        raise ValueError(f"detected has {len(detected)} chunks, expected has {len(expected)}")
    for name, seq in (("detected", detected), ("expected", expected)):
        for i, a in enumerate(seq):
            if not isinstance(a, SceneAttributes):
                raise TypeError(f"{name}[{i}] must be a SceneAttributes, got {type(a).__name__}")


def prompt_adherence(
    detected: Sequence[SceneAttributes],
    expected: Sequence[SceneAttributes],
    *,
    attributes: Sequence[str] = FIELDS,
) -> AdherenceResult:
    """Compare per-chunk detections with the attributes each prompt states (``None`` = not stated)."""
    _check_lists(detected, expected)
    unknown = set(attributes) - set(FIELDS)
    if unknown:
        raise ValueError(f"attributes: unknown {sorted(unknown)}; choose from {FIELDS}")
    if not expected:
        raise ValueError("prompt_adherence: no chunks")
    hits = {a: [] for a in attributes}
    per_chunk, mismatches = [], []
    for c, (got, want) in enumerate(zip(detected, expected)):
        ok = []
        for a in attributes:
            w = getattr(want, a)
            if w is None:
                continue
            match = getattr(got, a) == w
            hits[a].append(match)
            ok.append(match)
            if not match:
                mismatches.append((c, a, w, getattr(got, a)))
        per_chunk.append(float(np.mean(ok)) if ok else np.nan)
    per_chunk = np.array(per_chunk)
    scored = per_chunk[np.isfinite(per_chunk)]
    return AdherenceResult(
        score=float(scored.mean()) if scored.size else float("nan"),
        strict=float((scored == 1.0).mean()) if scored.size else float("nan"),
        per_attribute={a: float(np.mean(v)) for a, v in hits.items() if v},
        per_chunk=per_chunk,
        mismatches=mismatches,
    )


def _shot_of_frame(bounds: list[tuple[int, int]], scene_cuts: Sequence[bool], num_frames: int) -> np.ndarray:
    shot = np.zeros(num_frames, np.int64)
    for c, (a, _) in enumerate(bounds):
        if c > 0 and scene_cuts[c]:
            shot[a:] += 1
    return shot


def temporal_consistency(
    det: FrameDetections, bounds: list[tuple[int, int]], scene_cuts: Sequence[bool] | None = None
) -> ConsistencyResult:
    """Frame-to-frame change, flicker and in-chunk attribute stability (module docstring)."""
    t = len(det)
    if not bounds or bounds[-1][1] != t:
        raise ValueError(f"bounds must cover the video's {t} frames, got {bounds[:1]}…{bounds[-1:]}")
    cuts = list(scene_cuts) if scene_cuts is not None else [False] * len(bounds)
    if len(cuts) != len(bounds):
        raise ValueError(f"scene_cuts has {len(cuts)} entries for {len(bounds)} chunks")
    shot = _shot_of_frame(bounds, cuts, t)
    same = shot[1:] == shot[:-1]
    frame_diff = float(det.frame_diff[1:][same].mean()) if same.any() else 0.0
    m = det.frame_mean / 255.0
    same2 = same[1:] & same[:-1]
    flicker = float(np.abs(m[2:] - 2 * m[1:-1] + m[:-2])[same2].mean()) if same2.any() else 0.0
    chunk = np.zeros(t, np.int64)
    for c, (a, b) in enumerate(bounds):
        chunk[a:b] = c
    in_chunk = chunk[1:] == chunk[:-1]
    agree = np.ones(t - 1, bool)
    for arr in (det.colour, det.shape, det.count, det.background):
        agree &= arr[1:] == arr[:-1]
    stability = float(agree[in_chunk].mean()) if in_chunk.any() else 1.0
    return ConsistencyResult(frame_diff=frame_diff, flicker=flicker, stability=stability)


def drift(det: FrameDetections, fps: float, *, window_seconds: float = 10.0) -> DriftResult:
    """Change between the first and the last ``window_seconds`` (at most half the video each)."""
    if not fps > 0 or not window_seconds > 0:
        raise ValueError(f"fps and window_seconds must be > 0, got {fps!r}, {window_seconds!r}")
    t = len(det)
    if t < 2:
        raise ValueError(f"drift needs at least 2 frames, got {t}")
    n = max(1, min(int(round(window_seconds * fps)), t // 2))
    first, last = slice(0, n), slice(t - n, t)

    def obj_mean(values, sl):
        v = values[sl][det.count[sl] > 0]
        return v.mean(axis=0) if len(v) else None

    a0, a1 = obj_mean(det.area, first), obj_mean(det.area, last)
    size = (
        abs(a1 - a0) / a0
        if a0 is not None and a1 is not None and a0 > 0
        else (0.0 if a0 is None and a1 is None else 1.0)
    )
    c0, c1 = obj_mean(det.object_rgb, first), obj_mean(det.object_rgb, last)
    colour = (
        float(np.abs(c1 - c0).max() / 255.0)
        if c0 is not None and c1 is not None
        else (0.0 if c0 is None and c1 is None else 1.0)
    )
    background = abs(det.background_level[last].mean() - det.background_level[first].mean()) / 255.0
    return DriftResult(
        drift=float(max(size, colour, background)),
        size=float(size),
        colour=colour,
        background=float(background),
        window_frames=n,
    )


def response_latency(
    detected: Sequence[SceneAttributes], expected: Sequence[SceneAttributes], scene_cuts: Sequence[bool]
) -> list[EventLatency]:
    """Chunks until the attributes that changed at each scene cut / prompt switch are detected.

    An event is a chunk ``c ≥ 1`` that is a scene cut or whose stated attributes differ from chunk
    ``c−1``'s; events where no stated attribute changed are skipped. The search stops before the
    next event.
    """
    _check_lists(detected, expected)
    if len(scene_cuts) != len(expected):
        raise ValueError(f"scene_cuts has {len(scene_cuts)} entries for {len(expected)} chunks")
    events = []
    for c in range(1, len(expected)):
        changed = tuple(
            a
            for a in FIELDS
            if getattr(expected[c], a) is not None and getattr(expected[c], a) != getattr(expected[c - 1], a)
        )
        if changed:
            events.append((c, "scene_cut" if scene_cuts[c] else "switch", changed))
    out = []
    for i, (c, kind, changed) in enumerate(events):
        stop = events[i + 1][0] if i + 1 < len(events) else len(expected)
        latency = next(
            (
                k - c
                for k in range(c, stop)
                if all(getattr(detected[k], a) == getattr(expected[c], a) for a in changed)
            ),
            None,
        )
        out.append(EventLatency(c, kind, changed, latency))
    return out


def evaluate_video(
    video,
    *,
    fps: float,
    first_chunk_frames: int,
    chunk_frames: int,
    prompts: Sequence[str] | None = None,
    expected: Sequence[SceneAttributes | ChunkTruth] | None = None,
    scene_cuts: Sequence[bool] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    drift_window_seconds: float = 10.0,
    prefix: str = SCENE_CUT_PREFIX,
) -> QualityResult:
    """Score a generated video against its per-chunk prompts or known attributes.

    Parameters
    ----------
    video : uint8 [T, H, W, 3] or float [3, T, H, W] / [T, H, W, 3] in ``value_range``
        ``T`` must equal the frames of ``len(prompts)`` chunks of the given layout.
    fps : float
        Frame rate (velocities are in frame widths per second).
    first_chunk_frames, chunk_frames : int
        Chunk layout (:mod:`longlive.data.prompts`).
    prompts : list of str, optional
        One prompt per chunk (either phrasing; attributes via
        :func:`longlive.data.procedural.parse_prompt`, unparsed ones unchecked; scene cuts from the
        prefix).
    expected : list of SceneAttributes or ChunkTruth, optional
        Instead of ``prompts``; scene cuts from :class:`ChunkTruth` or ``scene_cuts``.
    """
    if (prompts is None) == (expected is None):
        raise ValueError("give exactly one of prompts or expected")
    if prompts is not None:
        sched = schedule_from_chunk_prompts(list(prompts), prefix=prefix)
        want = [parse_prompt(p, strict=False, prefix=prefix) for p in prompts]
        cuts = [s.is_scene_cut for s in sched]
    else:
        want = [e.attributes if isinstance(e, ChunkTruth) else e for e in expected]
        if scene_cuts is not None:
            cuts = list(scene_cuts)
        else:
            cuts = [isinstance(e, ChunkTruth) and e.is_scene_cut for e in expected]
    if not want:
        raise ValueError("evaluate_video: no chunks")
    bounds = chunk_frame_bounds(len(want), first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames)
    det = video if isinstance(video, FrameDetections) else detect_frames(video, value_range=value_range)
    need = num_frames_for_chunks(len(want), first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames)
    if len(det) != need:
        raise ValueError(
            f"video has {len(det)} frames but {len(want)} chunks of ({first_chunk_frames}, "
            f"{chunk_frames}) frames need {need}"
        )
    got = [summarize_window(det, a, b, fps) for a, b in bounds]
    return QualityResult(
        adherence=prompt_adherence(got, want),
        consistency=temporal_consistency(det, bounds, cuts),
        drift=drift(det, fps, window_seconds=drift_window_seconds),
        latencies=response_latency(got, want, cuts),
        expected=want,
        detected=got,
        detections=det,
        bounds=bounds,
        fps=float(fps),
    )
