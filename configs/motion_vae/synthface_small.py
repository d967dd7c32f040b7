"""InstructAvatar motion/appearance VAE, small: the demo. 64 px frames; appearance latent 16x16x3, motion latent
4x4x3 = 48-d per frame.

Widths (16, 32, 64) with GroupNorm over 4 groups (4 to 16 channels per group; SD's 32 groups would leave one channel
per group at this width) and batch 8: a step costs ~0.5 CPU-seconds on the 2-core CPU, and at equal wall time batch 8
learned faster than 16 or 32. 2000 steps take about 10 minutes on an idle 2-core machine.

Half the sources are the identity's neutral face and the pixels that differ between source and target carry an
extra L1 (``data.neutral_source_prob=0.5``, ``model.moving_weight=1.0``; the motion_vae objective explains why).
With the released objective (both 0) this config learned to copy the source: decoding a held-out utterance's true
motion with its neutral portrait's appearance moved the mouth 0.010x as much as the true face; with them, 0.76x
(2000 steps each; ``transfer_mouth_amplitude`` of ``avatarjax eval --checkpoint DIR``). The moving-pixel L1 does
the work: alone 0.85x, neutral sources alone 0.058x (the shipped VAE has both).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "motion_vae"
    c.seed = 0
    c.model = dict(frame_size=64, channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, latent_channels=3,
                   motion_extra_down=2, mid_attention=True, groups=4, kl_weight=1e-6, moving_weight=1.0)
    c.data = dict(synthface=dict(num_clips=1000, num_identities=200), frame_size=64, swap_prob=0.5,
                  neutral_source_prob=0.5)
    c.train = dict(steps=2000, batch_size=8, compute_dtype="float32", ema_decay=0.995)
    c.optim = dict(name="adamw", lr=1e-3, b2=0.99, schedule="cosine", warmup_steps=50, min_lr_ratio=0.1,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=500, keep=2)
    c.log = dict(every=50)
    c.eval = dict(every=500, batches=12)
    return c
