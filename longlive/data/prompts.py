"""Per-chunk prompt schedules: chunk layout, scene-cut prefix, and the ``--prompts FILE`` format.

A video is generated chunk by chunk; every chunk has exactly one prompt. A chunk starts a new
shot iff its prompt starts with the scene-cut prefix ``"The scene transitions. "``
(longlive-spec.md §2.4, §6.4); only the first chunk of a shot carries the prefix.

Chunk layout (longlive-spec.md §6.1): the first chunk has ``first_chunk_frames`` raw frames
(``1 + s·(L−1)`` for a VAE with temporal stride ``s`` and ``L`` latent frames per chunk, e.g.
29 for Wan2.2), every later chunk ``chunk_frames`` (``s·L``, e.g. 32).

Schedule file (``longlive generate --prompts FILE``), YAML or JSON Lines, one entry per
prompt change::

    # prompts.yaml                       # prompts.jsonl
    - chunk: 0                           {"chunk": 0, "prompt": "A red circle moves left."}
      prompt: A red circle moves left.   {"chunk": 3, "prompt": "A red circle moves up."}
    - chunk: 3                           {"second": 6.0, "prompt": "...", "scene_cut": true}
      prompt: A red circle moves up.
    - second: 6.0
      prompt: Two blue squares stay still on a light background.
      scene_cut: true

Keys: exactly one of ``chunk`` (int ≥ 0) or ``second`` (float ≥ 0; the entry starts at the chunk
containing frame ``round(second·fps)``), ``prompt`` (non-empty string), optional ``scene_cut``
(bool, default false). A YAML file may also be a mapping with a single ``prompts:`` list.
Positions must strictly increase, the first entry must start at chunk 0, and the first entry
cannot be a scene cut (the first chunk is the global sink). Errors name the file and line.
YAML is read with ``yaml.safe_load`` (and ``yaml.compose`` with the safe loader for line numbers).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import yaml

__all__ = [
    "SCENE_CUT_PREFIX",
    "ChunkPrompt",
    "PromptScheduleError",
    "chunk_frame_bounds",
    "chunk_frame_counts",
    "chunk_index_of_frame",
    "load_prompt_schedule",
    "num_frames_for_chunks",
    "parse_prompt_schedule",
    "schedule_from_chunk_prompts",
    "strip_scene_cut_prefix",
]

SCENE_CUT_PREFIX = "The scene transitions. "
_ALLOWED_KEYS = {"chunk", "second", "prompt", "scene_cut"}


@dataclass(frozen=True)
class ChunkPrompt:
    """The prompt of one chunk.

    Attributes
    ----------
    prompt : str
        The string given to the text encoder (with the scene-cut prefix on a shot's first chunk).
    is_scene_cut : bool
        This chunk starts a new shot (never true for chunk 0).
    is_switch : bool
        The prompt content differs from the previous chunk's (true at scene cuts too, false at 0).
    """

    prompt: str
    is_scene_cut: bool
    is_switch: bool


class PromptScheduleError(ValueError):
    """A malformed prompt schedule file; the message names the file and line."""


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def chunk_frame_counts(latent_frames_per_chunk: int, temporal_stride: int) -> tuple[int, int]:
    """Raw frames of the first and of every later chunk for a causal VAE.

    Parameters
    ----------
    latent_frames_per_chunk : int
        Latent frames per chunk ``L`` (Wan2.2 LongLive: 8).
    temporal_stride : int
        VAE temporal compression ``s`` (Wan2.2: 4; a per-frame PatchVAE: 1).

    Returns
    -------
    (first_chunk_frames, chunk_frames) : tuple of int
        ``(1 + s·(L−1), s·L)``; ``(29, 32)`` for Wan2.2.
    """
    lat = _check_positive_int("latent_frames_per_chunk", latent_frames_per_chunk)
    s = _check_positive_int("temporal_stride", temporal_stride)
    return 1 + s * (lat - 1), s * lat


def _check_layout(first_chunk_frames: int, chunk_frames: int) -> None:
    _check_positive_int("first_chunk_frames", first_chunk_frames)
    _check_positive_int("chunk_frames", chunk_frames)


def num_frames_for_chunks(num_chunks: int, *, first_chunk_frames: int, chunk_frames: int) -> int:
    """Raw frame count of ``num_chunks`` chunks (0 for 0 chunks)."""
    _check_layout(first_chunk_frames, chunk_frames)
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 0:
        raise ValueError(f"num_chunks must be an int >= 0, got {num_chunks!r}")
    return 0 if num_chunks == 0 else first_chunk_frames + (num_chunks - 1) * chunk_frames


def chunk_frame_bounds(
    num_chunks: int, *, first_chunk_frames: int, chunk_frames: int
) -> list[tuple[int, int]]:
    """Half-open raw-frame ranges ``[start, stop)`` of each chunk."""
    total = num_frames_for_chunks(
        num_chunks, first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames
    )
    bounds, start = [], 0
    for c in range(num_chunks):
        stop = start + (first_chunk_frames if c == 0 else chunk_frames)
        bounds.append((start, stop))
        start = stop
    assert start == total
    return bounds


def chunk_index_of_frame(frame: int, *, first_chunk_frames: int, chunk_frames: int) -> int:
    """Index of the chunk containing raw frame ``frame`` (``frame >= 0``)."""
    _check_layout(first_chunk_frames, chunk_frames)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f"frame must be an int >= 0, got {frame!r}")
    return 0 if frame < first_chunk_frames else 1 + (frame - first_chunk_frames) // chunk_frames


def strip_scene_cut_prefix(prompt: str, prefix: str = SCENE_CUT_PREFIX) -> tuple[str, bool]:
    """Return ``(prompt without the prefix, had_prefix)``."""
    if prompt.startswith(prefix):
        return prompt[len(prefix) :], True
    return prompt, False


def schedule_from_chunk_prompts(prompts: list[str], *, prefix: str = SCENE_CUT_PREFIX) -> list[ChunkPrompt]:
    """Derive scene-cut and switch flags from raw per-chunk prompt strings (§2.4 rule).

    A chunk ≥ 1 is a scene cut iff its prompt starts with ``prefix``; it is a switch iff it is a
    scene cut or its prompt differs from the previous chunk's.
    """
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}")
    out, prev = [], None
    for c, raw in enumerate(prompts):
        body, cut = strip_scene_cut_prefix(raw, prefix)
        cut = cut and c > 0
        out.append(ChunkPrompt(raw, cut, c > 0 and (cut or body != prev)))
        prev = body
    return out


def _yaml_entry_lines(text: str) -> list[int] | None:
    """1-based line of each entry of the top-level (or ``prompts:``) list; None if not a list."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "prompts":
                node = value
                break
    if not isinstance(node, yaml.SequenceNode):
        return None
    return [item.start_mark.line + 1 for item in node.value]


def _read_entries(path: str) -> list[tuple[int, object]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        entries = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                entries.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise PromptScheduleError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
        return entries
    if ext not in (".yaml", ".yml", ".json"):
        raise PromptScheduleError(
            f"{path}: unknown prompt schedule extension {ext!r}; expected .yaml, .yml, .json or .jsonl"
        )
    try:
        data = yaml.safe_load(text)
        lines = _yaml_entry_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise PromptScheduleError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if isinstance(data, dict):
        if set(data) != {"prompts"}:
            raise PromptScheduleError(
                f"{path}:1: a mapping must have exactly one key 'prompts', got {sorted(data)}"
            )
        data = data["prompts"]
    if not isinstance(data, list) or lines is None:
        raise PromptScheduleError(f"{path}:1: expected a list of entries, got {type(data).__name__}")
    return list(zip(lines, data))


def parse_prompt_schedule(
    entries: list[tuple[int, object]],
    *,
    num_chunks: int | None = None,
    fps: float | None = None,
    first_chunk_frames: int | None = None,
    chunk_frames: int | None = None,
    prefix: str = SCENE_CUT_PREFIX,
    source: str = "<schedule>",
) -> list[ChunkPrompt]:
    """Expand ``(line, entry)`` pairs into one :class:`ChunkPrompt` per chunk.

    See :func:`load_prompt_schedule` for the entry format and the parameters.
    """
    if not entries:
        raise PromptScheduleError(f"{source}: the schedule has no entries")
    starts: list[tuple[int, int, str, bool]] = []  # (chunk, line, prompt body, scene_cut)
    for lineno, entry in entries:
        where = f"{source}:{lineno}"
        if not isinstance(entry, dict):
            raise PromptScheduleError(
                f"{where}: an entry must be a mapping, got {type(entry).__name__}: {entry!r}"
            )
        unknown = set(entry) - _ALLOWED_KEYS
        if unknown:
            raise PromptScheduleError(
                f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(_ALLOWED_KEYS)}"
            )
        if ("chunk" in entry) == ("second" in entry):
            raise PromptScheduleError(
                f"{where}: give exactly one of 'chunk' or 'second', got {sorted(entry)}"
            )
        if "chunk" in entry:
            chunk = entry["chunk"]
            if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
                raise PromptScheduleError(f"{where}: 'chunk' must be an int >= 0, got {chunk!r}")
        else:
            sec = entry["second"]
            if (
                isinstance(sec, bool)
                or not isinstance(sec, (int, float))
                or not math.isfinite(sec)
                or sec < 0
            ):
                raise PromptScheduleError(f"{where}: 'second' must be a finite number >= 0, got {sec!r}")
            if fps is None or first_chunk_frames is None or chunk_frames is None:
                raise PromptScheduleError(
                    f"{where}: 'second' positions need fps, first_chunk_frames and chunk_frames"
                )
            chunk = chunk_index_of_frame(
                int(round(sec * fps)), first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames
            )
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptScheduleError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
        cut = entry.get("scene_cut", False)
        if not isinstance(cut, bool):
            raise PromptScheduleError(f"{where}: 'scene_cut' must be true or false, got {cut!r}")
        body, had_prefix = strip_scene_cut_prefix(prompt.strip(), prefix)
        cut = cut or had_prefix
        if starts and chunk <= starts[-1][0]:
            raise PromptScheduleError(
                f"{where}: position (chunk {chunk}) must be after the previous entry's "
                f"(chunk {starts[-1][0]}, line {starts[-1][1]})"
            )
        if not starts and chunk != 0:
            raise PromptScheduleError(
                f"{where}: the first entry must start at chunk 0 / second 0, got chunk {chunk}"
            )
        if not starts and cut:
            raise PromptScheduleError(
                f"{where}: the first entry cannot be a scene cut (chunk 0 is the global sink)"
            )
        if num_chunks is not None and chunk >= num_chunks:
            raise PromptScheduleError(
                f"{where}: entry starts at chunk {chunk} but the video has {num_chunks} chunks"
            )
        starts.append((chunk, lineno, body, cut))
    if num_chunks is None:
        num_chunks = starts[-1][0] + 1
    elif isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"num_chunks must be a positive int or None, got {num_chunks!r}")
    out: list[ChunkPrompt] = []
    for i, (chunk, _, body, cut) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else num_chunks
        for c in range(chunk, stop):
            first = c == chunk
            switch = first and c > 0 and (cut or body != starts[i - 1][2])
            out.append(ChunkPrompt(prefix + body if (first and cut) else body, first and cut, switch))
    return out


