"""Balanced and naive SP over 2 gloo ranks give the single-process loss and gradients on the same
batch (fp32: tight), through the whole trainer path: SP root reads the sample, raw halo windows
sent P2P and VAE-encoded per rank (balanced) or the full clip broadcast (naive), per-chunk prompts
sharded, Ulysses all-to-alls around the §5.2 mask, local losses normalised globally, gradients
summed over the SP group (manual all-reduce or FSDP2)."""

import pytest
import torch

from longlive.train.config import RunConfig
from longlive_kernels.testing import rel_err

from .test_trainer import TINY


def _cfg(tmp, *, sp=1, layout="balanced", fsdp="false", kind="procedural", linear="bf16"):
    return RunConfig.from_dict(
        {
            "model": dict(TINY),
            "train": {
                "steps": 2,
                "batch_size": 2,
                "precision": "fp32",
                "linear": linear,
                "activation_checkpointing": True,
                "ops": "torch",
                "device": "cpu",
                "attention": "sdpa",
                "seed": 3,
            },
            "optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
            "parallel": {"sp_size": sp, "layout": layout, "fsdp": fsdp},
            "data": {"kind": kind, "num_chunks": 4, "num_workers": 0, "height": 32, "width": 32},
            "vae": {"halo_latents": 1},
            "text": {"name": "hash"},
            "checkpoint": {"dir": str(tmp), "resume": "never"},
        }
    ).to_dict()


def _grads_worker(rank, world, cfg_dict):
    torch.set_num_threads(1)
    from longlive.train.trainer import Trainer

    t = Trainer(RunConfig.from_dict(cfg_dict), log=None)
    first, _ = t.train_step()  # the head starts at zero: one step makes every parameter's gradient non-zero
    loss = t.forward_backward()
    grads = {}
    for name, p in t.named_params:
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return float(first), float(loss), grads


def _run(cfg_dict, world):
    from longlive_kernels.comm._spawn import run_distributed

    return run_distributed(_grads_worker, world, args=(cfg_dict,), timeout_s=600.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """P = 1 run (one gloo rank, no sharding) on the same sample, noise and timesteps."""
    return _run(_cfg(tmp_path_factory.mktemp("ref")), 1)[0]


def _assert_same(results, reference, tol):
    ref_first, ref_loss, ref_grads = reference
    assert all(g.norm() > 0 for g in ref_grads.values())
    for first, loss, grads in results:  # every rank reports the global loss and the synchronised gradient
        assert first == pytest.approx(ref_first, rel=tol)
        assert loss == pytest.approx(ref_loss, rel=tol)
        assert grads.keys() == ref_grads.keys()
        worst = max(rel_err(grads[k], ref_grads[k]) for k in ref_grads)
        assert worst < tol, worst


@pytest.mark.parametrize("layout", ["balanced", "naive"])
def test_sp2_loss_and_gradients_equal_single_process(tmp_path, reference, layout):
    _assert_same(_run(_cfg(tmp_path, sp=2, layout=layout), 2), reference, 1e-5)


def test_sp2_balanced_with_fsdp2_equals_single_process(tmp_path, reference):
    _assert_same(_run(_cfg(tmp_path, sp=2, fsdp="true"), 2), reference, 1e-5)


def test_world_size_must_factor_into_sp_times_dp(tmp_path):
    with pytest.raises(RuntimeError, match="world size 2 does not factor into SP × DP with sp_size=4"):
        _run(_cfg(tmp_path, sp=4), 2)
