"""``PatchVAE``: a weight-free, exactly invertible pixel (un)shuffle "autoencoder" for the tiny model.

Each ``p x p`` pixel patch of each frame becomes one latent position with ``3 p^2`` channels
(``torch.nn.functional.pixel_unshuffle`` order: channel ``c p^2 + i p + j`` holds colour ``c`` at
row offset ``i``, column offset ``j``). Temporal stride 1: one latent frame per video frame. Latents
are normalised as ``(x - mean) / std`` with configurable per-channel or scalar constants; with the
defaults (0, 1) — or any power-of-two ``std`` with ``mean = 0`` — the round trip is bit-exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from longlive.model.vae import StreamDecoder, StreamEncoder, VideoVAE

__all__ = ["PatchVAE"]


class _PatchStreamDecoder(StreamDecoder):
    def _decode(self, latents: torch.Tensor, first: bool) -> torch.Tensor:
        video = self.vae._unpatchify(self.vae.denormalize(latents))
        return video.clamp(-1.0, 1.0) if self.vae.clamp else video


class _PatchStreamEncoder(StreamEncoder):
    def _encode(self, video: torch.Tensor, first: bool) -> torch.Tensor:
        return self.vae.normalize(self.vae._patchify(video))


class PatchVAE(VideoVAE):
    """Pixel (un)shuffle over ``patch x patch`` squares: ``[B, 3, T, H, W] <-> [B, 3 p^2, T, H/p, W/p]``.

    Parameters
    ----------
    patch : int
        Spatial patch size ``p`` (default 8 → 192 latent channels, spatial stride 8).
    mean, std : float or sequence of ``3 p^2`` floats
        Latent normalisation: ``latents = (unshuffled - mean) / std``. Defaults 0 and 1 (identity).
    clamp : bool
        Clamp decoded video to ``[-1, 1]`` (default False, so that any encoded video round-trips
        exactly; the DiT's outputs can overshoot, so inference may want True).

    Raises
    ------
    ValueError
        ``patch < 1``, constants of the wrong length, or a non-positive ``std``.
    """

    temporal_stride = 1

    def __init__(self, patch: int = 8, *, mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0, clamp: bool = False):
        super().__init__()
        if int(patch) != patch or patch < 1:
            raise ValueError(f"patch must be a positive integer, got {patch!r}")
        self.patch = int(patch)
        self.spatial_stride = self.patch
        self.latent_channels = 3 * self.patch**2
        self.clamp = bool(clamp)
        c = self.latent_channels

        def channel_vector(v, name):
            t = torch.as_tensor(v, dtype=torch.float32).flatten()
            if t.numel() == 1:
                t = t.expand(c).clone()
            if t.numel() != c:
                raise ValueError(f"{name} must be a scalar or {c} values (one per latent channel), "
                                 f"got {t.numel()}")
            return t.view(1, c, 1, 1, 1)

        mean_t = channel_vector(mean, "mean")
        std_t = channel_vector(std, "std")
        if not bool((std_t > 0).all()):
            raise ValueError("std must be positive")
        self.register_buffer("latent_mean", mean_t, persistent=False)
        self.register_buffer("latent_std", std_t, persistent=False)
        self._identity = bool((mean_t == 0).all() and (std_t == 1).all())

    def extra_repr(self) -> str:
        return f"patch={self.patch}, latent_channels={self.latent_channels}, clamp={self.clamp}"

    def _patchify(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        x = F.pixel_unshuffle(frames, self.patch)
        return x.view(b, t, *x.shape[1:]).transpose(1, 2)

    def _unpatchify(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * t, c, h, w)
        x = F.pixel_shuffle(frames, self.patch)
        return x.view(b, t, *x.shape[1:]).transpose(1, 2).contiguous()

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        if self._identity:
            return raw.contiguous()
        mean = self.latent_mean.to(raw.device, raw.dtype)
        std = self.latent_std.to(raw.device, raw.dtype)
        return ((raw - mean) / std).contiguous()

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        if self._identity:
            return latents
        mean = self.latent_mean.to(latents.device, latents.dtype)
        std = self.latent_std.to(latents.device, latents.dtype)
        return latents * std + mean

    def stream_decoder(self) -> StreamDecoder:
        """Stateless decoder with the shared interface (temporal stride 1: ``T'`` latents → ``T'`` frames)."""
        return _PatchStreamDecoder(self)

    def stream_encoder(self) -> StreamEncoder:
        return _PatchStreamEncoder(self)
