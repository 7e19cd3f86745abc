"""Model and autoregressive-geometry configuration with named presets.

Presets (``ModelConfig.from_name``):

- ``"wan2.2-ti2v-5b"``: the exact Wan2.2-TI2V-5B DiT (``shared/docs/longlive-spec.md`` §1.1):
  30 blocks, width 3072, 24 heads of 128, FFN 14336 (tanh-GELU), patch (1, 2, 2) over the 48-channel
  Wan2.2 VAE latent, umT5-XXL text (4096 wide, 512 tokens), eps 1e-6, qk RMSNorm, LN3 with affine,
  interleaved 3D RoPE 44/42/42. 704x1280 video = 44x80 latents = 22x40 = 880 tokens per latent frame;
  chunks of 8 latent frames (7040 tokens); KV cache of 4 chunks with a 1-chunk attention sink and
  multi-shot RoPE offset 8 (§2.1–2.5). 4,999,787,712 parameters.
- ``"small-1.3b"``: the same architecture at 1536 wide, 12 heads, FFN 8960 (Wan2.1-1.3B widths) over
  the same latent and text geometry; used by the trainer benchmark.
- ``"tiny"``: the same code at 384 wide, 4 blocks, 6 heads of 64, over a ``PatchVAE`` latent
  (8x8 pixel patches, temporal stride 1, 3·8·8 = 192 channels) with patch (1, 1, 1) and MiniLM text
  (384 wide, 32 tokens); 128x128 video = 16x16 = 256 tokens per frame, chunks of 4 frames. Trains in
  minutes on one GPU and generates on a laptop CPU.

Configs are frozen dataclasses; ``to_dict`` / ``from_dict`` / ``from_yaml`` round-trip through plain
YAML (``yaml.safe_load``). A dict may name a ``preset`` and override single fields::

    preset: tiny
    num_layers: 2
    ar: {chunk_frames: 2}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODEL_PRESETS", "QUANT_SKIP_MODULES", "ARConfig", "ModelConfig"]

# Modules kept in high precision when the block linears are swapped to NVFP4/FP8/W4A16
# (spec §3.2; LayerNorm/RMSNorm weights are not Linear layers and are never swapped).
QUANT_SKIP_MODULES = ("text_embedding", "patch_embedding", "time_embedding", "time_projection", "head")

KV_STORAGES = ("fp4", "bf16")


@dataclass(frozen=True)
class ARConfig:
    """Chunk-wise autoregressive geometry and KV-cache policy (spec §2.1–2.5).

    Parameters
    ----------
    chunk_frames : int
        Latent frames denoised together per chunk (8 for the 5B model: 7040 tokens at 704x1280).
    max_chunks : int
        KV-cache capacity in chunks, the current chunk included (4: 32 latent frames = 28,160 keys).
    sink_chunks : int
        Leading chunks that are never evicted (attention sink; 1 chunk = 8 frames).
    multi_shot_rope_offset : int
        Temporal RoPE positions added per shot boundary (``shot_index * offset``; spec §2.5).
    kv_storage : {"fp4", "bf16"}
        Default KV-cache storage for inference.
    kv_scale_rule : str
        NVFP4 scale rule of the KV cache (``"static6"`` = standard NVFP4).
    """

    chunk_frames: int = 8
    max_chunks: int = 4
    sink_chunks: int = 1
    multi_shot_rope_offset: int = 8
    kv_storage: str = "fp4"
    kv_scale_rule: str = "static6"

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "max_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"ARConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.sink_chunks < self.max_chunks:
            raise ValueError(
                f"ARConfig.sink_chunks must be in [0, max_chunks={self.max_chunks}), got {self.sink_chunks}"
            )
        if self.multi_shot_rope_offset < 0:
            raise ValueError(f"ARConfig.multi_shot_rope_offset must be >= 0, got {self.multi_shot_rope_offset}")
        if self.kv_storage not in KV_STORAGES:
            raise ValueError(f"ARConfig.kv_storage must be one of {KV_STORAGES}, got {self.kv_storage!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a causal Wan2.2-TI2V-style DiT plus its latent/text geometry.

    Parameters
    ----------
    name : str
        Preset name or a user label.
    dim, num_layers, num_heads, ffn_dim : int
        Width, blocks, attention heads (head_dim = dim / num_heads), FFN hidden width.
    in_channels, out_channels : int
        Latent channels in and out (48 for the Wan2.2 VAE).
    patch_size : (int, int, int)
        (t, h, w) patch of the ``patch_embedding`` Conv3d (kernel = stride).
    freq_dim : int
        Width of the sinusoidal timestep embedding.
    text_dim, text_len : int
        Text-encoder width and (padded) prompt length.
    eps : float
        Epsilon of every LayerNorm/RMSNorm.
    qk_norm, cross_attn_norm : bool
        RMSNorm on q and k (full width); LayerNorm with affine before cross-attention.
    rope_theta : float
        RoPE base.
    latent_size : (int, int)
        Latent (H, W) at the default resolution.
    vae : {"wan2.2", "patch"}
        Latent space: the Wan2.2 VAE or the weight-free ``PatchVAE`` pixel (un)shuffle.
    vae_stride : (int, int, int)
        Pixel→latent compression (t, h, w).
    text_encoder : str
        ``"umt5-xxl"`` or ``"all-minilm-l6-v2"``.
    ar : ARConfig
        Chunk geometry and KV-cache policy.
    """

    name: str = "custom"
    dim: int = 3072
    num_layers: int = 30
    num_heads: int = 24
    ffn_dim: int = 14336
    in_channels: int = 48
    out_channels: int = 48
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    latent_size: tuple[int, int] = (44, 80)
    vae: str = "wan2.2"
    vae_stride: tuple[int, int, int] = (4, 16, 16)
    text_encoder: str = "umt5-xxl"
    ar: ARConfig = field(default_factory=ARConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "latent_size", tuple(int(p) for p in self.latent_size))
        object.__setattr__(self, "vae_stride", tuple(int(p) for p in self.vae_stride))
        if isinstance(self.ar, dict):
            object.__setattr__(self, "ar", ARConfig(**self.ar))
        for name in ("dim", "num_layers", "num_heads", "ffn_dim", "in_channels", "out_channels",
                     "freq_dim", "text_dim", "text_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"ModelConfig.patch_size must be 3 positive ints (t, h, w), got {self.patch_size}")
        if len(self.latent_size) != 2:
            raise ValueError(f"ModelConfig.latent_size must be (H, W), got {self.latent_size}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"ModelConfig: dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 != 0 or self.head_dim < 6:
            raise ValueError(f"ModelConfig: head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
        if self.freq_dim % 2 != 0:
            raise ValueError(f"ModelConfig.freq_dim must be even, got {self.freq_dim}")
        lh, lw = self.latent_size
        if lh % self.patch_size[1] or lw % self.patch_size[2]:
            raise ValueError(
                f"ModelConfig.latent_size {self.latent_size} must be divisible by the spatial patch "
                f"{self.patch_size[1:]}"
            )
        if self.ar.chunk_frames % self.patch_size[0]:
            raise ValueError(
                f"ARConfig.chunk_frames {self.ar.chunk_frames} must be divisible by the temporal patch "
                f"{self.patch_size[0]}"
            )
        if self.vae not in ("wan2.2", "patch"):
            raise ValueError(f"ModelConfig.vae must be 'wan2.2' or 'patch', got {self.vae!r}")

    # ---- derived geometry -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Channels of head_dim rotated by the (t, h, w) RoPE tables: 44/42/42 for head_dim 128.

        head_dim/2 complex pairs are split as [c − 2·(c//3), c//3, c//3] (Wan's split)."""
        c = self.head_dim // 2
        return (2 * (c - 2 * (c // 3)), 2 * (c // 3), 2 * (c // 3))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (H', W') of one latent frame at the default resolution (22x40 for 5B)."""
        return (self.latent_size[0] // self.patch_size[1], self.latent_size[1] // self.patch_size[2])

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per latent frame at the default resolution (880 for 5B at 704x1280)."""
        h, w = self.grid_size
        return h * w

    @property
    def chunk_tokens(self) -> int:
        """Tokens per chunk at the default resolution (7040 for 5B)."""
        return self.tokens_per_frame * (self.ar.chunk_frames // self.patch_size[0])

    @property
    def cache_tokens(self) -> int:
        """KV-cache capacity in tokens, current chunk included (28,160 for 5B)."""
        return self.chunk_tokens * self.ar.max_chunks

    @property
    def resolution(self) -> tuple[int, int]:
        """Default pixel (H, W) (704x1280 for 5B)."""
        return (self.latent_size[0] * self.vae_stride[1], self.latent_size[1] * self.vae_stride[2])

    @property
    def patch_dim(self) -> int:
        """Input features of one patch (in_channels·pt·ph·pw)."""
        pt, ph, pw = self.patch_size
        return self.in_channels * pt * ph * pw

    def num_parameters(self) -> int:
        """Exact parameter count of :class:`longlive.model.CausalDiT` built from this config."""
        d, f = self.dim, self.ffn_dim
        lin = lambda i, o: i * o + o
        attn = 4 * lin(d, d) + (2 * d if self.qk_norm else 0)
        block = 2 * attn + lin(d, f) + lin(f, d) + 6 * d + (2 * d if self.cross_attn_norm else 0)
        embed = (
            self.patch_dim * d + d
            + lin(self.text_dim, d) + lin(d, d)
            + lin(self.freq_dim, d) + lin(d, d)
            + lin(d, 6 * d)
        )
        head = lin(d, self.out_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]) + 2 * d
        return embed + self.num_layers * block + head

    # ---- construction -----------------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (``ar`` may be a dict of ARConfig fields to change)."""
        if isinstance(changes.get("ar"), dict):
            changes["ar"] = dataclasses.replace(self.ar, **changes["ar"])
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        """The preset ``name``: one of ``MODEL_PRESETS`` (``"tiny"``, ``"wan2.2-ti2v-5b"``, ``"small-1.3b"``)."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(MODEL_PRESETS)}")
        return MODEL_PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples) that ``yaml.safe_dump`` / ``json`` can write."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; ``preset: <name>`` starts from that preset and overrides the rest.

        Raises
        ------
        ValueError
            Unknown keys (named together with the valid ones) or invalid values.
        """
        data = dict(data)
        preset = data.pop("preset", None)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(valid)}")
        if "ar" in data and isinstance(data["ar"], dict):
            ar_valid = {f.name for f in dataclasses.fields(ARConfig)}
            bad = sorted(set(data["ar"]) - ar_valid)
            if bad:
                raise ValueError(f"unknown ARConfig keys {bad}; valid keys: {sorted(ar_valid)}")
        if preset is not None:
            base = cls.from_name(preset)
            data.setdefault("name", preset)
            return base.replace(**data)
        if isinstance(data.get("ar"), dict):
            data["ar"] = ARConfig(**data["ar"])
        return cls(**data)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> ModelConfig:
        """Load from a YAML file path or a YAML string (``yaml.safe_load``); see :meth:`from_dict`.

        A top-level ``model:`` section is used when present."""
        import yaml

        text = str(source)
        if os.path.exists(text):
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        data = yaml.safe_load(text)
        if isinstance(data, str):
            return cls.from_name(data)
        if not isinstance(data, dict):
            raise TypeError(f"model config YAML must be a mapping or a preset name, got {type(data).__name__}")
        if "model" in data and isinstance(data["model"], (dict, str)):
            data = data["model"]
            if isinstance(data, str):
                return cls.from_name(data)
        return cls.from_dict(data)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "wan2.2-ti2v-5b": ModelConfig(
        name="wan2.2-ti2v-5b", dim=3072, num_layers=30, num_heads=24, ffn_dim=14336,
        in_channels=48, out_channels=48, patch_size=(1, 2, 2), freq_dim=256, text_dim=4096, text_len=512,
        latent_size=(44, 80), vae="wan2.2", vae_stride=(4, 16, 16), text_encoder="umt5-xxl",
        ar=ARConfig(chunk_frames=8, max_chunks=4, sink_chunks=1, multi_shot_rope_offset=8),
    ),
    "small-1.3b": ModelConfig(
        name="small-1.3b", dim=1536, num_layers=30, num_heads=12, ffn_dim=8960,
        in_channels=48, out_channels=48, patch_size=(1, 2, 2), freq_dim=256, text_dim=4096, text_len=512,
        latent_size=(44, 80), vae="wan2.2", vae_stride=(4, 16, 16), text_encoder="umt5-xxl",
        ar=ARConfig(chunk_frames=8, max_chunks=4, sink_chunks=1, multi_shot_rope_offset=8),
    ),
    "tiny": ModelConfig(
        name="tiny", dim=384, num_layers=4, num_heads=6, ffn_dim=1536,
        in_channels=192, out_channels=192, patch_size=(1, 1, 1), freq_dim=256, text_dim=384, text_len=32,
        latent_size=(16, 16), vae="patch", vae_stride=(1, 8, 8), text_encoder="all-minilm-l6-v2",
        ar=ARConfig(chunk_frames=4, max_chunks=4, sink_chunks=1, multi_shot_rope_offset=4, kv_storage="bf16"),
    ),
}
