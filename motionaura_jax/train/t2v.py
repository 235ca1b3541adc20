"""Stage 2, `t2v`: masked discrete diffusion over the tokens of a frozen tokenizer (D8).

`build(config, workdir) -> Stage` wires the spectral transformer (`config.model`), the
frozen stage-1 tokenizer (`config.tokenizer_dir`, default `<workdir>/tokenizer`), the
frozen text encoder (`config.text`) and the token source (`config.tokens`: on the fly or
a pre-tokenised cache, see `t2v_data`). The loss is the masked-token cross-entropy with
the text dropped for 10% of the clips (classifier-free guidance, D8). `evaluate`
generates one clip per held-out caption with the sampler (10 steps, CFG), decodes it with
the tokenizer and scores it with the `shapes` oracle: caption accuracy per attribute.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from motionaura_jax.data import pipeline
from motionaura_jax.data.oracle import score_clips
from motionaura_jax.denoiser import sampling
from motionaura_jax.denoiser.diffusion import DiffusionConfig, diffusion_loss
from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.encoders.text import TextEncoder
from motionaura_jax.parallel.rules import TRANSFORMER_RULES
from motionaura_jax.tokenizer import vocabulary as vocabulary_lib
from motionaura_jax.train import t2v_data
from motionaura_jax.train.stage import Stage, earlier_stage_dir

PyTree = Any
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TOKEN_SOURCES = ("online", "cache")


def tokenizer_dir(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    """The stage-1 folder: `config.tokenizer_dir`, or `<workdir>/tokenizer` when empty."""
    return earlier_stage_dir(config.tokenizer_dir, workdir, "tokenizer", "tokenizer_dir")


def cache_path(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    """The token cache: `config.tokens.cache_path`, or `<workdir>/t2v_tokens.npz`."""
    if config.tokens.cache_path:
        return os.path.abspath(os.path.expanduser(config.tokens.cache_path))
    if not workdir:
        raise ValueError("tokens.cache_path is empty and no workdir was given; set one of them")
    return os.path.join(os.path.abspath(workdir), "t2v_tokens.npz")


def open_cache(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    tokenizer: t2v_data.FrozenTokenizer,
    text: TextEncoder,
) -> t2v_data.TokenCache:
    """The checked token cache; written first when missing and `tokens.build_cache`."""
    path = cache_path(config, workdir)
    tokenizer = tokenizer.raw  # caches hold codes, whatever the denoiser's vocabulary
    if not os.path.isfile(path) and config.tokens.build_cache:
        if jax.process_count() > 1:
            raise ValueError(
                f"token cache {path!r} is missing; on several hosts write it "
                "first with tools/tokenize_dataset.py"
            )
        print(
            f"[t2v] writing the token cache {path} ({config.tokens.cache_clips} clips); "
            "this happens once per tokenizer",
            flush=True,
        )
        t2v_data.write_token_cache(
            path,
            tokenizer,
            text,
            config.data,
            split="train",
            num_clips=int(config.tokens.cache_clips),
        )
    cache = t2v_data.TokenCache(path)
    cache.check(tokenizer, text, config.data)
    return cache


def with_vocabulary(
    config: ml_collections.ConfigDict,
    stage_folder: str,
    tokenizer: t2v_data.FrozenTokenizer,
    cache: t2v_data.TokenCache | None = None,
) -> t2v_data.FrozenTokenizer:
    """`tokenizer` speaking the ids of the t2v stage's vocabulary (`tokens.vocabulary`).

    0 keeps all K codes. V > 0 reads `<stage_folder>/vocabulary.npz`; when it is missing
    and `cache` is given (a new t2v run), counts the cache's codes, keeps the V most used
    (fewer if the cache uses fewer; `tokenizer/vocabulary.py`) and writes the file before
    any checkpoint needs it.
    """
    size = int(config.tokens.get("vocabulary", 0))
    if size <= 0:
        return tokenizer
    path = os.path.join(stage_folder, vocabulary_lib.FILE_NAME)
    if os.path.isfile(path):
        vocabulary = vocabulary_lib.CodeVocabulary.load(path)
        if vocabulary.size > size:
            raise ValueError(
                f"{path!r} keeps {vocabulary.size} codes but tokens.vocabulary={size}; set "
                f"--config.tokens.vocabulary={vocabulary.size} or use a new workdir"
            )
    elif cache is not None:
        counts = np.bincount(cache.arrays["tokens"].ravel(), minlength=tokenizer.vocab_size)
        vocabulary = vocabulary_lib.most_used(
            counts, tokenizer.decoder_inputs(), size, tokenizer.fingerprint
        )
        if jax.process_index() == 0:
            os.makedirs(stage_folder, exist_ok=True)
            vocabulary.save(path)
            print(
                f"[t2v] vocabulary: the {vocabulary.size} most used of "
                f"{tokenizer.vocab_size} codes ({int((counts > 0).sum())} used) cover "
                f"{vocabulary.coverage:.2%} of the cached tokens; wrote {path}",
                flush=True,
            )
    else:
        raise FileNotFoundError(
            f"tokens.vocabulary={size}, but {path!r} is missing: a new t2v run counts the "
            "codes of its token cache (tokens.source='cache'; with 'online' tokens set "
            "--config.tokens.vocabulary=0), and a trained one needs the file from its "
            "training workdir's t2v folder (tools/export.py copies it into exports)"
        )
    return tokenizer.with_vocabulary(vocabulary)


def load_stage_tokenizer(
    config: ml_collections.ConfigDict, stage_folder: str, tokenizer_folder: str
) -> t2v_data.FrozenTokenizer:
    """The tokenizer a finished t2v stage (folder or export) trained on, in its vocabulary."""
    tokenizer = t2v_data.load_tokenizer(tokenizer_folder, int(config.get("tokenizer_step", -1)))
    return with_vocabulary(config, stage_folder, tokenizer)


def build_denoiser(
    model_config: ml_collections.ConfigDict, tokenizer: t2v_data.FrozenTokenizer, text_dim: int
) -> SpectralTransformer:
    """The `SpectralTransformer` of `config.model` for `tokenizer`'s codes. vocab_size /
    text_dim 0 = take the tokenizer's codebook size / the text encoder's width;
    `digit_head` = factorise the codes over the tokenizer's FSQ levels (`code_levels`);
    `code_features` = give the denoiser every id's quantizer vector (`code_vectors`)."""
    fields = dict(model_config)
    for name, actual, source in (
        ("vocab_size", tokenizer.vocab_size, "tokenizer vocabulary"),
        ("text_dim", text_dim, "text encoder width"),
    ):
        if fields.get(name) and fields[name] != actual:
            raise ValueError(
                f"model.{name}={fields[name]} but the {source} is {actual}; set "
                f"--config.model.{name}=0 to take it from there"
            )
        fields[name] = actual
    if fields.pop("digit_head", False):
        if tokenizer.vocabulary is not None:
            raise ValueError(
                "model.digit_head=True predicts every FSQ digit, but tokens.vocabulary="
                f"{tokenizer.vocab_size} renumbers the codes; set --config.tokens.vocabulary=0"
            )
        if not tokenizer.code_levels:
            raise ValueError(
                "model.digit_head=True needs an FSQ tokenizer (its codes have digits), but "
                f"the tokenizer in {tokenizer.folder!r} uses "
                f"{tokenizer.config.model.quantizer.name!r}; set --config.model.digit_head=False"
            )
        fields["code_levels"] = tokenizer.code_levels
    if fields.pop("code_features", False):
        fields["code_vectors"] = tokenizer.id_vectors()
    for name in ("dtype", "param_dtype", "logits_dtype"):
        if name in fields:
            if fields[name] not in _DTYPES:
                raise ValueError(f"model.{name}={fields[name]!r}; use one of {list(_DTYPES)}")
            fields[name] = _DTYPES[fields[name]]
    return SpectralTransformer(**fields)


