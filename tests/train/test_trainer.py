"""Trainer on CPU: kill-and-resume reproduces the loss curve exactly, the tiny model learns on the
procedural set, atomic checkpoints, latent cache, unreadable videos, config / CLI errors."""

import json
import os
import warnings

import pytest
import torch

from longlive.train.checkpoint import CheckpointConfigMismatch, find_latest_checkpoint, read_checkpoint
from longlive.train.cli import main as cli_main
from longlive.train.config import RunConfig
from longlive.train.trainer import Trainer

TINY = {
    "preset": "tiny",
    "num_layers": 2,
    "dim": 64,
    "num_heads": 2,
    "ffn_dim": 128,
    "latent_size": [4, 4],
    "text_len": 8,
    "ar": {"chunk_frames": 2},
}


def _cfg(tmp, **sections):
    base = {
        "model": dict(TINY),
        "train": {
            "steps": 4,
            "batch_size": 2,
            "precision": "fp32",
            "activation_checkpointing": False,
            "ops": "torch",
            "device": "cpu",
            "attention": "sdpa",
            "seed": 0,
        },
        "optim": {"lr": 1e-3, "betas": [0.9, 0.999], "warmup_steps": 2, "grad_clip": 1.0},
        "ema": {"decay": 0.5, "start_step": 1},
        "data": {"kind": "procedural", "num_chunks": 4, "num_workers": 0, "height": 32, "width": 32},
        "text": {"name": "hash"},
        "log": {"every": 1},
        "checkpoint": {"dir": str(tmp), "every": 2, "keep": 5},
    }
    for name, over in sections.items():
        base[name] = {**base.get(name, {}), **over}
    return RunConfig.from_dict(base)


def _train(cfg, steps=None):
    t = Trainer(cfg, log=None)
    try:
        return t.train(steps), t
    finally:
        t.close()


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------------------------
def test_resume_reproduces_the_loss_curve_exactly(tmp_path):
    full, _ = _train(_cfg(tmp_path / "a", train={"steps": 6}))
    first, _ = _train(_cfg(tmp_path / "b", train={"steps": 3}, checkpoint={"every": 3}))
    rest, t_rest = _train(_cfg(tmp_path / "b", train={"steps": 6}, checkpoint={"every": 3}))
    assert t_rest.history[0]["step"] == 4  # it resumed, it did not start over
    assert first + rest == full  # bit-identical floats
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    assert a.step == b.step == 6
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
        assert torch.equal(a.ema[key], b.ema[key]), key
    assert not torch.equal(a.ema["head.head.weight"], a.model["head.head.weight"])  # EMA lags the weights


def _resume_worker(rank, world, root, linear):
    torch.set_num_threads(1)
    extra = {"precision": "bf16", "linear": linear}
    full, t = _train(_cfg(os.path.join(root, "a"), train={"steps": 4, **extra}))
    first, _ = _train(_cfg(os.path.join(root, "b"), train={"steps": 2, **extra}))
    rest, _ = _train(_cfg(os.path.join(root, "b"), train={"steps": 4, **extra}))
    return full, first + rest, type(t.model.blocks[0].ffn[0]).__name__, t.fsdp


@pytest.mark.parametrize("linear", ["bf16", "nvfp4"])
def test_resume_is_exact_with_fsdp2_bf16_and_nvfp4_qat(tmp_path, linear):
    """FSDP2 mixed precision in a one-rank group; NVFP4 QAT draws stochastic-rounding seeds from the
    global generator, so this also checks that the RNG state is restored."""
    from longlive_kernels.comm._spawn import run_distributed

    full, resumed, ffn_type, fsdp = run_distributed(
        _resume_worker, 1, args=(str(tmp_path), linear), timeout_s=600.0
    )[0]
    assert fsdp and ffn_type == ("NVFP4Linear" if linear == "nvfp4" else "Linear")
    assert resumed == full
    assert all(torch.isfinite(torch.tensor(full)))


def test_partial_checkpoints_are_ignored(tmp_path):
    _train(_cfg(tmp_path, train={"steps": 2}))
    (tmp_path / ".step_00000004.tmp999").mkdir()  # killed mid-save: never renamed into place
    (tmp_path / "step_00000003").mkdir()  # no trainer_state.json
    assert find_latest_checkpoint(tmp_path).name == "step_00000002"
    (tmp_path / "latest").write_text("step_00000009\n")  # stale pointer
    assert find_latest_checkpoint(tmp_path).name == "step_00000002"


