"""The main job: a tiny end-to-end run of every stage and the report, a second run that
skips what is done, and the ablation comparison table."""

import json
import os
import re
import time

import jax
import pytest

from motionaura_jax import config as config_lib
from motionaura_jax import main_job, pipelines
from tests.stage_fixtures import TINY_INPAINT, TINY_T2V

# The toy tokenizer's layout at width 8 with no blocks (the toy has none): one step.
TINY_TOKENIZER = [
    "model.stem_width=8",
    "model.widths=(8, 8, 8)",
    "model.decoder_widths=(8, 8, 8)",
    "eval.num_clips=2",
    "eval.batch_size=2",
    "train.num_steps=1",
    "train.batch_size=8",
    "train.async_checkpoint=False",
    "train.max_seconds=0.0",
]
OVERRIDES = [
    *(f"tokenizer.{o}" for o in TINY_TOKENIZER),
    *(f"t2v.{o}" for o in TINY_T2V),
    *(f"inpaint.{o}" for o in TINY_INPAINT),
]


def _checkpoint_files(workdir: str) -> dict[str, int]:
    found = {}
    for stage in main_job.STAGES:
        for folder, _, files in os.walk(os.path.join(workdir, stage, "checkpoints")):
            for name in files:
                path = os.path.join(folder, name)
                found[path] = os.stat(path).st_mtime_ns
    return found