def diffusion_config(
    config: ml_collections.ConfigDict, denoiser: SpectralTransformer
) -> DiffusionConfig:
    return DiffusionConfig(
        vocab_size=denoiser.vocab_size,
        code_levels=tuple(denoiser.code_levels),
        patch=tuple(denoiser.patch),
        **dict(config.diffusion),
    )


def make_generate_fn(
    denoiser: SpectralTransformer,
    tokenizer: t2v_data.FrozenTokenizer,
    token_shape: tuple[int, ...],
    *,
    steps: int = 10,
    cfg_scale: float | None = 10.0,
    sampler: str = "maskgit",
    sampler_kwargs: dict | None = None,
):
    """Jitted `(params, tokenizer_params, text_emb, text_mask, fps, rng) -> (tokens, video)`.

    Shapes: text_emb (B, L, D), text_mask (B, L), fps (B,) -> tokens `token_shape`
    (B, n, h, w) int32 and video (B, T, H, W, 3) float32 in [-1, 1]. `cfg_scale=None` is
    the conditional model alone; one compile per (token_shape, steps, cfg, sampler).
    """
    kwargs = dict(sampler_kwargs or {})

    def generate(params, tokenizer_params, text_emb, text_mask, fps, rng):
        with nn.logical_axis_rules(TRANSFORMER_RULES):
            tokens = sampling.sample(
                denoiser,
                params,
                rng,
                text_emb,
                token_shape,
                text_mask=text_mask,
                fps=fps,
                steps=steps,
                guidance_scale=cfg_scale,
                method=sampler,
                **kwargs,
            )
            return tokens, tokenizer.decode(tokenizer_params, tokens)

    return jax.jit(generate)


