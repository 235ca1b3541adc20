"""LoRA wiring of the stage-3 denoiser (D10): exact start, frozen split, merge, statistics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.denoiser.model import SpectralTransformer
from motionaura_jax.inpaint import model as inpaint_model
from motionaura_jax.nn import lora as lora_lib

B, GRID, TEXT, P, DS = 2, (2, 2, 2), 5, 4, 12
KW = dict(vocab_size=40, width=32, num_heads=2, depth=2, text_dim=16, time_emb_dim=32)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    z_t = rng.integers(0, 41, (B, *GRID)).astype(np.int32)  # includes [MASK] = 40
    z_m = rng.integers(0, 40, (B, *GRID)).astype(np.int32)
    feats = rng.standard_normal((B, P, DS)).astype(np.float32)
    t = np.array([0.3, 0.9], np.float32)
    text = rng.standard_normal((B, TEXT, 16)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    return z_t, z_m, feats, t, text, mask, np.full((B,), 8.0, np.float32), np.array([0, 1], bool)


@functools.cache
def _build(kind, rank, scan, depth, context, patch):
    base = SpectralTransformer(**{**KW, "depth": depth}, scan_layers=scan, patch=patch)
    adapted = base.clone(lora_rank=rank, lora_kind=kind, lora_alpha=2.0)
    model = inpaint_model.InpaintDenoiser(adapted, context=context)
    with jax.default_prng_impl("unsafe_rbg"):  # compiles in a fraction of threefry's time
        full = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), *inputs())["params"])
    trainable, base_params = inpaint_model.split_trainable(full)
    # The split's frozen part is exactly the stage-2 module's parameter tree.
    stage2 = jax.eval_shape(base.init, jax.random.PRNGKey(2), inputs()[0], inputs()[3], inputs()[4])
    shape = lambda x: (x.shape, x.dtype)  # noqa: E731
    assert jax.tree.map(shape, nn.meta.unbox(stage2["params"])) == jax.tree.map(shape, base_params)
    # A "trained" base: the init plus noise on every weight. A fresh init would not do: its
    # AdaLN gates start small, so the blocks (and the adapters) barely affect the output.
    rng = np.random.default_rng(2)
    trained = jax.tree.map(
        lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), base_params
    )
    return base, model, trainable, trained


def build(kind="adapter", rank=4, scan=True, depth=None, context="concat", patch=(1, 1, 1)):
    """(base, adapted model, trainable params, "trained" base params); fresh copies.

    Default depth: 2 blocks scanned (per-layer stacks), 1 block unscanned (`block_0`; more
    blocks only repeat it, at the cost of tracing and compiling each).
    """
    depth = depth or (2 if scan else 1)
    base, model, trainable, trained = _build(kind, rank, scan, depth, context, patch)
    copy = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731
    return base, model, copy(trainable), copy(trained)


def test_lora_off_keeps_the_stage2_parameter_tree():
    base = SpectralTransformer(**KW)
    off = base.clone(lora_rank=0)
    z_t, _, _, t, text, *_ = inputs()

    def shapes(module):
        params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), z_t, t, text))
        flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params["params"]))[0]
        return {jax.tree_util.keystr(p): x.shape for p, x in flat}

    assert shapes(base) == shapes(off)
    lora_keys = sorted(k for k in shapes(base.clone(lora_rank=4)) if "_lora" in k)
    assert lora_keys == sorted(
        f"['blocks']['{m}']['{n}']['{w}']"
        for m, n in [
            ("self_attn", "q_lora"),
            ("self_attn", "k_lora"),
            ("cross_attn", "q_lora"),
            ("cross_attn", "k_lora"),
            ("mlp", "out_lora"),
        ]
        for w in ("down", "up")
    )


def adapted_and_base(base, model, full, base_params, batch):
    """(the adapted model on `full`, the base module on `base_params`) on the same inputs;
    the base gets the same extra sequence (masked-video table + sketch MLP outputs)."""
    z_t, z_m, feats, t, text, mask, fps, drop = batch
    ours = model.apply({"params": full}, z_t, z_m, feats, t, text, mask, fps, drop)
    zm = jnp.take(full["masked_embed"], z_m.reshape(B, -1), axis=0)
    sk = inpaint_model.SketchProjector(32).apply({"params": full["sketch_mlp"]}, feats)
    extra = jnp.concatenate([zm, sk], axis=1)
    ref = base.apply({"params": base_params}, z_t, t, text, mask, fps, drop, extra_embeds=extra)
    return ours, ref


@pytest.mark.parametrize(
    "kind,scan,eager", [("adapter", False, True), ("adapter", True, False), ("linear", True, False)]
)
def test_adapted_model_equals_base_exactly_at_init(kind, scan, eager):
    base, model, trainable, trained = build(kind, scan=scan)
    stats = inpaint_model.down_statistics(trained, trainable)
    trainable = inpaint_model.redraw_downs(trainable, stats, jax.random.PRNGKey(3))
    full = inpaint_model.merge_params(trainable, trained)

    def both(full, trained):
        return adapted_and_base(base, model, full, trained, inputs())

    # ... and the adapters are live: a nonzero W_up changes the output.
    bumped = jax.tree.map(lambda x: x, trainable)
    leaf = "up" if kind == "adapter" else "b"
    q = bumped["base"]["blocks" if scan else "block_0"]["self_attn"]["q_lora"]
    q[leaf] = q[leaf] + 0.1
    bumped_full = inpaint_model.merge_params(bumped, trained)
    # Op by op the adapted model computes the base's ops on the same inputs plus exact
    # zeros: bitwise equal. Compiled as one program, XLA may fuse the extra adds into the
    # matmuls and reorder float sums, so there the bound is float32 round-off.
    if eager:
        with jax.disable_jit():
            ours, ref = both(full, trained)
            changed, _ = both(bumped_full, trained)
        assert ours.shape == (B, 8, 40)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    else:
        compiled = jax.jit(both)
        ours, ref = compiled(full, trained)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=2e-6)
        changed, _ = compiled(bumped_full, trained)  # same shapes: no second compile
    assert not np.allclose(np.asarray(changed), np.asarray(ref))


@pytest.mark.parametrize("patch", [(1, 1, 1), (1, 2, 2)])
def test_summed_context_starts_equal_to_base_and_reads_the_masked_video(patch):
    # context="sum": z_m's embedding is added to z_t's at the same cell; its table starts
    # at zero, so at init the model is the base on z_t with only the sketch tokens appended.
    # A patched base (model.patch) groups z_t + z_m cells into positions after the sum.
    base, model, trainable, trained = build(context="sum", patch=patch)
    assert not np.any(trainable["masked_embed"])
    z_t, z_m, feats, t, text, mask, fps, drop = inputs()

    @jax.jit
    def both(trainable, z_m):
        full = inpaint_model.merge_params(trainable, trained)
        ours = model.apply({"params": full}, z_t, z_m, feats, t, text, mask, fps, drop)
        sk = inpaint_model.SketchProjector(32).apply({"params": full["sketch_mlp"]}, feats)
        ref = base.apply({"params": trained}, z_t, t, text, mask, fps, drop, extra_embeds=sk)
        return ours, ref

    ours, ref = both(trainable, z_m)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=2e-6)
    # A trained table makes the output depend on z_m, cell by cell.
    rng = np.random.default_rng(5)
    trainable["masked_embed"] = rng.standard_normal(trainable["masked_embed"].shape) * 0.5
    trainable["masked_embed"] = trainable["masked_embed"].astype(np.float32)
    before, _ = both(trainable, z_m)
    other = z_m.copy()
    other[0, 0, 0, 0] = (other[0, 0, 0, 0] + 1) % 40
    after, _ = both(trainable, other)
    assert not np.allclose(np.asarray(before), np.asarray(ref))
    assert not np.allclose(np.asarray(after[0]), np.asarray(before[0]))
    np.testing.assert_allclose(np.asarray(after[1]), np.asarray(before[1]), rtol=0, atol=2e-6)
    if patch != (1, 1, 1):  # appended z_m takes one position per patch, trainably embedded
        concat = model.clone(context="concat")
        params = jax.eval_shape(concat.init, jax.random.PRNGKey(0), *inputs())["params"]
        trainable, _ = inpaint_model.split_trainable(nn.meta.unbox(params))
        assert "masked_patch_embed" in trainable
        logits = jax.eval_shape(concat.apply, {"params": params}, *inputs())
        assert logits.shape == (B, int(np.prod(GRID)), KW["vocab_size"])


@pytest.mark.parametrize("neighbours", [False, True])
def test_cell_logits_start_at_zero_and_read_their_own_cells_masked_token(neighbours):
    # cell_logits: z_m's token at a cell adds to that cell's logits alone (patched bases
    # predict 2 x 2 cells from one position), or with `cell_neighbours` to the logits of
    # the cells around it in its frame too; its last layer starts at zero.
    base, model, trainable, trained = build(context="sum", patch=(1, 2, 2))
    cells = model.clone(cell_logits=True, cell_neighbours=neighbours)
    params = nn.meta.unbox(cells.init(jax.random.PRNGKey(3), *inputs())["params"])
    extra, _ = inpaint_model.split_trainable(params)
    assert set(extra) == set(trainable) | {"cell_logits"}
    assert not np.any(extra["cell_logits"]["out"]["kernel"])
    trainable["cell_logits"] = extra["cell_logits"]
    z_t, z_m, feats, t, text, mask, fps, drop = inputs()

    @jax.jit
    def both(trainable, z_m):
        full = inpaint_model.merge_params(trainable, trained)
        ours = cells.apply({"params": full}, z_t, z_m, feats, t, text, mask, fps, drop)
        without = {k: v for k, v in full.items() if k != "cell_logits"}
        ref = model.apply({"params": without}, z_t, z_m, feats, t, text, mask, fps, drop)
        return ours, ref

    ours, ref = both(trainable, z_m)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    rng = np.random.default_rng(6)
    out = trainable["cell_logits"]["out"]
    out["kernel"] = rng.standard_normal(out["kernel"].shape).astype(np.float32)
    if neighbours:
        around = trainable["cell_logits"]["neighbours"]
        assert not np.any(around["kernel"])  # zero at the start
        around["kernel"] = rng.standard_normal(around["kernel"].shape).astype(np.float32)
    before, _ = both(trainable, z_m)
    other = z_m.copy()
    other[0, 1, 1, 0] = (other[0, 1, 1, 0] + 1) % 40  # cell 6 of clip 0 (grid order)
    after, _ = both(trainable, other)
    changed = np.abs(np.asarray(after) - np.asarray(before)).max(-1) > 1e-6
    expected = np.zeros_like(changed)
    # masked_embed is still zero: only this cell's offset moves, or with its neighbours
    # every cell of that (2 x 2) frame.
    expected[0, [4, 5, 6, 7] if neighbours else [6]] = True
    np.testing.assert_array_equal(changed, expected)
    with pytest.raises(ValueError, match="cell_logits needs the K-way head"):
        digit = base.clone(vocab_size=64, code_levels=(8, 8), patch=(1, 1, 1), lora_rank=4)
        inpaint_model.InpaintDenoiser(digit, context="sum", cell_logits=True).init(
            jax.random.PRNGKey(0), *inputs()
        )
    with pytest.raises(ValueError, match="cell_neighbours widens the per-cell logits"):
        model.clone(cell_neighbours=True).init(jax.random.PRNGKey(0), *inputs())


def test_split_holds_only_adapters_embeddings_and_sketch_mlp():
    _, _, trainable, trained = build()
    assert set(trainable) == {"base", "masked_embed", "sketch_mlp"}
    names = {
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(trainable["base"])[0]
    }
    assert names and all("_lora" in n for n in names)
    base_names = {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trained)[0]
    }
    assert not any("_lora" in n for n in base_names)
    n_lora = lora_lib.count_params(trainable["base"])
    # Per block: 4 attention adapters 32 -> 4 -> (2, 16) and one FF adapter 32 -> 4 -> 32.
    assert n_lora == KW["depth"] * (4 * (32 * 4 + 4 * 32) + (32 * 4 + 4 * 32))
    total = lora_lib.count_params(trainable) + lora_lib.count_params(trained)
    print(f"trainable {lora_lib.count_params(trainable)} of {total} parameters")
    assert lora_lib.count_params(trainable) < total


def test_down_redrawn_per_block_from_base_statistics():
    _, _, trainable, trained = build(depth=2)
    kernel = np.asarray(trained["blocks"]["mlp"]["wo"]["kernel"])  # (layers, 128, 32)
    kernel = kernel * np.array([1.0, 5.0])[:, None, None] + np.array([0.0, 0.3])[:, None, None]
    trained["blocks"]["mlp"]["wo"]["kernel"] = kernel
    stats = inpaint_model.down_statistics(trained, trainable)
    np.testing.assert_allclose(
        stats[("blocks", "mlp", "out_lora")][1], [kernel[1].mean(), kernel[1].std()], rtol=1e-5
    )
    fresh = inpaint_model.redraw_downs(trainable, stats, jax.random.PRNGKey(0))
    down = np.asarray(fresh["base"]["blocks"]["mlp"]["out_lora"]["down"])
    assert abs(down[1].mean() - kernel[1].mean()) < 0.3 * kernel[1].std()
    assert abs(down[1].std() / kernel[1].std() - 1) < 0.25
    assert down[0].std() < 0.5 * down[1].std()
    q_base = np.asarray(trained["blocks"]["self_attn"]["qkv"]["kernel"])[:, :, 0]
    np.testing.assert_allclose(
        stats[("blocks", "self_attn", "q_lora")][0], [q_base[0].mean(), q_base[0].std()], rtol=1e-5
    )


@pytest.mark.parametrize("scan", [True, False])
def test_merged_linear_lora_equals_unmerged_model(scan):
    base, model, trainable, trained = build("linear", scan=scan)
    rng = np.random.default_rng(0)
    noisy = jax.tree.map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), trainable["base"]
    )
    full = inpaint_model.merge_params({**trainable, "base": noisy}, trained)
    merged = inpaint_model.merge_linear_lora(full, alpha=2.0)

    @jax.jit
    def outputs(full, base_params):
        return adapted_and_base(base, model, full, base_params, inputs())

    unmerged, out = map(np.asarray, outputs(full, merged))
    np.testing.assert_allclose(out, unmerged, rtol=2e-4, atol=2e-4)
    _, without_lora = outputs(full, trained)  # same shapes: no second compile
    assert not np.allclose(out, np.asarray(without_lora), atol=1e-3)


def test_gelu_adapters_refuse_to_merge():
    _, _, trainable, trained = build("adapter")
    with pytest.raises(ValueError, match="cannot be merged.*lora.kind='linear'"):
        inpaint_model.merge_linear_lora(inpaint_model.merge_params(trainable, trained), 1.0)


def test_dropped_sketch_is_ignored_and_sketch_guidance_at_one_is_the_conditional_model():
    from motionaura_jax.inpaint.sampling import guided_inpaint_logits

    _, model, trainable, trained = build()
    full = inpaint_model.merge_params(trainable, trained)
    z_t, z_m, feats, t, text, mask, fps, _ = inputs()
    other = inputs(seed=5)[2]  # another sketch
    keep = np.zeros((B,), bool)

    @jax.jit  # one compile for the five calls (eagerly each took about 5 s)
    def apply(sketch, drop_sketch):
        return model.apply(
            {"params": full}, z_t, z_m, sketch, t, text, mask, fps, keep, drop_sketch=drop_sketch
        )

    def run(sketch, drop_sketch):
        return np.asarray(apply(sketch, drop_sketch))

    dropped = np.ones((B,), bool)
    np.testing.assert_array_equal(run(feats, dropped), run(other, dropped))
    assert not np.allclose(run(feats, keep), run(other, keep))
    for guide_sketch in (False, True):
        fn = guided_inpaint_logits(model, full, z_m, feats, text, mask, fps, 1.0, guide_sketch)
        np.testing.assert_allclose(np.asarray(fn(z_t, t)), run(feats, keep), atol=2e-5)
    # At s = 2 the sketch-guided logits differ from the text-only ones (l_u differs).
    text_only = guided_inpaint_logits(model, full, z_m, feats, text, mask, fps, 2.0, False)
    both = guided_inpaint_logits(model, full, z_m, feats, text, mask, fps, 2.0, True)
    assert not np.allclose(np.asarray(text_only(z_t, t)), np.asarray(both(z_t, t)))
