"""The main job: the three stages in one workdir, then samples and `workdir/report.md`.

    from motionaura_jax import main_job
    main_job.run("runs/default", minutes=30)              # what launch/main.py does
    main_job.run("runs/x", overrides=["t2v.train.num_steps=100"], steps=("t2v", "report"))

Stages run in order (`tokenizer`, `t2v`, `inpaint`), each from its config
(`configs/<stage>.py:toy` unless `specs` names another) through `loop.train`, which
resumes from the stage's latest checkpoint: after Ctrl-C / SIGTERM, run the same command
again. Overrides are `stage.key=value` (`t2v.model.width=32`); the part after the stage
name is a `config.load_config` override.

Skipping: when `loop.train` returns, the job writes `<workdir>/<stage>/main_job.json`
(the config it trained with, the job's `minutes` and the step it stopped at). A later
run skips the stage when that record holds the same config and `eval.json` the same
step: the stage either finished (`eval.json` says `finished: true`) or ran out of time
(its `train.max_seconds` cap or its share of the job's budget) and this run's budget is
no larger (`minutes=0`, none, is the largest; a record without `minutes` predates the
budget and counts as 0). Raise the cap, or the budget, to train on: the stage resumes
from its checkpoint. A field the record lacks (added by a code upgrade since) counts as
unchanged where the run leaves it off (see `_same_config`). A stage whose
config changed logs the changed fields (`config_changes`) and resumes from its
checkpoint; when the change alters the model's shape, the checkpoint cannot fit and the
job exits naming them. Retraining an earlier stage does not retrain later ones: for a
changed tokenizer use a new workdir.

Time budget: with `minutes > 0` (launch/main.py: `--minutes`, 30 by default, the issue's
target for the whole job) every stage trains for at most its share of the minutes left
when it starts: `stage_budget`. The shares are meant to be about what the toy stages
need on the usual 2-core CPU (estimated from step rates, not timed there); on a slower
one the stages stop earlier than their own `train.max_seconds` caps would, so the whole
job still ends near the budget. Each run of the command gets the whole budget again.

Overall ETA: each progress line ends in `| overall 12m03s left` = the running stage's
ETA (the loop's: the sooner of its step rate and its budget) + the `train.max_seconds`
of every stage still to run, at most the job's budget left. A budget is an upper bound
for a stage that reaches `num_steps` sooner, and covers training steps only (token
caches and evaluations come on top); a later stage without a budget makes the estimate
`>= ...`.

After training, `generate_samples` draws text-to-video and inpainting samples with the
inference pipelines and `write_run_report` assembles `report.md`: metrics against their
targets, training curves, contact sheets and GIFs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from motionaura_jax import config as config_lib
from motionaura_jax import report

STAGES = config_lib.STAGES
STEPS = (*STAGES, "report")
CONFIG_DIR = config_lib.CONFIG_DIR
RECORD = "main_job.json"
SAMPLES = "samples"
MAX_GIFS = 4
# Share of the job's time budget left to what the stage budgets do not cover: token
# caches, evaluations, samples and the report. Session 20's main job (37 min 19 s on a
# slow machine) spent 3.9 min, 10.5%, outside the training loops.
BUDGET_OVERHEAD = 0.15
# A stage never gets less than this share of its weight in `stage_budget` (its cap), even
# past the deadline: a tiny budget would leave it untrained rather than the job shorter.
MIN_BUDGET_SHARE = 0.1

# Targets from the issues. Values are fractions (0.9 = 90%), as the stages write them.
TARGETS = {
    "tokenizer/psnr": ">= 30 dB",
    "t2v/caption_color": ">= 0.90",
    "t2v/caption_motion": ">= 0.90",
    "inpaint/inpaint_shape": ">= 0.80",
    "inpaint/inpaint_color": ">= 0.80",
    "inpaint/psnr_outside_gap_db": "<= 1 dB",
}
CURVE_KEYS = {
    "tokenizer": ("loss", "rec_loss", "mfi_accuracy", "codebook_usage"),
    "t2v": ("loss", "masked_accuracy", "lr"),
    "inpaint": ("loss", "masked_accuracy", "lr"),
}
METRIC_NOTES = """\
- tokenizer: `psnr` (dB) and `ssim` of reconstructed held-out clips, `codebook_usage` =
  share of the codebook used on them, `perplexity` of the code histogram; `oracle_color`
  / `_shape` / `_motion` = what the oracle reads in those reconstructions (the ceiling of
  the later stages' caption and sketch scores).
- t2v: `caption_<attribute>` = fraction of caption objects whose colour / shape / motion
  the `shapes` oracle reads in the clip generated for a held-out caption; `caption_count`
  = clips showing as many objects as their caption names; `caption_all` = clips with
  every attribute and the object count right; `caption_too_few` = clips showing fewer
  objects than named (one missing, or two merged), `caption_repeat_color` = clips drawing
  a captioned colour on more objects than the caption gives it (two-object captions drawn
  as two objects of one colour); `_1obj` / `_2obj` = the same over the captions that name
  one / two objects.
- inpaint: `inpaint_shape` / `inpaint_color` = clips whose hole holds an object of the
  sketched shape / captioned colour (`inpaint_found`: any object), and
  `reference_inpaint_shape` / `_color` the same reading of the tokenizer's reconstruction
  in the hole (their ceiling); `psnr_outside_mask` = PSNR outside the hole of the decoded
  clip, `reference_psnr_outside_mask` the same for the tokenizer's reconstruction (the
  ceiling), `psnr_outside_gap_db` their difference (`_median`: the median over clips of
  each clip's gap; a few clips with near-perfect reconstructions carry the mean);
  `inpaint_temporal_color` / `inpaint_temporal_shape` = the fraction of frames in which the
  object tracked in the hole keeps its majority colour / shape (`oracle.temporal_consistency`)."""


def toy_spec(stage: str, variant: str = "toy") -> str:
    """`configs/<stage>.py:<variant>` of this checkout."""
    return os.path.join(CONFIG_DIR, f"{stage}.py:{variant}")


def split_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """`['t2v.model.width=32', ...]` -> `{'tokenizer': [], 't2v': ['model.width=32'], ...}`."""
    by_stage: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for item in items:
        stage, dot, rest = item.partition(".")
        if stage not in by_stage or not dot:
            raise ValueError(
                f"override {item!r} must start with a stage name, one of {STAGES}; "
                "e.g. --set=t2v.train.num_steps=100"
            )
        by_stage[stage].append(rest)
    return by_stage


@dataclasses.dataclass
class Job:
    """One stage to train: `config` under `workdir/<config.stage>/`; `name` labels logs."""

    name: str
    config: ml_collections.ConfigDict
    workdir: str

    @property
    def folder(self) -> str:
        return os.path.join(os.path.abspath(self.workdir), self.config.stage)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_record(folder: str) -> dict | None:
    """A stage folder's RECORD: how the main job last trained it, or None."""
    return _read_json(os.path.join(folder, RECORD))


def _config_record(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config_lib.to_json(config))


def skip_reason(job: Job, minutes: float = 0.0) -> str | None:
    """Why `job` needs no training in a run with the job budget `minutes` (see the module
    docstring), or None."""
    result = _read_json(os.path.join(job.folder, "eval.json"))
    record = _read_record(job.folder)
    if not result or not record or not _same_config(record.get("config"), job.config):
        return None
    step = result.get("step")
    if record.get("step") != step:  # trained on since, e.g. with launch/train.py
        return None
    if result.get("finished"):
        return f"finished at step {step} with the same config"
    train = job.config.train
    ran_under = record.get("minutes", 0.0)
    if step == train.stop_at_step:
        why = f"train.stop_at_step={step}"
    elif ran_under and (minutes == 0 or minutes > ran_under):  # a larger budget: train on
        return None
    else:
        why = f"its time ran out: train.max_seconds={train.max_seconds:g}"
        why += f" or its share of --minutes={ran_under:g}" if ran_under else ""
    return (
        f"stopped at step {step} of {train.num_steps} ({why}) with the same config; pass "
        f"--set={job.config.stage}.train.max_seconds=<more> or a larger --minutes (0: "
        "none) to train on"
    )


def _same_config(recorded: dict | None, config: ml_collections.ConfigDict) -> bool:
    """Whether `config` trains as the config `recorded` for the stage's last training did.

    A field the record lacks (added by a code upgrade since) counts as unchanged where
    `config` leaves it off (False, 0, '' or None): options are added off, which keeps the
    old behaviour, and without this every new option would retrain every stage. One that
    the config turns on (the t2v toy's `model.text_tokens` since session 19) changes what
    the stage trains, so it trains again.
    """
    return bool(recorded) and not config_changes(recorded, config)


def config_changes(recorded: dict, config: ml_collections.ConfigDict) -> list[str]:
    """`['model.text_pool: (absent) -> True', ...]`: the fields in which `config` trains
    otherwise than the `recorded` one (a field the record lacks only when it is on)."""
    old, new = _flat_fields(recorded), _flat_fields(_config_record(config))
    changes = [f"{k}: {old[k]!r} -> (absent)" for k in sorted(old.keys() - new.keys())]
    for key, value in sorted(new.items()):
        if key in old and old[key] != value:
            changes.append(f"{key}: {old[key]!r} -> {value!r}")
        elif key not in old and value:
            changes.append(f"{key}: (absent) -> {value!r}")
    return changes


def _flat_fields(tree: dict, prefix: str = "") -> dict:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stage_budget(caps: Sequence[float], seconds_left: float) -> float:
    """Training seconds for the first of the stages still to run, whose `train.max_seconds`
    are `caps`, with `seconds_left` of the job's budget.

    The caps weigh the shares (a cap of 0, none, weighs as the mean of the others) of
    what is left after `BUDGET_OVERHEAD`; the stage gets its share, at most its cap and at
    least `MIN_BUDGET_SHARE` of its weight (so a job past its deadline still trains).
    """
    positive = [c for c in caps if c > 0]
    fill = sum(positive) / len(positive) if positive else 1.0
    weights = [c if c > 0 else fill for c in caps]
    share = max(seconds_left, 0.0) * (1 - BUDGET_OVERHEAD) * weights[0] / sum(weights)
    share = max(share, MIN_BUDGET_SHARE * weights[0])
    return min(share, caps[0]) if caps[0] > 0 else share


def overall_eta(
    later_budgets: Sequence[float], deadline: float | None = None
) -> Callable[[float], str]:
    """`progress_suffix` for `loop.train`: the stage's ETA plus the later stages' budgets,
    at most the time to `deadline` (a `time.monotonic()` value) when there is one."""
    from motionaura_jax.train.loop import format_seconds

    known = float(sum(b for b in later_budgets if b > 0))
    at_least = ">=" if any(b <= 0 for b in later_budgets) else ""

    def suffix(stage_eta: float) -> str:
        eta, prefix = stage_eta + known, at_least
        if deadline is not None and eta > (left := max(deadline - time.monotonic(), 0.0)):
            eta, prefix = left, ""  # the budget ends the job by then
        return f" | overall {prefix}{format_seconds(eta)} left"

    return suffix


def run_jobs(
    jobs: Sequence[Job], log: Callable[[str], None] = print, minutes: float = 0.0
) -> dict[str, str]:
    """Trains the jobs in order, skipping done ones; returns `{name: 'trained'|'skipped'}`.

    `minutes > 0`: the jobs share that time budget (`stage_budget`). Raises SystemExit
    when a stage is interrupted (its checkpoint is saved: run again).
    """
    from motionaura_jax.checkpoint import CheckpointMismatchError
    from motionaura_jax.train import loop

    if minutes < 0:
        raise ValueError(
            f"minutes={minutes:g}: give the job's time budget in minutes, or 0 for none"
        )
    reasons = {job.name: skip_reason(job, minutes) for job in jobs}
    pending = [job for job in jobs if not reasons[job.name]]
    status: dict[str, str] = {}
    retrained: set[str] = set()  # workdirs where an earlier stage trained in this call
    deadline = time.monotonic() + 60 * minutes if minutes > 0 else None
    for job in jobs:
        workdir = os.path.abspath(job.workdir)
        if reasons[job.name]:
            log(f"[{job.name}] skipped: {reasons[job.name]} ({job.folder}/eval.json)")
            if workdir in retrained:
                log(
                    f"[{job.name}] note: an earlier stage in {job.workdir} trained again in "
                    f"this run; {job.name} was trained on its previous weights (use a new "
                    "workdir to retrain every stage)"
                )
            status[job.name] = "skipped"
            continue
        index = pending.index(job)
        caps = [j.config.train.max_seconds for j in pending[index:]]
        budget = None
        if deadline is not None:
            budget = stage_budget(caps, deadline - time.monotonic())
            log(
                f"[{job.name}] {loop.format_seconds(budget)} of training in the job's "
                f"{minutes:g}-minute budget"
            )
        log(f"[{job.name}] training ({index + 1}/{len(pending)}) in {job.folder}")
        previous = (_read_record(job.folder) or {}).get("config")
        changes = config_changes(previous, job.config) if previous else []
        if changes:
            log(f"[{job.name}] config changed since its last training: " + "; ".join(changes))
        # Recorded before training: a stage may fill config fields at start-up
        # (inpaint's base_fingerprint), which a fresh config of the next run lacks.
        record = _config_record(job.config)
        try:
            result = loop.train(
                job.config,
                job.workdir,
                progress_suffix=overall_eta(caps[1:], deadline),
                max_seconds=budget,
            )
        except CheckpointMismatchError as e:
            raise SystemExit(
                f"[{job.name}] {e}\nTo go on with the trained model instead, --set the "
                "changed fields above back to their recorded values."
            ) from e
        if jax.process_index() == 0:
            with open(os.path.join(job.folder, RECORD), "w") as f:
                json.dump(
                    dict(config=record, step=result["step"], minutes=minutes),
                    f,
                    indent=2,
                    sort_keys=True,
                )
        retrained.add(workdir)
        status[job.name] = "trained"
    return status


def _join_frames(*clips_thw3: np.ndarray) -> np.ndarray:
    """Clips (T, H, W, 3) side by side, with a 2 px white gap: (T, H, W', 3)."""
    t, h = clips_thw3[0].shape[:2]
    gap = np.full((t, h, 2, 3), 255, np.uint8)
    parts = [p for c in clips_thw3 for p in (c, gap)][:-1]
    return np.concatenate(parts, axis=2)


def _use_run_eval_settings(pipe, workdir: str, stage: str) -> None:
    """Samples as the stage's `eval.json` was scored: the `eval` section this run's config
    gave the stage (its RECORD), which a rerun with new sampler settings re-evaluates
    under, rather than the one stored with the checkpoint when it was trained."""
    record = _read_record(os.path.join(workdir, stage))
    if record and "eval" in record.get("config", {}):
        pipe.config.eval.update(record["config"]["eval"])


def t2v_samples(workdir: str, out_dir: str, num: int, seed: int = 0) -> dict:
    """Generates one clip per held-out caption (the first `num` the t2v eval scores) with
    `TextToVideo` at the run's eval settings; writes a contact sheet and GIFs."""
    from motionaura_jax import pipelines
    from motionaura_jax.data import oracle, pipeline

    pipe = pipelines.TextToVideo.from_workdir(workdir)
    _use_run_eval_settings(pipe, workdir, "t2v")
    data = pipe.config.data
    batch = pipeline.eval_batches(data, num, num, split=pipe.config.eval.split)[0]
    captions = [str(c) for c in batch["caption"]]
    frames = pipe.generate(captions, seed=seed)  # the sampler settings of its eval
    vocab = dict(colors=tuple(data.colors), shapes=tuple(data.shapes), motions=tuple(data.motions))
    labels = []
    for clip, caption in zip(frames, captions):
        scored = oracle.score_caption(clip.astype(np.float32) / 127.5 - 1.0, caption, **vocab)
        missed = [k for k in ("color", "shape", "motion") if scored[k] not in (None, 1.0)]
        verdict = "ok" if scored["all"] else "missed " + ("/".join(missed) or "object count")
        labels.append(f"{caption}  [oracle: {verdict}]")
    sheet = report.contact_sheet(frames, labels, os.path.join(out_dir, "t2v_sheet.png"))
    gifs = [
        report.write_gif(frames[i], os.path.join(out_dir, f"t2v_{i}.gif"), fps=pipe.fps)
        for i in range(min(num, MAX_GIFS))
    ]
    return dict(sheet=sheet, gifs=gifs, labels=labels)


def inpaint_samples(workdir: str, out_dir: str, num: int, seed: int = 0) -> dict:
    """Inpaints the first `num` held-out examples of the inpaint eval with `Inpainter`;
    writes a contact sheet and GIFs of masked input | sketch | output."""
    from motionaura_jax import pipelines
    from motionaura_jax.data import oracle
    from motionaura_jax.inpaint import data as inpaint_data

    pipe = pipelines.Inpainter.from_workdir(workdir)
    _use_run_eval_settings(pipe, workdir, "inpaint")
    data = pipe.config.data
    split = pipe.config.eval.split
    examples = inpaint_data.eval_examples(data, pipe.config.inpaint, num, split=split)
    vocab = dict(colors=tuple(data.colors), shapes=tuple(data.shapes))
    rows, labels = [], []
    for i, ex in enumerate(examples):
        out = pipe.inpaint(ex["video"], ex["mask"], ex["sketch"], ex["caption"], seed=seed + i)
        out_float = out.astype(np.float32) / 127.5 - 1.0
        read = oracle.object_in_region(out_float, ex["mask"], **vocab)
        sketch = np.broadcast_to(pipelines.to_uint8(ex["sketch"]), out.shape)
        rows.append(_join_frames(pipelines.to_uint8(ex["masked_video"]), sketch, out))
        seen = f"{read['color']} {read['shape']}" if read["found"] else "nothing"
        labels.append(f"{ex['caption']} + sketch -> oracle reads {seen}")
    rows = np.stack(rows)
    sheet = report.contact_sheet(
        rows, labels, os.path.join(out_dir, "inpaint_sheet.png"), frames_per_row=3
    )
    gifs = [
        report.write_gif(rows[i], os.path.join(out_dir, f"inpaint_{i}.gif"), fps=pipe.fps)
        for i in range(min(num, MAX_GIFS))
    ]
    return dict(sheet=sheet, gifs=gifs, labels=labels)


def generate_samples(
    workdir: str, num: int = 8, seed: int = 0, log: Callable[[str], None] = print
) -> dict:
    """Samples of every trained generative stage under `workdir/samples/`.

    Returns `{'t2v': {...}, 'inpaint': {...}}` for the stages with an eval.json, with
    `sheet` and `gifs` paths relative to `workdir`. A stage's previous samples are reused
    when `samples/index.json` says they came from the same `eval.json` (the same model),
    `num` and `seed`, and their files exist.
    """
    out_dir = os.path.join(workdir, SAMPLES)
    os.makedirs(out_dir, exist_ok=True)
    index_path = os.path.join(out_dir, "index.json")
    index = _read_json(index_path) or {}
    samples = {}
    for stage, make in (("t2v", t2v_samples), ("inpaint", inpaint_samples)):
        result = report.read_eval(workdir, stage)
        if result is None:  # never trained to the end of a run
            continue
        stamp = dict(num=num, seed=seed, eval=result)
        old = index.get(stage)
        if old and old["stamp"] == stamp:
            files = [os.path.join(workdir, p) for p in (old["sheet"], *old["gifs"])]
            if all(os.path.isfile(p) for p in files):
                log(f"[samples] {stage}: up to date in {out_dir}")
                samples[stage] = old
                continue
        log(f"[samples] {stage}: {num} clips")
        made = make(workdir, out_dir, num, seed)
        made["sheet"] = os.path.relpath(made["sheet"], workdir)
        made["gifs"] = [os.path.relpath(p, workdir) for p in made["gifs"]]
        samples[stage] = dict(made, stamp=stamp)
    with open(index_path, "w") as f:
        json.dump(samples, f, indent=2)
    return samples


def write_run_report(
    workdir: str, samples: Mapping[str, dict], status: Mapping[str, str] | None = None
) -> str:
    """Writes `workdir/report.md` (metrics vs targets, curves, samples); returns its path."""
    status = dict(status or {})
    evals = {s: report.read_eval(workdir, s) for s in STAGES}
    lines = ["| stage | step | finished | this run |", "|---|---|---|---|"]
    for stage in STAGES:
        result = evals[stage] or {}
        lines.append(
            f"| {stage} | {result.get('step', '')} | {result.get('finished', '')} | "
            f"{status.get(stage, 'not run' if not result else 'earlier run')} |"
        )
    sections = ["## Stages\n\n" + "\n".join(lines)]
    sections.append("## Metrics\n\n" + report.metrics_table(evals, TARGETS) + "\n\n" + METRIC_NOTES)
    curves = []
    os.makedirs(os.path.join(workdir, "curves"), exist_ok=True)
    for stage in STAGES:
        rows = report.read_jsonl(os.path.join(workdir, stage, "metrics.jsonl"))
        png = os.path.join(workdir, "curves", f"{stage}.png")
        if report.plot_curves(rows, CURVE_KEYS[stage], f"{stage} training", png):
            curves.append(f"![{stage} training curves](curves/{stage}.png)")
    sections.append("## Training curves\n\n" + ("\n\n".join(curves) or "(no training logs)"))
    titles = {
        "t2v": "## Text to video\n\nOne clip per held-out caption (the oracle's verdict in "
        "brackets).",
        "inpaint": "## Sketch-guided inpainting\n\nEach row: masked input | sketch | output.",
    }
    for stage, title in titles.items():
        if stage not in samples:
            sections.append(f"{title}\n\n(the {stage} stage has not run)")
            continue
        s = samples[stage]
        gifs = " ".join(f"![{stage} sample {i}]({g})" for i, g in enumerate(s["gifs"]))
        sections.append(f"{title}\n\n![{stage} samples]({s['sheet']})\n\n{gifs}")
    return report.write_report(workdir, sections, title=f"MotionAura-JAX run `{workdir}`")


def stage_jobs(
    workdir: str,
    stages: Sequence[str] = STAGES,
    overrides: Sequence[str] = (),
    specs: Mapping[str, str] | None = None,
) -> list[Job]:
    """The main job's stages as `Job`s; every stage's config is built (so a bad override
    fails before any training), the ones in `stages` are returned."""
    by_stage = split_overrides(overrides)
    specs = {stage: toy_spec(stage) for stage in STAGES} | dict(specs or {})
    configs = {s: config_lib.load_config(specs[s], by_stage[s]) for s in STAGES}
    return [Job(s, configs[s], workdir) for s in STAGES if s in stages]


def run(
    workdir: str,
    *,
    steps: Sequence[str] = STEPS,
    overrides: Sequence[str] = (),
    specs: Mapping[str, str] | None = None,
    num_samples: int = 8,
    seed: int = 0,
    log: Callable[[str], None] = print,
    minutes: float = 0.0,
) -> dict:
    """Trains the stages in `steps`, then (with 'report') samples and `report.md`.

    `minutes > 0`: the stages share that time budget (see the module docstring).

    Returns `{'stages': {stage: 'trained'|'skipped'}, 'report': path or None}`.
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; use some of {STEPS}")
    jobs = stage_jobs(workdir, [s for s in STAGES if s in steps], overrides, specs)
    status = run_jobs(jobs, log, minutes)
    path = None
    if "report" in steps and jax.process_index() == 0:
        samples = generate_samples(workdir, num_samples, seed, log)
        path = write_run_report(workdir, samples, status)
        log(f"report: {path}")
    return dict(stages=status, report=path)


def comparison_table(rows: Mapping[str, Mapping | None], keys: Sequence[str]) -> str:
    """Markdown: one row per variant (its eval.json), one column per metric in `keys`."""
    lines = [
        "| variant | step | finished | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for name, result in rows.items():
        if result:
            cells = [str(result.get("step", "")), str(result.get("finished", ""))]
            cells += [
                f"{result[k]:.4g}" if isinstance(result.get(k), float | int) else "" for k in keys
            ]
        else:
            cells = ["(not run)"] + [""] * (len(keys) + 1)
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def write_comparison(
    path: str,
    sections: Sequence[tuple[str, Mapping[str, str], Sequence[str]]],
    title: str = "Ablations",
) -> str:
    """Writes `path` with one `comparison_table` per `(heading, {variant: stage folder},
    keys)`; each variant's numbers come from `<stage folder>/eval.json`."""
    parts = [f"# {title}"]
    for heading, folders, keys in sections:
        rows = {name: _read_json(os.path.join(f, "eval.json")) for name, f in folders.items()}
        parts.append(f"## {heading}\n\n{comparison_table(rows, keys)}")
    with open(path, "w") as f:
        f.write("\n\n".join(parts) + "\n")
    return path
