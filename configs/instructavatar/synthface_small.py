"""InstructAvatar, small: the demo and the synthface evaluation (4 conditioned Conformer layers, d 128, MiniLM
instructions, log-mel audio, 64 px motion VAE with 48-d motion latents).

    avatarjax train --config configs/motion_vae/synthface_small.py --workdir outputs/motion_vae
    avatarjax train --config configs/instructavatar/synthface_small.py --workdir outputs/instructavatar \
        --config.data.vae=outputs/motion_vae
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "instruct_avatar"
    c.seed = 0
    c.model = dict(
        # dropout 0: synthface clips are procedural (no over-fitting to fight) and dropout's random masks cost ~40%
        # of a CPU step (avatarjax bench instructavatar)
        net=dict(latent_dim=48, dim=128, num_layers=4, num_heads=4, ffn_dim=512, kernel_size=13, dropout=0.0,
                 conv_norm="batch", audio_feature_dim=80,
                 audio_encoder=dict(dim=128, num_layers=2, num_heads=4, ffn_dim=256, kernel_size=13),
                 text_dim=384, text_mlp_hidden=256, text_mlp_layers=2, keyframe_mlp_hidden=128, pose_hidden=128,
                 head_hidden=128),
        diffusion=dict(formulation="ddpm", num_train_steps=1000, beta_schedule="linear", latent_scale=1.0),
        loss=dict(x0="l2", pose_weight=1.0, au_weight=0.1, intensity_weight=0.1, cond_drop_prob=0.1))
    c.data = dict(synthface=dict(num_clips=1000, num_identities=200, window=64, frame_size=0, threads=2, prefetch=4),
                  vae="outputs/motion_vae", text_encoder="minilm", text_len=32, keyframe_substitution=True)
    c.sample = dict(sampler="ddim", num_steps=50, eta=0.0, guidance_scale=1.0, num_frames=100)
    c.train = dict(steps=6000, batch_size=16, compute_dtype="float32", ema_decay=0.999)
    c.optim = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.98, schedule="cosine", warmup_steps=300, weight_decay=0.01,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=1000, keep=2)
    c.log = dict(every=100)
    c.eval = dict(every=0, batches=8)
    return c
