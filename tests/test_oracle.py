"""The pixel oracle: accuracy on ground-truth clips, robustness, scoring helpers."""

import numpy as np
import pytest

from motionaura_jax.data import config as config_lib
from motionaura_jax.data import oracle, render
from motionaura_jax.data.shapes import (
    COLORS,
    MOTIONS,
    SHAPES,
    SPEEDS,
    ShapesSource,
    caption_for,
)


def _source(**overrides):
    cfg = config_lib.shapes_config()
    cfg.num_train, cfg.num_eval = 1000, 1000
    cfg.update(overrides)
    return ShapesSource(cfg, "eval")


def _truth_caption(rec):
    objs = [
        {
            "color": COLORS[rec["color"][k]],
            "shape": SHAPES[rec["shape"][k]],
            "motion": MOTIONS[rec["motion"][k]] if rec["motion"][k] >= 0 else None,
            "speed": SPEEDS[rec["speed"][k]] if rec["speed"][k] >= 0 else None,
        }
        for k in range(int(rec["num_objects"]))
    ]
    return caption_for(objs, with_speed=objs[0]["motion"] is not None)


def _accuracy(source, num, noise=0.0, blur=0.0):
    scores = {k: [] for k in ("color", "shape", "motion", "speed", "count")}
    for i in range(num):
        rec = source[i]
        video = oracle.degrade(rec["video"], noise=noise, blur=blur, seed=i)
        result = oracle.score_caption(video, _truth_caption(rec))
        for k in scores:
            if result[k] is not None:  # no speed when every object stays still
                scores[k].append(result[k])
    return {k: float(np.mean(v)) for k, v in scores.items()}


@pytest.mark.parametrize("noise, blur", [(0.0, 0.0), (0.1, 0.7), (0.2, 1.2)])
def test_oracle_accuracy_on_ground_truth(noise, blur):
    acc = _accuracy(_source(), 50, noise=noise, blur=blur)
    assert min(acc.values()) >= 0.99, acc


def test_oracle_reads_diagonals_still_and_images():
    acc = _accuracy(_source(motions=tuple(MOTIONS), speeds=("slow", "medium", "fast")), 30)
    assert min(acc.values()) >= 0.97, acc
    images = _source(frames=1)
    for i in range(10):
        rec = images[i]
        result = oracle.score_caption(rec["video"], rec["caption"])
        assert result["color"] == 1.0 and result["shape"] == 1.0 and result["motion"] is None


def test_wrong_captions_score_low():
    src = _source()
    rec = src[0]
    truth = oracle.parse_caption(rec["caption"])[0]
    wrong_color = [c for c in COLORS if c != truth["color"]][0]
    wrong_shape = [s for s in SHAPES if s != truth["shape"]][0]
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[truth["motion"]]
    caption = f"a {wrong_color} {wrong_shape} moves {opposite}"
    result = oracle.score_caption(rec["video"], caption)
    assert not result["all"]
    # The single object is still matched, on colour or not, so shape/motion are judged.
    assert result["shape"] == 0.0 and result["motion"] == 0.0
    # A pure-background clip matches nothing.
    blank = np.full_like(rec["video"], -1.0)
    result = oracle.score_caption(blank, rec["caption"])
    assert result["color"] == 0.0 and not result["count"]


def test_caption_scores_split_by_object_count():
    """`by_count` adds each reading over the one- and two-object captions separately."""
    src = _source()
    cfg = config_lib.shapes_config()
    recs = [src[i] for i in range(12)]
    counts = [int(r["num_objects"]) for r in recs]
    assert 1 in counts and 2 in counts
    # Blank out every two-object clip: the one-object readings stay perfect.
    videos = [
        r["video"] if n == 1 else np.full_like(r["video"], -1.0) for r, n in zip(recs, counts)
    ]
    captions = [_truth_caption(r) for r in recs]
    scores = oracle.score_clips(videos, captions, cfg, by_count=True)
    assert scores["caption_color_1obj"] == 1.0 and scores["caption_count_1obj"] == 1.0
    assert scores["caption_color_2obj"] == 0.0 and scores["caption_count_2obj"] == 0.0
    assert scores["caption_count"] == pytest.approx(counts.count(1) / len(counts))
    assert "caption_color_2obj" not in oracle.score_clips(videos, captions, cfg)


