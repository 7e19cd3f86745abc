"""Shared micro setup for the inference tests: a 2-block DiT over a 4x4 latent with 2-frame chunks
(32 tokens per chunk), the PatchVAE with 4x4 patches (48 channels, 16x16 video) and the hash text
encoder, so that a chunk takes milliseconds on a shared 2-core CPU."""

from __future__ import annotations

import torch

from longlive.config import ModelConfig
from longlive.inference import CachePolicy, Pipeline
from longlive.model import CausalDiT, HashTextEncoder, PatchVAE

MICRO = {
    "name": "micro",
    "dim": 128,
    "num_heads": 2,
    "ffn_dim": 256,
    "num_layers": 2,
    "in_channels": 48,
    "out_channels": 48,
    "latent_size": (4, 4),
    "vae_stride": (1, 4, 4),
    "text_dim": 64,
    "text_len": 8,
    "ar": {
        "chunk_frames": 2,
        "max_chunks": 4,
        "sink_chunks": 1,
        "multi_shot_rope_offset": 4,
        "kv_storage": "bf16",
    },
}


def micro_config(**changes) -> ModelConfig:
    cfg = ModelConfig.from_name("tiny").replace(**MICRO)
    return cfg.replace(**changes) if changes else cfg


def micro_model(cfg: ModelConfig | None = None, *, seed: int = 0, ops: str = "kernels") -> CausalDiT:
    torch.manual_seed(seed)
    m = CausalDiT(cfg or micro_config(), zero_init_head=False, ops=ops).eval()
    with torch.no_grad():  # non-trivial norms/biases so every path carries signal
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def micro_pipeline(
    *,
    seed: int = 0,
    policy: CachePolicy | None = None,
    ops: str = "kernels",
    device="cpu",
    dtype=torch.float32,
    cfg: ModelConfig | None = None,
    **kwargs,
) -> Pipeline:
    model = micro_model(cfg, seed=seed, ops=ops).to(device=device, dtype=dtype)
    return Pipeline(
        model,
        PatchVAE(4, clamp=True).to(device),
        HashTextEncoder(64, 8, device=device),
        policy=policy,
        **kwargs,
    )


def micro_yaml(path) -> str:
    """Write the micro config as a YAML file for the CLI and return its path."""
    import yaml

    cfg = micro_config()
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"model": cfg.to_dict()}, fh)
    return str(path)
