"""Body of Her PPO, the demonstration run (about 8 minutes on this CPU; the tiny net of synthface_tiny, reward_tiny
and ppo_tiny, since the synthface_small net is too slow for PPO rollouts here): PPO must raise the held-out
reward of a policy that does NOT yet listen, with a bounded KL to it.

Why not start from an ordinary generator: a speech_video generator trained to convergence on the dyadic sessions
(agent the speaker or the listener, agent_speaks_prob 0.5) is already silent while the human talks, so its
rollouts get the reward model's maximum (the preferred segments' agent audio is exactly the silent code 0) and
PPO has nothing to improve. The opposite start does not work either: a generator trained with the agent always
the speaker (agent_speaks_prob 1.0, 600 steps) talks over the human on every prompt (0.1% silent codes), its
held-out score -8.0 sits on the reward's flat floor (ceiling 6.4) and 60 PPO steps gained 0.03 +- 0.04: no
rollout is ever better than another, so the advantages carry no signal. The initial policy here is a
higher-entropy generator: the same two-role training stopped after 150 steps, which has learned that the agent
is often silent but not yet when (64% silent codes, held-out score -3.4), so rollouts differ in how much the agent
talks over the human and PPO can select the listening ones. ``avatarjax eval`` reports ``score_silent``, the
reward of the preferred behaviour (the same rollouts with the agent's audio silenced), next to
``score_reference``: the room to improve is their difference.

The agent's video stream is off in rollouts (rollout_video False): the policy's action is the audio step (the
video's likelihood is intractable, so video is not in the policy ratio) and the reward model, trained with
video_drop_prob 0.3, judges the audio alone. Sampled video tokens stay bounded since the diffusion head clips
x0 (model.net.head.x0_clip), so rollout_video=True also runs.

Commands (workdirs under /tmp; each training run about 3-8 minutes on an idle 2-core CPU):

  avatarjax train --config configs/speechvideo/synthface_tiny.py --workdir /tmp/gen_mixed \
      --config.data.agent_speaks_prob=0.5 --config.data.num_sessions=48 --config.data.num_eval_sessions=4 \
      --config.data.session_frames=100 --config.data.frames=32 --config.data.min_window=16 \
      --config.train.steps=150 --config.train.batch_size=8 --config.optim.lr=2e-3 --config.optim.warmup_steps=20
  avatarjax train --config configs/speechvideo/reward_tiny.py --workdir /tmp/reward_tiny
  avatarjax eval --workdir /tmp/reward_tiny          # held-out pair accuracy (measured 0.992)
  avatarjax train --config configs/speechvideo/ppo_small.py --workdir /tmp/ppo_small \
      --config.model.policy_init=/tmp/gen_mixed --config.model.reward_init=/tmp/reward_tiny
  avatarjax eval --workdir /tmp/ppo_small            # policy vs reference (the initial policy), kl

Measured (2-core CPU shared with other jobs; the PPO run 7 min wall, about 3 of them compiling): 64 held-out
prompts, score_reference -3.37 -> score_policy 1.08 (gain 4.46 +- 0.69 stderr; score_silent 6.43), silent agent
codes 0.64 -> 0.78, KL to the initial policy 43 nats per rollout (0.13 per sampled code; per-token penalty beta
0.01); the training-batch score rose from about -1 to 6 over the 120 steps (30 rollout batches).
"""

from avatarjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "ppo_tiny.py")  # the same tiny policy / value / reward networks
    c.model.ppo.video_steps = 4
    c.train.steps = 120
    c.optim.lr = 1e-3
    c.checkpoint = dict(every=120, keep=1)
    c.log.progress = False
    return c
