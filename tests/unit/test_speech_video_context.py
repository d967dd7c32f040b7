"""Body of Her context ablation (eval.speech_video_context): the no-context baseline really removes the human side
and the conditioning, the metrics match the training loss's, are finite and deterministic, and the task's eval
dispatches to it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.eval import speech_video_context as C
from avatarjax.models import speech_video_lm as svlm
from avatarjax.train.objectives import speech_video as sv
from tests.conftest import REPO

TINY = str(REPO / "configs" / "speechvideo" / "synthface_tiny.py")


@pytest.fixture(scope="module")
def setup():
    from avatarjax.config import load_config

    cfg = load_config(TINY, ["--config.data.num_eval_sessions=4"])
    with nnx.use_eager_sharding(False):
        model = sv.build_model(cfg, nnx.Rngs(0))
    # the zero-initialised diffusion head predicts eps = 0 whatever the context: perturb it
    state = nnx.state(model.net.video_head, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    nnx.update(model.net.video_head, jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), state))
    batch = {k: jnp.asarray(v) for k, v in next(iter(sv.dataset(cfg, "eval"))).items()}
    # tiny has no text encoder: give every frame a prompt, a trajectory, an identity and the human's video
    r = np.random.default_rng(0)
    shape = batch["text"].shape
    batch.update(text=jnp.asarray(r.standard_normal(shape), jnp.float32), text_mask=jnp.ones(shape[:2], bool),
                 motion_mask=jnp.ones(shape[:2], bool), identity=jnp.full(shape[:2], 3, jnp.int32),
                 human_video_mask=jnp.ones(shape[:2], bool))
    return cfg, model, batch


_FORWARD = {}


def _logits(model, batch, condition, absent):
    if id(model) not in _FORWARD:  # one compilation instead of many eager forwards
        _FORWARD[id(model)] = jax.jit(lambda b: model.net(b)["audio_logits"])
    return np.asarray(_FORWARD[id(model)](C.ablate(batch, condition, absent)))


def test_baseline_removes_the_human_side_and_conditioning(setup):
    cfg, model, batch = setup
    absent = C.absent_human_codes(cfg)
    assert absent.shape == (cfg.model.net.num_codebooks,) and (absent == 0).all()  # stand-in silence: level 0
    r = np.random.default_rng(1)
    other_human = {**batch, "human_codes": jnp.asarray(r.integers(0, cfg.model.net.codebook_size,
                                                                  batch["human_codes"].shape), jnp.int32),
                   "human_video": batch["human_video"] + 1.0}
    other_prompt = {**batch, "text": batch["text"] + 1.0, "motion": batch["motion"] + 1.0,
                    "identity": jnp.full_like(batch["identity"], 5)}
    full, base, no_human = (_logits(model, batch, c, absent) for c in ("full", "no_context", "no_human"))
    assert not np.allclose(full, base, atol=1e-4) and not np.allclose(no_human, base, atol=1e-4)
    # the human's codes and video reach (a) but neither (b) nor (c)
    assert not np.allclose(_logits(model, other_human, "full", absent), full, atol=1e-4)
    np.testing.assert_array_equal(_logits(model, other_human, "no_context", absent), base)
    np.testing.assert_array_equal(_logits(model, other_human, "no_human", absent), no_human)
    # prompt, motion and identity reach (c) but not (b)
    assert not np.allclose(_logits(model, other_prompt, "no_human", absent), no_human, atol=1e-4)
    np.testing.assert_array_equal(_logits(model, other_prompt, "no_context", absent), base)
    # no_motion: only the trajectory is emptied (the human side and the prompt still reach it)
    no_motion = _logits(model, batch, "no_motion", absent)
    assert not np.allclose(no_motion, full, atol=1e-4)
    other_motion = {**batch, "motion": batch["motion"] + 1.0}
    np.testing.assert_array_equal(_logits(model, other_motion, "no_motion", absent), no_motion)
    assert not np.allclose(_logits(model, other_human, "no_motion", absent), no_motion, atol=1e-4)
    # the agent's own targets are untouched
    out_full, out_base = model.net(batch), model.net(C.ablate(batch, "no_context", absent))
    for k in ("target_audio", "target_audio_mask", "target_video", "target_video_mask"):
        np.testing.assert_array_equal(out_full[k], out_base[k])
    with pytest.raises(Exception, match="unknown context condition"):
        C.ablate(batch, "nothing", absent)


def test_metrics_match_training_loss_finite_and_deterministic(setup):
    cfg, model, batch = setup
    steps = C.eval_timesteps(model.net.cfg.head.num_train_steps, 4)
    assert steps == (125, 375, 625, 875)
    scorer = C.ContextScorer(model.net, C.absent_human_codes(cfg), stage=2, timesteps=steps)
    key = jax.random.key(0)
    a, b = scorer.score(batch, key), scorer.score(batch, key)
    for c in C.CONDITIONS:
        for k in C._SUMS:
            np.testing.assert_array_equal(a[c][k], b[c][k])
            assert np.isfinite(a[c][k]).all()
    table = C.summarise(a, video=True)["table"]
    assert table["full"] != table["no_context"] and table["no_human"] != table["no_context"]
    assert all(0 <= t["audio_accuracy"] <= 1 and t["audio_nll"] > 0 and t["video_loss"] > 0 for t in table.values())
    # audio metrics are the training loss's nll / accuracy (valid delayed positions only)
    out = model.net(batch)
    nll, m = svlm.nll_loss(out["audio_logits"], out["target_audio"], out["target_audio_mask"])
    full = a["full"]
    np.testing.assert_allclose(full["nll"].sum() / full["count"].sum(), nll, rtol=1e-5)
    np.testing.assert_allclose(full["hits"].sum() / full["count"].sum(), m["accuracy"], rtol=1e-6)
    assert full["count"].sum() == float(jnp.sum(out["target_audio_mask"]))
    # paired noise: one timestep by hand
    one = C.ContextScorer(model.net, C.absent_human_codes(cfg), stage=2, timesteps=(500,),
                          conditions=("full",)).score(batch, key)["full"]
    head, net_cfg = model.net.video_head, model.net.cfg
    x0 = out["target_video"].reshape(-1, net_cfg.video_dim)
    noise = jax.random.normal(jax.random.fold_in(key, 0), x0.shape)
    t = jnp.full((x0.shape[0],), 500)
    cond = out["video_condition"].reshape(-1, out["video_condition"].shape[-1])
    se = jnp.mean(jnp.square(head(svlm.q_sample(svlm.head_schedule(net_cfg.head), x0, t, noise), t, cond) - noise), -1)
    vm = jnp.repeat(out["target_video_mask"].reshape(-1), net_cfg.video_tokens)
    np.testing.assert_allclose(one["video_se"].sum() / one["video_count"].sum(),
                               jnp.sum(se * vm) / jnp.sum(vm), rtol=1e-5)
    # stage 1: audio only, video streams absent
    s1 = C.ContextScorer(model.net, C.absent_human_codes(cfg), stage=1, timesteps=steps).score(batch, key)
    assert s1["full"]["video_count"].sum() == 0 and not np.allclose(s1["full"]["nll"], full["nll"])


def test_task_eval_dispatches_to_the_context_ablation(setup):
    cfg, model, _ = setup
    report = sv.evaluate(model, cfg, ["--context-ablation", "--batches", "1", "--timesteps", "2"])
    assert set(report["context_ablation"]) == set(C.CONDITIONS) and report["batches"] == 1
    assert report["diffusion_timesteps"] == [250, 750] and report["audio_targets"] > 0
    for row in report["context_ablation"].values():
        assert all(np.isfinite(v) for v in row.values())
    assert set(report["paired_vs_full"]) == {"no_motion", "no_human", "no_context"}
    special = sv.evaluate(model, cfg, ["--context-ablation", "--batches", "1", "--timesteps", "2",
                                       "--absent-audio", "special"])
    assert special["absent_human_audio"]["codes"] == [cfg.model.net.codebook_size] * cfg.model.net.num_codebooks
    assert special["context_ablation"]["full"] == report["context_ablation"]["full"]
