"""The `t2v` stage on a tiny frozen tokenizer: end-to-end training, loss, token sources, errors."""

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import main_job
from motionaura_jax.data import pipeline
from motionaura_jax.tokenizer.vocabulary import CodeVocabulary
from motionaura_jax.train import loop, t2v, t2v_data
from tests.stage_fixtures import t2v_config, t2v_run_config

pytest_plugins = ["tests.stage_fixtures"]


def test_trains_end_to_end_and_writes_eval(t2v_run, base_run):
    config = t2v_run_config(base_run)
    result = json.load(open(os.path.join(t2v_run, "t2v", "eval.json")))
    assert result["stage"] == "t2v" and result["finished"]
    assert result["step"] == config.train.num_steps
    assert result["num_prompts"] == config.eval.num_prompts
    keys = ("caption_color", "caption_shape", "caption_motion", "caption_mean", "caption_count")
    for key in keys:
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    checkpoints = checkpoint_lib.StageCheckpointer(
        os.path.join(t2v_run, "t2v", "checkpoints"), stage="t2v", async_save=False
    )
    assert checkpoints.all_steps() == [config.train.num_steps]
    checkpoints.close()
    # The run read the cache the t2v stage wrote at start-up in base_run (build_cache).
    assert not os.path.exists(os.path.join(t2v_run, "t2v_tokens.npz"))
    cache = t2v_data.TokenCache(config.tokens.cache_path)
    assert len(cache) == config.tokens.cache_clips


def test_reevaluate_reproduces_eval_json_and_applies_eval_overrides(t2v_run):
    """`loop.reevaluate` (tools/reevaluate.py): the same samples as the run's own final
    evaluation, plus what the override asked for; non-eval settings are refused."""
    saved = json.load(open(os.path.join(t2v_run, "t2v", "eval.json")))
    again = loop.reevaluate(t2v_run, "t2v", ["--config.eval.reference=True"])
    assert {k: again[k] for k in saved if k in again} == {k: saved[k] for k in again if k in saved}
    assert {"caption_color", "caption_motion"} <= saved.keys() & again.keys()
    assert {"reference_color", "reference_motion"} <= again.keys()
    with pytest.raises(ValueError, match=r"only eval\.\* settings.*model\.width=8"):
        loop.reevaluate(t2v_run, "t2v", ["model.width=8"])
    with pytest.raises(FileNotFoundError, match="no stage folder.*inpaint"):
        loop.reevaluate(t2v_run, "inpaint")


