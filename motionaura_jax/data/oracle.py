"""Pixel oracle for `shapes` clips: colour, shape, motion and speed of every object.

Classical image processing only (NumPy + SciPy), so it runs on CPU next to training:
  1. background: per-row median of the achromatic, dark pixels (every `shapes`
     background is achromatic and at most 0.45 bright; per row handles gradients);
  2. objects: connected components of pixels far from the background (after a light
     blur against noise); each component's colour is the palette entry nearest to its
     core pixels, and its coverage `alpha` is the projection of (pixel - background)
     onto (colour - background), which undoes anti-aliasing and blur halos;
  3. shape: soft IoU of `alpha` against every shape template (`render.coverage`),
     placed and sized from the moments of `alpha` and blurred by a few candidate widths
     (so blurry generated clips still read);
  4. tracks: components linked frame to frame by centroid distance (Hungarian);
     motion and speed from a least-squares fit of the centroid path.

Inputs are videos `(T, H, W, 3)` in [-1, 1] (D1). `score_caption` checks a clip
against its caption, `temporal_consistency` checks that tracked objects keep their
colour and shape, `object_in_region` reads the object inside an (inpainting) mask and
`classify_sketch` reads the shape of a sketch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from motionaura_jax.data import render
from motionaura_jax.data.config import COLORS, MOTION_VECTORS, MOTIONS, PALETTE, SPEED_TRAVEL
from motionaura_jax.data.shapes import SHAPES, parse_caption

_FG_DISTANCE = 0.25  # RGB distance in [0, 1] units that marks a pixel as foreground
_STILL_TRAVEL = 0.06  # clip displacement under this fraction of min(H, W) is "still"
_MIN_AREA_FRACTION = 0.0015  # smaller components are noise (6 px at 64 x 64)
_BLURS = (0.0, 0.8, 1.6)  # candidate blur widths (px) of the shape templates


@dataclasses.dataclass
class Blob:
    """One object in one frame."""

    frame: int
    color: str
    shape: str
    centroid: np.ndarray  # (2,) x, y in pixels
    area: float  # sum of alpha
    shape_scores: dict[str, float]


@dataclasses.dataclass
class Track:
    """One object followed through the clip."""

    blobs: list[Blob]
    color: str  # majority over frames
    shape: str
    motion: str | None  # None for single frames
    speed: str | None
    displacement: np.ndarray  # (2,) over the clip, in pixels
    consistent: bool  # same colour and shape in every frame it appears in


def degrade(
    video: np.ndarray, *, noise: float = 0.0, blur: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Gaussian spatial blur (sigma in px) then Gaussian noise (std in [-1, 1] units)."""
    out = np.asarray(video, np.float32)
    if blur > 0:
        out = ndimage.gaussian_filter(out, sigma=(0, blur, blur, 0))
    if noise > 0:
        out = out + np.random.default_rng(seed).normal(0, noise, out.shape).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video, np.float32)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(
            f"oracle expects a video (T, H, W, 3) in [-1, 1], got shape {video.shape}; "
            "pass one clip, channels-last"
        )
    return (video + 1.0) * 0.5


def _background_rows(rgb_thw3: np.ndarray) -> np.ndarray:
    """Per-row background colour (H, 3) from achromatic, dark pixels."""
    chroma = rgb_thw3.max(-1) - rgb_thw3.min(-1)
    candidate = (chroma < 0.15) & (rgb_thw3.max(-1) < 0.6)  # (T, H, W)
    # (H, T*W, 3) with non-candidates as NaN: one vectorised per-row median.
    pix = np.where(candidate[..., None], rgb_thw3, np.nan).transpose(1, 0, 2, 3)
    pix = pix.reshape(rgb_thw3.shape[1], -1, 3)
    enough = candidate.sum(axis=(0, 2)) >= 4
    rows = np.full((rgb_thw3.shape[1], 3), np.nan, np.float32)
    if enough.any():
        rows[enough] = np.nanmedian(pix[enough], axis=1)
    known = ~np.isnan(rows[:, 0])
    if not known.any():
        return np.broadcast_to(np.median(rgb_thw3.reshape(-1, 3), axis=0), rows.shape).copy()
    ys = np.arange(len(rows))
    for c in range(3):
        rows[:, c] = np.interp(ys, ys[known], rows[known, c])
    return rows


def _nearest_color(rgb: np.ndarray, colors: Sequence[str]) -> str:
    palette = np.array([PALETTE[c] for c in colors], np.float32)
    return colors[int(np.argmin(((palette - rgb) ** 2).sum(-1)))]


