"""InstructAvatar, tiny: for tests (2 layers, d 32, 16-frame windows, a few steps). Needs a motion VAE:
--config.data.vae=DIR (a motion_vae workdir or export; the tiny VAE gives 12-d motion latents at 32 px)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "instruct_avatar"
    c.seed = 0
    c.model = dict(
        net=dict(latent_dim=12, dim=32, num_layers=2, num_heads=2, ffn_dim=64, kernel_size=5, dropout=0.1,
                 audio_feature_dim=80, audio_encoder=dict(dim=32, num_layers=1, num_heads=2, ffn_dim=64, kernel_size=5),
                 text_dim=384, text_mlp_hidden=32, text_mlp_layers=1, keyframe_mlp_hidden=32, pose_hidden=32,
                 head_hidden=32),
        diffusion=dict(formulation="ddpm", num_train_steps=1000, latent_scale=1.0),
        loss=dict(x0="l2", au_weight=0.1, intensity_weight=0.1, cond_drop_prob=0.1))
    c.data = dict(synthface=dict(num_clips=60, num_identities=20, window=16, frame_size=0, threads=1, prefetch=2),
                  vae="", text_encoder="minilm", text_len=16)
    c.sample = dict(sampler="ddim", num_steps=4, num_frames=12)
    c.train = dict(steps=6, batch_size=4, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.98, schedule="constant", warmup_steps=0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=3, keep=2)
    c.log = dict(every=2)
    return c