def test_checkpoint_from_another_config_is_refused(tmp_path):
    _train(_cfg(tmp_path, train={"steps": 1}))
    other = _cfg(tmp_path, train={"steps": 2}, model={"dim": 128})
    with pytest.raises(CheckpointConfigMismatch, match=r"dim: checkpoint 64 vs config 128"):
        Trainer(other, log=None)
    with pytest.raises(CheckpointConfigMismatch, match="'bf16' linears"):
        read_checkpoint(tmp_path, expect_linear="nvfp4")


def test_checkpoint_files_load_for_inference(tmp_path):
    from longlive.model.checkpoint import load_pretrained

    _train(_cfg(tmp_path, train={"steps": 1}))
    step = find_latest_checkpoint(tmp_path)
    state = json.loads((step / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["model_config"]["dim"] == 64
    model = load_pretrained(step / "ema.safetensors", dtype=torch.float32, ops="torch")
    assert model.config.dim == 64 and model.config.num_layers == 2


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
def test_tiny_model_loss_falls_on_the_procedural_set(tmp_path):
    cfg = _cfg(
        tmp_path,
        train={"steps": 40, "batch_size": 4},
        optim={"lr": 2e-3, "warmup_steps": 5},
        checkpoint={"every": 0},
        log={"every": 40},
    )
    t = Trainer(cfg, log=None)
    batch = t._next_batch()  # a fixed held-out batch, fixed noise/timesteps (step id 10**6)
    with torch.no_grad():
        before = t.loss_on(*batch, step=10**6).item()
    t.train()
    with torch.no_grad():
        after = t.loss_on(*batch, step=10**6).item()
    t.close()
    assert after < 0.75 * before, (before, after)  # 1.51 -> 0.89 here


# ---------------------------------------------------------------------------------------------
# Data paths and bad input
# ---------------------------------------------------------------------------------------------
def test_latent_cache_is_written_and_reused(tmp_path):
    cfg = _cfg(tmp_path / "run", train={"steps": 2}, data={"latent_cache": str(tmp_path / "cache")})
    losses, _ = _train(cfg)
    files = sorted(os.listdir(tmp_path / "cache"))
    assert len(files) == 4  # 2 steps × batch 2
    again, _ = _train(
        _cfg(tmp_path / "run2", train={"steps": 2}, data={"latent_cache": str(tmp_path / "cache")})
    )
    assert again == losses  # same latents from the cache as from the encoder


def _write_clip(path, frames, seed):
    import numpy as np

    from longlive.data import write_video

    rng = np.random.default_rng(seed)
    write_video(path, (rng.random((frames, 32, 32, 3)) * 255).astype(np.uint8), 8.0)


def test_unreadable_videos_are_skipped_named_and_counted(tmp_path):
    root = tmp_path / "data"
    for sample in ("s0", "s1"):
        (root / "video" / sample).mkdir(parents=True)
        (root / "caption" / sample).mkdir(parents=True)
        for clip in (0, 2):  # 4 frames = 2 chunks each: a sample of 4 chunks needs both
            _write_clip(root / "video" / sample / f"{clip}.mp4", 4, clip)
            (root / "caption" / sample / f"{clip}.json").write_text(json.dumps({"caption": f"clip {clip}"}))
    bad = root / "video" / "s1" / "1.mp4"  # read between the two good clips
    bad.write_bytes(b"not an mp4 at all")
    (root / "caption" / "s1" / "1.json").write_text(json.dumps({"caption": "broken"}))
    cfg = _cfg(
        tmp_path / "run",
        train={"steps": 2, "batch_size": 2},
        data={"kind": "video_folder", "root": str(root), "fps": 8.0, "random_start": False},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = Trainer(cfg, log=None)
        t.train()
        t.close()
    assert str(bad) in t.skipped_files
    assert t.history[-1]["skipped_videos"] == 1
    assert any(str(bad) in str(w.message) for w in caught)


def test_geometry_and_config_errors(tmp_path):
    with pytest.raises(ValueError, match="sp_size=2 needs 2 processes"):
        Trainer(_cfg(tmp_path, parallel={"sp_size": 2}), log=None)
    with pytest.raises(ValueError, match=r"unknown keys \['stepz'\] in section 'train'"):
        RunConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="parallel.layout must be"):
        RunConfig.from_dict({"parallel": {"layout": "ring"}})
    with pytest.raises(ValueError, match="data.root is required"):
        RunConfig.from_dict({"data": {"kind": "video_folder"}})


def test_cli_print_config_and_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny\ntrain: {steps: 7}\n")
    assert cli_main(["train", "--config", str(cfg), "--set", "optim.lr=0.5", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "lr: 0.5" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {precision: fp8}\n")
    assert cli_main(["--config", str(bad)]) == 2
    assert "train.precision must be one of" in capsys.readouterr().err


def test_cli_trains_and_resumes(tmp_path):
    import yaml

    cfg = _cfg(tmp_path / "run", train={"steps": 2}).to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(path)]) == 0
    assert cli_main(["train", "--config", str(path), "--steps", "3"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]


def test_cli_demo_exports_ema_weights_for_generate(tmp_path, monkeypatch):
    import yaml

    import longlive.train.cli as tcli
    from longlive.model.checkpoint import load_pretrained

    monkeypatch.setattr(tcli, "DEMO_DIR", tmp_path / "demo")
    cfg = _cfg(tmp_path / "run", train={"steps": 1}).to_dict()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--demo", "--config", str(path)]) == 0
    meta = yaml.safe_load((tmp_path / "demo" / "pipeline.yaml").read_text())
    assert meta == {"fps": 8.0, "text_encoder": "hash"}
    # a re-export (e.g. a fine-tune) keeps the sampling defaults and prompt already in pipeline.yaml
    (tmp_path / "demo" / "pipeline.yaml").write_text("fps: 4.0\nsteps: 8\nguidance_scale: 3.0\nprompt: P\n")
    assert cli_main(["train", "--demo", "--config", str(path), "--set", "train.steps=2"]) == 0
    meta = yaml.safe_load((tmp_path / "demo" / "pipeline.yaml").read_text())
    assert meta == {"fps": 8.0, "text_encoder": "hash", "steps": 8, "guidance_scale": 3.0, "prompt": "P"}
    model = load_pretrained(tmp_path / "demo" / "model.safetensors", dtype=torch.float32, ops="torch")
    ema = read_checkpoint(tmp_path / "run").ema
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert cli_main(["train", "--config", str(path), "--export", str(tmp_path / "w.safetensors")]) == 0
    assert (tmp_path / "w.safetensors").is_file()


def test_sigkill_mid_run_then_resume_continues_the_same_curve(tmp_path):
    """A real kill: the CLI trains in a subprocess that gets SIGKILL right after its first checkpoint;
    the resumed run's per-step losses equal the uninterrupted run's."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    def write(run):
        cfg = _cfg(tmp_path / run, train={"steps": 12}, checkpoint={"every": 4}).to_dict()
        path = tmp_path / f"{run}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    ref, _ = _train(RunConfig.from_yaml(write("ref")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "longlive.train.cli", "train", "--config", str(write("killed"))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while find_latest_checkpoint(tmp_path / "killed") is None:
            assert proc.poll() is None and time.time() < deadline, "the training subprocess ended early"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    start = read_checkpoint(tmp_path / "killed").step
    assert 4 <= start < 12
    t = Trainer(RunConfig.from_yaml(write("killed")), log=None)
    resumed = t.train()
    t.close()
    assert resumed == ref[start:]


def _sequential_own_groups(rank, world, root):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.destroy_process_group()  # start without a group, like `longlive train` in one process
    out = []
    for run in ("a", "b"):  # each trainer creates and destroys its own one-rank group
        losses, t = _train(_cfg(os.path.join(root, run), train={"steps": 1, "precision": "bf16"}))
        out.append((losses, t.fsdp, t._own_group, dist.is_initialized()))
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=0, world_size=1)  # for the spawner
    return out


def test_one_process_bf16_trainers_one_after_another(tmp_path):
    from longlive_kernels.comm._spawn import run_distributed

    (a, fsdp_a, own_a, init_a), (b, fsdp_b, own_b, init_b) = run_distributed(
        _sequential_own_groups, 1, args=(str(tmp_path),), timeout_s=300.0
    )[0]
    assert fsdp_a and fsdp_b and not (own_a or own_b or init_a or init_b)
    assert a == b


@pytest.mark.parametrize(("local_rank", "current", "want"), [("3", 1, 3), (None, 2, 2)])
def test_auto_device_follows_local_rank_else_the_current_cuda_device(monkeypatch, local_rank, current, want):
    """torchrun sets LOCAL_RANK; a launcher that only calls torch.cuda.set_device (our spawn harness)
    must get that device, not cuda:0 on every rank (NCCL: "Duplicate GPU detected")."""
    from longlive.train.builders import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert resolve_device("auto") == torch.device("cuda", want)
    assert resolve_device("cuda") == torch.device("cuda", want)
    assert resolve_device("cpu") == torch.device("cpu")
