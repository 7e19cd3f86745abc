"""Shared by the CausalDiT tests (``test_dit*.py``): tiny configs, models with non-trivial norms and
biases, random inputs, and chunk-by-chunk KV-cache inference in the order of spec §2.8."""

from __future__ import annotations

import torch

from longlive.config import ModelConfig
from longlive.model.dit import CausalDiT


def _tiny(**changes) -> ModelConfig:
    base = {"num_layers": 2, "latent_size": (4, 6), "text_len": 8, "ar": {"chunk_frames": 2}}
    base.update(changes)
    return ModelConfig.from_name("tiny").replace(**base)


def _model(cfg: ModelConfig, *, dtype=torch.float32, seed=0, ops="kernels") -> CausalDiT:
    torch.manual_seed(seed)
    m = CausalDiT(cfg, zero_init_head=False, ops=ops).eval()
    with torch.no_grad():  # give norms/biases non-trivial values so every path carries signal
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    # Drawn in fp32, then cast: a bf16 model is the fp32 one rounded. (torch 2.11's CPU randn_like
    # on a bf16 tensor draws other values than on fp32, which made the bf16 and fp32 test models
    # differ by 33 % at the first linear.)
    return m.to(dtype)


def _inputs(cfg: ModelConfig, frames: int, *, batch=1, prompts=1, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_size
    clean = torch.randn(batch, cfg.in_channels, frames, h, w, generator=g).to(dtype)
    noisy = torch.randn(batch, cfg.in_channels, frames, h, w, generator=g).to(dtype)
    shape = (batch, cfg.text_len, cfg.text_dim) if prompts == 1 else (batch, prompts, cfg.text_len, cfg.text_dim)
    ctx = torch.randn(*shape, generator=g).to(dtype)
    cf = cfg.ar.chunk_frames
    t_block = torch.randint(1, 1000, (batch, frames // cf), generator=g).float()
    t_noisy = t_block.repeat_interleave(cf, dim=1)  # one timestep per block, shared by its frames
    return clean, noisy, t_noisy, ctx


def _chunked(model, clean, noisy, t_noisy, ctx, *, cache, per_chunk_prompt=False, extra_steps=0):
    """Inference order of spec §2.8: denoise call(s) for chunk n, then the t=0 re-run with clean latents."""
    cf = model.config.ar.chunk_frames
    outs = []
    for n in range(clean.shape[2] // cf):
        sl = slice(n * cf, (n + 1) * cf)
        c = ctx[:, n] if per_chunk_prompt else ctx
        for _ in range(extra_steps):  # earlier denoising steps: overwritten by later calls of the chunk
            model.forward_chunk(torch.randn_like(noisy[:, :, sl]), t_noisy[:, sl] * 0.5, c, cache=cache, chunk_id=n)
        outs.append(model.forward_chunk(noisy[:, :, sl], t_noisy[:, sl], c, cache=cache, chunk_id=n))
        model.forward_chunk(clean[:, :, sl], torch.zeros_like(t_noisy[:, sl]), c, cache=cache, chunk_id=n)
    return torch.cat(outs, dim=2)
