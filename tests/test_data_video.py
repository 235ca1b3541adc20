"""Real-video path: files -> ArrayRecord shards -> Grain source, and the TFDS wrapper."""

import json
import os

import numpy as np
import pytest

from motionaura_jax.data import arrayrecord, pipeline, video_io
from motionaura_jax.data import config as config_lib
from motionaura_jax.data.tfds_source import TfdsVideoSource


def _ramp_video(frames, height, width, seed):
    """A smooth moving colour ramp (compresses well, so decoding stays close)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.random.default_rng(seed).integers(0, 255, 3)
    clip = [(base + 2 * x[..., None] + 3 * y[..., None] + 8 * t) % 256 for t in range(frames)]
    return np.stack(clip).astype(np.uint8)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rows = []
    for i, frames in enumerate([12, 10, 7]):  # the last is too short for 9-frame clips
        video_io.write_video(str(root / f"v{i}.mp4"), _ramp_video(frames, 40, 56, i), fps=10 + i)
        rows.append({"file": f"v{i}.mp4", "caption": f"clip number {i}"})
    good = (root / "v0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "garbage.mp4").write_bytes(os.urandom(3000))
    rows += [
        {"file": "truncated.mp4", "caption": "cut"},
        {"file": "garbage.mp4", "caption": "x"},
        {"file": "absent.mp4", "caption": "gone"},
    ]
    with open(root / "captions.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(root / "captions.csv", "w") as f:
        f.write("file,caption\n" + "".join(f'{r["file"]},"{r["caption"]}"\n' for r in rows))
    return root


@pytest.mark.parametrize("table, encoding", [("captions.jsonl", "raw"), ("captions.csv", "jpeg")])
def test_round_trip_skips_and_counts_bad_videos(video_folder, tmp_path, table, encoding):
    stats = arrayrecord.convert_videos(
        str(video_folder),
        str(video_folder / table),
        str(tmp_path / "shards" / "train"),
        frames=9,
        height=32,
        width=32,
        num_shards=2,
        encoding=encoding,
    )
    assert (stats["clips"], stats["corrupt"], stats["too_short"], stats["missing"]) == (2, 2, 1, 1)
    source = arrayrecord.ArrayRecordVideoSource(str(tmp_path / "shards" / "train-*"))
    assert len(source) == 2
    records = sorted((source[i] for i in range(2)), key=lambda r: r["caption"])
    assert [r["caption"] for r in records] == ["clip number 0", "clip number 1"]
    assert [float(r["fps"]) for r in records] == [10.0, 11.0]
    for i, rec in enumerate(records):
        assert rec["video"].shape == (9, 32, 32, 3) and rec["video"].dtype == np.float32
        assert set(rec) == {"video", "caption", "fps", "index"}
        # Same resize + crop of the original frames, up to codec loss.
        original = _ramp_video(12 - 2 * i, 40, 56, i)[:9]
        expected = np.stack([video_io.resize_center_crop(f, 32, 32) for f in original])
        assert np.abs(rec["video"] - video_io.to_model_range(expected)).mean() < 0.12


def test_arrayrecord_pipeline_and_errors(video_folder, tmp_path):
    arrayrecord.convert_videos(
        str(video_folder),
        str(video_folder / "captions.jsonl"),
        str(tmp_path / "a"),
        frames=9,
        height=32,
        width=32,
        clips_per_video=1,
    )
    cfg = config_lib.arrayrecord_config(paths=[str(tmp_path / "a-*")])
    cfg.frames, cfg.height, cfg.width = 5, 32, 32  # clips are cut to the first 5 frames
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=2, seed=0, process_index=0, process_count=1
    )
    batch = next(it)
    assert batch["video"].shape == (2, 5, 32, 32, 3) and batch["caption"].dtype == object
    cfg.width = 48
    with pytest.raises(ValueError, match="data.width=48 but the shards store 32"):
        next(
            pipeline.make_iterator(
                cfg, split="train", global_batch_size=2, seed=0, process_index=0, process_count=1
            )
        )
    with pytest.raises(ValueError, match="no ArrayRecord shards"):
        arrayrecord.ArrayRecordVideoSource([str(tmp_path / "nothing-*")])


def test_caption_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.mp4,hello\n")
    with pytest.raises(ValueError, match="must name 'file' and 'caption'"):
        arrayrecord.read_captions(str(bad))
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        arrayrecord.read_captions(str(tmp_path / "captions.txt"))


def test_tfds_wrapper_maps_features_to_schema():
    cfg = config_lib.tfds_config("fake_builder")
    cfg.caption_key = "text"
    examples = [
        {"video": _ramp_video(11, 24, 40, 0), "text": b"a cat", "fps": 25.0},
        {"video": _ramp_video(11, 24, 40, 1).astype(np.float32) / 255.0, "text": "a dog"},
    ]
    source = TfdsVideoSource(
        cfg, "train", {"frames": 9, "height": 16, "width": 16}, source=examples
    )
    first, second = source[0], source[1]
    assert first["video"].shape == (9, 16, 16, 3) and first["caption"] == "a cat"
    assert float(first["fps"]) == 25.0 and float(second["fps"]) == cfg.fps
    # Float [0, 1] features land on the same [-1, 1] values as their uint8 originals.
    uint8_twin = TfdsVideoSource(
        cfg,
        "train",
        {"frames": 9, "height": 16, "width": 16},
        source=[{"video": _ramp_video(11, 24, 40, 1)}],
    )[0]
    np.testing.assert_allclose(second["video"], uint8_twin["video"], atol=1e-6)
    assert "caption" not in uint8_twin  # missing fields stay absent
    too_long = TfdsVideoSource(
        cfg, "train", {"frames": 13, "height": 16, "width": 16}, source=examples
    )
    with pytest.raises(ValueError, match="fewer than data.frames=13"):
        too_long[0]


def test_importing_data_does_not_import_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, motionaura_jax.data; print('tensorflow' in sys.modules, 'av' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
