"""Detectors that read generated frames of the procedural world (:mod:`longlive.data.procedural`).

Objects are the saturated pixels (chroma ``max(R,G,B) − min(R,G,B) ≥ 70``; backgrounds are
grey), split into 4-connected components (smaller than 0.08 % of the frame: noise, dropped).
Per frame: object count; colour = nearest palette hue to the chroma-weighted circular mean hue;
shape from the rotation- and scale-invariant symmetry strengths ``h_n = |Σ d²·e^{inφ}| / Σ d²``
over the component's pixels (``d, φ``: polar coordinates about its centroid): a 3-fold
symmetric triangle has ``h_3 ≈ 0.4–0.6`` and ``h_4 ≈ 0``, a square ``h_4 ≈ 0.2–0.4`` and ``h_3 ≈ 0``,
a circle both ≈ 0 (triangle if ``h_3 > 0.27``, else square if ``h_4 > 0.13``, else circle);
background from the non-object grey levels (checkered: residual std after row means > 10;
gradient: bottom − top quarter > 50; else dark/light at 110); horizontal background shift between
consecutive frames (integer search, textured backgrounds only); n-fold orientation phase
(``arg Σ d²·e^{inφ}``, n = 4 squares, 3 triangles). Over a window (a chunk): majority votes,
centroid velocity by least squares (still below 0.06 frame-widths/s), pan from the mean
background shift (above 0.04 widths/s; camera pans right ⇒ texture moves left) and spin from
the unwrapped orientation (above 20°/s). All numpy, vectorised over frames.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..data.procedural import BACKGROUNDS, COLOUR_RGB, COLOURS, SHAPES, SceneAttributes

__all__ = [
    "CHROMA_THRESHOLD",
    "FrameDetections",
    "as_uint8_frames",
    "detect_chunks",
    "detect_frames",
    "label_components",
    "summarize_window",
]

CHROMA_THRESHOLD = 70
MIN_AREA_FRACTION = 0.0008
STILL_SPEED = 0.06  # frame widths per second
PAN_SPEED = 0.04  # frame widths per second
SPIN_SPEED = 20.0  # degrees per second
_TRIANGLE_MIN_H3, _SQUARE_MIN_H4 = 0.27, 0.13


def _hue_deg(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of float RGB rows [..., 3]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


_PALETTE_HUES = _hue_deg(np.array([COLOUR_RGB[c] for c in COLOURS], np.float64))


def as_uint8_frames(video, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Bring a video to uint8 [T, H, W, 3].

    Parameters
    ----------
    video : numpy array or torch tensor
        uint8 [T, H, W, 3]; or float [T, H, W, 3] / [3, T, H, W] (the VAE layout, picked when the
        last dim is not 3) with values in ``value_range``.
    value_range : (lo, hi)
        Range of float input (default [−1, 1], the VAE convention; (0, 1) and (0, 255) also common).
    """
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.float().numpy() if video.dtype != torch.uint8 else video.numpy()
    if not isinstance(video, np.ndarray) or video.ndim != 4:
        raise ValueError(
            f"video must be a 4-D array [T, H, W, 3] or [3, T, H, W], got "
            f"{getattr(video, 'shape', type(video).__name__)}"
        )
    if video.shape[-1] != 3:
        if video.shape[0] != 3:
            raise ValueError(f"video must be [T, H, W, 3] or [3, T, H, W], got shape {video.shape}")
        video = np.moveaxis(video, 0, -1)
    if video.dtype == np.uint8:
        return np.ascontiguousarray(video)
    if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video must be uint8 or floating point, got {video.dtype}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    x = (video.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a boolean volume [T, H, W] (never across frames).

    Returns ``(pixels, labels)``: flat indices of the True pixels (sorted) and, for each, a
    component id in ``0..n-1`` (ids ordered by each component's first pixel).
    """
    _, h, w = mask.shape
    flat = mask.reshape(-1)
    fg = np.flatnonzero(flat)
    if fg.size == 0:
        return fg, fg.copy()
    x, y = fg % w, (fg // w) % h
    right = fg[x < w - 1]
    right = right[flat[right + 1]]
    down = fg[y < h - 1]
    down = down[flat[down + w]]
    a = np.searchsorted(fg, np.concatenate([right, down]))
    b = np.searchsorted(fg, np.concatenate([right + 1, down + w]))
    lab = np.arange(fg.size)
    while True:  # hook to the smaller neighbour label, then pointer-jump to the root
        m = np.minimum(lab[a], lab[b])
        new = lab.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            break
        lab = new
    return fg, np.unique(lab, return_inverse=True)[1]


@dataclass
class FrameDetections:
    """Per-frame detector output (length T; -1 / NaN where no object is visible)."""

    colour: np.ndarray  # [T] int index into COLOURS
    shape: np.ndarray  # [T] int index into SHAPES
    count: np.ndarray  # [T] int objects found
    background: np.ndarray  # [T] int index into BACKGROUNDS
    centroid: np.ndarray  # [T, 2] float pixels (x, y), mean over objects
    area: np.ndarray  # [T] float pixels, mean object area (coverage-weighted)
    object_rgb: np.ndarray  # [T, 3] float mean object colour
    background_level: np.ndarray  # [T] float mean background grey
    orientation_phase: np.ndarray  # [T, 2] complex: Σ d²·e^{inφ} over object pixels, n = 3 and 4
    background_shift: np.ndarray  # [T] float px: frame t ≈ frame t−1 shifted left by this (0 at t=0)
    frame_mean: np.ndarray  # [T] float mean luma of the whole frame
    frame_diff: np.ndarray  # [T] float mean |frame t − frame t−1| / 255 (0 at t=0)
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.count)


def _masked_row_stats(grey: np.ndarray, valid: np.ndarray):
    n_row = valid.sum(axis=2)
    row_mean = (grey * valid).sum(axis=2) / np.maximum(n_row, 1)
    return n_row, row_mean


def _background_shift(
    grey: np.ndarray, valid: np.ndarray, textured: np.ndarray, max_shift: int
) -> np.ndarray:
    """Integer horizontal shift s with grey[t](x) ≈ grey[t−1](x + s), for textured frame pairs."""
    t, _, w = grey.shape
    out = np.zeros(t)
    pairs = np.flatnonzero(textured[1:] & textured[:-1]) + 1
    if pairs.size == 0:
        return out
    cur, prev = grey[pairs], grey[pairs - 1]
    vc, vp = valid[pairs], valid[pairs - 1]
    errs = []
    for s in range(-max_shift, max_shift + 1):
        if s >= 0:
            d, v = cur[:, :, : w - s] - prev[:, :, s:], vc[:, :, : w - s] & vp[:, :, s:]
        else:
            d, v = cur[:, :, -s:] - prev[:, :, : w + s], vc[:, :, -s:] & vp[:, :, : w + s]
        errs.append((np.abs(d) * v).sum(axis=(1, 2)) / np.maximum(v.sum(axis=(1, 2)), 1))
    errs = np.stack(errs, axis=1)  # [pairs, shifts]
    best = errs.argmin(axis=1)
    zero_err = errs[:, max_shift]
    # prefer "no shift" unless another shift is clearly better (flat texture-less regions tie)
    shift = np.where(zero_err - errs[np.arange(len(pairs)), best] > 1.0, best - max_shift, 0)
    out[pairs] = shift
    return out


def _soft_area(chroma: np.ndarray, near: np.ndarray, pixels: np.ndarray, frame_of: np.ndarray, t: int):
    """Anti-aliasing-aware object area per frame: Σ min(1, chroma / c_full) over the pixels near objects.

    Returns ``(area [T], interior)``, ``interior`` marking the object pixels of full chroma.

    A grey background blended with a colour keeps the colour's chroma scaled by the coverage, so
    this sums the coverage; ``c_full`` = mean chroma of the frame's object pixels within 15 % of the
    brightest. Stable to ~0.1 % under sub-pixel motion (a hard mask varies by a few %).
    """
    c = chroma.reshape(-1)[pixels].astype(np.float64)
    c_max = np.zeros(t)
    np.maximum.at(c_max, frame_of, c)
    top = c >= 0.85 * c_max[frame_of]
    c_full = np.bincount(frame_of[top], c[top], t) / np.maximum(np.bincount(frame_of[top], minlength=t), 1)
    near_idx = np.flatnonzero(near.reshape(-1))
    f = near_idx // (near.shape[1] * near.shape[2])
    cov = chroma.reshape(-1)[near_idx].astype(np.float64) / np.maximum(c_full[f], 1.0)
    cov = np.where(chroma.reshape(-1)[near_idx] >= 12, np.minimum(cov, 1.0), 0.0)  # 12: noise gate
    return np.bincount(f, cov, t), top


def _frame_diff(frames: np.ndarray) -> np.ndarray:
    out = np.zeros(len(frames))
    for t in range(1, len(frames)):  # per pair: bounded memory for long videos
        a, b = frames[t], frames[t - 1]
        out[t] = (np.maximum(a, b) - np.minimum(a, b)).mean() / 255.0
    return out


def detect_frames(video, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> FrameDetections:
    """Run the per-frame detectors on a video (see :func:`as_uint8_frames` for accepted inputs)."""
    frames = as_uint8_frames(video, value_range=value_range)
    t, h, w, _ = frames.shape
    if t == 0 or h < 8 or w < 8:
        raise ValueError(f"video must have ≥1 frame of at least 8×8 pixels, got {frames.shape}")
    r, g, b = frames[..., 0], frames[..., 1], frames[..., 2]  # size-3 axis reductions are slow in numpy
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8, no overflow
    mask = chroma >= CHROMA_THRESHOLD
    pixels, comp = label_components(mask)
    n_comp = int(comp.max()) + 1 if comp.size else 0
    area = np.bincount(comp, minlength=n_comp).astype(np.float64)
    keep = area >= max(4.0, MIN_AREA_FRACTION * h * w)
    sel = keep[comp]
    pixels, comp = pixels[sel], comp[sel]
    frame_of = pixels // (h * w)
    py, px = (pixels // w) % h + 0.5, pixels % w + 0.5
    area_c = np.bincount(comp, minlength=n_comp).astype(np.float64)
    safe = np.maximum(area_c, 1)
    cx, cy = np.bincount(comp, px, n_comp) / safe, np.bincount(comp, py, n_comp) / safe
    dx, dy = px - cx[comp], py - cy[comp]
    d2, phi = dx * dx + dy * dy, np.arctan2(dy, dx)
    z3, z4 = d2 * np.exp(3j * phi), d2 * np.exp(4j * phi)
    s2 = np.maximum(np.bincount(comp, d2, n_comp), 1e-9)
    zc3 = np.bincount(comp, z3.real, n_comp) + 1j * np.bincount(comp, z3.imag, n_comp)
    zc4 = np.bincount(comp, z4.real, n_comp) + 1j * np.bincount(comp, z4.imag, n_comp)
    h3, h4 = np.abs(zc3) / s2, np.abs(zc4) / s2  # 3-fold / 4-fold symmetry strength, scale invariant
    comp_shape = np.where(h3 > _TRIANGLE_MIN_H3, 2, np.where(h4 > _SQUARE_MIN_H4, 1, 0))
    comp_frame = np.zeros(n_comp, np.int64)
    comp_frame[comp] = frame_of

    flat_rgb = frames.reshape(-1, 3)[pixels].astype(np.float64)
    pix_chroma = chroma.reshape(-1)[pixels].astype(np.float64)
    hue = np.radians(_hue_deg(flat_rgb))
    kept = np.flatnonzero(keep)
    count = np.bincount(comp_frame[kept], minlength=t)
    has = count > 0
    hx = np.bincount(frame_of, pix_chroma * np.cos(hue), t)
    hy = np.bincount(frame_of, pix_chroma * np.sin(hue), t)
    mean_hue = np.degrees(np.arctan2(hy, hx)) % 360.0
    hue_dist = np.abs((mean_hue[:, None] - _PALETTE_HUES[None, :] + 180.0) % 360.0 - 180.0)
    colour = np.where(has, hue_dist.argmin(axis=1), -1)

    # shape per frame: area-weighted vote over that frame's components
    votes = np.zeros((t, len(SHAPES)))
    np.add.at(votes, (comp_frame[kept], comp_shape[kept]), area_c[kept])
    shape = np.where(has, votes.argmax(axis=1), -1)
    obj_area = np.bincount(frame_of, minlength=t).astype(np.float64)
    centroid = np.stack([np.bincount(frame_of, px, t), np.bincount(frame_of, py, t)], axis=1)
    centroid = np.where(has[:, None], centroid / np.maximum(obj_area, 1)[:, None], np.nan)
    phase = np.zeros((t, 2), np.complex128)
    np.add.at(phase[:, 0], comp_frame[kept], zc3[kept])
    np.add.at(phase[:, 1], comp_frame[kept], zc4[kept])

    # background: grey levels away from (dilated) objects
    grey = (r.astype(np.float32) + g + b) * np.float32(1.0 / 3.0)
    near = mask.copy()
    for _ in range(2):
        grown = near.copy()
        grown[:, 1:] |= near[:, :-1]
        grown[:, :-1] |= near[:, 1:]
        grown[:, :, 1:] |= near[:, :, :-1]
        grown[:, :, :-1] |= near[:, :, 1:]
        near = grown
    valid = ~near
    soft_area, interior = _soft_area(chroma, near, pixels, frame_of, t)
    fi = frame_of[interior]  # object colour from interior pixels (edges mix with the background)
    object_rgb = np.stack([np.bincount(fi, flat_rgb[interior, k], t) for k in range(3)], axis=1)
    object_rgb = np.where(
        has[:, None], object_rgb / np.maximum(np.bincount(fi, minlength=t), 1)[:, None], np.nan
    )
    n_row, row_mean = _masked_row_stats(grey, valid)
    n_all = np.maximum(n_row.sum(axis=1), 1)
    seen_rows = n_row > 0  # every row weighs the same: objects hiding part of a gradient do not bias it
    level = (row_mean * seen_rows).sum(axis=1) / np.maximum(seen_rows.sum(axis=1), 1)
    resid = ((grey - row_mean[:, :, None]) ** 2 * valid).sum(axis=(1, 2)) / n_all
    q = max(1, h // 4)
    top = (row_mean[:, :q] * n_row[:, :q]).sum(1) / np.maximum(n_row[:, :q].sum(1), 1)
    bottom = (row_mean[:, -q:] * n_row[:, -q:]).sum(1) / np.maximum(n_row[:, -q:].sum(1), 1)
    textured = np.sqrt(resid) > 10.0
    background = np.where(
        textured, 3, np.where(np.abs(bottom - top) > 50.0, 2, np.where(level < 110.0, 0, 1))
    )
    shift = _background_shift(grey, valid, textured, max_shift=max(2, int(round(0.07 * w))))
    return FrameDetections(
        colour=colour,
        shape=shape,
        count=count,
        background=background,
        centroid=centroid,
        area=np.where(has, soft_area / np.maximum(count, 1), 0.0),
        object_rgb=object_rgb,
        background_level=level,
        orientation_phase=phase,
        background_shift=shift,
        frame_mean=grey.mean(axis=(1, 2)),
        frame_diff=_frame_diff(frames),
        height=h,
        width=w,
    )


def _mode(values: np.ndarray) -> int | None:
    values = values[values >= 0]
    if values.size == 0:
        return None
    return Counter(values.tolist()).most_common(1)[0][0]


def summarize_window(det: FrameDetections, start: int, stop: int, fps: float) -> SceneAttributes:
    """Attributes seen in frames ``[start, stop)``: majority votes plus motion, pan and spin.

    Colour/shape are ``None`` when no object is seen; direction is ``None`` when fewer than two
    frames show an object.
    """
    if not 0 <= start < stop <= len(det):
        raise ValueError(f"window [{start}, {stop}) must lie inside the video of {len(det)} frames")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    colour, shape = _mode(det.colour[start:stop]), _mode(det.shape[start:stop])
    count = _mode(det.count[start:stop])
    background = _mode(det.background[start:stop])
    seen = np.flatnonzero(det.count[start:stop] > 0)
    direction = None
    if seen.size >= 2:
        ts = seen / fps
        c = det.centroid[start:stop][seen] / det.width
        tc = ts - ts.mean()
        vel = (tc[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (tc**2).sum()
        if np.hypot(*vel) < STILL_SPEED:
            direction = "still"
        elif abs(vel[0]) >= abs(vel[1]):
            direction = "right" if vel[0] > 0 else "left"
        else:
            direction = "down" if vel[1] > 0 else "up"
    pan = "none"
    if stop - start >= 2:
        speed = det.background_shift[start + 1 : stop].mean() * fps / det.width
        pan = "right" if speed > PAN_SPEED else "left" if speed < -PAN_SPEED else "none"
    spin = False
    if shape in (1, 2) and seen.size >= 2:
        n, j = (4, 1) if shape == 1 else (3, 0)
        ang = np.unwrap(np.angle(det.orientation_phase[start:stop][seen, j])) / n
        ts = seen / fps
        tc = ts - ts.mean()
        omega = np.degrees((tc * (ang - ang.mean())).sum() / (tc**2).sum())
        spin = bool(abs(omega) > SPIN_SPEED)
    return SceneAttributes(
        colour=None if colour is None else COLOURS[colour],
        shape=None if shape is None else SHAPES[shape],
        count=0 if count is None else int(count),
        direction=direction,
        background=None if background is None else BACKGROUNDS[background],
        pan=pan,
        spin=spin,
    )


def detect_chunks(
    video_or_detections,
    bounds: list[tuple[int, int]],
    fps: float,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> list[SceneAttributes]:
    """Attributes of each chunk ``[start, stop)`` of ``bounds`` (a video or :class:`FrameDetections`)."""
    det = (
        video_or_detections
        if isinstance(video_or_detections, FrameDetections)
        else detect_frames(video_or_detections, value_range=value_range)
    )
    return [summarize_window(det, a, b, fps) for a, b in bounds]
