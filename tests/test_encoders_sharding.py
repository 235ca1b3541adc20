"""Encoders on the fake 8-device mesh: logical names shard them, and tools/t5_memory.py."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from motionaura_jax.encoders.siglip import SiglipVisionConfig, SiglipVisionTower
from motionaura_jax.encoders.t5 import T5Config, T5Encoder, init_t5_params_numpy
from motionaura_jax.parallel.mesh import make_mesh
from motionaura_jax.parallel.rules import get_rules
from motionaura_jax.parallel.sharding import logical_shardings
from tools import t5_memory

CFG = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def test_sharded_t5_matches_single_device():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    module = T5Encoder(CFG)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 12)), jnp.int32)
    mask = jnp.arange(12)[None] < jnp.array([12, 7, 3, 9])[:, None]
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, mask)["params"])
    shardings = logical_shardings(abstract, mesh, get_rules("transformer"))
    params = jax.device_put(init_t5_params_numpy(CFG, 0), shardings)
    assert params["layers"]["attention"]["query"]["kernel"].sharding.spec == P(
        None, "fsdp", "tensor", None
    )
    assert params["layers"]["mlp"]["wo"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")
    assert params["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    sharded = jax.jit(module.apply)(
        {"params": params}, jax.device_put(ids, batch), jax.device_put(mask, batch)
    )
    local = module.apply({"params": init_t5_params_numpy(CFG, 0)}, ids, mask)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(local), atol=1e-5)


def test_siglip_shards_by_logical_names():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=8,
        patch_size=4,
    )
    tower = SiglipVisionTower(cfg)
    abstract = jax.eval_shape(lambda: tower.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    shardings = logical_shardings(abstract["params"], mesh, get_rules("transformer"))
    assert shardings["layers"]["mlp"]["fc1"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert shardings["head"]["attention"]["out"]["kernel"].spec == P("tensor", None, "fsdp")
    assert shardings["patch_embed"]["kernel"].spec == P(None, None, None, "fsdp")


def test_parameter_memory_counts_shards():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    got = t5_memory.parameter_memory(CFG, mesh, jnp.float32)
    d, h, k, f, n, v, b = 32, 4, 8, 64, 2, 64, 32
    sharded_4 = v * d + n * (4 * d * h * k + 3 * d * f)  # over fsdp and tensor
    total = sharded_4 + b * h + (2 * n + 1) * d
    assert got["params"] == total
    assert got["bytes_per_device"] == 4 * (sharded_4 // 4 + b * h // 2 + (2 * n + 1) * d)
    assert got["replicated_params"] == (2 * n + 1) * d


def test_t5_xxl_memory_tool(capsys):
    result = t5_memory.main(["--devices=8", "--fsdp=4", "--tensor=2", "--dtype=bfloat16"])
    d, ff, h, k, layers, vocab = 4096, 10240, 64, 64, 24, 32128
    params = vocab * d + 32 * h + layers * (4 * d * h * k + 2 * d + 3 * d * ff) + d
    assert result["params"] == params  # ~4.76B: the T5-XXL encoder
    assert result["bytes_per_device"] < 2 * params / 8 + 2 * 2 * (2 * layers + 1) * d
    assert '"gib_per_device"' in capsys.readouterr().out
