"""The `inpaint` stage, its pipeline and launcher on tiny tokenizer + t2v checkpoints."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from launch import inpaint as launch_inpaint
from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import pipelines
from motionaura_jax.data.config import shapes_config
from motionaura_jax.data.shapes import ShapesSource
from motionaura_jax.denoiser import sampling
from motionaura_jax.inpaint import data as inpaint_data
from motionaura_jax.inpaint import model as inpaint_model
from motionaura_jax.inpaint.sketch import prepare_sketch
from motionaura_jax.nn import lora as lora_lib
from motionaura_jax.train import inpaint, t2v_data
from tests.stage_fixtures import inpaint_config, save_initial_checkpoint, t2v_config

pytest_plugins = ["tests.stage_fixtures"]


def test_training_leaves_the_base_bitwise_unchanged(base_run, inpaint_run):
    """After inpaint_run's steps: the t2v weights on disk and the frozen copy the stage
    trains against are bit for bit the base it started from, and only the adapters, the
    masked-video table and the sketch MLP were trained (Adam moments for them alone)."""
    folder = os.path.join(inpaint_run, "inpaint")
    trained, config = checkpoint_lib.load_params(folder)
    on_disk, _ = checkpoint_lib.load_params(os.path.join(base_run, "t2v"))
    # base_fingerprint is the SHA-1 of the base's bytes, taken at start-up (before step 1).
    assert t2v_data.params_fingerprint(on_disk) == config.base_fingerprint
    parts = inpaint.load_parts(config, inpaint_run)
    frozen = nn.meta.unbox(parts.frozen()["denoiser"])  # what Stage.frozen holds
    for a, b in zip(jax.tree.leaves(on_disk), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ups = [np.abs(a["up"]).max() for _, a in inpaint_model.iter_adapters(trained["base"])]
    assert ups and max(ups) > 0  # W_up starts at zero: the adapters trained
    # The optimizer state holds Adam moments for the trainable parameters only.
    checkpoints = checkpoint_lib.StageCheckpointer(
        os.path.join(folder, "checkpoints"), stage="inpaint", async_save=False
    )
    state = checkpoints.manager.item_metadata(checkpoints.latest_step())["state"]
    checkpoints.close()
    opt_state = getattr(state, "tree", state)["opt_state"]
    n_opt = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(opt_state) if len(x.shape))
    n_train = lora_lib.count_params(trained)
    assert n_opt == 2 * n_train, (n_opt, n_train)
    counts = inpaint.parameter_counts(parts)
    print("inpaint parameter counts:", counts)
    assert counts["trainable"] == n_train
    assert counts["adapters"] < counts["frozen_denoiser"] and 0 < counts["sketch_mlp"]
    assert counts["trainable"] < counts["total"]


def test_stage_checkpoints_trainable_params_and_names_its_base(base_run, inpaint_run):
    expected = inpaint_config()
    result = json.load(open(os.path.join(inpaint_run, "inpaint", "eval.json")))
    assert result["stage"] == "inpaint" and result["finished"]
    assert result["step"] == expected.train.num_steps
    for key in ("inpaint_shape", "inpaint_color", "inpaint_found", "reference_inpaint_shape"):
        assert 0.0 <= result[key] <= 1.0
    assert result["num_clips"] == expected.eval.num_clips
    assert result["psnr_outside_mask"] > 0 and result["reference_psnr_outside_mask"] > 0
    params, config = checkpoint_lib.load_params(os.path.join(inpaint_run, "inpaint"))
    assert set(params) == {"base", "masked_embed", "sketch_mlp", "cell_logits"}  # the toy's
    names = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params["base"])[0]
    ]
    assert names and all("_lora" in n for n in names)
    base, _ = checkpoint_lib.load_params(os.path.join(base_run, "t2v"))
    assert config.base_fingerprint == t2v_data.params_fingerprint(base)


def test_missing_or_wrong_base_is_a_clear_error(base_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no finished t2v checkpoint.*configs/t2v.py"):
        inpaint.build(inpaint_config(), str(tmp_path))
    wrong = inpaint_config(f"base_dir={os.path.join(base_run, 'tokenizer')}")
    with pytest.raises(ValueError, match=r"stage 'tokenizer', not a t2v denoiser"):
        inpaint.build(wrong, str(tmp_path))
    changed = inpaint_config("base_fingerprint=" + "deadbeef" * 5)
    with pytest.raises(ValueError, match="the base changed"):
        inpaint.build(changed, base_run)


def _clip():
    source = ShapesSource(shapes_config(), "eval")
    return inpaint_data.make_example(source[0], seed=0, dilation=2)


def test_pipeline_checks_its_inputs(inpaint_run):
    pipe = pipelines.Inpainter.from_workdir(inpaint_run)  # re-exported next to TextToVideo
    ex = _clip()
    video = np.round((ex["video"] + 1) * 127.5).astype(np.uint8)
    t, h, w = ex["mask"].shape
    # A mask per frame (0/1), or one image (0/255) for every frame.
    np.testing.assert_array_equal(pipelines.prepare_mask(ex["mask"], video.shape), ex["mask"])
    image = ex["mask"].max(0)
    np.testing.assert_array_equal(
        pipelines.prepare_mask(image * 255, video.shape), np.broadcast_to(image, (t, h, w))
    )
    prompt = "a red object moves left"
    small = f"mask is {h // 2}x{w // 2} but the video is {h}x{w}; resize"
    with pytest.raises(ValueError, match=small):
        pipe.inpaint(video, np.ones((h // 2, w // 2)), ex["sketch"], prompt)
    with pytest.raises(ValueError, match="mask is empty"):
        pipe.inpaint(video, np.zeros((h, w)), ex["sketch"], prompt)
    with pytest.raises(ValueError, match="sketch must be an image"):
        pipe.inpaint(video, ex["mask"], "sketch.png", prompt)
    with pytest.raises(ValueError, match="prompt '' is empty"):
        pipe.inpaint(video, ex["mask"], ex["sketch"], "")
    tf = pipe.parts.tokenizer.model.temporal_factor
    with pytest.raises(ValueError, match=rf"1 \+ {tf}k frames: use the first {1 + tf}"):
        pipe.inpaint(video[: 2 + tf], ex["mask"][: 2 + tf], ex["sketch"], prompt)


def test_launch_inpaint_writes_a_video(inpaint_run, tmp_path):
    """The one inference run of this module: launcher -> `Inpainter.inpaint` -> file."""
    ex = _clip()
    video = np.round((ex["video"] + 1) * 127.5).astype(np.uint8)
    np.save(tmp_path / "in.npy", video)
    Image.fromarray(ex["mask"].max(0) * 255).save(tmp_path / "mask.png")
    Image.fromarray(np.round((ex["sketch"] + 1) * 127.5).astype(np.uint8)).save(
        tmp_path / "sketch.png"
    )
    (tmp_path / "notes.txt").write_text("not an image")
    args = [
        "--workdir",
        inpaint_run,
        "--video",
        str(tmp_path / "in.npy"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--prompt",
        "a red object moves left",
        "--steps",
        "2",
    ]
    out = launch_inpaint.main(
        [*args, "--sketch", str(tmp_path / "sketch.png"), "--output", str(tmp_path / "out.npy")]
    )
    frames = np.load(out)
    assert frames.shape == video.shape and frames.dtype == np.uint8
    keep = np.broadcast_to(ex["mask"].max(0) == 0, frames.shape[:3])
    np.testing.assert_array_equal(frames[keep], video[keep])
    with pytest.raises(ValueError, match=r"notes.txt' is not an image file.*PNG"):
        launch_inpaint.main(
            [*args, "--sketch", str(tmp_path / "notes.txt"), "--output", str(tmp_path / "bad.npy")]
        )


def test_digit_head_base_trains_on_per_digit_logits(base_run, tmp_path):
    """An inpaint stage on a digit-head t2v: the loss reads (B, L, sum(levels)) logits."""
    workdir = str(tmp_path)
    base = save_initial_checkpoint(
        t2v_config(
            "model.digit_head=True",
            "model.patch=(1,1,1)",  # a digit head predicts one token a position
            "tokens.vocabulary=0",  # digits need the full codebook
            f"tokenizer_dir={os.path.join(base_run, 'tokenizer')}",
            f"tokens.cache_path={os.path.join(base_run, 't2v_tokens.npz')}",
        ),
        workdir,
    )
    with pytest.raises(ValueError, match="cell_logits needs the K-way head"):
        inpaint.build(inpaint_config(f"base_dir={base}"), workdir)  # the toy's default
    per_digit = inpaint_config(
        f"base_dir={base}", "inpaint.cell_logits=False", "inpaint.cell_neighbours=False"
    )
    stage = inpaint.build(per_digit, workdir)
    batch = next(stage.data("train", 0))
    batch = {k: batch[k] for k in stage.device_fields}
    key = jax.random.key(0)
    params = nn.unbox(jax.eval_shape(stage.init, key, batch))  # shapes only: no compile
    frozen = nn.unbox(stage.frozen)
    loss, metrics = jax.eval_shape(stage.loss, params, frozen, batch, key, 0)
    assert loss.shape == () and "masked_accuracy" in metrics


def test_given_cells_decode_from_their_own_codes_not_the_vocabulary(inpaint_run):
    # The base predicts ids of its vocabulary (the codes of its 8-clip cache); the cells
    # outside the hole are given, so they decode from E(V)'s exact codes.
    pipe = pipelines.Inpainter.from_workdir(inpaint_run)
    tok, tok_params = pipe.parts.tokenizer, pipe._tokenizer
    ex = _clip()
    clip, mask = ex["video"][None].astype(np.float32), ex["mask"]
    grid = tok.token_grid(*clip.shape[1:4])
    hole = inpaint_data.hole_tokens(
        mask[None], grid, tok.model.temporal_factor, tok.model.spatial_factor
    )
    codes = np.asarray(tok.raw.encode(tok_params, clip))
    lossy = np.asarray(tok.ids_to_codes(tok.codes_to_ids(codes))) != codes
    assert (lossy & ~hole).any()  # some given code is not in the vocabulary
    text_emb, text_mask = pipe.parts.text.embed(["a red object moves left"])
    fn = pipe._fn(*sampling.run_settings(pipe.config.eval))
    tokens, hat = fn(
        pipe.trainable,
        pipe._base,
        tok_params,
        pipe._sketch,
        clip,
        clip * (1.0 - mask[None, ..., None]),
        jnp.asarray(hole),
        prepare_sketch(ex["sketch"], pipe.parts.sketch.image_size)[None],
        text_emb,
        text_mask,
        np.full((1,), pipe.fps, np.float32),
        jax.random.PRNGKey(0),
    )
    want = np.where(hole, np.asarray(tok.ids_to_codes(tokens)), codes)
    np.testing.assert_allclose(hat, tok.raw.decode(tok_params, jnp.asarray(want)), atol=1e-5)
