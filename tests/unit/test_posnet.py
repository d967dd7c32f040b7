"""PosNet: parity with a PyTorch module of the released architecture, the paper's losses against the numpy
metrics, online correction (segment 0 kept, expression bit-identical, partial segments), and training through
the real Trainer on a generated set with seam jumps."""

import numpy as np
import pytest
import torch
from flax import nnx

import jax
import jax.numpy as jnp

from avatarjax.bench import torch_refs
from avatarjax.config import load_config
from avatarjax.data.synthface import dyadic, react
from avatarjax.errors import ConfigError, DataError
from avatarjax.eval import smoothness
from avatarjax.models.posnet import PosNet, PosNetConfig, PosNetLossConfig, correct_sequence, posnet_flops, \
    posnet_losses
from avatarjax.pipelines import reaction
from avatarjax.train.export import load_model
from avatarjax.train.loop import Trainer
from avatarjax.train.objectives import posnet as objective
from tests.conftest import REPO, make_mesh

QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]


def _small(**kw):
    with nnx.use_eager_sharding(False):
        return PosNet(PosNetConfig(hidden=32, **kw), rngs=nnx.Rngs(0))


def test_matches_the_torch_reference():
    ref = torch_refs.PosNet(pose_dim=6, segment=25, hidden=32).double()  # the released layout
    model = _small()
    conv = lambda m: jnp.asarray(m.weight.detach().numpy().transpose(2, 1, 0), jnp.float32)
    model.conv1.kernel[...], model.conv1.bias[...] = conv(ref.encoder[0]), jnp.asarray(ref.encoder[0].bias.detach().numpy())
    model.conv2.kernel[...], model.conv2.bias[...] = conv(ref.encoder[2]), jnp.asarray(ref.encoder[2].bias.detach().numpy())
    for ours, theirs in ((model.fc1, ref.decoder[0]), (model.fc2, ref.decoder[2])):
        ours.kernel[...] = jnp.asarray(theirs.weight.detach().numpy().T, jnp.float32)
        ours.bias[...] = jnp.asarray(theirs.bias.detach().numpy(), jnp.float32)
    w = ref.decoder[4].weight.detach().numpy().T.reshape(32, 25, 6)
    model.out.kernel[...], model.out.bias[...] = jnp.asarray(w), jnp.asarray(ref.decoder[4].bias.detach().numpy().reshape(25, 6))
    rng = np.random.default_rng(0)
    last, pose = rng.normal(size=(3, 6)), rng.normal(size=(3, 25, 6))
    expected = ref(torch.from_numpy(last), torch.from_numpy(pose)).detach().numpy()
    np.testing.assert_allclose(model(jnp.asarray(last, jnp.float32), jnp.asarray(pose, jnp.float32)), expected,
                               atol=2e-5)
    # FLOPs: 2 per multiply-add of the two valid convs (23 and 21 outputs) and the three dense layers
    assert posnet_flops(model.cfg) == 2 * (23 * 3 * 6 * 32 + 21 * 3 * 32 * 32 + 38 * 32 + 32 * 32 + 32 * 150)


