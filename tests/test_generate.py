"""Text -> video inference: the `TextToVideo` pipeline, writers and launch/generate.py."""

import av
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from launch import generate
from motionaura_jax import pipelines
from tests.stage_fixtures import t2v_config

pytest_plugins = ["tests.stage_fixtures"]
PROMPTS = ["a red circle moves left", "a blue square moves up"]
DATA = t2v_config().data  # the clip size the t2v checkpoint of base_run was trained for
CLIP = (DATA.frames, DATA.height, DATA.width, 3)


@pytest.fixture(scope="module")
def pipe(base_run):
    return pipelines.TextToVideo.from_workdir(base_run)


def test_cli_writes_mp4_and_npy(base_run, tmp_path):
    out = tmp_path / "clips" / "clip.mp4"
    written = generate.main(
        [
            f"--workdir={base_run}",
            f"--prompt={PROMPTS[0]}",
            f"--prompt={PROMPTS[1]}",
            f"--output={out}",
            "--save-npy",
            "--steps=2",
            "--seed=1",
        ]
    )
    expected = [tmp_path / "clips" / f"clip_{i}{s}" for i in range(2) for s in (".mp4", ".npy")]
    assert sorted(written) == sorted(map(str, expected))
    for i in range(2):
        frames = np.load(tmp_path / "clips" / f"clip_{i}.npy")
        assert frames.shape == CLIP and frames.dtype == np.uint8
        with av.open(str(tmp_path / "clips" / f"clip_{i}.mp4")) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == CLIP[0] and decoded[0].shape == CLIP[1:]
        # Lossy codec: close to the saved frames, not equal.
        assert np.abs(np.stack(decoded).astype(float) - frames).mean() < 20


# The module's pipeline runs one setting (it compiles once per batch size and setting): the
# posterior sampler without guidance. The CLI test runs the MaskGIT sampler with guidance.
POSTERIOR = dict(steps=2, sampler="posterior", cfg=-1.0)


def test_same_seed_same_output(pipe):
    a, tokens_a = pipe.generate(PROMPTS[:1], seed=5, return_tokens=True, **POSTERIOR)
    b, tokens_b = pipe.generate(PROMPTS[:1], seed=5, return_tokens=True, **POSTERIOR)
    _, tokens_c = pipe.generate(PROMPTS[:1], seed=6, return_tokens=True, **POSTERIOR)
    assert a.shape == (1, *CLIP) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tokens_a, tokens_b)
    assert (tokens_a != tokens_c).any()
    assert tokens_a.min() >= 0 and tokens_a.max() < pipe.tokenizer.vocab_size


def test_posterior_sampler_and_gif(pipe, tmp_path):
    frames = pipe.generate(PROMPTS[:1], **POSTERIOR)
    path = pipelines.save_video(str(tmp_path / "clip.gif"), frames[0], fps=pipe.fps)
    with Image.open(path) as gif:
        assert gif.n_frames == CLIP[0] and gif.size == (CLIP[2], CLIP[1])


