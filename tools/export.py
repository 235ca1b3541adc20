"""Exports a stage checkpoint for inference: params only, cast, plus the config JSON.

  python tools/export.py --workdir=runs/default --stage=tokenizer --out=export/tok --dtype=bfloat16

The export loads without optimizer code: `motionaura_jax.checkpoint.load_exported(out)`.
A t2v stage's `vocabulary.npz` (the codes its denoiser predicts) is copied along.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from motionaura_jax import checkpoint as checkpoint_lib  # noqa: E402
from motionaura_jax.tokenizer import vocabulary  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (holds <stage>/).")
_STAGE = flags.DEFINE_string("stage", None, "Stage folder name: tokenizer, t2v or inpaint.")
_OUT = flags.DEFINE_string("out", None, "Export folder.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Cast.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.mark_flags_as_required(["workdir", "stage", "out"])


def main(argv):
    del argv
    from motionaura_jax.train import loop
    from motionaura_jax.train.step import eval_params

    ckpt_dir = os.path.join(_WORKDIR.value, _STAGE.value, "checkpoints")
    config, step = checkpoint_lib.read_config(ckpt_dir, _STEP.value)
    built = loop.setup(config, workdir=_WORKDIR.value)
    state = checkpoint_lib.StageCheckpointer(ckpt_dir, stage=config.stage).restore(
        step, built.abstract_state
    )
    out = checkpoint_lib.export_params(eval_params(state), config, _OUT.value, _DTYPE.value)
    # A t2v stage that predicts a subset of the codes needs its vocabulary to be loaded.
    side_file = os.path.join(_WORKDIR.value, _STAGE.value, vocabulary.FILE_NAME)
    if os.path.isfile(side_file):
        shutil.copy2(side_file, os.path.join(out, vocabulary.FILE_NAME))
    print(f"exported {_STAGE.value} step {step} as {_DTYPE.value} to {out}")


if __name__ == "__main__":
    app.run(main)
