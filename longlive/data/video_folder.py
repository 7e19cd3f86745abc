"""Multi-shot video-folder dataset (longlive-spec.md §6.4) and mp4 read/write with PyAV.

Layout::

    root/video/<sample>/<stem>.mp4       clips of one multi-shot sample
    root/caption/<sample>/<stem>.json    {"caption": "..."} for each clip

The clips of a sample folder are consumed in numeric stem order (``2.mp4`` before ``10.mp4``),
optionally from a random first clip (wrapping around; deterministic per ``seed``, index and
epoch). Each clip is decoded with PyAV and resampled to ``target_fps`` by index
(``start + k·orig_fps/target_fps``), resized to ``height×width`` (bilinear, antialias) and
normalised to [−1, 1]. Frames are cut into chunks: ``first_chunk_frames`` raw frames for the
first chunk (``1+4k``; 29 for Wan2.2), then ``chunk_frames`` (``4k``; 32). A chunk never spans
two clips (the remainder of a clip too short for a chunk is dropped). Each chunk's prompt is its
clip's caption; it gets the scene-cut prefix ``"The scene transitions. "`` when the clip changes,
or after ``max_chunks_per_shot`` chunks of one clip, where ``virtual_cut_skip_seconds`` (1 s)
are skipped to make a visible cut.

Unreadable clips (open/decode errors) and clips without a valid caption are skipped with a
warning naming the file; :attr:`VideoFolderDataset.num_unreadable` counts them (per process:
DataLoader workers keep their own counts).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import SCENE_CUT_PREFIX

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoFolderDataset",
    "collate_video_samples",
    "iter_video_frames",
    "natural_key",
    "read_video",
    "write_video",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def natural_key(name: str) -> list:
    """Sort key putting ``clip2`` before ``clip10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def as_rgb_frames(frames) -> np.ndarray:
    """``frames`` (numpy or torch) as a numpy uint8 [T, H, W, 3] array; ValueError otherwise."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
    ):
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3], got {getattr(frames, 'dtype', type(frames).__name__)} "
            f"{getattr(frames, 'shape', '')}"
        )
    return frames


def write_video(
    path: str | os.PathLike, frames, fps: float, *, codec: str = "libx264", crf: int = 18
) -> None:
    """Write frames to a video file with PyAV.

    Parameters
    ----------
    path : str or PathLike
        Output file (container from the extension, e.g. ``.mp4``).
    frames : uint8 array [T, H, W, 3] (numpy or torch), RGB
        H and W must be even (yuv420p).
    fps : float
        Frame rate (> 0).
    codec : str
        PyAV encoder (``"libx264"``, ``"mpeg4"``...); ``crf`` applies to libx264 only.
    """
    import av

    frames = as_rgb_frames(frames)
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames must contain at least one frame, got T=0")
    if h % 2 or w % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {h}×{w}")
    if not (isinstance(fps, (int, float)) and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(10000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(int(crf))}
        for frame in np.ascontiguousarray(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    raise ValueError("video stream has no frame rate")


def iter_video_frames(path: str | os.PathLike, *, target_fps: float | None = None):
    """Yield ``(fps, frame)`` RGB uint8 [H, W, 3] frames, resampled to ``target_fps`` by index.

    Output frame ``k`` is source frame ``floor(k·orig_fps/target_fps)`` (frames repeat when
    upsampling). ``fps`` is the output rate. Errors from PyAV propagate (``av.FFmpegError``).
    """
    import av

    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{os.fspath(path)}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        orig = _stream_fps(stream)
        ratio = 1.0 if target_fps is None else orig / target_fps
        out_fps = orig if target_fps is None else float(target_fps)
        k = 0
        for i, frame in enumerate(container.decode(stream)):
            want = math.floor(k * ratio + 1e-9)
            if want > i:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            while want == i:
                yield out_fps, rgb
                k += 1
                want = math.floor(k * ratio + 1e-9)


def read_video(path: str | os.PathLike, *, target_fps: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a whole video: ``(frames uint8 [T, H, W, 3], fps)`` (see :func:`iter_video_frames`)."""
    frames, fps = [], target_fps
    for fps, rgb in iter_video_frames(path, target_fps=target_fps):
        frames.append(rgb)
    if not frames:
        raise ValueError(f"{os.fspath(path)}: no decodable frames")
    return np.stack(frames), float(fps)


