"""Streaming causal inference: the chunk-wise AR loop (spec §2.8), KV-cache policy (sink, window,
multi-shot sink, prompt-switch re-cache), the flow-matching UniPC sampler, streaming VAE decode to
mp4, and Ulysses sequence parallelism. ``longlive.Pipeline`` is the entry point."""

from .cache_policy import CacheManager, CachePolicy, ChunkPlan, plan_chunks
from .decode import ChunkDecoder, Mp4Writer, to_uint8_frames
from .pipeline import DEMO_DIR, Pipeline
from .prompt_schedule import resolve_length
from .results import ChunkOutput, GenerationResult
from .scheduler import FlowUniPCScheduler, unipc_sigmas, unipc_timesteps
from .session import StreamSession
from .sp import SPGroup, check_sp_size

__all__ = [
    "DEMO_DIR",
    "CacheManager",
    "CachePolicy",
    "ChunkDecoder",
    "ChunkOutput",
    "ChunkPlan",
    "FlowUniPCScheduler",
    "GenerationResult",
    "Mp4Writer",
    "Pipeline",
    "SPGroup",
    "StreamSession",
    "check_sp_size",
    "plan_chunks",
    "resolve_length",
    "to_uint8_frames",
    "unipc_sigmas",
    "unipc_timesteps",
]
