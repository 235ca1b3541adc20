"""Report pieces: curves, contact sheets, GIFs and the metrics table."""

import json

import numpy as np
import pytest
from PIL import Image

from motionaura_jax import report


def test_contact_sheet_layout(tmp_path):
    clips = np.zeros((3, 9, 16, 16, 3), np.uint8)
    clips[1, :, :, :, 0] = 255  # second clip red
    path = report.contact_sheet(clips, ["a", "b", "c"], str(tmp_path / "s.png"), scale=2)
    image = np.asarray(Image.open(path))
    # 5 frames of 32 px + padding per row; 3 rows of 32 px + caption band.
    assert image.shape == (4 + 3 * (32 + 14 + 4), 4 + 5 * 36, 3)
    second_row_frame = image[4 + 50 + 14 + 5, 4 + 5]
    assert tuple(second_row_frame) == (255, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        report.contact_sheet(clips.astype(np.float32), ["a"] * 3, str(tmp_path / "x.png"))


def test_gif_has_every_frame(tmp_path):
    clip = (np.arange(5)[:, None, None, None] * 50 * np.ones((5, 8, 8, 3))).astype(np.uint8)
    path = report.write_gif(clip, str(tmp_path / "c.gif"))
    gif = Image.open(path)
    assert gif.n_frames == 5


def test_curves_leave_out_rows_that_average_few_steps():
    rows = [dict(step=s, kind="train", loss=1.0, averaged_steps=50) for s in (50, 100, 150)]
    rows += [dict(step=151, kind="train", loss=9.0, averaged_steps=1), dict(step=151, kind="eval")]
    assert [r["step"] for r in report.curve_rows(rows)] == [50, 100, 150]
    old = [dict(step=s, kind="train", loss=1.0) for s in (1, 2)]  # no averaged_steps
    assert [r["step"] for r in report.curve_rows(old)] == [1, 2]


def test_curves_and_table(tmp_path):
    rows = [dict(step=s, kind="train", loss=1.0 / s, lr=0.1) for s in range(1, 6)]
    rows.append(dict(step=5, kind="eval", psnr=30.0))
    (tmp_path / "tokenizer").mkdir()
    with open(tmp_path / "tokenizer" / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    loaded = report.read_jsonl(str(tmp_path / "tokenizer" / "metrics.jsonl"))
    assert report.plot_curves(loaded, ["loss", "lr", "absent"], "tok", str(tmp_path / "c.png"))
    assert Image.open(tmp_path / "c.png").size[0] == 8 * 90  # two panels, 4 in each
    assert report.plot_curves([], ["loss"], "none", str(tmp_path / "n.png")) is None
    table = report.metrics_table(
        {"tokenizer": {"stage": "tokenizer", "psnr": 31.25}}, {"tokenizer/psnr": ">= 30"}
    )
    assert "| tokenizer | psnr | 31.25 | >= 30 |" in table
    assert "| t2v | (not run) | | |" in table
