"""CogPortrait KTO refinement on boundary cases, small: refines the synthface_small DiT (outputs/cogportrait) on
boundary-case records (asymmetric brows, large head turns) with Diffusion-KTO against its frozen copy.

    avatarjax data build cogportrait_kto --checkpoint outputs/cogportrait --out outputs/cogportrait_kto_records \
        --windows 32
    avatarjax train --config configs/cogportrait/kto_small.py --workdir outputs/cogportrait_kto
    avatarjax eval --checkpoint outputs/cogportrait_kto -- --reader outputs/face_reader --clips 12 \
        --subset boundary

KTO hyper-parameters are the paper's (beta 625, KTO and flow-matching losses at equal weight, flow loss on the
desirable clips). The paper's lr 5e-8 is for 2 GPU-days on a 5B model; this CPU demo takes a few hundred steps, so
it uses 2e-5 (the paper's DiT fine-tuning rate was 1e-5).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "cog_portrait_kto"
    c.seed = 0
    c.weights = "outputs/cogportrait_kto"
    c.model = dict(net=dict(num_heads=4, head_dim=64, in_channels=8, out_channels=8, text_dim=384, freq_dim=256,
                            ffn_dim=1024, num_layers=6, audio_dim=80, pose_channels=8, pose_hidden=32),
                   flow=dict(sampler="logit_normal", shift=1.0), cond_drop_prob=0.0,
                   init_from="outputs/cogportrait",
                   kto=dict(beta=625.0, lambda_d=1.0, lambda_u=1.0, kto_weight=1.0, flow_weight=1.0,
                            flow_on="desirable"))
    c.data = dict(records="outputs/cogportrait_kto_records", window=17, frame_size=64, text_len=32, threads=2,
                  prefetch=2)
    c.sample = dict(sampler="unipc", num_steps=20, shift=3.0, guidance="dynamic")
    c.train = dict(steps=300, batch_size=4, compute_dtype="float32", ema_decay=0.0)
    c.optim = dict(name="adamw", lr=2e-5, b2=0.99, schedule="constant", warmup_steps=10, weight_decay=0.0,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=100, keep=1)
    c.log = dict(every=25)
    c.eval = dict(every=0, batches=2)
    return c
