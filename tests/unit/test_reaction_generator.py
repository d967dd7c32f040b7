"""Online reaction generator (MAFRG) on the tiny config: shapes and masks, online causality, determinism per seed,
diverse reactions, output length and input errors, a short training run whose loss falls, then loading the run
and sampling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import REPO, make_mesh

TINY = str(REPO / "configs" / "reaction" / "synthface_tiny.py")
K, STEPS = 3, 3  # one compiled segment sampler shared by the tests


def tiny_cfg(*overrides: str):
    from avatarjax.config import load_config

    return load_config(TINY, ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false", *overrides])


@pytest.fixture(scope="module")
def cfg():
    return tiny_cfg()


@pytest.fixture(scope="module")
def model(cfg):
    from avatarjax.train.objectives.reaction import build_model

    with nnx.use_eager_sharding(False):
        return build_model(cfg, nnx.Rngs(0))


@pytest.fixture(scope="module")
def session(cfg):
    from avatarjax.train.objectives.reaction import make_session

    return make_session(cfg.data, "eval", 0)


def test_shapes_masks_and_dataset(cfg, model):
    from avatarjax.train.objectives.reaction import REACTION_TASK, coefficient_stats, conditions

    net = cfg.model.net
    batch = next(iter(REACTION_TASK.dataset(cfg, "train")))
    b = cfg.train.batch_size
    assert batch["speaker"].shape == (b, net.context, 58) and batch["audio"].shape == (b, net.context * 640)
    assert batch["previous"].shape == batch["target"].shape == (b, net.segment, 58)
    assert batch["speaker_mask"].dtype == bool and batch["has_previous"].shape == (b,)
    # first-segment rows: no previous frames, the context is masked before frame 0
    first = batch["has_previous"] == 0
    assert not batch["previous"][first].any() and not batch["speaker_mask"][first][:, :net.context - net.segment].any()
    # statistics travel with the model
    for name, value in coefficient_stats(cfg.data).items():
        np.testing.assert_array_equal(np.asarray(getattr(model.net, name)[...]), value)

    batch = jax.tree.map(jnp.asarray, REACTION_TASK.example_batch(cfg, 2))
    mask = jnp.arange(net.context)[None] >= jnp.array([[0], [6]])
    batch = dict(batch, speaker_mask=mask, has_previous=jnp.array([1.0, 0.0]))
    t = jnp.array([10, 900])
    out = model.net(batch["target"], t, conditions(batch))
    assert out.shape == (2, net.segment, 58) and bool(jnp.isfinite(out).all())
    # masked speaker frames and the previous segment of a first segment change nothing
    noisy = dict(batch, speaker=batch["speaker"].at[1, :6].set(1e3), previous=batch["previous"].at[1].set(1e3))
    np.testing.assert_allclose(model.net(batch["target"], t, conditions(noisy))[1], out[1], atol=1e-5)
    # ... while a present previous segment does matter
    changed = dict(batch, previous=batch["previous"].at[0].add(1.0))
    assert float(jnp.abs(model.net(batch["target"], t, conditions(changed))[0] - out[0]).max()) > 1e-4


def test_online_causality(cfg, model, session):
    from avatarjax.pipelines.reaction_generate import generate_online, segment_length

    s = segment_length(cfg)
    speaker, audio = session["speaker"][:5 * s], session["audio"][:5 * s * 640]
    base = generate_online(model, cfg, speaker, audio, num_reactions=K, seed=1, num_steps=STEPS)
    n = 1  # change everything after segment n's context (frames >= (n + 1) S)
    cut = (n + 1) * s
    rng = np.random.default_rng(0)
    speaker2 = speaker.copy()
    speaker2[cut:] += rng.standard_normal(speaker2[cut:].shape).astype(np.float32)
    audio2 = audio.copy()
    audio2[cut * 640:] = rng.uniform(-0.5, 0.5, audio2[cut * 640:].shape).astype(np.float32)
    other = generate_online(model, cfg, speaker2, audio2, num_reactions=K, seed=1, num_steps=STEPS)
    np.testing.assert_array_equal(other[:, :cut], base[:, :cut])
    assert np.abs(other[:, cut:] - base[:, cut:]).max() > 1e-5  # later segments do see the change


def test_determinism_diversity_length_and_errors(cfg, model, session):
    from avatarjax.errors import DataError
    from avatarjax.pipelines.reaction_generate import generate_online, segment_length

    s = segment_length(cfg)
    assert s == cfg.model.net.segment == 8
    frames = 5 * s + 3
    speaker, audio = session["speaker"][:frames], session["audio"][:frames * 640]
    a = generate_online(model, cfg, speaker, audio, num_reactions=K, seed=7, num_steps=STEPS)
    b = generate_online(model, cfg, speaker, audio, num_reactions=K, seed=7, num_steps=STEPS)
    c = generate_online(model, cfg, speaker, audio, num_reactions=K, seed=8, num_steps=STEPS)
    assert a.shape == (K, 5 * s, 58) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    for i in range(K):
        for j in range(i + 1, K):
            assert np.abs(a[i] - a[j]).max() > 1e-4, (i, j)
    with pytest.raises(DataError, match="58"):
        generate_online(model, cfg, speaker[:, :52], audio, num_reactions=K, seed=0)
    with pytest.raises(DataError, match="16 kHz"):
        generate_online(model, cfg, speaker, audio[:1000], num_reactions=K, seed=0)
    with pytest.raises(DataError, match="fewer than one segment"):
        generate_online(model, cfg, speaker[:s - 1], audio, num_reactions=K, seed=0)


def test_tiny_training_loss_falls_then_load_and_sample(tmp_path):
    from avatarjax.pipelines.reaction_generate import generate_online
    from avatarjax.train.export import load_model
    from avatarjax.train.loop import Trainer
    from avatarjax.train.objectives.reaction import REACTION_TASK, coefficient_stats, make_session

    cfg = tiny_cfg("--config.train.steps=40", "--config.log.every=1", "--config.checkpoint.every=40",
                   "--config.optim.lr=3e-3")
    result = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert result.step == 40 and np.mean(losses[-8:]) < 0.7 * np.mean(losses[:3]), losses

    model, loaded = load_model(tmp_path / "run")
    np.testing.assert_array_equal(np.asarray(model.net.listener_std[...]),
                                  coefficient_stats(loaded.data)["listener_std"])
    raw = make_session(loaded.data, "eval", 1)
    out = generate_online(model, loaded, raw["speaker"], raw["audio"], num_reactions=2, seed=0, num_steps=STEPS)
    assert out.shape == (2, 64, 58) and np.isfinite(out).all()
    report = REACTION_TASK.sample(model, loaded, tmp_path / "samples", ["--steps", str(STEPS)], tmp_path / "run")
    written = np.load(tmp_path / "samples" / "session_000" / "reactions.npy")
    assert written.shape == (cfg.sample.num_reactions, 64, 58)
    assert json.loads((tmp_path / "samples" / "report.json").read_text())["sessions"] == cfg.sample.sessions
    assert report["FRDiv"] > 0 and np.isfinite(report["pose_jump_boundary"])

    # the generated set PosNet trains on: generator output beside the real reactions, train and val splits
    from avatarjax.pipelines.reaction import read_generated

    for split in ("train", "eval"):
        REACTION_TASK.sample(model, loaded, tmp_path / "unused", ["--steps", str(STEPS), "--dump",
                                                                  str(tmp_path / "gen"), "--split", split,
                                                                  "--sessions", "2", "--reactions", "3"])
    segment, sessions = read_generated(tmp_path / "gen", "val")
    assert segment == loaded.model.net.segment and len(sessions) == 2
    assert sessions[0]["generated"].shape == (3, 64, 58) and sessions[0]["truth"].shape[1:] == (64, 58)
    assert len(read_generated(tmp_path / "gen", "train")[1]) == 2


def test_floating_crop_has_no_translation():
    from avatarjax.train.objectives.reaction import make_session

    pfl, floating = (make_session(tiny_cfg(f"--config.data.crop={c}").data, "train", 0) for c in ("pfl", "floating"))
    assert np.abs(pfl["listeners"][..., 55:58]).max() > 0 and np.abs(pfl["speaker"][..., 55:58]).max() > 0
    assert np.all(floating["listeners"][..., 55:58] == 0) and np.all(floating["speaker"][..., 55:58] == 0)
    np.testing.assert_array_equal(floating["listeners"][..., :55], pfl["listeners"][..., :55])
