"""The synthface face reader: shapes, training through the real Trainer, batched reading, labels, sample report."""

import json

import numpy as np
import pytest
from flax import nnx

from avatarjax.config import load_config
from avatarjax.data.synthface import dynamics, geometry, identity as identity_lib, loader, render, schema
from avatarjax.models.face_reader import au_from_frames, neutral_references, normalise_state, read_frames
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import face_reader as task
from tests.conftest import REPO

TINY = str(REPO / "configs" / "face_reader" / "synthface_tiny.py")


def _cfg(*overrides):
    return load_config(TINY, ["--config.log.progress=false", "--config.log.tensorboard=false",
                              "--config.log.plots=false", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(trainer, result, model): the tiny config trained through the real Trainer (default mesh: every test
    device), and its model loaded back from the workdir as ``avatarjax sample`` does."""
    trainer = Trainer(_cfg(), tmp_path_factory.mktemp("face_reader"))
    result = trainer.run()
    model, _ = load_model(trainer.workdir)
    return trainer, result, model


def _frames(n, size, seed=0):
    rng = np.random.default_rng(seed)
    ident = identity_lib.sample_identity(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), ident.to_vector()


def test_shapes_and_ranges(trained):
    _, _, model = trained
    s = model.cfg.image_size
    frames, identity = _frames(5, s)
    x, ids = frames.astype(np.float32) / 127.5 - 1, np.stack([identity] * 5)
    known = np.array([True, False, True, False, False])
    out, mixed, blind = nnx.jit(lambda m, x, i, k: (m(x, i), m(x, i, known=k), m(x)))(model, x, ids, known)
    assert out["keypoints"].shape == (5, schema.NUM_KEYPOINTS, 2) and out["state"].shape == (5, schema.NUM_CHANNELS)
    for key in ("state", "keypoints"):  # frames marked unknown are read exactly as without an identity
        np.testing.assert_allclose(mixed[key][~known], blind[key][~known], atol=1e-5)
        np.testing.assert_allclose(mixed[key][known], out[key][known], atol=1e-5)
    read = read_frames(model, frames, identity, batch=4)
    assert read["state"].shape == (5, schema.NUM_CHANNELS) and read["keypoints"].shape == (5, schema.NUM_KEYPOINTS, 2)
    assert np.all(read["state"] >= schema.LOW) and np.all(read["state"] <= schema.HIGH)
    active = au_from_frames(model, frames, identity, batch=4)
    np.testing.assert_array_equal(active, read["state"][:, schema.AU_SLICE] > dynamics.AU_THRESHOLDS)
    with pytest.raises(ValueError, match="expects frames"):
        model(np.zeros((1, s + 1, s + 1, 3), np.float32), identity[None])


def test_read_frames_is_independent_of_batch_size(trained):
    _, _, model = trained
    frames, identity = _frames(11, model.cfg.image_size, seed=1)
    reads = [read_frames(model, frames, identity, batch=b) for b in (1, 4, 11, 64)]
    for other in reads[1:]:  # equal up to float32 rounding (XLA tiles convolutions by batch size)
        np.testing.assert_allclose(normalise_state(other["state"]), normalise_state(reads[0]["state"]), atol=2e-6)
        np.testing.assert_allclose(other["keypoints"], reads[0]["keypoints"], atol=2e-6)


def test_examples_match_rerendering():
    cfg = _cfg("--config.data.frames_per_clip=6", "--config.data.perturb_prob=0.5")
    record = loader.source(cfg.data.synthface, "train")[0]
    example = task.make_example(record, np.random.default_rng(3), cfg.data, train=True)
    n, s = 6, cfg.data.frame_size
    assert example["frames"].shape == (n, s, s, 3) and example["frames"].dtype == np.uint8
    fresh = ~np.all(example["identity_vector"] == record["identity_vector"], axis=-1)
    assert 0 < fresh.sum() < n  # this seed mixes clip frames and perturbed frames
    for i in range(n):
        ident = identity_lib.Identity.from_vector(example["identity_vector"][i])
        np.testing.assert_array_equal(example["frames"][i], render.render_frames(ident, example["state"][i], s))
        np.testing.assert_allclose(example["keypoints"][i], geometry.keypoints(ident, example["state"][i]), atol=1e-6)
    clip_rows = [np.flatnonzero(np.all(record["state"] == st, axis=-1)) for st in example["state"][~fresh]]
    assert all(len(r) for r in clip_rows)  # unperturbed frames are frames of the clip
    assert np.all(example["state"] >= schema.LOW) and np.all(example["state"] <= schema.HIGH)
    gaze = example["state"][:, schema.GAZE_SLICE]
    assert np.all(gaze[:, 0] * gaze[:, 1] == 0) and np.all(gaze[:, 2] * gaze[:, 3] == 0)  # canonical gaze
    for i in range(n):  # the reference is the neutral render of each frame's identity
        ident = identity_lib.Identity.from_vector(example["identity_vector"][i])
        np.testing.assert_array_equal(example["reference"][i], render.render_frames(ident, schema.neutral_state(1), s)[0])
    held = task.make_example(record, np.random.default_rng(3), cfg.data, train=False)
    np.testing.assert_array_equal(held["identity_vector"], np.repeat(record["identity_vector"][None], n, 0))


def test_tiny_config_trains_with_falling_loss(trained):
    trainer, result, _ = trained
    losses = [result.losses[k] for k in sorted(result.losses)]
    assert result.step == trainer.cfg.train.steps
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    rows = [json.loads(line) for line in (trainer.workdir / "metrics.jsonl").read_text().splitlines()]
    assert {"keypoint_px", "mae_au", "mae_gaze", "mae_pose", "mae_mouth", "mae_translation"} <= set(rows[-1])


def test_sample_report(trained, tmp_path):
    trainer, _, model = trained
    report = task.sample(model, trainer.cfg, tmp_path, ["--clips", "2"])
    keys = {"clips", "frames", "au_f1", "au_precision", "au_recall", "au_f1_macro", "au_f1_per_au",
            "keypoint_error_px", "mouth_open_corr", "gaze_mae_deg", "pose_mae_deg", "state_mae", "contact_sheet",
            "report"}
    assert keys <= set(report) and report["clips"] == 2
    assert json.loads((tmp_path / "face_reader_report.json").read_text()) == report
    assert (tmp_path / "face_reader_sheet.png").stat().st_size > 0
    assert set(report["state_mae"]) == {"au", "gaze", "pose", "mouth", "translation"}
    assert {"au_f1", "keypoint_error_px", "mouth_open_corr", "gaze_mae_deg", "pose_mae_deg"} <= set(report["blind"])


def test_reference_frame_reader():
    """``reference=True``: the neutral render of the given identity is read beside the frame; read blind, the
    reference is zero (so a known identity changes the reading and frames marked unknown ignore it)."""
    cfg = _cfg("--config.model.reference=true")
    with nnx.use_eager_sharding(False):
        model = task.build_model(cfg, nnx.Rngs(0))
    s = cfg.model.image_size
    frames, identity = _frames(3, s, seed=4)
    ref = neutral_references(np.stack([identity] * 3), s)
    face = identity_lib.Identity.from_vector(identity)
    np.testing.assert_array_equal(ref[1], render.render_frames(face, schema.neutral_state(1), s)[0])
    x, ids = frames.astype(np.float32) / 127.5 - 1, np.stack([identity] * 3)
    r = ref.astype(np.float32) / 127.5 - 1
    known = np.array([True, False, True])
    full, blind, mixed = (model(x, ids, reference=r), model(x), model(x, ids, known=known, reference=r))
    np.testing.assert_allclose(mixed["state"][~known], blind["state"][~known], atol=1e-5)
    np.testing.assert_allclose(mixed["state"][known], full["state"][known], atol=1e-5)
    read = read_frames(model, frames, identity, batch=2)
    np.testing.assert_allclose(normalise_state(read["state"]), normalise_state(np.clip(
        np.asarray(full["state"]), schema.LOW, schema.HIGH)), atol=1e-5)