def test_losses_are_the_papers_terms():
    rng = np.random.default_rng(1)
    q, prev, target = rng.normal(size=(25, 6)), rng.normal(size=6), rng.normal(size=(25, 6))
    terms = posnet_losses(jnp.asarray(q), jnp.asarray(prev), jnp.asarray(target), PosNetLossConfig())
    np.testing.assert_allclose(terms["connect"], np.abs(q[0] - prev).mean(), rtol=1e-6)
    np.testing.assert_allclose(terms["sm1"], smoothness.l_sm1(q), rtol=1e-6)
    np.testing.assert_allclose(terms["sm2"], smoothness.l_sm2(q), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms["general"], np.mean((q - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(terms["total"], terms["general"] + terms["connect"] + terms["sm1"] + 0.2 * terms["sm2"],
                               rtol=1e-6)
    d = np.abs(np.diff(q, axis=0))
    absolute = posnet_losses(jnp.asarray(q), jnp.asarray(prev), jnp.asarray(target), PosNetLossConfig(sm2_form="abs"))
    np.testing.assert_allclose(absolute["sm2"], np.abs(np.diff(d, axis=0)).mean(), rtol=1e-5)


def test_online_correction_recurrence_and_smoother():
    model = _small(residual=True)
    rng = np.random.default_rng(2)
    pose = jnp.asarray(rng.normal(size=(2, 75, 6)), jnp.float32)
    # residual PosNet is the identity at init (zero last layer)
    np.testing.assert_allclose(correct_sequence(model, pose), pose, atol=1e-6)
    model.out.bias[...] = jnp.full((25, 6), 0.5)  # now each corrected segment is shifted by 0.5
    out = np.asarray(correct_sequence(model, pose))
    np.testing.assert_array_equal(out[:, :25], np.asarray(pose[:, :25]))
    np.testing.assert_allclose(out[:, 25:], np.asarray(pose[:, 25:]) + 0.5, atol=1e-6)
    # the recurrence is what a streaming caller computes segment by segment
    model.fc1.kernel[...] = model.fc1.kernel[...] + 0.1
    out = np.asarray(correct_sequence(model, pose))
    last = np.asarray(pose[:, 24])
    for s in (1, 2):
        seg = np.asarray(model(jnp.asarray(last), pose[:, 25 * s:25 * s + 25]))
        np.testing.assert_allclose(out[:, 25 * s:25 * s + 25], seg, atol=1e-5)
        last = seg[:, -1]

    smoother = reaction.PoseSmoother(model)
    track = rng.normal(size=(3, 90, 58)).astype(np.float32)
    smoothed = smoother.smooth(track, offset=5)
    np.testing.assert_array_equal(smoothed[..., :52], track[..., :52])  # expression bit-identical
    np.testing.assert_array_equal(smoothed[:, :30], track[:, :30])  # offset + segment 0 kept
    assert not np.allclose(smoothed[:, 30:, 52:], track[:, 30:, 52:]) and smoothed.shape == track.shape
    np.testing.assert_array_equal(smoother.smooth(track[0])[..., :52], track[0, :, :52])
    with pytest.raises(DataError, match="pose slice"):
        smoother.smooth(track, pose=slice(50, 58))


def _jumpy_set(path, sessions=(0, 1, 2), split="train", frames=200, seed=0):
    """A generated set whose 'generator' is the real listener reaction plus an independent pose offset per
    25-frame segment (what independently sampled windows look like at their seams)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in sessions:
        session = dyadic.generate_session(seed=i, speaker_identity=2 * i, listener_identity=2 * i + 1,
                                          num_frames=frames, num_reactions=2)
        truth = np.stack([react.to_react_coefficients(c.state) for c in session.listeners])
        generated = truth.copy()
        offsets = rng.normal(size=(len(truth), frames // 25, 6)).astype(np.float32) * 0.05
        offsets[..., 3:] = rng.normal(size=offsets[..., 3:].shape) * 0.02
        generated[..., 52:58] += np.repeat(offsets, 25, axis=1)
        out.append({"name": f"s{i}", "generated": generated, "truth": truth,
                    "speaker": react.to_react_coefficients(session.speaker.state)})
    reaction.write_generated(path, split, out, segment=25, source="test")
    return out


# the released training recipe (configs/posnet/synthface.py documents it; its default is our residual/Adam recipe)
RELEASED_RECIPE = ("--config.model.net.residual=false", "--config.model.net.pose_scale=()",
                   "--config.optim.name=sgd", "--config.optim.momentum=0.9", "--config.optim.weight_decay=1e-4",
                   "--config.model.loss.fidelity=truth")


def test_trains_to_cut_seam_jumps(tmp_path):
    _jumpy_set(tmp_path / "gen")
    _jumpy_set(tmp_path / "gen", sessions=(7,), split="val", seed=1)
    cfg = load_config(REPO / "configs/posnet/synthface.py",
                      [*QUIET, f"--config.data.generated={tmp_path / 'gen'}", "--config.train.steps=150",
                       "--config.train.batch_size=4", "--config.data.segments=4", "--config.model.net.hidden=64",
                       *RELEASED_RECIPE, "--config.optim.lr=0.01", "--config.checkpoint.every=150"])
    result = Trainer(cfg, tmp_path / "w", mesh=make_mesh(cfg, 1)).run()
    losses = [result.losses[s] for s in range(1, 151)]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    model, saved = load_model(tmp_path / "w")
    report = objective.evaluate(model, saved, [])
    assert report["after"]["seam_jump"] < report["before"]["seam_jump"] / 2, report


def test_bad_generated_sets_say_what_to_do(tmp_path):
    cfg = load_config(REPO / "configs/posnet/synthface.py", [*QUIET, "--config.data.generated="])
    with pytest.raises(ConfigError, match="data.generated"):
        objective.dataset(cfg, "train")
    with pytest.raises(DataError, match="index.json"):
        reaction.read_generated(tmp_path, "train")
    _jumpy_set(tmp_path / "gen", sessions=(0,), frames=100)
    with pytest.raises(DataError, match="no 'val' sessions"):
        reaction.read_generated(tmp_path / "gen", "val")
    cfg = load_config(REPO / "configs/posnet/synthface.py",
                      [*QUIET, f"--config.data.generated={tmp_path / 'gen'}", "--config.model.net.segment=50"])
    with pytest.raises(ConfigError, match="segment=25"):
        objective.dataset(cfg, "train")


def test_paper_table_rows_on_untrained_generators():
    """The evaluation table runs end to end (tiny untrained generators: the numbers are not the point) and PosNet
    leaves expression bit-identical."""
    from avatarjax.pipelines import reaction_eval
    from avatarjax.registry import TASKS

    gens = {}
    for crop in ("pfl", "floating"):
        cfg = load_config(REPO / "configs/reaction/synthface_tiny.py", [*QUIET, f"--config.data.crop={crop}"])
        with nnx.use_eager_sharding(False):
            gens[crop] = (TASKS.get("reaction").build_model(cfg, nnx.Rngs(0)), cfg)
    segment = gens["pfl"][1].model.net.segment
    with nnx.use_eager_sharding(False):
        posnet = PosNet(PosNetConfig(hidden=16, segment=segment, residual=True), rngs=nnx.Rngs(1))
    posnet.out.bias[...] = jnp.full((segment, 6), 0.01)
    report = reaction_eval.evaluate_table(gens["pfl"], gens["floating"], reaction.PoseSmoother(posnet), sessions=2,
                                          reactions=2, num_steps=2)
    rows = report["rows"]
    assert set(rows) == {"floating", "pfl", "pfl+posnet"}
    assert rows["pfl"]["translation_kept"] > 0
    assert report["posnet"]["expression_identical"]
    for row in rows.values():
        assert all(np.isfinite(v) for v in row.values())