def _resize(rgb: np.ndarray, height: int, width: int, keep_aspect: bool) -> torch.Tensor:
    """uint8 [H, W, 3] → float32 [3, height, width] in [−1, 1] (bilinear, antialias)."""
    x = torch.from_numpy(rgb)
    if keep_aspect:  # centre-crop to the target aspect ratio first
        h, w = x.shape[:2]
        scale = min(h / height, w / width)
        ch, cw = round(height * scale), round(width * scale)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        x = x[y0 : y0 + ch, x0 : x0 + cw]
    x = x.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    if tuple(x.shape[2:]) != (height, width):
        # uint8 channels-last has a fast SIMD antialias kernel (~50x the float path); rounding ≤ 0.5/255
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].float() / 127.5 - 1.0).contiguous()


class VideoFolderDataset(torch.utils.data.Dataset):
    """Multi-shot samples from ``root/video/<sample>/*.mp4`` + ``root/caption/<sample>/*.json``.

    Parameters
    ----------
    root : str or PathLike
        Dataset root (module docstring for the layout).
    height, width : int
        Output frame size.
    target_fps : float
        Output frame rate (24 for the 5B model).
    first_chunk_frames, chunk_frames : int
        Chunk layout (29 and 32 for Wan2.2).
    num_chunks : int, optional
        Chunks per sample; ``None`` = every chunk the folder yields (variable length).
    max_chunks_per_shot : int, optional
        Force a virtual scene cut after this many chunks of one clip.
    virtual_cut_skip_seconds : float
        Seconds skipped at a virtual cut.
    allow_padding : bool
        When a sample yields fewer than ``num_chunks`` chunks, repeat its last frame and caption
        (no prefix) and mark the padded chunks false in ``loss_mask``; otherwise raise.
    random_start : bool
        Start at a random clip (deterministic in ``seed``, index and :meth:`set_epoch`).
    keep_aspect : bool
        Centre-crop to the target aspect ratio before resizing (default: plain resize, §1.2).
    scene_cut_prefix : str
        Prefix of a new shot's first prompt.

    Items are dicts: ``video`` float32 [3, T, H, W] in [−1, 1], ``prompts`` list of str (one
    per chunk), ``scene_cut`` bool [chunks], ``loss_mask`` bool [chunks], ``sample`` str.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        height: int,
        width: int,
        target_fps: float = 24.0,
        first_chunk_frames: int = 29,
        chunk_frames: int = 32,
        num_chunks: int | None = None,
        max_chunks_per_shot: int | None = None,
        virtual_cut_skip_seconds: float = 1.0,
        allow_padding: bool = False,
        random_start: bool = False,
        seed: int = 0,
        keep_aspect: bool = False,
        scene_cut_prefix: str = SCENE_CUT_PREFIX,
    ):
        for name, v in (
            ("height", height),
            ("width", width),
            ("first_chunk_frames", first_chunk_frames),
            ("chunk_frames", chunk_frames),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name, v in (("num_chunks", num_chunks), ("max_chunks_per_shot", max_chunks_per_shot)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if not (isinstance(target_fps, (int, float)) and target_fps > 0 and math.isfinite(target_fps)):
            raise ValueError(f"target_fps must be a positive number, got {target_fps!r}")
        if not virtual_cut_skip_seconds >= 0:
            raise ValueError(f"virtual_cut_skip_seconds must be >= 0, got {virtual_cut_skip_seconds!r}")
        self.root = Path(root)
        video_dir = self.root / "video"
        if not video_dir.is_dir():
            raise FileNotFoundError(
                f"root: expected a folder {video_dir} (layout root/video/<sample>/*.mp4), not found"
            )
        self.samples: list[tuple[str, list[Path]]] = []
        for d in sorted((p for p in video_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            clips = sorted(
                (p for p in d.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS),
                key=lambda p: natural_key(p.stem),
            )
            if clips:
                self.samples.append((d.name, clips))
        if not self.samples:
            raise ValueError(
                f"root: no sample folders with video clips ({', '.join(VIDEO_EXTENSIONS)}) under {video_dir}"
            )
        self.height, self.width, self.target_fps = height, width, float(target_fps)
        self.first_chunk_frames, self.chunk_frames, self.num_chunks = (
            first_chunk_frames,
            chunk_frames,
            num_chunks,
        )
        self.max_chunks_per_shot = max_chunks_per_shot
        self.virtual_cut_skip_frames = int(round(virtual_cut_skip_seconds * self.target_fps))
        self.allow_padding, self.random_start, self.seed, self.epoch = allow_padding, random_start, seed, 0
        self.keep_aspect, self.scene_cut_prefix = keep_aspect, scene_cut_prefix
        self.skipped: dict[str, str] = {}  # file -> reason

    @property
    def num_unreadable(self) -> int:
        """Clips skipped in this process because they could not be decoded or had no valid caption."""
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        """Change the random start clips (only with ``random_start``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _skip(self, path: Path, reason: str) -> None:
        key = os.fspath(path)
        if key not in self.skipped:
            warnings.warn(f"VideoFolderDataset: skipping {key}: {reason}", RuntimeWarning, stacklevel=3)
        self.skipped[key] = reason

    def _caption(self, sample: str, clip: Path) -> str | None:
        path = self.root / "caption" / sample / (clip.stem + ".json")
        try:
            with open(path, encoding="utf-8") as f:
                caption = json.load(f)["caption"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._skip(clip, f"no valid caption {path} ({type(e).__name__}: {e})")
            return None
        if not isinstance(caption, str) or not caption.strip():
            self._skip(clip, f"caption in {path} must be a non-empty string, got {caption!r}")
            return None
        return caption.strip()

    def _frames(self, clip: Path):
        for _, rgb in iter_video_frames(clip, target_fps=self.target_fps):
            yield _resize(rgb, self.height, self.width, self.keep_aspect)

    def __getitem__(self, index: int) -> dict:
        import av

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        name, clips = self.samples[index]
        first = 0
        if self.random_start:
            rng = np.random.default_rng([self.seed, index % len(self), self.epoch])
            first = int(rng.integers(len(clips)))
        chunks: list[list[torch.Tensor]] = []
        prompts, cuts = [], []
        for clip in clips[first:] + clips[:first]:
            if self.num_chunks is not None and len(chunks) == self.num_chunks:
                break
            caption = self._caption(name, clip)
            if caption is None:
                continue
            try:
                self._take_chunks(clip, caption, chunks, prompts, cuts)
            except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
                self._skip(clip, f"unreadable video ({type(e).__name__}: {e})")
        if not chunks:
            raise RuntimeError(
                f"VideoFolderDataset: sample {name!r} ({self.root / 'video' / name}) yields no chunk "
                f"of {self.first_chunk_frames} frames from readable, captioned clips"
            )
        mask = [True] * len(chunks)
        if self.num_chunks is not None and len(chunks) < self.num_chunks:
            if not self.allow_padding:
                raise ValueError(
                    f"VideoFolderDataset: sample {name!r} yields {len(chunks)} chunks, num_chunks="
                    f"{self.num_chunks} (use allow_padding=True or shorter samples)"
                )
            last, caption = chunks[-1][-1], prompts[-1].removeprefix(self.scene_cut_prefix)
            while len(chunks) < self.num_chunks:
                chunks.append([last] * (self.first_chunk_frames if not chunks else self.chunk_frames))
                prompts.append(caption)
                cuts.append(False)
                mask.append(False)
        video = torch.stack([f for ch in chunks for f in ch], dim=1)
        return {
            "video": video,
            "prompts": prompts,
            "scene_cut": torch.tensor(cuts, dtype=torch.bool),
            "loss_mask": torch.tensor(mask, dtype=torch.bool),
            "sample": name,
        }

    def _take_chunks(self, clip: Path, caption: str, chunks: list, prompts: list, cuts: list) -> None:
        """Append the chunks of one clip (all-or-nothing per chunk; stops at num_chunks)."""
        frames = self._frames(clip)
        in_shot, pending_cut = 0, True
        while self.num_chunks is None or len(chunks) < self.num_chunks:
            if self.max_chunks_per_shot is not None and in_shot == self.max_chunks_per_shot:
                for _ in zip(range(self.virtual_cut_skip_frames), frames):
                    pass
                in_shot, pending_cut = 0, True
            n = self.first_chunk_frames if not chunks else self.chunk_frames
            chunk = [f for _, f in zip(range(n), frames)]
            if len(chunk) < n:
                break
            cut = pending_cut and bool(chunks)
            chunks.append(chunk)
            prompts.append(self.scene_cut_prefix + caption if cut else caption)
            cuts.append(cut)
            in_shot, pending_cut = in_shot + 1, False
        frames.close()


def collate_video_samples(batch: list[dict]) -> dict:
    """Batch items of the procedural and video-folder datasets.

    ``video`` → [B, 3, T, H, W] (all T equal), ``scene_cut``/``loss_mask`` → [B, chunks],
    ``prompts`` → list of B lists; other keys → lists.
    """
    if not batch:
        raise ValueError("collate_video_samples: empty batch")
    shapes = {tuple(item["video"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(
            f"collate_video_samples: videos differ in shape {sorted(shapes)}; set num_chunks so all "
            f"samples have the same length"
        )
    out = {
        "video": torch.stack([item["video"] for item in batch]),
        "prompts": [list(item["prompts"]) for item in batch],
    }
    for key in ("scene_cut", "loss_mask"):
        if all(key in item for item in batch):
            out[key] = torch.stack([item[key] for item in batch])
    for key in batch[0]:
        if key not in out:
            out[key] = [item.get(key) for item in batch]
    return out
