"""Building a pipeline's parts for :meth:`Pipeline.from_pretrained`: device and config resolution,
the KV-storage check, the config stored in a checkpoint, the text encoder and the VAE. What to load
is decided and checked first (``_text_encoder_spec``, ``_vae_path``) and loaded after
(``_build_text_encoder``, ``_build_vae``), so that bad arguments fail before any GPU memory is
touched."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from longlive.config import ModelConfig
from longlive.model.dit import LINEAR_MODES

__all__ = ["PRECISIONS", "peek_config"]

PRECISIONS = LINEAR_MODES  # the DiT's linear modes (CausalDiT.quantize_)


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _resolve_config(config) -> ModelConfig | None:
    if config is None or isinstance(config, ModelConfig):
        return config
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a preset name, a YAML path or a ModelConfig, got {type(config).__name__}"
        )
    text = os.fspath(config)
    if os.path.exists(text):
        return ModelConfig.from_yaml(text)
    if text.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"config file {text!r} does not exist")
    return ModelConfig.from_name(text)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _fp4_cache_available() -> bool:
    try:
        from longlive_kernels.attention import FP4KVCache  # noqa: F401
    except ImportError:
        return False
    return True


def _check_kv_storage(storage: str, model, *, ops: str | None = None) -> None:
    ops = ops or getattr(model, "ops", "kernels")
    if storage == "fp4" and (ops != "kernels" or not _fp4_cache_available()):
        why = (
            "ops='torch' uses the plain-torch BF16 cache"
            if ops != "kernels"
            else "longlive_kernels.attention.FP4KVCache is not available in this install"
        )
        raise ValueError(f"kv_cache='fp4' is not possible: {why}; use kv_cache='bf16' (--kv-cache bf16)")


def peek_config(checkpoint) -> ModelConfig | None:
    """The config stored in a safetensors checkpoint's metadata (by ``save_checkpoint``), read
    without loading any tensor; None when there is none."""
    import json

    path = Path(checkpoint)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files or files[0].suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
    if "longlive_config" not in meta:
        return None
    return ModelConfig.from_dict(json.loads(meta["longlive_config"]))


def _text_encoder_spec(cfg: ModelConfig, name, ckpt_dir: Path | None, random_weights: bool):
    """What to load as the text encoder (checked up front): a name, a path, or ("hash", dim)."""
    from longlive.model.text_encoder import WAN_T5_CHECKPOINT

    if name is not None:
        text = os.fspath(name)
        if ("/" in text or os.sep in text) and not os.path.exists(text):
            raise FileNotFoundError(f"text encoder path {text!r} does not exist")
        return text
    if cfg.text_encoder != "umt5-xxl":
        return cfg.text_encoder
    if ckpt_dir is not None and (ckpt_dir / WAN_T5_CHECKPOINT).is_file():
        return ckpt_dir
    if random_weights:
        return ("hash", cfg.text_dim)
    raise ValueError(
        f"config {cfg.name!r} uses umT5-XXL: pass its local directory with --text-encoder PATH "
        f"(or put {WAN_T5_CHECKPOINT} next to the checkpoint)"
    )


def _build_text_encoder(cfg: ModelConfig, spec, device):
    from longlive.model import HashTextEncoder, load_text_encoder

    if isinstance(spec, tuple):  # random-weights stand-in for umT5: a weight-free test double
        return HashTextEncoder(spec[1], cfg.text_len, device=device)
    enc = load_text_encoder(spec, max_length=cfg.text_len, device=device)
    if enc.dim != cfg.text_dim:
        raise ValueError(
            f"text encoder {os.fspath(spec)!r} is {enc.dim} wide, config {cfg.name!r} expects "
            f"text_dim={cfg.text_dim}"
        )
    return enc


RANDOM_LIGHTVAE = "lightvae"  # --vae value: random-weight LightVAE (decoder channel-pruned, spec §1.2)


def _vae_path(cfg: ModelConfig, path, ckpt_dir: Path | None, random_weights: bool):
    if cfg.vae == "patch":
        if path is not None:
            raise ValueError(f"config {cfg.name!r} uses the weight-free PatchVAE; --vae takes no path")
        return None
    if path is not None:
        if os.fspath(path).lower() == RANDOM_LIGHTVAE and not os.path.exists(path):
            if not random_weights:
                raise ValueError("--vae lightvae names the random-weight LightVAE decoder (with --random-weights); "
                                 "for real weights pass the LightVAE checkpoint's path")
            return RANDOM_LIGHTVAE
        if not os.path.exists(path):
            raise FileNotFoundError(f"VAE checkpoint {os.fspath(path)!r} does not exist")
        return path
    if ckpt_dir is not None:
        for name in ("Wan2.2_VAE.pth", "Wan2.2_VAE.safetensors"):
            if (ckpt_dir / name).is_file():
                return ckpt_dir / name
    if not random_weights:
        raise ValueError(f"config {cfg.name!r} needs the Wan2.2 VAE: pass --vae PATH (Wan2.2_VAE.pth)")
    return None


def _build_vae(cfg: ModelConfig, path, device, dtype, options: dict):
    from longlive.model import PatchVAE, WanVAE, load_vae

    if cfg.vae == "patch":
        opts = {"patch": cfg.vae_stride[1], "clamp": True}
        opts.update(options)
        vae = PatchVAE(**opts).to(device)
    elif path == RANDOM_LIGHTVAE:
        with torch.device(device), _default_dtype(dtype):
            vae = load_vae("lightvae", **options)
    elif path is not None:
        vae = WanVAE.from_pretrained(path, dtype=dtype, device=device, **options)
    else:  # random weights (benchmarks, smoke tests)
        with torch.device(device), _default_dtype(dtype):
            vae = load_vae("wan2.2", **options)
    if vae.latent_channels != cfg.in_channels or vae.spatial_stride != cfg.vae_stride[1]:
        raise ValueError(
            f"VAE ({vae.latent_channels} channels, stride {vae.spatial_stride}) does not fit config "
            f"{cfg.name!r} (in_channels={cfg.in_channels}, vae_stride={cfg.vae_stride})"
        )
    return vae.eval().requires_grad_(False)
