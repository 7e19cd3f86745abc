"""Sequence parallelism for teacher-forcing training (``shared/docs/longlive-spec.md`` §5.1–5.3).

Process groups (§5.2): world = P_sp · P_dp; SP groups are contiguous ranks [g·P, (g+1)·P), DP
groups strided (ranks with the same SP rank). All ranks of an SP group train on the same sample.

Layouts of the [clean ; noisy] teacher-forcing sequence over P ranks (F latent frames, F % (P·chunk) == 0):

- ``"balanced"`` (LongLive-2.0): rank r owns frames [r·F/P, (r+1)·F/P) of BOTH copies; local tokens
  [clean_r ; noisy_r]. After the Ulysses seq→head all-to-all the global order is the natural
  interleaved ``[r0_clean, r0_noisy, r1_clean, …]`` (no permutation). Every rank carries the same
  amount of loss-bearing (noisy) work and needs the latents of only F/P frames.
- ``"naive"``: the plain sequence [all clean ; all noisy] cut into P contiguous pieces (P even):
  the first P/2 ranks hold only clean context, the last P/2 all the noisy frames and the loss, and
  each rank needs the latents of 2F/P frames (the baseline of the paper's Table 1).

SP-aware VAE encoding with a left halo (§5.3): each rank encodes only the raw frames of its latent
slice plus ``halo`` latents of left context, the first of them re-encoded as a stand-alone "first"
frame; see :func:`plan_halo_windows` (worked examples in ``tests/train/test_sp.py``). With the halo
at least the encoder's causal receptive field (27 latents for the Wan2.2 VAE structure) the kept
latents equal the full-video encode.

Attention: :class:`TeacherForcingAttention` runs the §5.2 mask as a FlexAttention ``BlockMask`` built
directly at tile level (:func:`teacher_forcing_block_mask`: O((N/128)²) work instead of the O(N²)
``create_block_mask`` evaluation, which does not fit 675k-token sequences), or SDPA with a dense
boolean mask on CPU (flex has no CPU backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longlive.model.attention import AttentionBackend
from longlive.model.masks import TeacherForcingLayout

__all__ = [
    "LAYOUTS",
    "HaloWindow",
    "ParallelContext",
    "RankSlice",
    "TeacherForcingAttention",
    "check_sp_geometry",
    "encode_halo_window",
    "init_parallel",
    "plan_halo_windows",
    "rank_slice",
    "release_parallel_contexts",
    "scatter_raw_windows",
    "teacher_forcing_block_mask",
]

LAYOUTS = ("balanced", "naive")


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def check_sp_geometry(
    num_frames: int,
    chunk_frames: int,
    sp_size: int,
    *,
    layout: str = "balanced",
    num_heads: int | None = None,
) -> None:
    """Raise ``ValueError`` unless F latent frames split over P ranks in whole chunks.

    Requires F % (P·chunk_frames) == 0 (spec §5.2), heads % P == 0 (Ulysses), and an even P for
    the naive layout (each rank then holds one side only).
    """
    for name, v in (("num_frames", num_frames), ("chunk_frames", chunk_frames), ("sp_size", sp_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"sequence-parallel layout must be one of {LAYOUTS}, got {layout!r}")
    unit = sp_size * chunk_frames
    if num_frames % unit:
        lo = max(unit, num_frames // unit * unit)
        raise ValueError(
            f"{num_frames} latent frames are not divisible by P·chunk_frames = {sp_size}·{chunk_frames} "
            f"= {unit}; use a multiple of {unit} (e.g. {lo} or {lo + unit} latent frames) or another "
            "sp_size"
        )
    if layout == "naive" and sp_size > 1 and sp_size % 2:
        raise ValueError(
            f"the naive SP layout needs an even sp_size (each rank holds clean or noisy frames), "
            f"got {sp_size}"
        )
    if num_heads is not None and num_heads % sp_size:
        raise ValueError(
            f"Ulysses SP needs num_heads % sp_size == 0, got {num_heads} heads and sp_size {sp_size}"
        )


@dataclass(frozen=True)
class RankSlice:
    """The latent frames one SP rank holds of the teacher-forcing sequence.

    Attributes
    ----------
    layout : {"balanced", "naive"}
    rank, sp_size, num_frames, chunk_frames : int
    start, stop : int
        Frame range [start, stop) (global latent-frame indices; also the RoPE positions).
    sides : tuple of str
        ``("clean", "noisy")`` (balanced), ``("clean",)`` or ``("noisy",)`` (naive, P > 1).
    """

    layout: str
    rank: int
    sp_size: int
    num_frames: int
    chunk_frames: int
    start: int
    stop: int
    sides: tuple[str, ...]

    @property
    def frames(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def num_local(self) -> int:
        return self.stop - self.start

    @property
    def carries_loss(self) -> bool:
        return "noisy" in self.sides

    def prompt_slice(self, num_prompts: int) -> slice:
        """Prompt segments of this rank's frames: one prompt for the whole video, or one per chunk."""
        blocks = self.num_frames // self.chunk_frames
        if num_prompts == 1:
            return slice(0, 1)
        if num_prompts != blocks:
            raise ValueError(
                f"expected 1 prompt or one per chunk ({blocks} for {self.num_frames} frames of "
                f"{self.chunk_frames}), got {num_prompts}"
            )
        return slice(self.start // self.chunk_frames, self.stop // self.chunk_frames)

    def attention_layout(self, frame_len: int) -> TeacherForcingLayout:
        """Global token order seen by the attention after the seq→head all-to-all."""
        sp = self.sp_size if self.layout == "balanced" else 1
        return TeacherForcingLayout(self.num_frames, frame_len, self.chunk_frames, sp_size=sp)


def rank_slice(
    layout: str, num_frames: int, chunk_frames: int, sp_size: int, rank: int, *, num_heads: int | None = None
) -> RankSlice:
    """The :class:`RankSlice` of SP rank ``rank`` (checks the geometry first)."""
    check_sp_geometry(num_frames, chunk_frames, sp_size, layout=layout, num_heads=num_heads)
    if not 0 <= rank < sp_size:
        raise ValueError(f"rank must be in [0, {sp_size}), got {rank}")
    if layout == "balanced" or sp_size == 1:
        local = num_frames // sp_size
        return RankSlice(
            layout,
            rank,
            sp_size,
            num_frames,
            chunk_frames,
            rank * local,
            (rank + 1) * local,
            ("clean", "noisy"),
        )
    half = sp_size // 2
    local = 2 * num_frames // sp_size
    side = "clean" if rank < half else "noisy"
    start = (rank % half) * local
    return RankSlice(layout, rank, sp_size, num_frames, chunk_frames, start, start + local, (side,))


# ---------------------------------------------------------------------------------------------
# Process groups
# ---------------------------------------------------------------------------------------------
@dataclass
class ParallelContext:
    """Ranks and groups of an SP × DP run (a single process: everything 1 / None)."""

    world_size: int = 1
    rank: int = 0
    sp_size: int = 1
    sp_rank: int = 0
    dp_size: int = 1
    dp_rank: int = 0
    sp_group: object = None
    dp_group: object = None
    world_mesh: object = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sp_root(self) -> int:
        """Global rank of this SP group's first rank (loads the sample)."""
        return self.dp_rank * self.sp_size

    def sp_global_rank(self, sp_rank: int) -> int:
        return self.dp_rank * self.sp_size + sp_rank


def init_parallel(sp_size: int, *, device_type: str) -> ParallelContext:
    """Split the initialized world into contiguous SP groups × strided DP groups (DeviceMesh (dp, sp)).

    Without an initialized process group this returns a one-process context (``sp_size`` must be 1).

    Raises
    ------
    ValueError
        The world size is not a multiple of ``sp_size``.
    """
    if isinstance(sp_size, bool) or not isinstance(sp_size, int) or sp_size < 1:
        raise ValueError(f"sp_size must be a positive int, got {sp_size!r}")
    if not (dist.is_available() and dist.is_initialized()):
        if sp_size != 1:
            raise ValueError(
                f"sp_size={sp_size} needs {sp_size} processes: start with "
                f"`torchrun --nproc-per-node {sp_size} -m longlive.train.cli ...`"
            )
        return ParallelContext()
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise ValueError(
            f"world size {world} does not factor into SP × DP with sp_size={sp_size}: the world size "
            f"must be a multiple of sp_size (e.g. sp_size in "
            f"{[d for d in range(1, world + 1) if world % d == 0]})"
        )
    # one set of communicators per (default group, layout): trainers built one after another (the
    # benchmark, tests) reuse them instead of creating new NCCL communicators each time
    key = (id(dist.group.WORLD), world, sp_size, device_type)
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    from torch.distributed.device_mesh import init_device_mesh

    dp = world // sp_size
    mesh = init_device_mesh(device_type, (dp, sp_size), mesh_dim_names=("dp", "sp"))
    world_mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("world",))
    _CONTEXTS[key] = ParallelContext(
        world_size=world,
        rank=rank,
        sp_size=sp_size,
        sp_rank=rank % sp_size,
        dp_size=dp,
        dp_rank=rank // sp_size,
        sp_group=mesh.get_group("sp"),
        dp_group=mesh.get_group("dp"),
        world_mesh=world_mesh,
    )
    return _CONTEXTS[key]


