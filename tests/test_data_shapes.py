"""The synthetic `shapes` source: determinism, splits, holdout, schema, config errors."""

import numpy as np
import pytest

from motionaura_jax.data import config as config_lib
from motionaura_jax.data import render
from motionaura_jax.data.shapes import (
    COLORS,
    MOTIONS,
    SHAPES,
    ShapesSource,
    caption_for,
    near_miss_caption,
    parse_caption,
)


def _cfg(**overrides):
    cfg = config_lib.shapes_config()
    cfg.num_train, cfg.num_eval, cfg.num_holdout = 200, 50, 50
    cfg.update(overrides)
    return cfg


def test_same_index_same_clip_and_seeds_differ():
    a, b = ShapesSource(_cfg())[7], ShapesSource(_cfg())[7]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = ShapesSource(_cfg(seed=1))[7]
    assert not np.array_equal(a["video"], other["video"])
    assert not np.array_equal(ShapesSource(_cfg())[8]["video"], a["video"])


def test_schema_dtypes_and_ranges():
    cfg = _cfg()
    rec = ShapesSource(cfg)[3]
    m, t, h, w = cfg.max_objects, cfg.frames, cfg.height, cfg.width
    expected = {
        "video": ((t, h, w, 3), np.float32),
        "masks": ((m, t, h, w), np.uint8),
        "sketch": ((m, h, w, 3), np.float32),
        "fps": ((), np.float32),
        "num_objects": ((), np.int32),
        "color": ((m,), np.int32),
        "shape": ((m,), np.int32),
        "motion": ((m,), np.int32),
        "speed": ((m,), np.int32),
        "index": ((), np.int32),
    }
    assert set(rec) == set(expected) | {"caption"}
    for key, (shape, dtype) in expected.items():
        assert np.shape(rec[key]) == shape, key
        assert np.asarray(rec[key]).dtype == dtype, key
    assert isinstance(rec["caption"], str)
    for key in ("video", "sketch"):
        assert rec[key].min() >= -1.0 and rec[key].max() <= 1.0
    assert set(np.unique(rec["masks"])) <= {0, 1}
    n = int(rec["num_objects"])
    assert (rec["color"][:n] >= 0).all() and (rec["color"][n:] == -1).all()
    assert rec["masks"][:n].sum(axis=(2, 3)).min() > 20  # every object visible every frame


def test_caption_matches_attributes_and_masks_match_pixels():
    src = ShapesSource(_cfg())
    for i in range(20):
        rec = src[i]
        objs = parse_caption(rec["caption"])
        assert len(objs) == rec["num_objects"]
        for k, obj in enumerate(objs):
            assert COLORS[rec["color"][k]] == obj["color"]
            assert SHAPES[rec["shape"][k]] == obj["shape"]
            assert MOTIONS[rec["motion"][k]] == obj["motion"]
            # Masked pixels carry the object's colour, not the background's.
            inside = rec["video"][rec["masks"][k].astype(bool)]
            palette = np.array(config_lib.PALETTE[obj["color"]]) * 2 - 1
            assert np.abs(np.median(inside, axis=0) - palette).max() < 0.05
        if rec["num_objects"] == 2:
            assert not (rec["masks"][0] & rec["masks"][1]).any()  # objects never overlap


def test_objects_move_as_captioned():
    src = ShapesSource(_cfg())
    for i in range(10):
        rec = src[i]
        for k in range(int(rec["num_objects"])):
            ys, xs = [], []
            for t in (0, -1):
                y, x = np.nonzero(rec["masks"][k, t])
                ys.append(y.mean())
                xs.append(x.mean())
            dx, dy = xs[1] - xs[0], ys[1] - ys[0]
            direction = {"left": -dx, "right": dx, "up": -dy, "down": dy}
            assert direction[MOTIONS[rec["motion"][k]]] > 8  # pixels over the clip


def test_splits_are_disjoint():
    cfg = _cfg()
    train = {ShapesSource(cfg, "train")[i]["video"].tobytes() for i in range(30)}
    evals = {ShapesSource(cfg, "eval")[i]["video"].tobytes() for i in range(30)}
    assert not train & evals
    with pytest.raises(IndexError):
        ShapesSource(cfg, "eval")[50]


def test_holdout_combos_absent_from_train_and_present_in_holdout():
    cfg = _cfg(
        holdout=("red triangle", ("blue", "up")),
        shapes=("circle", "triangle"),
        colors=("red", "blue", "green"),
    )
    train = ShapesSource(cfg, "train")
    hits = 0
    for i in range(150):
        rec = train[i]
        for k in range(int(rec["num_objects"])):
            c, s, m = COLORS[rec["color"][k]], SHAPES[rec["shape"][k]], MOTIONS[rec["motion"][k]]
            assert (c, s) != ("red", "triangle") and (c, m) != ("blue", "up")
            hits += c == "red" or s == "triangle"
    assert hits > 50  # the parts of the held-out combos still appear on their own
    held = ShapesSource(cfg, "holdout")
    for i in range(20):
        rec = held[i]
        c, s, m = COLORS[rec["color"][0]], SHAPES[rec["shape"][0]], MOTIONS[rec["motion"][0]]
        assert (c, s) == ("red", "triangle") or (c, m) == ("blue", "up")