def test_two_object_failures_are_told_apart():
    """`too_few` and `repeat_color` name the two ways a two-object caption fails."""
    rec = _source(min_objects=2, max_objects=2)[0]
    caption = _truth_caption(rec)
    truth = oracle.score_caption(rec["video"], caption)
    assert truth["all"] and not truth["too_few"] and not truth["repeat_color"]
    # Paint object 1 in object 0's colour: two objects, one captioned colour twice.
    video = rec["video"].copy()
    first = np.array(config_lib.PALETTE[COLORS[rec["color"][0]]], np.float32) * 2 - 1
    video[rec["masks"][1].astype(bool)] = first
    copied = oracle.score_caption(video, caption)
    assert copied["repeat_color"] and copied["count"] and not copied["too_few"]
    assert copied["color"] == 0.5
    # Erase object 1 (background row colour): one object where the caption names two.
    video = rec["video"].copy()
    hole = rec["masks"][1].astype(bool)
    rows = np.broadcast_to(video[:, :, :1], video.shape)  # column 0 is background
    video[hole] = rows[hole]
    missing = oracle.score_caption(video, caption)
    assert missing["too_few"] and not missing["repeat_color"] and not missing["count"]
    scores = oracle.score_clips(
        [rec["video"], video], [caption, caption], config_lib.shapes_config(), by_count=True
    )
    assert scores["caption_too_few"] == 0.5 and scores["caption_too_few_2obj"] == 0.5
    assert scores["caption_repeat_color"] == 0.0


def test_temporal_consistency_flags_changing_objects():
    src = _source(min_objects=1, max_objects=1)
    rec = src[3]
    clean = oracle.temporal_consistency(rec["video"])
    assert clean["consistent_tracks"] == 1.0 and clean["num_tracks"] == 1
    # Recolour the object in the last three frames: the track changes colour.
    video = rec["video"].copy()
    color = COLORS[rec["color"][0]]
    other = "blue" if color != "blue" else "red"
    mask = rec["masks"][0, -3:].astype(bool)
    video[-3:][mask] = np.array(config_lib.PALETTE[other], np.float32) * 2 - 1
    broken = oracle.temporal_consistency(video)
    assert broken["consistent_tracks"] == 0.0
    assert broken["color"] == pytest.approx(6 / 9)


def test_tracks_bridge_a_missing_frame():
    rec = _source(min_objects=1, max_objects=1)[5]
    video = rec["video"].copy()
    video[4] = video[4][0, 0]  # the object vanishes for one frame (background colour)
    tracks = oracle.analyze_clip(video)
    assert len(tracks) == 1 and len(tracks[0].blobs) == 8
    assert oracle.score_caption(video, rec["caption"])["all"]


def test_object_in_region_reads_the_masked_object():
    src = _source(min_objects=2, max_objects=2)
    for i in range(5):
        rec = src[i]
        for k in range(2):
            # A box around the object's first-frame position, grown a little.
            region = np.zeros(rec["masks"].shape[2:], bool)
            ys, xs = np.nonzero(rec["masks"][k, 0])
            region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            found = oracle.object_in_region(rec["video"][:1], region)
            assert found["found"]
            assert found["color"] == COLORS[rec["color"][k]]
            assert found["shape"] == SHAPES[rec["shape"][k]]
    empty = np.zeros(rec["masks"].shape[2:], bool)
    assert not oracle.object_in_region(np.full_like(rec["video"], -1.0), ~empty)["found"]


@pytest.mark.parametrize("shape", SHAPES)
def test_classify_sketch(shape):
    assert oracle.classify_sketch(render.render_sketch(shape, 64, 64)) == shape


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        oracle.analyze_clip(np.zeros((9, 3, 64, 64)))
    with pytest.raises(ValueError, match="no ink"):
        oracle.classify_sketch(np.ones((64, 64, 3)))
