"""InstructAvatar at the paper / released size: 12 conditioned Conformer layers, d 768, 12 heads, FFN 2048,
kernel 13, a 4-layer PosConformer audio encoder, CLIP ViT-L/14 instruction features (768-d, 77 tokens), 768-d
motion latents from a 256 px motion VAE, AdamW (0.9, 0.98) at 1e-5 with 8000 inverse-sqrt warm-up steps, batch 32.

The release feeds wav2vec2 (XLSR-53) CNN features (512-d at 50 Hz); this config uses the 80-bin log-mel front-end
at the same 50 Hz rate (set audio_feature_dim=512 with a wav2vec2 front-end). Switch to the released diffusion
with --config.model.diffusion.formulation=vpsde --config.model.net.time_scale=1000 --config.model.loss.x0=l1
--config.model.loss.eps_weight=1 --config.sample.sampler=euler --config.sample.num_steps=150.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "instruct_avatar"
    c.seed = 0
    c.model = dict(
        net=dict(latent_dim=768, dim=768, num_layers=12, num_heads=12, ffn_dim=2048, kernel_size=13, dropout=0.1,
                 conv_norm="batch", audio_feature_dim=80,
                 audio_encoder=dict(dim=768, num_layers=4, num_heads=4, ffn_dim=1024, kernel_size=13),
                 text_dim=768, text_mlp_hidden=1024, text_mlp_layers=4, keyframe_mlp_hidden=512, pose_hidden=384,
                 head_hidden=256),
        diffusion=dict(formulation="ddpm", num_train_steps=1000, beta_schedule="linear", latent_scale=0.25),
        loss=dict(x0="l2", pose_weight=1.0, au_weight=0.1, intensity_weight=0.1, cond_drop_prob=0.1))
    c.data = dict(synthface=dict(window=250, frame_size=0), vae="", text_encoder="clip:", text_len=77)
    c.sample = dict(sampler="ddim", num_steps=50)
    c.train = dict(steps=200000, batch_size=32, compute_dtype="bfloat16", remat="dots")
    c.optim = dict(name="adamw", lr=1e-5, b1=0.9, b2=0.98, schedule="inverse_sqrt", warmup_steps=8000)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=2000, keep=3)
    c.log = dict(every=50)
    return c
