"""Objective quality of generated procedural-world videos: detectors that read frames (colour,
shape, count, motion direction, background, pan, spin), metrics (prompt adherence, temporal
consistency, drift, response latency to scene cuts and prompt switches) and a markdown/PNG report.
Used by ``longlive bench quality``."""

from .detectors import FrameDetections, as_uint8_frames, detect_chunks, detect_frames, summarize_window
from .metrics import (
    AdherenceResult,
    ConsistencyResult,
    DriftResult,
    EventLatency,
    QualityResult,
    drift,
    evaluate_video,
    prompt_adherence,
    response_latency,
    temporal_consistency,
)
from .report import format_table, write_report

__all__ = [
    "AdherenceResult",
    "ConsistencyResult",
    "DriftResult",
    "EventLatency",
    "FrameDetections",
    "QualityResult",
    "as_uint8_frames",
    "detect_chunks",
    "detect_frames",
    "drift",
    "evaluate_video",
    "format_table",
    "prompt_adherence",
    "response_latency",
    "summarize_window",
    "temporal_consistency",
    "write_report",
]
