"""CogPortrait KTO refinement: boundary-case selection, the records round trip, and one training step of the tiny
task (frozen reference bit-identical, policy moved, loss finite)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from avatarjax.config import load_config
from avatarjax.data.synthface import schema
from avatarjax.data.synthface.loader import SynthfaceDataConfig, source
from avatarjax.registry import TASKS
from avatarjax.train.objectives import cog_portrait_kto as kto_task
from avatarjax.train.objectives.kto import Frozen, KTORecordSource

REPO = Path(__file__).resolve().parents[2]
KTO_TINY = str(REPO / "configs" / "cogportrait" / "kto_tiny.py")
COG_TINY = str(REPO / "configs" / "cogportrait" / "synthface_tiny.py")
IX = schema.INDEX


def states(frames=12, **channels):
    """Neutral states with ``channel=value`` held on frames 3 .. 8."""
    s = schema.neutral_state(frames)
    for name, value in channels.items():
        s[3:9, IX[name]] = value
    return s


def test_selector_thresholds():
    assert kto_task.boundary_categories(states(au1_l=0.6, au2_l=0.5)) == ["asymmetric_brow"]
    assert kto_task.boundary_categories(states(au1_l=0.6, au1_r=0.6, au2_l=0.5, au2_r=0.5)) == []
    assert kto_task.boundary_categories(states(au1_l=0.6, au1_r=0.35)) == []  # 0.25 < 0.3
    assert kto_task.boundary_categories(states(yaw=-25.0)) == ["large_head_turn"]
    assert kto_task.boundary_categories(states(pitch=14.0)) == ["large_head_turn"]
    assert kto_task.boundary_categories(states(yaw=15.0, pitch=10.0, roll=-10.0)) == []
    assert kto_task.HEAD_TURN_DEGREES == {"yaw": pytest.approx(20.25), "pitch": pytest.approx(13.5),
                                          "roll": pytest.approx(13.5)}
    one = kto_task.one_sided_brows(states(au1_l=0.6, au1_r=0.6, au2_l=0.5, au2_r=0.5), keep_left=True)
    assert one[:, IX["au1_r"]].max() == 0 and one[:, IX["au1_l"]].max() == pytest.approx(0.6)


def fake_encode(video: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for the Wan VAE: uint8 [F, S, S, 3] -> [1 + (F-1)//4, S/8, S/8, 8]."""
    frames = video[::4].astype(np.float32) / 127.5 - 1.0
    f, s = frames.shape[0], frames.shape[1]
    pooled = frames.reshape(f, s // 8, 8, s // 8, 8, 3).mean((2, 4))
    return np.concatenate([pooled, pooled ** 2, pooled[..., :2]], -1)


def fake_text(instructions):
    return {"text_tokens": np.full((len(instructions), 8, 384), 0.1, np.float32),
            "text_mask": np.ones((len(instructions), 8), bool)}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two crafted clips (a one-sided brow raise and a symmetric one) written as KTO records."""
    cog_cfg = load_config(COG_TINY, ["--config.data.vae=unused"])
    src = source(SynthfaceDataConfig(num_clips=40, num_identities=24, window=9, frame_size=32), "train")
    base = [src[i] for i in range(2)]
    asym = {**base[0], "state": states(frames=len(base[0]["state"]), au1_l=0.6, au2_l=0.5)}
    sym = {**base[1], "state": states(frames=len(base[1]["state"]), au1_l=0.6, au1_r=0.6, au2_l=0.5, au2_r=0.5)}
    natural = kto_task.boundary_windows([asym, sym], 9, 8, one_sided=False)
    assert [(w.clip, w.category, w.constructed) for w in natural] == [(0, "asymmetric_brow", False)]
    both = kto_task.boundary_windows([asym, sym], 9, 8, one_sided=True)
    assert [(w.clip, w.constructed) for w in both] == [(0, False), (1, True)]
    out = tmp_path_factory.mktemp("kto_records")
    index = 0
    for bw in both:
        index = kto_task.write_window_records(out, index, bw, cog_cfg, fake_encode, fake_text,
                                              lambda portrait, kps, audio, text: fake_encode(
                                                  np.repeat(portrait[None], len(kps), 0)))
    return out, both


def test_records_round_trip(records):
    out, windows = records
    src = KTORecordSource(out)
    assert len(src) == 4 and src.desirable_flags().tolist() == [True, False, True, False]
    real, fake = src[0], src[1]
    assert str(real["category"]) == "asymmetric_brow" and not bool(real["constructed"])
    assert bool(src[2]["constructed"])
    for key in ("pose", "audio", "text_tokens", "text_mask", "keypoints", "state"):
        np.testing.assert_array_equal(real[key], fake[key])  # the same conditions
    assert real["latents"].shape == fake["latents"].shape == (3, 4, 4, 8)
    assert not np.array_equal(real["latents"], fake["latents"])
    assert kto_task.brow_asymmetry(real["state"]) >= kto_task.BROW_ASYMMETRY  # the window holds the asymmetry
    assert kto_task.brow_asymmetry(src[2]["state"]) >= kto_task.BROW_ASYMMETRY  # made one-sided
    assert real["audio"].shape == (9 * schema.SAMPLES_PER_FRAME,) and int(real["start"]) == windows[0].start


def test_one_step_moves_policy_not_reference(records):
    out, _ = records
    cfg = load_config(KTO_TINY, [f"--config.data.records={out}"])
    task = TASKS.get("cog_portrait_kto")
    with nnx.use_eager_sharding(False):
        model = task.build_model(cfg, nnx.Rngs(0))
    assert not jax.tree.leaves(nnx.state(model.reference, nnx.Param))
    batch = jax.tree.map(jnp.asarray, next(iter(task.dataset(cfg, "train"))))
    assert batch["latents"].shape == (4, 3, 4, 4, 8) and batch["desirable"].dtype == jnp.bool_
    example = task.example_batch(cfg, 4)
    assert {k: v.shape for k, v in example.items()} == {k: v.shape for k, v in batch.items()}
    ref_before = jax.tree.map(np.array, nnx.state(model.reference, Frozen))
    pol_before = jax.tree.map(np.array, nnx.state(model.policy, nnx.Param))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch, key):
        (loss, metrics), grads = nnx.value_and_grad(lambda m: task.loss(m, batch, key, 0), has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, metrics

    loss, metrics = step(model, optimizer, batch, jax.random.key(3))
    assert np.isfinite(float(loss))
    assert set(metrics) >= {"kto_loss", "flow_loss", "kl_z0", "reward_desirable", "reward_undesirable"}
    # before the step policy == reference, so the implicit rewards are 0 and the KTO term is w (1 - sigmoid(0))
    assert float(metrics["kto_loss"]) == pytest.approx(0.5, abs=1e-6)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model.reference, Frozen), ref_before)
    changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), nnx.state(model.policy, nnx.Param),
                           pol_before)
    # a fresh DiT's head is zero-initialised, so the first step's gradient reaches only the head
    assert all(jax.tree.leaves(changed["dit"]["proj_out"]))
    for i in range(2):
        loss2, metrics2 = step(model, optimizer, batch, jax.random.key(4 + i))
        assert np.isfinite(float(loss2)) and float(metrics2["kto_loss"]) != pytest.approx(0.5, abs=1e-6)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model.reference, Frozen), ref_before)
    changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), nnx.state(model.policy, nnx.Param),
                           pol_before)
    # zero-initialised outputs (head, audio cross-attention, pose adapter) open one level per step: after three
    # steps every policy parameter has moved
    assert all(jax.tree.leaves(changed))


def test_missing_records_fail_clearly():
    from avatarjax.errors import ConfigError

    cfg = load_config(KTO_TINY)
    with pytest.raises(ConfigError, match="data.records is empty"):
        TASKS.get("cog_portrait_kto").dataset(cfg, "train")


def test_records_from_raw_parameters_need_a_raw_reference(records, tmp_path):
    import json
    import shutil

    from avatarjax.errors import ConfigError

    out, _ = records
    copy = tmp_path / "records"
    shutil.copytree(out, copy)
    (copy / kto_task.META_FILE).write_text(json.dumps({"ema": False}))
    task = TASKS.get("cog_portrait_kto")
    cfg = load_config(KTO_TINY, [f"--config.data.records={copy}", "--config.model.init_from=some_run"])
    with pytest.raises(ConfigError, match="init_use_ema=False"):
        task.dataset(cfg, "train")
    cfg = load_config(KTO_TINY, [f"--config.data.records={copy}", "--config.model.init_from=some_run",
                                 "--config.model.init_use_ema=false"])
    assert next(iter(task.dataset(cfg, "train")))["latents"].shape == (4, 3, 4, 4, 8)
