"""GPU tests of the trainer: compiled FlexAttention with the tile-level mask (FlashAttention rule, fwd
and bwd), bf16 / NVFP4-QAT training steps on one GPU, and Balanced / naive SP over NCCL against one
GPU within bf16 noise (``torchrun`` is not needed: the tests spawn their ranks).

    pytest tests/train/test_gpu.py -v                  # 1 GPU: the gpu tests; 2+ GPUs: also multigpu
"""

import pytest
import torch

from longlive.model.masks import TeacherForcingLayout
from longlive.train.config import RunConfig
from longlive.train.sp import TeacherForcingAttention
from longlive_kernels.testing import rel_err


def _attn_ref(q, k, v, mask):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    p = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.gpu
@pytest.mark.parametrize("sp", [1, 2, 4])
def test_flex_teacher_forcing_attention_fwd_bwd_flashattention_rule(sp):
    torch.manual_seed(0)
    lay = TeacherForcingLayout(32, 120, 8, sp_size=sp)  # 7680 tokens, rank segments not tile-aligned
    n = lay.num_tokens
    q, k, v = (
        torch.randn(1, n, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    do = torch.randn(1, n, 4, 64, device="cuda", dtype=torch.bfloat16)
    mask = lay.dense_mask("cuda")

    def run(fn, *xs):
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        o = fn(*xs)
        o.backward(do.to(o.dtype))
        return [o.detach()] + [x.grad for x in xs]

    ref = run(lambda a, b, c: _attn_ref(a, b, c, mask), *(x.double() for x in (q, k, v)))
    eager = run(lambda a, b, c: _attn_ref(a, b, c, mask), q, k, v)
    flex = run(lambda a, b, c: TeacherForcingAttention(lay, impl="flex")(a, b, c, layer=0), q, k, v)
    for name, f, e, r in zip(("o", "dq", "dk", "dv"), flex, eager, ref, strict=True):
        assert rel_err(f, r) <= 2 * rel_err(e, r) + 1e-4, name


def _cfg(tmp, *, precision="bf16", linear="bf16", sp=1, layout="balanced", steps=2, ops="kernels"):
    return RunConfig.from_dict(
        {
            "model": {
                "preset": "tiny",
                "num_layers": 2,
                "dim": 256,
                "num_heads": 4,
                "ffn_dim": 512,
                "latent_size": [8, 8],
                "ar": {"chunk_frames": 2},
            },
            "train": {
                "steps": steps,
                "batch_size": 2,
                "precision": precision,
                "linear": linear,
                "ops": ops,
                "activation_checkpointing": True,
                "attention": "auto",
                "seed": 1,
                "device": "cuda",
            },
            "optim": {"lr": 1e-3, "betas": [0.9, 0.999], "warmup_steps": 0},
            "parallel": {"sp_size": sp, "layout": layout},
            "data": {"kind": "procedural", "num_chunks": 4, "num_workers": 0, "height": 64, "width": 64},
            "vae": {"halo_latents": 1},
            "text": {"name": "hash"},
            "log": {"every": 1},
            "checkpoint": {"dir": str(tmp), "resume": "never", "every": 0},
        }
    )


@pytest.mark.gpu
@pytest.mark.parametrize("linear", ["bf16", "nvfp4"])
def test_training_steps_on_one_gpu(tmp_path, linear):
    from longlive.train.trainer import Trainer

    t = Trainer(_cfg(tmp_path, linear=linear, steps=30), log=None)
    try:
        losses = t.train()
    finally:
        t.close()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    assert t.history[-1]["mem_peak_gb"] > 0 and t.history[-1]["tokens_per_s"] > 0


def _grads_worker(rank, world, cfg_dict):
    from longlive.train.trainer import Trainer

    t = Trainer(RunConfig.from_dict(cfg_dict), log=None)
    t.train_step()  # the head starts at zero
    loss = t.forward_backward()
    grads = {}
    for name, p in t.named_params:
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().float().cpu()
    return float(loss), grads


def _run(cfg, world):
    from longlive_kernels.comm._spawn import run_distributed

    return run_distributed(_grads_worker, world, backend="nccl", args=(cfg.to_dict(),), timeout_s=600.0)


@pytest.mark.multigpu
@pytest.mark.parametrize(("world", "layout"), [(2, "balanced"), (2, "naive"), (4, "balanced"), (4, "naive")])
def test_sp_over_nccl_matches_one_gpu_within_bf16_noise(tmp_path, world, layout):
    """err(P bf16 vs one-GPU fp32) ≤ 2 · err(one-GPU bf16 vs one-GPU fp32) + tiny, for loss and grads."""
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    ref_loss, ref = _run(_cfg(tmp_path / "fp32", precision="fp32"), 1)[0]
    b1_loss, b1 = _run(_cfg(tmp_path / "bf16"), 1)[0]
    for loss, grads in _run(_cfg(tmp_path / "sp", sp=world, layout=layout), world):
        assert abs(loss - ref_loss) <= 2 * abs(b1_loss - ref_loss) + 1e-3 * abs(ref_loss)
        for k in ref:
            assert rel_err(grads[k], ref[k]) <= 2 * rel_err(b1[k], ref[k]) + 1e-3, k
