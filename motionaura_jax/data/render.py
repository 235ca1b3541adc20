"""Anti-aliased NumPy rendering of the `shapes` primitives.

Every shape is described in a unit box `[-1, 1]²` (x right, y down) as a polygon, or
analytically for the circle, and rendered through an exact signed distance field
(SDF, in pixels): coverage `alpha = clip(0.5 - sdf, 0, 1)` gives one-pixel
anti-aliasing, `clip(w / 2 + 0.5 - |sdf|, 0, 1)` gives a `w`-pixel outline. The same
code renders the training clips, the sketches and the oracle's shape templates, so
the oracle compares pixels against exactly the geometry that produced them.

All shapes fill their unit box (the bounding box of every shape is the full box),
which lets the oracle stretch a template onto any observed bounding box.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")


def _star_vertices(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _fit_unit_box(vertices: np.ndarray) -> np.ndarray:
    """Stretches a polygon so that its bounding box is exactly [-1, 1]²."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    return (2.0 * (vertices - lo) / (hi - lo) - 1.0).astype(np.float64)


_ARM = 0.36  # half-width of the cross arms, in unit-box coordinates
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64),
    # Upright isosceles triangle pointing up (image y grows downwards).
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], np.float64),
    "diamond": np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], np.float64),
    "cross": np.array(
        [
            (-_ARM, -1),
            (_ARM, -1),
            (_ARM, -_ARM),
            (1, -_ARM),
            (1, _ARM),
            (_ARM, _ARM),
            (_ARM, 1),
            (-_ARM, 1),
            (-_ARM, _ARM),
            (-1, _ARM),
            (-1, -_ARM),
            (-_ARM, -_ARM),
        ],
        np.float64,
    ),
    "star": _fit_unit_box(_star_vertices()),
}


def unit_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) in unit-box coordinates.

    Args:
      shape: one of `SHAPES`.
      u, v: broadcastable arrays of unit-box coordinates, any shape `S`.
    Returns:
      float array of shape `S`. Exact for polygons (distance to the nearest edge with
      an even-odd inside test), exact for the circle.
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape not in POLYGONS:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    verts = POLYGONS[shape]
    a = verts  # (E, 2) edge starts
    b = np.roll(verts, -1, axis=0)
    pu, pv = u[..., None], v[..., None]  # (..., 1) broadcast over edges
    ex, ey = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    wx, wy = pu - a[:, 0], pv - a[:, 1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dist = np.sqrt(((wx - t * ex) ** 2 + (wy - t * ey) ** 2).min(axis=-1))
    # Even-odd crossing test along +u: an edge counts when it straddles v.
    straddles = (a[:, 1] > pv) != (b[:, 1] > pv)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_cross = a[:, 0] + (pv - a[:, 1]) * ex / ey
    inside = (straddles & (pu < u_cross)).sum(axis=-1) % 2 == 1
    return np.where(inside, -dist, dist)


def coverage(
    shape: str,
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray | float,
    cy: np.ndarray | float,
    rx: np.ndarray | float,
    ry: np.ndarray | float | None = None,
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy) with half-sizes rx, ry.

    Args:
      x, y: pixel-centre coordinates, broadcastable to the output shape.
      cx, cy: centre in pixels, broadcastable as well (e.g. (T, 1, 1) for a moving object).
      rx, ry: half-width and half-height in pixels (ry defaults to rx), broadcastable.
    """
    ry = rx if ry is None else ry
    u, v = (x - cx) / rx, (y - cy) / ry
    # Unit SDF times the smaller half-size is a pixel distance, exact for rx == ry and a
    # close (conservative) estimate for the mildly stretched templates of the oracle.
    sdf_px = unit_sdf(shape, u, v) * np.minimum(rx, ry)
    return np.clip(0.5 - sdf_px, 0.0, 1.0)


def outline(
    shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, width: float
) -> np.ndarray:
    """Anti-aliased ink in [0, 1] of a `width`-pixel outline of the shape."""
    sdf_px = unit_sdf(shape, (x - cx) / r, (y - cy) / r) * r
    return np.clip(width / 2 + 0.5 - np.abs(sdf_px), 0.0, 1.0)


def track_patches(
    shape: str, centers_t2: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage of one object moving along `centers_t2` (pixels, (T, 2) as x, y), in a
    small square patch around it per frame (the object never changes shape, only sub-pixel
    position), so the cost is independent of the frame size.

    Returns:
      (coverage float32 (T, P, P), x0 int (T,), y0 int (T,)): pixel (y0 + i, x0 + j) of
      frame t has coverage[t, i, j]; the patch may reach past the frame's edges.
    """
    patch = int(np.ceil(2 * radius)) + 4
    x0 = np.floor(centers_t2[:, 0] - radius - 1.5).astype(np.int64)  # (T,)
    y0 = np.floor(centers_t2[:, 1] - radius - 1.5).astype(np.int64)
    offs = np.arange(patch)
    gx = (x0[:, None] + offs)[:, None, :] + 0.5  # (T, 1, P) pixel centres
    gy = (y0[:, None] + offs)[:, :, None] + 0.5  # (T, P, 1)
    cov = coverage(
        shape, gx, gy, centers_t2[:, 0, None, None], centers_t2[:, 1, None, None], radius
    )
    return cov.astype(np.float32), x0, y0


def patch_windows(x0: np.ndarray, y0: np.ndarray, patch: int, height: int, width: int):
    """Per frame t of `track_patches`: (t, frame window, patch window), the slices of the
    (height, width) frame and of the (P, P) patch where the two overlap."""
    for t in range(len(x0)):
        ys = slice(max(y0[t], 0), min(y0[t] + patch, height))
        xs = slice(max(x0[t], 0), min(x0[t] + patch, width))
        inner = (
            slice(ys.start - y0[t], ys.stop - y0[t]),
            slice(xs.start - x0[t], xs.stop - x0[t]),
        )
        yield t, (ys, xs), inner


def render_track(
    shape: str, centers_t2: np.ndarray, radius: float, height: int, width: int
) -> np.ndarray:
    """`track_patches` pasted into whole frames: float32 (T, H, W) coverage in [0, 1]."""
    cov, x0, y0 = track_patches(shape, centers_t2, radius)
    out = np.zeros((len(cov), height, width), np.float32)
    for t, window, inner in patch_windows(x0, y0, cov.shape[-1], height, width):
        out[t][window] = cov[t][inner]
    return out


def render_sketch(shape: str, height: int, width: int, *, scale: float = 0.35) -> np.ndarray:
    """Line drawing of `shape`, centred, half-size `scale * min(H, W)`, dark on white.

    Returns:
      float32 (H, W, 3) in [-1, 1]: white paper (1) with black ink (-1).
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    r = scale * min(height, width)
    line = max(1.5, min(height, width) / 32)
    ink = outline(shape, x, y, width / 2, height / 2, r, line)
    paper = (1.0 - 2.0 * ink).astype(np.float32)
    return np.repeat(paper[..., None], 3, axis=-1)


def blank_sketch(height: int, width: int) -> np.ndarray:
    """A white page (no object): float32 (H, W, 3) of ones."""
    return np.ones((height, width, 3), np.float32)
