"""Objective quality of the demo model under each precision mode (issue 10; `longlive bench quality`).

What runs, per mode (bf16, nvfp4 = W4A4 linears, fp4-kv = NVFP4 KV cache, fp8 = W8A8 linears, GPU
only, nvfp4+fp4-kv), with the same noise seeds for every mode:

1. **Held-out prompts**: procedural multi-shot samples (:mod:`longlive.data.procedural`, chunk
   layout and frame size of the model) written in the ``heldout`` phrasing — words and sentence
   templates the model never saw in training — from seeds ≥ 10⁹ (training draws seeds below 10⁶·…,
   see ``HELDOUT_SEED_BASE``). Each sample has scene cuts and prompt switches. The detectors of
   :mod:`longlive.quality` read the generated frames: prompt adherence (per attribute), temporal
   consistency, and the response to scene cuts / switches (chunks until the new content appears).
2. **Long single shot**: one held-out prompt (a still object; the second one spins on a panning
   checkerboard) for ``drift_seconds``; drift = largest change of object size, object colour or
   background grey between the first and the last ``drift_window`` seconds (60 s / 10 s with ``--full``).

A ``ground truth`` row scores the procedural renderer's own frames for the same prompts through the
same code path (the detectors' ceiling). The markdown report and plots go to
``bench/quality/results/`` (``quality.md``, ``quality_over_time.png``, ``quality_heldout.png``,
``quality_frames.png``).

On a CPU the W4A4 linears run through an exact fp32 emulation (``cpu_nvfp4.py``; the kernels' CPU
path is the fp64 spec, ~15× slower) and "bf16" computes in fp32 (the pipeline's CPU dtype); fp8
needs a GPU and is skipped with a note.

Run::

    longlive bench quality                      # small setting: a few minutes on a 2-core CPU
    longlive bench quality --full               # 16 samples + two 60 s videos (GPU: minutes)
    longlive bench quality --modes bf16,nvfp4+fp4-kv --samples 4
    longlive bench quality --random-weights --samples 1 --chunks 2 --steps 1   # plumbing check
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # siblings (cpu_nvfp4, quality_report) when run as a script or by path
    sys.path.insert(0, str(_HERE))

from longlive.data.procedural import (  # noqa: E402
    BACKGROUNDS,
    COLOURS,
    ProceduralConfig,
    SceneAttributes,
    describe,
    generate_sample,
    render_scene,
)
from longlive.data.prompts import chunk_frame_counts, num_frames_for_chunks  # noqa: E402
from longlive.quality import QualityResult, evaluate_video  # noqa: E402

MODES = {  # name -> (linear precision, KV-cache storage)
    "bf16": ("bf16", "bf16"),
    "nvfp4": ("nvfp4", "bf16"),
    "fp4-kv": ("bf16", "fp4"),
    "fp8": ("fp8", "bf16"),
    "nvfp4+fp4-kv": ("nvfp4", "fp4"),
}
# Training draws procedural seeds train.seed · 1_000_003 + i with i < data.num_samples (≤ 10⁶ by
# default); held-out samples start far above, drift prompts far below.
HELDOUT_SEED_BASE = 1_000_000_000
RESULTS_DIR = _HERE / "results"
TARGETS = "adherence >= 90 % on held-out phrasings; drift <= 5 % over 60 s; nvfp4+fp4-kv within 2 points of bf16"


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (defaults: the small CPU setting; :data:`FULL` for the real one)."""

    samples: int = 1  # held-out multi-shot samples
    chunks: int = 8  # chunks per held-out sample (the training clip length)
    drift_seconds: float = 4.0  # length of each long single-shot video
    drift_window: float = 1.0  # seconds compared at its start and end
    drift_prompts: int = 1
    steps: int | None = None  # None: the model's default (the demo's pipeline.yaml: 8; else 4)
    guidance_scale: float | None = None  # None: the model's default (the demo's pipeline.yaml; else 1 = off)
    seed: int = 0
    phrasing: str = "heldout"  # "train": the training phrasing, to tell a generalization gap from no adherence


FULL = Settings(samples=16, chunks=8, drift_seconds=60.0, drift_window=10.0, drift_prompts=2)