@functools.cache
def _unit_moments(shape: str) -> tuple[float, float, float, float]:
    """Centroid (x, y) and variances (x, y) of a filled shape in unit-box coordinates."""
    y, x = np.mgrid[-1:1:400j, -1:1:400j]
    a = (render.unit_sdf(shape, x, y) <= 0).astype(np.float64)
    m = a.sum()
    mx, my = (a * x).sum() / m, (a * y).sum() / m
    return mx, my, (a * (x - mx) ** 2).sum() / m, (a * (y - my) ** 2).sum() / m


def _classify_shape(alpha_hw: np.ndarray, shapes: Sequence[str]) -> tuple[str, dict[str, float]]:
    """Best template by soft IoU, with geometry fitted to the moments of `alpha`.

    Thresholds and bounding boxes shift under blur; moments do not: a Gaussian blur of
    width b keeps the centroid and adds b² to each variance. So for each shape and each
    candidate blur b the template's centre and half-sizes follow from the observed
    centroid and variances, the template is blurred by b, and the best b counts.
    """
    ys, xs = np.nonzero(alpha_hw > 0)
    if len(ys) == 0:
        return shapes[0], {s: 0.0 for s in shapes}
    pad = 4
    sy = slice(max(ys.min() - pad, 0), min(ys.max() + 1 + pad, alpha_hw.shape[0]))
    sx = slice(max(xs.min() - pad, 0), min(xs.max() + 1 + pad, alpha_hw.shape[1]))
    patch = alpha_hw[sy, sx].astype(np.float64)
    gy, gx = np.mgrid[sy, sx].astype(np.float64) + 0.5
    mass = patch.sum()
    mx, my = (patch * gx).sum() / mass, (patch * gy).sum() / mass
    vx = (patch * (gx - mx) ** 2).sum() / mass
    vy = (patch * (gy - my) ** 2).sum() / mass
    blurs = np.array([b for b in _BLURS if min(vx, vy) - b * b > 0.25])  # b < object
    if len(blurs) == 0:
        return shapes[0], {s: 0.0 for s in shapes}
    scores = {}
    for s in shapes:
        ux, uy, ux2, uy2 = _unit_moments(s)
        rx = np.sqrt((vx - blurs**2) / ux2)[:, None, None]  # (B, 1, 1): one fit per b
        ry = np.sqrt((vy - blurs**2) / uy2)[:, None, None]
        templates = render.coverage(s, gx, gy, mx - ux * rx, my - uy * ry, rx, ry)
        best = 0.0
        for b, template in zip(blurs, templates, strict=True):
            if b > 0:
                template = ndimage.gaussian_filter(template, b, mode="constant")
            iou = np.minimum(patch, template).sum() / np.maximum(patch, template).sum()
            best = max(best, float(iou))
        scores[s] = best
    return max(scores, key=scores.get), scores


def _frame_blobs(
    rgb_hw3: np.ndarray,
    smooth_hw3: np.ndarray,
    bg_h3: np.ndarray,
    frame: int,
    colors: Sequence[str],
    shapes: Sequence[str],
    region_hw: np.ndarray | None = None,
) -> list[Blob]:
    height, width = rgb_hw3.shape[:2]
    diff = smooth_hw3 - bg_h3[:, None]
    dist = np.sqrt((diff**2).sum(-1))
    fg = ndimage.binary_opening(dist > _FG_DISTANCE)
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3)))
    min_area = _MIN_AREA_FRACTION * fg.size
    blobs = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        # Work in a window around the component, grown for the blur halo.
        ys = slice(max(box[0].start - 3, 0), min(box[0].stop + 3, height))
        xs = slice(max(box[1].start - 3, 0), min(box[1].stop + 3, width))
        comp = labels[ys, xs] == k
        if comp.sum() < min_area:
            continue
        if region_hw is not None and not (comp & region_hw[ys, xs]).any():
            continue
        # Core pixels (the farther half from the background) carry the unblended colour.
        d = dist[ys, xs][comp]
        core = smooth_hw3[ys, xs][comp][d >= np.median(d)].mean(0)
        color = _nearest_color(core, colors)
        bg = bg_h3[ys]  # (h, 3) background of the window's rows
        row = int(round(ndimage.center_of_mass(comp)[0]))
        axis = core - bg[row]
        # Coverage over the component grown by two pixels (the blur halo belongs to it).
        grown = ndimage.binary_dilation(comp, iterations=2)
        proj = ((rgb_hw3[ys, xs] - bg[:, None]) * axis).sum(-1) / max(float(axis @ axis), 1e-6)
        alpha = np.zeros((height, width), np.float32)
        alpha[ys, xs] = np.where(grown, np.clip(proj, 0.0, 1.0), 0.0)
        shape, scores = _classify_shape(alpha, shapes)
        total = float(alpha.sum())
        cy, cx = ndimage.center_of_mass(alpha) if total > 0 else (np.nan, np.nan)
        blobs.append(Blob(frame, color, shape, np.array([cx, cy]), total, scores))
    return blobs


