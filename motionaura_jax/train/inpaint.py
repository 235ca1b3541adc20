"""Stage 3, `inpaint`: sketch-guided video inpainting with LoRA on a frozen t2v denoiser (D10).

`build(config, workdir) -> Stage` loads the finished stage-2 denoiser (`config.base_dir`,
default `<workdir>/t2v`) and the tokenizer it was trained on, freezes both with the text
encoder and the SigLIP sketch tower (`Stage.frozen`), and trains only the LoRA adapters,
the masked-video embedding table and the sketch MLP: `init` returns those alone, so the
optimizer holds state for them only and checkpoints store them only (the base is named
in the stored config, `base_dir`/`base_step`, and checked by fingerprint at load).

Loss (D10): z_0, z_m from the cache (`inpaint.data`), z_0 corrupted to z_t (D8) -- with
`inpaint.known_outside`, only the latent cells touching the mask are corrupted and the
rest is given, as at inference -- and the masked-token cross-entropy on z_t's positions.
`evaluate` inpaints held-out clips and scores them with the oracle (`inpaint.metrics`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax.denoiser import sampling
from motionaura_jax.denoiser.diffusion import (
    corrupt,
    masked_cross_entropy,
    sample_time,
)
from motionaura_jax.denoiser.model import SpectralTransformer, abstract_params
from motionaura_jax.encoders.text import TextEncoder, make_text_encoder
from motionaura_jax.inpaint import data as inpaint_data
from motionaura_jax.inpaint import metrics as inpaint_metrics
from motionaura_jax.inpaint.model import (
    InpaintDenoiser,
    down_statistics,
    merge_params,
    redraw_downs,
    split_trainable,
)
from motionaura_jax.inpaint.sampling import make_inpaint_fn
from motionaura_jax.inpaint.sketch import SketchEncoder, make_sketch_encoder
from motionaura_jax.nn import lora as lora_lib
from motionaura_jax.parallel.rules import TRANSFORMER_RULES
from motionaura_jax.train import t2v, t2v_data
from motionaura_jax.train.stage import Stage, earlier_stage_dir

PyTree = Any
TRAIN_T2V = "python launch/train.py --config=configs/t2v.py:toy --workdir=<workdir>"


@dataclasses.dataclass
class InpaintParts:
    """The frozen pieces of stage 3 and the adapted model (shared by stage and pipeline)."""

    model: InpaintDenoiser
    base_model: SpectralTransformer  # the t2v denoiser without LoRA
    base_params: PyTree  # NumPy
    base_config: ml_collections.ConfigDict
    base_folder: str
    base_fingerprint: str
    tokenizer: t2v_data.FrozenTokenizer
    text: TextEncoder
    sketch: SketchEncoder

    def frozen(self) -> dict:
        """`Stage.frozen`: base denoiser, tokenizer and sketch tower, boxed with logical names."""
        return {
            "denoiser": t2v_data.rebox(
                abstract_params(self.base_model),
                self.base_params,
                f"t2v denoiser {self.base_folder}",
            ),
            "tokenizer": self.tokenizer.boxed_params(),
            "sketch": self.sketch.boxed_params(),
        }

    def abstract_full(self, batch_size: int = 1) -> PyTree:
        """Boxed ShapeDtypeStructs of the full `InpaintDenoiser` params."""
        return jax.eval_shape(
            lambda: self.model.init(jax.random.key(0), *example_inputs(self, batch_size))["params"]
        )


def base_dir(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    """The stage-2 folder: `config.base_dir`, or `<workdir>/t2v` when empty."""
    return earlier_stage_dir(config.base_dir, workdir, "t2v", "base_dir")


def load_parts(config: ml_collections.ConfigDict, workdir: str | None) -> InpaintParts:
    """Loads the t2v checkpoint, its tokenizer and text encoder, and the sketch tower."""
    folder = base_dir(config, workdir)
    exported = os.path.isfile(os.path.join(folder, "config.json"))
    if not exported and not os.path.isdir(os.path.join(folder, "checkpoints")):
        raise FileNotFoundError(
            f"no finished t2v checkpoint in {folder!r}; train stage 2 first ({TRAIN_T2V}) or "
            "set --config.base_dir to a t2v stage folder (<workdir>/t2v) or an export of one"
        )
    step = None if exported or config.base_step < 0 else int(config.base_step)
    params, base_config = checkpoint_lib.load_params(folder, step)
    if base_config.get("stage") != "t2v":
        raise ValueError(
            f"{folder!r} holds a checkpoint of stage {base_config.get('stage')!r}, "
            "not a t2v denoiser; set --config.base_dir to <workdir>/t2v"
        )
    params = jax.tree.map(np.asarray, params)
    tok_dir = config.tokenizer_dir or t2v.tokenizer_dir(base_config, os.path.dirname(folder))
    tokenizer = t2v.load_stage_tokenizer(base_config, folder, tok_dir)
    text = make_text_encoder(base_config.text)
    base_model = t2v.build_denoiser(base_config.model, tokenizer, text.dim)
    lora = config.lora
    if lora.kind not in lora_lib.ADAPTER_KINDS:
        raise ValueError(f"lora.kind={lora.kind!r}; use one of {lora_lib.ADAPTER_KINDS}")
    if not 0 < lora.rank < base_model.width:
        raise ValueError(
            f"lora.rank={lora.rank} must be in (0, {base_model.width}) (the "
            "denoiser width); Table 6 uses 8, 16, 32, 64"
        )
    adapted = base_model.clone(
        lora_rank=int(lora.rank), lora_kind=lora.kind, lora_alpha=float(lora.alpha)
    )
    model = InpaintDenoiser(
        adapted,
        sketch_hidden=int(config.sketch.mlp_hidden),
        context=config.inpaint.get("context", "concat"),
        cell_logits=bool(config.inpaint.get("cell_logits", False)),
        cell_neighbours=bool(config.inpaint.get("cell_neighbours", False)),
    )
    return InpaintParts(
        model,
        base_model,
        params,
        base_config,
        folder,
        t2v_data.params_fingerprint(params),
        tokenizer,
        text,
        make_sketch_encoder(config.sketch),
    )


def example_inputs(parts: InpaintParts, batch: int, grid=None, text_len: int = 1):
    """Zero inputs of `InpaintDenoiser` (z_t, z_m, feats, t, text, mask, fps, drop); the
    token grid defaults to one patch of the base (parameter shapes do not depend on it)."""
    sk = parts.sketch
    grid = tuple(parts.base_model.patch) if grid is None else grid
    return (
        jnp.zeros((batch, *grid), jnp.int32),
        jnp.zeros((batch, *grid), jnp.int32),
        jnp.zeros((batch, sk.num_tokens, sk.dim), jnp.float32),
        jnp.ones((batch,), jnp.float32),
        jnp.zeros((batch, text_len, parts.text.dim), jnp.float32),
        jnp.ones((batch, text_len), bool),
        jnp.full((batch,), 8.0, jnp.float32),
        jnp.zeros((batch,), bool),
    )


def sketch_to_encoder(sketch_bhw3: jax.Array, size: int) -> jax.Array:
    """Resizes (B, H, W, 3) sketches to the tower's (size, size) when they differ."""
    if sketch_bhw3.shape[1:3] == (size, size):
        return sketch_bhw3
    return jax.image.resize(sketch_bhw3, (sketch_bhw3.shape[0], size, size, 3), "linear")


