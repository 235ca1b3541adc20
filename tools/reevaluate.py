"""Re-runs a finished stage's evaluation with other sampler settings, without training.

  python tools/reevaluate.py --workdir=runs/default --stage=t2v \
      --set=eval.temperature=0.5 --set=eval.seed=1 [--step=N] [--output=scores.json]

Loads `<workdir>/<stage>`'s latest (or `--step`) checkpoint and saved config, applies the
`eval.*` overrides (steps, cfg_scale, temperature, sampler, seed, reference, ...) and
prints the scores as one JSON line: how the guidance and temperature defaults of the toy
configs were chosen. With no `--set` it reproduces the run's `eval.json`. Nothing is
trained and no checkpoint is touched; the stage is built as in training, so a deleted
train token cache is written again.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (holds <stage>/).")
_STAGE = flags.DEFINE_string("stage", None, "Stage folder name: tokenizer, t2v or inpaint.")
_SET = flags.DEFINE_multi_string("set", [], "An eval.* override, key=value; repeatable.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the scores to this JSON file.")
flags.mark_flags_as_required(["workdir", "stage"])


def main(argv):
    del argv
    from motionaura_jax.train import loop

    scores = loop.reevaluate(_WORKDIR.value, _STAGE.value, _SET.value, _STEP.value)
    line = json.dumps({"stage": _STAGE.value, "overrides": _SET.value, **scores})
    print(line)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
