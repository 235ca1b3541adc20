"""Inference pipelines (the API a Colab or a script uses): text -> video, sketch-guided
inpainting, and file writers.

    pipe = TextToVideo.from_workdir("runs/toy")          # DIR/t2v + DIR/tokenizer
    frames = pipe.generate(["a red circle moves left"], steps=10, cfg=3.0, seed=0)
    save_video("out.mp4", frames[0], fps=pipe.fps)        # also .gif and .npy

    inpainter = Inpainter.from_workdir("runs/toy")        # DIR/inpaint + its t2v base
    clip = inpainter.inpaint(video, mask, sketch, "a red object moves left", steps=10)

`generate` returns uint8 (B, T, H, W, 3): the sampler (MaskGIT re-masking or the
VQ-Diffusion-style posterior, D8) draws tokens with classifier-free guidance, and the
frozen stage-1 tokenizer decodes them. Sampler settings not given are the run's `eval` ones.
One compile per (batch, frames, steps, cfg, sampler, temperature).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from motionaura_jax.denoiser import sampling
from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.encoders.text import TextEncoder, make_text_encoder
from motionaura_jax.inpaint.pipeline import (
    Inpainter,
    prepare_mask,
    prepare_video,
    read_image_file,
    read_mask_file,
    read_video_file,
)
from motionaura_jax.train import t2v, t2v_data

PyTree = Any
VIDEO_SUFFIXES = (".mp4", ".gif", ".npy")

__all__ = [
    "VIDEO_SUFFIXES",
    "add_sampling_args",
    "Inpainter",
    "TextToVideo",
    "prepare_mask",
    "prepare_video",
    "read_image_file",
    "read_mask_file",
    "read_video_file",
    "save_gif",
    "save_mp4",
    "save_npy",
    "save_video",
    "to_uint8",
]


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 in [0, 255] (any shape)."""
    return np.round((np.clip(np.asarray(video, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
        np.uint8
    )


class TextToVideo:
    """Text -> video with a trained `t2v` denoiser and its frozen tokenizer.

    Attributes:
      denoiser: the `SpectralTransformer`; params: its parameters.
      tokenizer: the `t2v_data.FrozenTokenizer` that decodes the tokens.
      text: the frozen `TextEncoder` (the one the denoiser was trained with).
      config: the t2v config stored with the checkpoint.
    """

    def __init__(
        self,
        denoiser: SpectralTransformer,
        params: PyTree,
        tokenizer: t2v_data.FrozenTokenizer,
        text: TextEncoder,
        config: ml_collections.ConfigDict,
    ):
        self.denoiser, self.params = denoiser, jax.device_put(params)
        self.tokenizer, self.text, self.config = tokenizer, text, config
        self._tokenizer_params = jax.device_put(tokenizer.params)  # moved once, not per call
        self._compiled: dict[tuple, Any] = {}

    @classmethod
    def from_workdir(
        cls, workdir: str, *, step: int | None = None, tokenizer_dir: str | None = None
    ) -> TextToVideo:
        """Loads `workdir/t2v` (latest finished step, or `step`) and its tokenizer.

        The tokenizer comes from `tokenizer_dir`, else the folder the t2v config names,
        else `workdir/tokenizer`.
        """
        return cls.from_folders(
            os.path.join(workdir, "t2v"), step=step, tokenizer_dir=tokenizer_dir, workdir=workdir
        )

    @classmethod
    def from_folders(
        cls,
        t2v_folder: str,
        *,
        step: int | None = None,
        tokenizer_dir: str | None = None,
        workdir: str | None = None,
    ) -> TextToVideo:
        """Loads a t2v stage folder (or its export) and a tokenizer stage folder (or export)."""
        exported = os.path.isfile(os.path.join(t2v_folder, "config.json"))
        if not exported and not os.path.isdir(os.path.join(t2v_folder, "checkpoints")):
            raise FileNotFoundError(
                f"no t2v checkpoint in {t2v_folder!r}; train one with python launch/train.py "
                "--config=configs/t2v.py:toy --workdir=<workdir>, then pass that workdir"
            )
        params, config, _ = t2v_data.load_stage_params(t2v_folder, step)
        if config.get("stage") != "t2v":
            raise ValueError(f"{t2v_folder!r} holds a {config.get('stage')!r} checkpoint, not t2v")
        if tokenizer_dir is None:
            tokenizer_dir = t2v.tokenizer_dir(
                config, workdir or os.path.dirname(os.path.abspath(t2v_folder))
            )
        tokenizer = t2v.load_stage_tokenizer(config, t2v_folder, tokenizer_dir)
        text = make_text_encoder(config.text)
        denoiser = t2v.build_denoiser(config.model, tokenizer, text.dim)
        return cls(denoiser, jax.tree.map(np.asarray, params), tokenizer, text, config)

    @property
    def fps(self) -> float:
        """Frames per second of the training clips (for writers)."""
        return float(self.config.data.get("fps", 8.0))

    @property
    def default_cfg(self) -> float:
        return float(self.config.eval.cfg_scale)

    def _generate_fn(
        self,
        batch: int,
        num_frames: int,
        steps: int,
        cfg: float | None,
        sampler: str,
        temperature: float,
    ):
        grid = self.tokenizer.token_grid(
            num_frames, self.config.data.height, self.config.data.width
        )
        key = (batch, grid, steps, cfg, sampler, temperature)
        if key not in self._compiled:
            self._compiled[key] = t2v.make_generate_fn(
                self.denoiser,
                self.tokenizer,
                (batch, *grid),
                steps=steps,
                cfg_scale=cfg,
                sampler=sampler,
                sampler_kwargs=sampling.sampler_kwargs(self.config.eval, sampler, temperature),
            )
        return self._compiled[key]

    def generate(
        self,
        prompts: Sequence[str] | str,
        *,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 0,
        num_frames: int | None = None,
        sampler: str | None = None,
        temperature: float | None = None,
        return_tokens: bool = False,
    ):
        """Generates one clip per prompt.

        Args:
          prompts: captions (a single string is one prompt). Empty prompts are an error;
            overlong ones are truncated with a warning or refused, as the text encoder's
            `on_overlong` says.
          steps: sampler steps (10 in the paper, D8).
          cfg: guidance scale s in `l_u + s (l_c - l_u)`; a negative value runs the
            conditional model alone.
          seed: the whole batch is a pure function of (prompts, seed, settings).
          num_frames: 1 + 4k frames (default: the training clips' length).
          sampler: 'maskgit' | 'posterior'.
          temperature: of the token distribution (1 = the model's).
          steps, cfg, sampler and temperature default to the run's `eval` settings (what
          its eval.json scored; `sampling.run_settings`).
        Returns:
          uint8 (B, T, H, W, 3) frames (and the (B, n, h, w) tokens if `return_tokens`).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts given; pass at least one caption")
        steps, cfg, sampler, temperature = sampling.run_settings(
            self.config.eval, steps=steps, cfg=cfg, sampler=sampler, temperature=temperature
        )
        num_frames = int(num_frames or self.config.data.frames)
        text_emb, text_mask = self.text.embed(prompts)  # raises on empty captions
        fps = np.full((len(prompts),), self.fps, np.float32)
        fn = self._generate_fn(len(prompts), num_frames, steps, cfg, sampler, temperature)
        tokens, video = fn(
            self.params, self._tokenizer_params, text_emb, text_mask, fps, jax.random.PRNGKey(seed)
        )
        frames = to_uint8(np.asarray(video))
        return (frames, np.asarray(tokens)) if return_tokens else frames


def save_npy(path: str, frames_thw3: np.ndarray) -> str:
    """Writes uint8 (T, H, W, 3) frames as a `.npy` array; returns the path."""
    np.save(path, _check_frames(frames_thw3))
    return path


def save_gif(path: str, frames_thw3: np.ndarray, fps: float = 8.0) -> str:
    """Writes uint8 (T, H, W, 3) frames as a looping GIF; returns the path."""
    from PIL import Image

    frames = [Image.fromarray(f) for f in _check_frames(frames_thw3)]
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        loop=0,
        duration=max(int(round(1000 / fps)), 20),
    )
    return path


def save_mp4(path: str, frames_thw3: np.ndarray, fps: float = 8.0) -> str:
    """Writes uint8 (T, H, W, 3) frames as an H.264 (else MPEG-4) mp4 with PyAV."""
    import av

    from motionaura_jax.data.video_io import write_video

    frames = _check_frames(frames_thw3)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sides
        frames = np.pad(
            frames,
            ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)),
            mode="edge",
        )
    write_video(path, frames, fps=fps, codec=codec)
    return path


def save_video(path: str, frames_thw3: np.ndarray, fps: float = 8.0) -> str:
    """Writes frames by the path's suffix: `.mp4`, `.gif` or `.npy`."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".mp4":
        return save_mp4(path, frames_thw3, fps)
    if suffix == ".gif":
        return save_gif(path, frames_thw3, fps)
    if suffix == ".npy":
        return save_npy(path, frames_thw3)
    raise ValueError(f"cannot write {path!r}: use a name ending in one of {VIDEO_SUFFIXES}")


def _check_frames(frames_thw3: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames_thw3)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}; pass one "
            "clip of TextToVideo.generate's output, or convert with pipelines.to_uint8"
        )
    return frames


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The sampler flags `launch/generate.py` and `launch/inpaint.py` share (one place, so
    the two command lines cannot drift apart)."""
    parser.add_argument("--output", required=True, help="output file: .mp4, .gif or .npy")
    # Sampler settings default to the run's eval ones: what its eval.json scored.
    parser.add_argument("--steps", type=int, default=None, help="default: the run's eval.steps")
    parser.add_argument(
        "--cfg", type=float, default=None, help="text guidance scale (<0: none; default: eval's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=None, help="1 + 4k frames")
    parser.add_argument("--sampler", default=None, choices=list(sampling.SAMPLERS))
    parser.add_argument("--temperature", type=float, default=None, help="token temperature")
