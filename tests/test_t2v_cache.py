"""The pre-tokenised cache of the `t2v` stage: round trip, provenance checks, resume."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from motionaura_jax.data import pipeline
from motionaura_jax.data.shapes import ShapesSource
from motionaura_jax.train import t2v, t2v_data
from tests.stage_fixtures import T2V, TINY_T2V, t2v_config
from tools import tokenize_dataset

pytest_plugins = ["tests.stage_fixtures"]


@pytest.fixture(scope="module")
def written(base_run, tmp_path_factory):
    """A 6-clip cache written by the tool, with the tokenizer and text encoder it used."""
    path = str(tmp_path_factory.mktemp("cache") / "tokens.npz")
    overrides = [f"--config.{o}" for o in TINY_T2V]  # the tool's own override syntax
    tokenize_dataset.main(
        [f"--config={T2V}", *overrides, f"--workdir={base_run}", f"--out={path}"]
        + ["--num_clips=6", "--batch_size=4"]
    )
    tokenizer = t2v_data.load_tokenizer(os.path.join(base_run, "tokenizer"))
    return path, tokenizer, t2v_data.make_text(t2v_config())


def test_round_trip(written):
    path, tokenizer, text = written
    data = t2v_config().data
    cache = t2v_data.TokenCache(path)
    assert len(cache) == 6
    clips = pipeline.eval_batches(data, 4, 4, split="train")[0]
    # The tool encoded clips 0..3 as one batch of 4: the same call gives the same codes.
    tokens = np.asarray(jax.jit(tokenizer.encode)(tokenizer.params, clips["video"]))
    np.testing.assert_array_equal(cache.batch(range(4))["tokens"], tokens)
    grid = tokenizer.token_grid(data.frames, data.height, data.width)
    assert cache.arrays["tokens"].shape == (6, *grid)
    emb, mask = text.embed([str(c) for c in clips["caption"]])
    row = cache[2]
    assert row["text_emb"].shape == (text.max_length, text.dim)
    assert row["text_emb"].dtype == np.float32 and row["tokens"].dtype == np.int32
    np.testing.assert_array_equal(row["text_mask"], mask[2])
    np.testing.assert_allclose(row["text_emb"], emb[2], atol=1e-2, rtol=1e-2)  # float16
    assert list(cache.arrays["caption"][:4]) == [str(c) for c in clips["caption"]]
    assert cache.meta["tokenizer"]["fingerprint"] == tokenizer.fingerprint
    assert cache.meta["tokenizer"]["step"] == tokenizer.step
    cache.check(tokenizer, text, data)  # its own makers pass


def test_refuses_another_tokenizer(base_run, written, tmp_path):
    path, tokenizer, text = written
    params = jax.tree.map(lambda x: x * 1.01, tokenizer.params)
    other = dataclasses.replace(
        tokenizer,
        params=params,
        step=tokenizer.step + 1,
        fingerprint=t2v_data.params_fingerprint(params),
    )
    with pytest.raises(ValueError, match=r"different weights.*tools/tokenize_dataset.py"):
        t2v_data.TokenCache(path).check(other, text, t2v_config().data)
    # Through the stage: a cache made by other weights is refused at build time.
    stale = str(tmp_path / "stale.npz")
    t2v_data.write_token_cache(
        stale, other, text, t2v_config().data, num_clips=4, batch_size=4, progress=False
    )
    with pytest.raises(ValueError, match="was made by the tokenizer"):
        t2v.build(t2v_config(f"tokens.cache_path={stale}"), base_run)


def test_refuses_other_text_or_clip_size(written):
    path, tokenizer, _ = written
    cache = t2v_data.TokenCache(path)
    longer = t2v_data.make_text(t2v_config("text.max_length=96"))
    with pytest.raises(ValueError, match="text embeddings"):
        cache.check(tokenizer, longer, t2v_config().data)
    text = t2v_data.make_text(t2v_config())
    with pytest.raises(ValueError, match="5x64x64"):
        cache.check(tokenizer, text, t2v_config("data.frames=5").data)
    with pytest.raises(ValueError, match=r"objects_left_to_right=False.*asks for True"):
        cache.check(tokenizer, text, t2v_config("data.objects_left_to_right=True").data)


def test_missing_cache_is_a_clear_error(base_run, tmp_path):
    config = t2v_config(f"tokens.cache_path={tmp_path / 'none.npz'}", "tokens.build_cache=False")
    with pytest.raises(FileNotFoundError, match="tools/tokenize_dataset.py"):
        t2v.build(config, base_run)


def test_iterator_resumes_exactly(written):
    cache = t2v_data.TokenCache(written[0])
    iterator = t2v_data.cache_iterator(cache, global_batch_size=2, seed=0)
    first = [next(iterator) for _ in range(4)]  # two epochs of 6 rows in batches of 2 ...
    state = iterator.get_state()
    expected = next(iterator)
    resumed = t2v_data.cache_iterator(cache, global_batch_size=2, seed=0)
    resumed.set_state(state)
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    # ... and the first epoch (3 batches) holds every row exactly once.
    seen = np.concatenate([b["tokens"] for b in first[:3]])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, cache.arrays["tokens"]))


def test_cache_holds_each_objects_cells_and_phrase_tokens(written):
    """What the binding loss reads: the token cells each object touches, and which text
    tokens belong to which object's phrase."""
    path, tokenizer, text = written
    data = t2v_config().data
    cache = t2v_data.TokenCache(path)
    batch = cache.batch(range(6))
    grid = tokenizer.token_grid(data.frames, data.height, data.width)
    model = tokenizer.model
    source = ShapesSource(data, "train")
    counts = []
    for i in range(6):
        record = source[i]
        want = t2v_data.mask_cells(
            record["masks"], grid, model.temporal_factor, model.spatial_factor
        )
        np.testing.assert_array_equal(batch["object_cells"][i], want)
        ids, mask = text.tokenize([record["caption"]])
        phrases = record["caption"].split(" and ")
        counts.append(len(phrases))
        for k, phrase in enumerate(phrases):
            own = ids[0][batch["phrase_ids"][i] == k + 1]
            np.testing.assert_array_equal(own, text.tokenizer.token_ids([phrase])[0])
        # Separators, EOS and padding belong to no phrase.
        assert (batch["phrase_ids"][i] > 0).sum() == sum(
            len(text.tokenizer.token_ids([p])[0]) for p in phrases
        )
    assert 2 in counts, counts  # the six clips include a two-object caption
    assert batch["phrase_ids"].shape == (6, text.max_length)
    with pytest.raises(ValueError, match="2 phrases"):
        t2v_data.phrase_ids(text, ["a red circle moves left and a blue star moves up"], [1])
