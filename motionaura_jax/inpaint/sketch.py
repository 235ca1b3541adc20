"""Sketch conditioning of stage-3 inpainting (Sec. 4, Fig. 5; D10): SigLIP -> MLP -> tokens.

`s' = MLP(SigLIP(sketch))`: the frozen SigLIP vision tower turns a sketch (H, W, 3) into
patch features (P, D_s); a trainable two-layer MLP (`SketchProjector`) maps them to the
denoiser's width, giving the S' = P sketch tokens appended to the token sequence.

Which SigLIP (`config.sketch`):

* `path` set: real Hugging Face SigLIP weights (`encoders.loaders.load_siglip_vision`),
  as the paper does; sketches are resized to the tower's `image_size`.
* `path` empty (the `shapes` toy, where no weights can be downloaded): a small SigLIP tower
  (`builtin`: width 128, 2 layers, 16 x 16 patches) whose weights are drawn once from
  NumPy's frozen `RandomState(seed)` stream, so it is the same function on every machine
  and JAX version, never trained and never saved. Why a frozen *random* tower is enough
  here: the MLP on top is trained, so the tower only has to be an injective,
  well-conditioned code of the drawing that keeps *where* the ink is. A random patch
  convolution is a fixed linear map of each 16 x 16 patch into 128 dimensions (the
  outline's strokes in a patch land on nearly orthogonal random directions), the
  pre-LN residual blocks keep each patch's code and add fixed mixtures of the others,
  and the outputs of different shapes differ in many patches at once. One fixed
  preprocessing step makes the code robust to where exactly the strokes fall: a
  Gaussian blur (sigma 4 px at 64 px). A 2 px stroke shifted by a few pixels lands on
  disjoint pixels, so a random linear patch code of the raw drawing changes completely;
  of the blurred ink density it changes smoothly. `tests/test_inpaint_sketch.py` checks
  the result: a linear probe on the features of shifted, rescaled sketches classifies
  held-out sketches' shapes (about 0.9 with the blur, about 0.65 without).

`prepare_sketch` is the input check for user sketches: any image (H, W), (H, W, 1|3|4),
uint8 or float, becomes float32 (image_size, image_size, 3) in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from motionaura_jax.encoders.siglip import SiglipVisionConfig, SiglipVisionTower
from motionaura_jax.nn.layers import dense_init, partitioned
from motionaura_jax.parallel import axes

PyTree = Any


def sketch_config(**overrides: Any) -> ml_collections.ConfigDict:
    """`config.sketch`: the SigLIP source and the trainable MLP's hidden width."""
    cfg = ml_collections.ConfigDict(
        dict(
            path="",  # HF SigLIP folder (config.json + safetensors); "" = the builtin tower
            builtin=ml_collections.ConfigDict(
                dict(
                    image_size=64,
                    patch_size=16,
                    hidden_size=128,
                    intermediate_size=256,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    seed=0,
                    blur_sigma=4.0,  # px; see the module docstring
                )
            ),
            mlp_hidden=0,  # 0 = the denoiser's width
            jitter_px=4,  # training-time random shift of the sketch (augmentation), pixels
        )
    )
    cfg.update(overrides)
    return cfg


@dataclasses.dataclass
class SketchEncoder:
    """A frozen SigLIP vision tower: module, params (NumPy), and a name for provenance."""

    module: SiglipVisionTower
    params: PyTree
    name: str
    blur_sigma: float = 0.0  # builtin tower only: Gaussian ink spread before the patches

    @property
    def config(self) -> SiglipVisionConfig:
        return self.module.config

    @property
    def image_size(self) -> int:
        return self.module.config.image_size

    @property
    def num_tokens(self) -> int:
        """S', the number of sketch tokens (SigLIP patches)."""
        return self.module.config.num_patches

    @property
    def dim(self) -> int:
        return self.module.config.hidden_size

    def features(self, params: PyTree, sketch_bhw3: jax.Array) -> jax.Array:
        """(B, image_size, image_size, 3) in [-1, 1] -> (B, P, D_s) patch features (pure)."""
        images = sketch_bhw3.astype(jnp.float32)
        if self.blur_sigma > 0:
            g = jnp.asarray(_blur_matrix(images.shape[1], self.blur_sigma))
            images = jnp.einsum("ij,bjkc,lk->bilc", g, images, g)
        _, hidden = self.module.apply({"params": params}, images)
        return jax.lax.stop_gradient(hidden.astype(jnp.float32))

    def boxed_params(self) -> PyTree:
        """`params` in the logical-axis boxes the module declares (for `Stage.frozen`)."""
        from motionaura_jax.train.t2v_data import rebox

        return rebox(_abstract(self.module), self.params, f"sketch encoder {self.name}")


