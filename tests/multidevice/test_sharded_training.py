"""The same training steps on 1 device and on a 2x2x2 (data, fsdp, tensor) mesh of 8 fake CPU devices."""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from avatarjax.train.loop import Trainer
from tests.conftest import make_mesh, tiny_config

STEPS = 6


def _run(tmp_path, name, num_devices, *overrides):
    cfg = tiny_config(f"--config.train.steps={STEPS}", "--config.checkpoint.every=100", *overrides)
    trainer = Trainer(cfg, tmp_path / name, mesh=make_mesh(cfg, num_devices))
    return trainer, trainer.run()


def test_one_device_equals_eight_devices(tmp_path):
    _, single = _run(tmp_path, "one", 1)
    trainer, sharded = _run(tmp_path, "eight", 8, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                            "--config.mesh.tensor=2", "--config.mesh.rules=fsdp_tp")
    assert dict(trainer.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    one = np.array([single.losses[s] for s in range(1, STEPS + 1)])
    eight = np.array([sharded.losses[s] for s in range(1, STEPS + 1)])
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert one[-1] < one[0]  # it trains

    params = trainer.state.params
    gate = params["layers"]["mlp"]["gate"]["kernel"][...]
    # fsdp_tp: layers replicated, embed over fsdp, mlp over tensor.
    assert gate.sharding.spec == P(None, "fsdp", "tensor")
    assert gate.addressable_shards[0].data.shape == (gate.shape[0], gate.shape[1] // 2, gate.shape[2] // 2)
    q = params["layers"]["attn"]["q_proj"]["kernel"][...]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    emb = params["embed"]["embedding"][...]
    assert emb.sharding.spec == P("tensor", "fsdp")
    # Optimizer moments follow their parameters.
    mu = trainer.state.opt_state[1][0].mu["layers"]["mlp"]["gate"]["kernel"][...]
    assert mu.sharding.spec == P(None, "fsdp", "tensor")


def test_grad_accumulation_matches_full_batch(tmp_path):
    _, full = _run(tmp_path, "full", 4, "--config.mesh.data=2", "--config.mesh.fsdp=2")
    _, accum = _run(tmp_path, "accum", 4, "--config.mesh.data=2", "--config.mesh.fsdp=2",
                    "--config.train.grad_accum=2")
    a = np.array([full.losses[s] for s in range(1, STEPS + 1)])
    b = np.array([accum.losses[s] for s in range(1, STEPS + 1)])
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_restore_onto_a_different_mesh(tmp_path):
    cfg8 = tiny_config("--config.train.steps=4", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                       "--config.mesh.tensor=2")
    first = Trainer(cfg8, tmp_path / "run", mesh=make_mesh(cfg8, 8))
    first.run()
    saved = jax.device_get(first.state.params)

    cfg1 = tiny_config("--config.train.steps=4", "--config.mesh.rules=dp")
    second = Trainer(cfg1, tmp_path / "run", mesh=make_mesh(cfg1, 1))
    restored = second.restore_or_init(None)
    assert int(restored.step) == 4
    leaf = restored.params["layers"]["mlp"]["gate"]["kernel"][...]
    assert len(leaf.sharding.device_set) == 1
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(restored.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and training continues from there on the new mesh
    result = Trainer(tiny_config("--config.train.steps=6", "--config.mesh.rules=dp"), tmp_path / "run",
                     mesh=make_mesh(cfg1, 1)).run()
    assert sorted(result.losses) == [5, 6]
