"""Render one toy-world image: a shape (object) painted with an attribute on a dark noisy background.

    >>> import numpy as np
    >>> from aotrain.toyworld.shapes import render
    >>> render("star", "red", "colour", 32, np.random.default_rng(0)).shape
    (32, 32, 3)

Shapes are implicit functions ``inside(u, v) -> bool`` on normalised shape coordinates
(u right, v up, the shape roughly fills [-1, 1]^2). Add a shape by adding it to SHAPES;
colours and patterns live in COLOURS and PATTERNS, grouped by kind in ATTRIBUTE_KINDS.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SUPERSAMPLE = 2  # render masks at 2x and average down: cheap anti-aliasing at 32 px


# ---------------------------------------------------------------- shapes
def _circle(u, v):
    return u * u + v * v <= 0.92**2


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _diamond(u, v):
    # a rhombus clearly taller than wide, so it never looks like a square rotated by <= 20 degrees
    return np.abs(u) / 0.62 + np.abs(v) / 1.0 <= 1.0


def _triangle(u, v):
    # equilateral, pointing up, circumradius 1.15, bounding box centred vertically
    r, v = 1.15, v + 0.29
    n = np.sqrt(3) / 2
    return (v >= -r / 2) & (n * u + 0.5 * v <= r / 2) & (-n * u + 0.5 * v <= r / 2)


def _star(u, v, points=5, inner=0.45):
    # fold the angle into one half-spike (tip at angle 0, radius 1; valley at pi/points, radius
    # `inner`); inside when the point's projection on the tip-valley edge normal is short enough
    half = np.pi / points
    ang = np.abs(np.mod(np.arctan2(u, v) + half, 2 * half) - half)
    tip, valley = np.array([0.0, 1.0]), inner * np.array([np.sin(half), np.cos(half)])
    edge = valley - tip
    normal_angle = float(np.arctan2(-edge[1], edge[0]))  # angle (from the tip axis) of the edge normal
    dist = float(np.dot(tip, [np.sin(normal_angle), np.cos(normal_angle)]))
    return np.hypot(u, v) * np.cos(ang - normal_angle) <= dist


def _heart(u, v):
    x, y = u * 1.2, v * 1.2 + 0.15
    t = x * x + y * y - 1
    return t * t * t <= x * x * y * y * y  # (x^2+y^2-1)^3 - x^2 y^3 <= 0, without slow float powers


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))


def _crescent(u, v):
    return (u * u + v * v <= 0.92**2) & ((u - 0.42) ** 2 + (v - 0.1) ** 2 > 0.72**2)


def _arrow(u, v):
    # points right: shaft plus a triangular head
    shaft = (np.abs(v) <= 0.22) & (u >= -0.95) & (u <= 0.05)
    head = (u >= 0.0) & (np.abs(v) <= 0.78 * (0.95 - u) / 0.95)
    return shaft | head


def _hexagon(u, v):
    n = np.sqrt(3) / 2
    au, av = np.abs(u), np.abs(v)
    return (av <= n * 0.95) & (n * au + 0.5 * av <= n * 0.95)


SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "heart": _heart,
    "cross": _cross,
    "diamond": _diamond,
    "crescent": _crescent,
    "arrow": _arrow,
    "hexagon": _hexagon,
}


# ---------------------------------------------------------------- attributes
COLOURS = {  # saturated fills; none of them is grey/white, which the patterns use
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 35),
    "green": (40, 175, 55),
    "cyan": (35, 210, 225),
    "blue": (35, 75, 235),
    "purple": (145, 45, 205),
    "pink": (250, 120, 195),
}


# Patterns: (x, y) in pixels of the shape's own frame, k = image_size / 32 -> bool "light" mask.
# (floor-based parity/fractions instead of np.mod: several times faster on these small arrays)
def _striped(x, y, k, rng):
    half = rng.uniform(2.5, 3.0) * k  # half the period: stripes and gaps of equal width
    angle = rng.uniform(0, np.pi)
    t = (x * math.cos(angle) + y * math.sin(angle)) * (1 / half) + rng.uniform(0, 2)
    return (np.floor(t).astype(np.int32) & 1) == 0


def _dotted(x, y, k, rng):
    period = rng.uniform(4.6, 5.4) * k
    fx = x * (1 / period) + rng.uniform(0, 1)
    fy = y * (1 / period) + rng.uniform(0, 1)
    dx, dy = fx - np.floor(fx) - 0.5, fy - np.floor(fy) - 0.5
    return dx * dx + dy * dy <= 0.27**2


def _checkered(x, y, k, rng):
    cell = rng.uniform(2.7, 3.3) * k
    cx = np.floor(x * (1 / cell) + rng.uniform(0, 1))
    cy = np.floor(y * (1 / cell) + rng.uniform(0, 1))
    return ((cx + cy).astype(np.int32) & 1) == 0


PATTERNS = {"striped": _striped, "dotted": _dotted, "checkered": _checkered, "hollow": None}
# hollow has no texture: it is drawn as an outline (the shape minus an eroded copy)

ATTRIBUTE_KINDS = {"colour": COLOURS, "pattern": PATTERNS}


# ---------------------------------------------------------------- rendering
@lru_cache(maxsize=8)
def _grid(size: int):
    """Supersampled pixel-centre coordinates in pixels, origin at the image centre, y up."""
    n = size * SUPERSAMPLE
    c = ((np.arange(n) + 0.5) / SUPERSAMPLE - size / 2).astype(np.float32)  # float32: ~2x faster maths
    return c[None, :].repeat(n, 0), -c[:, None].repeat(n, 1)


def _pool(mask: np.ndarray, size: int) -> np.ndarray:
    """Average a supersampled bool mask down to [size, size] float32 coverage in [0, 1]."""
    m = mask.view(np.uint8)
    total = sum(m[i::SUPERSAMPLE, j::SUPERSAMPLE] for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
    return total * np.float32(1 / SUPERSAMPLE**2)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion with a (2r+1)^2 square, done separably: rows, then columns."""
    n0, n1 = mask.shape
    padded = np.pad(mask, radius)
    rows = padded[:n0].copy()
    for d in range(1, 2 * radius + 1):
        rows &= padded[d : d + n0]
    out = rows[:, :n1].copy()
    for d in range(1, 2 * radius + 1):
        out &= rows[:, d : d + n1]
    return out