_CONTEXTS: dict[tuple, ParallelContext] = {}


def release_parallel_contexts() -> None:
    """Forget the cached SP × DP groups (call before destroying the default process group)."""
    _CONTEXTS.clear()


# ---------------------------------------------------------------------------------------------
# Teacher-forcing attention with a tile-level BlockMask
# ---------------------------------------------------------------------------------------------
def _segments(layout: TeacherForcingLayout) -> tuple[list[int], list[int], list[int]]:
    """Contiguous token runs of constant (side, block): starts, sides (0 clean, 1 noisy), blocks."""
    p, fl, cf = layout.sp_size, layout.frame_len, layout.chunk_frames
    local = layout.num_frames // p
    starts, sides, blocks = [], [], []
    for r in range(p):
        for side in (0, 1):
            base = r * 2 * local * fl + side * local * fl
            f = r * local
            while f < (r + 1) * local:
                stop = min((f // cf + 1) * cf, (r + 1) * local)
                starts.append(base + (f - r * local) * fl)
                sides.append(side)
                blocks.append(f // cf)
                f = stop
    return starts, sides, blocks


def teacher_forcing_block_mask(layout: TeacherForcingLayout, *, device=None, block_size: int = 128):
    """FlexAttention ``BlockMask`` of the §5.2 mask built at tile level.

    The token sequence is a few dozen runs of constant (side, block); a tile pair is *full* when
    every run pair it touches is allowed and *partial* when some is (``mask_mod`` then decides per
    token), found with 2-D prefix sums over the run-level mask. Tiles reaching past the last token
    are never marked full.
    """
    from torch.nn.attention.flex_attention import BlockMask

    n = layout.num_tokens
    starts, sides, blocks = (torch.tensor(v, dtype=torch.int64, device=device) for v in _segments(layout))
    qs, ks = sides[:, None], sides[None, :]
    qb, kb = blocks[:, None], blocks[None, :]
    allowed = ((ks == 0) & (((qs == 0) & (kb <= qb)) | ((qs == 1) & (kb < qb)))) | (
        (qs == 1) & (ks == 1) & (kb == qb)
    )
    s = allowed.shape[0]
    pre = torch.zeros(s + 1, s + 1, dtype=torch.int64, device=device)
    pre[1:, 1:] = allowed.long().cumsum(0).cumsum(1)
    nb = math.ceil(n / block_size)
    lo = torch.arange(nb, device=device, dtype=torch.int64) * block_size
    hi = torch.clamp(lo + block_size, max=n) - 1
    seg_lo = torch.searchsorted(starts, lo, right=True) - 1
    seg_hi = torch.searchsorted(starts, hi, right=True) - 1
    ql, qh = seg_lo[:, None], seg_hi[:, None] + 1
    kl, kh = seg_lo[None, :], seg_hi[None, :] + 1
    count = pre[qh, kh] - pre[ql, kh] - pre[qh, kl] + pre[ql, kl]
    area = (qh - ql) * (kh - kl)
    complete_kv = (hi - lo + 1 == block_size)[None, :]
    full = (count == area) & complete_kv
    partial = (count > 0) & ~full
    del count, area

    def as_indices(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # kv tile indices of each q row, selected ones first in ascending order (O(nnz), no sort)
        num = sel.sum(-1)
        rows, cols = sel.nonzero(as_tuple=True)
        first = torch.cumsum(num, 0) - num
        idx = torch.zeros(sel.shape, dtype=torch.int32, device=sel.device)
        idx[rows, torch.arange(rows.numel(), device=sel.device) - first[rows]] = cols.to(torch.int32)
        return num.to(torch.int32)[None, None], idx[None, None]

    kv_num, kv_idx = as_indices(partial)
    full_num, full_idx = as_indices(full)
    q_num, q_idx = as_indices(partial.t())  # the transposed lists drive the dK/dV backward pass
    full_q_num, full_q_idx = as_indices(full.t())

    def mask_mod(b, h, q_idx, kv_idx):
        return layout.mask_mod(b, h, q_idx, kv_idx)

    return BlockMask(
        seq_lengths=(n, n),
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        q_num_blocks=q_num,
        q_indices=q_idx,
        full_q_num_blocks=full_q_num,
        full_q_indices=full_q_idx,
        BLOCK_SIZE=(block_size, block_size),
        mask_mod=mask_mod,
    )


_COMPILED_FLEX = None


def _flex(q, k, v, block_mask):
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        return _COMPILED_FLEX(q, k, v, block_mask=block_mask)
    return flex_attention(q, k, v, block_mask=block_mask)


class TeacherForcingAttention(AttentionBackend):
    """Self-attention over the global teacher-forcing sequence with the §5.2 mask.

    Parameters
    ----------
    layout : TeacherForcingLayout
        Global token order (``sp_size=P`` for Balanced SP, 1 for the plain / naive-SP order).
    impl : {"auto", "flex", "sdpa"}
        ``"flex"``: compiled FlexAttention with :func:`teacher_forcing_block_mask` (CUDA; on CPU
        eager flex, forward only). ``"sdpa"``: dense boolean [N, N] mask (tests, short clips).
        ``"auto"``: flex on CUDA, sdpa elsewhere.
    """

    name = "teacher_forcing"

    def __init__(self, layout: TeacherForcingLayout, *, impl: str = "auto"):
        if impl not in ("auto", "flex", "sdpa"):
            raise ValueError(f"TeacherForcingAttention: impl must be 'auto', 'flex' or 'sdpa', got {impl!r}")
        self.layout, self.impl = layout, impl
        self._masks: dict[tuple[str, str], object] = {}

    def mask(self, kind: str, device) -> object:
        key = (kind, str(device))
        if key not in self._masks:
            self._masks[key] = (
                teacher_forcing_block_mask(self.layout, device=device)
                if kind == "flex"
                else self.layout.dense_mask(device)
            )
        return self._masks[key]

    def __call__(self, q, k, v, *, layer):
        n = self.layout.num_tokens
        if q.shape[1] != n or k.shape[1] != n:
            raise ValueError(
                f"TeacherForcingAttention: q/k have {q.shape[1]}/{k.shape[1]} tokens, the layout "
                f"{self.layout} has {n}"
            )
        impl = self.impl if self.impl != "auto" else ("flex" if q.is_cuda else "sdpa")
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if impl == "sdpa":
            o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=self.mask("sdpa", q.device))
        else:
            o = _flex(qt, kt, vt, self.mask("flex", q.device))
        return o.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# SP-aware chunked VAE encoding with a left halo (§5.3)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HaloWindow:
    """What SP rank ``rank`` encodes: raw frames [raw_start, raw_stop) → keep window latents
    [drop, drop + keep_stop − keep_start) = global latents [keep_start, keep_stop).

    ``halo_start`` (h) is the first latent of real left context; ``pseudo`` = 1 when raw frame
    s·(h−1) is encoded as a stand-alone first frame (its latent is an approximation and dropped).
    """

    rank: int
    keep_start: int
    keep_stop: int
    halo_start: int
    raw_start: int
    raw_stop: int
    pseudo: int
    drop: int

    @property
    def num_keep(self) -> int:
        return self.keep_stop - self.keep_start

    @property
    def num_raw(self) -> int:
        return self.raw_stop - self.raw_start


def plan_halo_windows(
    num_latents: int, sp_size: int, *, halo: int = 28, temporal_stride: int = 4
) -> list[HaloWindow]:
    """Per-rank raw windows of the SP-aware chunked encode (spec §5.3, any temporal stride s).

    local = F/P; keep = [r·local, (r+1)·local); h = max(0, keep_start − halo);
    raw = [0, 1 + s·(keep_stop − 1)) if h == 0 (pseudo 0) else [s·(h − 1), 1 + s·(keep_stop − 1)) (pseudo 1);
    drop = pseudo + keep_start − h.  F = 96, P = 4, s = 4: raw [0,93) [0,189) [76,285) [172,381),
    drop 0/24/29/29.

    Raises
    ------
    ValueError
        Non-positive sizes, a negative halo, or F not divisible by P.
    """
    for name, v in (("num_latents", num_latents), ("sp_size", sp_size), ("temporal_stride", temporal_stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ValueError(f"halo must be an int >= 0 (latent frames of left context), got {halo!r}")
    if num_latents % sp_size:
        raise ValueError(f"{num_latents} latent frames are not divisible by sp_size {sp_size}")
    s, local = temporal_stride, num_latents // sp_size
    out = []
    for r in range(sp_size):
        k0, k1 = r * local, (r + 1) * local
        h = max(0, k0 - halo)
        pseudo = 0 if h == 0 else 1
        raw0 = 0 if h == 0 else s * (h - 1)
        out.append(HaloWindow(r, k0, k1, h, raw0, 1 + s * (k1 - 1), pseudo, pseudo + k0 - h))
    return out


def encode_halo_window(vae, video_window: torch.Tensor, window: HaloWindow) -> torch.Tensor:
    """Encode one rank's raw window [B, 3, raw_stop − raw_start, H, W] and keep its latents.

    Returns
    -------
    Tensor [B, C, keep_stop − keep_start, H', W']: normalised latents of the rank's frames.
    """
    if video_window.dim() != 5 or video_window.shape[2] != window.num_raw:
        raise ValueError(
            f"video window must be [B, 3, {window.num_raw}, H, W] (raw frames [{window.raw_start}, "
            f"{window.raw_stop})), got {tuple(video_window.shape)}"
        )
    lat = vae.encode(video_window)
    if lat.shape[2] != window.drop + window.num_keep:
        raise ValueError(
            f"the VAE returned {lat.shape[2]} latents for window {window}; expected "
            f"{window.drop + window.num_keep} (temporal stride mismatch?)"
        )
    return lat[:, :, window.drop : window.drop + window.num_keep]


def scatter_raw_windows(
    video: torch.Tensor | None, windows: list[HaloWindow], ctx: ParallelContext, *, device=None
) -> torch.Tensor:
    """Send every SP rank its raw window of the SP root's video (P2P ``send``/``recv``, spec §5.3).

    ``video`` [B, 3, T, H, W] is needed on the SP root only; others pass None. Returns this rank's
    window on ``device``. Shapes travel first with ``broadcast_object_list``.
    """
    me = windows[ctx.sp_rank]
    if ctx.sp_size == 1:
        return video[:, :, me.raw_start : me.raw_stop].to(device)
    root = ctx.sp_root
    meta = [None]
    if ctx.sp_rank == 0:
        if video is None:
            raise ValueError("scatter_raw_windows: the SP root must pass the video")
        meta = [(tuple(video.shape), str(video.dtype).removeprefix("torch."))]
    dist.broadcast_object_list(meta, src=root, group=ctx.sp_group)
    shape, dtype = meta[0]
    comm_dev = device if dist.get_backend(ctx.sp_group) == "nccl" else "cpu"
    if ctx.sp_rank == 0:
        for w in windows[1:]:
            part = video[:, :, w.raw_start : w.raw_stop].to(comm_dev).contiguous()
            dist.send(part, dst=ctx.sp_global_rank(w.rank), group=ctx.sp_group)
        return video[:, :, me.raw_start : me.raw_stop].to(device)
    buf = torch.empty(
        (shape[0], shape[1], me.num_raw, shape[3], shape[4]), dtype=getattr(torch, dtype), device=comm_dev
    )
    dist.recv(buf, src=root, group=ctx.sp_group)
    return buf.to(device)
