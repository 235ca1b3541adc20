"""Data configs (ml_collections) and their validation.

`shapes_config()` is the full default data config of the built-in synthetic set; the
stage configs (`configs/*.py`) embed it as `config.data` and override fields. The
`arrayrecord` and `tfds` sources reuse the same pipeline fields (batch buckets, workers,
prefetch) and add their own (`paths`, `tfds_name`, ...), see `arrayrecord_config` and
`tfds_config`.

Batch buckets (DESIGN D11): `buckets` is a tuple of dicts
`{frames, height, width, batch_size, ratio}`; each batch is drawn from one bucket chosen
by a seeded ratio sampler. An empty tuple means one bucket made of the top-level
`frames/height/width` and the `global_batch_size` given to the pipeline; a bucket with
`batch_size=0` also takes the pipeline's `global_batch_size`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from motionaura_jax.data import render

# Vocabularies (re-exported by `shapes.py`) live here so that config validation, the
# generator and the oracle share one definition. Palette and backgrounds: [0, 1] RGB.
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
PALETTE = {
    "red": (0.92, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.92, 0.10),
    "magenta": (0.92, 0.12, 0.92),
    "cyan": (0.10, 0.90, 0.92),
    "orange": (1.00, 0.55, 0.00),
    "white": (1.00, 1.00, 1.00),
}
SHAPES = render.SHAPES
MOTIONS = (
    "left",
    "right",
    "up",
    "down",
    "up-left",
    "up-right",
    "down-left",
    "down-right",
    "still",
)
# Unit direction (x right, y down) of each motion.
MOTION_VECTORS = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-0.7071, -0.7071),
    "up-right": (0.7071, -0.7071),
    "down-left": (-0.7071, 0.7071),
    "down-right": (0.7071, 0.7071),
    "still": (0.0, 0.0),
}
SPEEDS = ("slow", "medium", "fast")
# Distance travelled over the whole clip, as a fraction of min(H, W): a clip-relative
# speed keeps every (frames, resolution) bucket inside the frame.
SPEED_TRAVEL = {"slow": 0.2, "medium": 0.3, "fast": 0.4}
SPEED_ADVERBS = {"slow": "slowly", "medium": "steadily", "fast": "quickly"}
# Backgrounds are achromatic and at most 0.45 bright so every palette colour (white
# included) stays far from them: the oracle separates objects by colour distance.
BACKGROUNDS = ("black", "gray", "gradient")
BACKGROUND_LEVELS = {"black": (0.0, 0.0), "gray": (0.35, 0.35), "gradient": (0.05, 0.45)}

SOURCES = ("shapes", "arrayrecord", "tfds")


def _pipeline_fields(cfg: ml_collections.ConfigDict) -> None:
    cfg.buckets = ()
    cfg.num_workers = 0  # 0: in-process (tests); >0: grain mp_prefetch worker processes
    cfg.worker_buffer_size = 2  # batches buffered per worker process
    cfg.read_threads = 0  # grain ReadOptions threads for the in-process path
    cfg.prefetch = 2  # grain ReadOptions prefetch buffer (batches)
    cfg.shuffle = True


def shapes_config() -> ml_collections.ConfigDict:
    """Default config of the synthetic `shapes` source (the toy size: 9 × 64 × 64)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "shapes"
    cfg.frames = 9  # 1 + 4k for the causal tokenizer (D2): 9 frames -> 3 latent frames
    cfg.height = 64
    cfg.width = 64
    cfg.min_objects = 1
    cfg.max_objects = 2
    cfg.shapes = ("circle", "square", "triangle", "diamond", "cross", "star")
    cfg.colors = COLORS
    cfg.motions = ("left", "right", "up", "down")
    cfg.speeds = ("slow", "fast")
    cfg.backgrounds = BACKGROUNDS
    cfg.size_range = (0.13, 0.18)  # object half-size as a fraction of min(H, W)
    cfg.caption_speed = False  # append "slowly"/"quickly" to each motion phrase
    # A clip's objects (caption phrases, masks, ids) left to right by their centres in the
    # first frame; False: in the order they were drawn, unrelated to the layout.
    cfg.objects_left_to_right = False
    cfg.fps = 8.0
    # Attribute combinations never seen in train, e.g. ("red triangle", "blue up"): an
    # object matching every word of one combo is rejected from `train` and is the first
    # object drawn in every `holdout` clip (compositional generalisation; listed first
    # unless `objects_left_to_right` puts it second).
    cfg.holdout = ()
    cfg.num_train = 100_000
    cfg.num_eval = 1_000
    cfg.num_holdout = 1_000
    cfg.seed = 0
    _pipeline_fields(cfg)
    return cfg


