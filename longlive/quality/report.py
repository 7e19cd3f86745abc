"""Markdown report and plots of quality results (one row / one curve per variant: bf16, nvfp4...).

``write_report`` writes ``<path>`` (markdown table) and, when matplotlib is importable,
``<stem>_adherence.png``, ``<stem>_consistency.png`` and ``<stem>_drift.png`` next to it:
per-chunk adherence, frame-to-frame change and object area / background level over time, with
scene cuts (dashed) and prompt switches (dotted) marked. matplotlib is imported lazily and is
optional (``pip install matplotlib``); without it the report says the plots were skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from .metrics import QualityResult

__all__ = ["REPORT_COLUMNS", "format_table", "write_report"]

REPORT_COLUMNS = (
    ("adherence_%", "adherence %", "{:.1f}"),
    ("strict_adherence_%", "all attrs %", "{:.1f}"),
    ("colour_%", "colour %", "{:.1f}"),
    ("shape_%", "shape %", "{:.1f}"),
    ("count_%", "count %", "{:.1f}"),
    ("direction_%", "direction %", "{:.1f}"),
    ("background_%", "background %", "{:.1f}"),
    ("frame_diff", "frame diff", "{:.4f}"),
    ("flicker", "flicker", "{:.5f}"),
    ("stability_%", "stability %", "{:.1f}"),
    ("drift_%", "drift %", "{:.2f}"),
    ("scene_cut_latency", "cut latency (chunks)", "{:.2f}"),
    ("switch_latency", "switch latency (chunks)", "{:.2f}"),
    ("scene_cut_responded_%", "cuts responded %", "{:.0f}"),
    ("switch_responded_%", "switches responded %", "{:.0f}"),
)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return spec.format(value)


def _check_results(results) -> dict[str, QualityResult]:
    if isinstance(results, QualityResult):
        results = {"result": results}
    if not isinstance(results, Mapping) or not results:
        raise TypeError(
            f"results must be a QualityResult or a non-empty mapping name -> QualityResult, got "
            f"{type(results).__name__}"
        )
    for name, r in results.items():
        if not isinstance(r, QualityResult):
            raise TypeError(f"results[{name!r}] must be a QualityResult, got {type(r).__name__}")
    return dict(results)


def format_table(results: Mapping[str, QualityResult] | QualityResult) -> str:
    """Markdown table, one row per variant, columns :data:`REPORT_COLUMNS`."""
    results = _check_results(results)
    head = "| variant | " + " | ".join(title for _, title, _ in REPORT_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(REPORT_COLUMNS)
    rows = []
    for name, r in results.items():
        s = r.summary()
        rows.append(f"| {name} | " + " | ".join(_fmt(s.get(k), spec) for k, _, spec in REPORT_COLUMNS) + " |")
    return "\n".join([head, sep, *rows])


def _mark_events(ax, r: QualityResult) -> None:
    for e in r.latencies:
        t = r.bounds[e.chunk][0] / r.fps
        ax.axvline(t, color="0.5", lw=0.8, ls="--" if e.kind == "scene_cut" else ":")


def _plots(results: dict[str, QualityResult], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    specs = [
        ("adherence", "adherence per chunk", [("adherence", "attributes matched")]),
        ("consistency", "temporal consistency", [("frame_diff", "mean |Δ frame|")]),
        ("drift", "drift", [("object_area", "object area (px)"), ("background_level", "background grey")]),
    ]
    written = []
    for suffix, title, series in specs:
        fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.6 * len(series)), squeeze=False, sharex=True)
        for ax, (key, label) in zip(axes[:, 0], series):
            for name, r in results.items():
                pc = r.per_chunk()
                ax.plot(pc["time_s"], pc[key], marker="o", ms=3, lw=1.2, label=name)
            _mark_events(ax, first)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0, 0].set_title(f"{title} (dashed: scene cuts, dotted: prompt switches)")
        axes[-1, 0].set_xlabel("time (s)")
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{suffix}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_report(
    results: Mapping[str, QualityResult] | QualityResult,
    path: str | os.PathLike,
    *,
    title: str = "Quality benchmark",
    notes: str | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the markdown report (and PNG plots next to it).

    Parameters
    ----------
    results : mapping variant name → QualityResult, or one QualityResult
    path : str or PathLike
        Markdown file; plots are ``<stem>_<metric>.png`` in the same folder.
    title, notes : str
        Heading and free text (device, command, prompts...) put under it.
    plots : bool
        Draw plots when matplotlib is available.

    Returns
    -------
    list of Path
        Files written, the report first.
    """
    results = _check_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plot_note = ""
    if plots:
        try:
            written = _plots(results, path.with_suffix(""))
        except ImportError:
            plot_note = "\n_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._\n"
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += [
        format_table(results),
        "",
        "adherence: mean fraction of stated attributes detected per chunk; all attrs: chunks matching every "
        "stated attribute; frame diff / flicker: mean |Δ frame| and |Δ² mean luma| inside shots (0..1); "
        "stability: in-chunk frame pairs with unchanged detections; drift: largest change of object area "
        "(relative), object colour or background grey (/255) between the first and last "
        f"{next(iter(results.values())).drift.window_frames} frames; latency: chunks until the changed "
        "attributes appear after a scene cut / prompt switch.",
        "",
    ]
    for p in written:
        lines.append(f"![{p.stem}]({p.name})")
    lines.append(plot_note)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return [path, *written]
