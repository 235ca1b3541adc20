"""Tiny stage checkpoints shared by the t2v, generate and inpaint tests.

A later stage needs only an earlier stage's *finished checkpoint*, not a trained model:
`save_initial_checkpoint` writes the freshly initialised state where `loop.train` would
(`<workdir>/<stage>/checkpoints/0`), so these fixtures cost one init compile per stage
instead of a train step and an evaluation. Two session runs do go through `loop.train`
for a couple of steps (t2v and inpaint), each shared by every test that needs it.

Test modules load the fixtures with `pytest_plugins = ["tests.stage_fixtures"]`, which
registers them once per session (a fixture imported into several modules would be built
once per module). PYTEST_DONT_REWRITE: this module holds no asserts, and the test modules
import its helpers before pytest would register it for assertion rewriting.
"""

import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import config as config_lib
from motionaura_jax.parallel import mesh as mesh_lib
from motionaura_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "configs", "tokenizer.py:toy")
T2V = os.path.join(ROOT, "configs", "t2v.py:toy")
INPAINT = os.path.join(ROOT, "configs", "inpaint.py:toy")

# The toy tokenizer's layout (so its compression, whatever the toy config says), narrowed
# by `tokenizer_overrides`, which also drops the keys the toy config does not have.
TINY_TOKENIZER = [
    "model.depthwise_impl=grouped",  # one conv op: compiles faster than 27 shifted taps
    "eval.num_clips=2",
    "eval.batch_size=2",
    "train.num_steps=1",
    "train.batch_size=8",
    "train.async_checkpoint=False",
    "train.max_seconds=0.0",
]
TINY_T2V = [
    "model.width=32",
    "model.num_heads=2",
    "model.depth=1",
    "model.time_emb_dim=32",
    "text.builtin.d_model=32",
    "text.builtin.num_layers=1",
    "text.builtin.num_heads=2",
    "text.builtin.d_kv=16",
    "text.builtin.d_ff=64",
    "train.batch_size=8",
    "train.num_steps=2",
    "train.log_every=1",
    "train.async_checkpoint=False",
    "train.max_seconds=0.0",
    "tokens.cache_clips=8",  # = train.batch_size: every batch holds the same 8 clips
    "eval.num_prompts=2",
    "eval.batch_size=2",
    "eval.steps=2",
]
TINY_INPAINT = [
    "lora.rank=4",
    "sketch.builtin.hidden_size=32",
    "sketch.builtin.intermediate_size=64",
    "sketch.builtin.num_hidden_layers=1",
    "sketch.builtin.num_attention_heads=2",
    "cache.num_clips=8",
    "train.batch_size=8",
    "train.num_steps=2",
    "train.log_every=1",
    "train.async_checkpoint=False",
    "train.max_seconds=0.0",
    "eval.num_clips=2",
    "eval.batch_size=2",
    "eval.steps=2",
]


def run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `tools/<script>` of this checkout in a fresh interpreter; output captured."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def tokenizer_overrides() -> list[str]:
    """TINY_TOKENIZER plus widths of at most 8 and at most one block a stage (never more
    than the toy has), restricted to the keys the toy config has."""
    toy = config_lib.load_config(TOKENIZER)
    model = toy.model
    narrow = [f"model.stem_width={min(model.stem_width, 8)}"]
    for field, most in (("widths", 8), ("depths", 1), ("decoder_widths", 8), ("decoder_depths", 1)):
        if field in model and len(model[field]):
            narrow.append(f"model.{field}={tuple(min(v, most) for v in model[field])}")
    keys = set(config_lib.all_keys(toy))
    return [o for o in narrow + TINY_TOKENIZER if o.partition("=")[0] in keys]


def tokenizer_config(*overrides: str) -> ml_collections.ConfigDict:
    return config_lib.load_config(TOKENIZER, [*tokenizer_overrides(), *overrides])


def t2v_config(*overrides: str) -> ml_collections.ConfigDict:
    return config_lib.load_config(T2V, [*TINY_T2V, *overrides])


def inpaint_config(*overrides: str) -> ml_collections.ConfigDict:
    return config_lib.load_config(INPAINT, [*TINY_INPAINT, *overrides])


def single_device_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """`config.mesh` on one device: the tests' 8 fake devices make compiles slower, and
    sharding is tested elsewhere."""
    return mesh_lib.make_mesh(config.mesh, jax.local_devices()[:1])


def save_initial_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes `config`'s freshly initialised train state as the stage's finished step 0,
    laid out as `loop.train` lays out its checkpoints; returns `<workdir>/<stage>`."""
    # One device, and RBG keys: the init compiles in seconds rather than tens of seconds
    # (threefry's per-parameter code), and Orbax saves whole arrays, not 8 replica slices.
    with jax.default_prng_impl("unsafe_rbg"):
        built = loop.setup(config, mesh=single_device_mesh(config), workdir=workdir)
    folder = loop.stage_dir(workdir, built.stage.name)
    checkpointer = checkpoint_lib.StageCheckpointer(
        os.path.join(folder, "checkpoints"), stage=config.stage, async_save=False
    )
    checkpointer.save(0, built.state, config, built.data, force=True)
    checkpointer.close()
    return folder


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> str:
    """A workdir with untrained tokenizer and t2v checkpoints and the t2v token cache
    (written by the t2v stage at start-up, `tokens.build_cache`)."""
    workdir = str(tmp_path_factory.mktemp("base_run"))
    save_initial_checkpoint(tokenizer_config(), workdir)
    save_initial_checkpoint(t2v_config(), workdir)
    return workdir


def t2v_run_config(base_run: str) -> ml_collections.ConfigDict:
    """The run of `t2v_run`: `base_run`'s tokenizer and token cache (whose 8 clips are
    every batch: a fixed batch), a constant learning rate, 20 steps."""
    return t2v_config(
        f"tokenizer_dir={os.path.join(base_run, 'tokenizer')}",
        f"tokens.cache_path={os.path.join(base_run, 't2v_tokens.npz')}",
        "optimizer.lr=3e-3",
        "optimizer.warmup_steps=0",
        "optimizer.schedule=constant",
        "train.num_steps=20",
    )


@pytest.fixture(scope="session")
def t2v_run(base_run, tmp_path_factory) -> str:
    """A workdir whose t2v stage `loop.train` ran (`t2v_run_config`), with its metrics and
    final evaluation."""
    workdir = str(tmp_path_factory.mktemp("t2v_run"))
    loop.train(t2v_run_config(base_run), workdir)
    return workdir


@pytest.fixture(scope="session")
def inpaint_run(base_run, tmp_path_factory) -> str:
    """A workdir whose inpaint stage `loop.train` ran for 2 steps on `base_run`'s t2v."""
    workdir = str(tmp_path_factory.mktemp("inpaint_run"))
    loop.train(inpaint_config(f"base_dir={os.path.join(base_run, 't2v')}"), workdir)
    return workdir
