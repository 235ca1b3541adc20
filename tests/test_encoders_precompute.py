"""tools/precompute_text_embeddings.py and the reader that joins embeddings into batches."""

import numpy as np
import pytest

from motionaura_jax.data.config import shapes_config
from motionaura_jax.data.shapes import ShapesSource
from motionaura_jax.encoders import text
from motionaura_jax.encoders.precomputed import PrecomputedTextEmbeddings, load_precomputed
from tools import precompute_text_embeddings as tool

CAPTIONS = [
    "a red circle moves left",
    "a blue square moves up",
    "a red circle moves left",
    "a green star moves down and a red circle moves up",
]


def _config(**kw):
    return text.text_config("builtin", max_length=64, **kw)


def test_tool_writes_embeddings_that_match_online_encoding(tmp_path, capsys):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("\n".join(CAPTIONS) + "\n")
    out = str(tmp_path / "emb" / "text.arrayrecord")
    meta = tool.main(
        [f"--out={out}", f"--captions_file={captions_file}", "--max_length=64", "--batch_size=2"]
    )
    assert meta["count"] == 3 and '"count": 3' in capsys.readouterr().out  # duplicates once

    encoder = text.make_text_encoder(_config())
    store = PrecomputedTextEmbeddings(out, encoder=encoder)
    want, want_mask = encoder.embed(CAPTIONS)
    by_caption = store.batch(CAPTIONS)
    np.testing.assert_array_equal(by_caption["text_mask"], want_mask)
    np.testing.assert_allclose(by_caption["text_emb"], want, atol=1e-5)
    by_index = store.batch([1, 0])
    np.testing.assert_array_equal(by_index["text_emb"], by_caption["text_emb"][[1, 0]])
    assert store.record(2)[0] == CAPTIONS[3]
    config = _config(mode="precomputed", precomputed_path=out)
    assert len(load_precomputed(config, encoder)) == 3
    with pytest.raises(ValueError, match="needs precomputed_path"):
        load_precomputed(_config(mode="precomputed"))

    with pytest.raises(KeyError, match="'a cyan cross' is not in"):
        store.batch(["a cyan cross"])
    with pytest.raises(IndexError, match=r"records \[7\] out of range"):
        store.batch([7])
    other = text.make_text_encoder(
        _config(builtin=dict(d_model=128, num_layers=2, num_heads=4, d_kv=32, d_ff=256, seed=3))
    )
    with pytest.raises(ValueError, match="was written by .*seed0.*seed3"):
        store.check_encoder(other)


def test_bfloat16_storage_and_shapes_source(tmp_path):
    out = str(tmp_path / "shapes.arrayrecord")
    meta = tool.main(
        [
            f"--out={out}",
            "--dataset=shapes",
            "--num=12",
            "--max_length=64",
            "--storage_dtype=bfloat16",
        ]
    )
    store = PrecomputedTextEmbeddings(out)
    assert len(store) == meta["count"] <= 12
    caption, emb = store.record(0)
    assert caption == ShapesSource(shapes_config(), "train")[0]["caption"]  # the clip's own
    assert emb.shape[1] == 128 and emb.shape[0] == len(caption.encode()) + 1
    assert store.batch([caption])["text_emb"].dtype == np.float32


def test_bad_caption_sources(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\n\na blue square\n")
    with pytest.raises(ValueError, match=r"empty captions on lines \[2\]"):
        tool.main([f"--out={tmp_path / 'x'}", f"--captions_file={bad}"])
    long = tmp_path / "long.txt"
    long.write_text("a red circle " * 10 + "\n")
    with pytest.raises(ValueError, match="exceed max_length=64"):
        tool.main(
            [
                f"--out={tmp_path / 'y'}",
                f"--captions_file={long}",
                "--max_length=64",
                "--on_overlong=error",
            ]
        )
    with pytest.raises(FileNotFoundError, match="precompute_text_embeddings.py"):
        PrecomputedTextEmbeddings(str(tmp_path / "missing.arrayrecord"))
