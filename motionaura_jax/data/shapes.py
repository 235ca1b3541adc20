"""The built-in synthetic `shapes` dataset (DESIGN §4): captioned videos made per index.

A clip shows one or more anti-aliased objects on a simple background; each object has
a colour, a shape, a motion and a speed, and the caption states them from a template:
"a red circle moves left" or, with two objects, "a red circle moves left and a blue
square moves up" (with `caption_speed`, "... moves left quickly"; for single images,
T = 1, "a red circle"). Nothing is read from disk: `ShapesSource[i]` renders clip `i`
from a generator seeded by (seed, split, i), so the same triple gives the same clip on
any machine and different seeds give different clips. Objects never touch or overlap;
a two-object draw whose paths cannot be kept apart (about 1% of clips at the toy
default) keeps only its first object. Splits use disjoint index ranges
of one stream: train [0, num_train), eval [num_train, +num_eval), holdout after that.

Record schema (NumPy, one example; `M = max_objects`):
  video       float32 (T, H, W, 3) in [-1, 1], channels-last (D1)
  caption     str
  masks       uint8 (M, T, H, W), 1 where the object covers >= half a pixel
  sketch      float32 (M, H, W, 3) in [-1, 1]: the object's outline, black on white,
              centred at a canonical size (absent objects: a white page)
  fps         float32 ()
  num_objects int32 ()
  color, shape, motion, speed
              int32 (M,): indices into COLORS, SHAPES, MOTIONS, SPEEDS; -1 for absent
              objects, and motion/speed are -1 for single images (T = 1)
  index       int32 (): the index within the split
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections
import numpy as np

from motionaura_jax.data import render
from motionaura_jax.data.config import (
    BACKGROUND_LEVELS,
    BACKGROUNDS,
    COLORS,
    MOTION_VECTORS,
    MOTIONS,
    PALETTE,
    SHAPES,
    SPEED_ADVERBS,
    SPEED_TRAVEL,
    SPEEDS,
    objects_left_to_right,
    parse_holdout,
    validate,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MOTIONS",
    "SHAPES",
    "SPEEDS",
    "PALETTE",
    "ShapesSource",
    "caption_for",
    "near_miss_caption",
    "parse_caption",
]

SPLITS = ("train", "eval", "holdout")
_GAP_PX = 3.0  # minimum gap between object boxes: objects never touch or occlude
_MARGIN_PX = 1.0  # objects stay this far inside the frame
_MAX_TRIES = 500


def caption_for(objects: list[dict[str, str]], *, with_speed: bool = False) -> str:
    """Caption of a clip from its objects' attribute names (motion None for images)."""
    parts = []
    for o in objects:
        article = "an" if o["color"][0] in "aeiou" else "a"
        text = f"{article} {o['color']} {o['shape']}"
        if o.get("motion"):
            text += " stays still" if o["motion"] == "still" else f" moves {o['motion']}"
            if with_speed and o["motion"] != "still":
                text += " " + SPEED_ADVERBS[o["speed"]]
        parts.append(text)
    return " and ".join(parts)


_ADVERB_TO_SPEED = {v: k for k, v in SPEED_ADVERBS.items()}
_OBJECT_RE = re.compile(
    r"an? (?P<color>[a-z]+) (?P<shape>[a-z]+)"
    r"(?: (?:moves (?P<motion>[a-z-]+)|stays (?P<still>still)))?(?: (?P<adverb>[a-z]+))?"
)


