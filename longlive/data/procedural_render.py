"""Rendering of the procedural world (:mod:`longlive.data.procedural`): coloured shapes on grey
backgrounds, vectorised numpy with 1-pixel anti-aliasing."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["COLOUR_RGB", "render_scene", "shape_circumradius"]

COLOUR_RGB = {
    "red": (225, 35, 35), "yellow": (235, 215, 30), "green": (35, 190, 55),
    "cyan": (30, 200, 215), "blue": (40, 70, 230), "magenta": (215, 45, 215),
}
# Circumradius of each shape in units of the object size s (similar visual weight).
_CIRCUMRADIUS = {"circle": 1.0, "square": 1.15, "triangle": 1.3}


def shape_circumradius(shape: str, size: float) -> float:
    """Largest distance from the centre to the outline of ``shape`` of size ``size`` (pixels)."""
    return _CIRCUMRADIUS[shape] * size


def _background(kind: str, h: int, w: int, levels: tuple[float, float], pan_offset: int) -> np.ndarray:
    """Grey background [H, W] float32 in 0..255."""
    lo, hi = levels
    if kind in ("dark", "light"):
        return np.full((h, w), lo, np.float32)
    if kind == "gradient":
        return np.broadcast_to(np.linspace(lo, hi, h, dtype=np.float32)[:, None], (h, w))
    cell = max(4, w // 8)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :] + pan_offset
    return np.where(((ys // cell) + (xs // cell)) % 2 == 0, lo, hi).astype(np.float32)


def _coverage(shape: str, cx: float, cy: float, size: float, angle: float, h: int, w: int):
    """Anti-aliased coverage in [0, 1] over a bounding window: (window slices, alpha)."""
    rad = shape_circumradius(shape, size)
    x0, x1 = max(0, int(cx - rad - 2)), min(w, int(cx + rad + 3))
    y0, y1 = max(0, int(cy - rad - 2)), min(h, int(cy + rad + 3))
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    if shape == "circle":
        sdf = np.sqrt(px * px + py * py) - rad
    else:
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * px + s * py, -s * px + c * py  # rotate the sample points by -angle
        if shape == "square":
            sdf = np.maximum(np.abs(u), np.abs(v)) - rad / math.sqrt(2.0)
        else:  # equilateral triangle, apex up; max of the three edge half-plane distances
            sdf = np.full(u.shape, -np.inf, np.float32)
            for k in range(3):
                a = math.pi / 2 + k * 2 * math.pi / 3
                sdf = np.maximum(sdf, u * math.cos(a) + v * math.sin(a))
            sdf = sdf - rad / 2.0
    return (slice(y0, y1), slice(x0, x1)), np.clip(0.5 - sdf, 0.0, 1.0)


def render_scene(h: int, w: int, background: str, levels: tuple[float, float], pan_offset: int,
                 objects: list[tuple[str, str, float, float, float, float]]) -> np.ndarray:
    """Render one frame [H, W, 3] uint8.

    ``objects``: ``(shape, colour, cx, cy, size, angle)`` in pixels/radians, drawn in order.
    """
    img = np.repeat(_background(background, h, w, levels, pan_offset)[:, :, None], 3, axis=2)
    for shape, colour, cx, cy, size, angle in objects:
        win, alpha = _coverage(shape, cx, cy, size, angle, h, w)
        a = alpha[:, :, None]
        img[win] = img[win] * (1.0 - a) + np.asarray(COLOUR_RGB[colour], np.float32) * a
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
