"""synthface face reader, small: the evaluation reader (GT-Video ceiling). About 10 minutes on a 2-core CPU."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "face_reader"
    c.seed = 0
    c.model = dict(image_size=64, patch=4, stem_channels=64, channels=(64, 128, 128), blocks_per_stage=1, hidden=256,
                   identity_dim=128, joint=512)
    c.data = dict(synthface=dict(threads=2, prefetch=4), frame_size=64, frames_per_clip=32, perturb_prob=0.5)
    c.train = dict(steps=3000, batch_size=4, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=2e-3, schedule="cosine", warmup_steps=100, weight_decay=1e-4, grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=500, keep=2)
    c.log = dict(every=50)
    c.sample = dict(clips=96)
    return c
