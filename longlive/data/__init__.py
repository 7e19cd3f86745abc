"""Training and evaluation data: the procedural shapes world (demo model, quality benchmark), the
multi-shot video-folder dataset of longlive-spec.md §6.4, mp4 I/O, and per-chunk prompt schedules."""

from .procedural import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    DIRECTIONS,
    PANS,
    SHAPES,
    ChunkTruth,
    ProceduralConfig,
    ProceduralSample,
    ProceduralVideoDataset,
    ProceduralVideoStream,
    SceneAttributes,
    VideoTruth,
    describe,
    frames_to_tensor,
    generate_sample,
    parse_prompt,
    tensor_to_frames,
    with_phrasing,
    write_sample_mp4,
)
from .prompts import (
    SCENE_CUT_PREFIX,
    ChunkPrompt,
    PromptScheduleError,
    chunk_frame_bounds,
    chunk_frame_counts,
    chunk_index_of_frame,
    load_prompt_schedule,
    num_frames_for_chunks,
    schedule_from_chunk_prompts,
)
from .video_folder import VideoFolderDataset, collate_video_samples, read_video, write_video

__all__ = [
    "BACKGROUNDS", "COLOURS", "COUNTS", "DIRECTIONS", "PANS", "SHAPES", "SCENE_CUT_PREFIX",
    "ChunkPrompt", "ChunkTruth", "ProceduralConfig", "ProceduralSample", "ProceduralVideoDataset",
    "ProceduralVideoStream", "PromptScheduleError", "SceneAttributes", "VideoFolderDataset", "VideoTruth",
    "chunk_frame_bounds", "chunk_frame_counts", "chunk_index_of_frame", "collate_video_samples", "describe",
    "frames_to_tensor", "generate_sample", "load_prompt_schedule", "num_frames_for_chunks", "parse_prompt",
    "read_video", "schedule_from_chunk_prompts", "tensor_to_frames", "with_phrasing", "write_sample_mp4", "write_video",
]
