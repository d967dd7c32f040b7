"""InstructAvatar motion/appearance VAE, tiny: for tests (32 px, width 8; compiles and steps in seconds)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "motion_vae"
    c.seed = 0
    c.model = dict(frame_size=32, channels=8, channel_mult=(1, 2, 4), num_res_blocks=0, latent_channels=3,
                   motion_extra_down=2, mid_attention=False, groups=4, kl_weight=1e-6)
    c.data = dict(synthface=dict(num_clips=200, num_identities=50), frame_size=32, swap_prob=0.5)
    c.train = dict(steps=8, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=3e-3, b2=0.99, schedule="cosine", warmup_steps=2)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=4, keep=2)
    c.log = dict(every=2)
    return c
