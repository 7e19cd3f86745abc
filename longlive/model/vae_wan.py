"""``WanVAE``: the Wan2.2 video VAE (z 48, 4x16x16 compression) with streaming encode and decode.

Architecture (facts from the public Wan2.2 ``wan/modules/vae2_2.py``; ``shared/docs/longlive-spec.md``
§1.2). Parameter names and shapes load the official ``Wan2.2_VAE.pth`` state dict unchanged.

- Input ``[B, 3, T, H, W]`` is 2x2 patchified to 12 channels (channel ``4 c + 2 dw + dh``: colour,
  column offset, row offset), then ``encoder`` (causal 3D convs; dims ``160 [1, 1, 2, 4, 4]``, 2 res
  blocks per stage, spatial 2x downsample after stages 0–2, temporal 2x after stages 1–2, each stage
  with a parameter-free averaging shortcut; mid block ResBlock–per-frame attention–ResBlock; head to
  ``2 z`` channels), ``conv1`` (1x1x1), ``mu`` = first ``z`` channels. ``decoder``: ``conv2`` (1x1x1),
  dims ``256 [4, 4, 4, 2, 1]``, 3 res blocks per stage, upsample 2x in space after stages 0–2 and in
  time after stages 0–1 (duplicating shortcut), head to 12 channels, 2x2 un-patchify.
- Every ``k_t = 3`` causal conv pads two frames on the left and none on the right. In streaming mode
  it keeps the last 2 input frames of the previous step; the stride-2 ``time_conv`` of a temporal
  downsample keeps 1 frame and passes the very first frame through; the ``time_conv`` of a temporal
  upsample skips the very first frame (which therefore is not duplicated in time).
- The encoder runs frame 0 alone, then groups of 4 frames; the decoder runs latent 0 alone (→ 1
  frame), then one latent at a time (→ 4 frames each). Whole-video ``encode``/``decode`` are one
  stream over the whole tensor, so ``stream_decoder().decode_chunk`` over any chunking is bit-identical
  to ``decode`` (the stock Wan2.2 VAE has no incremental decode; spec §7 "Gap").
- Latents are normalised per channel: ``(mu - mean) * (1 / std)``; decode ``z / (1 / std) + mean``
  (the official arithmetic), 48 constants each. Decoded video is clamped to ``[-1, 1]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from longlive.model.vae import (
    StreamDecoder,
    StreamEncoder,
    VideoVAE,
    check_state_dict,
    load_state_dict_file,
)

__all__ = ["LIGHTVAE_PRUNING", "WAN22_LATENT_MEAN", "WAN22_LATENT_STD", "WanVAE", "WanVAEConfig"]

# Per-channel statistics of the Wan2.2 VAE latent (official constants, WanVAEWrapper / Wan2_2_VAE).
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
PATCH = 2  # the checkpoint's first/last convs are fixed at 3·2·2 = 12 channels
LIGHTVAE_PRUNING = 0.75  # MG-LightVAE's decoder channel pruning (spec §1.2: its fallback rate)
CHECKPOINT_NAMES = ("Wan2.2_VAE.safetensors", "Wan2.2_VAE.pth")


@dataclass(frozen=True)
class WanVAEConfig:
    """Widths of the Wan2.2 VAE. Defaults = the official model (~705 M parameters).

    Reduced ``enc_dim`` / ``dec_dim`` keep the exact structure (for tests and tiny experiments).
    ``enc_dim * factor`` must divide evenly into the averaging/duplicating shortcuts, which holds for
    any positive widths with the default ``dim_mult``.
    """

    z_dim: int = 48
    enc_dim: int = 160
    dec_dim: int = 256
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = field(default=(False, True, True))

    def __post_init__(self):
        for name in ("z_dim", "enc_dim", "dec_dim", "num_res_blocks"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"WanVAEConfig.{name} must be a positive int, got {v!r}")
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                             f"downsampling stage), got {self.temporal_downsample}")

    @classmethod
    def lightvae(cls, pruning: float = LIGHTVAE_PRUNING) -> WanVAEConfig:
        """The LightVAE widths: the Wan2.2 VAE with its decoder channel-pruned by ``pruning``.

        Matrix-Game-3.0's ``MG-LightVAE`` (the decoder behind LongLive-2.0's streaming decode, spec
        §1.2 and §7) keeps the Wan2.2 structure and prunes the decoder's channels; its pruning rate is
        ``1 − conv_in.out / 1024`` (default 0.75, so the decoder is ``64 [4, 4, 4, 2, 1]`` wide and its
        convolutions cost ~1/16 of the full decoder's). The encoder keeps the full widths.

        Raises
        ------
        TypeError
            ``pruning`` not a number.
        ValueError
            ``pruning`` outside [0, 1) or not leaving an integer decoder width (256 · (1 − pruning)).
        """
        if isinstance(pruning, bool) or not isinstance(pruning, (int, float)):
            raise TypeError(f"pruning must be a float in [0, 1), got {type(pruning).__name__} {pruning!r}")
        width = 256 * (1.0 - float(pruning))
        if not 0.0 <= float(pruning) < 1.0 or abs(width - round(width)) > 1e-9 or round(width) < 1:
            raise ValueError(f"pruning must be in [0, 1) with 256 * (1 - pruning) an integer, got {pruning!r}")
        return cls(dec_dim=round(width))

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return PATCH * 2 ** (len(self.dim_mult) - 1)


class CausalCache:
    """Streaming state: for each causal conv, the input frames it needs from the previous step."""

    def __init__(self):
        self._frames: dict[nn.Module, torch.Tensor] = {}

    def get(self, module: nn.Module) -> torch.Tensor | None:
        return self._frames.get(module)

    def put(self, module: nn.Module, frames: torch.Tensor) -> None:
        self._frames[module] = frames

    def clear(self) -> None:
        self._frames.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._frames.values())


class CausalConv3d(nn.Conv3d):
    """3D conv, zero 'same' padding in space, ``context = k_t - 1`` zero frames on the left in time.

    With a ``CausalCache`` the left context comes from the previous step's last input frames (zeros
    at the start of the stream), so a stream of steps computes the same as one call on the whole clip.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, *, causal_context: int | None = None):
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        super().__init__(in_dim, out_dim, (kt, kh, kw), stride=stride, padding=(0, kh // 2, kw // 2))
        self.context = kt - 1 if causal_context is None else causal_context

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:  # [B, C, T, H, W]
        if self.context == 0:
            return super().forward(x)
        prev = cache.get(self) if cache is not None else None
        if prev is None:
            prev = x.new_zeros(x.shape[0], x.shape[1], self.context, x.shape[3], x.shape[4])
        x = torch.cat([prev, x], dim=2)
        if cache is not None:
            cache.put(self, x[:, :, -self.context:].clone())
        return super().forward(x)


class RMSNorm(nn.Module):
    """``x / ||x||_channels * sqrt(C) * gamma`` over dim 1 (parameter ``gamma`` of shape [C, 1, 1(, 1)])."""

    def __init__(self, dim: int, *, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D op to every frame of ``[B, C, T, H, W]``."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """RMSNorm–SiLU–conv–RMSNorm–SiLU–(dropout)–conv plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        r = self.residual
        h = r[2](r[1](r[0](x)), cache)
        h = r[6](r[5](r[4](r[3](h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the ``H x W`` positions of each frame separately."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _frame(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W]
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).flatten(2).transpose(1, 2)  # [N, HW, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # [N, 1, HW, C] each
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return self.proj(o.transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _per_frame(self._frame, x)


class Resample(nn.Module):
    """Spatial 2x down/upsample per frame, optionally with a temporal 2x ``time_conv``."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":  # one frame → two: 2·dim channels, interleaved in time
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":  # stride 2 over [last frame of the previous step, this step]
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), causal_context=0)

    def forward(self, x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
        if self.mode == "upsample3d" and not first:
            y = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            b, c2, t, h, w = y.shape
            x = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            last = x[:, :, -1:].clone()
            if not first:
                x = self.time_conv(torch.cat([cache.get(self), x], dim=2))
            cache.put(self, last)
        return x


def _avg_down(x: torch.Tensor, out_dim: int, ft: int, fs: int) -> torch.Tensor:
    """Parameter-free shortcut: fold ``ft x fs x fs`` neighbours into channels, average groups to ``out_dim``.

    Time is zero-padded on the left to a multiple of ``ft`` (frame 0 alone → one output frame).
    """
    if ft == 1 and fs == 1 and x.shape[1] == out_dim:
        return x
    pad_t = (-x.shape[2]) % ft
    if pad_t:
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, out_dim, c * ft * fs * fs // out_dim, t // ft, h // fs, w // fs)
    return x.mean(dim=2)


def _dup_up(x: torch.Tensor, out_dim: int, ft: int, fs: int, first: bool) -> torch.Tensor:
    """Parameter-free shortcut: repeat channels, unfold them to ``ft x fs x fs`` neighbours.

    On the first step (latent 0) the first ``ft - 1`` frames are dropped (1 frame in, 1 frame out).
    """
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(out_dim * ft * fs * fs // c, dim=1)
    x = x.view(b, out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, out_dim, t * ft, h * fs, w * fs)
    return x[:, :, ft - 1:] if first else x


class DownStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res: int, down_t: bool, down_s: bool):
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, 2 if down_t else 1, 2 if down_s else 1
        if (in_dim * self.ft * self.fs**2) % out_dim:
            raise ValueError(f"averaging shortcut needs {out_dim} | {in_dim}·{self.ft * self.fs**2}")
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res)]
        if down_s:
            blocks.append(Resample(out_dim, "downsample3d" if down_t else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
        h = x
        for block in self.downsamples:
            h = block(h, cache, first) if isinstance(block, Resample) else block(h, cache)
        return h + _avg_down(x, self.out_dim, self.ft, self.fs)


class UpStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res: int, up_t: bool, up_s: bool):
        super().__init__()
        self.out_dim, self.ft, self.fs, self.up_s = out_dim, 2 if up_t else 1, 2 if up_s else 1, up_s
        if up_s and (out_dim * self.ft * self.fs**2) % in_dim:
            raise ValueError(f"duplicating shortcut needs {in_dim} | {out_dim}·{self.ft * self.fs**2}")
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res)]
        if up_s:
            blocks.append(Resample(out_dim, "upsample3d" if up_t else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
        h = x
        for block in self.upsamples:
            h = block(h, cache, first) if isinstance(block, Resample) else block(h, cache)
        if not self.up_s:
            return h
        return h + _dup_up(x, self.out_dim, self.ft, self.fs, first)


class _Middle(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x, cache)), cache)


class _Head(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x)), cache)


class Encoder(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = [cfg.enc_dim * m for m in (1, *cfg.dim_mult)]
        n = len(cfg.dim_mult)
        self.conv1 = CausalConv3d(3 * PATCH**2, dims[0], 3)
        self.downsamples = nn.Sequential(*[
            DownStage(dims[i], dims[i + 1], cfg.num_res_blocks,
                      down_t=i < n - 1 and cfg.temporal_downsample[i], down_s=i < n - 1)
            for i in range(n)
        ])
        self.middle = _Middle(dims[-1])
        self.head = _Head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
        x = self.conv1(x, cache)
        for stage in self.downsamples:
            x = stage(x, cache, first)
        return self.head(self.middle(x, cache), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dec_dim * m for m in (mult[-1], *mult[::-1])]
        up_t = cfg.temporal_downsample[::-1]
        n = len(mult)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        self.middle = _Middle(dims[0])
        self.upsamples = nn.Sequential(*[
            UpStage(dims[i], dims[i + 1], cfg.num_res_blocks + 1, up_t=i < n - 1 and up_t[i], up_s=i < n - 1)
            for i in range(n)
        ])
        self.head = _Head(dims[-1], 3 * PATCH**2)

    def forward(self, z: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
        x = self.middle(self.conv1(z, cache), cache)
        for stage in self.upsamples:
            x = stage(x, cache, first)
        return self.head(x, cache)


def _patchify(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, 2h, 2w] → [B, 4C, T, h, w], channel 4c + 2·(column offset) + (row offset)."""
    b, c, t, h, w = video.shape
    x = video.view(b, c, t, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * PATCH**2, t, h // PATCH, w // PATCH)


def _unpatchify(x: torch.Tensor) -> torch.Tensor:
    b, c4, t, h, w = x.shape
    x = x.view(b, c4 // PATCH**2, PATCH, PATCH, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, c4 // PATCH**2, t, h * PATCH, w * PATCH)


class _WanStreamDecoder(StreamDecoder):
    def __init__(self, vae: WanVAE):
        super().__init__(vae)
        self.cache = CausalCache()

    def _reset_state(self) -> None:
        self.cache.clear()

    def _decode(self, latents: torch.Tensor, first: bool) -> torch.Tensor:
        vae: WanVAE = self.vae
        z = latents.to(vae.dtype)
        steps = [(0, 1)] if first else []
        start, n = (1 if first else 0), vae.decode_latents_per_step
        steps += [(i, min(i + n, z.shape[2])) for i in range(start, z.shape[2], n)]
        outs = []
        for a, b in steps:
            x = vae.conv2(vae.denormalize(z[:, :, a:b]))
            outs.append(vae.decoder(x, self.cache, first and a == 0))
        video = _unpatchify(torch.cat(outs, dim=2) if len(outs) > 1 else outs[0])
        return video.clamp_(-1.0, 1.0)


class _WanStreamEncoder(StreamEncoder):
    def __init__(self, vae: WanVAE):
        super().__init__(vae)
        self.cache = CausalCache()

    def _reset_state(self) -> None:
        self.cache.clear()

    def _encode(self, video: torch.Tensor, first: bool) -> torch.Tensor:
        vae: WanVAE = self.vae
        x = _patchify(video.to(vae.dtype))
        s = vae.temporal_stride
        steps = [(0, 1)] if first else []
        start, n = (1 if first else 0), s * vae.encode_groups_per_step
        steps += [(i, min(i + n, x.shape[2])) for i in range(start, x.shape[2], n)]
        outs = []
        for a, b in steps:
            h = vae.conv1(vae.encoder(x[:, :, a:b], self.cache, first and a == 0))
            outs.append(vae.normalize(h[:, : vae.latent_channels]))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


class WanVAE(VideoVAE):
    """The Wan2.2 VAE (see the module docstring) behind the ``VideoVAE`` interface.

    Parameters
    ----------
    config : WanVAEConfig, optional
        Widths; the default is the official model. Weights are randomly initialised: use
        ``from_pretrained`` to load ``Wan2.2_VAE.pth``.
    decode_latents_per_step : int
        Latent frames per decoder step after latent 0 (default 1, as the official code: peak memory of
        4 full-resolution frames of 256 channels ≈ 3.7 GB in fp32 at 704x1280). Larger values are
        faster on big GPUs; the result agrees to fp32 rounding.
    encode_groups_per_step : int
        Groups of 4 frames per encoder step after frame 0 (default 1, as the official code).

    Notes
    -----
    State dict keys: ``encoder.*``, ``conv1.*``, ``conv2.*``, ``decoder.*`` exactly as in
    ``Wan2.2_VAE.pth``; the latent statistics live outside the state dict (``latent_stats``).
    """

    def __init__(self, config: WanVAEConfig | None = None, *, decode_latents_per_step: int = 1,
                 encode_groups_per_step: int = 1):
        super().__init__()
        cfg = config or WanVAEConfig()
        for name, v in (("decode_latents_per_step", decode_latents_per_step),
                        ("encode_groups_per_step", encode_groups_per_step)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.config = cfg
        self.latent_channels = cfg.z_dim
        self.temporal_stride = cfg.temporal_stride
        self.spatial_stride = cfg.spatial_stride
        self.decode_latents_per_step = decode_latents_per_step
        self.encode_groups_per_step = encode_groups_per_step
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        self.reset_latent_stats()

    def reset_latent_stats(self, mean=None, std=None) -> None:
        """Set the per-channel latent statistics: the official constants when ``z_dim == 48``, else 0 / 1.

        They are kept in fp32 outside the state dict (and outside ``.to(dtype)``), so a bf16 VAE still
        normalises with the exact constants.
        """
        z = self.config.z_dim
        mean = WAN22_LATENT_MEAN if mean is None and z == len(WAN22_LATENT_MEAN) else mean
        std = WAN22_LATENT_STD if std is None and z == len(WAN22_LATENT_STD) else std
        mean_t = torch.zeros(z) if mean is None else torch.tensor(mean, dtype=torch.float32, device="cpu")
        std_t = torch.ones(z) if std is None else torch.tensor(std, dtype=torch.float32, device="cpu")
        if mean_t.shape != (z,) or std_t.shape != (z,) or not bool((std_t > 0).all()):
            raise ValueError(f"latent mean/std must be {z} values each with std > 0")
        self._latent_stats_cpu = (mean_t.view(1, z, 1, 1, 1), (1.0 / std_t).view(1, z, 1, 1, 1))
        self._latent_stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def latent_stats(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, 1 / std)`` as fp32 ``[1, z, 1, 1, 1]`` tensors on ``device``."""
        device = torch.device(device)
        if device not in self._latent_stats_on:
            self._latent_stats_on[device] = tuple(t.to(device) for t in self._latent_stats_cpu)
        return self._latent_stats_on[device]

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """``(mu - mean) * (1 / std)`` per channel, computed in fp32, returned in ``raw.dtype``."""
        mean, inv_std = self.latent_stats(raw.device)
        return ((raw.float() - mean) * inv_std).to(raw.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """``z / (1 / std) + mean`` per channel, computed in fp32, returned in ``latents.dtype``."""
        mean, inv_std = self.latent_stats(latents.device)
        return (latents.float() / inv_std + mean).to(latents.dtype)

    def stream_decoder(self) -> StreamDecoder:
        """Incremental decoder keeping every causal conv's last frames across ``decode_chunk`` calls."""
        return _WanStreamDecoder(self)

    def stream_encoder(self) -> StreamEncoder:
        """Incremental encoder (first chunk ``1 + 4k`` frames, later chunks ``4k`` frames)."""
        return _WanStreamEncoder(self)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", **kwargs) -> WanVAE:
        """Load ``Wan2.2_VAE.pth`` (or a ``.safetensors`` with the same keys) from a file or directory.

        Widths are read from the checkpoint's shapes, then every key and shape must match exactly.
        The file is read with ``torch.load(weights_only=True)`` / safetensors only. The module is
        returned in ``eval()`` mode with ``requires_grad=False``.

        Raises
        ------
        FileNotFoundError
            No checkpoint at ``path`` (a directory is searched for ``Wan2.2_VAE.pth`` /
            ``Wan2.2_VAE.safetensors``).
        StateDictMismatchError
            Missing, unexpected or mis-shaped keys, with a hint when the file is recognisably another
            VAE (Wan2.1 with 3-channel input, or the diffusers ``AutoencoderKLWan`` layout).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            found = [os.path.join(path, n) for n in CHECKPOINT_NAMES if os.path.isfile(os.path.join(path, n))]
            if not found:
                raise FileNotFoundError(f"no {' or '.join(CHECKPOINT_NAMES)} in directory {path!r}")
            path = found[0]
        sd = load_state_dict_file(path)
        cfg, hint = _infer_config(sd)
        with torch.device("meta"):
            model = cls(cfg, **kwargs)
        check_state_dict(model, sd, f"WanVAE {cfg}", hint)
        model.load_state_dict(sd, strict=True, assign=True)
        model = model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)


def _infer_config(sd: dict[str, torch.Tensor]) -> tuple[WanVAEConfig, str]:
    hint = ""
    try:
        enc_in = sd["encoder.conv1.weight"].shape
        cfg = WanVAEConfig(z_dim=int(sd["conv2.weight"].shape[0]), enc_dim=int(enc_in[0]),
                           dec_dim=int(sd["decoder.head.2.weight"].shape[1]))
        if enc_in[1] != 3 * PATCH**2:
            hint = (f"encoder.conv1 takes {enc_in[1]} input channels, the Wan2.2 VAE takes 12 (2x2-patchified "
                    "RGB); a 3-channel input with z_dim 16 is the Wan2.1 VAE, which this class does not load")
    except KeyError:
        cfg = WanVAEConfig()
        if any(k.startswith(("encoder.down_blocks", "decoder.up_blocks", "quant_conv")) for k in sd):
            hint = "keys look like the diffusers AutoencoderKLWan layout; pass the original Wan2.2_VAE.pth"
    return cfg, hint
