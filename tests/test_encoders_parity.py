"""Numerical parity of our Flax T5 encoder and SigLIP tower with transformers (PyTorch).

Tiny random HF models are saved with `save_pretrained` (single file and sharded index),
loaded by our loaders, and run on the same inputs; float32 outputs must agree to 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from motionaura_jax.encoders import loaders  # noqa: E402
from motionaura_jax.encoders.siglip import SiglipVisionTower  # noqa: E402
from motionaura_jax.encoders.t5 import T5Encoder, relative_position_buckets  # noqa: E402

TOL = 1e-4


def _tiny_t5(feed_forward_proj="gated-gelu", num_layers=3):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=97,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
    )
    return transformers.T5EncoderModel(config).eval()


def _tiny_siglip(use_head=True):
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
        vision_use_head=use_head,
    )
    model = transformers.SiglipVisionModel(config).eval()
    with torch.no_grad():  # HF zero-inits some biases; randomise so the test sees them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _t5_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 97, size=(3, 40)).astype(np.int64)
    lengths = np.array([40, 23, 5])  # distances beyond max_distance reach the log buckets
    mask = np.arange(40)[None] < lengths[:, None]
    ids = np.where(mask, ids, 0)
    return ids, mask


@pytest.mark.parametrize(
    "sharded,ffn", [(False, "gated-gelu"), (True, "gated-gelu"), (False, "relu")]
)
def test_t5_encoder_matches_transformers(tmp_path, sharded, ffn):
    model = _tiny_t5(ffn)
    kwargs = {"max_shard_size": "20KB"} if sharded else {}
    model.save_pretrained(tmp_path, **kwargs)
    if sharded:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ids, mask = _t5_inputs()
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))
        ).last_hidden_state
    cfg, params = loaders.load_t5(str(tmp_path))
    got = T5Encoder(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    diff = float(np.max(np.abs(np.asarray(got) - want.numpy())))
    print(f"t5 sharded={sharded} ffn={ffn} max abs diff {diff:.2e}")
    assert diff <= TOL


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for buckets, distance in [(32, 128), (16, 24), (64, 256)]:
        length = 300
        rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        want = T5Attention._relative_position_bucket(rel, True, buckets, distance).numpy()
        got = relative_position_buckets(length, length, buckets, distance)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sharded,use_head", [(False, True), (True, True), (False, False)])
def test_siglip_vision_matches_transformers(tmp_path, sharded, use_head):
    model = _tiny_siglip(use_head)
    kwargs = {"max_shard_size": "20KB"} if sharded else {}
    model.save_pretrained(tmp_path, **kwargs)
    pixels = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels))
    cfg, params = loaders.load_siglip_vision(str(tmp_path))
    pooled, hidden = SiglipVisionTower(cfg).apply(
        {"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1))
    )
    diff_hidden = float(np.max(np.abs(np.asarray(hidden) - out.last_hidden_state.numpy())))
    print(f"siglip sharded={sharded} head={use_head} hidden max abs diff {diff_hidden:.2e}")
    assert diff_hidden <= TOL
    if use_head:
        diff_pooled = float(np.max(np.abs(np.asarray(pooled) - out.pooler_output.numpy())))
        print(f"siglip pooled max abs diff {diff_pooled:.2e}")
        assert diff_pooled <= TOL
    else:
        assert pooled is None


def test_full_t5_and_bfloat16_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=97,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "full")  # has decoder.* and lm_head.*: skipped
    ids, mask = _t5_inputs()
    with torch.no_grad():
        want = model.encoder(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))
        )
    cfg, params = loaders.load_t5(str(tmp_path / "full"))
    got = T5Encoder(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))
    assert float(np.max(np.abs(np.asarray(got) - want.last_hidden_state.numpy()))) <= TOL

    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, params16 = loaders.load_t5(str(tmp_path / "bf16"))
    q16 = params16["layers"]["attention"]["query"]["kernel"]
    assert q16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(q16, np.float32),
        np.asarray(
            params["layers"]["attention"]["query"]["kernel"].astype(jnp.bfloat16), np.float32
        ),
    )


def test_full_siglip_model_folder(tmp_path):
    torch.manual_seed(0)
    vision = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=8,
        patch_size=4,
    )
    config = transformers.SiglipConfig(
        vision_config=vision,
        text_config=dict(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=20,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    )
    model = transformers.SiglipModel(config).eval()
    model.save_pretrained(tmp_path)  # keys "vision_model.*", plus text_model.*, logit_*
    pixels = np.random.default_rng(2).uniform(-1, 1, size=(2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        out = model.vision_model(pixel_values=torch.from_numpy(pixels))
    cfg, params = loaders.load_siglip_vision(str(tmp_path))
    pooled, hidden = SiglipVisionTower(cfg).apply(
        {"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1))
    )
    assert float(np.max(np.abs(np.asarray(hidden) - out.last_hidden_state.numpy()))) <= TOL
    assert float(np.max(np.abs(np.asarray(pooled) - out.pooler_output.numpy()))) <= TOL
    with pytest.raises(ValueError, match="SigLIP expects images"):
        SiglipVisionTower(cfg).apply({"params": params}, jnp.zeros((1, 16, 16, 3)))
