"""`inpaint.metrics.score_inpainting`: what the scores read on known answers."""

import numpy as np

from configs.inpaint import get_config
from motionaura_jax.inpaint import data as inpaint_data
from motionaura_jax.inpaint.metrics import score_inpainting


def test_scores_read_the_true_clip_as_perfect_and_a_black_hole_as_the_wrong_colour():
    config = get_config("toy")
    examples = inpaint_data.eval_examples(config.data, config.inpaint, 6)
    videos = [e["video"] for e in examples]
    blank = [np.where(e["mask"][..., None], -1.0, e["video"]) for e in examples]
    # The denoiser "returns" the true clip; the tokenizer "reconstructs" a black hole (no
    # palette colour; its outline is the dilated object, so its shape may still read).
    scores = score_inpainting(videos, videos, blank, examples)
    assert scores["inpaint_shape"] == scores["inpaint_color"] == 1.0
    assert scores["reference_inpaint_color"] == 0.0
    # Outside the mask both are the input itself: the PSNR cap of 100 dB.
    assert scores["reference_psnr_outside_mask"] == scores["psnr_outside_mask"] == 100.0
    # And the other way round: the ceiling reads the true clip.
    swapped = score_inpainting(blank, blank, videos, examples)
    assert swapped["reference_inpaint_shape"] == swapped["reference_inpaint_color"] == 1.0
    assert swapped["inpaint_color"] == 0.0


def test_gap_median_is_per_clip_and_resists_one_bad_clip():
    config = get_config("toy")
    examples = inpaint_data.eval_examples(config.data, config.inpaint, 3)
    videos = [e["video"] for e in examples]
    # Uniform errors outside the mask: 0.02 in the reconstruction, 0.04 in the output
    # (6.02 dB worse) for one clip, 0.02 (no gap) for the other two.
    recon = [v + 0.02 for v in videos]
    raw = [videos[0] + 0.04, videos[1] + 0.02, videos[2] + 0.02]
    scores = score_inpainting(videos, raw, recon, examples)
    one = 20 * np.log10(2.0)  # PSNR drop of a doubled error
    np.testing.assert_allclose(scores["psnr_outside_gap_db"], one / 3, atol=1e-4)
    np.testing.assert_allclose(scores["psnr_outside_gap_db_median"], 0.0, atol=1e-4)