def cache_path(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    if config.cache.path:
        return os.path.abspath(os.path.expanduser(config.cache.path))
    if not workdir:
        raise ValueError("cache.path is empty and no workdir was given; set one of them")
    return os.path.join(os.path.abspath(workdir), "inpaint_tokens.npz")


def t2v_tokens(config: ml_collections.ConfigDict, parts: InpaintParts) -> np.ndarray | None:
    """z_0 of the train clips from the base's t2v token cache, when it was made by the same
    tokenizer from the same clips (then the inpaint cache only encodes V_m)."""
    path = os.path.join(os.path.dirname(parts.base_folder), "t2v_tokens.npz")
    if not os.path.isfile(path):
        return None
    try:
        cache = t2v_data.TokenCache(path)
        cache.check(parts.tokenizer.raw, parts.text, config.data)
    except ValueError:
        return None
    data = cache.meta["data"]
    same = (
        data.get("name") == config.data.name
        and data.get("split") == "train"
        and int(data.get("seed", -1)) == int(config.data.seed)
    )
    tokens = cache.arrays["tokens"]
    if not same or len(tokens) < config.cache.num_clips:
        return None
    if not np.array_equal(
        cache.arrays["index"][: config.cache.num_clips], np.arange(config.cache.num_clips)
    ):
        return None
    print(f"[inpaint] z_0 from the t2v token cache {path}", flush=True)
    return np.asarray(parts.tokenizer.codes_to_ids(tokens[: config.cache.num_clips]))


def open_cache(config, workdir, parts: InpaintParts) -> inpaint_data.InpaintCache:
    """The checked inpainting cache; written first when missing and `cache.build`."""
    path = cache_path(config, workdir)
    if not os.path.isfile(path) and config.cache.build:
        if jax.process_count() > 1:
            raise ValueError(f"inpaint cache {path!r} is missing; write it on one host first")
        print(
            f"[inpaint] writing the token cache {path} ({config.cache.num_clips} clips)", flush=True
        )
        inpaint_data.write_inpaint_cache(
            path,
            parts.tokenizer,
            parts.text,
            config.data,
            config.inpaint,
            split="train",
            num_clips=int(config.cache.num_clips),
            z0_tokens=t2v_tokens(config, parts),
        )
    cache = inpaint_data.InpaintCache(path)
    cache.check(parts.tokenizer, parts.text, config.data, config.inpaint)
    return cache


class _Evaluator:
    """Inpaints held-out clips (mask + sketch + caption) and scores them (`inpaint.metrics`)."""

    def __init__(self, config: ml_collections.ConfigDict, parts: InpaintParts):
        ev = config.eval
        self.config, self.parts = config, parts
        self.examples: list[dict] = []
        if ev.num_clips <= 0:
            return
        self.examples = inpaint_data.eval_examples(
            config.data, config.inpaint, int(ev.num_clips), split=ev.split
        )
        self.batch_size = int(min(ev.batch_size, ev.num_clips))
        tok = parts.tokenizer
        grid = tok.token_grid(config.data.frames, config.data.height, config.data.width)
        masks = np.stack([e["mask"] for e in self.examples])
        self.hole = inpaint_data.hole_tokens(
            masks, grid, tok.model.temporal_factor, tok.model.spatial_factor
        )
        self.text_emb, self.text_mask = parts.text.embed([e["caption"] for e in self.examples])
        self.inpaint = make_inpaint_fn(
            parts.model,
            tok,
            parts.sketch,
            steps=int(ev.steps),
            cfg_scale=float(ev.cfg_scale) if ev.cfg_scale >= 0 else None,
            sampler=ev.sampler,
            known_outside=bool(config.inpaint.known_outside),
            sampler_kwargs=sampling.sampler_kwargs(ev, ev.sampler, ev.temperature),
            guide_sketch=bool(ev.get("guide_sketch", False)),
        )
        # The reference: D(E(V)) with every code (the given cells' codes are E(V)'s own).
        raw = tok.raw
        self.roundtrip = jax.jit(lambda p, v: raw.decode(p, raw.encode(p, v)))

    def __call__(self, params: PyTree, frozen: PyTree) -> dict[str, float]:
        if not self.examples:
            return {}
        n, b = len(self.examples), self.batch_size
        size = self.parts.sketch.image_size
        outputs, raw, recon = [], [], []
        for i, start in enumerate(range(0, n, b)):
            rows = np.arange(start, min(start + b, n))
            padded = np.concatenate([rows, np.full(b - len(rows), rows[-1])])
            ex = [self.examples[j] for j in padded]
            video = np.stack([e["video"] for e in ex])
            sketch = sketch_to_encoder(jnp.asarray(np.stack([e["sketch"] for e in ex])), size)
            rng = jax.random.fold_in(jax.random.PRNGKey(self.config.eval.seed), i)
            masked = np.stack([e["masked_video"] for e in ex])
            _, hat = self.inpaint(
                params,
                frozen["denoiser"],
                frozen["tokenizer"],
                frozen["sketch"],
                video,
                masked,
                self.hole[padded],
                sketch,
                self.text_emb[padded],
                self.text_mask[padded],
                np.stack([e["fps"] for e in ex]).astype(np.float32),
                rng,
            )
            hat = np.asarray(hat)[: len(rows)]
            rec = np.asarray(self.roundtrip(frozen["tokenizer"], video))[: len(rows)]
            for k, j in enumerate(rows):
                e = self.examples[j]
                raw.append(hat[k])
                recon.append(rec[k])
                outputs.append(inpaint_data.composite(e["video"], hat[k], e["mask"]))
        vocab = {"colors": tuple(self.config.data.colors), "shapes": tuple(self.config.data.shapes)}
        scores = inpaint_metrics.score_inpainting(outputs, raw, recon, self.examples, vocab)
        scores["num_clips"] = float(n)
        return scores


def check_base(config: ml_collections.ConfigDict, workdir: str | None, parts: InpaintParts) -> None:
    """Refuses a base whose weights differ from the one the adapters were trained on.

    The expected fingerprint is `config.base_fingerprint`, else the one stored with this
    stage's latest checkpoint (a resumed run); then the config records the loaded one, so
    every checkpoint names its base by path, step and weights.
    """
    expected, source = config.base_fingerprint, "config.base_fingerprint"
    folder = os.path.join(os.path.abspath(workdir), "inpaint", "checkpoints") if workdir else ""
    if not expected and folder and os.path.isdir(folder):
        try:
            saved, step = checkpoint_lib.read_config(folder)
            expected, source = saved.get("base_fingerprint", ""), f"checkpoint {folder}/{step}"
        except ValueError:  # no finished checkpoint yet
            pass
    if expected and expected != parts.base_fingerprint:
        raise ValueError(
            f"the t2v base in {parts.base_folder!r} has fingerprint {parts.base_fingerprint[:12]}, "
            f"but {source} was trained on {expected[:12]}: the base changed; point "
            "--config.base_dir/--config.base_step at the original base or use a new workdir"
        )
    config.base_fingerprint = parts.base_fingerprint


def build(config: ml_collections.ConfigDict, workdir: str | None = None) -> Stage:
    """The `inpaint` stage (see the module docstring)."""
    parts = load_parts(config, workdir)
    check_base(config, workdir, parts)
    cache = open_cache(config, workdir, parts)
    abstract_full = parts.abstract_full()
    abstract_trainable, _ = split_trainable(abstract_full)
    # D10: W_down from the statistics of the *trained* base kernels, measured once here.
    stats = down_statistics(parts.base_params, abstract_trainable)
    counts = parameter_counts(parts)
    if jax.process_index() == 0:
        print(
            f"[inpaint] training {counts['trainable']:,} of {counts['total']:,} parameters "
            f"(adapters {counts['adapters']:,}, masked-video table "
            f"{counts['masked_embed']:,}, sketch MLP {counts['sketch_mlp']:,}, cell logits "
            f"{counts['cell_logits']:,}); frozen: "
            f"denoiser {counts['frozen_denoiser']:,}, tokenizer "
            f"{counts['frozen_tokenizer']:,}, SigLIP {counts['frozen_sketch_tower']:,}",
            flush=True,
        )
    model = parts.model
    diffusion = config.diffusion
    mask_id = parts.tokenizer.vocab_size
    levels = tuple(model.base.code_levels)  # digit head: the loss reads per-digit logits
    known_outside = bool(config.inpaint.known_outside)
    size = parts.sketch.image_size
    fields = ("z0", "zm", "hole", "sketch", "text_emb", "text_mask", "fps")

    def data(split: str, seed: int):
        if split != "train":
            raise ValueError(
                "the inpaint cache holds the train split only; evaluate() builds "
                "its held-out clips itself"
            )
        return inpaint_data.cache_iterator(
            cache,
            global_batch_size=config.train.batch_size,
            seed=seed,
            jitter_px=int(config.sketch.jitter_px),
            shuffle=bool(config.data.shuffle),
        )

    def init(rng: jax.Array, batch: dict) -> PyTree:
        b = batch["z0"].shape[0]
        inputs = example_inputs(parts, b, batch["z0"].shape[1:], batch["text_mask"].shape[1])
        full = model.init(rng, *inputs)["params"]
        trainable, _ = split_trainable(full)  # the base's fresh init is dead code under jit
        return redraw_downs(trainable, stats, jax.random.fold_in(rng, 1))

    def loss(params, frozen, batch, rng, step):
        del step
        with nn.logical_axis_rules(TRANSFORMER_RULES):
            full = merge_params(params, frozen["denoiser"])
            feats = parts.sketch.features(
                frozen["sketch"], sketch_to_encoder(batch["sketch"], size)
            )
            z_0 = batch["z0"].astype(jnp.int32)
            b = z_0.shape[0]
            r_t, r_mask, r_drop, r_sketch = jax.random.split(rng, 4)
            t = sample_time(r_t, b, int(diffusion.num_steps))
            known = ~batch["hole"].astype(bool) if known_outside else None
            z_t, masked = corrupt(r_mask, z_0, t, mask_id, diffusion.schedule, known)
            drop = jax.random.bernoulli(r_drop, float(diffusion.p_uncond), (b,))
            # Sketch guidance's "no sketch, no text" branch, trained on this share of the
            # clips whose text is dropped.
            drop_sketch = drop & jax.random.bernoulli(
                r_sketch, float(diffusion.get("sketch_drop", 0.0)), (b,)
            )
            logits = model.apply(
                {"params": full},
                z_t,
                batch["zm"].astype(jnp.int32),
                feats,
                t,
                batch["text_emb"].astype(jnp.float32),
                batch["text_mask"].astype(bool),
                batch["fps"],
                drop,
                digit_logits=bool(levels),
                drop_sketch=drop_sketch,
            )
            value, metrics = masked_cross_entropy(
                logits,
                z_0.reshape(b, -1),
                masked.reshape(b, -1),
                float(diffusion.label_smoothing),
                levels,
            )
        return value, {**metrics, "mean_t": t.mean()}

    return Stage(
        name="inpaint",
        rules=TRANSFORMER_RULES,
        init=init,
        loss=loss,
        data=data,
        evaluate=_Evaluator(config, parts),
        frozen=parts.frozen(),
        device_fields=fields,
    )


def parameter_counts(parts: InpaintParts) -> dict[str, int]:
    """Trainable (adapters, masked-video table, sketch MLP, cell logits) vs frozen counts."""
    trainable, base = split_trainable(nn.meta.unbox(parts.abstract_full()))
    adapters = {k: v for k, v in trainable.items() if k == "base"}
    counts = {
        "trainable": lora_lib.count_params(trainable),
        "adapters": lora_lib.count_params(adapters),
        "masked_embed": lora_lib.count_params(trainable.get("masked_embed", {})),
        "sketch_mlp": lora_lib.count_params(trainable.get("sketch_mlp", {})),
        "cell_logits": lora_lib.count_params(trainable.get("cell_logits", {})),
        "frozen_denoiser": lora_lib.count_params(base),
        "frozen_sketch_tower": lora_lib.count_params(parts.sketch.params),
        "frozen_tokenizer": lora_lib.count_params(parts.tokenizer.params),
    }
    counts["total"] = (
        counts["trainable"]
        + counts["frozen_denoiser"]
        + counts["frozen_sketch_tower"]
        + counts["frozen_tokenizer"]
    )
    return counts


__all__ = ["InpaintParts", "base_dir", "build", "load_parts", "merge_params", "parameter_counts"]
