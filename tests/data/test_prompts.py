"""Prompt schedules: chunk layout, YAML/JSONL parsing, scene cuts and switches, errors with line numbers."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longlive.data.prompts import (
    SCENE_CUT_PREFIX,
    ChunkPrompt,
    PromptScheduleError,
    chunk_frame_bounds,
    chunk_frame_counts,
    chunk_index_of_frame,
    load_prompt_schedule,
    num_frames_for_chunks,
    schedule_from_chunk_prompts,
)


def test_chunk_frame_counts_wan_layout():
    assert chunk_frame_counts(8, 4) == (29, 32)  # spec §6.1
    assert chunk_frame_counts(2, 4) == (5, 8)
    assert chunk_frame_counts(3, 1) == (3, 3)
    with pytest.raises(ValueError, match="temporal_stride"):
        chunk_frame_counts(2, 0)


@given(st.integers(1, 12), st.integers(1, 9), st.integers(1, 9))
def test_bounds_and_frame_to_chunk_agree(num_chunks, first, rest):
    bounds = chunk_frame_bounds(num_chunks, first_chunk_frames=first, chunk_frames=rest)
    assert bounds[0] == (0, first) and bounds[-1][1] == num_frames_for_chunks(
        num_chunks, first_chunk_frames=first, chunk_frames=rest
    )
    for c, (a, b) in enumerate(bounds):
        for f in range(a, b):
            assert chunk_index_of_frame(f, first_chunk_frames=first, chunk_frames=rest) == c


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


YAML = """\
# a comment
- chunk: 0
  prompt: A red circle moves to the left on a dark background.
- chunk: 2
  prompt: A red circle moves up on a dark background.
- second: 3.0
  prompt: Two blue squares stay still on a light background.
  scene_cut: true
- chunk: 6
  prompt: Two blue squares stay still on a light background.
