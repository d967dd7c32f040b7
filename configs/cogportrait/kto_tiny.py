"""CogPortrait KTO refinement, tiny: tests only (the synthface_tiny DiT: 2 layers, 9-frame 32 px windows).

    avatarjax train --config configs/cogportrait/kto_tiny.py --workdir W --config.data.records=DIR \
        [--config.model.init_from=TINY_COG_PORTRAIT_RUN]
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "cog_portrait_kto"
    c.seed = 0
    c.model = dict(net=dict(num_heads=2, head_dim=16, in_channels=8, out_channels=8, text_dim=384, freq_dim=32,
                            ffn_dim=64, num_layers=2, audio_dim=80, pose_channels=8, pose_hidden=8),
                   flow=dict(sampler="logit_normal", shift=1.0), cond_drop_prob=0.0, init_from="",
                   kto=dict(beta=625.0, kto_weight=1.0, flow_weight=1.0, flow_on="desirable"))
    c.data = dict(records="", window=9, frame_size=32, text_len=8, threads=1, prefetch=1)
    c.sample = dict(sampler="unipc", num_steps=4, shift=3.0, guidance="dynamic")
    c.train = dict(steps=2, batch_size=4, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, schedule="constant", warmup_steps=0, grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=1000, keep=1)
    c.log = dict(every=1, progress=False, tensorboard=False)
    c.eval = dict(every=0, batches=1)
    return c
