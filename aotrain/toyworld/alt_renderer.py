"""The toy world's second renderer: the same attribute-object pairs in another drawing style, for evaluation only.

    >>> import numpy as np
    >>> from aotrain.toyworld.alt_renderer import render_alt
    >>> render_alt("star", "striped", "pattern", 32, np.random.default_rng(0)).shape
    (32, 32, 3)

Nothing is shared with shapes.render, whose images train the models: shapes are vector outlines
(polygons with other proportions: a rounded square, a fatter star, a pointy-top hexagon, a crescent
opening the other way ...) placed in pixel space and filled by a crossing-number test at 4x
supersampling, instead of implicit functions on a rotated 2x grid. Backgrounds are textured (a
gradient, soft blotches and grain) instead of a flat tint; colours are shaded and outlined in a
darker tone of their own hue; patterns have other geometry (thinner stripes, staggered dots, a
checkerboard turned 45 degrees, a thinner hollow outline); shapes are smaller and placed anywhere
in the image, rotated up to 30 degrees. A "red star" stays red and a star; a "striped heart" stays
striped (achromatic, so never read as a colour) and a heart.

Brightness keeps the training polarity (dark paper, light ink on a dim fill) on purpose: light
paper with dark ink, the first version of this style, put every model trained on the pool at or
below chance even on colours (attribute top-1 0.05, against 0.67 on the same images with the paper
darkened), so that benchmark measured nothing but a change no training image hinted at.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .shapes import COLOURS

SUPERSAMPLE = 4


# ---------------------------------------------------------------- outlines: [V, 2] (u right, v up), about [-1, 1]^2
def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, r: float, phase: float) -> np.ndarray:
    return _arc(0.0, 0.0, r, phase, phase + 2 * np.pi, n)


def _rounded_square(half: float, corner: float) -> np.ndarray:
    c = half - corner
    quarters = [(c, c, 0.0), (-c, c, 0.5), (-c, -c, 1.0), (c, -c, 1.5)]
    return np.concatenate([_arc(x, y, corner, q * np.pi, (q + 0.5) * np.pi, 6) for x, y, q in quarters])


def _star(points: int, inner: float) -> np.ndarray:
    t = np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)  # the classic parametric heart, scaled to about [-1, 1]
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 17, (y + 2.5) / 15], axis=1)


def _plus(arm: float, reach: float) -> np.ndarray:
    a, r = arm, reach
    return np.array([(a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r), (a, -r), (a, -a),
                     (r, -a), (r, a)])


def _arrow() -> np.ndarray:  # a narrower head than the training arrow's, starting further right
    return np.array([(-0.95, 0.2), (0.15, 0.2), (0.15, 0.68), (0.95, 0.0), (0.15, -0.68), (0.15, -0.2),
                     (-0.95, -0.2)])


# shape -> (outline, hole cut out of it or None)
OUTLINES = {
    "circle": (_regular(40, 0.95, 0.0), None),
    "square": (_rounded_square(0.8, 0.3), None),
    "triangle": (np.array([(0.0, 0.98), (-0.92, -0.78), (0.92, -0.78)]), None),
    "star": (_star(5, 0.52), None),
    "heart": (_heart(), None),
    "cross": (_plus(0.27, 0.95), None),
    "diamond": (np.array([(0.0, 1.0), (-0.5, 0.0), (0.0, -1.0), (0.5, 0.0)]), None),
    "crescent": (_regular(40, 0.95, 0.0), _regular(40, 0.74, 0.0) + (-0.4, 0.12)),  # opens to the left
    "arrow": (_arrow(), None),
    "hexagon": (_regular(6, 0.98, np.pi / 2), None),  # a vertex on top (the training one has a flat top)
}


# ---------------------------------------------------------------- rasterising
@lru_cache(maxsize=4)
def _grid(size: int):
    """Supersampled pixel-centre coordinates in pixels, origin at the image centre, y up: ([n, n], [n, n])."""
    n = size * SUPERSAMPLE
    c = ((np.arange(n) + 0.5) / SUPERSAMPLE - size / 2).astype(np.float32)
    return c[None, :].repeat(n, 0), -c[:, None].repeat(n, 1)


def _window(polys: list[np.ndarray], size: int) -> tuple[slice, slice]:
    """(rows, columns) of the supersampled grid that hold the polygons' bounding box, one pixel wider."""
    pts = np.concatenate(polys)
    (x0, y0), (x1, y1) = pts.min(axis=0) - 1, pts.max(axis=0) + 1
    n = size * SUPERSAMPLE

    def span(lo: float, hi: float) -> slice:  # pixel coordinates (origin at the centre) -> grid indices
        return slice(max(int((lo + size / 2) * SUPERSAMPLE), 0), min(int(math.ceil((hi + size / 2) * SUPERSAMPLE)), n))

    return span(-y1, -y0), span(x0, x1)  # rows run downwards: y up is -row


