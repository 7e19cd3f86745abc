"""Markdown report and matplotlib plots of the quality benchmark (``bench_quality.py``).

Held-out metrics are pooled over samples: adherence over all their chunks, latencies over all their
events, consistency averaged. Plots (written next to the report when matplotlib is importable):
``<stem>_over_time.png`` (the first long single-shot video of every mode: adherence, object size,
object colour and background over time), ``<stem>_heldout.png`` (adherence by chunk position and
response latencies) and ``<stem>_frames.png`` (frames of the first held-out sample and of the long
video, one row per mode).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from longlive.quality.metrics import prompt_adherence

ATTRS = ("colour", "shape", "count", "direction", "background", "pan", "spin")


def _fmt(v, spec: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return spec.format(v)


def heldout_summary(videos) -> dict[str, float]:
    """Pooled numbers of the held-out videos (percentages 0..100, latencies in chunks)."""
    got = [d for v in videos for d in v.result.detected]
    want = [e for v in videos for e in v.result.expected]
    adh = prompt_adherence(got, want)
    out = {"adherence": 100 * adh.score, "strict": 100 * adh.strict}
    out.update({a: 100 * adh.per_attribute[a] for a in ATTRS if a in adh.per_attribute})
    out["stability"] = 100 * float(np.mean([v.result.consistency.stability for v in videos]))
    out["frame_diff"] = float(np.mean([v.result.consistency.frame_diff for v in videos]))
    out["flicker"] = float(np.mean([v.result.consistency.flicker for v in videos]))
    for kind in ("scene_cut", "switch"):
        ev = [e for v in videos for e in v.result.latencies if e.kind == kind]
        lat = [e.latency for e in ev if e.latency is not None]
        out[f"{kind}_latency"] = float(np.mean(lat)) if lat else float("nan")
        out[f"{kind}_responded"] = 100 * len(lat) / len(ev) if ev else float("nan")
        out[f"{kind}_events"] = len(ev)
    out["chunks"] = len(want)
    return out


HELDOUT_COLUMNS = (
    ("adherence", "adherence %", "{:.1f}"),
    ("strict", "all attrs %", "{:.1f}"),
    *((a, f"{a} %", "{:.0f}") for a in ATTRS),
    ("stability", "stability %", "{:.1f}"),
    ("frame_diff", "frame diff", "{:.4f}"),
    ("scene_cut_latency", "cut latency (chunks)", "{:.2f}"),
    ("scene_cut_responded", "cuts responded %", "{:.0f}"),
    ("switch_latency", "switch latency (chunks)", "{:.2f}"),
    ("switch_responded", "switches responded %", "{:.0f}"),
)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1), *("| " + " | ".join(r) + " |" for r in rows)]


def _targets(runs, layout_seconds: float, settings, generate_seconds, device: str) -> list[list[str]]:
    by = {r.mode: r for r in runs if not r.skipped and r.heldout}
    rows = []
    for mode in ("bf16", "nvfp4+fp4-kv") if settings.phrasing == "heldout" else ():  # train phrasing: no target
        if mode in by:
            a = heldout_summary(by[mode].heldout)["adherence"]
            rows.append([f"adherence on held-out phrasings ({mode})", ">= 90 %", f"{a:.1f} %", "pass" if a >= 90 else "FAIL"])
    for mode in ("bf16", "nvfp4+fp4-kv"):
        r = next((r for r in runs if r.mode == mode and not r.skipped and r.drift), None)
        if r is not None:
            d = max(100 * v.result.drift.drift for v in r.drift)
            where = f"over {layout_seconds:.0f} s" + ("" if layout_seconds >= 60 else " (target is over 60 s: --full)")
            rows.append([f"drift {where} ({mode}, worst video)", "<= 5 %", f"{d:.2f} %", "pass" if d <= 5 else "FAIL"])
    if "bf16" in by and "nvfp4+fp4-kv" in by:
        d = heldout_summary(by["nvfp4+fp4-kv"].heldout)["adherence"] - heldout_summary(by["bf16"].heldout)["adherence"]
        rows.append(["nvfp4+fp4-kv adherence vs bf16", "within 2 points", f"{d:+.1f} points", "pass" if abs(d) <= 2 else "FAIL"])
    if generate_seconds is not None:
        ok = generate_seconds <= 90
        rows.append([f"`longlive generate` default video, wall ({device})", "<= 90 s on a 2-core CPU",
                     f"{generate_seconds:.1f} s", ("pass" if ok else "FAIL") if "CPU" in device else "n/a (not a CPU)"])
    return rows


def write_quality_report(path, runs, truth, *, header: dict, generate_seconds=None, plots=True,
                         save_videos=False) -> list[Path]:
    """Write the markdown report (and plots / videos next to it); returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings, layout = header["settings"], header["layout"]
    ran = [r for r in runs if not r.skipped]
    lines = [
        "# Quality benchmark: held-out prompts, drift, scene cuts and prompt switches",
        "",
        f"- device: {header['device']}",
        f"- date: {header['date']}; total wall time {header['wall_seconds']:.0f} s",
        f"- command: `{header['command']}`",
        f"- model: {header['model']}",
        f"- video: {layout.width}x{layout.height} at {layout.fps:g} fps, chunks of {layout.first_chunk_frames} "
        f"(first) / {layout.chunk_frames} frames, "
        f"{', '.join(sorted({str(r.steps) for r in ran})) or '-'} denoising steps per chunk, guidance scale "
        f"{', '.join(sorted({f'{r.guidance_scale:g}' for r in ran if r.guidance_scale is not None})) or '1'}",
        f"- held-out set: {settings.samples} procedural multi-shot samples x {settings.chunks} chunks, prompts in "
        + ("the held-out phrasing (words and templates never seen in training)" if settings.phrasing == "heldout"
           else "the TRAINING phrasing (a diagnostic: no adherence target applies)")
        + "; long single shot: "
        f"{settings.drift_prompts} x {settings.drift_seconds:g} s, drift window {settings.drift_window:g} s",
        "",
        "## Targets (issue 10)",
        "",
        *_table(["target", "goal", "measured", ""],
                _targets(runs, layout.frames_for(layout.chunks_for(settings.drift_seconds)) / layout.fps,
                         settings, generate_seconds, header["device"])),
        "",
    ]
    if settings.samples:
        n_chunks = settings.samples * settings.chunks
        lines += [f"Resolution: {n_chunks} held-out chunks, so one chunk moves adherence by up to "
                  f"{100 / n_chunks:.1f} points" + ("; compare modes with `--full`." if n_chunks < 64 else "."), ""]
    if settings.samples:
        rows = []
        for r in [truth, *ran]:
            if r.heldout:
                s = heldout_summary(r.heldout)
                rows.append([r.mode] + [_fmt(s.get(k), spec) for k, _, spec in HELDOUT_COLUMNS])
        n = heldout_summary(truth.heldout)
        lines += [
            "## Held-out prompts (multi-shot, with scene cuts and prompt switches)",
            "",
            *_table(["variant"] + [t for _, t, _ in HELDOUT_COLUMNS], rows),
            "",
            f"{n['chunks']} chunks, {n['scene_cut_events']} scene cuts and {n['switch_events']} prompt switches per "
            "variant. adherence: mean fraction of the attributes a chunk's prompt states that the detectors find; "
            "all attrs: chunks where every stated attribute is found; stability: in-chunk frame pairs with "
            "unchanged detections; frame diff: mean |frame t - frame t-1| inside shots (0..1); latency: chunks "
            "from the cut/switch until the changed attributes are all detected (0 = at once); responded: events "
            "whose new content appears before the next event.",
            "",
        ]
    if settings.drift_prompts:
        rows = []
        for r in [truth, *ran]:
            for v in r.drift:
                q = v.result
                secs = len(q.detections) / layout.fps
                rows.append([r.mode, f"{v.name}: {v.prompts[0]}", f"{secs:.0f}", f"{100 * q.drift.drift:.2f}",
                             f"{100 * q.drift.size:.2f}", f"{100 * q.drift.colour:.2f}", f"{100 * q.drift.background:.2f}",
                             f"{100 * q.adherence.score:.1f}", f"{100 * q.consistency.stability:.1f}"])
        lines += [
            "## Long single shot: drift",
            "",
            *_table(["variant", "video", "s", "drift %", "size %", "colour %", "background %", "adherence %",
                     "stability %"], rows),
            "",
            f"drift: the largest of the relative change of the object's area, the change of its mean colour "
            f"(max over RGB, /255) and of the background grey (/255) between the first and the last "
            f"{settings.drift_window:g} s.",
            "",
        ]
    rows = []
    for r in runs:
        if r.skipped:
            rows.append([r.mode, "–", "–", "–", f"skipped: {r.skipped}"])
        else:
            secs = float(np.sum(r.chunk_seconds))
            rows.append([r.mode, f"{r.load_seconds:.1f}", f"{secs / max(1, len(r.chunk_seconds)):.2f}",
                         f"{np.sum(r.chunk_frames) / secs:.1f}" if secs > 0 else "–", r.note or ""])
    lines += ["## Generation speed in this run", "",
              *_table(["mode", "load s", "DiT s/chunk", "DiT frames/s", "note"], rows), ""]
    written = [path]
    if plots:
        try:
            written += _plots(path.with_suffix(""), [truth, *ran], layout)
            lines += [f"![{p.stem}]({p.name})" for p in written[1:]]
        except ImportError:
            lines.append("_Plots skipped: matplotlib is not installed (`pip install matplotlib`)._")
    if save_videos:
        from longlive.data.video_folder import write_video

        for r in ran:
            for v in r.heldout + r.drift:
                slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{r.mode}_{v.name}").strip("_")
                out = path.with_name(f"{path.stem}_{slug}.mp4")
                write_video(out, v.frames, layout.fps)
                written.append(out)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return written


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _over_time(v, window_frames: int) -> dict[str, np.ndarray]:
    q = v.result
    pc = q.per_chunk()
    det = q.detections
    has = det.count > 0
    first = slice(0, window_frames)
    a0 = det.area[first][has[first]].mean() if has[first].any() else np.nan
    c0 = det.object_rgb[first][has[first]].mean(axis=0) if has[first].any() else np.full(3, np.nan)
    colour = []
    for a, b in q.bounds:
        sel = has[a:b]
        colour.append(np.abs(det.object_rgb[a:b][sel].mean(axis=0) - c0).max() / 2.55 if sel.any() else np.nan)
    return {
        "time_s": pc["time_s"],
        "adherence": 100 * pc["adherence"],
        "size": 100 * (pc["object_area"] / a0 - 1.0),
        "colour": np.array(colour),
        "background": pc["background_level"],
    }