def test_left_to_right_order_lists_objects_by_first_frame_position():
    sampled = ShapesSource(_cfg())
    ordered = ShapesSource(_cfg(objects_left_to_right=True))
    swapped = 0
    for i in range(40):
        a, b = sampled[i], ordered[i]
        np.testing.assert_array_equal(a["video"], b["video"])  # the same clip ...
        n = int(b["num_objects"])
        x = [np.nonzero(b["masks"][k, 0])[1].mean() for k in range(n)]
        assert x == sorted(x)  # ... with its objects (masks, ids, phrases) left to right
        assert sorted(a["caption"].split(" and ")) == sorted(b["caption"].split(" and "))
        assert [COLORS[c] for c in b["color"][:n]] == [
            o["color"] for o in parse_caption(b["caption"])
        ]
        assert b["caption"] == ordered.caption(i)
        swapped += a["caption"] != b["caption"]
    assert swapped > 5  # the draw's order is often not the layout's


def test_single_frame_images_and_other_sizes():
    rec = ShapesSource(_cfg(frames=1, caption_speed=True))[0]
    assert rec["video"].shape == (1, 64, 64, 3)
    assert (rec["motion"] == -1).all() and "moves" not in rec["caption"]
    assert ShapesSource(_cfg(frames=1, caption_speed=True)).caption(0) == rec["caption"]
    rec = ShapesSource(_cfg(), frames=17, height=32, width=48)[0]
    assert rec["video"].shape == (17, 32, 48, 3) and rec["masks"].shape[1:] == (17, 32, 48)


def test_captions_round_trip():
    objs = [
        {"color": "orange", "shape": "star", "motion": "up-left", "speed": "fast"},
        {"color": "red", "shape": "circle", "motion": "still", "speed": "slow"},
    ]
    text = caption_for(objs, with_speed=True)
    assert text == "an orange star moves up-left quickly and a red circle stays still"
    parsed = parse_caption(text)
    assert [(o["color"], o["shape"], o["motion"]) for o in parsed] == [
        ("orange", "star", "up-left"),
        ("red", "circle", "still"),
    ]
    assert parsed[0]["speed"] == "fast"
    with pytest.raises(ValueError, match="template"):
        parse_caption("two red circles dance")
    with pytest.raises(ValueError, match="unknown shape"):
        parse_caption("a red blob moves left")


def _objects(caption):
    return sorted((o["color"], o["shape"], o["motion"], o["speed"]) for o in parse_caption(caption))


def test_near_miss_captions_no_longer_describe_the_clip():
    cfg, rng = _cfg(), np.random.default_rng(0)
    two = "a red circle moves left and a blue square moves up"
    for caption in (two, "a red circle moves left", "a red circle", two.replace("up", "left")):
        for _ in range(30):
            miss = near_miss_caption(caption, rng, cfg)
            assert _objects(miss) != _objects(caption)
            assert all(
                o["color"] in cfg.colors and o["motion"] in (*cfg.motions, None)
                for o in parse_caption(miss)
            )
            # Images stay images: no edit gives an object a motion.
            assert (parse_caption(miss)[0]["motion"] is None) == (caption == "a red circle")
    assert near_miss_caption(two, rng, cfg, ("swap_colors",)) == (
        "a blue circle moves left and a red square moves up"
    )
    repeated = parse_caption(near_miss_caption(two, rng, cfg, ("repeat_color",)))
    assert repeated[0]["color"] == repeated[1]["color"]
    assert len(parse_caption(near_miss_caption(two, rng, cfg, ("drop",)))) == 1
    added = near_miss_caption("a red circle moves left quickly", rng, cfg, ("add",))
    assert len(parse_caption(added)) == 2 and all(o["speed"] for o in parse_caption(added))
    # Edits that cannot apply give None: one object has no colours to swap, and two
    # identical objects have nothing to swap either.
    assert near_miss_caption("a red circle moves left", rng, cfg, ("swap_colors",)) is None
    same = "a red circle moves left and a red circle moves left"
    assert near_miss_caption(same, rng, cfg, ("swap_colors", "swap_motions")) is None
    with pytest.raises(ValueError, match="unknown near-miss edits"):
        near_miss_caption(two, rng, cfg, ("recolour",))


def test_sketch_is_dark_outline_on_white():
    sketch = render.render_sketch("square", 64, 64)
    assert sketch.shape == (64, 64, 3) and sketch.max() == 1.0 and sketch.min() == -1.0
    ink = sketch[..., 0] < 0
    assert ink[32, 32] == 0 and ink.mean() < 0.15  # an outline, not a filled shape
    ys, xs = np.nonzero(ink)
    assert abs(ys.mean() - 32) < 1 and abs(xs.mean() - 32) < 1  # centred


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"frames": 8}, r"1 \+ 4k.*got 8; use 9"),
        ({"height": 60}, r"multiple of 16.*got 60; use 64"),
        ({"shapes": ("circle", "hexagon")}, r"unknown name 'hexagon' in data.shapes"),
        ({"colors": ("red",)}, r"max_objects=2 exceeds"),
        ({"holdout": ("red blob",)}, r"unknown word 'blob'"),
        ({"holdout": ("red star",), "shapes": ("circle",)}, r"not in data.shapes"),
        ({"size_range": (0.3, 0.4)}, r"does not fit"),
        ({"name": "webvid"}, r"unknown data.name 'webvid'"),
    ],
)
def test_bad_config_gives_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        ShapesSource(_cfg(**overrides))


def test_bad_bucket_gives_clear_error():
    cfg = _cfg(buckets=({"frames": 16, "batch_size": 4},))
    with pytest.raises(ValueError, match=r"buckets\[0\].frames must be 1 \+ 4k.*use 17"):
        config_lib.bucket_specs(cfg, 8)
    cfg = _cfg(buckets=({"frame": 9},))
    with pytest.raises(ValueError, match="unknown keys"):
        config_lib.bucket_specs(cfg, 8)


def test_works_as_a_grain_source():
    import grain

    src = ShapesSource(_cfg())
    dataset = grain.MapDataset.source(src).map(lambda r: r["caption"])
    assert len(dataset) == 200 and dataset[5] == src[5]["caption"]
