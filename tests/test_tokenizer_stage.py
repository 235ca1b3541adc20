"""Stage wiring: configs/tokenizer.py variants and motionaura_jax/train/tokenizer.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tokenizer as tok_config
from motionaura_jax.tokenizer.model import build_tokenizer
from motionaura_jax.train import tokenizer as tok_stage


def _tiny(variant="toy"):
    c = tok_config.get_config(variant)
    c.model.update(
        stem_width=8,
        widths=(8, 8, 16),
        depths=(1, 1, 1),
        decoder_widths=(8, 8, 16),
        decoder_depths=(1, 1, 1),
        depthwise_impl="grouped",  # fewer ops to compile; parity is in test_conv3d
        mfi_hidden=16 if c.model.mfi_hidden else 0,
    )
    c.data.update(height=32, width=32, frames=5, num_eval=8)
    c.train.batch_size = 2
    c.eval.update(num_clips=4, batch_size=2, frames=9)  # scored on longer clips than trained
    return c


@pytest.mark.parametrize("variant", tok_config.VARIANTS)
def test_every_variant_builds(variant):
    c = tok_config.get_config(variant)
    model = build_tokenizer(c.model)
    # The paper compresses 16x in space; the CPU toy 8x (configs/tokenizer.py, `_toy`).
    spatial = 8 if variant == "toy" else 16
    assert model.temporal_factor == 4 and model.spatial_factor == spatial
    expected = {"vq": 4096, "lfq": 8192, "gumbel": 256}.get(variant, 12_800)
    assert model.codebook_size == expected
    # The toy trains without masking and so without the MFI head; `toy,masked` has both.
    assert (model.mfi_head is None) == (variant in ("no_mfi", "toy"))
    assert c.masking.patch == (variant not in ("toy", "no_mask", "no_patch_mask"))
    assert c.masking.frame == (variant not in ("toy", "no_mask", "no_frame_mask"))
    if variant == "paper":
        assert c.optimizer.lr == 1e-4 and c.optimizer.grad_accum == 8
        assert c.model.dtype == "float32"
        ratios = [b["ratio"] for b in c.data.buckets]
        assert ratios == [0.40, 0.10, 0.25, 0.25]
        for b in c.data.buckets:
            assert (b["frames"] - 1) % 4 == 0 and b["height"] % 16 == 0 and b["width"] % 16 == 0
    with pytest.raises(ValueError, match="unknown tokenizer variant"):
        tok_config.get_config("toy,pq")


def test_toy_masked_restores_masking_and_mfi():
    c = tok_config.get_config("toy,masked")
    assert c.masking.patch and c.masking.frame
    assert c.model.mfi_hidden == 64 and c.loss.mfi_weight == 0.1
    c = tok_config.get_config("toy,masked,no_mfi")
    assert c.masking.patch and c.model.mfi_hidden == 0 and c.loss.mfi_weight == 0.0


def test_stage_init_loss_and_evaluate():
    c = _tiny("toy,masked")
    stage = tok_stage.build(c)
    batch = next(stage.data("train", 0))
    assert batch["video"].shape == (2, 5, 32, 32, 3)
    device_batch = {k: jnp.asarray(batch[k]) for k in stage.device_fields}
    key = jax.random.key(0, impl="rbg")
    params = nn.unbox(jax.jit(stage.init)(key, device_batch))

    @jax.jit
    def grad_fn(p, b, step):
        return jax.value_and_grad(stage.loss, has_aux=True)(p, None, b, key, step)

    (loss, metrics), grads = grad_fn(params, device_batch, jnp.int32(c.train.num_steps))
    assert np.isfinite(float(loss))
    for name in (
        "rec_loss",
        "quant_loss",
        "psnr",
        "codebook_usage",
        "perplexity",
        "patch_ratio",
        "frame_prob",
    ):
        assert name in metrics, name
    np.testing.assert_allclose(metrics["patch_ratio"], 0.6, atol=1e-6)  # end of schedule
    np.testing.assert_allclose(metrics["frame_prob"], 0.5, atol=1e-6)
    flat = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in flat)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["mfi_head"]))
    report = stage.evaluate(params, None)
    assert stage.evaluate._batches[0]["video"].shape == (2, 9, 32, 32, 3)
    assert report["num_clips"] == 4
    assert 0.0 < report["codebook_usage"] <= 1.0 and report["perplexity"] >= 1.0
    assert np.isfinite(report["psnr"]) and -1.0 <= report["ssim"] <= 1.0
    # `shapes`: the oracle's reading of the reconstructions (the later stages' ceiling).
    assert all(0.0 <= report[f"oracle_{k}"] <= 1.0 for k in ("color", "shape", "motion"))


def test_no_mfi_variant_has_no_mfi_loss():
    c = _tiny("toy,masked,no_mfi")
    stage = tok_stage.build(c)
    batch = {"video": jax.ShapeDtypeStruct((2, 5, 32, 32, 3), jnp.float32)}
    key = jax.random.key(0)
    params = nn.unbox(jax.eval_shape(stage.init, key, batch))  # shapes only: no compile
    assert "mfi_head" not in params
    _, metrics = jax.eval_shape(stage.loss, params, None, batch, key, jnp.int32(0))
    assert "mfi_loss" not in metrics and "rec_loss" in metrics
