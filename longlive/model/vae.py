"""Video autoencoders behind one interface: ``encode``, ``decode`` and a streaming decoder.

Conventions (every VAE here):

- video: float tensor ``[B, 3, T, H, W]`` with values in ``[-1, 1]`` (pixels ``/ 127.5 - 1``), RGB.
- latents: float tensor ``[B, C, T', H', W']``, **normalised** (what the DiT consumes and produces):
  ``encode`` returns normalised latents and ``decode`` takes them. ``normalize`` / ``denormalize``
  convert between the autoencoder's raw latent and the normalised one.
- dtype: ``WanVAE`` casts inputs to its parameter dtype and returns that dtype (fp32 by default, as
  released; bf16 works); ``PatchVAE`` keeps the input dtype.
- time: ``T = 1 + s (T' - 1)`` with ``s = temporal_stride`` (the 4k+1 rule of the Wan2.2 VAE; with
  ``s = 1`` simply ``T = T'``). Space: ``H = spatial_stride * H'``, same for ``W``.
- streaming decode: ``stream_decoder()`` returns a ``StreamDecoder`` whose ``decode_chunk`` takes
  consecutive latent chunks; the first chunk of ``T'`` latents yields ``1 + s (T' - 1)`` frames and
  every later chunk ``s T'`` frames, and the concatenation equals ``decode`` of the whole latent.
  ``stream_encoder()`` is the mirror image (first chunk ``1 + s k`` frames, later ``s k``).

Implementations: ``WanVAE`` (``longlive/model/vae_wan.py``, the Wan2.2 VAE, spec §1.2 and §7) and
``PatchVAE`` (``longlive/model/vae_patch.py``, weight-free pixel (un)shuffle for the tiny model).
Source: ``shared/docs/longlive-spec.md`` §1.2, §5.3, §7.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

__all__ = [
    "PatchVAE",
    "StateDictMismatchError",
    "StreamDecoder",
    "StreamEncoder",
    "VideoVAE",
    "WanVAE",
    "WanVAEConfig",
    "load_state_dict_file",
    "load_vae",
]


class StateDictMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the module it is loaded into.

    Attributes
    ----------
    missing, unexpected : list of str
        Keys the module needs but the file lacks / keys the file has but the module does not know.
    mismatched : list of (str, tuple, tuple)
        ``(key, shape in file, shape expected)``.
    """

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)

        def show(items, n=12):
            items = [str(i) for i in items]
            more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(items[:n]) + more

        lines = [f"checkpoint does not fit {what}:"]
        if self.missing:
            lines.append(f"  {len(self.missing)} missing keys: {show(self.missing)}")
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected keys: {show(self.unexpected)}")
        if self.mismatched:
            lines.append(
                f"  {len(self.mismatched)} shape mismatches (key: file vs expected): "
                + show(f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched)
            )
        if hint:
            lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))


def load_state_dict_file(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
                         ) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a ``.safetensors`` or torch file, safely.

    ``.safetensors`` files go through ``safetensors.torch.load_file``; anything else through
    ``torch.load(weights_only=True, mmap=True)`` (no arbitrary unpickling). A dict wrapping the
    weights under ``"state_dict"`` / ``"model"`` / ``"module"`` is unwrapped.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file holds something other than a mapping of names to tensors, or cannot be read with
        ``weights_only=True`` (convert it to safetensors in a trusted environment).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd: Any = load_file(path, device=str(map_location))
    else:
        try:
            sd = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            try:
                sd = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:
                raise ValueError(f"cannot read {path!r} with torch.load(weights_only=True): {exc}. "
                                 "Convert it to .safetensors in a trusted environment.") from exc
        except Exception as exc:
            raise ValueError(f"cannot read {path!r} with torch.load(weights_only=True): {exc}. "
                             "Convert it to .safetensors in a trusted environment.") from exc
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path!r} does not hold a flat mapping of parameter names to tensors")
    return sd


