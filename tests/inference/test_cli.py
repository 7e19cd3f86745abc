"""``longlive generate``: clear errors before any model work, a full run, prompt files, the train/bench
delegation, and Ctrl-C (SIGINT to a subprocess) leaving a playable mp4 of every finished chunk."""

import os
import re
import signal
import subprocess
import sys
import time
import types

import av
import pytest

from longlive.cli import main

from ._helpers import micro_model, micro_yaml

RUN = ["generate", "--random-weights", "--text-encoder", "hash:64", "--steps", "1", "-q"]


@pytest.fixture
def micro(tmp_path):
    return micro_yaml(tmp_path / "micro.yaml")


def _frames(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _err(capsys, argv, code=2):
    assert main(argv) == code
    return capsys.readouterr().err


def test_generate_runs_and_writes_mp4(tmp_path, micro, capsys):
    out = tmp_path / "v.mp4"
    assert main(RUN + ["--config", micro, "--chunks", "3", "--out", str(out)]) == 0
    assert _frames(out) == 6  # PatchVAE: 2 frames per 2-latent chunk
    assert re.search(r"wrote 3 chunks \(6 frames\) to .*v\.mp4", capsys.readouterr().out)


def test_generate_prompt_schedule_file(tmp_path, micro, capsys):
    sched = tmp_path / "p.yaml"
    sched.write_text(
        "- chunk: 0\n  prompt: a red circle\n- chunk: 2\n  prompt: a red circle moves up\n"
        "- second: 0.75\n  prompt: two blue squares\n  scene_cut: true\n"
    )
    out = tmp_path / "v.mp4"
    assert (
        main(RUN + ["--config", micro, "--prompts", str(sched), "--seconds", "1.0", "--out", str(out), "-v"])
        == 0
    )
    text = capsys.readouterr().out
    assert "chunk 3/4 done: shot 0" in text and "re-cached [1]" in text  # switch at chunk 2: window chunk 1
    assert "chunk 4/4 done: shot 1" in text and "scene cut" in text  # 0.75 s at 8 fps = frame 6 = chunk 3
    assert _frames(out) == 8


@pytest.mark.parametrize(
    "argv, match",
    [
        (["generate", "--steps", "9"], "--steps must be in 1..8"),
        (RUN + ["--config", "tiny-typo"], "unknown model preset 'tiny-typo'"),
        (["generate", "--checkpoint", "/nonexistent/ckpt.safetensors"], "does not exist"),
        (RUN + ["--checkpoint", "x"], "--checkpoint and --random-weights exclude each other"),
        (RUN + ["--out", "/nonexistent/dir/v.mp4"], "--out directory '/nonexistent/dir' does not exist"),
        (RUN + ["--seconds", "-2"], "--seconds must be > 0"),
        (RUN + ["--prompts", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_cli_argument_errors(capsys, argv, match):
    assert match in _err(capsys, argv)


def test_impossible_frame_count(micro, capsys):
    err = _err(capsys, RUN + ["--config", micro, "--frames", "7"])
    assert "num_frames=7 is not a whole number of chunks" in err and "nearest valid: 6, 8" in err


def test_bad_prompt_file_names_the_line(tmp_path, micro, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("- chunk: 0\n  prompt: ok\n- chunk: 1\n  promt: typo\n")
    assert f"{bad}:3: unknown key(s) ['promt']" in _err(
        capsys, RUN + ["--config", micro, "--prompts", str(bad)]
    )
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"chunk": 0, "prompt": "a"}\n{"chunk": 1, "prompt": }\n')
    assert f"{jl}:2: invalid JSON" in _err(capsys, RUN + ["--config", micro, "--prompts", str(jl)])
    late = tmp_path / "late.yaml"
    late.write_text("- chunk: 0\n  prompt: a\n- chunk: 40\n  prompt: b\n")
    err = _err(capsys, RUN + ["--config", micro, "--prompts", str(late), "--chunks", "5"])
    assert f"{late}:3: entry starts at chunk 40 but the video has 5 chunks" in err


def test_sp_size_error_before_any_work(micro, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    err = _err(capsys, RUN + ["--config", micro])
    assert (
        "sequence-parallel size 3 does not divide the 2 attention heads" in err
        and "valid sizes: [1, 2]" in err
    )


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    from longlive.model import save_checkpoint

    ck = tmp_path / "micro.safetensors"
    save_checkpoint(micro_model(), ck)
    err = _err(
        capsys, ["generate", "--checkpoint", str(ck), "--config", "tiny", "--text-encoder", "hash", "-q"]
    )
    assert "does not match the model" in err and "dim=128 (expected 384)" in err


def test_no_arguments_without_demo_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("longlive.inference.pipeline.DEMO_DIR", tmp_path / "demo")
    err = _err(capsys, ["generate"])
    assert "bundled demo weights are not installed" in err and "--random-weights" in err


def test_train_and_bench_delegate(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("longlive.bench_cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "longlive.bench_cli", fake)
    assert main(["bench", "e2e", "--chunks", "3"]) == 0 and seen["argv"] == ["e2e", "--chunks", "3"]
    monkeypatch.setitem(sys.modules, "longlive.train.cli", None)  # import of a missing module
    assert main(["train", "--help"]) == 2
    assert (
        "longlive train: not available in this install (longlive.train.cli is missing)"
        in capsys.readouterr().err
    )
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


def test_ctrl_c_leaves_playable_mp4_of_finished_chunks(tmp_path, micro):
    # far more micro chunks than can run before the SIGINT lands, even on a loaded machine
    out = tmp_path / "v.mp4"
    cmd = (
        [sys.executable, "-m", "longlive.cli"]
        + RUN
        + ["--config", micro, "--chunks", "5000", "--out", str(out), "-v"]
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # SIGINT back to its default in the child: an ignored disposition is inherited through exec (a
    # shell starts background jobs with SIGINT ignored, e.g. `bash .ci/run &`), and a Python started
    # with SIGINT ignored never raises KeyboardInterrupt: the child ran all its chunks and exited 0
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("chunk 3/5000 done"):
                break
        assert any(ln.startswith("chunk 3/5000 done") for ln in lines), (lines, proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    m = re.search(r"interrupted: wrote (\d+) chunks \((\d+) frames\)", rest)
    assert m, rest + err
    chunks, frames = int(m.group(1)), int(m.group(2))
    done = sum(ln.startswith("chunk ") for ln in lines + rest.splitlines())
    # every chunk reported done is in the file (one more if SIGINT landed between hand-over and the log line)
    assert 3 <= done <= chunks <= done + 1 and chunks < 5000 and frames == 2 * chunks
    assert _frames(out) == frames


def test_no_arguments_runs_the_bundled_demo(tmp_path, capsys, monkeypatch):
    # a stand-in demo directory with the layout the demo trainer ships: model.safetensors (+ config in its
    # metadata) and pipeline.yaml (fps, default prompt, VAE options, text encoder)
    from longlive.model import save_checkpoint

    demo = tmp_path / "demo"
    demo.mkdir()
    save_checkpoint(micro_model(), demo / "model.safetensors")
    (demo / "pipeline.yaml").write_text(
        "fps: 8\nprompt: a yellow triangle spins\nvae: {patch: 4}\ntext_encoder: 'hash:64'\n"
    )
    monkeypatch.setattr("longlive.inference.pipeline.DEMO_DIR", demo)
    monkeypatch.chdir(tmp_path)
    assert main(["generate"]) == 0
    assert "wrote 20 chunks (40 frames) to longlive_demo.mp4" in capsys.readouterr().out  # 5 s at 8 fps
    assert _frames(tmp_path / "longlive_demo.mp4") == 40