def parse_caption(caption: str) -> list[dict[str, str | None]]:
    """Inverse of `caption_for`: list of {color, shape, motion, speed} (None if unstated).

    Raises ValueError for captions that do not follow the template.
    """
    objects = []
    for part in caption.strip().lower().split(" and "):
        m = _OBJECT_RE.fullmatch(part.strip())
        if m is None:
            raise ValueError(
                f"caption part {part!r} does not follow the template 'a <colour> <shape> "
                "moves <motion> [<adverb>]'; e.g. use 'a red circle moves left'"
            )
        obj = {
            "color": m["color"],
            "shape": m["shape"],
            "motion": "still" if m["still"] else m["motion"],
            "speed": _ADVERB_TO_SPEED.get(m["adverb"]) if m["adverb"] else None,
        }
        for kind, vocab in (("color", COLORS), ("shape", SHAPES), ("motion", MOTIONS)):
            if obj[kind] is not None and obj[kind] not in vocab:
                raise ValueError(f"unknown {kind} {obj[kind]!r} in caption {caption!r}")
        if m["adverb"] and obj["speed"] is None:
            raise ValueError(f"unknown speed adverb {m['adverb']!r} in caption {caption!r}")
        objects.append(obj)
    return objects


NEAR_MISS_EDITS = (
    "recolor",  # one object gets another colour
    "remotion",  # one object gets another motion
    "reshape",  # one object gets another shape
    "swap_colors",  # two objects trade colours (the binding, nothing else, changes)
    "swap_motions",
    "repeat_color",  # one object takes the other's colour
    "drop",  # the caption names one object of two
    "add",  # the caption names a second object the clip lacks
)


def near_miss_caption(
    caption: str,
    rng: np.random.Generator,
    config: ml_collections.ConfigDict,
    edits: tuple[str, ...] = NEAR_MISS_EDITS,
) -> str | None:
    """`caption` with one edit from `NEAR_MISS_EDITS` (chosen at random among those that
    apply), so that it no longer describes the clip; None when no edit found one.

    The negatives of the caption matcher in `tools/rerank_probe.py`: each edit is a way
    the denoiser's samples miss their caption. Attributes come from `config`'s (a
    `shapes_config`) vocabularies; an edit that leaves the same objects (e.g. swapping
    the colours of two red circles) is redrawn.
    """
    if unknown := set(edits) - set(NEAR_MISS_EDITS):
        raise ValueError(f"unknown near-miss edits {sorted(unknown)}; use {NEAR_MISS_EDITS}")
    objects = parse_caption(caption)
    moving = len(objects) > 0 and objects[0]["motion"] is not None
    with_speed = all(o["speed"] for o in objects)
    vocab = {"color": config.colors, "shape": config.shapes, "motion": config.motions}

    def key(objs):
        return sorted((o["color"], o["shape"], o["motion"], o["speed"]) for o in objs)

    usable = ["recolor", "reshape"] + (["remotion"] if moving else [])
    usable += ["swap_colors", "repeat_color", "drop"] if len(objects) == 2 else []
    usable += ["swap_motions"] if len(objects) == 2 and moving else []
    usable += ["add"] if len(objects) == 1 else []
    edits = [e for e in usable if e in edits]
    if not edits:
        return None
    for _ in range(20):
        new = [dict(o) for o in objects]
        edit = edits[rng.integers(len(edits))]
        i = int(rng.integers(len(new)))
        if edit in ("recolor", "remotion", "reshape"):
            kind = {"recolor": "color", "remotion": "motion", "reshape": "shape"}[edit]
            new[i][kind] = vocab[kind][rng.integers(len(vocab[kind]))]
        elif edit in ("swap_colors", "swap_motions"):
            kind = "color" if edit == "swap_colors" else "motion"
            new[0][kind], new[1][kind] = new[1][kind], new[0][kind]
        elif edit == "repeat_color":
            new[i]["color"] = new[1 - i]["color"]
        elif edit == "drop":
            del new[i]
        else:  # add
            extra = {k: v[rng.integers(len(v))] for k, v in vocab.items()}
            extra["motion"] = extra["motion"] if moving else None
            extra["speed"] = config.speeds[rng.integers(len(config.speeds))] if with_speed else None
            new.insert(int(rng.integers(2)), extra)
        if key(new) != key(objects):
            return caption_for(new, with_speed=with_speed)
    return None


