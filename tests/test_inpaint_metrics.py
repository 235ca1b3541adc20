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
