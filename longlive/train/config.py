"""Training configuration: one YAML file, sections mirrored by frozen dataclasses.

Defaults are the paper's AR teacher-forcing stage (``shared/docs/longlive-spec.md`` §6.1,
``configs/train_ar.yaml``): AdamW lr 1e-5, β = (0, 0.999), weight decay 0, grad clip 10, EMA 0.99
from step 100, timestep shift 5, bf16, activation checkpointing, Balanced SP. Example::

    model: {preset: tiny}
    train: {steps: 3000, batch_size: 8, precision: bf16, linear: bf16, seed: 0}
    optim: {lr: 3.0e-4, betas: [0.9, 0.999], warmup_steps: 200}
    ema: {decay: 0.999, start_step: 500}
    parallel: {sp_size: 1, layout: balanced}
    data: {kind: procedural, num_chunks: 8}
    checkpoint: {dir: runs/tiny, every: 500}

Unknown keys raise ``ValueError`` naming the section and the valid keys; ``--set a.b=value`` on the
command line overrides single fields (values parsed with ``yaml.safe_load``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from longlive.config import ModelConfig

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EMAConfig",
    "LogConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunConfig",
    "TextConfig",
    "TrainConfig",
    "VAEConfig",
    "apply_overrides",
]


def _positive_int(section: str, name: str, v: Any, *, zero: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if zero else 1):
        raise ValueError(f"{section}.{name} must be an int >= {0 if zero else 1}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` — the loop.

    steps : total optimizer steps. batch_size : samples per data-parallel rank and step.
    precision : "bf16" (FSDP2 mixed precision: bf16 compute, fp32 master weights and reductions) or "fp32".
    linear : "bf16" (plain linears) or "nvfp4" / "w4a16" (NVFP4 QAT via ``NVFP4Linear(trainable=True)``).
    nvfp4_recipe : "four_over_six" (the paper's AR recipe) or "te" (Transformer Engine's NVFP4).
    activation_checkpointing : recompute each DiT block in backward.
    ops : DiT ops ("kernels" fused Triton ops where they exist, "torch" plain eager).
    attention : "auto" (flex on CUDA, sdpa on CPU), "flex" or "sdpa".
    timestep_shift, weighting : the objective (spec §6.1).
    device : "auto" (cuda:LOCAL_RANK when available, else cpu), "cpu" or "cuda".
    time_limit_minutes : stop (and save) at the first log step past this wall-clock budget.
    init : optional weights file (safetensors, e.g. an exported EMA) to start from instead of the
        random initialisation (fine-tuning; a fresh run, not a resume: optimizer and step start anew).
    caption_dropout : probability in [0, 1) that a sample trains with empty prompts (classifier-free
        guidance at inference needs it; 0 = off, the paper's fine-tuning setting).
    """

    steps: int = 600
    batch_size: int = 1
    precision: str = "bf16"
    linear: str = "bf16"
    nvfp4_recipe: str = "four_over_six"
    activation_checkpointing: bool = True
    ops: str = "kernels"
    attention: str = "auto"
    timestep_shift: float = 5.0
    weighting: str = "gaussian"
    seed: int = 0
    device: str = "auto"
    time_limit_minutes: float | None = None
    init: str | None = None
    caption_dropout: float = 0.0

    def __post_init__(self):
        _positive_int("train", "steps", self.steps)
        if not (isinstance(self.caption_dropout, (int, float)) and 0.0 <= self.caption_dropout < 1.0):
            raise ValueError(f"train.caption_dropout must be in [0, 1), got {self.caption_dropout!r}")
        if self.time_limit_minutes is not None and not self.time_limit_minutes > 0:
            raise ValueError(f"train.time_limit_minutes must be > 0 or null, got {self.time_limit_minutes!r}")
        _positive_int("train", "batch_size", self.batch_size)
        for name, choices in (
            ("precision", ("bf16", "fp32")),
            ("linear", ("bf16", "nvfp4", "w4a16")),
            ("nvfp4_recipe", ("four_over_six", "te")),
            ("ops", ("kernels", "torch")),
            ("attention", ("auto", "flex", "sdpa")),
            ("weighting", ("gaussian", "uniform")),
            ("device", ("auto", "cpu", "cuda")),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"train.{name} must be one of {choices}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class OptimConfig:
    """``optim:`` — AdamW, linear warm-up then constant or cosine decay to ``min_lr_ratio·lr``."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.lr > 0 or len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(
                f"optim: need lr > 0 and two betas in [0, 1), got lr={self.lr}, betas={self.betas}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip!r}")
        _positive_int("optim", "warmup_steps", self.warmup_steps, zero=True)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {self.schedule!r}")


@dataclass(frozen=True)
class EMAConfig:
    """``ema:`` — exponential moving average of the weights (fp32), updated from ``start_step`` on."""

    enabled: bool = True
    decay: float = 0.99
    start_step: int = 100

    def __post_init__(self):
        if not 0 < self.decay < 1:
            raise ValueError(f"ema.decay must be in (0, 1), got {self.decay!r}")
        _positive_int("ema", "start_step", self.start_step, zero=True)


@dataclass(frozen=True)
class ParallelConfig:
    """``parallel:`` — SP size P (world = P × DP), layout, and FSDP2 ("auto": on when distributed or bf16)."""

    sp_size: int = 1
    layout: str = "balanced"
    fsdp: str = "auto"

    def __post_init__(self):
        _positive_int("parallel", "sp_size", self.sp_size)
        if self.layout not in ("balanced", "naive"):
            raise ValueError(f"parallel.layout must be 'balanced' or 'naive', got {self.layout!r}")
        if str(self.fsdp).lower() not in ("auto", "true", "false"):
            raise ValueError(f"parallel.fsdp must be auto, true or false, got {self.fsdp!r}")


@dataclass(frozen=True)
class DataConfig:
    """``data:`` — ``procedural`` (the shapes world), ``video_folder`` (mp4 + caption JSON, spec §6.4)
    or ``random`` (random latents and hashed prompts, for timing). ``num_chunks`` AR chunks per
    sample (F = num_chunks · chunk_frames latents). ``height``/``width``/``fps`` default to the model
    resolution and 8 fps (procedural) / 24 fps (video folder). ``latent_cache``: a folder where
    encoded latents are stored and re-used (one safetensors file per sample)."""

    kind: str = "procedural"
    root: str | None = None
    num_chunks: int = 8
    num_samples: int = 1_000_000
    height: int | None = None
    width: int | None = None
    fps: float | None = None
    max_chunks_per_shot: int | None = None
    allow_padding: bool = True
    random_start: bool = True
    num_workers: int = 2
    latent_cache: str | None = None

    def __post_init__(self):
        if self.kind not in ("procedural", "video_folder", "random"):
            raise ValueError(f"data.kind must be procedural, video_folder or random, got {self.kind!r}")
        if self.kind == "video_folder" and not self.root:
            raise ValueError("data.root is required for data.kind = video_folder")
        _positive_int("data", "num_chunks", self.num_chunks)
        _positive_int("data", "num_samples", self.num_samples)
        _positive_int("data", "num_workers", self.num_workers, zero=True)


@dataclass(frozen=True)
class VAEConfig:
    """``vae:`` — ``name`` defaults to the model's (``patch`` / ``wan2.2``), ``path`` the Wan2.2 VAE
    weights (random weights without), ``halo_latents`` the §5.3 left halo, ``dtype`` of the encoder."""

    name: str | None = None
    path: str | None = None
    halo_latents: int = 28
    dtype: str = "bf16"

    def __post_init__(self):
        _positive_int("vae", "halo_latents", self.halo_latents, zero=True)
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"vae.dtype must be bf16 or fp32, got {self.dtype!r}")


@dataclass(frozen=True)
class TextConfig:
    """``text:`` — encoder name or local umT5 path (default the model's; ``hash`` = test double)."""

    name: str | None = None
    fallback: str | None = "hash"


@dataclass(frozen=True)
class LogConfig:
    """``log:`` — print/metrics.jsonl every ``every`` steps; ``tensorboard`` writes event files if installed."""

    every: int = 10
    tensorboard: bool = False

    def __post_init__(self):
        _positive_int("log", "every", self.every)


@dataclass(frozen=True)
class CheckpointConfig:
    """``checkpoint:`` — run folder, save period (0: only at the end), kept checkpoints, resume policy
    ("auto": latest checkpoint in ``dir`` if any, "never", or a checkpoint path)."""

    dir: str = "runs/train"
    every: int = 500
    keep: int = 3
    resume: str = "auto"

    def __post_init__(self):
        _positive_int("checkpoint", "every", self.every, zero=True)
        _positive_int("checkpoint", "keep", self.keep)


_SECTIONS = {
    "train": TrainConfig,
    "optim": OptimConfig,
    "ema": EMAConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "vae": VAEConfig,
    "text": TextConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: the model plus every section above."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_name("tiny"))
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def num_frames(self) -> int:
        """Latent frames per sample F = num_chunks · chunk_frames."""
        return self.data.num_chunks * self.model.ar.chunk_frames

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model.to_dict()}
        for name in _SECTIONS:
            d = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a mapping with the sections above (``model`` may be a preset name)."""
        if not isinstance(data, dict):
            raise TypeError(f"training config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SECTIONS) - {"model"})
        if unknown:
            raise ValueError(f"unknown config sections {unknown}; valid: {['model', *_SECTIONS]}")
        model = data.get("model", "tiny")
        model_cfg = ModelConfig.from_name(model) if isinstance(model, str) else ModelConfig.from_dict(model)
        kwargs: dict[str, Any] = {"model": model_cfg}
        for name, klass in _SECTIONS.items():
            sec = data.get(name) or {}
            if not isinstance(sec, dict):
                raise TypeError(f"config section {name!r} must be a mapping, got {sec!r}")
            valid = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(set(sec) - valid)
            if bad:
                raise ValueError(f"unknown keys {bad} in section {name!r}; valid keys: {sorted(valid)}")
            kwargs[name] = klass(**sec)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
        """Read a YAML file (``yaml.safe_load``) and apply ``key.sub=value`` overrides."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training config not found: {path!r}")
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        return cls.from_dict(apply_overrides(data, overrides or []))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (value parsed by ``yaml.safe_load``) to a config mapping."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
        key, value = item.split("=", 1)
        *path, leaf = key.strip().split(".")
        node = data
        for part in path:
            if isinstance(node.get(part), str) and part == "model":
                node[part] = {"preset": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TypeError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return data
