"""The main job: tokenizer, t2v and inpaint on the built-in `shapes` data, then a report.

  python launch/main.py --workdir=runs/default
  python launch/main.py --workdir=runs/default --only=t2v,report \\
      --set=t2v.train.max_seconds=1800 --minutes=0

Trains each stage from its toy config (`configs/<stage>.py:toy`) under DIR/<stage>/, then
writes samples and DIR/report.md (metrics against targets, training curves, contact
sheets, GIFs). `--set=<stage>.<key>=<value>` overrides one stage's config (repeatable).
Run the same command again after an interruption: stages resume from their last
checkpoint, and stages already done with the same config are skipped. `--minutes=30`
(the default) fits the training stages into 30 minutes on a slower machine than the
configs' caps assume; `--minutes=0` leaves only the caps.
See `motionaura_jax/main_job.py` for the skip rule and the overall ETA.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from motionaura_jax.parallel.multihost import maybe_initialize_distributed  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run folder; stage s writes DIR/s/.")
_ONLY = flags.DEFINE_list(
    "only", "tokenizer,t2v,inpaint,report", "Steps to run, in pipeline order."
)
_SET = flags.DEFINE_multi_string(
    "set", [], "Config override <stage>.<key>=<value>, e.g. t2v.train.num_steps=100."
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Clips per sample sheet.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples.")
_MINUTES = flags.DEFINE_float(
    "minutes",
    30.0,
    "Time budget of the whole job: each stage trains for at most its share of what is "
    "left, 15% kept for caches, evaluations and the report (main_job.stage_budget); 0: "
    "only each stage's own train.max_seconds.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides go in --set=...")
    maybe_initialize_distributed()
    from motionaura_jax import main_job  # after distributed init: it touches devices

    unknown = [s for s in _ONLY.value if s not in main_job.STEPS]
    if unknown:
        raise app.UsageError(f"--only={','.join(unknown)}: use some of {main_job.STEPS}")
    try:  # builds every stage's config: a bad --set fails here, before anything trains
        main_job.stage_jobs(_WORKDIR.value, main_job.STAGES, _SET.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    result = main_job.run(
        _WORKDIR.value,
        steps=_ONLY.value,
        overrides=_SET.value,
        num_samples=_NUM_SAMPLES.value,
        seed=_SEED.value,
        minutes=_MINUTES.value,
    )
    if result["stages"]:
        print("stages: " + ", ".join(f"{k} {v}" for k, v in result["stages"].items()), flush=True)


if __name__ == "__main__":
    app.run(main)