class _Evaluator:
    """Generates one clip per held-out caption and scores it with the oracle."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        denoiser: SpectralTransformer,
        tokenizer: t2v_data.FrozenTokenizer,
        text: TextEncoder,
    ):
        ev = config.eval
        if ev.sampler not in sampling.SAMPLERS:
            raise ValueError(f"eval.sampler={ev.sampler!r}; use one of {list(sampling.SAMPLERS)}")
        self.config, self.tokenizer = config, tokenizer
        self.captions: list[str] = []
        if ev.num_prompts <= 0:
            return  # no oracle for this data (e.g. real videos): evaluate() reports nothing
        if config.data.name != "shapes":
            raise ValueError(
                f"eval.num_prompts={ev.num_prompts}: the caption oracle scores "
                f"`shapes` clips only, data.name is {config.data.name!r}; set "
                "--config.eval.num_prompts=0"
            )
        self.batch_size = int(min(ev.batch_size, ev.num_prompts))
        batches = pipeline.eval_batches(
            config.data, int(ev.num_prompts), self.batch_size, split=ev.split
        )
        self.captions = [str(c) for b in batches for c in b["caption"]]
        self.videos = [v for b in batches for v in b["video"]]  # references for the ceiling
        self.fps = np.concatenate([b["fps"] for b in batches]).astype(np.float32)
        self.text_emb, self.text_mask = text.embed(self.captions)
        grid = tokenizer.token_grid(config.data.frames, config.data.height, config.data.width)
        self.generate = make_generate_fn(
            denoiser,
            tokenizer,
            (self.batch_size, *grid),
            steps=int(ev.steps),
            cfg_scale=float(ev.cfg_scale) if ev.cfg_scale >= 0 else None,
            sampler=ev.sampler,
            sampler_kwargs=sampling.sampler_kwargs(ev, ev.sampler, ev.temperature),
        )

    def _chunks(self):
        n, b = len(self.captions), self.batch_size
        for start in range(0, n, b):
            rows = np.arange(start, min(start + b, n))
            padded = np.concatenate([rows, np.full(b - len(rows), rows[-1])])
            yield start // b, rows, padded

    def __call__(self, params: PyTree, frozen: PyTree) -> dict[str, float]:
        if not self.captions:
            return {}
        videos = []
        for i, rows, padded in self._chunks():
            rng = jax.random.fold_in(jax.random.PRNGKey(self.config.eval.seed), i)
            _, video = self.generate(
                params,
                frozen["tokenizer"],
                self.text_emb[padded],
                self.text_mask[padded],
                self.fps[padded],
                rng,
            )
            videos += list(np.asarray(video)[: len(rows)])
        scores = score_clips(videos, self.captions, self.config.data, by_count=True)
        if self.config.eval.reference:
            scores.update(self.reference(frozen))
        scores["num_prompts"] = float(len(self.captions))
        return scores

    def reference(self, frozen: PyTree) -> dict[str, float]:
        """Oracle accuracy of the tokenizer's reconstructions of the true clips: the
        ceiling any denoiser can reach through this tokenizer."""
        tok = self.tokenizer
        roundtrip = jax.jit(lambda p, v: tok.decode(p, tok.encode(p, v)))
        recon = []
        for _, rows, padded in self._chunks():
            video = np.stack([self.videos[i] for i in padded])
            recon += list(np.asarray(roundtrip(frozen["tokenizer"], video))[: len(rows)])
        return score_clips(recon, self.captions, self.config.data, prefix="reference_")


def check_binding(config: ml_collections.ConfigDict, cache: t2v_data.TokenCache | None) -> None:
    """Raises ValueError unless the binding loss (`diffusion.binding_weight`) can run:
    cached tokens with object cells, and cross-attention whose queries are positions."""
    weight = config.diffusion.binding_weight
    cross = config.model.cross_spectral or config.model.spectral
    if cross != "none":
        raise ValueError(
            f"diffusion.binding_weight={weight} reads each position's attention over the "
            f"caption, but model.cross_spectral={cross!r} makes the queries frequency bins; "
            "set --config.model.cross_spectral=none or the weight to 0"
        )
    check_object_cache(f"diffusion.binding_weight={weight}", cache, "the weight to 0")


def check_object_cache(option: str, cache: t2v_data.TokenCache | None, off: str) -> None:
    """Raises ValueError unless `cache` holds each clip's object cells and phrase ids."""
    if cache is None or not cache.has_objects:
        where = "tokens.source='online'" if cache is None else f"the cache {cache.path!r}"
        raise ValueError(
            f"{option} needs each clip's object cells and phrase ids, which {where} lacks: "
            "use a token cache written from `shapes` clips by this version (delete the old "
            f"one to rebuild it), or set {off}"
        )


