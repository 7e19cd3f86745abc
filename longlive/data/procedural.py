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
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch

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

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
COLOUR_RGB = {
    "red": (225, 35, 35), "yellow": (235, 215, 30), "green": (35, 190, 55),
    "cyan": (30, 200, 215), "blue": (40, 70, 230), "magenta": (215, 45, 215),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down", "still")
BACKGROUNDS = ("dark", "light", "gradient", "checkered")
PANS = ("none", "left", "right")
COUNTS = (1, 2)
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}
# Circumradius of each shape in units of the object size s (similar visual weight).
_CIRCUMRADIUS = {"circle": 1.0, "square": 1.15, "triangle": 1.3}


def shape_circumradius(shape: str, size: float) -> float:
    """Largest distance from the centre to the outline of ``shape`` of size ``size`` (pixels)."""
    return _CIRCUMRADIUS[shape] * size


@dataclass(frozen=True)
class SceneAttributes:
    """What a prompt says about a chunk (``None`` = not stated, not checked)."""

    colour: str | None
    shape: str | None
    count: int | None
    direction: str | None
    background: str | None
    pan: str | None = "none"
    spin: bool | None = False

    FIELDS = ("colour", "shape", "count", "direction", "background", "pan", "spin")


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


# ----------------------------------------------------------------------------------------------
# Prompt vocabulary: per attribute value, (singular, plural) phrases for "train" and "heldout".
# Held-out words never occur in train phrases; both sides mean exactly the same attribute.
_COLOUR_WORDS = {
    "train": {"red": ["red", "bright red"], "yellow": ["yellow", "bright yellow"],
              "green": ["green", "bright green"], "cyan": ["cyan", "aqua"],
              "blue": ["blue", "deep blue"], "magenta": ["magenta", "pink"]},
    "heldout": {"red": ["crimson", "scarlet"], "yellow": ["golden", "lemon-coloured"],
                "green": ["emerald", "grass-green"], "cyan": ["turquoise", "aquamarine"],
                "blue": ["cobalt", "sapphire"], "magenta": ["fuchsia", "hot-pink"]},
}
def _plural(phrase: str) -> tuple[str, str]:
    """(singular, plural) of a noun phrase ("box" → "boxes") or a verb phrase ("moves up" → "move up")."""
    head, _, rest = phrase.partition(" ")
    if head == "does":
        return phrase, " ".join(["do", rest])
    if head.endswith("s"):  # a verb: drop the third-person s
        return phrase, " ".join(filter(None, [head[:-1], rest]))
    words = phrase.split(" ")
    words[-1] += "es" if words[-1].endswith(("x", "s", "sh", "ch")) else "s"
    return phrase, " ".join(words)


def _plurals(table: dict) -> dict:
    return {side: {k: [_plural(p) for p in v] for k, v in vals.items()} for side, vals in table.items()}


_SHAPE_WORDS = _plurals({
    "train": {"circle": ["circle", "ball"], "square": ["square", "box"], "triangle": ["triangle"]},
    "heldout": {"circle": ["disc", "round dot"], "square": ["block", "square tile"],
                "triangle": ["three-sided shape", "triangular tile"]},
})
_MOTION_WORDS = _plurals({
    "train": {
        "left": ["moves to the left", "slides left", "travels left"],
        "right": ["moves to the right", "slides right", "travels right"],
        "up": ["moves up", "slides upward", "rises"],
        "down": ["moves down", "slides downward", "falls"],
        "still": ["stays still", "does not move", "rests in place"],
    },
    "heldout": {
        "left": ["drifts leftward", "glides toward the left edge"],
        "right": ["drifts rightward", "glides toward the right edge"],
        "up": ["drifts toward the top", "climbs skyward"],
        "down": ["drifts toward the bottom", "descends steadily"],
        "still": ["remains motionless", "sits stationary"],
    },
})
_BACKGROUND_WORDS = {
    "train": {"dark": ["dark", "black"], "light": ["light", "light grey"],
              "gradient": ["gradient", "dark-to-light gradient"], "checkered": ["checkered", "checkerboard"]},
    "heldout": {"dark": ["pitch-dark", "dim"], "light": ["pale", "whitish"],
                "gradient": ["softly shaded", "fading grey"], "checkered": ["chequered", "tiled"]},
}
_PAN_WORDS = {
    "train": {"none": [""], "left": [" while the camera pans left", ", the camera panning to the left"],
              "right": [" while the camera pans right", ", the camera panning to the right"]},
    "heldout": {"none": [""], "left": [", with the view sweeping leftward", " as the shot tracks leftward"],
                "right": [", with the view sweeping rightward", " as the shot tracks rightward"]},
}
_SPIN_WORDS = {
    "train": {False: [("", "")],
              True: [(" while spinning", " while spinning"), (" and rotates", " and rotate")]},
    "heldout": {False: [("", "")], True: [(" as it twirls", " as they twirl"),
                                          (", turning round and round", ", turning round and round")]},
}
_COUNT_WORDS = {"train": {1: ["a", "one"], 2: ["two"]},
                "heldout": {1: ["a single", "a lone"], 2: ["a pair of"]}}