def _fill(poly: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Bool mask of the grid points inside polygon [V, 2] (pixels): the even-odd crossing-number test."""
    inside = np.zeros(X.shape, bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        if y0 == y1:
            continue  # a horizontal edge is never crossed by a horizontal ray
        crosses = (Y < y0) != (Y < y1)
        inside ^= crosses & (X < x0 + (Y - y0) * float((x1 - x0) / (y1 - y0)))
    return inside


def _edge_distance(polys: list[np.ndarray], X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """[n, n] Euclidean distance in pixels from each grid point to the nearest polygon edge."""
    best = np.full(X.shape, np.inf, np.float32)
    for poly in polys:
        for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
            dx, dy = float(x1 - x0), float(y1 - y0)
            t = np.clip(((X - x0) * dx + (Y - y0) * dy) * (1 / max(dx * dx + dy * dy, 1e-12)), 0, 1)
            ex, ey = X - (x0 + t * dx), Y - (y0 + t * dy)
            np.minimum(best, ex * ex + ey * ey, out=best)
    return np.sqrt(best)


def _coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """[size, size, 1] float32 fraction of each pixel's supersamples in `mask`."""
    return mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)[..., None]


# ---------------------------------------------------------------- patterns: shape frame (x, y) in pixels -> ink mask
def _stripes(x, y, k, rng):
    half = rng.uniform(1.9, 2.3) * k  # thinner than the training stripes
    angle = rng.uniform(0, np.pi)
    t = (x * math.cos(angle) + y * math.sin(angle)) / half + rng.uniform(0, 2)
    return np.floor(t).astype(np.int32) % 2 == 0


def _dots(x, y, k, rng):
    period = rng.uniform(4.0, 4.6) * k
    fy = y / period + rng.uniform(0, 1)
    row = np.floor(fy)
    fx = x / period + rng.uniform(0, 1) + 0.5 * (row.astype(np.int32) % 2)  # staggered rows
    dx, dy = fx - np.floor(fx) - 0.5, fy - row - 0.5
    return dx * dx + dy * dy <= 0.3**2


def _checks(x, y, k, rng):
    cell = rng.uniform(3.4, 4.0) * k
    s = math.sqrt(0.5)  # cells turned 45 degrees in the shape's frame
    cx = np.floor((x + y) * s / cell + rng.uniform(0, 1))
    cy = np.floor((x - y) * s / cell + rng.uniform(0, 1))
    return (cx + cy).astype(np.int32) % 2 == 0


INKS = {"striped": _stripes, "dotted": _dots, "checkered": _checks}


