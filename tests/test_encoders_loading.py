"""Bad checkpoint folders give errors that name the problem (no torch needed).

Fixture folders are written with the `safetensors` NumPy API in the Hugging Face layout
(`config.json` from `transformers.T5Config`, tensor names and shapes of `T5EncoderModel`).
"""

import json

import numpy as np
import pytest
import transformers
from safetensors.numpy import save_file

from motionaura_jax.encoders import hf_checkpoint, loaders
from motionaura_jax.encoders.t5 import T5Config

HF_CONFIG = dict(
    vocab_size=40,
    d_model=16,
    d_kv=4,
    d_ff=24,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    feed_forward_proj="gated-gelu",
)


def _hf_t5_tensors(config: dict) -> dict[str, np.ndarray]:
    """HF T5EncoderModel tensor names and shapes, written out by hand."""
    d, inner, f, n = config["d_model"], config["d_kv"] * config["num_heads"], config["d_ff"], 0
    rng = np.random.default_rng(0)
    shapes = {
        "shared.weight": (config["vocab_size"], d),
        "encoder.final_layer_norm.weight": (d,),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            config["relative_attention_num_buckets"],
            config["num_heads"],
        ),
    }
    for n in range(config["num_layers"]):
        p = f"encoder.block.{n}.layer."
        shapes.update(
            {
                p + "0.SelfAttention.q.weight": (inner, d),
                p + "0.SelfAttention.k.weight": (inner, d),
                p + "0.SelfAttention.v.weight": (inner, d),
                p + "0.SelfAttention.o.weight": (d, inner),
                p + "0.layer_norm.weight": (d,),
                p + "1.DenseReluDense.wi_0.weight": (f, d),
                p + "1.DenseReluDense.wi_1.weight": (f, d),
                p + "1.DenseReluDense.wo.weight": (d, f),
                p + "1.layer_norm.weight": (d,),
            }
        )
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _write(folder, tensors, config=None, model_type=None):
    config = transformers.T5Config(**HF_CONFIG).to_dict() if config is None else config
    if model_type:
        config["model_type"] = model_type
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(folder / "model.safetensors"))
    return str(folder)


def test_valid_folder_loads_and_ignores_decoder(tmp_path):
    tensors = _hf_t5_tensors(HF_CONFIG)
    tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((16, 16), np.float32)
    tensors["lm_head.weight"] = np.zeros((40, 16), np.float32)
    cfg, params = loaders.load_t5(_write(tmp_path / "ok", tensors))
    assert cfg == T5Config.from_hf(HF_CONFIG)
    assert params["layers"]["attention"]["query"]["kernel"].shape == (2, 16, 4, 4)
    # (out, in) torch layout -> (in, heads, kv); layer 1 is the second slice of the stack.
    q1 = tensors["encoder.block.1.layer.0.SelfAttention.q.weight"]
    np.testing.assert_array_equal(
        params["layers"]["attention"]["query"]["kernel"][1], q1.T.reshape(16, 4, 4)
    )


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loaders.load_t5(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        loaders.load_t5(str(tmp_path / "empty"))


def test_folder_without_weights(tmp_path):
    path = _write(tmp_path / "noweights", None)
    with pytest.raises(FileNotFoundError, match="no weights.*model.safetensors"):
        loaders.load_t5(path)
    (tmp_path / "noweights" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*save_pretrained"):
        loaders.load_t5(path)


def test_wrong_model_type(tmp_path):
    path = _write(tmp_path / "bert", _hf_t5_tensors(HF_CONFIG), model_type="bert")
    with pytest.raises(ValueError, match="model_type='bert'.*'t5'"):
        loaders.load_t5(path)
    with pytest.raises(ValueError, match="model_type='bert'.*siglip"):
        loaders.load_siglip_vision(path)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    tensors = _hf_t5_tensors(HF_CONFIG)
    del tensors["encoder.block.1.layer.0.SelfAttention.k.weight"]
    del tensors["encoder.final_layer_norm.weight"]
    tensors["encoder.block.0.layer.0.extra.weight"] = np.zeros(3, np.float32)
    tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((16, 20), np.float32)
    with pytest.raises(ValueError) as info:
        loaders.load_t5(_write(tmp_path / "bad", tensors))
    message = str(info.value)
    assert (
        "missing keys ['encoder.block.1.layer.0.SelfAttention.k.weight', "
        "'encoder.final_layer_norm.weight']" in message
    )
    assert "unexpected keys ['encoder.block.0.layer.0.extra.weight']" in message
    assert (
        "encoder.block.1.layer.1.DenseReluDense.wo.weight: expected (16, 24), found (16, 20)"
        in message
    )


def test_config_that_disagrees_with_weights(tmp_path):
    config = transformers.T5Config(**{**HF_CONFIG, "num_layers": 3}).to_dict()
    with pytest.raises(ValueError, match=r"missing keys \['encoder.block.2"):
        loaders.load_t5(_write(tmp_path / "deeper", _hf_t5_tensors(HF_CONFIG), config=config))


def test_sharded_index_with_missing_shard(tmp_path):
    path = _write(tmp_path / "sharded", None)
    tensors = _hf_t5_tensors(HF_CONFIG)
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:5]}, str(tmp_path / "sharded" / "a.safetensors"))
    save_file({k: tensors[k] for k in names[5:]}, str(tmp_path / "sharded" / "b.safetensors"))
    weight_map = {k: ("a.safetensors" if i < 5 else "b.safetensors") for i, k in enumerate(names)}
    (tmp_path / "sharded" / hf_checkpoint.INDEX_FILE).write_text(
        json.dumps({"weight_map": weight_map})
    )
    _, params = loaders.load_t5(path)  # complete: loads
    assert params["token_embed"]["embedding"].shape == (40, 16)
    (tmp_path / "sharded" / "b.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="b.safetensors"):
        loaders.load_t5(path)


def test_load_casts_dtype(tmp_path):
    import jax.numpy as jnp

    _, params = loaders.load_t5(
        _write(tmp_path / "ok", _hf_t5_tensors(HF_CONFIG)), dtype=jnp.bfloat16
    )
    assert params["layers"]["mlp"]["wo"]["kernel"].dtype == jnp.bfloat16


def test_unsupported_feed_forward():
    with pytest.raises(ValueError, match="feed_forward_proj='gated-tanh'"):
        T5Config.from_hf({**HF_CONFIG, "feed_forward_proj": "gated-tanh"})
