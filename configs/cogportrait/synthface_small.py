"""CogPortrait Stage 2, small: the synthface evaluation (a 6-layer d-256 Wan-style DiT on 17-frame 64 px windows,
62 eye-region keypoints through the pose adapter, MiniLM instruction tokens, log-mel audio).

    avatarjax train --config configs/wan_vae/synthface_small.py --workdir outputs/wan_vae
    avatarjax train --config configs/cogportrait/synthface_small.py --workdir outputs/cogportrait \
        --config.data.vae=outputs/wan_vae
    avatarjax eval --checkpoint outputs/cogportrait -- --reader outputs/face_reader
    avatarjax sample --config configs/cogportrait/synthface_small.py --label drowsiness \
        --instruction "look slightly left, then lower the head" --portrait IMG --audio WAV --out OUT.mp4
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "cog_portrait"
    c.seed = 0
    c.weights = "outputs/cogportrait"  # the trained model `avatarjax sample/eval --config` use
    c.model = dict(net=dict(num_heads=4, head_dim=64, in_channels=8, out_channels=8, text_dim=384, freq_dim=256,
                            ffn_dim=1024, num_layers=6, audio_dim=80, pose_channels=8, pose_hidden=32),
                   flow=dict(sampler="logit_normal", shift=1.0), cond_drop_prob=0.1)
    c.data = dict(synthface=dict(num_clips=1000, num_identities=200, window=17, frame_size=64, threads=2, prefetch=4),
                  vae="outputs/wan_vae", text_encoder="minilm", text_len=32, keypoints="eye_region", start_grid=8)
    c.sample = dict(sampler="unipc", num_steps=20, shift=3.0, guidance="dynamic")
    c.train = dict(steps=3000, batch_size=8, compute_dtype="float32", ema_decay=0.999)
    c.optim = dict(name="adamw", lr=3e-4, b2=0.99, schedule="cosine", warmup_steps=200, weight_decay=0.01,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=500, keep=2)
    c.log = dict(every=50)
    c.eval = dict(every=0, batches=4)
    return c
