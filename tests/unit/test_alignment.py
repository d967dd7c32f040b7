"""Body of Her alignment: Bradley-Terry, GAE / whitening and clipped PPO losses by hand; the synthface preference
pairs; reference and reward models unchanged by PPO updates; reward accuracy above chance after a few steps;
the LM-form KTO gradient sign."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax.config import load_config
from avatarjax.errors import ConfigError
from avatarjax.models.reward import bradley_terry_loss
from avatarjax.train.objectives import alignment as A
from tests.conftest import REPO, make_mesh

CONFIGS = REPO / "configs" / "speechvideo"
# a smaller net than the configs' (fewer codebooks, shorter segments): compiles and runs fast
SMALL = ["--config.model.net.num_codebooks=3", "--config.model.net.codebook_size=16",
         "--config.model.net.backbone.dim=16", "--config.model.net.backbone.mlp_dim=32",
         "--config.model.net.head.width=16", "--config.data.session_frames=60", "--config.data.frames=12",
         "--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false",
         "--config.checkpoint.every=1000"]


def small_config(name: str, *overrides: str):
    return load_config(CONFIGS / name, [*SMALL, *overrides])


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_bradley_terry_hand_computed():
    chosen, rejected = jnp.array([1.0, 0.0, -0.5]), jnp.array([0.0, 0.5, -1.0])
    loss, m = bradley_terry_loss(chosen, rejected)
    expected = -(log_sigmoid(1.0) + log_sigmoid(-0.5) + log_sigmoid(0.5)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(2 / 3) and float(m["margin"]) == pytest.approx(1 / 3)
    # the gradient raises the chosen score and lowers the rejected one
    g_c, g_r = jax.grad(lambda c, r: bradley_terry_loss(c, r)[0], argnums=(0, 1))(chosen, rejected)
    assert (np.asarray(g_c) < 0).all() and (np.asarray(g_r) > 0).all()


def test_gae_and_whitening_hand_computed():
    rewards, values = jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.5, 0.2, 0.1]])
    adv, ret = A.gae(rewards, values, gamma=1.0, lam=0.95)
    # deltas -0.3, -0.1, 0.9; A2 = 0.9, A1 = -0.1 + 0.95 * 0.9, A0 = -0.3 + 0.95 * A1
    a1 = -0.1 + 0.95 * 0.9
    np.testing.assert_allclose(adv, [[-0.3 + 0.95 * a1, a1, 0.9]], rtol=1e-6)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)
    adv, _ = A.gae(rewards, values, gamma=0.9, lam=0.5)  # delta_i = r_i + 0.9 V_{i+1} - V_i
    d = [0.9 * 0.2 - 0.5, 0.9 * 0.1 - 0.2, 0.9]
    a1 = d[1] + 0.45 * d[2]
    np.testing.assert_allclose(adv, [[d[0] + 0.45 * a1, a1, d[2]]], rtol=1e-5)
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(A.whiten(x), (np.asarray(x) - 2.5) / math.sqrt(1.25 + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(A.whiten(x, shift_mean=False), (np.asarray(x) - 2.5) / math.sqrt(1.25) + 2.5, rtol=1e-6)


def test_ppo_clipped_losses_hand_computed():
    old = jnp.zeros(4)
    logp = jnp.array([0.5, -0.5, 0.5, -0.5])
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    loss, m = A.ppo_policy_loss(logp, old, adv, clip=0.2)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    # max(-A r, -A clip(r)): -1.2 (clipped), -r_lo, r_hi, 0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 - r_lo + r_hi + 0.8) / 4, rel=1e-6)
    assert float(m["clipfrac"]) == pytest.approx(0.5)
    assert float(m["approx_kl"]) == pytest.approx(0.125)
    # gradient: zero where the clipped branch is active, -A r / n elsewhere
    g = jax.grad(lambda lp: A.ppo_policy_loss(lp, old, adv, clip=0.2)[0])(logp)
    np.testing.assert_allclose(g, [0.0, -r_lo / 4, r_hi / 4, 0.0], rtol=1e-6)
    vloss, vm = A.ppo_value_loss(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.1]), jnp.array([2.0, 0.0]), clip=0.2)
    # clipped values 0.7 and 0.0: 0.5 * mean(max(1, 1.69), max(0, 0))
    assert float(vloss) == pytest.approx(0.5 * 1.69 / 2, rel=1e-6)
    assert float(vm["vf_clipfrac"]) == pytest.approx(0.5)


def test_undelay_reads_each_codebook_from_its_step():
    delayed = jnp.arange(2 * 5 * 3).reshape(2, 5, 3)
    codes = np.asarray(A.undelay(delayed, fill=-1))
    assert codes[1, 1, 2] == int(delayed[1, 3, 2]) and codes[0, 4, 0] == int(delayed[0, 4, 0])
    assert codes[0, 3, 2] == -1 and codes[0, 2, 2] == int(delayed[0, 4, 2])


def test_preference_pairs_are_documented_edits():
    cfg = small_config("reward_tiny.py", "--config.data.num_sessions=4", "--config.data.no_nod_prob=0.5",
                       "--config.data.frames=24", "--config.data.session_frames=100")
    sessions = A.PreferenceSessions(cfg, "train")
    kinds = set()
    for i in range(8):
        pair = A.make_pair(sessions, i, np.random.default_rng(i), cfg)
        chosen, rejected = A.split_pairs(pair)
        kind = A.PAIR_KINDS[int(pair["kind"])]
        kinds.add(kind)
        assert (chosen["agent_codes"] == 0).all()  # the preferred agent is silent
        for k in ("human_codes", "human_video", "identity"):
            np.testing.assert_array_equal(chosen[k], rejected[k])
        if kind == "overlap":
            np.testing.assert_array_equal(chosen["agent_video"], rejected["agent_video"])
            assert (rejected["agent_codes"] > 0).any(axis=1).mean() >= 0.4
        else:
            np.testing.assert_array_equal(rejected["agent_codes"], 0)
            assert np.abs(chosen["agent_video"] - rejected["agent_video"]).max() > 0.01
    assert kinds == {"overlap", "no_nod"}
    cfg = small_config("reward_tiny.py", "--config.data.num_sessions=4", "--config.data.no_nod_prob=0",
                       "--config.data.video_drop_prob=1")
    pair = A.make_pair(A.PreferenceSessions(cfg, "train"), 0, np.random.default_rng(0), cfg)
    assert not pair["chosen_agent_video_mask"].any() and not pair["rejected_agent_video_mask"].any()
    # removing the recorded nods leaves the rest of the listener's pitch untouched
    s = sessions.session(0)
    nods = s["nods"]
    if nods:
        a, b = nods[0]
        diff = np.abs(s["agent_video"] - s["agent_video_no_nod"]).max(axis=(1, 2))
        assert diff[a + 2:b - 2].max() > 0 and diff[:max(nods[0][0] - 1, 0)].max(initial=0.0) < 1e-6


def test_configs_load_and_ppo_rejects_grad_accum():
    for name, task in (("reward_tiny.py", "reward"), ("ppo_tiny.py", "ppo"), ("kto_tiny.py", "lm_kto")):
        assert load_config(CONFIGS / name).task == task
    cfg = load_config(CONFIGS / "ppo_tiny.py", ["--config.train.grad_accum=2"])
    with pytest.raises(ConfigError, match="grad_accum"):
        A.check_config(cfg)
    assert load_config(CONFIGS / "ppo_tiny.py").model.ppo.beta == 0.01


def test_reward_accuracy_above_chance_after_a_few_steps(tmp_path):
    from avatarjax.train.loop import Trainer

    cfg = small_config("reward_tiny.py", "--config.train.steps=25", "--config.train.batch_size=8",
                       "--config.data.num_sessions=12", "--config.data.num_eval_sessions=6",
                       "--config.data.num_eval_pairs=32", "--config.data.no_nod_prob=0.25",
                       "--config.optim.warmup_steps=2", "--config.optim.lr=3e-3", "--config.log.every=25",
                       "--config.eval.every=0")
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1))
    trainer.run()
    model = nnx.merge(trainer.graphdef, trainer.state.params, trainer.state.rest)
    acc = A.pair_accuracy(model.reward, cfg, "eval")
    assert acc["pairs"] == 32
    assert acc["accuracy"] >= 0.7, acc


def test_ppo_updates_policy_only_and_reuses_rollouts(tmp_path):
    from avatarjax.train.loop import Trainer

    cfg = small_config("ppo_tiny.py", "--config.train.steps=3", "--config.train.batch_size=2",
                       "--config.model.ppo.epochs=2", "--config.model.ppo.video_steps=1",
                       "--config.data.num_sessions=4", "--config.data.num_eval_sessions=2")
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1))
    state0 = trainer.init_state()
    frozen0 = jax.tree.map(np.asarray, state0.rest)
    params0 = jax.tree.map(np.asarray, state0.params)
    batches = iter(A.prompt_dataset(cfg, "train"))
    with trainer._context():
        s1, m1 = trainer.train_step(state0, jax.tree.map(jnp.asarray, next(batches)))
        buffer1 = jax.tree.map(np.asarray, nnx.merge(trainer.graphdef, s1.params, s1.rest).buffer.get())
        s2, m2 = trainer.train_step(s1, jax.tree.map(jnp.asarray, next(batches)))
    model = nnx.merge(trainer.graphdef, s2.params, s2.rest)
    model0 = nnx.merge(trainer.graphdef, jax.tree.map(jnp.asarray, params0), jax.tree.map(jnp.asarray, frozen0))
    # the frozen reference and reward model hold no parameters and did not move
    for name in ("reference", "reward"):
        assert not jax.tree.leaves(nnx.state(getattr(model, name), nnx.Param))
        jax.tree.map(np.testing.assert_array_equal, nnx.state(getattr(model, name)),
                     nnx.state(getattr(model0, name)))
    # the policy and value head did
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), s2.params, params0)
    assert max(jax.tree.leaves(moved)) > 0
    # step 0 collected a rollout (ratio 1 on its first epoch); step 1 reused it
    assert float(m1["fresh_rollout"]) == 1.0 and float(m2["fresh_rollout"]) == 0.0
    assert float(m1["ratio"]) == pytest.approx(1.0, abs=1e-4)
    jax.tree.map(np.testing.assert_array_equal, model.buffer.get(), buffer1)
    assert np.isfinite([float(m1["loss"]), float(m2["loss"]), float(m1["kl"])]).all()
    assert abs(float(m1["kl"])) < 1e-3  # policy == reference at the first rollout
    assert 0 <= buffer1["agent_codes"].min() and buffer1["agent_codes"].max() < cfg.model.net.codebook_size
    assert np.isfinite(buffer1["score"]).all() and np.abs(buffer1["advantages"].mean()) < 1e-4  # whitened
    # the held-out measurement (`avatarjax eval`): policy vs reference rollouts, KL, the silent agent's score
    out = A.held_out_rewards(model, cfg, batches=1)
    assert out["prompts"] == 2 and np.isfinite([out[k] for k in ("score_policy", "score_reference", "score_silent",
                                                                  "kl")]).all()
    assert out["score_gain"] == pytest.approx(out["score_policy"] - out["score_reference"])
    assert 0 <= out["silent_codes_policy"] <= 1


def test_lm_kto_gradient_sign():
    cfg = small_config("kto_tiny.py", "--config.data.num_sessions=4", "--config.train.batch_size=4")
    with nnx.use_eager_sharding(False):
        model = A.build_lm_kto(cfg, nnx.Rngs(0))
    sessions = A.PreferenceSessions(cfg, "train")
    rows = [A.make_pair(sessions, i, np.random.default_rng(i), cfg) for i in range(4)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(p, rest):
        loss_fn = lambda p: A.lm_kto_loss(nnx.merge(graphdef, p, rest, copy=True), batch, None, 0)  # noqa: E731
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        return jax.tree.map(lambda a, g: a - 1e-2 * g, p, grads), metrics

    new, before = step(params, rest)
    _, after = step(new, rest)
    assert float(before["kl_z0"]) == 0.0  # policy == reference
    assert float(after["logp_desirable"]) > float(before["logp_desirable"])
    assert float(after["logp_undesirable"]) < float(before["logp_undesirable"])
    assert float(after["reward_desirable"]) > 0 > float(after["reward_undesirable"])
    # the frozen reference is not a parameter
    assert not jax.tree.leaves(nnx.state(model.reference, nnx.Param))


@pytest.mark.parametrize("video", [True, False])
def test_rollout_log_probs_match_the_streaming_sampler(video):
    """The teacher-forced full forward (PPO's log pi) scores the rollout exactly as the stream sampled it."""
    cfg = small_config("ppo_tiny.py")
    net = cfg.model.net
    with nnx.use_eager_sharding(False):
        lm = A.svlm.SpeechVideoLM(net, rngs=nnx.Rngs(3))
    b, n, q = 2, 7, net.num_codebooks
    r = np.random.default_rng(0)
    human_codes = jnp.asarray(r.integers(0, net.codebook_size, (b, n, q)), jnp.int32)
    human_video = jnp.asarray(r.standard_normal((b, n, net.video_tokens, net.video_dim)), jnp.float32)
    identity = jnp.array([1, 2], jnp.int32)
    codes, video_tokens, logits = A.stream_rollout(lm, human_codes, human_video, identity, jax.random.key(1),
                                                   video_steps=1, video_temperature=0.95, return_logits=True,
                                                   agent_video_on=video)
    batch = A.rollout_batch(net, codes, video_tokens, human_codes, human_video, identity, video)
    logp, _, _ = A.token_log_probs(lm, batch)
    # the stream's own log-probabilities of its samples: block i, codebook q sampled frame i - q (if i >= q)
    steps = np.arange(n)[:, None] - np.arange(q)[None]
    valid = steps >= 0
    sampled = np.asarray(codes)[:, np.clip(steps, 0, None), np.arange(q)[None]]  # [B, N, Q]
    stream_logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), sampled[..., None], -1)[..., 0]
    np.testing.assert_allclose(logp, np.sum(stream_logp * valid, axis=-1), atol=2e-4)
    assert np.asarray(codes)[:, n - 1, 1:].max() == 0  # never sampled within the rollout
    # the random-init head predicts eps = 0 (x0 = x / sqrt(abar_999) ~ 2e4 x): the clipped x0 keeps the fed-back
    # video tokens bounded
    assert np.abs(np.asarray(video_tokens)).max() <= net.head.x0_clip + 1e-5