def check_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str, hint: str = ""
                     ) -> None:
    """Raise ``StateDictMismatchError`` unless ``state_dict`` has exactly ``module``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = expected.keys() - got.keys()
    unexpected = got.keys() - expected.keys()
    mismatched = [(k, got[k], expected[k]) for k in expected.keys() & got.keys() if got[k] != expected[k]]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(what, missing, unexpected, mismatched, hint)


def _check_video_tensor(x: Any, name: str, channels: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 5:
        raise ValueError(f"{name} must be 5-D [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} must have a non-empty batch and time axis, got shape {tuple(x.shape)}")


class StreamDecoder:
    """Chunk-by-chunk decoder keeping the causal state across calls (see module docstring).

    Use ``VideoVAE.stream_decoder()`` to make one. ``decode_chunk`` of consecutive chunks
    ``z[:, :, a:b]`` concatenated along time equals ``vae.decode(z)``.

    Attributes
    ----------
    latents_seen, frames_emitted : int
        Totals so far (``frames_emitted == vae.latents_to_frames(latents_seen)``).
    """

    def __init__(self, vae: VideoVAE):
        self.vae = vae
        self.latents_seen = 0
        self.frames_emitted = 0
        self._geometry: tuple | None = None

    def reset(self) -> None:
        """Forget the state; the next chunk is a first chunk again."""
        self.latents_seen = 0
        self.frames_emitted = 0
        self._geometry = None
        self._reset_state()

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent chunk.

        Parameters
        ----------
        latents : torch.Tensor
            ``[B, C, T', H', W']`` normalised latents; ``B, C, H', W'`` (and device) must stay the
            same over the stream.

        Returns
        -------
        torch.Tensor
            ``[B, 3, F, 16 H', 16 W']`` (stride of the VAE) in ``[-1, 1]``; ``F = 1 + s (T' - 1)``
            for the first chunk, ``s T'`` after it.

        Raises
        ------
        TypeError, ValueError
            Not a float 5-D tensor with ``latent_channels`` channels, or a shape other than the
            first chunk's.
        """
        vae = self.vae
        _check_video_tensor(latents, "latents", vae.latent_channels)
        vae._check_latent_size(latents)
        geometry = (latents.shape[0], latents.shape[3], latents.shape[4], latents.device)
        if self._geometry is not None and geometry != self._geometry:
            raise ValueError(
                f"latents chunk must keep batch, height, width and device of the stream "
                f"(B, H', W', device) = {self._geometry}, got {geometry}"
            )
        first = self.latents_seen == 0
        frames = self._decode(latents, first)
        self._geometry = geometry
        self.latents_seen += latents.shape[2]
        self.frames_emitted += frames.shape[2]
        return frames

    def _decode(self, latents: torch.Tensor, first: bool) -> torch.Tensor:
        raise NotImplementedError

    def _reset_state(self) -> None:
        pass


class StreamEncoder:
    """Chunk-by-chunk encoder: first chunk ``1 + s k`` frames, later chunks ``s k`` frames (k ≥ 1).

    Concatenating the latents of consecutive chunks equals ``vae.encode`` of the whole video.
    """

    def __init__(self, vae: VideoVAE):
        self.vae = vae
        self.frames_seen = 0
        self.latents_emitted = 0
        self._geometry: tuple | None = None

    def reset(self) -> None:
        self.frames_seen = 0
        self.latents_emitted = 0
        self._geometry = None
        self._reset_state()

    def encode_chunk(self, video: torch.Tensor) -> torch.Tensor:
        """Encode the next ``[B, 3, T, H, W]`` chunk of video in ``[-1, 1]``; returns normalised latents.

        Raises
        ------
        ValueError
            ``T`` breaks the chunk rule (first chunk ``1 + s k``, later ``s k``), or the shape changed.
        """
        vae = self.vae
        _check_video_tensor(video, "video", 3)
        vae._check_video_size(video)
        t, s = video.shape[2], vae.temporal_stride
        first = self.frames_seen == 0
        if first and (t - 1) % s != 0:
            raise ValueError(f"first video chunk must have 1 + {s}k frames, got T={t} "
                             f"(nearest valid: {1 + s * ((t - 1) // s)} or {1 + s * ((t - 1) // s + 1)})")
        if not first and t % s != 0:
            raise ValueError(f"later video chunks must have a multiple of {s} frames, got T={t}")
        geometry = (video.shape[0], video.shape[3], video.shape[4], video.device)
        if self._geometry is not None and geometry != self._geometry:
            raise ValueError(f"video chunk must keep (B, H, W, device) = {self._geometry}, got {geometry}")
        latents = self._encode(video, first)
        self._geometry = geometry
        self.frames_seen += t
        self.latents_emitted += latents.shape[2]
        return latents

    def _encode(self, video: torch.Tensor, first: bool) -> torch.Tensor:
        raise NotImplementedError

    def _reset_state(self) -> None:
        pass


