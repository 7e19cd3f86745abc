"""Teacher-forcing training of the chunk-wise AR DiT (``shared/docs/longlive-spec.md`` §5–6).

- :mod:`longlive.train.objective` — flow-matching teacher-forcing objective (shifted table, per-chunk
  timesteps, x_t = (1−σ)z + σε, target ε − z, per-frame MSE with the Gaussian timestep weight).
- :mod:`longlive.train.sp` — Balanced and naive sequence-parallel layouts, SP × DP groups, the §5.2
  mask as a tile-level FlexAttention BlockMask, SP-aware chunked VAE encode with a left halo (§5.3).
"""

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

__all__ = [
    "FlowMatchSchedule",
    "HaloWindow",
    "ParallelContext",
    "RankSlice",
    "TeacherForcingAttention",
    "add_noise",
    "check_sp_geometry",
    "draw_targets",
    "encode_halo_window",
    "frame_mse",
    "init_parallel",
    "plan_halo_windows",
    "rank_slice",
    "scatter_raw_windows",
    "teacher_forcing_block_mask",
    "weighted_frame_loss",
]
