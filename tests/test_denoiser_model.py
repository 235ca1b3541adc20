"""The spectral transformer against a NumPy reference of Eqs. 2-5, switches, scan, dtypes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motionaura_jax.denoiser.diffusion import masked_cross_entropy
from motionaura_jax.denoiser.model import (
    SpectralTransformer,
    abstract_params,
    count_params,
    group_patches,
    patch_order,
    ungroup_patches,
    variant,
)
from motionaura_jax.parallel import axes

VOCAB, WIDTH, HEADS, TEXT_DIM = 40, 16, 2, 12
B, GRID, S = 2, (2, 2, 3), 4


def _model(**kw):
    base = dict(
        vocab_size=VOCAB,
        width=WIDTH,
        num_heads=HEADS,
        depth=2,
        text_dim=TEXT_DIM,
        mlp_ratio=2.0,
        scan_layers=False,
    )
    return SpectralTransformer(**{**base, **kw})


def _inputs(seed=0, grid=GRID):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB + 1, size=(B,) + grid).astype(np.int32)
    t = rng.uniform(size=(B,)).astype(np.float32)
    text = rng.normal(size=(B, S, TEXT_DIM)).astype(np.float32)
    text_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    fps = np.array([8.0, 24.0], np.float32)
    return tokens, t, text, text_mask, fps


def _random_params(model, seed=1, scale=0.3):
    tokens, t, text, mask, fps = _inputs()
    shapes = nn.unbox(
        jax.eval_shape(
            lambda: model.init(
                jax.random.key(0), tokens, t, text, mask, fps, drop_text=np.zeros(B, bool)
            )["params"]
        )
    )
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    # Random values everywhere (zero-initialised gates would hide whole sub-layers).
    return jax.tree.unflatten(
        tree, [jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32) for x in leaves]
    )


# ---- NumPy reference (independent of the Flax code) -----------------------------------


def _sinusoid(x, dim):
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    ang = np.asarray(x, np.float64)[:, None] * freqs
    return np.concatenate([np.cos(ang), np.sin(ang)], -1)


def _ln(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)


def _silu(x):
    return x / (1 + np.exp(-x))


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _mix(x, mode):
    if mode == "none":
        return x
    f = np.fft.fft2(x, axes=(-2, -1), norm="ortho")  # fft2D over (sequence, embedding)
    return f.real if mode == "real" else f.real - f.imag


def _rope(x, length):
    half = x.shape[-1] // 2
    ang = np.arange(length)[:, None] * 10000.0 ** (-np.arange(half) / half)
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _mha(q, k, v, mask):
    s = np.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask[:, None, None, :], s, -1e30)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("bhlm,bmhd->blhd", s, v)


def _reference(p, tokens, t, text, text_mask, fps, spectral, residual):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b = tokens.shape[0]
    tokens = tokens.reshape(b, -1)
    length = tokens.shape[1]
    x = p["token_embed"][tokens]

    def mlp2(h, q, name):
        h = _silu(h @ q[f"{name}_in"]["kernel"] + q[f"{name}_in"]["bias"])
        return h @ q[f"{name}_out"]["kernel"] + q[f"{name}_out"]["bias"]

    cond = mlp2(_sinusoid(t * 1000.0, 512), p["cond"], "time")
    cond = cond + mlp2(_sinusoid(fps, 512), p["cond"], "fps")
    proj = p["block_mod"]["proj"]
    mods_all = np.einsum("bd,dnk->bnk", _silu(cond), proj["kernel"]) + proj["bias"]

    ctx = text @ p["text_proj"]["kernel"] + p["text_proj"]["bias"]
    ctx = np.where(text_mask[..., None], ctx, 0.0)
    ctx = _mix(ctx, spectral)  # Eq. 4: Re fft2D of the projected text
    ctx_mask = text_mask if spectral == "none" else None

    def self_attn(h, q):
        hf = _mix(h, spectral)  # Eq. 2
        qkv = np.einsum("bld,dchk->blchk", hf, q["qkv"]["kernel"])
        qq, kk = _rope(qkv[:, :, 0], length), _rope(qkv[:, :, 1], length)
        o = np.einsum("blhk,hkd->bld", _mha(qq, kk, qkv[:, :, 2], None), q["out"]["kernel"])
        return _mix(o, spectral)  # Eq. 3: Re ifft2D

    def cross_attn(h, q):
        qq = np.einsum("bld,dhk->blhk", _mix(h, spectral), q["q"]["kernel"])
        kv = np.einsum("bsd,dchk->bschk", ctx, q["kv"]["kernel"])
        o = _mha(qq, kv[:, :, 0], kv[:, :, 1], ctx_mask)
        return _mix(np.einsum("blhk,hkd->bld", o, q["out"]["kernel"]), spectral)  # Eq. 5

    def ff(h, q):
        h = _gelu(h @ q["wi"]["kernel"] + q["wi"]["bias"])
        return h @ q["wo"]["kernel"] + q["wo"]["bias"]

    for i in range(2):
        q = p[f"block_{i}"]
        m = mods_all + q["mod_table"][None]
        subs = [(self_attn, q["self_attn"]), (cross_attn, q["cross_attn"]), (ff, q["mlp"])]
        for j, (sub, sub_params) in enumerate(subs):

            def f(h, sub=sub, sub_params=sub_params):
                return sub(h, sub_params)

            if residual == "paper":
                sh_in, sc_in, sh_out, sc_out, gate = (m[:, 5 * j + k, None] for k in range(5))
                h = _ln(x) * (1 + sc_in) + sh_in  # B_t = AdLN(z_t, t, FPS)
                x = gate * (_ln(f(h)) * (1 + sc_out) + sh_out) + h  # Eq. 3 / Eq. 5
            else:
                sh, sc, gate = (m[:, 3 * j + k, None] for k in range(3))
                x = x + gate * f(_ln(x) * (1 + sc) + sh)
    fm = np.einsum("bd,dnk->bnk", _silu(cond), p["final_mod"]["proj"]["kernel"])
    fm = fm + p["final_mod"]["proj"]["bias"]
    x = _ln(x) * (1 + fm[:, 1, None]) + fm[:, 0, None]
    return x @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.parametrize(
    "spectral,residual", [("real", "paper"), ("hartley", "prenorm"), ("none", "paper")]
)
def test_forward_matches_numpy_reference_of_eqs_2_to_5(spectral, residual):
    model = _model(spectral=spectral, residual=residual)
    params = _random_params(model)
    tokens, t, text, mask, fps = _inputs()
    got = jax.jit(model.apply)({"params": params}, tokens, t, text, mask, fps)
    want = _reference(params, tokens, t, text, mask, fps, spectral, residual)
    assert got.shape == (B, int(np.prod(GRID)), VOCAB)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


# Every spectral x pos_emb pair; residual and scan are chosen so that every pair of values
# of any two of the four switches appears at least once (a pairwise covering design).
SWITCHES = [
    ("real", "rope", "paper", False),
    ("real", "sinusoidal", "paper", False),
    ("real", "rope3d", "prenorm", True),
    ("none", "rope", "paper", False),
    ("none", "sinusoidal", "paper", True),
    ("none", "rope3d", "prenorm", False),
    ("hartley", "rope", "prenorm", True),
    ("hartley", "sinusoidal", "prenorm", False),
    ("hartley", "rope3d", "paper", False),
]


def test_every_switch_combination_runs():
    tokens, t, text, mask, fps = _inputs()
    for spectral, pos_emb, residual, scan in SWITCHES:
        model = _model(
            depth=1, residual=residual, scan_layers=scan, spectral=spectral, pos_emb=pos_emb
        )
        out = jax.jit(model.apply)({"params": _random_params(model)}, tokens, t, text, mask, fps)
        assert out.shape == (B, 12, VOCAB), (spectral, pos_emb, residual, scan)
        assert np.isfinite(out).all(), (spectral, pos_emb, residual, scan)


def test_scan_and_remat_equal_unrolled():
    tokens, t, text, mask, fps = _inputs()
    scanned = _model(scan_layers=True, pos_emb="rope3d")
    params = _random_params(scanned)
    want = jax.jit(scanned.apply)({"params": params}, tokens, t, text, mask, fps)
    unrolled = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(2):
        unrolled[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
    got = jax.jit(scanned.clone(scan_layers=False).apply)(
        {"params": unrolled}, tokens, t, text, mask, fps
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    def loss(p, model):
        return jnp.mean(model.apply({"params": p}, tokens, t, text, mask, fps) ** 2)

    # One compile for the three gradients (compiles dominate this test's time).
    grads = jax.jit(
        lambda p: [jax.grad(loss)(p, scanned.clone(remat=r)) for r in ("none", "full", "dots")]
    )(params)
    for g in grads[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max() + 1e-7
            ),
            g,
            grads[0],
        )


def test_params_have_logical_names_and_counts_are_exact():
    model = _model(scan_layers=True)
    boxed = abstract_params(model)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= set(axes.ALL) | {None}, leaf.names
    assert boxed["blocks"]["self_attn"]["qkv"]["kernel"].names[0] == axes.LAYERS
    real = _random_params(model)
    assert count_params(model) == sum(x.size for x in jax.tree.leaves(real))


def test_bf16_compute_keeps_f32_params_and_is_close_to_f32():
    tokens, t, text, mask, fps = _inputs()
    model = _model(scan_layers=True)
    params = _random_params(model, scale=0.1)
    f32 = jax.jit(model.apply)({"params": params}, tokens, t, text, mask, fps)
    bf16 = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(
        {"params": params}, tokens, t, text, mask, fps
    )
    assert bf16.dtype == jnp.float32
    assert np.abs(np.asarray(bf16) - np.asarray(f32)).max() < 0.1 * np.abs(f32).max()


def test_dropped_text_ignores_the_text():
    tokens, t, text, mask, fps = _inputs()
    model = _model()
    params = _random_params(model)
    drop = np.array([True, False])
    apply = jax.jit(model.apply)
    a = apply({"params": params}, tokens, t, text, mask, fps, drop_text=drop)
    b = apply({"params": params}, tokens, t, text + 1.0, mask, fps, drop_text=drop)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert not np.allclose(a[1], b[1], atol=1e-3)


def test_bad_switches_and_shapes_are_rejected():
    tokens, t, text, mask, fps = _inputs()
    with pytest.raises(ValueError, match="spectral must be one of"):
        _model(spectral="imag").init(jax.random.key(0), tokens, t, text)
    with pytest.raises(ValueError, match="rope3d"):
        _model(pos_emb="rope3d").init(jax.random.key(0), tokens.reshape(B, -1), t, text)
    with pytest.raises(ValueError, match="unknown denoiser variant"):
        variant("XL")
    assert variant("L")["width"] == 4096 and variant("S", depth=3)["depth"] == 3


def test_digit_head_is_the_product_of_per_digit_softmaxes():
    levels = (4, 2, 5)  # 40 codes = VOCAB; digit 0 varies fastest, as in FSQ
    tokens, t, text, mask, fps = _inputs()
    model = _model(code_levels=levels)
    params = _random_params(model)
    # A head that ignores x: its logits are the bias alone, so each code's log-prob is
    # the sum of its digits' log-softmaxed bias entries.
    params["digit_head"]["kernel"] = jnp.zeros_like(params["digit_head"]["kernel"])
    bias = np.asarray(params["digit_head"]["bias"])
    logits = np.asarray(jax.jit(model.apply)({"params": params}, tokens, t, text, mask, fps))
    parts = np.split(bias, np.cumsum(levels)[:-1])
    log_p = [p - np.log(np.exp(p).sum()) for p in parts]
    codes = np.arange(VOCAB)
    want = sum(lp[(codes // b) % lv] for lp, b, lv in zip(log_p, (1, 4, 8), levels))
    np.testing.assert_allclose(logits[0, 0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, rtol=1e-5)
    # Training's digit-space loss is the K-way cross-entropy of these log-probabilities.
    digit_logits = jax.jit(functools.partial(model.apply, digit_logits=True))(
        {"params": params}, tokens, t, text, mask, fps
    )
    assert digit_logits.shape == (*logits.shape[:2], sum(levels))
    targets = jax.random.randint(jax.random.key(1), logits.shape[:2], 0, VOCAB)
    masked = jax.random.bernoulli(jax.random.key(2), 0.5, logits.shape[:2])
    want_loss, want = masked_cross_entropy(logits, targets, masked)
    got_loss, got = masked_cross_entropy(digit_logits, targets, masked, code_levels=levels)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(got["masked_accuracy"], want["masked_accuracy"])
    with pytest.raises(ValueError, match="digit_logits=True"):
        masked_cross_entropy(logits, targets, masked, code_levels=levels)
    with pytest.raises(ValueError, match="digit head"):
        _model().init(jax.random.key(0), tokens, t, text, digit_logits=True)
    # Codes that share digits share embedding rows: 35 embedding rows, not 41.
    assert params["digit_embed"].shape == (sum(levels) + 1, WIDTH)
    with pytest.raises(ValueError, match="code_levels"):
        _model(code_levels=(4, 4)).init(jax.random.key(0), tokens, t, text)


def test_patches_group_grid_neighbours_and_the_head_returns_each_token_its_own_logits():
    grid, patch = (2, 4, 6), (1, 2, 3)
    ids = np.arange(np.prod(grid)).reshape(1, -1, 1)
    grouped = np.asarray(group_patches(jnp.asarray(ids), grid, patch))
    assert grouped.shape == (1, 2 * 2 * 2, 6)
    # Patch 1 of frame 0: rows 0-1, columns 3-5 of the 4 x 6 plane, row-major within.
    np.testing.assert_array_equal(grouped[0, 1], [3, 4, 5, 9, 10, 11])
    np.testing.assert_array_equal(ungroup_patches(jnp.asarray(grouped), grid, patch), ids)

    tokens, t, text, mask, fps = _inputs()  # grid (2, 2, 3)
    patch = (2, 2, 1)  # 3 positions of 4 tokens
    model = _model(patch=patch, pos_emb="rope3d")
    params = _random_params(model)
    assert params["patch_embed"]["proj"]["kernel"].shape == (4 * WIDTH, WIDTH)
    # A head that ignores x returns its bias: slot s of a position's 4 * K outputs belongs
    # to the patch's s-th token (frame-major, then row, then column).
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    bias = np.asarray(params["head"]["bias"]).reshape(4, VOCAB)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, tokens, t, text, mask, fps))
    assert logits.shape == (B, 12, VOCAB)
    f, r, c = np.unravel_index(np.arange(12), GRID)
    np.testing.assert_allclose(logits[1], bias[(f % 2) * 2 + (r % 2)], rtol=1e-6)
    # grid_order=False leaves them in patch order: token patch_order(ids)[i] at row i.
    params["head"]["kernel"] = _random_params(model)["head"]["kernel"]
    grid_logits = jax.jit(model.apply)({"params": params}, tokens, t, text, mask, fps)
    patch_logits = jax.jit(functools.partial(model.apply, grid_order=False))(
        {"params": params}, tokens, t, text, mask, fps
    )
    order = np.asarray(patch_order(jnp.arange(12).reshape(1, *GRID), patch))[0]
    assert sorted(order) == list(range(12)) and list(order) != list(range(12))
    np.testing.assert_allclose(patch_logits, np.asarray(grid_logits)[:, order], rtol=1e-6)
    for bad, match in [
        (dict(patch=(1, 2, 2)), "divisible"),  # 3 columns
        (dict(patch=(2, 2, 1), code_levels=(4, 2, 5)), "K-way head"),
        (dict(patch=(0, 1, 1)), "positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            _model(**bad).init(jax.random.key(0), tokens, t, text)
    with pytest.raises(ValueError, match="divisible"):
        model.clone(pos_emb="rope").init(jax.random.key(0), tokens.reshape(B, -1), t, text)


def test_plain_cross_attention_under_spectral_self_attention_masks_text_padding():
    tokens, t, text, mask, fps = _inputs()
    model = _model(spectral="real", cross_spectral="none")
    params = _random_params(model)
    apply = jax.jit(model.apply)
    a = apply({"params": params}, tokens, t, text, mask, fps)
    padded = np.where(mask[..., None], text, 5.0)  # only padding rows change
    np.testing.assert_allclose(
        apply({"params": params}, tokens, t, padded, mask, fps), a, atol=1e-5
    )
    # With Eq. 4's spectral cross-attention ('' = follow `spectral`) the text is mixed by the
    # FFT, and the model differs from the plain cross-attention one.
    paper = apply({"params": params}, tokens, t, text, mask, fps)
    assert not np.allclose(
        jax.jit(model.clone(cross_spectral="").apply)(
            {"params": params}, tokens, t, text, mask, fps
        ),
        paper,
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="cross_spectral must be one of"):
        _model(cross_spectral="imag").init(jax.random.key(0), tokens, t, text)


def _check_text_option(model, params, extra_params):
    """What a caption option must keep: padding rows and a dropped caption reach nothing,
    and the option changes the output (against the same weights without `extra_params`).
    Returns the inputs, the jitted apply and the output without the option."""
    tokens, t, text, mask, fps = _inputs()
    apply = jax.jit(model.apply)
    out = apply({"params": params}, tokens, t, text, mask, fps)
    assert out.shape == (B, 12, VOCAB) and np.isfinite(out).all()
    padded = np.where(mask[..., None], text, 5.0)  # only padding rows change
    np.testing.assert_allclose(
        apply({"params": params}, tokens, t, padded, mask, fps), out, atol=1e-5
    )
    plain = {k: v for k, v in params.items() if k not in extra_params}
    without = jax.jit(model.clone(text_tokens=False, text_pool=False).apply)(
        {"params": plain}, tokens, t, text, mask, fps
    )
    assert not np.allclose(without, out, atol=1e-3)
    # A dropped caption reaches the model only as the null text.
    drop = np.array([True, False])
    a = apply({"params": params}, tokens, t, text, mask, fps, drop_text=drop)
    b = apply({"params": params}, tokens, t, text + 1.0, mask, fps, drop_text=drop)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert not np.allclose(a[1], b[1], atol=1e-3)
    return (tokens, t, text, mask, fps), apply, without


def test_text_tokens_join_the_sequence_without_padding_and_follow_text_dropout():
    model = _model(text_tokens=True, cross_spectral="none")
    _check_text_option(model, _random_params(model), ("text_tokens",))


def test_pooled_text_adds_to_the_condition_without_padding_and_follows_text_dropout():
    model = _model(text_pool=True, cross_spectral="none")
    params = _random_params(model)
    inputs, apply, without = _check_text_option(model, params, ("pool_in", "pool_out"))
    # With its output layer at zero the pooled term adds nothing: the model without it.
    zeroed = dict(params, pool_out=jax.tree.map(jnp.zeros_like, params["pool_out"]))
    np.testing.assert_allclose(apply({"params": zeroed}, *inputs), without, atol=1e-6)


@pytest.mark.parametrize("patch", [(1, 1, 1), (1, 2, 1)])
def test_code_vectors_add_a_shared_embedding_and_a_dot_product_logit(patch):
    """`code_vectors`: codes with one vector share the vector terms of their embedding and
    logits, and a head of the vector term alone scores every code by query . vector."""
    vectors = np.random.default_rng(3).normal(size=(VOCAB, 3)).astype(np.float32)
    vectors[1] = vectors[0]  # codes 0 and 1 decode alike
    tokens, t, text, mask, fps = _inputs()
    model = _model(code_vectors=vectors, patch=patch)
    params = _random_params(model)
    assert params["code_vector_embed"]["kernel"].shape == (3, WIDTH)
    cells = int(np.prod(patch))
    assert params["code_vector_head"]["kernel"].shape == (WIDTH, cells * 3)
    # The K-way table rows of codes 0 and 1 made equal: the two then embed identically,
    # so swapping one for the other anywhere changes nothing.
    params["token_embed"] = params["token_embed"].at[1].set(params["token_embed"][0])
    apply = jax.jit(model.apply)
    swapped = np.where(tokens == 0, 1, tokens)
    logits = np.asarray(apply({"params": params}, tokens, t, text, mask, fps))
    np.testing.assert_allclose(
        apply({"params": params}, swapped, t, text, mask, fps), logits, rtol=1e-5, atol=1e-5
    )
    # Without the table head (zero kernel and bias), codes 0 and 1 get equal logits, and
    # the logits are exactly the dot products of one query per cell with the vectors.
    params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
    logits = np.asarray(apply({"params": params}, tokens, t, text, mask, fps))
    np.testing.assert_allclose(logits[..., 0], logits[..., 1], rtol=1e-6)
    rank = np.linalg.matrix_rank(logits.reshape(-1, VOCAB).astype(np.float64), tol=1e-4)
    assert rank == 3  # every cell's logits lie in the span of the 3 vector columns
    # Without vectors the parameter tree is the paper's.
    assert "code_vector_head" not in _random_params(_model(patch=patch))
    with pytest.raises(ValueError, match=r"code_vectors must be \(40, F\).*code_features"):
        _model(code_vectors=vectors[:5]).init(jax.random.key(0), tokens, t, text)
