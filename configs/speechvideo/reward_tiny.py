"""Body of Her reward model, tiny: the synthface_tiny speech-video LM with a scalar head, Bradley-Terry loss on
synthface preference pairs (agent listens: silent while the human talks and nods at its pauses; rejected: agent
speech overlapping the human, or the same segment without nods; see avatarjax/train/objectives/alignment.py).
Initialise from a trained generator with --config.model.init_from=WORKDIR (a speech_video run of
synthface_tiny); random by default. 30% of the overlap pairs have no agent video (the model also judges audio
alone, as PPO rollouts with the agent video off need)."""

import ml_collections

from avatarjax.config import sibling_config


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "reward"
    c.seed = 0
    c.model = dict(
        net=sibling_config(__file__, "synthface_tiny.py").model.net.to_dict(),  # the same tiny LM
        init_from="")
    c.data = dict(num_sessions=48, num_eval_sessions=16, num_pairs=384, num_eval_pairs=128, session_frames=100,
                  num_identities=24, frames=32, no_nod_prob=0.5, video_drop_prob=0.3, threads=1, prefetch=2)
    c.train = dict(steps=200, batch_size=16, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=20)
    c.eval = dict(every=100, batches=8)
    return c
