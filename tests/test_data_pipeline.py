"""Grain pipeline: resume, host sharding, bucket sampling, eval batches."""

import numpy as np
import pytest

from motionaura_jax.data import config as config_lib
from motionaura_jax.data import pipeline


def _cfg(**overrides):
    cfg = config_lib.shapes_config()
    cfg.frames, cfg.height, cfg.width = 5, 32, 32  # small clips keep these tests fast
    cfg.num_train, cfg.num_eval = 64, 20
    cfg.update(overrides)
    return cfg


def _indices(it, steps):
    return [next(it)["index"].tolist() for _ in range(steps)]


def test_batches_have_per_host_shapes_and_object_captions():
    it = pipeline.make_iterator(
        _cfg(), split="train", global_batch_size=8, seed=0, process_index=0, process_count=2
    )
    batch = next(it)
    assert batch["video"].shape == (4, 5, 32, 32, 3) and batch["video"].dtype == np.float32
    assert batch["masks"].shape == (4, 2, 5, 32, 32)
    assert batch["caption"].dtype == object and isinstance(batch["caption"][0], str)
    assert batch["color"].shape == (4, 2) and int(batch["bucket"]) == 0


def test_resume_gives_identical_batches():
    cfg = _cfg()
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=8, seed=3, process_index=0, process_count=1
    )
    _indices(it, 5)  # crosses the first epoch boundary (64 / 8 = 8 steps)... halfway
    state = it.get_state()
    expected = [next(it) for _ in range(6)]  # crosses into epoch 2
    resumed = pipeline.make_iterator(
        cfg, split="train", global_batch_size=8, seed=3, process_index=0, process_count=1
    )
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_epochs_cover_every_example_and_reshuffle():
    it = pipeline.make_iterator(
        _cfg(), split="train", global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    epoch1, epoch2 = sum(_indices(it, 8), []), sum(_indices(it, 8), [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(64))
    assert epoch1 != epoch2 and epoch1 != list(range(64))
    other_seed = pipeline.make_iterator(
        _cfg(), split="train", global_batch_size=8, seed=1, process_index=0, process_count=1
    )
    assert sum(_indices(other_seed, 8), []) != epoch1


def test_hosts_read_disjoint_shards():
    seen = []
    for host in range(4):
        it = pipeline.make_iterator(
            _cfg(), split="train", global_batch_size=8, seed=0, process_index=host, process_count=4
        )
        seen.append(set(sum(_indices(it, 8), [])))  # 8 steps x 2 = one epoch of 16
    assert all(len(s) == 16 for s in seen)
    assert set.union(*seen) == set(range(64))
    with pytest.raises(ValueError, match="not divisible by 3 hosts"):
        pipeline.make_iterator(
            _cfg(), split="train", global_batch_size=8, seed=0, process_index=0, process_count=3
        )


def test_eval_split_reads_once_in_order_with_partial_last_batch():
    it = pipeline.make_iterator(
        _cfg(), split="eval", global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    sizes, indices = [], []
    for batch in it:
        sizes.append(len(batch["index"]))
        indices += batch["index"].tolist()
    assert sizes == [8, 8, 4] and indices == list(range(20))
    batches = pipeline.eval_batches(_cfg(), num_clips=10, batch_size=4)
    assert [len(b["caption"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(10))
    with pytest.raises(ValueError, match="num_clips=50 but split 'eval' has 20"):
        pipeline.eval_batches(_cfg(), num_clips=50, batch_size=4)


BUCKETS = (
    {"frames": 5, "height": 32, "width": 32, "batch_size": 4, "ratio": 0.6},
    {"frames": 1, "height": 32, "width": 48, "batch_size": 8, "ratio": 0.3},
    {"frames": 9, "height": 16, "width": 16, "batch_size": 2, "ratio": 0.1},
)


def test_bucket_sampler_follows_ratios_and_is_deterministic():
    specs = config_lib.bucket_specs(_cfg(buckets=BUCKETS), 8)
    plan = pipeline.BatchPlan(specs, 64, seed=0)
    draws = np.array([plan.bucket_of(i) for i in range(5000)])
    np.testing.assert_allclose(np.bincount(draws) / len(draws), [0.6, 0.3, 0.1], atol=0.025)
    again = pipeline.BatchPlan(specs, 64, seed=0)
    assert all(again.bucket_of(i) == draws[i] for i in range(0, 5000, 7))
    other = np.array([pipeline.BatchPlan(specs, 64, seed=1).bucket_of(i) for i in range(200)])
    assert (other != draws[:200]).any()
    # Far-away steps are reachable directly and agree with the sequential walk.
    fresh = pipeline.BatchPlan(specs, 64, seed=0)
    for step in (4999, 3000, 17):
        assert fresh(step)[1].tolist() == plan(step)[1].tolist()
    # Each bucket walks its own stream: its first batches cover its epoch exactly.
    firsts = [s for s in range(5000) if draws[s] == 1][:8]  # 8 batches x 8 = 64 examples
    assert sorted(np.concatenate([plan(s)[1] for s in firsts]).tolist()) == list(range(64))


def test_bucketed_iterator_shapes_and_resume():
    cfg = _cfg(buckets=BUCKETS)
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    shapes = {2: (2, 9, 16, 16, 3), 1: (8, 1, 32, 48, 3), 0: (4, 5, 32, 32, 3)}
    for _ in range(6):
        batch = next(it)
        assert batch["video"].shape == shapes[int(batch["bucket"])]
    state = it.get_state()
    want = [next(it)["index"].tolist() for _ in range(4)]
    it.set_state(state)
    assert [next(it)["index"].tolist() for _ in range(4)] == want


def test_worker_processes_give_the_same_batches():
    cfg = _cfg()
    inline = pipeline.make_iterator(
        cfg, split="train", global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    want = _indices(inline, 4)
    cfg.num_workers = 2
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    try:
        assert _indices(it, 3) == want[:3]
        state = it.get_state()
    finally:
        it.close()
    resumed = pipeline.make_iterator(
        cfg, split="train", global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    try:
        resumed.set_state(state)
        assert _indices(resumed, 1) == want[3:]
    finally:
        resumed.close()


def test_read_threads_keep_order():
    cfg = _cfg(buckets=BUCKETS)
    want = _indices(
        pipeline.make_iterator(
            cfg, split="train", global_batch_size=8, seed=0, process_index=0, process_count=1
        ),
        6,
    )
    cfg.read_threads = 3
    it = pipeline.make_iterator(
        cfg, split="train", global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    assert _indices(it, 6) == want
