"""Quality report: markdown table with one row per variant, PNG plots next to it, works without matplotlib."""

import builtins

import pytest

from longlive.data.procedural import ProceduralConfig, generate_sample
from longlive.quality.metrics import evaluate_video
from longlive.quality.report import REPORT_COLUMNS, format_table, write_report

CFG = ProceduralConfig(height=64, width=64, num_chunks=6)


@pytest.fixture(scope="module")
def results():
    s = generate_sample(2, CFG)
    kw = dict(
        fps=CFG.fps,
        first_chunk_frames=CFG.first_chunk_frames,
        chunk_frames=CFG.chunk_frames,
        prompts=s.prompts,
    )
    late = s.frames.copy()
    late[13:] = s.frames[5:-8]
    return {"bf16": evaluate_video(s.frames, **kw), "delayed": evaluate_video(late, **kw)}


def test_table_has_one_row_per_variant(results):
    table = format_table(results)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == len(REPORT_COLUMNS) + 2
    assert lines[2].startswith("| bf16 | 100.0 | 100.0 |")
    assert lines[3].startswith("| delayed |") and "| 100.0 | 100.0 |" not in lines[3][:30]
    with pytest.raises(TypeError):
        format_table({"x": 1})
    with pytest.raises(TypeError):
        format_table({})


def test_write_report_with_plots(results, tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(results, tmp_path / "out" / "quality.md", title="Demo", notes="device: CPU")
    assert [p.name for p in written] == [
        "quality.md",
        "quality_adherence.png",
        "quality_consistency.png",
        "quality_drift.png",
    ]
    text = written[0].read_text()
    assert (
        text.startswith("# Demo\n\ndevice: CPU\n")
        and "| bf16 |" in text
        and "![quality_drift](quality_drift.png)" in text
    )
    for png in written[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_write_report_without_matplotlib(results, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    written = write_report(results["bf16"], tmp_path / "q.md")
    assert written == [tmp_path / "q.md"]
    text = written[0].read_text()
    assert "Plots skipped" in text and "| result |" in text