# ---------------------------------------------------------------- the image
def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size, 3] float32: a dark, slightly tinted paper with a gradient, soft blotches and grain."""
    base = rng.uniform(25, 80) + rng.normal(0, 7, 3)
    c = (np.arange(size) + 0.5) / size - 0.5
    gx, gy = rng.uniform(-1, 1, 2) * rng.uniform(0, 40)
    img = base + (c[None, :] * gx + c[:, None] * gy)[..., None]
    coarse = rng.standard_normal((5, 5))  # blotches: a 5x5 field, bilinearly enlarged
    pos = np.linspace(0, 4, size)
    rows = np.stack([np.interp(pos, np.arange(5), r) for r in coarse])  # [5, size]
    field = np.stack([np.interp(pos, np.arange(5), col) for col in rows.T], axis=1)  # [size, size]
    img = img + field[..., None] * rng.uniform(0, 14)
    return (img + rng.standard_normal((size, size, 3)) * rng.uniform(2, 8)).astype(np.float32)


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    return img * (1 - alpha) + alpha * np.asarray(colour, np.float32)


def render_alt(obj: str, attr: str, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One [size, size, 3] uint8 RGB image of `attr obj` in the second style; all randomness from `rng`."""
    k = size / 32
    X, Y = _grid(size)
    # pose: smaller than in training (the [-1, 1] box spans 45-65% of the image), anywhere it fits, +-30 degrees
    radius = rng.uniform(0.45, 0.65) * size / 2
    reach = max(size / 2 - 1.06 * radius, 0.0)
    cx, cy = (float(c) for c in rng.uniform(-reach, reach, 2))
    angle = math.radians(rng.uniform(-30, 30))
    cos, sin = math.cos(angle), math.sin(angle)
    outline, hole = OUTLINES[obj]
    to_pixels = np.array([[cos, sin], [-sin, cos]]) * radius  # shape frame -> image, rotated counter-clockwise
    polys = [p @ to_pixels + (cx, cy) for p in (outline, hole) if p is not None]
    box = _window(polys, size)  # only the grid around the shape is tested: about half the work
    inside, edge = np.zeros(X.shape, bool), np.full(X.shape, np.inf, np.float32)
    inside[box] = _fill(polys[0], X[box], Y[box])
    if hole is not None:
        inside[box] &= ~_fill(polys[1], X[box], Y[box])
    edge[box] = _edge_distance(polys, X[box], Y[box])

    img = _background(size, rng)
    if kind == "colour":
        colour = np.array(COLOURS[attr], np.float32) + rng.normal(0, 10, 3)
        light = math.radians(rng.uniform(100, 170))  # shaded as if lit from the upper left
        h = SUPERSAMPLE // 2
        px, py = X[h::SUPERSAMPLE, h::SUPERSAMPLE], Y[h::SUPERSAMPLE, h::SUPERSAMPLE]  # about the pixel centres
        shade = ((px - cx) * math.cos(light) + (py - cy) * math.sin(light)) / radius  # [size, size], about [-1, 1]
        fill = colour * (1 + 0.14 * np.clip(shade, -1, 1))[..., None]  # [size, size, 3]
        img = _paint(img, _coverage(inside, size), np.clip(fill, 0, 255))
        rim = inside & (edge <= rng.uniform(0.8, 1.2) * k)
        img = _paint(img, _coverage(rim, size), colour * rng.uniform(0.45, 0.6))  # a darker tone of the same hue
    else:
        ink = rng.uniform(195, 230) + rng.normal(0, 3, 3)  # light ink on a dim fill, as in training
        if attr == "hollow":
            img = _paint(img, _coverage(inside & (edge <= rng.uniform(0.9, 1.2) * k), size), ink)
        else:
            x = (X - cx) * cos + (Y - cy) * sin  # shape frame, in pixels
            y = -(X - cx) * sin + (Y - cy) * cos
            on = INKS[attr](x, y, k, rng)
            paper = rng.uniform(75, 105) + rng.normal(0, 3, 3)
            img = _paint(img, _coverage(inside & ~on, size), paper)
            img = _paint(img, _coverage(inside & on, size), ink)
            img = _paint(img, _coverage(inside & (edge <= 0.8 * k), size), ink)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * 2
    return np.clip(img, 0, 255).astype(np.uint8)