def arrayrecord_config(paths: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Config for ArrayRecord shards written by `tools/videos_to_arrayrecord.py`.

    `paths` / `eval_paths` are shard files or glob patterns. Clips keep the frames and
    resolution they were written with; a bucket may ask for fewer frames (the clip is
    cut) but not for another resolution.
    """
    cfg = ml_collections.ConfigDict()
    cfg.name = "arrayrecord"
    cfg.paths = tuple(paths)
    cfg.eval_paths = ()
    cfg.frames = 9
    cfg.height = 64
    cfg.width = 64
    cfg.seed = 0
    _pipeline_fields(cfg)
    return cfg


def tfds_config(name: str = "") -> ml_collections.ConfigDict:
    """Config for a TFDS builder read through `tfds.data_source` (random access)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "tfds"
    cfg.tfds_name = name
    cfg.data_dir = ""
    cfg.train_split = "train"
    cfg.eval_split = "test"
    cfg.video_key = "video"
    cfg.caption_key = "caption"  # missing in the builder: records get no caption
    cfg.frames = 9
    cfg.height = 64
    cfg.width = 64
    cfg.fps = 8.0
    cfg.seed = 0
    _pipeline_fields(cfg)
    return cfg


def _check_frames(frames: Any, where: str) -> None:
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        k = max(0, round((frames - 1) / 4)) if isinstance(frames, int) else 2
        raise ValueError(
            f"{where} must be 1 + 4k for the causal tokenizer (D2), got {frames!r}; use {1 + 4 * k}"
        )


def _check_resolution(height: Any, width: Any, where: str) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < 16 or v % 16:
            fix = max(16, 16 * round(v / 16)) if isinstance(v, int) else 64
            raise ValueError(
                f"{where}.{name} must be a positive multiple of 16 (the tokenizer "
                f"downsamples 16x), got {v!r}; use {fix}"
            )


def _check_names(values: Sequence[str], vocab: Sequence[str], field: str) -> None:
    if not values:
        raise ValueError(f"data.{field} is empty; list at least one of {tuple(vocab)}")
    for v in values:
        if v not in vocab:
            raise ValueError(f"unknown name {v!r} in data.{field}; use names from {tuple(vocab)}")
    if len(set(values)) != len(values):
        raise ValueError(f"data.{field} has duplicates: {tuple(values)}; list each name once")


def objects_left_to_right(cfg: ml_collections.ConfigDict) -> bool:
    """`cfg.objects_left_to_right`; False for configs saved before it and for sources
    without it (their captions are as given)."""
    return bool(cfg.get("objects_left_to_right", False))


def parse_holdout(combos: Sequence[str | Sequence[str]]) -> list[dict[str, str]]:
    """Turns holdout combos ("red triangle" or ("red", "triangle")) into attribute dicts."""
    vocab = {"color": COLORS, "shape": SHAPES, "motion": MOTIONS, "speed": SPEEDS}
    parsed = []
    for combo in combos:
        words = combo.split() if isinstance(combo, str) else list(combo)
        attrs: dict[str, str] = {}
        for w in words:
            kinds = [k for k, names in vocab.items() if w in names]
            if not kinds:
                raise ValueError(
                    f"unknown word {w!r} in data.holdout combo {combo!r}; use colour, shape, "
                    f"motion or speed names, e.g. ('red', 'triangle')"
                )
            if kinds[0] in attrs:
                raise ValueError(f"data.holdout combo {combo!r} names two {kinds[0]}s; use one")
            attrs[kinds[0]] = w
        if len(attrs) < 1:
            raise ValueError(f"empty data.holdout combo {combo!r}; e.g. use ('red', 'triangle')")
        parsed.append(attrs)
    return parsed


def bucket_specs(cfg: ml_collections.ConfigDict, global_batch_size: int) -> list[dict[str, Any]]:
    """The validated batch buckets: list of {frames, height, width, batch_size, ratio}.

    Ratios are normalised to sum to one.
    """
    raw: list[Mapping[str, Any]] = list(cfg.buckets) or [{}]
    specs = []
    for i, b in enumerate(raw):
        b = dict(b)
        unknown = set(b) - {"frames", "height", "width", "batch_size", "ratio"}
        if unknown:
            raise ValueError(
                f"data.buckets[{i}] has unknown keys {sorted(unknown)}; "
                "use frames, height, width, batch_size, ratio"
            )
        spec = {
            "frames": int(b.get("frames", cfg.frames)),
            "height": int(b.get("height", cfg.height)),
            "width": int(b.get("width", cfg.width)),
            "batch_size": int(b.get("batch_size", 0)) or int(global_batch_size),
            "ratio": float(b.get("ratio", 1.0)),
        }
        _check_frames(spec["frames"], f"data.buckets[{i}].frames")
        _check_resolution(spec["height"], spec["width"], f"data.buckets[{i}]")
        if spec["batch_size"] < 1:
            raise ValueError(
                f"data.buckets[{i}] batch size must be >= 1, got {spec['batch_size']}; "
                "set batch_size or pass global_batch_size >= 1"
            )
        if spec["ratio"] <= 0:
            raise ValueError(f"data.buckets[{i}].ratio must be > 0, got {spec['ratio']}")
        specs.append(spec)
    total = sum(s["ratio"] for s in specs)
    for s in specs:
        s["ratio"] /= total
    return specs


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a data config; raises ValueError naming the bad value and the fix."""
    if cfg.name not in SOURCES:
        raise ValueError(f"unknown data.name {cfg.name!r}; use one of {SOURCES}")
    _check_frames(cfg.frames, "data.frames")
    _check_resolution(cfg.height, cfg.width, "data")
    if cfg.num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {cfg.num_workers}; use 0 or more")
    if cfg.name != "shapes":
        return cfg
    _check_names(cfg.shapes, SHAPES, "shapes")
    _check_names(cfg.colors, COLORS, "colors")
    _check_names(cfg.motions, MOTIONS, "motions")
    _check_names(cfg.speeds, SPEEDS, "speeds")
    _check_names(cfg.backgrounds, BACKGROUNDS, "backgrounds")
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        raise ValueError(
            f"need 1 <= data.min_objects <= data.max_objects, got {cfg.min_objects}, "
            f"{cfg.max_objects}; e.g. use 1 and 2"
        )
    if cfg.max_objects > len(cfg.colors):
        raise ValueError(
            f"data.max_objects={cfg.max_objects} exceeds the {len(cfg.colors)} colours "
            "(objects in one clip have distinct colours); add colours or lower max_objects"
        )
    lo, hi = cfg.size_range
    travel = max(SPEED_TRAVEL[s] for s in cfg.speeds)
    if not 0 < lo <= hi or 2 * hi + travel > 0.9:
        raise ValueError(
            f"data.size_range={tuple(cfg.size_range)} with speed travel {travel} does not fit "
            "the frame (need 0 < lo <= hi and 2*hi + travel <= 0.9); e.g. use (0.13, 0.18)"
        )
    if lo * min(cfg.height, cfg.width) < 4:
        raise ValueError(
            f"objects of half-size {lo} * {min(cfg.height, cfg.width)} px are under 4 px; "
            "raise data.size_range or the resolution"
        )
    holdout = parse_holdout(cfg.holdout)
    for combo in holdout:
        for kind, name in combo.items():
            if name not in cfg[kind + "s"]:
                raise ValueError(
                    f"data.holdout names {name!r}, which is not in data.{kind}s; "
                    "hold out only attributes the config samples"
                )
    for field in ("num_train", "num_eval", "num_holdout"):
        if cfg[field] < 0:
            raise ValueError(f"data.{field} must be >= 0, got {cfg[field]}")
    return cfg