def _link(per_frame: list[list[Blob]], max_jump: float) -> list[list[Blob]]:
    """Links blobs into tracks by centroid distance (Hungarian), bridging 1-frame gaps."""
    tracks: list[list[Blob]] = []
    for t, blobs in enumerate(per_frame):
        live = [tr for tr in tracks if tr[-1].frame >= t - 2]
        matched = set()
        if live and blobs:
            cost = np.array(
                [[np.linalg.norm(tr[-1].centroid - b.centroid) for b in blobs] for tr in live]
            )
            gaps = np.array([t - tr[-1].frame for tr in live], np.float64)[:, None]
            for i, j in zip(*optimize.linear_sum_assignment(cost), strict=True):
                if cost[i, j] <= max_jump * gaps[i, 0]:
                    live[i].append(blobs[j])
                    matched.add(j)
        tracks += [[b] for j, b in enumerate(blobs) if j not in matched]
    return tracks


def _majority(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0]


def _motion_of(
    blobs: list[Blob], num_frames: int, side: float, motions: Sequence[str], speeds: Sequence[str]
) -> tuple[str | None, str | None, np.ndarray]:
    if num_frames < 2 or len(blobs) < 2:
        return None, None, np.zeros(2)
    t = np.array([b.frame for b in blobs], np.float64)
    xy = np.stack([b.centroid for b in blobs])
    velocity = np.polyfit(t, xy, 1)[0]  # (2,) px per frame, least squares
    displacement = velocity * (num_frames - 1)
    travel = float(np.linalg.norm(displacement)) / side
    if travel < _STILL_TRAVEL:
        return "still", None, displacement
    moving = [m for m in motions if m != "still"] or [m for m in MOTIONS if m != "still"]
    unit = displacement / np.linalg.norm(displacement)
    motion = max(moving, key=lambda m: float(np.dot(MOTION_VECTORS[m], unit)))
    speed = min(speeds, key=lambda s: abs(SPEED_TRAVEL[s] - travel))
    return motion, speed, displacement


def analyze_clip(
    video: np.ndarray,
    *,
    colors: Sequence[str] = COLORS,
    shapes: Sequence[str] = SHAPES,
    motions: Sequence[str] = MOTIONS,
    speeds: Sequence[str] = tuple(SPEED_TRAVEL),
    region: np.ndarray | None = None,
    min_track_fraction: float = 0.5,
) -> list[Track]:
    """Finds and tracks the objects of one clip.

    Args:
      video: (T, H, W, 3) in [-1, 1] (or one frame (H, W, 3)).
      colors, shapes, motions, speeds: the vocabularies to choose from (restricting them
        to a config's lists makes the oracle stricter about near-miss colours).
      region: optional bool mask (H, W) or (T, H, W); only components touching it count.
      min_track_fraction: tracks seen in fewer frames than this fraction are dropped
        (flicker and noise in generated clips).
    Returns:
      tracks, longest first.
    """
    rgb = _check_video(video)
    num_frames, height, width, _ = rgb.shape
    if region is not None:
        region = np.broadcast_to(np.asarray(region, bool), (num_frames, height, width))
    smooth = ndimage.gaussian_filter(rgb, sigma=(0, 0.7, 0.7, 0))
    bg = _background_rows(rgb)
    per_frame = [
        _frame_blobs(
            rgb[t], smooth[t], bg, t, colors, shapes, None if region is None else region[t]
        )
        for t in range(num_frames)
    ]
    side = float(min(height, width))
    tracks = []
    for blobs in _link(per_frame, max_jump=0.3 * side):
        if len(blobs) < min_track_fraction * num_frames:
            continue
        color = _majority([b.color for b in blobs])
        shape = _majority([b.shape for b in blobs])
        motion, speed, disp = _motion_of(blobs, num_frames, side, motions, speeds)
        consistent = all(b.color == color and b.shape == shape for b in blobs)
        tracks.append(Track(blobs, color, shape, motion, speed, disp, consistent))
    return sorted(tracks, key=lambda tr: -len(tr.blobs))


