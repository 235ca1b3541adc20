"""Toy ablation grid: tokenizer and t2v variants trained side by side, compared in a table.

  python tools/ablation_grid.py --root=runs/ablations --seconds=300
  python tools/ablation_grid.py --root=runs/ablations --steps=200 --only=t2v

Tokenizer variants (configs/tokenizer.py) train in ROOT/tokenizer-<name>/: the toy
(no masking), with the paper's masking + MFI, and with masking but no MFI. T2V variants
(configs/t2v.py) train in ROOT/t2v-<name>/: RoPE with the real-FFT mixing (the toy),
no FFT, Hartley, sinusoidal positions, Eq. 4's cross-attention; all of them read the
tokenizer of ROOT/tokenizer-toy and share one token cache, ROOT/t2v_tokens.npz.
`--steps` / `--seconds` set `train.num_steps` / `train.max_seconds` of every run (0 keeps
the config's); `--set=<stage>.<key>=<value>` adds overrides. Runs resume and are
skipped when done, as in the main job (`motionaura_jax.main_job.run_jobs`);
ROOT/ablations.md compares their eval.json numbers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from motionaura_jax import config as config_lib  # noqa: E402
from motionaura_jax import main_job  # noqa: E402

# name -> config variant
# The toy trains without masking (configs/tokenizer.py); the paper's masking + MFI, and
# masking without MFI, are its ablations here.
TOKENIZER_VARIANTS = {"toy": "toy", "masked": "toy,masked", "masked_no_mfi": "toy,masked,no_mfi"}
T2V_VARIANTS = {
    "rope": "toy",
    "no_fft": "no_fft",
    "hartley": "hartley",
    "sinusoidal": "sinusoidal",
    "paper_cross": "paper_cross",  # Eq. 4's spectral cross-attention
}
TOKENIZER_KEYS = ("psnr", "ssim", "codebook_usage", "perplexity")
T2V_KEYS = (
    "caption_color",
    "caption_shape",
    "caption_motion",
    "caption_mean",
    "caption_count",
    "caption_all",
    "caption_too_few",
    "caption_repeat_color",
)
BASE_TOKENIZER = "toy"  # the tokenizer every t2v variant is trained on

_ROOT = flags.DEFINE_string("root", "runs/ablations", "Folder holding one workdir per run.")
_ONLY = flags.DEFINE_list("only", "tokenizer,t2v", "Families to train: tokenizer, t2v.")
_STEPS = flags.DEFINE_integer("steps", 0, "train.num_steps of every run; 0 keeps the config's.")
_SECONDS = flags.DEFINE_float("seconds", 0.0, "train.max_seconds of every run; 0 keeps it.")
_SET = flags.DEFINE_multi_string("set", [], "Override <stage>.<key>=<value> for every run.")


def workdir(root: str, stage: str, name: str) -> str:
    return os.path.join(os.path.abspath(root), f"{stage}-{name}")


def grid_jobs(
    root: str,
    families: Sequence[str] = ("tokenizer", "t2v"),
    steps: int = 0,
    seconds: float = 0.0,
    overrides: Sequence[str] = (),
) -> list[main_job.Job]:
    """The grid's runs as `main_job.Job`s, tokenizers first."""
    by_stage = main_job.split_overrides(overrides)
    budget = [f"train.num_steps={steps}"] if steps else []
    budget += [f"train.max_seconds={float(seconds)}"] if seconds else []
    shared = [
        f"tokenizer_dir={os.path.join(workdir(root, 'tokenizer', BASE_TOKENIZER), 'tokenizer')}",
        f"tokens.cache_path={os.path.join(os.path.abspath(root), 't2v_tokens.npz')}",
    ]
    grid = (
        ("tokenizer", TOKENIZER_VARIANTS, budget + by_stage["tokenizer"]),
        ("t2v", T2V_VARIANTS, shared + budget + by_stage["t2v"]),
    )
    jobs = []
    for stage, variants, stage_overrides in grid:
        if stage not in families:
            continue
        for name, variant in variants.items():
            config = config_lib.load_config(main_job.toy_spec(stage, variant), stage_overrides)
            jobs.append(main_job.Job(f"{stage}-{name}", config, workdir(root, stage, name)))
    return jobs


def write_table(root: str) -> str:
    """ROOT/ablations.md from the runs' eval.json files (runs not trained show as such)."""
    sections = []
    for stage, variants, keys in (
        ("tokenizer", TOKENIZER_VARIANTS, TOKENIZER_KEYS),
        ("t2v", T2V_VARIANTS, T2V_KEYS),
    ):
        folders = {
            f"{name} (`{stage}.py:{variant}`)": os.path.join(workdir(root, stage, name), stage)
            for name, variant in variants.items()
        }
        sections.append((f"{stage} variants", folders, keys))
    return main_job.write_comparison(os.path.join(root, "ablations.md"), sections)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides go in --set=...")
    bad = [f for f in _ONLY.value if f not in ("tokenizer", "t2v")]
    if bad:
        raise app.UsageError(f"--only={','.join(bad)}: use tokenizer and/or t2v")
    try:
        jobs = grid_jobs(_ROOT.value, _ONLY.value, _STEPS.value, _SECONDS.value, _SET.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    main_job.run_jobs(jobs)
    print(write_table(_ROOT.value), flush=True)


if __name__ == "__main__":
    app.run(main)
