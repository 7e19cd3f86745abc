"""Procedural multi-shot video set with prompts and ground truth (the demo model's training data).

Every sample is a multi-shot video of coloured shapes on grey backgrounds, generated on the fly
and deterministic per seed, with one prompt per chunk and per-frame ground truth, so that the
quality detectors (:mod:`longlive.quality`) can score generated videos objectively.

Vocabulary (small and visually unambiguous so a few-million-parameter model can learn it):

- colour: red, yellow, green, cyan, blue, magenta (saturated, hues 60° apart);
- shape: circle, square, triangle (squares/triangles may spin);
- count: one or two identical objects (two move together and never touch);
- motion: left, right, up, down, still (speed ``speed`` frame-widths per second; objects never
  leave the frame: a direction is only chosen when the whole chunk fits);
- background: dark, light (uniform grey), gradient (vertical dark→light), checkered (grey
  cells); a checkered background may pan (camera pans left/right → texture moves the other way);
- spin: squares and triangles may rotate (``spin_speed`` degrees per second).

Shots last ``min_chunks_per_shot``–``max_chunks_per_shot`` chunks; inside a shot the prompt
may switch (direction change, colour change); a new shot draws everything anew and its first
chunk's prompt starts with ``"The scene transitions. "`` (longlive-spec.md §6.4).

Defaults (sized for the ``tiny`` demo model, PatchVAE with 8×8 patches): 128×128 frames at
8 fps; chunk layout of a temporal-stride-4 VAE with 2 latent frames per chunk: first chunk 5 raw
frames, then 8 (1 s); 8 chunks (61 frames, 7.6 s); shots of 2–4 chunks; objects of size
0.085–0.11 (one) or 0.07–0.09 (two) of the frame, moving 0.22 frame-widths per second. Rendering
is vectorised numpy with 1-pixel anti-aliasing (< 1 ms per 128×128 frame on one CPU core).

Prompts come from templates and synonym lists split into ``"train"`` and ``"heldout"``
phrasings: same attributes, disjoint words and sentence structures (held-out: "Against a dim
backdrop, a crimson disc drifts leftward."). :func:`parse_prompt` maps either back to
:class:`SceneAttributes`.

The prompt language lives in :mod:`longlive.data.procedural_prompts` and the renderer in
:mod:`longlive.data.procedural_render`; this module generates the samples and re-exports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .procedural_prompts import (
    _BACKGROUND_WORDS,  # noqa: F401 (the word tables: tests import them from here)
    _COLOUR_WORDS,  # noqa: F401
    _MOTION_WORDS,  # noqa: F401
    _SHAPE_WORDS,  # noqa: F401
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    DIRECTIONS,
    PANS,
    SHAPES,
    SceneAttributes,
    _choose_wording,
    describe,
    parse_prompt,
    prompt_templates,
)
from .procedural_render import COLOUR_RGB, render_scene, shape_circumradius
from .prompts import SCENE_CUT_PREFIX, chunk_frame_bounds, num_frames_for_chunks

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "COUNTS",
    "DIRECTIONS",
    "PANS",
    "SHAPES",
    "ChunkTruth",
    "ProceduralConfig",
    "ProceduralSample",
    "ProceduralVideoDataset",
    "ProceduralVideoStream",
    "SceneAttributes",
    "VideoTruth",
    "describe",
    "frames_to_tensor",
    "generate_sample",
    "parse_prompt",
    "prompt_templates",
    "render_scene",
    "shape_circumradius",
    "tensor_to_frames",
    "with_phrasing",
    "write_sample_mp4",
]

_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}


@dataclass(frozen=True)
class ChunkTruth:
    """Ground truth of one chunk: its attributes and its place in the shot structure."""

    attributes: SceneAttributes
    shot: int
    is_scene_cut: bool
    is_switch: bool
    frames: tuple[int, int]  # half-open raw-frame range


@dataclass
class VideoTruth:
    """Per-frame ground truth; arrays have length T (objects axis: 2, NaN when absent)."""

    shot: np.ndarray        # [T] int
    chunk: np.ndarray       # [T] int
    colour: np.ndarray      # [T] int, index into COLOURS
    shape: np.ndarray       # [T] int, index into SHAPES
    count: np.ndarray       # [T] int
    direction: np.ndarray   # [T] int, index into DIRECTIONS
    background: np.ndarray  # [T] int, index into BACKGROUNDS
    pan: np.ndarray         # [T] int, index into PANS
    spin: np.ndarray        # [T] bool
    centroids: np.ndarray   # [T, 2, 2] float pixels (x, y) per object
    size: np.ndarray        # [T] float pixels (object size s)
    angle: np.ndarray       # [T] float radians
    chunks: list[ChunkTruth] = field(default_factory=list)


@dataclass
class ProceduralSample:
    """One generated video: frames uint8 [T, H, W, 3], one prompt per chunk, ground truth."""

    frames: np.ndarray
    prompts: list[str]
    truth: VideoTruth
    seed: int
    fps: float


@dataclass(frozen=True)
class ProceduralConfig:
    """Generation settings (see the module docstring for the defaults' rationale)."""

    height: int = 128
    width: int = 128
    fps: float = 8.0
    num_chunks: int = 8
    first_chunk_frames: int = 5
    chunk_frames: int = 8
    min_chunks_per_shot: int = 2
    max_chunks_per_shot: int = 4
    direction_switch_probability: float = 0.3
    colour_switch_probability: float = 0.1
    two_object_probability: float = 0.35
    spin_probability: float = 0.2
    pan_probability: float = 0.5
    speed: float = 0.22            # frame widths per second
    pan_speed: float = 0.12        # frame widths per second
    spin_speed: float = 90.0       # degrees per second
    phrasing: str = "train"        # "train" or "heldout"
    scene_cut_prefix: str = SCENE_CUT_PREFIX

    def __post_init__(self):
        for name in ("height", "width", "num_chunks", "first_chunk_frames", "chunk_frames",
                     "min_chunks_per_shot", "max_chunks_per_shot"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ProceduralConfig.{name} must be a positive int, got {v!r}")
        if min(self.height, self.width) < 32:
            raise ValueError(f"ProceduralConfig: frames must be at least 32×32, got "
                             f"{self.height}×{self.width}")
        if self.min_chunks_per_shot > self.max_chunks_per_shot:
            raise ValueError(f"ProceduralConfig: min_chunks_per_shot ({self.min_chunks_per_shot}) > "
                             f"max_chunks_per_shot ({self.max_chunks_per_shot})")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"ProceduralConfig.fps must be a positive number, got {self.fps!r}")
        for name in ("direction_switch_probability", "colour_switch_probability", "two_object_probability",
                     "spin_probability", "pan_probability"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ProceduralConfig.{name} must be in [0, 1], got {v!r}")
        for name in ("speed", "pan_speed", "spin_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProceduralConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.phrasing not in ("train", "heldout"):
            raise ValueError(f"ProceduralConfig.phrasing must be 'train' or 'heldout', got {self.phrasing!r}")

    @property
    def num_frames(self) -> int:
        return num_frames_for_chunks(self.num_chunks, first_chunk_frames=self.first_chunk_frames,
                                     chunk_frames=self.chunk_frames)


def _draw_shot_scene(rng: np.random.Generator, cfg: ProceduralConfig) -> dict:
    h, w = cfg.height, cfg.width
    count = 2 if rng.random() < cfg.two_object_probability else 1
    shape = SHAPES[rng.integers(len(SHAPES))]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    m = min(h, w)
    size = float(rng.uniform(0.07, 0.09) * m if count == 2 else rng.uniform(0.085, 0.11) * m)
    levels = {"dark": (rng.uniform(15, 45),) * 2, "light": (rng.uniform(190, 225),) * 2,
              "gradient": (rng.uniform(25, 50), rng.uniform(195, 225)),
              "checkered": (rng.uniform(70, 95), rng.uniform(135, 160))}[background]
    pan = "none"
    if background == "checkered" and rng.random() < cfg.pan_probability:
        pan = ("left", "right")[rng.integers(2)]
    spin = shape != "circle" and rng.random() < cfg.spin_probability
    rad = shape_circumradius(shape, size)
    offsets = [(0.0, 0.0)]
    if count == 2:
        gap = 2 * rad + max(6.0, 0.6 * size)
        phi = rng.uniform(0, 2 * math.pi)
        offsets.append((gap * math.cos(phi), gap * math.sin(phi)))
    offs = np.array(offsets)
    margin = rad + 1.0
    lo = np.array([margin, margin]) - offs.min(axis=0)
    hi = np.array([w - margin, h - margin]) - offs.max(axis=0)
    if np.any(hi <= lo):
        raise ValueError(f"frame {h}×{w} too small for two objects of size {size:.1f}")
    pos = rng.uniform(lo, hi)
    return dict(count=count, shape=shape, background=background,  # noqa: C408 (keyword table reads best)
                levels=(float(levels[0]), float(levels[1])),
                pan=pan, spin=spin, size=size, offsets=offs, lo=lo, hi=hi, pos=pos,
                colour=COLOURS[rng.integers(len(COLOURS))],
                angle=float(rng.uniform(0, 2 * math.pi)) if spin else 0.0,  # still shapes stay upright
                spin_sign=float(rng.choice([-1.0, 1.0])), pan_offset=float(rng.uniform(0, w)))


def _feasible(scene: dict, direction: str, travel: float) -> bool:
    end = scene["pos"] + np.array(_UNIT[direction]) * travel
    return bool(np.all(end >= scene["lo"]) and np.all(end <= scene["hi"]))


def generate_sample(seed: int, config: ProceduralConfig | None = None) -> ProceduralSample:
    """Generate one multi-shot sample, deterministic in ``(seed, config)``.

    Returns
    -------
    ProceduralSample
        ``frames`` uint8 [T, H, W, 3] with ``T = config.num_frames``; ``prompts`` one string per
        chunk (scene-cut prefix on each later shot's first chunk); ``truth`` per-frame arrays
        and per-chunk :class:`ChunkTruth`.
    """
    cfg = config or ProceduralConfig()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng(int(seed))
    h, w, T = cfg.height, cfg.width, cfg.num_frames
    bounds = chunk_frame_bounds(cfg.num_chunks, first_chunk_frames=cfg.first_chunk_frames,
                                chunk_frames=cfg.chunk_frames)
    step = cfg.speed * w / cfg.fps                      # pixels per frame
    pan_step = cfg.pan_speed * w / cfg.fps
    spin_step = math.radians(cfg.spin_speed) / cfg.fps

    frames = np.empty((T, h, w, 3), np.uint8)
    tr = {k: np.zeros(T, np.int64) for k in ("shot", "chunk", "colour", "shape", "count", "direction",
                                              "background", "pan")}
    spin_arr, size_arr, angle_arr = np.zeros(T, bool), np.zeros(T), np.zeros(T)
    cents = np.full((T, 2, 2), np.nan)
    prompts, chunks = [], []
    shot, chunks_left, scene, wording, prev_attrs = -1, 0, None, None, None
    for c, (f0, f1) in enumerate(bounds):
        new_shot = chunks_left == 0
        if new_shot:
            shot += 1
            chunks_left = int(rng.integers(cfg.min_chunks_per_shot, cfg.max_chunks_per_shot + 1))
            scene, wording = _draw_shot_scene(rng, cfg), _choose_wording(rng)
            direction = None
        elif rng.random() < cfg.colour_switch_probability:
            scene["colour"] = COLOURS[(COLOURS.index(scene["colour"]) + 1 + rng.integers(len(COLOURS) - 1))
                                      % len(COLOURS)]
        chunks_left -= 1
        n_moves = (f1 - f0) - (1 if new_shot else 0)     # the shot's first frame shows the start position
        travel = step * n_moves
        options = [d for d in DIRECTIONS if d == "still" or _feasible(scene, d, travel)]
        if direction is None or direction not in options or rng.random() < cfg.direction_switch_probability:
            others = [d for d in options if d != direction] or options
            direction = others[rng.integers(len(others))]
        attrs = SceneAttributes(scene["colour"], scene["shape"], scene["count"], direction,
                                scene["background"], scene["pan"], scene["spin"])
        prompt = describe(attrs, phrasing=cfg.phrasing, wording=wording)
        cut = new_shot and c > 0
        switch = c > 0 and (cut or attrs != prev_attrs)
        prompts.append(cfg.scene_cut_prefix + prompt if cut else prompt)
        chunks.append(ChunkTruth(attrs, shot, cut, switch, (f0, f1)))
        prev_attrs = attrs
        vel = np.array(_UNIT[direction]) * step
        for t in range(f0, f1):
            if not (new_shot and t == f0):
                scene["pos"] = scene["pos"] + vel
                scene["pan_offset"] += pan_step * {"none": 0, "left": -1, "right": 1}[scene["pan"]]
                if scene["spin"]:
                    scene["angle"] += scene["spin_sign"] * spin_step
            centres = scene["pos"][None, :] + scene["offsets"]
            objs = [(scene["shape"], scene["colour"], x, y, scene["size"], scene["angle"])
                    for x, y in centres]
            pan_px = round(scene["pan_offset"])
            frames[t] = render_scene(h, w, scene["background"], scene["levels"], pan_px, objs)
            cents[t, :len(centres)] = centres
            tr["shot"][t], tr["chunk"][t], tr["count"][t] = shot, c, scene["count"]
            tr["colour"][t], tr["shape"][t] = COLOURS.index(scene["colour"]), SHAPES.index(scene["shape"])
            tr["direction"][t] = DIRECTIONS.index(direction)
            tr["background"][t] = BACKGROUNDS.index(scene["background"])
            tr["pan"][t], spin_arr[t] = PANS.index(scene["pan"]), scene["spin"]
            size_arr[t], angle_arr[t] = scene["size"], scene["angle"]
    truth = VideoTruth(**tr, spin=spin_arr, centroids=cents, size=size_arr, angle=angle_arr, chunks=chunks)
    return ProceduralSample(frames, prompts, truth, int(seed), float(cfg.fps))


# ----------------------------------------------------------------------------------------------
# Tensors and datasets.
def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] → float32 [3, T, H, W] in [−1, 1] (the VAE's pixel convention)."""
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
            and frames.shape[-1] == 3):
        raise ValueError(f"frames must be a uint8 array [T, H, W, 3], got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}")
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] in [−1, 1] → uint8 [T, H, W, 3] (clamped, rounded)."""
    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[0] != 3:
        got = getattr(video, "shape", type(video).__name__)
        raise ValueError(f"video must be a tensor [3, T, H, W], got {got}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def _as_item(sample: ProceduralSample) -> dict:
    return {
        "video": frames_to_tensor(sample.frames),
        "prompts": list(sample.prompts),
        "scene_cut": torch.tensor([ch.is_scene_cut for ch in sample.truth.chunks], dtype=torch.bool),
        "loss_mask": torch.ones(len(sample.prompts), dtype=torch.bool),
        "truth": sample.truth,
        "seed": sample.seed,
    }


class ProceduralVideoDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``i`` is the sample of seed ``base_seed + i``.

    Items are dicts: ``video`` float32 [3, T, H, W] in [−1, 1], ``prompts`` list of
    ``num_chunks`` str, ``scene_cut`` bool [num_chunks], ``loss_mask`` bool [num_chunks] (all
    true), ``truth`` :class:`VideoTruth`, ``seed`` int. Batch with
    :func:`longlive.data.collate_video_samples`.
    """

    def __init__(self, num_samples: int, config: ProceduralConfig | None = None, *, base_seed: int = 0):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples, self.config, self.base_seed = num_samples, config or ProceduralConfig(), base_seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return _as_item(generate_sample(self.base_seed + index % self.num_samples, self.config))


class ProceduralVideoStream(torch.utils.data.IterableDataset):
    """Endless stream of samples (seeds ``base_seed + k·W + worker``, W = DataLoader workers;
    shard by data-parallel rank with distinct ``base_seed``s). Items as :class:`ProceduralVideoDataset`."""

    def __init__(self, config: ProceduralConfig | None = None, *, base_seed: int = 0):
        self.config, self.base_seed = config or ProceduralConfig(), base_seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        k = 0
        while True:
            yield _as_item(generate_sample(self.base_seed + k * nw + wid, self.config))
            k += 1


def with_phrasing(config: ProceduralConfig, phrasing: str) -> ProceduralConfig:
    """Copy of ``config`` using ``phrasing`` ("train" or "heldout"); same videos for the same seed."""
    return replace(config, phrasing=phrasing)


def write_sample_mp4(sample: ProceduralSample, path, *, crf: int = 18) -> None:
    """Write a sample's frames to an mp4 (libx264 via PyAV) for eyeballing."""
    from .video_folder import write_video

    write_video(path, sample.frames, sample.fps, crf=crf)