def test_bad_prompts_and_outputs(pipe, base_run, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        pipe.generate(["  "])
    with pytest.warns(UserWarning, match="truncating"):
        frames = pipe.generate([" and ".join(PROMPTS * 3)], **POSTERIOR)
    assert frames.shape == (1, *CLIP)
    with pytest.raises(SystemExit):
        generate.main([f"--workdir={base_run}", "--prompt=", f"--output={tmp_path / 'x.mp4'}"])
    with pytest.raises(SystemExit):
        generate.main(
            [
                f"--workdir={base_run}",
                "--prompt=a red circle moves left",
                f"--output={tmp_path / 'x.avi'}",
            ]
        )
    with pytest.raises(ValueError, match=r"uint8 frames \(T, H, W, 3\)"):
        pipelines.save_video(str(tmp_path / "x.npy"), np.zeros(CLIP, np.float32))
    with pytest.raises(FileNotFoundError, match="no t2v checkpoint"):
        pipelines.TextToVideo.from_workdir(str(tmp_path))


def test_text_usage_probe_masks_object_tokens_per_latent_frame():
    from tools import text_usage_probe

    masks = np.zeros((1, 2, 9, 64, 64), np.uint8)  # (B, objects, T, H, W)
    masks[0, 1, 6, 20:24, 40:44] = 1  # frame 6 only: latent frame 2 (frames 5-8)
    hole = text_usage_probe.object_tokens(masks, (3, 8, 8), temporal=4)
    assert hole.shape == (1, 3, 8, 8) and not hole[0, :2].any()
    # Token (2, 5) holds the object; dilation adds its 8 neighbours.
    np.testing.assert_array_equal(np.argwhere(hole[0, 2]).min(0), [1, 4])
    np.testing.assert_array_equal(np.argwhere(hole[0, 2]).max(0), [3, 6])


def test_text_usage_probe_second_hole_keeps_the_first_object():
    from tools import text_usage_probe

    masks = np.zeros((1, 2, 9, 64, 64), np.uint8)
    masks[0, 0, 0, 0:8, 0:8] = 1  # first object: token (0, 0, 0)
    masks[0, 1, 0, 8:16, 0:8] = 1  # second: token (0, 1, 0), next to the first
    hole = text_usage_probe.hole_tokens(masks, (3, 8, 8), 4, "second")
    # The second's token and its neighbours, less the first object's token.
    assert hole[0, 0, 1, 0] and hole[0, 0, 2, 1] and not hole[0, 0, 0, 0]
    assert hole[0, 0, 0, 1]  # a neighbour of both: only background there, so filled
    assert not hole[0, 1:].any()
    both = text_usage_probe.hole_tokens(masks, (3, 8, 8), 4, "objects")
    assert both[0, 0, 0, 0] and (both | hole).sum() == both.sum()
    with pytest.raises(ValueError, match="hole='first'"):
        text_usage_probe.hole_tokens(masks, (3, 8, 8), 4, "first")


def test_text_usage_probe_scores_true_and_shuffled_captions(base_run):
    from tools import text_usage_probe

    result = text_usage_probe.probe(base_run, num_clips=2, steps=2)
    assert 0.0 < result["object_token_fraction"] < 1.0
    # The hole is drawn as the run's eval draws: its guidance, temperatures and order.
    ev = pipelines.TextToVideo.from_workdir(base_run).config.eval
    assert result["sampler"]["steps"] == 2
    assert result["sampler"]["cfg"] == ev.cfg_scale
    assert result["sampler"]["temperature"] == ev.temperature
    assert result["sampler"]["choice_temperature"] == ev.choice_temperature
    for name in ("true", "shuffled"):
        assert 0.0 <= result[name]["caption_color"] <= 1.0
    second = text_usage_probe.probe(base_run, num_clips=8, steps=2, hole="second")
    assert second["hole"] == "second" and 0 < second["num_clips"] < 8  # two-object clips
    assert 0.0 <= second["true"]["second_color"] <= 1.0
    assert sum(second["true"]["second_drawn"].values()) == pytest.approx(1.0)


def test_text_usage_probe_reads_whose_colour_fills_the_hole():
    from motionaura_jax.data import config as data_config
    from motionaura_jax.data import oracle, shapes
    from tools import text_usage_probe

    source = shapes.ShapesSource(data_config.shapes_config())
    clip = next(c for c in map(source.__getitem__, range(50)) if c["num_objects"] == 2)
    vocab = oracle.CaptionTally(data_config.shapes_config()).vocab
    video, hole = clip["video"], clip["masks"][1]
    assert text_usage_probe.hole_color(video, hole, clip["caption"], vocab) == "second"
    swapped = " and ".join(reversed(clip["caption"].split(" and ")))
    assert text_usage_probe.hole_color(video, hole, swapped, vocab) == "first"
    # The object painted over with its rows' background (with its anti-aliased rim).
    rim = ndimage.binary_dilation(hole > 0, np.ones((1, 5, 5), bool))[..., None]
    empty = np.where(rim, video[:, :, :1], video)
    assert text_usage_probe.hole_color(empty, hole, clip["caption"], vocab) == "none"


def test_binding_probe_caption_variants_and_colour_table():
    from tools import binding_probe

    colours = ("red", "green", "blue")
    caption = "a red circle moves left and a blue square moves up"
    variants = binding_probe.caption_variants(caption, colours, hidden=1)
    assert variants["swapped"] == "a blue circle moves left and a red square moves up"
    assert variants["recoloured"] == "a red circle moves left and a green square moves up"
    assert binding_probe.caption_variants(caption, colours, 0)["recoloured"].startswith("a green")
    with pytest.raises(ValueError, match="fewer than two colours"):
        binding_probe.caption_variants("a red circle moves left", colours, 0)
    # The articles follow the colours, as in the data's own captions.
    orange = "a red circle moves left and an orange square moves up"
    variants = binding_probe.caption_variants(orange, ("orange", "red", "green"), hidden=0)
    assert variants["swapped"] == "an orange circle moves left and a red square moves up"
    assert variants["recoloured"] == "a green circle moves left and an orange square moves up"
    # Two clips on a 1 x 1 x 3 grid: ids 0 background, 1 on the red object alone, 2 where
    # both objects meet (counted for neither), 3 on the blue object alone.
    ids = np.array([[[[0, 1, 2]]], [[[3, 0, 0]]]])
    cells = np.zeros((2, 2, 1, 1, 3), bool)
    cells[0, 0, 0, 0, 1:] = True
    cells[0, 1, 0, 0, 2] = True
    cells[1, 0, 0, 0, 0] = True
    table = binding_probe.colour_table(
        ids, cells, [caption, "a blue star moves down"], colours, vocab_size=5
    )
    np.testing.assert_allclose(table[0], [0, 0, 0, 1])
    np.testing.assert_allclose(table[1], [1, 0, 0, 0])
    np.testing.assert_allclose(table[2], 0)  # both objects touch it
    np.testing.assert_allclose(table[3], [0, 0, 1, 0])
    np.testing.assert_allclose(table[4], 0)  # never seen


def test_binding_probe_scores_the_hidden_object_under_each_caption(base_run):
    from tools import binding_probe

    result = binding_probe.probe(base_run)
    assert 0 < result["num_clips"] < 8  # the two-object clips of base_run's 8-clip cache
    for hidden in ("object0", "object1"):
        nll, mass = result[hidden]["nll"], result[hidden]["colour_mass"]
        assert set(nll) == {"true", "swapped", "recoloured"}
        assert all(np.isfinite(v) and v > 0 for v in nll.values())
        assert 0.0 <= sum(mass.values()) <= 1.0 + 1e-6
