"""Sketch-guided video inpainting for scripts and notebooks (Sec. 4; D10).

    pipe = Inpainter.from_workdir("runs/toy")                 # DIR/inpaint + its t2v base
    out = pipe.inpaint(video, mask, sketch, "a red object moves left", steps=10, seed=0)
    save_video("out.mp4", out, fps=pipe.fps)                  # motionaura_jax.pipelines

`video` is (T, H, W, 3) uint8 or float in [-1, 1]; `mask` (T, H, W) or (H, W) (one mask
for every frame), nonzero / > 0.5 where to inpaint; `sketch` any image of the object's
outline (dark on light). The result is uint8 (T, H, W, 3) with every pixel outside the
mask equal to the input's (`V (1 - m) + V_hat m`). Bad inputs raise ValueError naming the
value and the fix. `read_video_file` / `read_mask_file` / `read_image_file` read files.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax.denoiser import sampling
from motionaura_jax.inpaint import data as inpaint_data
from motionaura_jax.inpaint.sampling import make_inpaint_fn
from motionaura_jax.inpaint.sketch import prepare_sketch

PyTree = Any


def _to_uint8(video: np.ndarray) -> np.ndarray:
    return np.round((np.clip(np.asarray(video, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def prepare_video(video: Any, spatial_factor: int = 16, temporal_factor: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 or float in [-1, 1] -> float32 in [-1, 1], shape-checked."""
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"video must be (T, H, W, 3) RGB frames, got shape {arr.shape}; pass "
            "one clip, channels-last"
        )
    t, h, w, _ = arr.shape
    if (t - 1) % temporal_factor:
        use = 1 + temporal_factor * ((t - 1) // temporal_factor)
        raise ValueError(
            f"video has {t} frames; the causal tokenizer needs 1 + "
            f"{temporal_factor}k frames: use the first {use}"
        )
    if h % spatial_factor or w % spatial_factor:
        raise ValueError(
            f"video is {h}x{w}; height and width must be multiples of "
            f"{spatial_factor}: resize or crop it to "
            f"{h - h % spatial_factor}x{w - w % spatial_factor}"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 127.5 - 1.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -1.001 or arr.max() > 1.001:
        raise ValueError(
            "float video pixels must be finite and in [-1, 1]; pass uint8 frames "
            "or scale them with x / 127.5 - 1"
        )
    return np.clip(arr, -1.0, 1.0)


def prepare_mask(mask: Any, video_shape: tuple[int, ...]) -> np.ndarray:
    """(T, H, W), (H, W) or (T, H, W, C) mask -> uint8 (T, H, W) in {0, 1}, checked."""
    arr = np.asarray(mask)
    if arr.dtype == object or arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"mask must be (H, W), (T, H, W) or (T, H, W, C), got shape "
            f"{arr.shape}; pass a binary image or mask video (white = inpaint)"
        )
    rgb_image = arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] != video_shape[0]
    if arr.ndim == 4 or rgb_image:
        arr = arr[..., :3].mean(-1)  # RGB mask frames or an RGB mask image
    # uint8 masks are 0/255 images, or 0/1 arrays (as `shapes` records store them).
    scale = 255.0 if arr.dtype == np.uint8 and arr.max() > 1 else 1.0
    values = arr.astype(np.float32) / scale
    binary = values > 0.5
    t, h, w = video_shape[:3]
    if binary.shape[-2:] != (h, w):
        raise ValueError(
            f"mask is {binary.shape[-2]}x{binary.shape[-1]} but the video is "
            f"{h}x{w}; resize the mask to {h}x{w} (the same size as the video)"
        )
    if binary.ndim == 2:
        binary = np.broadcast_to(binary, (t, h, w))
    if binary.shape[0] != t:
        raise ValueError(
            f"mask has {binary.shape[0]} frames but the video has {t}; pass one "
            "mask per frame, or a single (H, W) mask for all frames"
        )
    if not binary.any():
        raise ValueError(
            "mask is empty (no pixel above 0.5): nothing to inpaint; mark the "
            "region to fill in white (255 / 1.0)"
        )
    if binary.all():
        raise ValueError(
            "mask covers every pixel of the video: nothing is left to inpaint "
            "from; mark only the object's region"
        )
    return binary.astype(np.uint8)