class VideoVAE(nn.Module):
    """Interface shared by the video autoencoders (see the module docstring for conventions).

    Subclasses set ``latent_channels``, ``temporal_stride``, ``spatial_stride`` and implement
    ``stream_decoder``, ``stream_encoder``, ``normalize``, ``denormalize``. ``encode`` / ``decode``
    run one stream over the whole tensor, so streaming and whole-video results agree by construction.
    """

    latent_channels: int
    temporal_stride: int
    spatial_stride: int

    # -- geometry -------------------------------------------------------------------------------
    def frames_to_latents(self, num_frames: int) -> int:
        """Latent frames for ``num_frames`` video frames (``1 + (T - 1) / s``).

        Raises
        ------
        ValueError
            ``num_frames`` is not ``1 + s k`` for an integer ``k ≥ 0``; the message names the
            nearest valid counts.
        """
        s = self.temporal_stride
        n = int(num_frames)
        if n < 1 or (n - 1) % s != 0:
            lo = 1 + s * max(0, (n - 1) // s)
            raise ValueError(f"num_frames must be 1 + {s}k (k >= 0), got {num_frames}; "
                             f"nearest valid: {lo} or {lo + s}")
        return 1 + (n - 1) // s

    def latents_to_frames(self, num_latents: int) -> int:
        """Video frames decoded from ``num_latents`` latent frames: ``1 + s (T' - 1)``."""
        n = int(num_latents)
        if n < 1:
            raise ValueError(f"num_latents must be >= 1, got {num_latents}")
        return 1 + self.temporal_stride * (n - 1)

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """``[B, C, T', H', W']`` that ``encode`` returns for a video of shape ``[B, 3, T, H, W]``."""
        b, _, t, h, w = video_shape
        s = self.spatial_stride
        if h % s or w % s:
            raise ValueError(f"video height and width must be multiples of {s}, got {h}x{w}")
        return (b, self.latent_channels, self.frames_to_latents(t), h // s, w // s)

    def _check_video_size(self, video: torch.Tensor) -> None:
        s = self.spatial_stride
        h, w = video.shape[3], video.shape[4]
        if h % s or w % s:
            raise ValueError(f"video height and width must be multiples of {s} (spatial stride), got "
                             f"{h}x{w}; nearest valid: {h // s * s}x{w // s * s}")

    def _check_latent_size(self, latents: torch.Tensor) -> None:
        if latents.shape[3] == 0 or latents.shape[4] == 0:
            raise ValueError(f"latents must have a non-empty height and width, got {tuple(latents.shape)}")

    # -- the interface --------------------------------------------------------------------------
    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def stream_encoder(self) -> StreamEncoder:
        raise NotImplementedError

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw autoencoder latent → normalised latent (what the DiT sees)."""
        raise NotImplementedError

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latent → raw autoencoder latent."""
        raise NotImplementedError

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a whole video.

        Parameters
        ----------
        video : torch.Tensor
            ``[B, 3, T, H, W]`` float in ``[-1, 1]``, ``T = 1 + s k``, ``H, W`` multiples of
            ``spatial_stride``.

        Returns
        -------
        torch.Tensor
            Normalised latents ``[B, latent_channels, 1 + k, H / spatial_stride, W / spatial_stride]``.

        Raises
        ------
        TypeError
            ``video`` is not a floating-point tensor.
        ValueError
            Wrong rank or channel count, ``T`` breaking the ``1 + s k`` rule (the expected counts are
            named), or ``H, W`` not multiples of the spatial stride.
        """
        _check_video_tensor(video, "video", 3)
        self.frames_to_latents(video.shape[2])  # raises with the expected counts
        return self.stream_encoder().encode_chunk(video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole latent ``[B, C, T', H', W']`` to video ``[B, 3, 1 + s (T' - 1), H, W]`` in [-1, 1]."""
        return self.stream_decoder().decode_chunk(latents)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(video))``."""
        return self.decode(self.encode(video))


def load_vae(name: str, path: str | os.PathLike | None = None, **kwargs: Any) -> VideoVAE:
    """Build a VAE by name, as named in ``longlive.config.ModelConfig.vae``.

    Parameters
    ----------
    name : {"wan2.2", "lightvae", "patch"}
        ``"wan2.2"``: ``WanVAE.from_pretrained(path, **kwargs)`` (random weights if ``path`` is None,
        for benchmarks and tests); ``"lightvae"``: the same class with the decoder channel-pruned as
        Matrix-Game-3.0's MG-LightVAE (``WanVAEConfig.lightvae(pruning)``, keyword ``pruning``,
        default 0.75; a ``path`` is loaded with its widths read from the file); ``"patch"``:
        ``PatchVAE(**kwargs)``.
    path : path-like, optional
        ``Wan2.2_VAE.pth`` / ``MG-LightVAE.pth`` (or a ``.safetensors`` of the same state dict), or a
        directory holding ``Wan2.2_VAE.*``.

    Raises
    ------
    ValueError
        Unknown ``name``, ``path`` given for the weight-free ``"patch"``, or a bad ``pruning``.
    """
    key = name.lower().replace("_", "-")
    light = key in ("lightvae", "light-vae", "mg-lightvae", "light")
    if key in ("wan2.2", "wan2.2-vae", "wan", "wan22") or light:
        if "pruning" in kwargs and not (light and path is None):
            raise ValueError("pruning applies to a random-weight 'lightvae' only (a checkpoint's widths are "
                             "read from the file)")
        pruning = kwargs.pop("pruning", LIGHTVAE_PRUNING)
        if path is None:
            cfg = WanVAEConfig.lightvae(pruning) if light else WanVAEConfig()
            fields = {k: kwargs.pop(k) for k in list(kwargs) if k in WanVAEConfig.__dataclass_fields__}
            return WanVAE(dataclasses.replace(cfg, **fields), **kwargs)
        return WanVAE.from_pretrained(path, **kwargs)
    if key in ("patch", "patchvae", "patch-vae"):
        if path is not None:
            raise ValueError("the 'patch' VAE has no weights; got a path")
        return PatchVAE(**kwargs)
    raise ValueError(f"unknown VAE {name!r}; expected 'wan2.2', 'lightvae' or 'patch'")


from longlive.model.vae_patch import PatchVAE
from longlive.model.vae_wan import LIGHTVAE_PRUNING, WanVAE, WanVAEConfig