_TEMPLATES = {
    "train": [
        "{count} {colour} {shape} {motion}{spin} on a {bg} background{pan}.",
        "On a {bg} background, {count} {colour} {shape} {motion}{spin}{pan}.",
        "{count} {colour} {shape} {motion}{spin} over a {bg} background{pan}.",
        "A video of {count} {colour} {shape} that {motion}{spin} on a {bg} background{pan}.",
        "{bg} background with {count} {colour} {shape} that {motion}{spin}{pan}.",
    ],
    "heldout": [
        "Against a {bg} backdrop, {count} {colour} {shape} {motion}{spin}{pan}.",
        "Here {count} {colour} {shape} {motion}{spin}; the setting is a {bg} backdrop{pan}.",
        "The clip shows {count} {colour} {shape} that {motion}{spin} in front of a {bg} backdrop{pan}.",
    ],
}


def prompt_templates(phrasing: str) -> list[str]:
    """The sentence templates of ``phrasing`` (``"train"`` or ``"heldout"``)."""
    if phrasing not in _TEMPLATES:
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
    return list(_TEMPLATES[phrasing])


_WORDING_KEYS = ("template", "colour", "shape", "motion", "bg", "pan", "spin", "count")


def _choose_wording(rng: np.random.Generator) -> dict[str, int]:
    """Random template and synonym indices; reused over a shot so unchanged content keeps its text."""
    return {k: int(rng.integers(1 << 30)) for k in _WORDING_KEYS}


def describe(attrs: SceneAttributes, *, phrasing: str = "train", wording: dict[str, int] | None = None,
             rng: np.random.Generator | None = None) -> str:
    """Render ``attrs`` as a prompt sentence.

    Parameters
    ----------
    attrs : SceneAttributes
        All fields must be set.
    phrasing : {"train", "heldout"}
        Vocabulary and templates to draw from.
    wording : dict, optional
        Choice indices (template and synonyms); default drawn from ``rng`` (or the first choices).
    """
    if phrasing not in _TEMPLATES:
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
    for name in SceneAttributes.FIELDS:
        if getattr(attrs, name) is None:
            raise ValueError(f"describe: attribute {name!r} must be set, got None in {attrs}")
    if wording is None:
        wording = _choose_wording(rng) if rng is not None else dict.fromkeys(_WORDING_KEYS, 0)
    plural = attrs.count == 2

    def pick(options, key):
        return options[wording[key] % len(options)]

    words = {
        "count": pick(_COUNT_WORDS[phrasing][attrs.count], "count"),
        "colour": pick(_COLOUR_WORDS[phrasing][attrs.colour], "colour"),
        "shape": pick(_SHAPE_WORDS[phrasing][attrs.shape], "shape")[plural],
        "motion": pick(_MOTION_WORDS[phrasing][attrs.direction], "motion")[plural],
        "spin": pick(_SPIN_WORDS[phrasing][bool(attrs.spin)], "spin")[plural],
        "bg": pick(_BACKGROUND_WORDS[phrasing][attrs.background], "bg"),
        "pan": pick(_PAN_WORDS[phrasing][attrs.pan], "pan"),
    }
    text = pick(_TEMPLATES[phrasing], "template").format(**words)
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)
    return text[0].upper() + text[1:]


def _phrase_table() -> list[tuple[str, str, object]]:
    table = []
    for phrasing in ("train", "heldout"):
        for value, ws in _COLOUR_WORDS[phrasing].items():
            table += [(w, "colour", value) for w in ws]
        for value, ws in _SHAPE_WORDS[phrasing].items():
            table += [(w, "shape", value) for pair in ws for w in pair]
        for value, ws in _MOTION_WORDS[phrasing].items():
            table += [(w, "direction", value) for pair in ws for w in pair]
        for value, ws in _BACKGROUND_WORDS[phrasing].items():
            table += [(w, "background", value) for w in ws]
        for value, ws in _PAN_WORDS[phrasing].items():
            table += [(w.strip(" ,"), "pan", value) for w in ws if w]
        for value, ws in _SPIN_WORDS[phrasing].items():
            table += [(w.strip(" ,"), "spin", value) for pair in ws for w in pair if w]
        table += [(w, "count", 2) for w in _COUNT_WORDS[phrasing][2]]
    table.sort(key=lambda t: -len(t[0]))  # longest phrase first ("light grey" before "light")
    return table


