"""Body of Her PPO, tiny: the synthface_tiny speech-video LM as policy (+ value head), its frozen copy as the
reference and a frozen reward model, on human prompts from synthface dyadic sessions (the agent listens). Point
--config.model.policy_init at a speech_video run and --config.model.reward_init at a reward run (reward_tiny)
with the same model.net; both random by default (tests). See avatarjax/train/objectives/alignment.py.

The agent's video stream is off in rollouts (rollout_video=False): PPO optimises the audio codes only (the
video's likelihood is intractable). Free-running video samples used to diverge (std ~2e4 against ~1 for real
stand-in tokens): the first respaced diffusion step divides the eps error by sqrt(abar_999) = 5e-5; the head now
clips x0 (model.net.head.x0_clip, default 4), so rollout_video=True keeps the tokens bounded. For the measured
experiment (an initial policy that leaves the reward room to improve) see ppo_small.py."""

import ml_collections

from avatarjax.config import sibling_config


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "ppo"
    c.seed = 0
    c.model = dict(
        net=sibling_config(__file__, "synthface_tiny.py").model.net.to_dict(),  # the same tiny LM
        policy_init="", reward_init="",
        ppo=dict(beta=0.01, gamma=1.0, lam=0.95, clip=0.2, clip_value=0.2, vf_coef=0.1, epochs=4,
                 whiten_advantages=True, video_steps=1, video_temperature=0.95, rollout_video=False,
                 detach_value=True))
    c.data = dict(num_sessions=48, num_eval_sessions=16, num_pairs=384, num_eval_pairs=64, session_frames=100,
                  num_identities=24, frames=32, threads=1, prefetch=2)
    c.train = dict(steps=80, batch_size=16, compute_dtype="float32")
    c.optim = dict(name="adam", lr=2e-4, schedule="constant", grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=40, keep=2)
    c.log = dict(every=4)
    c.sample = dict(batches=0, seed=0)
    return c
