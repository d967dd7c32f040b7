"""Resume determinism, NaN abort, corrupt checkpoints, EMA and the workdir contract (one CPU device)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avatarjax.errors import CheckpointError, TrainingAborted
from avatarjax.registry import TASKS
from avatarjax.train.loop import Trainer
from tests.conftest import make_mesh, tiny_config


def _trainer(workdir, *overrides, task=None):
    cfg = tiny_config(*overrides)
    return Trainer(cfg, workdir, task=task, mesh=make_mesh(cfg, 1))


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get((state.params, state.opt_state)))]


def test_resume_is_bit_identical(tmp_path):
    n = 5
    straight = _trainer(tmp_path / "a", f"--config.train.steps={2 * n}", "--config.checkpoint.every=100")
    straight.run()

    first = _trainer(tmp_path / "b", f"--config.train.steps={2 * n}", "--config.checkpoint.every=100")
    part = first.run(stop_at=n)
    assert part.preempted and part.step == n
    assert first.checkpoints.steps() == [n]
    second = _trainer(tmp_path / "b", f"--config.train.steps={2 * n}", "--config.checkpoint.every=100")
    rest = second.run()
    assert sorted(rest.losses) == list(range(n + 1, 2 * n + 1))

    for a, b in zip(_leaves(straight.state), _leaves(second.state)):
        np.testing.assert_array_equal(a, b)


def test_data_iterator_state_is_restored(tmp_path):
    trainer = _trainer(tmp_path / "w", "--config.train.steps=3")
    trainer.run()
    fresh = trainer.make_iterator()
    for _ in range(3):
        next(fresh)
    expected = next(fresh)["tokens"]
    again = _trainer(tmp_path / "w", "--config.train.steps=3")
    iterator = again.make_iterator()
    again.restore_or_init(iterator)
    np.testing.assert_array_equal(next(iterator)["tokens"], expected)


def test_nan_loss_aborts_without_saving_bad_state(tmp_path):
    lm = TASKS.get("lm")

    def nan_at_step_5(model, batch, key, step):
        loss, metrics = lm.loss(model, batch, key, step)
        return jnp.where(step == 5, jnp.nan, loss), metrics

    task = dataclasses.replace(lm, loss=nan_at_step_5)
    trainer = _trainer(tmp_path / "w", "--config.train.steps=10", "--config.checkpoint.every=2", task=task)
    with pytest.raises(TrainingAborted, match="non-finite loss .* at step 6"):
        trainer.run()
    assert trainer.checkpoints.steps() == [2, 4]
    # The last good checkpoint restores and has finite parameters.
    state = _trainer(tmp_path / "w", "--config.train.steps=10").restore_or_init(None)
    assert int(state.step) == 4
    assert all(np.isfinite(x).all() for x in _leaves(state))


def test_truncated_checkpoint_is_refused_and_kept(tmp_path):
    _trainer(tmp_path / "w", "--config.train.steps=4", "--config.checkpoint.every=2").run()
    state_dir = tmp_path / "w" / "checkpoints" / "4" / "state"
    files = sorted((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint step 4 .* cannot be restored.*restore_step=2"):
        _trainer(tmp_path / "w", "--config.train.steps=6", "--config.checkpoint.every=2").run()
    assert victim.exists()
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    # The way out named in the message works.
    result = _trainer(tmp_path / "w2", "--config.train.steps=2").run()
    assert result.step == 2
    resumed = _trainer(tmp_path / "w", "--config.train.steps=6", "--config.checkpoint.restore_step=2")
    assert int(resumed.restore_or_init(None).step) == 2


def test_missing_checkpoint_step_is_a_clear_error(tmp_path):
    _trainer(tmp_path / "w", "--config.train.steps=2").run()
    with pytest.raises(CheckpointError, match="checkpoint step 7 not found .* available steps are \\[2\\]"):
        _trainer(tmp_path / "w", "--config.checkpoint.restore_step=7").restore_or_init(None)


def test_workdir_contract_and_ema(tmp_path):
    trainer = _trainer(tmp_path / "w", "--config.train.steps=4", "--config.log.every=2",
                       "--config.train.ema_decay=0.5", "--config.eval.every=4", "--config.eval.batches=2")
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for key in ("step", "loss", "steps_per_sec", "tflops_per_device", "mfu", "grad_norm", "lr"):
        assert key in train_rows[0]
    assert any("eval_loss" in r for r in rows)
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["train"]["ema_decay"] == 0.5
    ema = jax.tree.leaves(trainer.state.ema)
    params = jax.tree.leaves(trainer.state.params)
    assert any(not np.array_equal(np.asarray(e), np.asarray(p)) for e, p in zip(ema, params))


def test_ema_decay_warms_up_so_short_runs_forget_the_initialisation():
    from avatarjax.train.step import ema_warmup_decay

    decays = np.asarray([float(ema_warmup_decay(0.999, s)) for s in (0, 10, 1126, 100_000)])
    np.testing.assert_allclose(decays, [0.1, 11 / 20, 1127 / 1136, 0.999], rtol=1e-6)
    # what remains of the initial weights after 1126 updates: ~0 with the warm-up, 32% with a constant 0.999
    remaining = np.prod([float(ema_warmup_decay(0.999, s)) for s in range(1126)])
    assert remaining < 1e-6 and 0.999 ** 1126 > 0.3


def test_bf16_compute_keeps_fp32_params(tmp_path):
    trainer = _trainer(tmp_path / "w", "--config.train.steps=2", "--config.train.compute_dtype=bfloat16")
    result = trainer.run()
    assert np.isfinite(result.losses[2])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.state.params))


def test_profiler_trace_window(tmp_path):
    _trainer(tmp_path / "w", "--config.train.steps=4", "--config.profile.start_step=1",
             "--config.profile.num_steps=2").run()
    assert any((tmp_path / "w" / "profile").rglob("*.xplane.pb"))


def test_loop_makes_no_implicit_host_device_transfers(tmp_path):
    """Every host<->device copy in the loop is explicit (device_put / device_get), none by accident."""
    trainer = _trainer(tmp_path / "w", "--config.train.steps=4", "--config.log.every=2",
                       "--config.checkpoint.every=2")
    with jax.transfer_guard("disallow"):
        result = trainer.run()
    assert result.step == 4
