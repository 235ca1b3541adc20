"""The denoiser vocabulary: the V most used tokenizer codes, the rest snapped to them."""

import os

import numpy as np
import pytest

from motionaura_jax.pipelines import TextToVideo
from motionaura_jax.tokenizer import vocabulary as vocabulary_lib
from motionaura_jax.train import t2v, t2v_data
from tests.stage_fixtures import run_tool, t2v_config

pytest_plugins = ["tests.stage_fixtures"]


def _random_vocabulary(k=50, d=3, size=10, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 100, k)
    counts[[4, 9]] = counts.max() + 1  # a tie at the top: the lower code comes first
    vectors = rng.normal(size=(k, d)).astype(np.float32)
    return counts, vectors, vocabulary_lib.most_used(counts, vectors, size, "fp")


def test_keeps_the_most_used_codes_and_snaps_the_rest_to_the_nearest():
    counts, vectors, vocab = _random_vocabulary()
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    np.testing.assert_array_equal(vocab.codes, sorted(order[:10]))
    assert vocab.size == 10 and vocab.codebook_size == 50
    np.testing.assert_array_equal(vocab.lookup[vocab.codes], np.arange(10))
    for code in range(50):  # brute force: every code's nearest kept code
        nearest = vocab.codes[np.argmin(((vectors[vocab.codes] - vectors[code]) ** 2).sum(1))]
        assert vocab.codes[vocab.lookup[code]] == nearest
    assert vocab.coverage == pytest.approx(counts[vocab.codes].sum() / counts.sum())
    ids = vocab.to_ids(np.arange(50))
    np.testing.assert_array_equal(vocab.to_codes(ids), vocab.codes[vocab.lookup])


def test_never_keeps_an_unused_code():
    rng = np.random.default_rng(1)
    counts = np.zeros(50, np.int64)
    counts[[3, 7, 20, 41]] = [5, 1, 9, 2]
    vectors = rng.normal(size=(50, 3)).astype(np.float32)
    vocab = vocabulary_lib.most_used(counts, vectors, 10, "fp")  # asks for 10, 4 are used
    np.testing.assert_array_equal(vocab.codes, [3, 7, 20, 41])
    assert vocab.coverage == 1.0
    assert set(vocab.to_ids(np.arange(50)).tolist()) <= {0, 1, 2, 3}


def test_save_load_round_trip_and_bad_inputs(tmp_path):
    counts, vectors, vocab = _random_vocabulary()
    path = str(tmp_path / vocabulary_lib.FILE_NAME)
    vocab.save(path)
    loaded = vocabulary_lib.CodeVocabulary.load(path)
    assert loaded.digest == vocab.digest and loaded.coverage == vocab.coverage
    assert os.listdir(tmp_path) == [vocabulary_lib.FILE_NAME]  # no temporary left behind
    with open(path, "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(ValueError, match="unreadable.*delete it"):
        vocabulary_lib.CodeVocabulary.load(path)
    with pytest.raises(ValueError, match="use 1..50"):
        vocabulary_lib.most_used(counts, vectors, 51, "fp")
    with pytest.raises(ValueError, match="no tokens were counted"):
        vocabulary_lib.most_used(np.zeros(50), vectors, 5, "fp")


def test_tokenizer_in_a_vocabulary_encodes_ids_and_decodes_their_codes(base_run):
    tokenizer = t2v_data.load_tokenizer(os.path.join(base_run, "tokenizer"))
    path = os.path.join(base_run, "t2v", vocabulary_lib.FILE_NAME)
    vocab = vocabulary_lib.CodeVocabulary.load(path)  # written when base_run's t2v was built
    assert vocab.size <= t2v_config().tokens.vocabulary
    restricted = tokenizer.with_vocabulary(vocab)
    assert restricted.vocab_size == vocab.size and restricted.code_levels == ()
    assert restricted.fingerprint != tokenizer.fingerprint
    assert restricted.raw.fingerprint == tokenizer.fingerprint
    video = np.random.default_rng(0).uniform(-1, 1, (2, 5, 64, 64, 3)).astype(np.float32)
    codes = tokenizer.encode(tokenizer.params, video)
    ids = restricted.encode(tokenizer.params, video)
    np.testing.assert_array_equal(ids, vocab.lookup[np.asarray(codes)])
    np.testing.assert_allclose(
        restricted.decode(tokenizer.params, ids),
        tokenizer.decode(tokenizer.params, vocab.codes[np.asarray(ids)]),
        atol=1e-6,
    )
    # Each id's quantizer vector (`model.code_features`) is its code's FSQ digits scaled
    # to [-1, 1) by the level's half width, digit 0 varying fastest.
    levels = np.asarray(tokenizer.config.model.quantizer.levels)
    digits = (vocab.codes[:, None] // np.cumprod([1, *levels[:-1]])) % levels
    half = levels // 2
    np.testing.assert_allclose(restricted.id_vectors(), (digits - half) / half, atol=1e-6)
    assert tokenizer.id_vectors().shape == (tokenizer.vocab_size, len(levels))
    other = vocabulary_lib.CodeVocabulary(vocab.codes, vocab.lookup, 1.0, "another tokenizer")
    with pytest.raises(ValueError, match="point tokenizer_dir at the original"):
        tokenizer.with_vocabulary(other)


def test_t2v_stage_predicts_the_vocabulary(base_run):
    stage_dir = os.path.join(base_run, "t2v")
    config = t2v_config()
    kept = vocabulary_lib.CodeVocabulary.load(os.path.join(stage_dir, vocabulary_lib.FILE_NAME))
    with pytest.raises(ValueError, match=f"keeps {kept.size} codes but tokens.vocabulary=5"):
        t2v.build(t2v_config("tokens.vocabulary=5"), base_run)
    pipe = TextToVideo.from_workdir(base_run)
    assert pipe.denoiser.vocab_size == kept.size <= config.tokens.vocabulary
    assert pipe.tokenizer.vocabulary is not None
    frames, tokens = pipe.generate("a red circle moves left", steps=2, return_tokens=True)
    assert frames.shape == (1, 9, 64, 64, 3)
    assert int(np.max(tokens)) < kept.size  # ids, never [MASK]
    assert os.path.isfile(os.path.join(stage_dir, vocabulary_lib.FILE_NAME))


def test_export_carries_the_vocabulary_and_loads_without_it_fails(base_run, tmp_path):
    out = tmp_path / "export"
    run = run_tool("export.py", f"--workdir={base_run}", "--stage=t2v", f"--out={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    tokenizer_dir = os.path.join(base_run, "tokenizer")
    pipe = TextToVideo.from_folders(str(out), tokenizer_dir=tokenizer_dir)
    assert pipe.tokenizer.vocab_size == pipe.denoiser.vocab_size
    os.remove(out / vocabulary_lib.FILE_NAME)
    with pytest.raises(FileNotFoundError, match="vocabulary.npz' is missing.*export"):
        TextToVideo.from_folders(str(out), tokenizer_dir=tokenizer_dir)
