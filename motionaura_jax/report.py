"""The run report a person reads: `workdir/report.md` with tables, curves and samples.

Inputs are what the stages leave behind: `workdir/<stage>/eval.json`,
`workdir/<stage>/metrics.jsonl`, plus sample clips (uint8 arrays) the caller generates.
Plots use matplotlib's non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

STAGES = ("tokenizer", "t2v", "inpaint")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval(workdir: str, stage: str) -> dict | None:
    path = os.path.join(workdir, stage, "eval.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def curve_rows(rows: Sequence[dict]) -> list[dict]:
    """The `train` rows worth a point on a curve: those averaging at least half as many
    steps as the fullest row. The row that a checkpoint or an early stop writes between two
    `log_every` steps may average one step, whose batch draws a spike at the curve's end.
    Rows written before `averaged_steps` existed count as full."""
    train = [r for r in rows if r.get("kind") == "train"]
    full = max((r.get("averaged_steps", 1) for r in train), default=1)
    return [r for r in train if 2 * r.get("averaged_steps", full) >= full]


def plot_curves(rows: Sequence[dict], keys: Sequence[str], title: str, out_png: str) -> str | None:
    """One panel per key of the `train` rows of a metrics.jsonl; returns the path or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = curve_rows(rows)
    keys = [k for k in keys if any(k in r for r in train)]
    if not train or not keys:
        return None
    fig, panels = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(panels[0], keys):
        steps = [r["step"] for r in train if key in r]
        values = [r[key] for r in train if key in r]
        ax.plot(steps, values, lw=1.2)
        if key == "loss" and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def contact_sheet(
    clips: np.ndarray,
    captions: Sequence[str],
    out_png: str,
    frames_per_row: int = 5,
    scale: int = 2,
) -> str:
    """A grid: one row per clip (evenly spaced frames), its caption above it.

    Args:
      clips: uint8 (N, T, H, W, 3).
      captions: N strings.
    """
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5:
        raise ValueError(f"clips must be uint8 (N, T, H, W, 3), got {clips.dtype} {clips.shape}")
    n, t, h, w, _ = clips.shape
    picks = np.linspace(0, t - 1, min(frames_per_row, t)).round().astype(int)
    caption_h, pad = 14, 4
    cell_w, cell_h = w * scale, h * scale
    sheet = Image.new(
        "RGB", (len(picks) * (cell_w + pad) + pad, n * (cell_h + caption_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        y = pad + i * (cell_h + caption_h + pad)
        draw.text((pad, y), captions[i][:100], fill=(0, 0, 0))
        for j, f in enumerate(picks):
            frame = Image.fromarray(clips[i, f]).resize((cell_w, cell_h), Image.NEAREST)
            sheet.paste(frame, (pad + j * (cell_w + pad), y + caption_h))
    sheet.save(out_png)
    return out_png


def write_gif(clip: np.ndarray, path: str, fps: float = 8.0, scale: int = 2) -> str:
    """uint8 (T, H, W, 3) -> looping GIF."""
    frames = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
        for f in np.asarray(clip)
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0, duration=int(1000 / fps))
    return path


def metrics_table(evals: Mapping[str, Mapping | None], targets: Mapping[str, str]) -> str:
    """Markdown table of every stage's eval.json numbers, with targets where known."""
    lines = ["| stage | metric | value | target |", "|---|---|---|---|"]
    for stage in STAGES:
        result = evals.get(stage)
        if not result:
            lines.append(f"| {stage} | (not run) | | |")
            continue
        for key, value in sorted(result.items()):
            if key in ("stage", "step", "finished") or not isinstance(value, (int, float)):
                continue
            lines.append(f"| {stage} | {key} | {value:.4g} | {targets.get(f'{stage}/{key}', '')} |")
    return "\n".join(lines)


def write_report(
    workdir: str, body_sections: Sequence[str], title: str = "MotionAura-JAX run"
) -> str:
    """Writes `workdir/report.md` from markdown sections; returns its path."""
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(f"# {title}\n\n" + "\n\n".join(body_sections) + "\n")
    return path