def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) Gaussian blur along one axis; rows renormalised so white stays white."""
    r = np.arange(size, dtype=np.float64)
    g = np.exp(-0.5 * ((r[:, None] - r[None, :]) / sigma) ** 2)
    return (g / g.sum(1, keepdims=True)).astype(np.float32)


def _abstract(module: SiglipVisionTower) -> PyTree:
    size = module.config.image_size
    images = jax.ShapeDtypeStruct((1, size, size, module.config.num_channels), jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x)["params"], images)


def _numpy_init(abstract: PyTree, seed: int) -> PyTree:
    """Fan-in scaled normal kernels, zero biases, unit norm scales, from RandomState(seed)."""
    state = np.random.RandomState(seed)
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(abstract))[0]
    values = []
    for path, leaf in flat:
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(leaf.shape)
        if name == "bias":
            values.append(np.zeros(shape, np.float32))
        elif name == "scale":
            values.append(np.ones(shape, np.float32))
        else:
            if name == "kernel":
                # Projection kernels are (in..., out...); the patch conv (kh, kw, c, out) and
                # the stacked layers (L, in..., out...) share fan-in = all but the out axes.
                fan_in = _fan_in([str(getattr(p, "key", p)) for p in path], shape)
            else:  # position embedding, probe
                fan_in = shape[-1]
            values.append((state.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32))
    treedef = jax.tree.structure(nn.meta.unbox(abstract))
    return jax.tree.unflatten(treedef, values)


def _fan_in(names: list[str], shape: tuple[int, ...]) -> int:
    shape = shape[1:] if "layers" in names else shape  # scanned blocks: leading layer axis
    if "patch_embed" in names:
        return int(np.prod(shape[:-1]))
    if names[-2] == "out" and len(shape) == 3:  # (heads, head_dim, width)
        return int(shape[0] * shape[1])
    return int(shape[0])


def make_sketch_encoder(cfg: ml_collections.ConfigDict) -> SketchEncoder:
    """The frozen SigLIP tower of `config.sketch` (HF weights, or the builtin random one)."""
    if cfg.path:
        from motionaura_jax.encoders.loaders import load_siglip_vision

        siglip_cfg, params = load_siglip_vision(cfg.path)
        params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
        return SketchEncoder(SiglipVisionTower(siglip_cfg), params, cfg.path)
    b = cfg.builtin
    siglip_cfg = SiglipVisionConfig(
        hidden_size=int(b.hidden_size),
        intermediate_size=int(b.intermediate_size),
        num_hidden_layers=int(b.num_hidden_layers),
        num_attention_heads=int(b.num_attention_heads),
        image_size=int(b.image_size),
        patch_size=int(b.patch_size),
        vision_use_head=False,
    )
    module = SiglipVisionTower(siglip_cfg)
    params = _numpy_init(_abstract(module), int(b.seed))
    name = (
        f"builtin:siglip-{b.image_size}px-p{b.patch_size}-d{b.hidden_size}"
        f"-l{b.num_hidden_layers}-seed{b.seed}-blur{b.blur_sigma}"
    )
    return SketchEncoder(module, params, name, float(b.blur_sigma))


class SketchProjector(nn.Module):
    """The trainable MLP on the SigLIP features: (B, P, D_s) -> (B, P, width) (Sec. 4).

    A learned position embedding per patch and a per-segment type vector are added so the
    denoiser can tell sketch tokens from video tokens after the spectral mixing.
    """

    width: int
    hidden: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats_bpd: jax.Array) -> jax.Array:
        hidden = self.hidden or self.width
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(
            hidden,
            kernel_init=partitioned(dense_init(), (None, axes.MLP)),
            bias_init=partitioned(nn.initializers.zeros, (axes.MLP,)),
            name="fc1",
            **dense,
        )(nn.LayerNorm(use_scale=False, use_bias=False)(feats_bpd))
        h = nn.gelu(h, approximate=True)
        out = nn.Dense(
            self.width,
            kernel_init=partitioned(dense_init(0.02), (axes.MLP, axes.EMBED)),
            bias_init=partitioned(nn.initializers.zeros, (axes.EMBED,)),
            name="fc2",
            **dense,
        )(h)
        pos = self.param(
            "pos_embed",
            partitioned(nn.initializers.normal(0.02), (None, axes.EMBED)),
            (feats_bpd.shape[1], self.width),
            self.param_dtype,
        )
        return out + pos.astype(out.dtype)[None]


def prepare_sketch(image: Any, image_size: int, *, what: str = "sketch") -> np.ndarray:
    """A user sketch -> float32 (image_size, image_size, 3) in [-1, 1], dark ink on white.

    Accepts (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays: uint8 in [0, 255], or float
    in [0, 1] or [-1, 1] (negative values mean [-1, 1]). Alpha is composited on white.
    Raises ValueError naming the value and the fix for anything else.
    """
    arr = np.asarray(image)
    channels_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))
    if arr.dtype == object or not channels_ok:
        raise ValueError(
            f"{what} must be an image (H, W) or (H, W, 1|3|4), got {type(image).__name__} "
            f"with shape {getattr(arr, 'shape', None)}; pass a PNG/JPEG line drawing "
            "(dark strokes on a light background)"
        )
    if min(arr.shape[:2]) < 8:
        raise ValueError(
            f"{what} is {arr.shape[0]}x{arr.shape[1]} pixels; draw it at least "
            f"8x8 (it is resized to {image_size}x{image_size})"
        )
    if arr.dtype == np.uint8:
        rgb = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} has NaN/inf pixels; pass a finite image")
        rgb = (arr.astype(np.float32) + 1.0) / 2.0 if arr.min() < 0 else arr.astype(np.float32)
        if rgb.max() > 1.0 + 1e-3:
            raise ValueError(
                f"{what} float pixels go up to {float(arr.max()):.3g}; use [0, 1] "
                "or [-1, 1] floats, or uint8"
            )
    else:
        raise ValueError(f"{what} has dtype {arr.dtype}; use uint8 or float pixels")
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.shape[-1] == 4:
        rgb = rgb[..., :3] * rgb[..., 3:] + (1.0 - rgb[..., 3:])
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if rgb.shape[:2] != (image_size, image_size):
        u8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        # Pad to a square on white first: a sketch keeps its aspect ratio.
        h, w = u8.shape[:2]
        side = max(h, w)
        page = np.full((side, side, 3), 255, np.uint8)
        page[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = u8
        img = Image.fromarray(page).resize(
            (image_size, image_size),
            Image.Resampling.BOX if side > image_size else Image.Resampling.BICUBIC,
        )
        rgb = np.asarray(img).astype(np.float32) / 255.0
    return (np.clip(rgb, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def jitter_sketch(sketch_hw3: np.ndarray, rng: np.random.Generator, max_px: int) -> np.ndarray:
    """Random integer shift of a sketch on its white page (training augmentation)."""
    if max_px <= 0:
        return sketch_hw3
    dy, dx = rng.integers(-max_px, max_px + 1, size=2)
    out = np.ones_like(sketch_hw3)
    h, w = sketch_hw3.shape[:2]
    src = sketch_hw3[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out