class Inpainter:
    """Inpainting with a trained `inpaint` stage: adapters + sketch MLP on a frozen t2v base."""

    def __init__(self, parts, trainable: PyTree, config: ml_collections.ConfigDict):
        self.parts, self.config = parts, config
        self.trainable = jax.device_put(trainable)
        self._base = jax.device_put(parts.base_params)
        self._tokenizer = jax.device_put(parts.tokenizer.params)
        self._sketch = jax.device_put(parts.sketch.params)
        self._compiled: dict[tuple, Any] = {}

    @classmethod
    def from_workdir(
        cls, workdir: str, *, step: int | None = None, base_dir: str | None = None
    ) -> Inpainter:
        """Loads `workdir/inpaint` and the t2v base its config names."""
        return cls.from_folder(
            os.path.join(workdir, "inpaint"), step=step, base_dir=base_dir, workdir=workdir
        )

    @classmethod
    def from_folder(
        cls,
        folder: str,
        *,
        step: int | None = None,
        base_dir: str | None = None,
        workdir: str | None = None,
    ) -> Inpainter:
        """Loads an inpaint stage folder (or export); `base_dir` overrides the stored base."""
        from motionaura_jax.train import inpaint as stage

        exported = os.path.isfile(os.path.join(folder, "config.json"))
        if not exported and not os.path.isdir(os.path.join(folder, "checkpoints")):
            raise FileNotFoundError(
                f"no inpaint checkpoint in {folder!r}; train one with python launch/train.py "
                "--config=configs/inpaint.py:toy --workdir=<workdir>, then pass that workdir"
            )
        trainable, config = checkpoint_lib.load_params(folder, step)
        if config.get("stage") != "inpaint":
            raise ValueError(
                f"{folder!r} holds a {config.get('stage')!r} checkpoint, not "
                "inpaint; pass the workdir of an inpaint run"
            )
        if base_dir is not None:
            config.base_dir = base_dir
        parts = stage.load_parts(config, workdir or os.path.dirname(os.path.abspath(folder)))
        if config.get("base_fingerprint") and config.base_fingerprint != parts.base_fingerprint:
            raise ValueError(
                f"the adapters in {folder!r} were trained on a t2v base with fingerprint "
                f"{config.base_fingerprint[:12]}, but {parts.base_folder!r} holds "
                f"{parts.base_fingerprint[:12]}; pass base_dir= the original base"
            )
        return cls(parts, jax.tree.map(np.asarray, trainable), config)

    @property
    def fps(self) -> float:
        return float(self.config.data.get("fps", 8.0))

    def _fn(self, steps: int, cfg: float | None, sampler: str, temperature: float):
        key = (steps, cfg, sampler, temperature)
        if key not in self._compiled:
            self._compiled[key] = make_inpaint_fn(
                self.parts.model,
                self.parts.tokenizer,
                self.parts.sketch,
                steps=steps,
                cfg_scale=cfg,
                sampler=sampler,
                known_outside=bool(self.config.inpaint.known_outside),
                sampler_kwargs=sampling.sampler_kwargs(self.config.eval, sampler, temperature),
                guide_sketch=bool(self.config.eval.get("guide_sketch", False)),
            )
        return self._compiled[key]

    def inpaint(
        self,
        video: Any,
        mask: Any,
        sketch: Any,
        prompt: str,
        *,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 0,
        sampler: str | None = None,
        temperature: float | None = None,
        return_raw: bool = False,
    ):
        """Inpaints the masked region of one clip with the sketched object (see module doc).

        `steps`, `cfg`, `sampler` and `temperature` default to the run's `eval` settings
        (what its eval.json scored; `sampling.run_settings`).

        Returns:
          uint8 (T, H, W, 3) composited clip (and the float decoded clip before
          compositing if `return_raw`).
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"prompt {prompt!r} is empty; describe the object, e.g. 'a red object moves left'"
            )
        steps, cfg, sampler, temperature = sampling.run_settings(
            self.config.eval, steps=steps, cfg=cfg, sampler=sampler, temperature=temperature
        )
        tok = self.parts.tokenizer.model
        clip = prepare_video(video, tok.spatial_factor, tok.temporal_factor)
        m = prepare_mask(mask, clip.shape)
        sketch_img = prepare_sketch(sketch, self.parts.sketch.image_size)
        grid = self.parts.tokenizer.token_grid(*clip.shape[:3])
        hole = inpaint_data.hole_tokens(m[None], grid, tok.temporal_factor, tok.spatial_factor)
        masked = clip * (1.0 - m[..., None].astype(np.float32))  # V_m = V (1 - m), D10
        text_emb, text_mask = self.parts.text.embed([prompt])
        fn = self._fn(steps, cfg, sampler, temperature)
        _, hat = fn(
            self.trainable,
            self._base,
            self._tokenizer,
            self._sketch,
            clip[None],
            masked[None],
            jnp.asarray(hole),
            sketch_img[None],
            text_emb,
            text_mask,
            np.full((1,), self.fps, np.float32),
            jax.random.PRNGKey(seed),
        )
        hat = np.asarray(hat)[0]
        out = inpaint_data.composite(clip, hat, m)
        frames = _to_uint8(out)
        if np.asarray(video).dtype == np.uint8:  # outside the mask: the input bytes, exactly
            frames = np.where(m[..., None].astype(bool), frames, np.asarray(video))
        return (frames, hat) if return_raw else frames


def read_video_file(path: str, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """All (or the first `max_frames`) frames of a video file: uint8 (T, H, W, 3), fps."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path!r} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path!r} has no video stream; pass an .mp4 (or other) video")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) == max_frames:
                    break
    except (av.FFmpegError, OSError, EOFError) as e:
        raise ValueError(f"cannot read the video {path!r} ({e}); pass an .mp4 file") from e
    if not frames:
        raise ValueError(f"video {path!r} has no frames")
    return np.stack(frames), float(rate) if rate else 8.0


def read_image_file(path: str, what: str = "image") -> np.ndarray:
    """An image file as a uint8 array (H, W, C); ValueError if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(
            f"{what} {path!r} is not an image file ({type(e).__name__}); pass a PNG or JPEG"
        ) from e


def read_mask_file(path: str, num_frames: int | None = None) -> np.ndarray:
    """A mask image (one mask for every frame) or mask video -> uint8 array."""
    if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
        return read_image_file(path, "mask")
    frames, _ = read_video_file(path, num_frames)
    return frames