def test_runs_every_stage_writes_the_report_then_skips(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    # RBG keys: the inits compile in seconds rather than tens of seconds (threefry).
    with jax.default_prng_impl("unsafe_rbg"):
        first = main_job.run(workdir, overrides=OVERRIDES, num_samples=2)
    assert first["stages"] == {s: "trained" for s in main_job.STAGES}
    out = capsys.readouterr().out
    assert re.search(r"\[t2v\] \|#+\| 100% step 2/2 .* \| overall \S+ left", out), out

    text = open(first["report"]).read()
    for stage, key in (
        ("tokenizer", "psnr"),
        ("t2v", "caption_color"),
        ("inpaint", "inpaint_temporal_color"),
    ):
        assert re.search(rf"\| {stage} \| {key} \| [0-9.e-]+ \|", text), (stage, key)
    assert "| tokenizer | psnr |" in text and ">= 30 dB |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for stage in main_job.STAGES:
        assert f"curves/{stage}.png" in images
    assert {"samples/t2v_sheet.png", "samples/inpaint_sheet.png"} <= set(images)
    assert sum(p.endswith(".gif") for p in images) == 4  # 2 samples x (t2v, inpaint)
    for path in images:
        assert os.path.getsize(os.path.join(workdir, path)) > 0, path

    # Same call again: every stage is done with the same config, nothing is rewritten.
    before = _checkpoint_files(workdir)
    assert len(before) > 10
    log = []
    second = main_job.run(workdir, overrides=OVERRIDES, num_samples=2, log=log.append)
    assert second["stages"] == {s: "skipped" for s in main_job.STAGES}
    for stage in main_job.STAGES:
        assert any(line.startswith(f"[{stage}] skipped: finished at step") for line in log), log
    assert "[samples] t2v: up to date" in " ".join(log)
    assert _checkpoint_files(workdir) == before
    assert "| t2v | 2 | True | skipped |" in open(second["report"]).read()

    # Samples follow the eval settings the run scored with (its record), not the ones
    # stored with the checkpoint: a rerun with a new guidance scale only re-evaluates.
    record_path = os.path.join(workdir, "t2v", main_job.RECORD)
    record = json.load(open(record_path))
    record["config"]["eval"]["cfg_scale"] = 7.0
    json.dump(record, open(record_path, "w"))
    pipe = pipelines.TextToVideo.from_workdir(workdir)
    assert pipe.default_cfg != 7.0
    main_job._use_run_eval_settings(pipe, workdir, "t2v")
    assert pipe.default_cfg == 7.0

    # A changed model shape cannot resume: the job names the changed fields and exits.
    log = []
    with pytest.raises(SystemExit, match=r"does not fit this model(.|\n)*--set the changed"):
        main_job.run(
            workdir,
            steps=("t2v",),
            overrides=[*OVERRIDES, "t2v.model.text_pool=True"],
            log=log.append,
        )
    assert "model.text_pool: False -> True" in " ".join(log), log


def test_changed_config_is_not_skipped(tmp_path):
    """A record of another config, or an eval.json of another step, means: train."""
    (job,) = main_job.stage_jobs(str(tmp_path), ["tokenizer"], ["tokenizer.train.num_steps=5"])
    os.makedirs(job.folder)
    with open(os.path.join(job.folder, "eval.json"), "w") as f:
        json.dump(dict(stage="tokenizer", step=5, finished=True, psnr=20.0), f)
    assert main_job.skip_reason(job) is None  # no record of how it was trained
    record = dict(config=json.loads(config_lib.to_json(job.config)), step=5)
    with open(os.path.join(job.folder, main_job.RECORD), "w") as f:
        json.dump(record, f)
    assert main_job.skip_reason(job).startswith("finished at step 5")
    (changed,) = main_job.stage_jobs(str(tmp_path), ["tokenizer"], ["tokenizer.train.num_steps=6"])
    assert main_job.skip_reason(changed) is None
    assert main_job.config_changes(record["config"], changed.config) == ["train.num_steps: 5 -> 6"]
    with open(os.path.join(job.folder, "eval.json"), "w") as f:  # stopped on its budget
        json.dump(dict(stage="tokenizer", step=5, finished=False), f)
    assert "time ran out" in main_job.skip_reason(job)
    # A record without a budget (or from before there was one) had its whole cap: a run
    # under a budget gives no more time.
    assert "time ran out" in main_job.skip_reason(job, minutes=30.0)

    # A record from before a code upgrade added a field: unchanged while the run leaves
    # the field off, changed when the run turns it on.
    del record["config"]["masking"]["frame"]
    with open(os.path.join(job.folder, main_job.RECORD), "w") as f:
        json.dump(record, f)
    assert not job.config.masking.frame and "time ran out" in main_job.skip_reason(job)
    (turned_on,) = main_job.stage_jobs(
        str(tmp_path),
        ["tokenizer"],
        ["tokenizer.train.num_steps=5", "tokenizer.masking.frame=True"],
    )
    assert main_job.skip_reason(turned_on) is None
    assert main_job.config_changes(record["config"], turned_on.config) == [
        "masking.frame: (absent) -> True"
    ]


def test_overall_eta_adds_later_budgets():
    assert main_job.overall_eta([600.0, 840.0])(63.0) == " | overall 25m03s left"
    # A job budget ends the job sooner: at most the time to its deadline.
    deadline = time.monotonic() + 100.0
    assert re.fullmatch(
        r" \| overall 1m(39|40)s left", main_job.overall_eta([600.0, 0.0], deadline)(63.0)
    )
    assert main_job.overall_eta([0.0], deadline)(1.0) == " | overall >=0m01s left"
    assert main_job.overall_eta([600.0, 0.0])(0.0) == " | overall >=10m00s left"
    assert main_job.overall_eta([])(float("inf")) == " | overall ? left"


def test_stage_budget_shares_the_time_left():
    caps = [600.0, 840.0, 420.0]  # the toy stages' train.max_seconds
    keep = 1 - main_job.BUDGET_OVERHEAD
    assert main_job.stage_budget(caps, 1800.0) == pytest.approx(1800 * keep * 600 / 1860)
    assert main_job.stage_budget(caps[1:], 1200.0) == pytest.approx(1200 * keep * 840 / 1260)
    assert main_job.stage_budget(caps, 1e6) == 600.0  # never more than the stage's cap
    assert main_job.stage_budget(caps, -5.0) == pytest.approx(60.0)  # past the deadline
    # A stage without a cap weighs as the mean of the others and is not capped.
    assert main_job.stage_budget([0.0, 600.0, 300.0], 1e4) == pytest.approx(1e4 * keep / 3)
    assert main_job.stage_budget([0.0], -5.0) > 0  # 0 would mean no limit to the loop


def test_job_budget_stops_a_stage_before_its_steps(tmp_path):
    """With `minutes`, a stage that would train longer stops on its share; a rerun skips
    it and says how to train on."""
    workdir = str(tmp_path / "run")
    overrides = [f"tokenizer.{o}" for o in TINY_TOKENIZER] + ["tokenizer.train.num_steps=100000"]
    jobs = main_job.stage_jobs(workdir, ["tokenizer"], overrides)
    log = []
    with jax.default_prng_impl("unsafe_rbg"):
        status = main_job.run_jobs(jobs, log.append, minutes=0.05)  # 3 s, 2.55 s to train
    assert status == {"tokenizer": "trained"}
    assert any(
        re.match(r"\[tokenizer\] 0m0\ds of training in the job's 0.05-minute", x) for x in log
    )
    result = json.load(open(os.path.join(jobs[0].folder, "eval.json")))
    assert not result["finished"] and result["step"] < 100000
    # The same budget or a smaller one: done. A larger one, or none: trains on.
    reason = main_job.skip_reason(jobs[0], minutes=0.05)
    assert "its share of --minutes=0.05" in reason and "a larger --minutes" in reason
    assert main_job.skip_reason(jobs[0], minutes=0.01) is not None
    assert main_job.skip_reason(jobs[0], minutes=0.0) is None
    assert main_job.skip_reason(jobs[0], minutes=60.0) is None
    with pytest.raises(ValueError, match="minutes=-1"):
        main_job.run_jobs(jobs, log.append, minutes=-1.0)


def test_bad_overrides_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="must start with a stage name"):
        main_job.stage_jobs(str(tmp_path), overrides=["model.width=32"])
    with pytest.raises(ValueError, match="Did you mean 'model'"):
        main_job.stage_jobs(str(tmp_path), overrides=["t2v.modle.width=32"])
    with pytest.raises(ValueError, match="unknown steps"):
        main_job.run(str(tmp_path), steps=["tokenizer", "sampels"])