def render(obj: str, attr: str, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One [size, size, 3] uint8 RGB image of `attr obj`; all randomness comes from `rng`."""
    k = size / 32
    X, Y = _grid(size)
    # pose: the shape's [-1, 1] box spans 50-80% of the image, jittered, rotated +-20 degrees
    # (python floats, not numpy float64 scalars, so the float32 grid stays float32)
    radius = rng.uniform(0.5, 0.8) * size / 2
    shift = max(size / 2 - 1.05 * radius, 0.0) * 0.8
    cx, cy = (float(c) for c in rng.uniform(-shift, shift, 2))
    angle = math.radians(rng.uniform(-20, 20))
    cos, sin = math.cos(angle), math.sin(angle)
    x = (X - cx) * cos + (Y - cy) * sin  # shape frame, in pixels
    y = -(X - cx) * sin + (Y - cy) * cos
    inside = SHAPES[obj](x / radius, y / radius)

    # background: a random dark tint and a soft gradient (noise is added at the end)
    tint = rng.uniform(5, 55, 3).astype(np.float32)
    gx, gy = (float(v) * 12 / size for v in rng.uniform(-1, 1, 2))
    ramp = X[:: SUPERSAMPLE, :: SUPERSAMPLE] * gx + Y[:: SUPERSAMPLE, :: SUPERSAMPLE] * gy
    img = tint + ramp[..., None]

    if kind == "colour":
        layers = [(_pool(inside, size), np.array(COLOURS[attr]) + rng.normal(0, 12, 3))]
    else:
        light = rng.uniform(215, 245) + rng.normal(0, 3, 3)
        if attr == "hollow":
            ring = inside & ~_erode(inside, max(1, round(1.5 * k * SUPERSAMPLE)))
            layers = [(_pool(ring, size), light)]
        else:
            on = PATTERNS[attr](x, y, k, rng)
            dim = rng.uniform(80, 105) + rng.normal(0, 3, 3)
            layers = [(_pool(inside & on, size), light), (_pool(inside & ~on, size), dim)]
    cover = np.zeros((size, size, 1), np.float32)
    for alpha, colour in layers:
        alpha = alpha[..., None]
        img = img * (1 - alpha) + alpha * colour.astype(np.float32)
        cover += alpha
    # one noise draw: strong on the background, faint on the shape
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * (7 - 4 * cover)
    return np.clip(img, 0, 255).astype(np.uint8)
