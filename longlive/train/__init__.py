"""Teacher-forcing training of the chunk-wise AR DiT (``shared/docs/longlive-spec.md`` §5–6).

- :mod:`longlive.train.objective` — flow-matching teacher-forcing objective (shifted table, per-chunk
  timesteps, x_t = (1−σ)z + σε, target ε − z, per-frame MSE with the Gaussian timestep weight).
- :mod:`longlive.train.sp` — Balanced and naive sequence-parallel layouts, SP × DP groups, the §5.2
  mask as a tile-level FlexAttention BlockMask, SP-aware chunked VAE encode with a left halo (§5.3).
- :mod:`longlive.train.trainer` — :class:`Trainer` (FSDP2 bf16 / NVFP4 QAT, activation checkpointing,
  AdamW, clip, EMA, metrics); :mod:`longlive.train.batches` — its data path (loader on the SP root,
  latents and prompts to every SP rank); :mod:`longlive.train.builders` — device, VAE and text
  encoder from the config; :mod:`longlive.train.checkpoint` — atomic safetensors checkpoints with
  exact resume; :mod:`longlive.train.config` — :class:`RunConfig` (YAML); :mod:`longlive.train.data`
  — datasets, the resumable step sampler, the latent cache; :mod:`longlive.train.cli` — ``longlive train``.
"""

from longlive.train.checkpoint import export_weights, find_latest_checkpoint, read_checkpoint
from longlive.train.config import RunConfig
from longlive.train.objective import (
    FlowMatchSchedule,
    add_noise,
    draw_targets,
    frame_mse,
    weighted_frame_loss,
)
from longlive.train.sp import (
    HaloWindow,
    ParallelContext,
    RankSlice,
    TeacherForcingAttention,
    check_sp_geometry,
    encode_halo_window,
    init_parallel,
    plan_halo_windows,
    rank_slice,
    scatter_raw_windows,
    teacher_forcing_block_mask,
)
from longlive.train.trainer import Trainer

__all__ = [
    "FlowMatchSchedule",
    "HaloWindow",
    "ParallelContext",
    "RankSlice",
    "RunConfig",
    "TeacherForcingAttention",
    "Trainer",
    "add_noise",
    "check_sp_geometry",
    "draw_targets",
    "encode_halo_window",
    "export_weights",
    "find_latest_checkpoint",
    "frame_mse",
    "init_parallel",
    "plan_halo_windows",
    "rank_slice",
    "read_checkpoint",
    "scatter_raw_windows",
    "teacher_forcing_block_mask",
    "weighted_frame_loss",
]