_PHRASES = _phrase_table()
_PHRASE_VALUE = {phrase: (name, value) for phrase, name, value in _PHRASES}
# One alternation, longest phrase first, so each match is the longest phrase starting there.
_PHRASE_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p, _, _ in _PHRASES) + r")(?![\w-])")


def parse_prompt(prompt: str, *, strict: bool = True, prefix: str = SCENE_CUT_PREFIX) -> SceneAttributes:
    """Recover the attributes of a prompt written in either phrasing (scene-cut prefix ignored).

    Raises
    ------
    ValueError
        ``strict`` and colour/shape/direction/background not all found, or two different values
        for one attribute. With ``strict=False`` missing ones are ``None``.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text = prompt.removeprefix(prefix)
    found: dict[str, object] = {}
    for m in _PHRASE_RE.finditer(text.lower()):
        name, value = _PHRASE_VALUE[m.group(1)]
        if name in found and found[name] != value and strict:
            raise ValueError(f"parse_prompt: {name} is both {found[name]!r} and {value!r} in {prompt!r}")
        found.setdefault(name, value)
    found.setdefault("count", 1)
    found.setdefault("pan", "none")
    found.setdefault("spin", False)
    missing = [n for n in ("colour", "shape", "direction", "background") if n not in found]
    if missing and strict:
        raise ValueError(f"parse_prompt: could not find {missing} in {prompt!r}")
    return SceneAttributes(**{n: found.get(n) for n in SceneAttributes.FIELDS})


# ----------------------------------------------------------------------------------------------
# Rendering.
def _background(kind: str, h: int, w: int, levels: tuple[float, float], pan_offset: int) -> np.ndarray:
    """Grey background [H, W] float32 in 0..255."""
    lo, hi = levels
    if kind in ("dark", "light"):
        return np.full((h, w), lo, np.float32)
    if kind == "gradient":
        return np.broadcast_to(np.linspace(lo, hi, h, dtype=np.float32)[:, None], (h, w))
    cell = max(4, w // 8)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :] + pan_offset
    return np.where(((ys // cell) + (xs // cell)) % 2 == 0, lo, hi).astype(np.float32)


def _coverage(shape: str, cx: float, cy: float, size: float, angle: float, h: int, w: int):
    """Anti-aliased coverage in [0, 1] over a bounding window: (window slices, alpha)."""
    rad = shape_circumradius(shape, size)
    x0, x1 = max(0, int(cx - rad - 2)), min(w, int(cx + rad + 3))
    y0, y1 = max(0, int(cy - rad - 2)), min(h, int(cy + rad + 3))
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    if shape == "circle":
        sdf = np.sqrt(px * px + py * py) - rad
    else:
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * px + s * py, -s * px + c * py  # rotate the sample points by -angle
        if shape == "square":
            sdf = np.maximum(np.abs(u), np.abs(v)) - rad / math.sqrt(2.0)
        else:  # equilateral triangle, apex up; max of the three edge half-plane distances
            sdf = np.full(u.shape, -np.inf, np.float32)
            for k in range(3):
                a = math.pi / 2 + k * 2 * math.pi / 3
                sdf = np.maximum(sdf, u * math.cos(a) + v * math.sin(a))
            sdf = sdf - rad / 2.0
    return (slice(y0, y1), slice(x0, x1)), np.clip(0.5 - sdf, 0.0, 1.0)


def render_scene(h: int, w: int, background: str, levels: tuple[float, float], pan_offset: int,
                 objects: list[tuple[str, str, float, float, float, float]]) -> np.ndarray:
    """Render one frame [H, W, 3] uint8.

    ``objects``: ``(shape, colour, cx, cy, size, angle)`` in pixels/radians, drawn in order.
    """
    img = np.repeat(_background(background, h, w, levels, pan_offset)[:, :, None], 3, axis=2)
    for shape, colour, cx, cy, size, angle in objects:
        win, alpha = _coverage(shape, cx, cy, size, angle, h, w)
        a = alpha[:, :, None]
        img[win] = img[win] * (1.0 - a) + np.asarray(COLOUR_RGB[colour], np.float32) * a
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


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
