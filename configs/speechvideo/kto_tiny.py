"""Body of Her LM-form KTO, tiny: kto.kto_loss on the summed agent audio-code log-probs of the synthface_tiny
speech-video LM vs its frozen reference; preferred segments (agent silent while the human talks) desirable,
overlap-rejected ones undesirable (no_nod pairs differ in video only, whose likelihood is intractable: off).
--config.model.init_from=WORKDIR starts from a speech_video run; random by default."""

import ml_collections

from avatarjax.config import sibling_config


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "lm_kto"
    c.seed = 0
    c.model = dict(
        net=sibling_config(__file__, "synthface_tiny.py").model.net.to_dict(),  # the same tiny LM
        init_from="", kto=dict(beta=0.1, lambda_d=1.0, lambda_u=1.0, mismatched_kl=True))
    c.data = dict(num_sessions=48, num_eval_sessions=16, num_pairs=384, num_eval_pairs=64, session_frames=100,
                  num_identities=24, frames=32, no_nod_prob=0.0, threads=1, prefetch=2)
    c.train = dict(steps=100, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=5e-4, schedule="cosine", warmup_steps=10, weight_decay=0.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=50, keep=2)
    c.log = dict(every=10)
    return c