def _match_score(obj: dict[str, Any], track: Track) -> int:
    # Colour dominates the assignment: it is what a caption uses to name an object.
    return (
        4 * (obj["color"] == track.color)
        + 2 * (obj["shape"] == track.shape)
        + (obj["motion"] is not None and obj["motion"] == track.motion)
    )


def score_caption(video: np.ndarray, caption: str, **vocab: Sequence[str]) -> dict[str, Any]:
    """Per-attribute correctness of a clip against its (template) caption.

    Returns:
      {'color', 'shape', 'motion', 'speed': fraction of caption objects whose attribute
       the clip shows (None when the caption states no motion/speed), 'count': the clip
       shows as many objects as the caption names, 'too_few': it shows fewer,
       'repeat_color': a captioned colour shows on more objects than the caption gives
       it (e.g. a two-object caption drawn as two objects of one of its colours), 'all':
       every attribute right and the count matches, 'objects': per-object dicts of
       booleans}.
    """
    wanted = parse_caption(caption)
    tracks = analyze_clip(video, **vocab)
    slots: list[Track | None] = list(tracks) + [None] * len(wanted)
    best, best_score = None, -1
    for perm in itertools.permutations(range(len(slots)), len(wanted)):
        score = sum(
            _match_score(o, slots[p]) for o, p in zip(wanted, perm, strict=True) if slots[p]
        )
        if score > best_score:
            best, best_score = perm, score
    per_object = []
    for obj, p in zip(wanted, best, strict=True):
        tr = slots[p]
        per_object.append(
            {
                "color": tr is not None and tr.color == obj["color"],
                "shape": tr is not None and tr.shape == obj["shape"],
                "motion": None
                if obj["motion"] is None
                else tr is not None and tr.motion == obj["motion"],
                "speed": None
                if obj["speed"] is None
                else tr is not None and tr.speed == obj["speed"],
            }
        )
    named = Counter(o["color"] for o in wanted)
    drawn = Counter(tr.color for tr in tracks)
    result: dict[str, Any] = {
        "objects": per_object,
        "count": len(tracks) == len(wanted),
        "too_few": len(tracks) < len(wanted),
        "repeat_color": any(drawn[c] > n for c, n in named.items()),
    }
    for key in ("color", "shape", "motion", "speed"):
        vals = [o[key] for o in per_object if o[key] is not None]
        result[key] = float(np.mean(vals)) if vals else None
    result["all"] = result["count"] and all(
        v for o in per_object for v in o.values() if v is not None
    )
    return result


def temporal_consistency(
    video: np.ndarray, region: np.ndarray | None = None, **vocab: Sequence[str]
) -> dict[str, float]:
    """Do tracked objects keep their colour and shape across frames?

    `region` (optional bool (H, W) or (T, H, W), e.g. an inpainting hole) restricts the
    tracks to objects touching it.

    Returns:
      {'color': mean over tracks of the fraction of frames agreeing with the track's
       majority colour, 'shape': the same for shape, 'consistent_tracks': fraction of
       tracks with no disagreeing frame, 'num_tracks'}.
    """
    tracks = analyze_clip(video, region=region, **vocab)
    if not tracks:
        return {"color": 0.0, "shape": 0.0, "consistent_tracks": 0.0, "num_tracks": 0}
    frac = {
        key: float(
            np.mean(
                [np.mean([getattr(b, key) == getattr(tr, key) for b in tr.blobs]) for tr in tracks]
            )
        )
        for key in ("color", "shape")
    }
    frac["consistent_tracks"] = float(np.mean([tr.consistent for tr in tracks]))
    frac["num_tracks"] = len(tracks)
    return frac


def object_in_region(
    video: np.ndarray, region: np.ndarray, **vocab: Sequence[str]
) -> dict[str, Any]:
    """Colour and shape of the object inside `region` (e.g. an inpainting mask).

    Args:
      video: (T, H, W, 3) in [-1, 1].
      region: bool/0-1 mask (H, W) or (T, H, W).
    Returns:
      {'found': bool, 'color', 'shape' (None if nothing found), 'frames': number of
       frames where an object touches the region}. Components are classified whole,
       including pixels outside the region, so a shape cut by the mask edge still reads.
    """
    rgb = np.asarray(video)
    num_frames = rgb.shape[0] if rgb.ndim == 4 else 1
    region = np.broadcast_to(np.asarray(region, bool), (num_frames, *rgb.shape[-3:-1]))
    tracks = analyze_clip(video, region=region, min_track_fraction=0.0, **vocab)
    blobs = [b for tr in tracks for b in tr.blobs]
    if not blobs:
        return {"found": False, "color": None, "shape": None, "frames": 0}
    # One object per frame: the largest touching the region.
    by_frame: dict[int, Blob] = {}
    for b in blobs:
        if b.frame not in by_frame or b.area > by_frame[b.frame].area:
            by_frame[b.frame] = b
    chosen = list(by_frame.values())
    return {
        "found": True,
        "color": _majority([b.color for b in chosen]),
        "shape": _majority([b.shape for b in chosen]),
        "frames": len(chosen),
    }


