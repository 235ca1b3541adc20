"""The train loop: exact resume across processes, bad inputs, NaN losses, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from motionaura_jax import checkpoint as checkpoint_lib
from motionaura_jax import config as config_lib
from motionaura_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny_stage.py")


def _launch(workdir, *overrides, wait=True):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        f"--config={TINY}",
        f"--workdir={workdir}",
        *[f"--config.{o}" for o in overrides],
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


def _final_state(workdir, config, step):
    built = loop.setup(config)
    ckpt = checkpoint_lib.StageCheckpointer(f"{workdir}/tiny/checkpoints", stage=config.stage)
    return ckpt.restore(step, built.abstract_state)


def _data_state(workdir, step):
    folder = f"{workdir}/tiny/checkpoints/{step}/data"
    return {
        name: open(os.path.join(folder, name)).read()
        for name in sorted(os.listdir(folder))
        if name != "commit_success.txt"
    }


def test_exact_resume_in_a_new_process(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run = _launch(straight, "train.num_steps=6")
    assert run.returncode == 0, run.stdout + run.stderr
    first = _launch(resumed, "train.num_steps=6", "train.stop_at_step=3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not os.path.exists(resumed / "tiny" / "checkpoints" / "6")
    second = _launch(resumed, "train.num_steps=6")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "step 4/6" in second.stdout and "step 1/6" not in second.stdout

    config = config_lib.load_config(TINY, ["train.num_steps=6"])
    a, b = _final_state(straight, config, 6), _final_state(resumed, config, 6)
    jax.tree.map(
        lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a.params, b.params
    )
    # Same iterator position: both runs consumed the same batches in the same order.
    assert _data_state(straight, 6) == _data_state(resumed, 6)
    assert _data_state(straight, 6) != _data_state(straight, 2)
    eval_a = json.load(open(straight / "tiny" / "eval.json"))
    eval_b = json.load(open(resumed / "tiny" / "eval.json"))
    assert eval_a == eval_b and eval_a["finished"] and eval_a["step"] == 6


def test_nan_in_batch_is_a_clear_error(tmp_path):
    config = config_lib.load_config(TINY)
    first_batch = next(loop.build_stage(config, str(tmp_path)).data("train", config.seed))
    bad_index = int(first_batch["index"][3])
    config = config_lib.load_config(TINY, [f"data.nan_at_index={bad_index}"])
    with pytest.raises(ValueError, match=r"step 0: field 'x' \(16, 16\) has 1 non-finite"):
        loop.train(config, str(tmp_path))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = config_lib.load_config(
        TINY,
        [
            "optimizer.name=sgd",
            "optimizer.b1=0.0",
            "optimizer.lr=1e12",
            "optimizer.clip_norm=0",
            "optimizer.warmup_steps=0",
            "optimizer.schedule=constant",
            "train.num_steps=20",
            "train.checkpoint_every=1",
            "train.log_every=5",
        ],
    )
    with pytest.raises(loop.NonFiniteLossError, match=r"at step (\d+); training stopped") as e:
        loop.train(config, str(tmp_path))
    bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
    ckpt = checkpoint_lib.StageCheckpointer(f"{tmp_path}/tiny/checkpoints", stage=config.stage)
    assert ckpt.latest_step() < bad_step
    if ckpt.latest_step() is not None:
        state = _final_state(tmp_path, config, ckpt.latest_step())
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="is not writable.*pass a --workdir"):
        loop.stage_dir(str(blocker / "run"), "tiny")
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the file-as-folder case is checked above")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="is not writable"):
        loop.stage_dir(str(locked), "tiny")


def test_launcher_reports_unknown_key(tmp_path):
    run = _launch(tmp_path, "optimizer.lrr=1")
    assert run.returncode != 0
    assert "unknown config key 'optimizer.lrr'" in run.stderr + run.stdout


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    proc = _launch(
        tmp_path,
        "train.num_steps=100000",
        "train.checkpoint_every=100000",
        "train.log_every=1",
        wait=False,
    )
    deadline = time.time() + 240
    for line in proc.stdout:
        if "step 3/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted by signal 15" in out, out[-2000:]
    ckpt = checkpoint_lib.StageCheckpointer(
        f"{tmp_path}/tiny/checkpoints", stage="tests.tiny_stage:build"
    )
    assert ckpt.latest_step() is not None and ckpt.latest_step() >= 3


def test_metrics_jsonl_has_every_logged_step(tmp_path):
    config = config_lib.load_config(TINY, ["train.num_steps=3", "train.eval_every=2"])
    loop.train(config, str(tmp_path))
    rows = [json.loads(line) for line in open(tmp_path / "tiny" / "metrics.jsonl")]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert {"loss", "lr", "l2_grads", "l2_params", "l2_updates", "mse"} <= set(train_rows[0])
    assert [r["averaged_steps"] for r in train_rows] == [1, 1, 1]  # TINY logs every step
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 3]
    # Every 2 steps: the last row, written by the final save, averages one step.
    config = config_lib.load_config(TINY, ["train.num_steps=3", "train.log_every=2"])
    loop.train(config, str(tmp_path / "every2"))
    rows = [json.loads(line) for line in open(tmp_path / "every2" / "tiny" / "metrics.jsonl")]
    assert [(r["step"], r["averaged_steps"]) for r in rows if r["kind"] == "train"] == [
        (2, 2),
        (3, 1),
    ]


def test_rerun_of_a_finished_stage_only_evaluates(tmp_path):
    config = config_lib.load_config(TINY, ["train.num_steps=2"])
    first = loop.train(config, str(tmp_path))
    again = loop.train(config, str(tmp_path))
    assert first == again and again["step"] == 2


def test_ema_params_follow_the_recursion_and_are_what_eval_and_later_stages_read(tmp_path):
    decay = 0.5
    config = config_lib.load_config(
        TINY, ["train.num_steps=4", "train.checkpoint_every=1", f"train.ema_decay={decay}"]
    )
    result = loop.train(config, str(tmp_path))
    states = {s: _final_state(tmp_path, config, s) for s in (1, 2, 3, 4)}
    expected = states[1].ema_params
    for s in (2, 3, 4):
        d = min(decay, s / (9.0 + s))  # the step counter before update s is s - 1
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, states[s].params)
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6),
            states[s].ema_params,
            expected,
        )
    last = states[4]
    assert not np.allclose(
        np.asarray(last.ema_params["Dense_0"]["kernel"]),
        np.asarray(last.params["Dense_0"]["kernel"]),
    )
    stage = loop.build_stage(config, str(tmp_path))
    assert result["mse"] == stage.evaluate(last.ema_params, None)["mse"]
    loaded, _ = checkpoint_lib.load_params(str(tmp_path / "tiny"))
    jax.tree.map(
        lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
        loaded,
        last.ema_params,
    )