def _plots(stem: Path, runs, layout) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    written = []
    with_drift = [r for r in runs if r.drift]
    if with_drift:
        window = with_drift[0].drift[0].result.drift.window_frames
        specs = [("adherence", "adherence per chunk %"), ("size", "object area vs start %"),
                 ("colour", "object colour vs start (/255 %)"), ("background", "background grey")]
        fig, axes = plt.subplots(len(specs), 1, figsize=(9, 2.2 * len(specs)), sharex=True)
        for r in with_drift:
            series = _over_time(r.drift[0], window)
            for ax, (key, _) in zip(axes, specs):
                ax.plot(series["time_s"], series[key], lw=1.2, marker="." if len(series["time_s"]) < 40 else None,
                        ls="--" if r.mode == "ground truth" else "-", label=r.mode)
        for ax, (_, label) in zip(axes, specs):
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
        axes[0].set_title(f"long single shot: {with_drift[0].drift[0].prompts[0]}", fontsize=9)
        axes[0].legend(fontsize=7, ncol=3)
        axes[-1].set_xlabel("time (s)")
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "_over_time.png"))
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    with_held = [r for r in runs if r.heldout]
    if with_held:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.4))
        for r in with_held:
            per = np.nanmean(np.stack([v.result.adherence.per_chunk for v in r.heldout]), axis=0)
            t = np.array([a for a, _ in r.heldout[0].result.bounds]) / layout.fps
            ax0.plot(t, 100 * per, marker="o", ms=3, ls="--" if r.mode == "ground truth" else "-", label=r.mode)
        ax0.set(xlabel="time in clip (s)", ylabel="adherence % (mean over samples)", title="held-out prompts")
        ax0.grid(alpha=0.3)
        ax0.legend(fontsize=7)
        names = [r.mode for r in with_held]
        x = np.arange(len(names))
        for off, kind, label in ((-0.2, "scene_cut", "scene cut"), (0.2, "switch", "prompt switch")):
            vals = [heldout_summary(r.heldout)[f"{kind}_latency"] for r in with_held]
            bars = ax1.bar(x + off, np.nan_to_num(vals, nan=0.0), width=0.4, label=label)
            ax1.bar_label(bars, labels=["–" if math.isnan(v) else f"{v:.1f}" for v in vals], fontsize=7)
        ax1.set_xticks(x, names, rotation=20, fontsize=8)
        ax1.set(ylabel="chunks until new content", title="response latency (mean)")
        ax1.legend(fontsize=7)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "_heldout.png"))
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    strips = [(r.mode, _strip(r, layout)) for r in runs if r.heldout or r.drift]
    if strips:
        h, w = strips[0][1].shape[:2]
        fig, axes = plt.subplots(len(strips), 1, figsize=(w / 80, (h / 80 + 0.25) * len(strips)), squeeze=False)
        for ax, (name, img) in zip(axes[:, 0], strips):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(name, fontsize=8)
        axes[0, 0].set_title("held-out sample 0: first frame of each chunk  |  long single shot: evenly spaced", fontsize=8)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "_frames.png"))
        fig.savefig(written[-1], dpi=80)
        plt.close(fig)
    return written


def _strip(run, layout, long_frames: int = 6) -> np.ndarray:
    tiles = []
    if run.heldout:
        v = run.heldout[0]
        tiles += [v.frames[a] for a, _ in v.result.bounds]
    if run.drift:
        f = run.drift[0].frames
        if tiles:
            tiles.append(np.full((layout.height, max(4, layout.width // 8), 3), 255, np.uint8))
        tiles += [f[i] for i in np.linspace(0, len(f) - 1, long_frames).round().astype(int)]
    return np.concatenate(tiles, axis=1)