def classify_sketch(sketch: np.ndarray, shapes: Sequence[str] = SHAPES) -> str:
    """Shape drawn in a sketch (H, W, 3) in [-1, 1], dark lines on white."""
    gray = np.asarray(sketch, np.float32).mean(-1)
    ink = gray < 0.0
    filled = ndimage.binary_fill_holes(ink)
    if not filled.any():
        raise ValueError("sketch has no ink (all pixels are light); pass a line drawing")
    return _classify_shape(filled.astype(np.float32), shapes)[0]


ATTRIBUTES = ("color", "shape", "motion")
CLIP_READINGS = ("count", "all", "too_few", "repeat_color")


class CaptionTally:
    """Running oracle caption accuracy: `add` clips one at a time, then read `scores`.

    Per attribute: the fraction of captioned objects whose colour / shape / motion the
    clips show; `mean` over the three; `count`: clips showing as many objects as their
    caption names; `all`: clips with every attribute right and the right object count.
    Two readings say how multi-object captions fail: `too_few`, clips showing fewer
    objects than named (one missing, or two merged into one blob), and `repeat_color`,
    clips drawing a captioned colour on more objects than the caption gives it (the
    other object's colour copied).
    `data_config` (a `shapes` data config) limits the readings to its colours, shapes and
    motions. Clips are not kept, so a long evaluation holds one batch at a time.
    """

    def __init__(self, data_config: Any):
        self.data_config = data_config
        self.vocab = dict(
            colors=tuple(data_config.colors),
            shapes=tuple(data_config.shapes),
            motions=tuple(data_config.motions),
        )
        self.hits: dict[str, list[bool]] = {k: [] for k in ATTRIBUTES}
        # Per-clip readings, `CLIP_READINGS` (see `score_caption`).
        self.clips: dict[str, list[bool]] = {k: [] for k in CLIP_READINGS}
        # The same readings split by how many objects the caption names (`scores(by_count)`).
        self.by_count: dict[int, CaptionTally] = {}

    def add(self, video: np.ndarray, caption: str) -> dict[str, Any]:
        """One clip (T, H, W, 3) in [-1, 1] and its caption; returns its `score_caption`."""
        result = score_caption(np.asarray(video, np.float32), caption, **self.vocab)
        self._tally(result)
        n = len(result["objects"])
        self.by_count.setdefault(n, CaptionTally(self.data_config))._tally(result)
        return result

    def _tally(self, result: dict[str, Any]) -> None:
        for obj in result["objects"]:
            for k in ATTRIBUTES:
                if obj[k] is not None:
                    self.hits[k].append(obj[k])
        for k in CLIP_READINGS:
            self.clips[k].append(bool(result[k]))

    def scores(self, prefix: str = "caption_", by_count: bool = False) -> dict[str, float]:
        """The readings as `<prefix><attribute>`, `mean`, `count`, `all`, `too_few` and
        `repeat_color`; with `by_count`, also each of them over the clips whose caption
        names n objects, as `<prefix><key>_<n>obj` (e.g. `caption_motion_2obj`)."""
        out = {prefix + k: float(np.mean(v)) if v else 0.0 for k, v in self.hits.items()}
        out[prefix + "mean"] = float(np.mean([out[prefix + k] for k in ATTRIBUTES]))
        out.update({prefix + k: float(np.mean(v)) for k, v in self.clips.items()})
        if by_count:
            for n, tally in sorted(self.by_count.items()):
                for key, value in tally.scores(prefix).items():
                    out[f"{key}_{n}obj"] = value
        return out


def score_clips(
    videos: Sequence[np.ndarray],
    captions: Sequence[str],
    data_config: Any,
    prefix: str = "caption_",
    by_count: bool = False,
) -> dict[str, float]:
    """Oracle caption accuracy of clips (T, H, W, 3) in [-1, 1] (see `CaptionTally`)."""
    tally = CaptionTally(data_config)
    for video, caption in zip(videos, captions, strict=True):
        tally.add(video, caption)
    return tally.scores(prefix, by_count=by_count)