"""


def test_yaml_schedule_expands_per_chunk(tmp_path):
    # layout 5 + 8k frames at 8 fps: second 3.0 = frame 24 -> chunk 2 + ... = chunk 3
    sched = load_prompt_schedule(
        _write(tmp_path, "p.yaml", YAML), num_chunks=8, fps=8, first_chunk_frames=5, chunk_frames=8
    )
    assert len(sched) == 8 and all(isinstance(c, ChunkPrompt) for c in sched)
    assert [c.is_scene_cut for c in sched] == [False, False, False, True, False, False, False, False]
    assert [c.is_switch for c in sched] == [False, False, True, True, False, False, False, False]
    assert sched[0].prompt == sched[1].prompt == "A red circle moves to the left on a dark background."
    assert sched[3].prompt == SCENE_CUT_PREFIX + "Two blue squares stay still on a light background."
    assert (
        sched[4].prompt == "Two blue squares stay still on a light background."
    )  # prefix only on the cut chunk
    assert sched[6].prompt == sched[7].prompt == sched[4].prompt  # same text again: not a switch


def test_jsonl_and_mapping_forms_match_yaml(tmp_path):
    entries = [
        {"chunk": 0, "prompt": "a"},
        {"chunk": 1, "prompt": "b", "scene_cut": True},
        {"chunk": 3, "prompt": "c"},
    ]
    jl = _write(tmp_path, "p.jsonl", "\n".join(json.dumps(e) for e in entries) + "\n\n# trailing comment\n")
    ym = _write(
        tmp_path,
        "p.yml",
        "prompts:\n"
        + "".join(
            f"  - {{chunk: {e['chunk']}, prompt: {e['prompt']}, "
            f"scene_cut: {str(e.get('scene_cut', False)).lower()}}}\n"
            for e in entries
        ),
    )
    a, b = load_prompt_schedule(jl), load_prompt_schedule(ym)
    assert a == b
    assert [c.prompt for c in a] == [
        "a",
        SCENE_CUT_PREFIX + "b",
        "b",
        "c",
    ]  # default num_chunks: last entry + 1
    assert [c.is_switch for c in a] == [False, True, False, True]


def test_prefix_in_prompt_text_means_scene_cut(tmp_path):
    p = _write(
        tmp_path,
        "p.jsonl",
        '{"chunk": 0, "prompt": "x"}\n{"chunk": 1, "prompt": "The scene transitions. y"}\n',
    )
    sched = load_prompt_schedule(p)
    assert sched[1] == ChunkPrompt(SCENE_CUT_PREFIX + "y", True, True)


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("- chunk: 0\n  prompt: a\n- chunk: 1\n  prompt: b\n  colour: red\n", 3, "unknown key"),
        ("- chunk: 0\n  prompt: a\n- chunk: 2\n  prompt: b\n- chunk: 2\n  prompt: c\n", 5, "must be after"),
        ("- chunk: 1\n  prompt: a\n", 1, "must start at chunk 0"),
        ("- chunk: 0\n  prompt: a\n- chunk: 1\n  second: 2.0\n  prompt: b\n", 3, "exactly one of"),
        ("- chunk: 0\n  prompt: a\n- chunk: 1\n  prompt: ''\n", 3, "non-empty string"),
        ("- chunk: 0\n  prompt: a\n- chunk: -1\n  prompt: b\n", 3, "int >= 0"),
        ("- chunk: 0\n  prompt: a\n  scene_cut: true\n", 1, "cannot be a scene cut"),
        ("- chunk: 0\n  prompt: a\n- chunk: 1\n  prompt: b\n  scene_cut: maybe\n", 3, "true or false"),
        ("- chunk: 0\n  prompt: a\n- just a string\n", 3, "must be a mapping"),
        ("- chunk: 0\n  prompt: [unclosed\n", 3, "invalid YAML"),
    ],
)
def test_yaml_errors_name_the_line(tmp_path, text, line, match):
    p = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(PromptScheduleError, match=match) as e:
        load_prompt_schedule(p)
    assert f"bad.yaml:{line}:" in str(e.value)


def test_jsonl_errors_name_the_line(tmp_path):
    p = _write(tmp_path, "bad.jsonl", '{"chunk": 0, "prompt": "a"}\n\n{"chunk": 1, "prompt": "b",}\n')
    with pytest.raises(PromptScheduleError, match=r"bad.jsonl:3: invalid JSON"):
        load_prompt_schedule(p)
    p = _write(tmp_path, "bad2.jsonl", '{"chunk": 0, "prompt": "a"}\n{"chunk": 0, "prompt": "b"}\n')
    with pytest.raises(PromptScheduleError, match=r"bad2.jsonl:2: .*must be after"):
        load_prompt_schedule(p)


def test_positions_past_the_end_and_seconds_without_layout(tmp_path):
    p = _write(tmp_path, "p.yaml", "- chunk: 0\n  prompt: a\n- chunk: 5\n  prompt: b\n")
    with pytest.raises(PromptScheduleError, match=r"p.yaml:3: .*video has 4 chunks"):
        load_prompt_schedule(p, num_chunks=4)
    p = _write(tmp_path, "s.yaml", "- second: 0\n  prompt: a\n")
    with pytest.raises(PromptScheduleError, match="need fps"):
        load_prompt_schedule(p)
    p = _write(tmp_path, "same.yaml", "- second: 0\n  prompt: a\n- second: 0.1\n  prompt: b\n")
    with pytest.raises(PromptScheduleError, match=r"same.yaml:3: .*must be after"):  # both fall in chunk 0
        load_prompt_schedule(p, fps=8, first_chunk_frames=5, chunk_frames=8)


def test_unsafe_yaml_is_rejected(tmp_path):
    p = _write(tmp_path, "evil.yaml", "- chunk: 0\n  prompt: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(PromptScheduleError, match="invalid YAML"):
        load_prompt_schedule(p)


def test_bad_extension_and_missing_file(tmp_path):
    with pytest.raises(PromptScheduleError, match="extension"):
        load_prompt_schedule(_write(tmp_path, "p.txt", "x"))
    with pytest.raises(FileNotFoundError):
        load_prompt_schedule(tmp_path / "missing.yaml")


def test_schedule_from_chunk_prompts():
    sched = schedule_from_chunk_prompts(["a", "a", "b", SCENE_CUT_PREFIX + "c", "c", SCENE_CUT_PREFIX + "c"])
    assert [s.is_scene_cut for s in sched] == [False, False, False, True, False, True]
    assert [s.is_switch for s in sched] == [False, False, True, True, False, True]
    assert (
        schedule_from_chunk_prompts([SCENE_CUT_PREFIX + "a"])[0].is_scene_cut is False
    )  # chunk 0 never cuts
    with pytest.raises(TypeError):
        schedule_from_chunk_prompts("abc")
