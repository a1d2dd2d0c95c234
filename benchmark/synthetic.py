"""Procedural 64x64 faces, drawn deterministically per index: the offline default data set.

Each face varies in shape, skin tone, hair, eyes, brows, mouth, clothing, background and lighting, so
a generator has real structure to learn and its FID falls as it does. Drawn at twice the resolution
and box-filtered down, so edges are antialiased like a resized photograph.
"""

from __future__ import annotations

import numpy as np

VERSION = 1  # bump when the drawing changes: it is part of the data fingerprint

_SKIN = np.array([[255, 224, 196], [234, 192, 160], [198, 145, 108], [141, 95, 66], [92, 60, 42]], float)
_HAIR = np.array([[20, 16, 14], [70, 45, 28], [120, 80, 45], [205, 170, 110], [150, 60, 30], [160, 160, 160]], float)
_IRIS = np.array([[60, 40, 25], [90, 120, 160], [80, 110, 70], [40, 30, 20]], float)


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _mix(palette: np.ndarray, t: float) -> np.ndarray:
    """A colour on the piecewise-linear path through a palette, t in [0, 1]."""
    pos = t * (len(palette) - 1)
    i = min(int(pos), len(palette) - 2)
    return palette[i] + (pos - i) * (palette[i + 1] - palette[i])


def draw_face(index: int, resolution: int = 64, seed: int = 0) -> np.ndarray:
    """One face as uint8 (3, resolution, resolution); the same index always gives the same face."""
    rng = np.random.default_rng([seed, index, VERSION])
    n = resolution * 2
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    img = np.empty((n, n, 3), np.float32)

    bg0, bg1 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    t = np.clip(x * np.cos(a := rng.uniform(0, np.pi)) + y * np.sin(a), 0, 1)[..., None]
    img[:] = bg0 * (1 - t) + bg1 * t

    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    fw, fh = rng.uniform(0.22, 0.3), rng.uniform(0.29, 0.37)
    tilt = rng.normal(0, 0.08)
    skin = _mix(_SKIN, rng.uniform())
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    cloth = rng.uniform(20, 235, 3)

    img[_ellipse(x, y, 0.5, 1.08, rng.uniform(0.38, 0.5), 0.3)] = cloth  # shoulders
    img[(np.abs(x - cx) < fw * 0.45) & (y > cy) & (y < 0.95)] = skin * 0.85  # neck
    hair_len = rng.uniform(0.0, 0.35)  # 0: short hair, larger: hair down to the shoulders
    img[_ellipse(x, y, cx, cy - 0.04 + hair_len / 2, fw * 1.25, fh * 1.05 + hair_len / 2, tilt)] = hair
    face = _ellipse(x, y, cx, cy, fw, fh, tilt)
    img[face] = skin
    fringe = face & (y < cy - fh * rng.uniform(0.45, 0.8) + (x - cx) * rng.normal(0, 0.4))
    img[fringe] = hair

    ey, ex = cy - fh * rng.uniform(0.05, 0.2), fw * rng.uniform(0.38, 0.5)
    ew, eh = fw * rng.uniform(0.16, 0.22), fh * rng.uniform(0.06, 0.1)
    iris = _IRIS[rng.integers(len(_IRIS))]
    brow_h, brow_tilt = rng.uniform(0.1, 0.2) * fh, rng.normal(0, 0.15)
    for side in (-1, 1):
        px = cx + side * ex
        img[_ellipse(x, y, px, ey, ew, eh, tilt)] = (245, 245, 240)
        img[_ellipse(x, y, px, ey, eh * 0.9, eh * 0.9)] = iris
        img[_ellipse(x, y, px, ey, eh * 0.4, eh * 0.4)] = (10, 10, 10)
        brow = _ellipse(x, y, px, ey - brow_h, ew * 1.2, eh * 0.35, tilt + side * brow_tilt)
        img[brow] = hair * 0.7

    ny = cy + fh * rng.uniform(0.12, 0.25)
    img[_ellipse(x, y, cx, ny, fw * 0.1, fh * 0.07)] = skin * 0.78
    my, mw = cy + fh * rng.uniform(0.45, 0.6), fw * rng.uniform(0.28, 0.5)
    lips = _mix(np.array([[200, 90, 90], [150, 60, 70], [110, 50, 50]]), rng.uniform())
    smile = rng.uniform(0.0, 1.0)
    mouth = _ellipse(x, y, cx, my, mw, fh * rng.uniform(0.05, 0.12), tilt)
    img[mouth & ~_ellipse(x, y, cx, my - fh * 0.08 * smile, mw * 1.05, fh * 0.1, tilt)] = lips
    img[mouth & (np.abs(y - my) < fh * 0.012)] = lips * 0.5

    light_dir = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.1, 0.35) * ((x - 0.5) * np.cos(light_dir) + (y - 0.5) * np.sin(light_dir))
    img *= shade[..., None] * rng.uniform(0.8, 1.15)
    img += rng.normal(0, 3.0, img.shape)  # sensor noise
    img = img.reshape(resolution, 2, resolution, 2, 3).mean(axis=(1, 3))  # antialiasing box filter
    return np.clip(img, 0, 255).round().astype(np.uint8).transpose(2, 0, 1)
