"""What generation returns: one chunk (:class:`ChunkOutput`, from :meth:`StreamSession.next_chunk`)
and a whole video's summary (:class:`GenerationResult`, from :meth:`Pipeline.generate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cache_policy import ChunkPlan

__all__ = ["ChunkOutput", "GenerationResult"]


@dataclass
class ChunkOutput:
    """One generated chunk.

    Attributes
    ----------
    index : int
        Chunk index in the video.
    latents : Tensor [1, C, F, H, W] fp32
        Clean latents of the chunk (all frames, also under sequence parallelism).
    num_frames : int
        Video frames this chunk decodes to.
    prompt : str
        Prompt given to the text encoder (with the scene-cut prefix on a shot's first chunk).
    plan : ChunkPlan
        Cache bookkeeping (shot, RoPE offset, attended chunks, re-cached chunks).
    seconds : float
        Wall time of the chunk's forwards (re-cache + denoising + t = 0 re-run), device-synchronised.
    """

    index: int
    latents: torch.Tensor
    num_frames: int
    prompt: str
    plan: ChunkPlan
    seconds: float


@dataclass
class GenerationResult:
    """Summary of :meth:`Pipeline.generate` (also after Ctrl-C: ``interrupted=True``)."""

    out: str | None
    num_chunks: int
    chunks_done: int = 0
    chunks_written: int = 0
    frames_written: int = 0
    frames_done: int = 0
    dit_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False
    chunk_seconds: list[float] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)
    peak_memory_gb: float | None = None

    def dit_fps(self, warmup: int = 0) -> float:
        """Output frames / denoising time over chunks after the first ``warmup``."""
        s = sum(self.chunk_seconds[warmup:])
        return sum(self.chunk_frames[warmup:]) / s if s > 0 else float("nan")

    @property
    def e2e_fps(self) -> float:
        """Frames written / wall time from the first chunk to the closed file."""
        return self.frames_written / self.wall_seconds if self.wall_seconds > 0 else float("nan")
