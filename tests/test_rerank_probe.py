"""tools/rerank_probe.py: its caption matcher (padding, grid errors, names, it can learn)
and a whole run on an untrained stage."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tools import rerank_probe
from tools.rerank_probe import CaptionMatcher

pytest_plugins = ["tests.stage_fixtures"]

VOCAB, GRID, TEXT_LEN, TEXT_DIM = 12, (2, 2, 2), 5, 6


def _model():
    return CaptionMatcher(VOCAB, width=16, depth=2, num_heads=2)


def _inputs(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (batch, *GRID)).astype(np.int32)
    text = rng.normal(size=(batch, TEXT_LEN, TEXT_DIM)).astype(np.float32)
    mask = np.arange(TEXT_LEN)[None] < rng.integers(1, TEXT_LEN + 1, (batch, 1))
    return tokens, text, mask


def test_padding_rows_are_ignored_and_params_have_logical_names():
    model, (tokens, text, mask) = _model(), _inputs()
    params = model.init(jax.random.key(0), tokens, text, mask)
    for leaf in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
    params = nn.meta.unbox(params)
    head = params["params"]["head"]
    head["kernel"] = jax.random.normal(jax.random.key(1), head["kernel"].shape)  # not zero
    noise = np.where(mask[..., None], 0.0, 100.0).astype(np.float32)
    a = model.apply(params, tokens, text, mask)
    b = model.apply(params, tokens, text + noise, mask)
    assert a.shape == (4,)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, model.apply(params, tokens, text + 1.0, mask), atol=1e-3)


def test_grid_must_divide_into_patches():
    tokens, text, mask = _inputs()
    with pytest.raises(ValueError, match="not divisible by patch"):
        _model().init(jax.random.key(0), tokens[:, :, :, :1], text, mask)


def test_learns_which_caption_goes_with_which_clip():
    # Four clips, four captions: each pair (clip i, caption j) is a match iff i == j. A
    # matcher that ignored either input could not beat log(2) on this balanced batch.
    tokens, text, mask = _inputs(batch=4, seed=1)
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    pairs = (tokens[i.ravel()], text[j.ravel()], mask[j.ravel()])
    weights = np.where(i == j, 3.0, 1.0).ravel()  # as many positive as negative weight
    labels = (i == j).ravel().astype(np.float32)
    model = _model()
    params = nn.meta.unbox(model.init(jax.random.key(0), *pairs))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            bce = optax.sigmoid_binary_cross_entropy(model.apply(p, *pairs), labels)
            return jnp.sum(weights * bce) / weights.sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(150):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(np.log(2), abs=1e-3)  # zero-initialised head
    assert losses[-1] < 0.1


def test_probe_trains_samples_and_scores_each_pick(base_run, tmp_path):
    out = tmp_path / "rerank.json"
    args = ["--workdir", base_run, "--steps", "3", "--batch", "2", "--heldout", "2"]
    rerank_probe.main([*args, "--candidates", "2", "--prompts", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    assert 0.0 <= result["heldout_pos_above_neg"] <= 1.0
    assert len(result["candidates"]) == 2
    for key in rerank_probe.REPORTED:
        values = [c[key] for c in result["candidates"]]
        assert result["candidate_mean"][key] == pytest.approx(np.mean(values), abs=1e-4)
        # With two candidates the highest- and lowest-scored picks take each prompt's two
        # clips once between them, and every score is a mean over the same prompts' objects.
        both = result["rerank"][key] + result["worst"][key]
        assert both == pytest.approx(sum(values), abs=2e-4)
    with pytest.raises(ValueError, match="at least 2"):
        rerank_probe.main(["--workdir", base_run, "--candidates", "1"])
