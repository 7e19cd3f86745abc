"""What each chunk of a video is: how many chunks a requested length makes, and each chunk's prompt
with its scene-cut and switch flags (spec §2.4: a prompt starting with ``"The scene transitions. "``
opens a new shot; a prompt whose body differs from the previous chunk's is a switch, which
re-caches the window)."""

from __future__ import annotations

import math

from longlive.data.prompts import (
    SCENE_CUT_PREFIX,
    ChunkPrompt,
    chunk_frame_counts,
    num_frames_for_chunks,
    schedule_from_chunk_prompts,
    strip_scene_cut_prefix,
)

__all__ = ["resolve_chunk_prompt", "resolve_length", "schedule_prompts"]


def resolve_length(
    *,
    chunk_latents: int,
    temporal_stride: int,
    fps: float,
    num_chunks: int | None = None,
    num_frames: int | None = None,
    seconds: float | None = None,
) -> int:
    """Number of chunks for exactly one of ``num_chunks``, ``num_frames`` (must be a chunk boundary)
    or ``seconds`` (rounded up to whole chunks).

    Raises
    ------
    ValueError
        None or several given, non-positive values, or a frame count that is not a chunk boundary
        (the message names the nearest valid counts).
    """
    given = [
        n
        for n, v in (("num_chunks", num_chunks), ("num_frames", num_frames), ("seconds", seconds))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of num_chunks, num_frames or seconds, got {given or 'none'}")
    first, later = chunk_frame_counts(chunk_latents, temporal_stride)
    if num_chunks is not None:
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}")
        return num_chunks
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        k = max(1, 1 + math.ceil((num_frames - first) / later)) if num_frames > first else 1
        if num_frames_for_chunks(k, first_chunk_frames=first, chunk_frames=later) == num_frames:
            return k
        lo = num_frames_for_chunks(max(1, k - 1), first_chunk_frames=first, chunk_frames=later)
        hi = num_frames_for_chunks(k, first_chunk_frames=first, chunk_frames=later)
        lo = lo if lo < num_frames else None
        raise ValueError(
            f"num_frames={num_frames} is not a whole number of chunks (first chunk {first} frames, "
            f"then {later} per chunk); nearest valid: {', '.join(str(v) for v in (lo, hi) if v)}"
        )
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (seconds > 0 and math.isfinite(seconds))
    ):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    frames = max(1, round(seconds * fps))
    return 1 if frames <= first else 1 + math.ceil((frames - first) / later)


def schedule_prompts(prompts, num_chunks: int) -> list[ChunkPrompt]:
    """Per-chunk prompts from a str (whole video), a list of per-chunk strings or ChunkPrompts.

    Parameters
    ----------
    prompts : str, list of str or list of ChunkPrompt
        A list's flags come from :func:`~longlive.data.prompts.schedule_from_chunk_prompts`
        (strings) or are taken as they are (ChunkPrompts).
    num_chunks : int
        Length of the schedule: a longer list is cut, a shorter one ends on its last prompt
        repeated (without a scene cut or switch).

    Raises
    ------
    ValueError
        An empty list.
    TypeError
        Neither a str, a list of str nor a list of ChunkPrompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts] * num_chunks
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must not be empty")
    if all(isinstance(p, ChunkPrompt) for p in prompts):
        sched = prompts
    elif all(isinstance(p, str) for p in prompts):
        sched = schedule_from_chunk_prompts(prompts)
    else:
        raise TypeError("prompts must be a str, a list of str or a list of ChunkPrompt")
    if len(sched) < num_chunks:  # the last prompt lasts until the end
        last = sched[-1]
        body, _ = strip_scene_cut_prefix(last.prompt)
        sched = sched + [ChunkPrompt(body, False, False)] * (num_chunks - len(sched))
    return sched[:num_chunks]


def resolve_chunk_prompt(
    prompt: str | ChunkPrompt, index: int, prev_body: str | None, *, scene_cut: bool | None = None
) -> tuple[str, str, bool, bool]:
    """The text, body and flags of chunk ``index``'s prompt (see :meth:`StreamSession.next_chunk`).

    Parameters
    ----------
    prompt : str or ChunkPrompt
        A ChunkPrompt's text and flags are taken as they are. A string starting with the
        scene-cut prefix is a scene cut; one whose body differs from ``prev_body`` is a switch
        (neither at chunk 0).
    index : int
        Chunk index in the video.
    prev_body : str or None
        The previous chunk's prompt without the scene-cut prefix (None before chunk 0).
    scene_cut : bool, optional
        For a string: force (True) or forbid (False) a scene cut; the prefix is added/removed
        accordingly.

    Returns
    -------
    text : str
        For the text encoder (with the scene-cut prefix on a shot's first chunk).
    body : str
        ``text`` without the prefix: the next chunk's ``prev_body``.
    cut, switch : bool
        Scene cut (new shot) and prompt switch (KV re-cache).

    Raises
    ------
    ValueError
        A string prompt that is empty or blank, or a prompt that is neither a str nor a ChunkPrompt.
    """
    if isinstance(prompt, ChunkPrompt):
        text, cut, switch = prompt.prompt, prompt.is_scene_cut, prompt.is_switch
        body, _ = strip_scene_cut_prefix(text)
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        body, had = strip_scene_cut_prefix(prompt.strip())
        cut = (had if scene_cut is None else bool(scene_cut)) and index > 0
        switch = index > 0 and (cut or body != prev_body)
        text = SCENE_CUT_PREFIX + body if cut else body
    return text, body, cut, switch
