"""The text-conditioning interface: tokenization rules, the built-in encoder, T5 folders."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.encoders import text
from motionaura_jax.encoders.t5 import T5Encoder, init_t5_params_numpy

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
MOTIONS = ["left", "right", "up", "down"]


@pytest.fixture(scope="module")
def builtin():
    return text.make_text_encoder(text.text_config("builtin", max_length=40))


def test_byte_tokenization(builtin):
    ids, mask = builtin.tokenize(["ab", "é"])
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (2, 40)
    # b + 3 per UTF-8 byte, then EOS = 1, then pad = 0.
    np.testing.assert_array_equal(ids[0, :4], [ord("a") + 3, ord("b") + 3, 1, 0])
    np.testing.assert_array_equal(ids[1, :3], [0xC3 + 3, 0xA9 + 3, 1])
    np.testing.assert_array_equal(mask.sum(1), [3, 3])


def test_empty_and_non_string_captions_are_errors(builtin):
    with pytest.raises(ValueError, match="caption 1 is empty"):
        builtin.tokenize(["a red circle", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        builtin.tokenize("a red circle")
    with pytest.raises(TypeError, match="caption 0 is NoneType"):
        builtin.tokenize([None])


def test_overlong_caption_truncates_with_warning_or_errors(builtin):
    long = "x" * 100
    with pytest.warns(UserWarning, match="exceed max_length=40.*truncating"):
        ids, mask = builtin.tokenize(["ok", long])
    assert mask[1].all() and ids[1, -1] == 1  # the first 39 bytes, then EOS
    np.testing.assert_array_equal(ids[1, :39], ord("x") + 3)
    strict = text.make_text_encoder(text.text_config("builtin", max_length=40, on_overlong="error"))
    with pytest.raises(ValueError, match="1 caption.*exceed max_length=40.*on_overlong"):
        strict.tokenize(["ok", long])
    exact = "y" * 39  # 39 bytes + EOS fits exactly: no warning
    ids, mask = strict.tokenize([exact])
    assert mask[0].all()


def test_config_errors():
    with pytest.raises(ValueError, match="unknown text encoder kind 'clip'"):
        text.text_config("clip")
    with pytest.raises(ValueError, match="unknown text config field 'max_len'"):
        text.text_config("builtin", max_len=3)
    with pytest.raises(ValueError, match="on_overlong='drop'"):
        text.make_text_encoder(text.text_config("builtin", on_overlong="drop"))
    with pytest.raises(ValueError, match="needs config.path"):
        text.make_text_encoder(text.text_config("t5"))


def _words_encoder(max_length=16, window=0):
    config = text.text_config("builtin", max_length=max_length)
    config.builtin.update(tokens="words", window=window)
    return text.make_text_encoder(config)


def _probe_accuracy(x, labels, num_classes):
    """Ridge probe trained on the first two thirds, accuracy on the rest."""
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    n = len(x) * 2 // 3
    target = np.eye(num_classes)[labels]
    w = np.linalg.solve(x[:n].T @ x[:n] + 1e-2 * np.eye(x.shape[1]), x[:n].T @ target[:n])
    return float(np.mean(np.argmax(x[n:] @ w, 1) == labels[n:]))


def test_phrase_window_binds_each_colour_to_its_own_motion():
    rng = np.random.default_rng(0)
    captions, motions = [], []
    for _ in range(600):
        c = rng.choice(len(COLORS), 2, replace=False)
        s, m = rng.integers(0, len(SHAPES), 2), rng.integers(0, len(MOTIONS), 2)
        captions.append(
            f"a {COLORS[c[0]]} {SHAPES[s[0]]} moves {MOTIONS[m[0]]} and "
            f"a {COLORS[c[1]]} {SHAPES[s[1]]} moves {MOTIONS[m[1]]}"
        )
        motions.append(m)
    motions = np.array(motions)
    phrase, plain = _words_encoder(window=2), _words_encoder()
    assert phrase.name.endswith("-window2") and "window" not in plain.name
    reads = {}
    for name, encoder in (("phrase", phrase), ("plain", plain)):
        emb, _ = encoder.embed(captions)
        at_red = emb[:, 1]  # the first object's colour word
        reads[name] = [_probe_accuracy(at_red, motions[:, k], len(MOTIONS)) for k in (0, 1)]
    # With the window the colour word tells its own object's motion and not the other's;
    # the random bias mixes the whole caption into every word, both motions alike.
    assert reads["phrase"][0] == 1.0 and reads["phrase"][1] < 0.45, reads
    assert abs(reads["plain"][0] - reads["plain"][1]) < 0.15, reads
    # The window is exact: word 1 reads words 1..5 (two layers of 0..2), never word 7.
    base, _ = phrase.embed(["a red circle moves left and a blue square moves up"])
    far, _ = phrase.embed(["a red circle moves left and a green square moves up"])
    near, _ = phrase.embed(["a red circle moves right and a blue square moves up"])
    np.testing.assert_allclose(far[0, 1], base[0, 1], atol=1e-5)
    assert np.abs(near[0, 1] - base[0, 1]).max() > 0.01
    with pytest.raises(ValueError, match="text.builtin.window=8; use 0"):
        _words_encoder(window=8)


def test_word_tokenization():
    encoder = _words_encoder(max_length=8)
    assert encoder.name.startswith("builtin:words-")
    ids, mask = encoder.tokenize(["A red star moves down-right.", "a RED Star"])
    # Lower-cased words ("down-right" is one), "." its own word, then EOS and padding.
    np.testing.assert_array_equal(mask.sum(1), [7, 4])
    np.testing.assert_array_equal(ids[0, :3], ids[1, :3])
    assert ids[0, 6] == 1 and ids[1, 3] == 1 and ids[1, 4:].max() == 0
    assert len(set(ids[0, :6].tolist())) == 6 and ids[0, :6].min() >= 3
    with pytest.raises(ValueError, match="text.builtin.tokens='chars'"):
        text.make_text_encoder(text.text_config("builtin", builtin=dict(tokens="chars")))


@pytest.mark.parametrize("tokens", ["bytes", "words"])
def test_builtin_embeddings_are_distinct_and_informative(builtin, tokens):
    encoder = builtin if tokens == "bytes" else _words_encoder(max_length=40)
    combos = list(itertools.product(COLORS, SHAPES, MOTIONS))
    captions = [f"a {c} {s} moves {m}" for c, s, m in combos]
    emb, mask = encoder.embed(captions)
    assert emb.dtype == np.float32 and emb.shape == (len(captions), 40, 128)
    assert np.all(emb[~mask] == 0) and np.all(np.isfinite(emb))
    flat = emb.reshape(len(captions), -1)
    dist = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    # Distinct captions are far apart relative to the embedding norm.
    assert dist.min() > 0.2 * np.linalg.norm(flat, axis=1).mean()
    # Each attribute is linearly decodable from the mean-pooled embedding, on
    # combinations a ridge probe has never seen (the denoiser's K/V are linear too).
    pooled = emb.sum(1) / mask.sum(1, keepdims=True)
    x = np.concatenate([pooled, np.ones((len(captions), 1))], 1)
    test = np.random.default_rng(0).permutation(len(captions))[: len(captions) // 3]
    train = np.setdiff1d(np.arange(len(captions)), test)
    for k, values in enumerate((COLORS, SHAPES, MOTIONS)):
        labels = np.array([values.index(combo[k]) for combo in combos])
        target = np.eye(len(values))[labels]
        w = np.linalg.solve(
            x[train].T @ x[train] + 1e-2 * np.eye(x.shape[1]), x[train].T @ target[train]
        )
        accuracy = np.mean(np.argmax(x[test] @ w, 1) == labels[test])
        assert accuracy == 1.0, (values, accuracy)


def test_builtin_is_deterministic_and_padding_invariant(builtin):
    again = text.make_text_encoder(text.text_config("builtin", max_length=64))
    a, mask_a = builtin.embed(["a red circle moves left"])
    b, mask_b = again.embed(["a red circle moves left"])
    n = mask_a.sum()
    np.testing.assert_allclose(a[0, :n], b[0, :n], atol=1e-5)  # padding length is irrelevant
    other = text.make_text_encoder(
        text.text_config(
            "builtin",
            max_length=40,
            builtin=dict(d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=256, seed=1),
        )
    )
    assert other.name != builtin.name
    assert np.abs(other.embed(["a red circle moves left"])[0] - a).max() > 0.1


def test_numpy_init_matches_module_tree(builtin):
    cfg = builtin.module.config
    abstract = jax.eval_shape(
        lambda: T5Encoder(cfg).init(
            jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool)
        )
    )["params"]
    want = jax.tree.map(lambda x: x.value.shape, abstract, is_leaf=lambda x: hasattr(x, "names"))
    got = jax.tree.map(np.shape, init_t5_params_numpy(cfg, 0))
    assert want == got


def test_encode_is_jittable_and_handles_null_captions(builtin):
    ids, mask = builtin.tokenize(["a blue star moves up", "a red circle moves left"])
    mask[1] = False  # CFG's null condition: an all-False mask row
    emb = jax.jit(builtin.encode)(builtin.params, ids, mask)
    assert np.all(np.isfinite(np.asarray(emb))) and np.all(np.asarray(emb)[1] == 0)
    fields = builtin.batch_fields(["a blue star moves up"])
    assert set(fields) == {"text_ids", "text_mask"} and fields["text_ids"].shape == (1, 40)


def test_t5_kind_loads_folder_and_tokenizer(tmp_path):
    torch = pytest.importorskip("torch", reason="building a T5 folder needs torch")
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers, processors

    words = ["<pad>", "</s>", "<unk>"] + "a red blue circle square moves left up".split()
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    hf_tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(words),
            d_model=16,
            d_kv=4,
            d_ff=24,
            num_layers=1,
            num_heads=4,
            feed_forward_proj="gated-gelu",
        )
    ).eval()
    model.save_pretrained(tmp_path)

    encoder = text.make_text_encoder(text.text_config("t5", path=str(tmp_path), max_length=6))
    captions = ["a red circle moves left", "a blue square moves up now", "up"]
    with pytest.warns(UserWarning, match="exceed max_length=6"):
        ids, mask = encoder.tokenize(captions)
    want = hf_tok(captions, max_length=6, truncation=True, padding="max_length")
    np.testing.assert_array_equal(ids, want["input_ids"])  # HF truncation keeps EOS too
    np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool))
    emb, _ = encoder.embed(["up"])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([[vocab["up"], 1]])).last_hidden_state.numpy()
    np.testing.assert_allclose(emb[0, :2], ref[0], atol=1e-4)
    assert encoder.dim == 16 and json.loads((tmp_path / "config.json").read_text())


def test_t5_kind_without_tokenizer_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    from motionaura_jax.encoders import loaders

    with pytest.raises(FileNotFoundError, match="no usable tokenizer"):
        loaders.load_tokenizer(str(tmp_path))
