"""Trains one stage: `python launch/train.py --config=configs/tokenizer.py:toy --workdir=DIR`.

Dotted overrides follow the config: `--config.optimizer.lr=3e-4 --config.train.num_steps=50`.
Everything is written under `DIR/<stage>/`; the final evaluation goes to
`DIR/<stage>/eval.json`. Run the same command again to resume from the last checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from motionaura_jax import config as config_lib  # noqa: E402
from motionaura_jax.parallel.multihost import maybe_initialize_distributed  # noqa: E402

_CONFIG = flags.DEFINE_string("config", None, "Config file and variant, e.g. configs/t2v.py:toy.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; the stage writes DIR/<stage>/.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDES: list[str] = []


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` overrides (ours) from the flags absl parses."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            overrides.append(arg[len("--config.") :])
        else:
            rest.append(arg)
    return rest, overrides


def parse_flags(argv: list[str]) -> list[str]:
    rest, overrides = split_overrides(argv)
    _OVERRIDES.extend(overrides)
    return flags.FLAGS(rest)


def main(argv: list[str]) -> None:
    del argv
    maybe_initialize_distributed()
    try:
        config = config_lib.load_config(_CONFIG.value, _OVERRIDES)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    from motionaura_jax.train import loop  # after distributed init: it touches devices

    logging.info("config:\n%s", config)
    result = loop.train(config, _WORKDIR.value)
    print(
        f"[{result['stage']}] done at step {result['step']}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)),
        flush=True,
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
