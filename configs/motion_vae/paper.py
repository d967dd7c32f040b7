"""InstructAvatar motion/appearance VAE at the released size: 256 px, SD kl-f4 style encoders (channels 256, mult
(1, 2, 4), 2 ResBlocks per level, mid attention): appearance latent 64x64x3, motion latent 16x16x3 = 768-d.

The released training used LPIPS + a PatchGAN discriminator (SD's LPIPSWithDiscriminator: disc weight 0.5, disc
start 50001, Adam betas (0.5, 0.9), lr 4.5e-6 x batch). No LPIPS weights exist offline: the perceptual term here
is L1 feature matching on the discriminator's features.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "motion_vae"
    c.seed = 0
    c.model = dict(frame_size=256, channels=256, channel_mult=(1, 2, 4), num_res_blocks=2, latent_channels=3,
                   motion_extra_down=2, mid_attention=True, groups=32, kl_weight=1e-6, l1_weight=1.0,
                   perceptual_weight=1.0, adversarial_weight=0.5, disc_channels=64, disc_layers=3, disc_start=50001)
    c.data = dict(synthface=dict(num_clips=20000, num_identities=2000, workers=4), frame_size=256, swap_prob=0.5)
    c.train = dict(steps=200000, batch_size=32, compute_dtype="bfloat16")
    c.optim = dict(name="adam", lr=4.5e-6 * 32, b1=0.5, b2=0.9, schedule="constant", grad_clip=0.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=5000, keep=3)
    c.log = dict(every=100)
    c.eval = dict(every=5000, batches=8)
    return c
