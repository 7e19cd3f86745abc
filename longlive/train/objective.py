"""Flow-matching teacher-forcing objective of the AR stage (``shared/docs/longlive-spec.md`` §6.1).

Schedule (``FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True)`` with 1000 training
steps): σ_i = linspace(1, 0, 1001)[:-1], shifted σ'_i = s·σ_i / (1 + (s − 1)·σ_i), timestep
t_i = 1000·σ'_i (1000 … 4.98). Per chunk (block of ``chunk_frames`` latent frames) one index
u ~ Uniform{0 … 999}, shared by the block's frames::

    x_t = (1 − σ') z + σ' ε          target v* = ε − z          (the model predicts v ≈ ε − x0)
    loss = Σ_{b,f} w(t_bf) · mean_{C,H,W}(v̂ − v*)²_bf · m_bf / Σ m

with the Gaussian timestep weight w(t) = (y − min y) · 1000 / Σ_table (y − min y),
y = exp(−2 ((t − 500) / 1000)²) over the 1000-entry table (peak ≈ 2.08 near t = 500, ≈ 0 at both
ends) and an optional per-frame loss mask m (padded chunks of a short multi-shot sample).

Everything here is functional and rank-agnostic: draw the noise and the block indices for the
*whole* video with a generator seeded from (seed, step, data-parallel rank), then slice the frames a
sequence-parallel rank owns (:mod:`longlive.train.sp`); the result does not depend on the number
of SP ranks. Loss sums are divided by the *global* number of valid frames, so summing the local
losses over an SP group gives the single-process loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "FlowMatchSchedule",
    "TeacherForcingTargets",
    "add_noise",
    "draw_targets",
    "frame_mse",
    "step_generator",
    "weighted_frame_loss",
]


class FlowMatchSchedule:
    """The shifted flow-matching timestep table with its Gaussian loss weights.

    Parameters
    ----------
    num_train_timesteps : int
        Table size N (1000).
    shift : float
        Timestep shift s (5.0 for Wan2.2 / LongLive); 1.0 = unshifted.
    weighting : {"gaussian", "uniform"}
        ``"gaussian"``: the spec's w(t); ``"uniform"``: w ≡ 1.

    Attributes
    ----------
    sigmas, timesteps, weights : Tensor [N] float64 (CPU)
        σ'_i, t_i = N·σ'_i and w(t_i) for i = 0 … N−1 (σ' decreasing from 1).
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0, weighting: str = "gaussian"):
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 2
        ):
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number, got {shift!r}")
        if weighting not in ("gaussian", "uniform"):
            raise ValueError(f"weighting must be 'gaussian' or 'uniform', got {weighting!r}")
        n = num_train_timesteps
        self.num_train_timesteps, self.shift, self.weighting = n, float(shift), weighting
        sigma = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        self.sigmas = self.shift * sigma / (1.0 + (self.shift - 1.0) * sigma)
        self.timesteps = self.sigmas * n
        if weighting == "gaussian":
            y = torch.exp(-2.0 * ((self.timesteps - n / 2) / n) ** 2)
            y = y - y.min()
            self.weights = y * n / y.sum()
        else:
            self.weights = torch.ones(n, dtype=torch.float64)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps, weights) as float32 on ``device`` (cached)."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = tuple(
                t.float().to(device) for t in (self.sigmas, self.timesteps, self.weights)
            )
        return self._on[device]

    def sample_indices(
        self, batch: int, num_blocks: int, *, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Uniform table indices u [batch, num_blocks] (int64), one per block (chunk)."""
        gen_device = generator.device if generator is not None else device
        u = torch.randint(
            0, self.num_train_timesteps, (batch, num_blocks), generator=generator, device=gen_device
        )
        return u.to(device) if device is not None else u

    def lookup(
        self, indices: torch.Tensor, chunk_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame (σ', t, w) [B, num_blocks·chunk_frames] float32 for block indices [B, num_blocks]."""
        sig, ts, w = self.tables(indices.device)
        per_frame = indices.repeat_interleave(chunk_frames, dim=1)
        return sig[per_frame], ts[per_frame], w[per_frame]


def step_generator(seed: int, step: int, stream: int, device="cpu") -> torch.Generator:
    """A generator whose state depends only on (seed, step, stream) — e.g. stream = data-parallel
    rank — so a resumed run draws the same noise as an uninterrupted one without saving RNG state."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7_919 + int(stream) * 104_729) % (2**63 - 1))
    return g


def drop_captions(prompts: list[list[str]], p: float, generator: torch.Generator) -> list[list[str]]:
    """Caption dropout for classifier-free guidance: each sample's prompts (all its chunks together)
    become ``""`` with probability ``p``, so the model also learns the unconditional flow that
    ``guidance_scale > 1`` needs (the pipeline's negative prompt defaults to ``""``).

    ``prompts`` holds one list of per-chunk prompts per sample; the draw comes from ``generator``
    (:func:`step_generator`), so every SP rank of a group and a resumed run drop the same samples.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"caption dropout must be in [0, 1), got {p!r}")
    if p == 0.0:
        return prompts
    drop = (torch.rand(len(prompts), generator=generator) < p).tolist()
    return [[""] * len(ps) if d else list(ps) for ps, d in zip(prompts, drop)]


def add_noise(z: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ) z + σ ε with per-frame σ [B, F] over latents [B, C, F, H, W] (fp32 math, z's dtype)."""
    if z.shape != noise.shape:
        raise ValueError(
            f"add_noise: latents {tuple(z.shape)} and noise {tuple(noise.shape)} must have one shape"
        )
    if sigma.dim() != 2 or tuple(sigma.shape) != (z.shape[0], z.shape[2]):
        raise ValueError(
            f"add_noise: sigma must be [B, F] = [{z.shape[0]}, {z.shape[2]}], got {tuple(sigma.shape)}"
        )
    s = sigma.float()[:, None, :, None, None]
    return ((1.0 - s) * z.float() + s * noise.float()).to(z.dtype)


def frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame mean squared error mean_{C,H,W}((pred − target)²) → [B, F] float32."""
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(
            f"frame_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
            "[B, C, F, H, W]"
        )
    d = pred.float() - target.float()
    return d.pow(2).mean(dim=(1, 3, 4))


def weighted_frame_loss(
    per_frame: torch.Tensor,
    weight: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ w·mse·m / normalizer over the given frames (a scalar).

    Parameters
    ----------
    per_frame, weight : Tensor [B, F]
        Per-frame MSE and w(t) of the frames this rank holds.
    mask : Tensor [B, F] bool, optional
        Frames that carry loss (default all).
    normalizer : float or Tensor, optional
        Number of valid frames in the *whole* video batch (all SP ranks); default the local count,
        which is right only without sequence parallelism.
    """
    if per_frame.shape != weight.shape:
        raise ValueError(
            f"weighted_frame_loss: per_frame {tuple(per_frame.shape)} and weight {tuple(weight.shape)} differ"
        )
    terms = per_frame * weight.float()
    if mask is not None:
        if mask.shape != per_frame.shape:
            raise ValueError(
                f"weighted_frame_loss: mask {tuple(mask.shape)} must be {tuple(per_frame.shape)}"
            )
        terms = terms * mask.float()
    if normalizer is None:
        normalizer = mask.sum().clamp_min(1) if mask is not None else per_frame.numel()
    return terms.sum() / normalizer


@dataclass
class TeacherForcingTargets:
    """One step's draws for a whole (global) video batch.

    Attributes
    ----------
    noise : Tensor [B, C, F, H, W]
        ε (same dtype as the latents, fp32 recommended).
    indices : Tensor [B, F / chunk_frames] int64
        Table index per block.
    sigma, timesteps, weight : Tensor [B, F] float32
        σ', t and w(t) per frame (shared within a block).
    """

    noise: torch.Tensor
    indices: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor
    weight: torch.Tensor


def draw_targets(
    schedule: FlowMatchSchedule,
    latent_shape: tuple[int, ...],
    chunk_frames: int,
    *,
    generator: torch.Generator,
    device,
    dtype: torch.dtype = torch.float32,
) -> TeacherForcingTargets:
    """Draw ε and one timestep per block for a latent batch of ``latent_shape`` = [B, C, F, H, W].

    ε is drawn first (on the generator's device), then the block indices, so the draws only depend
    on the generator state and the *global* shape.

    Raises
    ------
    ValueError
        ``F`` not a multiple of ``chunk_frames``.
    """
    if len(latent_shape) != 5:
        raise ValueError(f"latent_shape must be [B, C, F, H, W], got {tuple(latent_shape)}")
    b, _, f, _, _ = latent_shape
    if chunk_frames < 1 or f % chunk_frames:
        raise ValueError(f"{f} latent frames are not a multiple of chunk_frames={chunk_frames}")
    noise = torch.randn(
        tuple(latent_shape), generator=generator, device=generator.device, dtype=torch.float32
    )
    idx = schedule.sample_indices(b, f // chunk_frames, generator=generator)
    noise, idx = noise.to(device=device, dtype=dtype), idx.to(device)
    sigma, ts, w = schedule.lookup(idx, chunk_frames)
    return TeacherForcingTargets(noise, idx, sigma, ts, w)