def build(config: ml_collections.ConfigDict, workdir: str | None = None) -> Stage:
    """The `t2v` stage (see the module docstring)."""
    if config.tokens.source not in TOKEN_SOURCES:
        raise ValueError(f"tokens.source={config.tokens.source!r}; use one of {TOKEN_SOURCES}")
    tokenizer = t2v_data.load_tokenizer(tokenizer_dir(config, workdir), config.tokenizer_step)
    text = t2v_data.make_text(config)
    use_cache = config.tokens.source == "cache"
    cache = open_cache(config, workdir, tokenizer, text) if use_cache else None
    if config.tokens.get("vocabulary", 0) > 0 and not workdir:
        raise ValueError(
            f"tokens.vocabulary={config.tokens.vocabulary} keeps its codes in <workdir>/t2v; "
            "pass a workdir, or set --config.tokens.vocabulary=0 (all codes)"
        )
    stage_folder = os.path.join(os.path.abspath(workdir), "t2v") if workdir else ""
    tokenizer = with_vocabulary(config, stage_folder, tokenizer, cache)
    denoiser = build_denoiser(config.model, tokenizer, text.dim)
    diffusion = diffusion_config(config, denoiser)
    grid = tokenizer.token_grid(config.data.frames, config.data.height, config.data.width)
    online_text = not use_cache and config.text.mode == "online"

    frozen = {"tokenizer": tokenizer.boxed_params()}
    if online_text:
        ids = jax.ShapeDtypeStruct((1, text.max_length), jnp.int32)
        abstract = jax.eval_shape(
            lambda i: text.module.init(jax.random.key(0), i, jnp.ones(i.shape, bool))["params"],
            ids,
        )
        frozen["text"] = t2v_data.rebox(abstract, text.params, f"text encoder {text.name}")

    # .get: configs saved before these fields existed still build
    binding = config.diffusion.get("binding_weight", 0.0) > 0
    object_extra_weight = config.diffusion.get("object_extra_weight", 0.0)
    object_mask_prob = config.diffusion.get("object_mask_prob", 0.0)
    if binding:
        check_binding(config, cache)
    if object_extra_weight > 0:
        option = f"diffusion.object_extra_weight={object_extra_weight}"
        check_object_cache(option, cache, "it to 0")
    if object_mask_prob > 0:
        check_object_cache(f"diffusion.object_mask_prob={object_mask_prob}", cache, "it to 0")
    objects = binding or object_extra_weight > 0 or object_mask_prob > 0
    if use_cache:
        fields = ("tokens", "text_emb", "text_mask", "fps")
        fields += ("object_cells", "phrase_ids") if objects else ()
    elif online_text:
        fields = ("video", "text_ids", "text_mask", "fps")
    else:
        fields = ("video", "text_emb", "text_mask", "fps")

    def data(split: str, seed: int):
        if use_cache and split == "train":
            return t2v_data.cache_iterator(
                cache,
                global_batch_size=config.train.batch_size,
                seed=seed,
                shuffle=bool(config.data.shuffle),
            )
        if use_cache:  # held-out clips are not in the cache: read them with their pixels
            raise ValueError(
                "the token cache holds the train split only; evaluate() "
                "generates from held-out captions without data('eval')"
            )
        return t2v_data.online_iterator(config, split, seed)

    def inputs(frozen: PyTree, batch: dict) -> dict:
        """The denoiser's inputs: tokens (B, n, h, w) and text (B, L, D), never trained."""
        if "tokens" in batch:  # cached codes
            tokens = tokenizer.codes_to_ids(batch["tokens"])
        else:
            tokens = tokenizer.encode(frozen["tokenizer"], batch["video"])
        if "text_emb" in batch:
            text_emb = batch["text_emb"]
        else:
            text_emb = text.encode(frozen["text"], batch["text_ids"], batch["text_mask"])
        out = {
            "tokens": tokens.astype(jnp.int32),
            "text": jax.lax.stop_gradient(text_emb.astype(jnp.float32)),
            "text_mask": batch["text_mask"].astype(bool),
            "fps": batch["fps"].astype(jnp.float32),
        }
        if objects:
            out["object_cells"] = batch["object_cells"].astype(bool)
            out["phrase_ids"] = batch["phrase_ids"].astype(jnp.int32)
        return out

    def init(rng: jax.Array, batch: dict) -> PyTree:
        b = batch["text_mask"].shape[0]
        tokens = jnp.zeros((b, *grid), jnp.int32)
        text_emb = jnp.zeros((b, batch["text_mask"].shape[1], text.dim), jnp.float32)
        return denoiser.init(
            rng,
            tokens,
            jnp.ones((b,), jnp.float32),
            text_emb,
            batch["text_mask"].astype(bool),
            batch["fps"],
            drop_text=jnp.zeros((b,), bool),
        )["params"]

    def loss(params, frozen, batch, rng, step):
        del step
        with nn.logical_axis_rules(TRANSFORMER_RULES):
            return diffusion_loss(denoiser.apply, params, inputs(frozen, batch), rng, diffusion)

    evaluator = _Evaluator(config, denoiser, tokenizer, text)
    return Stage(
        name="t2v",
        rules=TRANSFORMER_RULES,
        init=init,
        loss=loss,
        data=data,
        evaluate=evaluator,
        frozen=frozen,
        device_fields=fields,
    )