@dataclass(frozen=True)
class Layout:
    """Frame geometry of the model: size, rate and chunk layout."""

    height: int
    width: int
    fps: float
    first_chunk_frames: int
    chunk_frames: int

    def chunks_for(self, seconds: float) -> int:
        frames = max(1, round(seconds * self.fps))
        return 1 if frames <= self.first_chunk_frames else 1 + math.ceil(
            (frames - self.first_chunk_frames) / self.chunk_frames
        )

    def frames_for(self, chunks: int) -> int:
        return num_frames_for_chunks(
            chunks, first_chunk_frames=self.first_chunk_frames, chunk_frames=self.chunk_frames
        )


@dataclass
class Video:
    """One evaluated video: prompts, frames (uint8 [T, H, W, 3]) and scores."""

    name: str
    prompts: list[str]
    frames: np.ndarray
    result: QualityResult


@dataclass
class ModeRun:
    mode: str
    heldout: list[Video] = field(default_factory=list)
    drift: list[Video] = field(default_factory=list)
    chunk_seconds: list[float] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)
    load_seconds: float = 0.0
    steps: int | None = None
    guidance_scale: float | None = None
    skipped: str | None = None
    note: str | None = None


# ---------------------------------------------------------------------------------------------
# prompts and ground truth
# ---------------------------------------------------------------------------------------------
def heldout_samples(settings: Settings, layout: Layout):
    """The held-out procedural samples (prompts in the held-out phrasing, ground-truth frames)."""
    cfg = ProceduralConfig(
        height=layout.height,
        width=layout.width,
        fps=layout.fps,
        num_chunks=settings.chunks,
        first_chunk_frames=layout.first_chunk_frames,
        chunk_frames=layout.chunk_frames,
        phrasing=settings.phrasing,
    )
    return [generate_sample(HELDOUT_SEED_BASE + i, cfg) for i in range(settings.samples)]


def drift_scene(k: int, layout: Layout) -> tuple[str, SceneAttributes, np.ndarray]:
    """Prompt ``k`` of the long single-shot videos, its attributes and the object's place
    ``(cx, cy, size)`` in pixels for :func:`render_drift_truth`: even ``k`` a still object on a plain
    background, odd ``k`` a spinning square/triangle on a panning checkerboard."""
    rng = np.random.default_rng(HELDOUT_SEED_BASE - 1 - k)
    colour = COLOURS[rng.integers(len(COLOURS))]
    if k % 2 == 0:
        shape = ("circle", "square", "triangle")[rng.integers(3)]
        attrs = SceneAttributes(colour, shape, 1, "still", BACKGROUNDS[rng.integers(3)], "none", False)
    else:
        shape = ("square", "triangle")[rng.integers(2)]
        attrs = SceneAttributes(colour, shape, 1, "still", "checkered", ("left", "right")[rng.integers(2)], True)
    prompt = describe(attrs, phrasing="heldout", rng=rng)
    pos = (layout.width * rng.uniform(0.35, 0.65), layout.height * rng.uniform(0.35, 0.65))
    return prompt, attrs, np.array([*pos, 0.1 * min(layout.height, layout.width)])


def render_drift_truth(attrs: SceneAttributes, place: np.ndarray, num_frames: int, layout: Layout) -> np.ndarray:
    """Frames of ``attrs`` held for ``num_frames`` (the procedural world's pan and spin speeds)."""
    levels = {"dark": (30.0, 30.0), "light": (205.0, 205.0), "gradient": (38.0, 210.0), "checkered": (82.0, 148.0)}
    pc = ProceduralConfig()
    pan_step = pc.pan_speed * layout.width / layout.fps * {"none": 0, "left": -1, "right": 1}[attrs.pan]
    spin_step = math.radians(pc.spin_speed) / layout.fps if attrs.spin else 0.0
    cx, cy, size = place
    return np.stack(
        [
            render_scene(
                layout.height,
                layout.width,
                attrs.background,
                levels[attrs.background],
                round(t * pan_step),
                [(attrs.shape, attrs.colour, cx, cy, size, t * spin_step)],
            )
            for t in range(num_frames)
        ]
    )


def score(frames: np.ndarray, prompts: list[str], layout: Layout, *, drift_window: float) -> QualityResult:
    """The one scoring path of the benchmark (generated and ground-truth videos alike)."""
    return evaluate_video(
        frames,
        fps=layout.fps,
        first_chunk_frames=layout.first_chunk_frames,
        chunk_frames=layout.chunk_frames,
        prompts=prompts,
        drift_window_seconds=drift_window,
    )


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    checkpoint: str | None = None  # None: the bundled demo model (unless random_weights)
    config: str | None = None
    random_weights: bool = False
    text_encoder: str | None = None
    device: str | None = None
    cpu_nvfp4: str = "emulate"  # "emulate" (cpu_nvfp4.py) or "spec" (the kernels' CPU path)

    def describe(self) -> str:
        if self.random_weights:
            return f"random weights, config {self.config or 'tiny'} (plumbing check: scores are meaningless)"
        if self.checkpoint:
            return f"checkpoint {self.checkpoint}"
        from longlive.inference.pipeline import DEMO_DIR

        return f"bundled demo model ({DEMO_DIR / 'model.safetensors'})"