def test_loss_falls_on_a_fixed_batch(t2v_run, base_run):
    """The cache holds one batch of clips, so every step of t2v_run saw the same batch."""
    config = t2v_run_config(base_run)
    assert config.tokens.cache_clips == config.train.batch_size
    with open(os.path.join(t2v_run, "t2v", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == config.train.num_steps  # log_every=1
    # Time and masks are redrawn every step, so compare averages, not single steps. The
    # vocabulary holds only the codes of these 8 clips, so the loss starts near log V (no
    # unused codes to push down): it fell by 0.62 nats in 20 steps, while single steps
    # scatter by about 0.05.
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


def test_online_tokens_equal_cached_tokens(base_run):
    """The loss on clips tokenised inside the step equals the loss on the cache's rows."""
    config = t2v_config("tokens.source=online", "eval.num_prompts=0")
    stage = t2v.build(config, base_run)
    cache = t2v_data.TokenCache(os.path.join(base_run, "t2v_tokens.npz"))
    rows = [0, 3, 5, 7]
    clips = pipeline.eval_batches(config.data, 8, 8, split="train")[0]
    captions = [str(c) for c in clips["caption"][rows]]
    online = {
        "video": clips["video"][rows],
        "fps": clips["fps"][rows],
        **t2v_data.make_text(config).batch_fields(captions),
    }
    assert list(cache.arrays["caption"][rows]) == captions
    params, _ = checkpoint_lib.load_params(os.path.join(base_run, "t2v"))
    frozen = nn.meta.unbox(stage.frozen)
    loss = jax.jit(lambda batch: stage.loss(params, frozen, batch, jax.random.PRNGKey(7), 0)[0])
    # Cached text embeddings are stored in float16.
    np.testing.assert_allclose(float(loss(online)), float(loss(cache.batch(rows))), rtol=2e-3)


def test_patched_and_unpatched_denoisers_take_a_loss_in_the_stage(base_run):
    """The toy's 2 x 2 tokens a position (`model.patch`) and the paper's one (`unpatched`)."""
    cache = t2v_data.TokenCache(os.path.join(base_run, "t2v_tokens.npz"))
    batch = cache.batch([0, 1])
    for patch, patched in (("(1,2,2)", True), ("(1,1,1)", False)):
        stage = t2v.build(t2v_config(f"model.patch={patch}", "eval.num_prompts=0"), base_run)
        params = nn.meta.unbox(stage.init(jax.random.PRNGKey(0), batch))
        assert ("patch_embed" in params) == patched
        frozen = nn.meta.unbox(stage.frozen)
        loss = stage.loss(params, frozen, batch, jax.random.PRNGKey(1), 0)[0]
        assert np.isfinite(float(loss)), patch


def test_binding_loss_takes_the_caches_objects_and_refuses_spectral_queries(base_run):
    """`diffusion.binding_weight`: the stage reads the cache's object cells and phrase ids
    and adds the loss; with frequency-bin queries (cross_spectral 'real') it refuses.
    `diffusion.object_extra_weight` and `object_mask_prob` read the same cells."""
    cache = t2v_data.TokenCache(os.path.join(base_run, "t2v_tokens.npz"))
    batch = cache.batch([0, 1, 2, 3])
    config = t2v_config("diffusion.binding_weight=0.5", "eval.num_prompts=0")
    stage = t2v.build(config, base_run)
    assert {"object_cells", "phrase_ids"} <= set(stage.device_fields)
    params = nn.meta.unbox(stage.init(jax.random.PRNGKey(0), batch))
    loss, metrics = stage.loss(params, nn.meta.unbox(stage.frozen), batch, jax.random.PRNGKey(1), 0)
    assert 0.0 < float(metrics["binding_loss"]) < 1.0
    assert float(loss) == pytest.approx(
        float(metrics["loss"]) + 0.5 * float(metrics["binding_loss"]), rel=1e-5
    )
    with pytest.raises(ValueError, match="cross_spectral"):
        t2v.build(t2v_config("diffusion.binding_weight=0.5", "model.cross_spectral=real"), base_run)
    with pytest.raises(ValueError, match="lacks"):
        t2v.check_binding(config, None)
    extra = t2v_config("diffusion.object_extra_weight=2.0", "eval.num_prompts=0")
    stage = t2v.build(extra, base_run)
    assert "object_cells" in stage.device_fields
    loss, metrics = stage.loss(params, nn.meta.unbox(stage.frozen), batch, jax.random.PRNGKey(1), 0)
    assert "binding_loss" not in metrics
    assert np.isfinite(float(loss)) and float(loss) != pytest.approx(float(metrics["loss"]))
    with pytest.raises(ValueError, match="object_extra_weight=2.0 needs .* lacks"):
        t2v.check_object_cache("diffusion.object_extra_weight=2.0", None, "it to 0")
    masking = t2v.build(
        t2v_config("diffusion.object_mask_prob=0.5", "eval.num_prompts=0"), base_run
    )
    assert "object_cells" in masking.device_fields
    # A run saved before the settings existed builds (re-evaluation, resumed main jobs).
    saved = t2v_config("eval.num_prompts=0").to_dict()
    for key in ("binding_weight", "object_extra_weight", "object_mask_prob"):
        del saved["diffusion"][key]
    stage = t2v.build(ml_collections.ConfigDict(saved), base_run)
    assert "object_cells" not in stage.device_fields
    # Off by default, so a resumed main job counts such a run as trained with this config.
    recorded = json.loads(json.dumps(saved))  # as the main job's record holds it
    assert main_job.config_changes(recorded, t2v_config("eval.num_prompts=0")) == []


def test_code_features_give_the_denoiser_its_vocabularys_code_vectors(base_run):
    """`model.code_features`: the denoiser gets each id's quantizer vector and takes a
    loss; a digit head refuses it."""
    config = t2v_config("model.code_features=True", "eval.num_prompts=0")
    stage = t2v.build(config, base_run)
    tokenizer = t2v_data.load_tokenizer(os.path.join(base_run, "tokenizer")).with_vocabulary(
        CodeVocabulary.load(os.path.join(base_run, "t2v", "vocabulary.npz"))
    )
    denoiser = t2v.build_denoiser(config.model, tokenizer, text_dim=32)
    np.testing.assert_array_equal(denoiser.code_vectors, tokenizer.id_vectors())
    assert t2v.build_denoiser(t2v_config().model, tokenizer, 32).code_vectors is None
    cache = t2v_data.TokenCache(os.path.join(base_run, "t2v_tokens.npz"))
    batch = cache.batch([0, 1])
    params = nn.meta.unbox(stage.init(jax.random.PRNGKey(0), batch))
    assert {"code_vector_embed", "code_vector_head"} <= params.keys()
    loss = stage.loss(params, nn.meta.unbox(stage.frozen), batch, jax.random.PRNGKey(1), 0)[0]
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="code_vectors must be.*digit_head=False"):
        digits = t2v_config(
            "model.code_features=True",
            "model.digit_head=True",
            "model.patch=(1,1,1)",
            "tokens.vocabulary=0",
            "eval.num_prompts=0",
        )
        stage = t2v.build(digits, base_run)
        stage.init(jax.random.PRNGKey(0), batch)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"no finished stage-1 tokenizer.*configs/tokenizer"
    ):
        t2v.build(t2v_config(), str(tmp_path))
    os.makedirs(tmp_path / "elsewhere" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        t2v.build(t2v_config(f"tokenizer_dir={tmp_path / 'elsewhere'}"), str(tmp_path))


def test_non_tokenizer_checkpoint_is_refused(base_run, tmp_path):
    config = t2v_config(f"tokenizer_dir={os.path.join(base_run, 't2v')}")
    with pytest.raises(ValueError, match=r"stage 't2v', not a stage-1 tokenizer"):
        t2v.build(config, str(tmp_path))