def load_prompt_schedule(
    path: str | os.PathLike,
    *,
    num_chunks: int | None = None,
    fps: float | None = None,
    first_chunk_frames: int | None = None,
    chunk_frames: int | None = None,
    prefix: str = SCENE_CUT_PREFIX,
) -> list[ChunkPrompt]:
    """Read a YAML/JSONL prompt schedule into one prompt per chunk.

    Parameters
    ----------
    path : str or PathLike
        ``.yaml``/``.yml``/``.json`` (YAML superset) or ``.jsonl``/``.ndjson`` file.
    num_chunks : int, optional
        Chunks of the video; the last entry lasts until the end. Default: last entry's chunk + 1.
    fps, first_chunk_frames, chunk_frames : optional
        Needed only for ``second`` positions (chunk layout of module docstring).
    prefix : str
        Scene-cut prefix put on the first chunk of a ``scene_cut`` entry.

    Returns
    -------
    list of ChunkPrompt
        Length ``num_chunks``.

    Raises
    ------
    PromptScheduleError
        (a ``ValueError``) bad entries, unknown keys, non-increasing positions, positions past
        the end; the message names the file and line.
    FileNotFoundError
        ``path`` does not exist.
    """
    path = os.fspath(path)
    return parse_prompt_schedule(
        _read_entries(path),
        num_chunks=num_chunks,
        fps=fps,
        first_chunk_frames=first_chunk_frames,
        chunk_frames=chunk_frames,
        prefix=prefix,
        source=path,
    )