class ShapesSource:
    """Grain RandomAccessDataSource of `shapes` clips (`len`, `[i]`, picklable).

    Args:
      config: a `shapes_config()`-style ConfigDict.
      split: 'train', 'eval' or 'holdout'.
      frames, height, width: override the config's clip size (batch buckets); the
        attributes of clip i do not depend on them, only the pixel positions may.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        split: str = "train",
        *,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ):
        validate(config)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        self.frames = int(frames or config.frames)
        self.height = int(height or config.height)
        self.width = int(width or config.width)
        self.split = split
        self.seed = int(config.seed)
        self.max_objects = int(config.max_objects)
        self.min_objects = int(config.min_objects)
        self.fps = float(config.fps)
        self.caption_speed = bool(config.caption_speed)
        self.left_to_right = objects_left_to_right(config)
        self.size_range = tuple(float(s) for s in config.size_range)
        self.names = {
            "color": tuple(config.colors),
            "shape": tuple(config.shapes),
            "motion": tuple(config.motions),
            "speed": tuple(config.speeds),
            "background": tuple(config.backgrounds),
        }
        self.holdout = parse_holdout(config.holdout)
        if split == "holdout" and not self.holdout:
            raise ValueError("split 'holdout' needs data.holdout combos, e.g. ('red triangle',)")
        sizes = {"train": config.num_train, "eval": config.num_eval, "holdout": config.num_holdout}
        self._len = int(sizes[split])
        offsets = {"train": 0, "eval": config.num_train}
        offsets["holdout"] = config.num_train + config.num_eval
        self._offset = int(offsets[split])
        # Sketches depend only on the shape: render each once.
        self._sketches = {
            s: render.render_sketch(s, self.height, self.width) for s in self.names["shape"]
        }

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"ShapesSource(split={self.split!r}, len={self._len}, seed={self.seed}, "
            f"clip={self.frames}x{self.height}x{self.width})"
        )

    def _matches_holdout(self, obj: dict[str, str]) -> bool:
        return any(all(obj[k] == v for k, v in combo.items()) for combo in self.holdout)

    def _sample_object(self, rng: np.random.Generator, used_colors: set[str], forced: bool):
        names = self.names
        for _ in range(10_000):
            obj = {k: names[k][rng.integers(len(names[k]))] for k in ("shape", "motion", "speed")}
            free = [c for c in names["color"] if c not in used_colors]
            obj["color"] = free[rng.integers(len(free))]
            obj["size"] = float(rng.uniform(*self.size_range))
            held = self._matches_holdout(obj)
            if (forced and held) or (not forced and not (held and self.split == "train")):
                return obj
        raise ValueError(
            f"could not sample an object for split {self.split!r} with holdout "
            f"{self.holdout}: the holdout combos cover (almost) everything; hold out less"
        )

    def sample_attributes(
        self, index: int
    ) -> tuple[str, list[dict[str, Any]], np.random.Generator]:
        """Background name, object attributes, and a generator for positions of clip i."""
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self!r}")
        seq = np.random.SeedSequence([self.seed, 0x5A4E, self._offset + index])
        attr_seq, pos_seq = seq.spawn(2)
        rng = np.random.default_rng(attr_seq)
        background = self.names["background"][rng.integers(len(self.names["background"]))]
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        objects: list[dict[str, Any]] = []
        for k in range(count):
            forced = self.split == "holdout" and k == 0
            objects.append(self._sample_object(rng, {o["color"] for o in objects}, forced))
        return background, objects, np.random.default_rng(pos_seq)

    def _place(self, objects: list[dict[str, Any]], rng: np.random.Generator) -> list[np.ndarray]:
        """Centre tracks (T, 2) in pixels; boxes stay in frame and never touch."""
        t_steps = np.arange(self.frames, dtype=np.float64)[:, None]
        side = min(self.height, self.width)
        extent = np.array([self.width, self.height], np.float64)
        for obj in objects:
            obj["radius"] = obj["size"] * side
            if self.frames > 1:
                travel = SPEED_TRAVEL[obj["speed"]] * side
                obj["step"] = np.array(MOTION_VECTORS[obj["motion"]]) * travel / (self.frames - 1)
            else:
                obj["step"] = np.zeros(2)
        tracks: list[np.ndarray] = []
        for _ in range(_MAX_TRIES):
            tracks = []
            for obj in objects:
                total = obj["step"] * (self.frames - 1)
                lo = obj["radius"] + _MARGIN_PX - np.minimum(total, 0)
                hi = extent - obj["radius"] - _MARGIN_PX - np.maximum(total, 0)
                start = lo + rng.random(2) * (hi - lo)
                tracks.append(start[None] + t_steps * obj["step"][None])
            if self._separated(objects, tracks):
                return tracks
        # Crowded configs can fail to place everything: keep the first object only.
        del objects[1:]
        return tracks[:1]

    @staticmethod
    def _separated(objects: list[dict[str, Any]], tracks: list[np.ndarray]) -> bool:
        for i in range(len(objects)):
            for j in range(i):
                reach = objects[i]["radius"] + objects[j]["radius"] + _GAP_PX
                apart = np.abs(tracks[i] - tracks[j]).max(axis=-1) > reach  # (T,)
                if not apart.all():
                    return False
        return True

    def _background(self, name: str) -> np.ndarray:
        top, bottom = BACKGROUND_LEVELS[name]
        rows = np.linspace(top, bottom, self.height, dtype=np.float32)
        return np.broadcast_to(rows[:, None, None], (self.height, self.width, 3))

    def layout(self, index: int) -> tuple[str, list[dict[str, Any]], list[np.ndarray]]:
        """Background, objects in caption order and their centre tracks (T, 2) of clip i."""
        background, objects, pos_rng = self.sample_attributes(index)
        tracks = self._place(objects, pos_rng)
        if self.left_to_right:  # stable: ties keep the draw's order
            order = np.argsort([track[0, 0] for track in tracks], kind="stable")
            objects, tracks = [objects[i] for i in order], [tracks[i] for i in order]
        return background, objects, tracks

    def caption_of(self, objects: list[dict[str, Any]]) -> str:
        """The template caption of these objects (no motion phrase for single images)."""
        if self.frames == 1:
            objects = [{**obj, "motion": None} for obj in objects]
        return caption_for(objects, with_speed=self.caption_speed)

    def caption(self, index: int) -> str:
        """Clip i's caption, without rendering its pixels."""
        return self.caption_of(self.layout(index)[1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        background, objects, tracks = self.layout(index)
        t, h, w, m = self.frames, self.height, self.width, self.max_objects
        video = np.array(np.broadcast_to(self._background(background), (t, h, w, 3)))
        masks = np.zeros((m, t, h, w), np.uint8)
        sketch = np.ones((m, h, w, 3), np.float32)
        ids = {k: np.full((m,), -1, np.int32) for k in ("color", "shape", "motion", "speed")}
        for k, (obj, track) in enumerate(zip(objects, tracks, strict=True)):
            # Blend each frame only where the object's patch lies: outside it the coverage
            # is 0, where the blend returns the pixel exactly.
            cov, x0, y0 = render.track_patches(obj["shape"], track, obj["radius"])
            color = np.asarray(PALETTE[obj["color"]], np.float32)
            for f, window, inner in render.patch_windows(x0, y0, cov.shape[-1], h, w):
                alpha = cov[f][inner][..., None]
                pixels = video[f][window]
                video[f][window] = pixels * (1.0 - alpha) + alpha * color
                masks[k, f][window] = alpha[..., 0] >= 0.5
            sketch[k] = self._sketches[obj["shape"]]
            ids["color"][k] = COLORS.index(obj["color"])
            ids["shape"][k] = SHAPES.index(obj["shape"])
            if t > 1:
                ids["motion"][k] = MOTIONS.index(obj["motion"])
                ids["speed"][k] = SPEEDS.index(obj["speed"])
        return {
            "video": (video * 2.0 - 1.0).astype(np.float32),
            "caption": self.caption_of(objects),
            "masks": masks,
            "sketch": sketch,
            "fps": np.float32(self.fps),
            "num_objects": np.int32(len(objects)),
            **ids,
            "index": np.int32(index),
        }
