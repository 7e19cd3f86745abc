"""Write a frame strip (PNG) of a video: ``count`` evenly spaced frames side by side.

Usage::

    longlive generate                                            # writes longlive_demo.mp4
    python tools/frame_strip.py longlive_demo.mp4 docs/demo_strip.png --count 8 --scale 2

Frames are decoded with PyAV (:func:`longlive.data.video_folder.read_video`), upscaled by an integer
factor with nearest-neighbour (keeps the small demo frames crisp) and separated by a white gap.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def frame_strip(frames: np.ndarray, *, count: int = 8, scale: int = 1, gap: int = 4) -> np.ndarray:
    """uint8 [T, H, W, 3] → uint8 [H·scale, count·W·scale + (count−1)·gap, 3]."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if count < 1 or scale < 1 or gap < 0:
        raise ValueError(f"need count >= 1, scale >= 1, gap >= 0; got {count}, {scale}, {gap}")
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    tiles = [frames[i].repeat(scale, axis=0).repeat(scale, axis=1) for i in idx]
    sep = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [sep, t]
    return np.concatenate(out, axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video", help="input video (mp4)")
    ap.add_argument("out", help="output PNG")
    ap.add_argument("--count", type=int, default=8, help="frames in the strip")
    ap.add_argument("--scale", type=int, default=1, help="integer upscale factor")
    ap.add_argument("--gap", type=int, default=4, help="white pixels between frames")
    a = ap.parse_args(argv)
    from PIL import Image

    from longlive.data.video_folder import read_video

    frames, _ = read_video(a.video)
    Image.fromarray(frame_strip(frames, count=a.count, scale=a.scale, gap=a.gap)).save(a.out)
    print(f"wrote {a.out} ({min(a.count, len(frames))} of {len(frames)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
