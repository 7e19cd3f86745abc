"""Teacher-forcing attention mask over [clean ; noisy] tokens (``shared/docs/longlive-spec.md`` §5.2).

Frames are grouped into blocks (chunks) of ``chunk_frames``; for query token q and key token k with
blocks b_q, b_k:

- clean q → clean k  iff b_k ≤ b_q   (block-causal, own block included)
- noisy q → clean k  iff b_k < b_q   (strictly earlier blocks: the clean history)
- noisy q → noisy k  iff b_k == b_q  (own block only)
- clean q → noisy k  never

Token order: without sequence parallelism ``[all clean ; all noisy]``; with Balanced SP over P
ranks the global order after the Ulysses all-to-all is the natural interleaved
``[r0_clean, r0_noisy, r1_clean, r1_noisy, …]`` where rank r owns frames [r·F/P, (r+1)·F/P) of both
copies. Under this mask, the noisy output of block n equals a cached inference step for chunk n
whose cache holds the clean K/V of chunks 0…n−1 (``tests/model/test_dit.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TeacherForcingLayout"]


@dataclass(frozen=True)
class TeacherForcingLayout:
    """Geometry of a teacher-forcing token sequence.

    Parameters
    ----------
    num_frames : int
        Latent (token) frames F of the whole video (global, not per rank).
    frame_len : int
        Tokens per frame (880 for 5B at 704x1280).
    chunk_frames : int
        Frames per block (8 for 5B).
    sp_size : int
        Sequence-parallel ranks P (1: plain [clean ; noisy]).
    """

    num_frames: int
    frame_len: int
    chunk_frames: int
    sp_size: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_len", "chunk_frames", "sp_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TeacherForcingLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_frames % self.chunk_frames:
            raise ValueError(f"TeacherForcingLayout: num_frames {self.num_frames} must be a multiple of "
                             f"chunk_frames {self.chunk_frames}")
        if self.num_frames % self.sp_size:
            raise ValueError(f"TeacherForcingLayout: num_frames {self.num_frames} must be divisible by "
                             f"sp_size {self.sp_size}")

    @property
    def num_tokens(self) -> int:
        """Global sequence length 2·F·frame_len."""
        return 2 * self.num_frames * self.frame_len

    def token_side_block(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(side, block) of token indices: side 0 = clean, 1 = noisy; block = frame // chunk_frames."""
        local_frames = self.num_frames // self.sp_size
        half = local_frames * self.frame_len
        rank = idx // (2 * half)
        off = idx % (2 * half)
        side = (off >= half).to(torch.int64)
        frame = rank * local_frames + (off - side * half) // self.frame_len
        return side, frame // self.chunk_frames

    def mask_mod(self, b, h, q_idx, kv_idx):
        """``flex_attention`` mask_mod (True = attend)."""
        qs, qb = self.token_side_block(q_idx)
        ks, kb = self.token_side_block(kv_idx)
        clean_q = qs == 0
        clean_k = ks == 0
        return (clean_k & ((clean_q & (kb <= qb)) | (~clean_q & (kb < qb)))) | (~clean_q & ~clean_k & (kb == qb))

    def dense_mask(self, device=None) -> torch.Tensor:
        """Boolean [N, N] mask (True = attend) for SDPA; O(N²) memory, for tests and short clips."""
        idx = torch.arange(self.num_tokens, device=device)
        return self.mask_mod(None, None, idx[:, None], idx[None, :])

    def block_mask(self, device=None):
        """``torch.nn.attention.flex_attention.BlockMask`` of this mask."""
        from torch.nn.attention.flex_attention import create_block_mask

        n = self.num_tokens

        def mask_mod(b, h, q_idx, kv_idx):  # create_block_mask wants a plain function
            return self.mask_mod(b, h, q_idx, kv_idx)

        return create_block_mask(mask_mod, None, None, n, n, device=device)

    def permutation_from_plain(self) -> torch.Tensor:
        """Index tensor p with ``interleaved = plain[p]`` mapping the [all clean ; all noisy] order to
        this layout's order (identity for sp_size 1)."""
        f, fl, p = self.num_frames, self.frame_len, self.sp_size
        local = f // p * fl
        parts = []
        for r in range(p):
            parts.append(torch.arange(r * local, (r + 1) * local))
            parts.append(torch.arange(f * fl + r * local, f * fl + (r + 1) * local))
        return torch.cat(parts)