def test_comparison_table_from_eval_files(tmp_path):
    """What tools/ablation_grid.py writes: one row per run folder's eval.json."""
    results = {
        "toy": dict(step=200, finished=True, psnr=24.5, ssim=0.71),
        "no_mfi": dict(step=150, finished=False, psnr=23.25, ssim=0.7),
        "no_fft": dict(step=300, finished=True, caption_color=0.875),
    }
    folders = {name: str(tmp_path / name / "stage") for name in (*results, "no_mask")}
    for name, result in results.items():
        os.makedirs(folders[name])
        with open(os.path.join(folders[name], "eval.json"), "w") as f:
            json.dump(dict(stage="x", **result), f)
    tokenizers = {k: folders[k] for k in ("toy", "no_mfi", "no_mask")}
    path = main_job.write_comparison(
        str(tmp_path / "ablations.md"),
        [
            ("tokenizer variants", tokenizers, ("psnr", "ssim", "codebook_usage")),
            ("t2v variants", {"no_fft": folders["no_fft"]}, ("caption_color",)),
        ],
    )
    text = open(path).read()
    assert "## tokenizer variants" in text and "## t2v variants" in text
    assert "| variant | step | finished | psnr | ssim | codebook_usage |" in text
    assert "| toy | 200 | True | 24.5 | 0.71 |  |" in text
    assert "| no_mfi | 150 | False | 23.25 | 0.7 |  |" in text
    assert "| no_mask | (not run) |  |  |  |  |" in text
    assert "| no_fft | 300 | True | 0.875 |" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {line.count("|") for line in rows[:5]} == {7}  # header, rule, 3 runs: aligned
