"""The frozen components and the device of a training run, built from its :class:`RunConfig`."""

from __future__ import annotations

import os
import warnings

import torch

from longlive.train.config import RunConfig

__all__ = ["build_text_encoder", "build_vae", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"``: cuda:LOCAL_RANK when CUDA is available (torchrun), else the current CUDA device
    (the one a launcher that does not set LOCAL_RANK selected with ``torch.cuda.set_device``), else cpu."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("train.device = cuda but CUDA is not available")
    local = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())


def build_vae(cfg: RunConfig, device: torch.device):
    """The VAE named by ``vae.name`` (default the model's), frozen, in ``vae.dtype`` on ``device``."""
    from longlive.model.vae import PatchVAE, load_vae

    name = cfg.vae.name or cfg.model.vae
    if name == "patch":
        vae = PatchVAE(cfg.model.vae_stride[1])
    else:
        if cfg.vae.path is None:
            warnings.warn(
                "vae.path is not set: the Wan2.2 VAE has RANDOM weights (timing runs only)", stacklevel=2
            )
        vae = load_vae(name, cfg.vae.path)
        vae = vae.to(torch.bfloat16 if cfg.vae.dtype == "bf16" else torch.float32)
    if vae.latent_channels != cfg.model.in_channels:
        raise ValueError(
            f"VAE {name!r} gives {vae.latent_channels} latent channels, model {cfg.model.name!r} expects "
            f"in_channels={cfg.model.in_channels}"
        )
    return vae.to(device).eval().requires_grad_(False)


def build_text_encoder(cfg: RunConfig, device: torch.device):
    """``text.name`` (default the model's encoder; ``hash`` = the weight-free test double)."""
    from longlive.model.text_encoder import HashTextEncoder, load_text_encoder

    name = cfg.text.name or cfg.model.text_encoder
    if name == "hash":
        return HashTextEncoder(cfg.model.text_dim, cfg.model.text_len, device=device)
    enc = load_text_encoder(name, max_length=cfg.model.text_len, device=device, fallback=cfg.text.fallback)
    if enc.dim != cfg.model.text_dim:
        raise ValueError(
            f"text encoder {name!r} is {enc.dim} wide, model expects text_dim={cfg.model.text_dim}"
        )
    return enc
