"""Sketch encoder (frozen builtin SigLIP separates the shapes), inputs, masks, holes."""

import jax
import numpy as np
import pytest

from motionaura_jax.data import render
from motionaura_jax.data.config import shapes_config
from motionaura_jax.data.shapes import COLORS, SHAPES, ShapesSource
from motionaura_jax.inpaint import data as inpaint_data
from motionaura_jax.inpaint.sketch import (
    jitter_sketch,
    make_sketch_encoder,
    prepare_sketch,
    sketch_config,
)


def test_builtin_tower_is_fixed_and_its_features_separate_the_shapes():
    enc = make_sketch_encoder(sketch_config())
    again = make_sketch_encoder(sketch_config())
    for a, b in zip(jax.tree.leaves(enc.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(16):  # outlines shifted (as in training) and rescaled (+-15%)
        for k, shape in enumerate(SHAPES):
            scale = rng.uniform(0.3, 0.4)
            images.append(jitter_sketch(render.render_sketch(shape, 64, 64, scale=scale), rng, 4))
            labels.append(k)
    feats = np.asarray(jax.jit(enc.features)(enc.params, np.stack(images)))  # (N, 16, 128)
    x = feats.reshape(len(images), -1)
    x = (x - x[: len(x) // 2].mean(0)) / (x[: len(x) // 2].std(0) + 1e-6)
    y = np.eye(len(SHAPES))[labels]
    half = len(x) // 2
    # Ridge-regression linear probe: fit on one half, classify the other half.
    w = np.linalg.solve(x[:half].T @ x[:half] + 10.0 * np.eye(x.shape[1]), x[:half].T @ y[:half])
    accuracy = np.mean((x[half:] @ w).argmax(1) == np.array(labels[half:]))
    print(f"linear probe accuracy on held-out sketches: {accuracy:.3f}")
    assert accuracy >= 0.8, accuracy
    # Control: the same probe on shuffled labels is at chance.
    perm = rng.permutation(half)
    w_bad = np.linalg.solve(
        x[:half].T @ x[:half] + 10.0 * np.eye(x.shape[1]), x[:half].T @ y[:half][perm]
    )
    assert np.mean((x[half:] @ w_bad).argmax(1) == np.array(labels[half:])) < 0.5


def test_prepare_sketch_accepts_images_and_names_bad_ones():
    ink = np.full((40, 30), 255, np.uint8)
    ink[10:30, 5:25] = 0
    out = prepare_sketch(ink, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert out.min() == -1.0 and out.max() == 1.0
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent: a white page
    assert prepare_sketch(rgba, 64).min() == 1.0
    with pytest.raises(ValueError, match=r"sketch must be an image .* got str"):
        prepare_sketch("sketch.png", 64)
    with pytest.raises(ValueError, match=r"shape \(64, 64, 2\)"):
        prepare_sketch(np.zeros((64, 64, 2)), 64)
    with pytest.raises(ValueError, match="at least 8x8"):
        prepare_sketch(np.zeros((4, 4)), 64)
    with pytest.raises(ValueError, match="NaN"):
        prepare_sketch(np.full((16, 16), np.nan), 64)


def test_examples_mask_one_object_and_caption_its_colour_and_motion():
    cfg = shapes_config()
    source = ShapesSource(cfg, "eval")
    two = next(i for i in range(50) if source[i]["num_objects"] == 2)
    ex = inpaint_data.make_example(source[two], seed=0, dilation=2)
    k = inpaint_data.choose_object(source[two], 0)
    rec = source[two]
    assert ex["mask"].sum() > rec["masks"][k].sum()  # dilated
    assert np.all(ex["mask"][rec["masks"][k] > 0] == 1)
    assert not np.any(ex["mask"] & rec["masks"][1 - k])  # the other object stays visible
    assert ex["caption"].split()[1:4] == [COLORS[ex["color"]], "object", "moves"]
    assert SHAPES[ex["shape"]] not in ex["caption"]
    np.testing.assert_array_equal(ex["masked_video"][ex["mask"] > 0], 0.0)
    keep = ex["mask"] == 0
    np.testing.assert_array_equal(ex["masked_video"][keep], ex["video"][keep])


def test_hole_tokens_match_a_direct_count():
    rng = np.random.default_rng(1)
    mask = (rng.random((2, 9, 64, 64)) > 0.999).astype(np.uint8)
    hole = inpaint_data.hole_tokens(mask, (3, 4, 4), 4, 16)
    want = np.zeros_like(hole)
    for b, t, y, x in zip(*np.nonzero(mask), strict=True):
        n = 0 if t == 0 else 1 + (t - 1) // 4  # causal: frame 0 alone, then groups of 4
        want[b, n, y // 16, x // 16] = True
    np.testing.assert_array_equal(hole, want)
    with pytest.raises(ValueError, match="token grid"):
        inpaint_data.hole_tokens(mask, (2, 4, 4), 4, 16)


def test_composite_keeps_every_pixel_outside_the_mask():
    rng = np.random.default_rng(2)
    video, generated = rng.uniform(-1, 1, (2, 9, 16, 16, 3)).astype(np.float32)
    mask = (rng.random((9, 16, 16)) > 0.7).astype(np.uint8)
    out = inpaint_data.composite(video, generated, mask)
    np.testing.assert_array_equal(out[mask == 0], video[mask == 0])
    np.testing.assert_array_equal(out[mask == 1], generated[mask == 1])