class ModeSkipped(Exception):
    """A mode that cannot run here (the message says why)."""


def load_pipeline(mode: str, src: ModelSource):
    """The pipeline of ``mode`` (raises :class:`ModeSkipped` where it cannot run)."""
    from longlive.inference import Pipeline

    precision, kv = MODES[mode]
    device = torch.device(src.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "fp8" and device.type != "cuda":
        raise ModeSkipped("fp8 (W8A8) linears need a GPU (FP8 tensor cores); skipped on CPU")
    emulate = precision == "nvfp4" and device.type == "cpu" and src.cpu_nvfp4 == "emulate"
    kwargs = {"precision": "nvfp4" if emulate else precision, "kv_cache": kv, "device": str(device)}
    if src.text_encoder is not None:
        kwargs["text_encoder"] = src.text_encoder
    try:
        if src.random_weights:
            pipe = Pipeline.from_pretrained(None, config=src.config or "tiny", random_weights=True, **kwargs)
        elif src.checkpoint is not None:
            pipe = Pipeline.from_pretrained(src.checkpoint, config=src.config, **kwargs)
        else:
            pipe = Pipeline.demo(config=src.config, **kwargs)
    except (NotImplementedError, RuntimeError) as exc:  # a kernel this device lacks
        raise ModeSkipped(f"{type(exc).__name__}: {exc}") from exc
    if emulate:
        from cpu_nvfp4 import emulate_nvfp4_

        emulate_nvfp4_(pipe.model)
    return pipe


def layout_of(pipe) -> Layout:
    cfg = pipe.model.config
    first, later = chunk_frame_counts(cfg.ar.chunk_frames, pipe.vae.temporal_stride)
    h, w = cfg.resolution
    return Layout(h, w, float(pipe.fps), first, later)


def generate_frames(
    pipe, prompts: list[str], *, steps: int, seed: int, run: ModeRun, guidance_scale: float = 1.0
) -> np.ndarray:
    """Generate one video chunk by chunk (one prompt per chunk) and decode it to uint8 frames
    (``guidance_scale`` != 1: classifier-free guidance against the empty prompt)."""
    from longlive.inference import ChunkDecoder

    parts: list[np.ndarray] = []
    decoder = ChunkDecoder(pipe.vae, mode="sync", sink=lambda index, frames: parts.append(frames.copy()))
    with torch.inference_mode():
        for chunk in pipe.stream(
            prompts, num_chunks=len(prompts), steps=steps, seed=seed, guidance_scale=guidance_scale
        ):
            run.chunk_seconds.append(chunk.seconds)
            run.chunk_frames.append(chunk.num_frames)
            decoder.submit(chunk.index, chunk.latents)
    decoder.close()
    return np.concatenate(parts)


def run_mode(mode: str, src: ModelSource, settings: Settings, log=print) -> tuple[ModeRun, Layout | None]:
    run = ModeRun(mode)
    t0 = time.perf_counter()
    try:
        pipe = load_pipeline(mode, src)
    except ModeSkipped as exc:
        run.skipped = str(exc)
        log(f"[{mode}] skipped: {exc}")
        return run, None
    run.load_seconds = time.perf_counter() - t0
    if mode == "bf16" and pipe.model.device.type == "cpu":
        run.note = "fp32 compute (the pipeline's CPU dtype)"
    if MODES[mode][0] == "nvfp4" and pipe.model.device.type == "cpu" and src.cpu_nvfp4 == "emulate":
        run.note = "W4A4 through the exact fp32 emulation (cpu_nvfp4.py)"
    layout = layout_of(pipe)
    run.steps = settings.steps or pipe.sampling_defaults.get("steps", 4)
    run.guidance_scale = float(
        settings.guidance_scale if settings.guidance_scale is not None
        else pipe.sampling_defaults.get("guidance_scale", 1.0)
    )
    gen = {"steps": run.steps, "guidance_scale": run.guidance_scale}
    for i, sample in enumerate(heldout_samples(settings, layout)):
        frames = generate_frames(pipe, sample.prompts, seed=settings.seed + i, run=run, **gen)
        res = score(frames, sample.prompts, layout, drift_window=settings.drift_window)
        run.heldout.append(Video(f"sample {sample.seed}", sample.prompts, frames, res))
        log(f"[{mode}] held-out sample {i + 1}/{settings.samples}: adherence {100 * res.adherence.score:.1f} %")
    n = layout.chunks_for(settings.drift_seconds)
    for k in range(settings.drift_prompts):
        prompt, _, _ = drift_scene(k, layout)
        frames = generate_frames(pipe, [prompt] * n, seed=settings.seed + 10_000 + k, run=run, **gen)
        res = score(frames, [prompt] * n, layout, drift_window=settings.drift_window)
        run.drift.append(Video(f"single shot {k}", [prompt] * n, frames, res))
        log(f"[{mode}] {layout.frames_for(n) / layout.fps:.0f} s single shot {k + 1}: drift "
            f"{100 * res.drift.drift:.2f} %, adherence {100 * res.adherence.score:.1f} %")
    del pipe
    return run, layout


def ground_truth_run(settings: Settings, layout: Layout) -> ModeRun:
    """The renderer's own frames for the same prompts, through :func:`score`."""
    run = ModeRun("ground truth")
    for sample in heldout_samples(settings, layout):
        res = score(sample.frames, sample.prompts, layout, drift_window=settings.drift_window)
        run.heldout.append(Video(f"sample {sample.seed}", sample.prompts, sample.frames, res))
    n = layout.chunks_for(settings.drift_seconds)
    for k in range(settings.drift_prompts):
        prompt, attrs, place = drift_scene(k, layout)
        frames = render_drift_truth(attrs, place, layout.frames_for(n), layout)
        res = score(frames, [prompt] * n, layout, drift_window=settings.drift_window)
        run.drift.append(Video(f"single shot {k}", [prompt] * n, frames, res))
    return run


def time_generate_cli(src: ModelSource, log=print) -> float | None:
    """Wall seconds of ``longlive generate`` (the default 5 s video) in a fresh process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "longlive.cli", "generate", "-q", "--out", os.path.join(tmp, "v.mp4")]
        if src.random_weights:
            cmd += ["--random-weights", "--config", src.config or "tiny"]
        elif src.checkpoint:
            cmd += ["--checkpoint", src.checkpoint]
        if src.device:
            cmd += ["--device", src.device]
        if src.text_encoder:
            cmd += ["--text-encoder", src.text_encoder]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        log(f"`{shlex.join(cmd[1:])}` failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    log(f"longlive generate (default video): {wall:.1f} s wall")
    return wall


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def device_line(src: ModelSource) -> str:
    dev = src.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(dev))}, torch {torch.__version__}"
    return (
        f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longlive bench quality",
        description=__doc__.split("\n\n")[0],
        epilog=f"targets: {TARGETS}; CPU generation of the default video <= 90 s on 2 cores",
    )
    d = Settings()
    p.add_argument("--full", action="store_true", help=f"the full setting: {FULL.samples} held-out samples, "
                   f"{FULL.drift_prompts} x {FULL.drift_seconds:g} s single shots, {FULL.drift_window:g} s drift windows")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--samples", type=int, help=f"held-out multi-shot samples (default {d.samples})")
    p.add_argument("--chunks", type=int, help=f"chunks per held-out sample (default {d.chunks})")
    p.add_argument("--drift-seconds", type=float, help=f"long single-shot length (default {d.drift_seconds})")
    p.add_argument("--drift-window", type=float, help=f"drift window, seconds (default {d.drift_window})")
    p.add_argument("--drift-prompts", type=int, help=f"long single-shot videos (default {d.drift_prompts})")
    p.add_argument("--steps", type=int, help="denoising steps per chunk (default: the model's, 8 for the demo)")
    p.add_argument("--guidance-scale", type=float,
                   help="classifier-free guidance (1 = off; default: the model's, from the demo's pipeline.yaml)")
    p.add_argument("--seed", type=int, help="noise seed of the first video")
    p.add_argument("--phrasing", choices=("heldout", "train"),
                   help="prompt phrasing of the multi-shot samples (default heldout; train is a diagnostic)")
    m = p.add_argument_group("model (default: the bundled demo model)")
    m.add_argument("--checkpoint", help="DiT weights (file or directory)")
    m.add_argument("--config", help="model preset or YAML (default: from the checkpoint)")
    m.add_argument("--random-weights", action="store_true", help="random tiny model: checks the plumbing only")
    m.add_argument("--text-encoder", help="override the text encoder (e.g. hash for plumbing checks)")
    m.add_argument("--device", help="cpu or cuda[:i] (default cuda when available)")
    m.add_argument("--cpu-nvfp4", choices=("emulate", "spec"), default="emulate",
                   help="W4A4 on CPU: exact fp32 emulation or the kernels' fp64 spec path (~15x slower)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=str(RESULTS_DIR / "quality.md"), help="markdown report (plots next to it)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--save-videos", action="store_true", help="also write every generated video as mp4")
    o.add_argument("--time-generate", action="store_true",
                   help="also time `longlive generate` (the default 5 s video) in a fresh process")
    return p


def settings_from_args(a: argparse.Namespace) -> Settings:
    s = FULL if a.full else Settings()
    changes = {
        k: getattr(a, k)
        for k in ("samples", "chunks", "drift_seconds", "drift_window", "drift_prompts", "steps", "guidance_scale",
                  "seed", "phrasing")
        if getattr(a, k) is not None
    }
    s = dataclasses.replace(s, **changes)
    for name in ("samples", "chunks", "drift_prompts"):
        if getattr(s, name) < (0 if name in ("samples", "drift_prompts") else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if s.samples + s.drift_prompts == 0:
        raise ValueError("nothing to do: --samples 0 and --drift-prompts 0")
    if not (s.drift_seconds > 0 and s.drift_window > 0):
        raise ValueError("--drift-seconds and --drift-window must be > 0")
    if s.steps is not None and not 1 <= s.steps <= 8:
        raise ValueError(f"--steps must be in 1..8, got {s.steps}")
    if s.guidance_scale is not None and not (math.isfinite(s.guidance_scale) and s.guidance_scale >= 0):
        raise ValueError(f"--guidance-scale must be a finite number >= 0, got {s.guidance_scale}")
    return s


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(a)
        modes = [m.strip() for m in a.modes.split(",") if m.strip()]
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"--modes: unknown {unknown or 'empty list'}; choose from {', '.join(MODES)}")
        if a.checkpoint and a.random_weights:
            raise ValueError("--checkpoint and --random-weights exclude each other")
        if a.checkpoint and not os.path.exists(a.checkpoint):
            raise ValueError(f"--checkpoint {a.checkpoint!r} does not exist")
        if not (a.checkpoint or a.random_weights):
            from longlive.inference.pipeline import DEMO_DIR

            if not (DEMO_DIR / "model.safetensors").is_file():
                raise ValueError(
                    f"the bundled demo weights are not installed ({DEMO_DIR / 'model.safetensors'}); pass "
                    "--checkpoint PATH, or --random-weights to check the plumbing"
                )
    except ValueError as exc:
        print(f"longlive bench quality: error: {exc}", file=sys.stderr)
        return 2
    src = ModelSource(a.checkpoint, a.config, a.random_weights, a.text_encoder, a.device, a.cpu_nvfp4)
    from quality_report import write_quality_report

    print(f"quality benchmark: {src.describe()}; {settings}", flush=True)
    t_start = time.perf_counter()
    runs, layout = [], None
    for mode in modes:
        run, lay = run_mode(mode, src, settings, log=lambda s: print(s, flush=True))
        runs.append(run)
        layout = layout or lay
    if layout is None:
        print("longlive bench quality: error: no mode could run here", file=sys.stderr)
        return 1
    truth = ground_truth_run(settings, layout)
    gen_wall = time_generate_cli(src) if a.time_generate else None
    out = Path(a.out)
    header = {
        "device": device_line(src),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "longlive bench quality " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": src.describe(),
        "settings": settings,
        "layout": layout,
        "wall_seconds": time.perf_counter() - t_start,
    }
    written = write_quality_report(
        out, runs, truth, header=header, generate_seconds=gen_wall, plots=not a.no_plots,
        save_videos=a.save_videos,
    )
    print(out.read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def test_bench_quality_plumbing(tmp_path):
    """pytest entry point: the random-weights plumbing run (tests/quality/test_bench_quality.py has more)."""
    args = ["--random-weights", "--text-encoder", "hash", "--samples", "1", "--chunks", "2", "--steps", "1",
            "--drift-seconds", "1", "--drift-window", "0.5", "--modes", "bf16", "--out", str(tmp_path / "q.md")]
    assert main(args) == 0


if __name__ == "__main__":
    sys.exit(main())
