"""synthface face reader, tiny: for tests (32 px frames, a few clips)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "face_reader"
    c.seed = 0
    c.model = dict(image_size=32, patch=2, stem_channels=16, channels=(16, 32), blocks_per_stage=1, hidden=64,
                   identity_dim=16, joint=64)
    c.data = dict(synthface=dict(num_clips=48, num_identities=40, threads=2, prefetch=2), frame_size=32,
                  frames_per_clip=4)
    c.train = dict(steps=12, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adam", lr=3e-3, schedule="constant")
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=12, keep=1)
    c.log = dict(every=4)
    c.sample = dict(clips=2, sheet_frames=4)
    return c
