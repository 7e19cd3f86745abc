"""The prompt language of the procedural world (:mod:`longlive.data.procedural`): attribute values,
:class:`SceneAttributes`, and the ``"train"`` / ``"heldout"`` phrasings that :func:`describe` writes
and :func:`parse_prompt` reads back."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .prompts import SCENE_CUT_PREFIX

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "DIRECTIONS",
    "PANS",
    "SHAPES",
    "SceneAttributes",
    "describe",
    "parse_prompt",
    "prompt_templates",
]

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down", "still")
BACKGROUNDS = ("dark", "light", "gradient", "checkered")
PANS = ("none", "left", "right")
COUNTS = (1, 2)


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


# Prompt vocabulary: per attribute value, (singular, plural) phrases for "train" and "heldout".
# Held-out words never occur in train phrases; both sides mean exactly the same attribute.
# The train side is deliberately rich (several common synonyms per value, nine templates): a model
# conditioned on MiniLM token features transfers to unseen words only as far as its training words cover
# MiniLM's space around them (bench/quality/probe_text_encoder.py measures that ceiling).
_COLOUR_WORDS = {
    "train": {"red": ["red", "bright red", "ruby", "cherry-red", "blood-red", "vermilion", "brick-red", "tomato-red"],
              "yellow": ["yellow", "bright yellow", "canary-yellow", "sunflower-yellow", "banana-yellow",
                         "mustard-yellow"],
              "green": ["green", "bright green", "lime", "lime-green", "jade", "leaf-green", "kelly-green",
                        "forest-green"],
              "cyan": ["cyan", "aqua", "teal", "bright cyan", "electric cyan"],
              "blue": ["blue", "deep blue", "navy", "navy-blue", "royal blue", "ultramarine", "bright blue"],
              "magenta": ["magenta", "pink", "rose", "orchid", "bubblegum-pink", "neon pink", "bright magenta"]},
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
    "train": {"circle": ["circle", "ball", "sphere", "orb", "round shape"],
              "square": ["square", "box", "cube", "crate"],
              "triangle": ["triangle", "pyramid", "wedge", "arrowhead"]},
    "heldout": {"circle": ["disc", "round dot"], "square": ["block", "square tile"],
                "triangle": ["three-sided shape", "triangular tile"]},
})
_MOTION_WORDS = _plurals({
    "train": {
        "left": ["moves to the left", "slides left", "travels left", "heads left", "shifts to the left",
                 "floats left"],
        "right": ["moves to the right", "slides right", "travels right", "heads right", "shifts to the right",
                  "floats right"],
        "up": ["moves up", "slides upward", "rises", "heads upward", "floats up", "ascends"],
        "down": ["moves down", "slides downward", "falls", "heads downward", "sinks", "drops"],
        "still": ["stays still", "does not move", "rests in place", "stays put", "holds still", "stands still"],
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
    "train": {"dark": ["dark", "black", "jet-black", "inky", "ebony", "deep black"],
              "light": ["light", "light grey", "white", "off-white", "silver"],
              "gradient": ["gradient", "dark-to-light gradient", "ombre", "graduated", "smooth gradient"],
              "checkered": ["checkered", "checkerboard", "chessboard", "checked", "grid"]},
    "heldout": {"dark": ["pitch-dark", "dim"], "light": ["pale", "whitish"],
                "gradient": ["softly shaded", "fading grey"], "checkered": ["chequered", "tiled"]},
}
_PAN_WORDS = {
    "train": {"none": [""],
              "left": [" while the camera pans left", ", the camera panning to the left",
                       " as the camera pans to the left", " with the camera moving left"],
              "right": [" while the camera pans right", ", the camera panning to the right",
                        " as the camera pans to the right", " with the camera moving right"]},
    "heldout": {"none": [""], "left": [", with the view sweeping leftward", " as the shot tracks leftward"],
                "right": [", with the view sweeping rightward", " as the shot tracks rightward"]},
}
_SPIN_WORDS = {
    "train": {False: [("", "")],
              True: [(" while spinning", " while spinning"), (" and rotates", " and rotate"),
                     (" while rotating", " while rotating"), (" and spins", " and spin"),
                     (" and revolves", " and revolve")]},
    "heldout": {False: [("", "")], True: [(" as it twirls", " as they twirl"),
                                          (", turning round and round", ", turning round and round")]},
}
_COUNT_WORDS = {"train": {1: ["a", "one", "just one", "only one"], 2: ["two", "a couple of", "twin"]},
                "heldout": {1: ["a single", "a lone"], 2: ["a pair of"]}}
_TEMPLATES = {
    "train": [
        "{count} {colour} {shape} {motion}{spin} on a {bg} background{pan}.",
        "On a {bg} background, {count} {colour} {shape} {motion}{spin}{pan}.",
        "{count} {colour} {shape} {motion}{spin} over a {bg} background{pan}.",
        "A video of {count} {colour} {shape} that {motion}{spin} on a {bg} background{pan}.",
        "{bg} background with {count} {colour} {shape} that {motion}{spin}{pan}.",
        "In this video, {count} {colour} {shape} {motion}{spin} on a {bg} background{pan}.",
        "Footage of {count} {colour} {shape} that {motion}{spin} on a {bg} background{pan}.",
        "A {bg} background where {count} {colour} {shape} {motion}{spin}{pan}.",
        "We see {count} {colour} {shape} that {motion}{spin} over a {bg} background{pan}.",
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
