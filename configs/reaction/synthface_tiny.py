"""Online reaction generator, tiny: for tests (2 layers, d 32, 8-frame segments, 16-frame context, short
sessions with 4 reactions; trains a few steps in seconds)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "reaction"
    c.seed = 0
    c.model = dict(
        net=dict(segment=8, context=16, dim=32, num_layers=2, num_heads=2, ffn_dim=64, kernel_size=5, dropout=0.0,
                 conv_norm="group", speaker_encoder=dict(dim=32, num_layers=1, num_heads=2, ffn_dim=64, kernel_size=5,
                                                         dropout=0.0, conv_norm="group")),
        diffusion=dict(num_train_steps=1000, beta_schedule="linear"),
        loss=dict(velocity_weight=0.0))
    c.data = dict(num_sessions=16, num_eval_sessions=4, num_frames=64, num_reactions=4, num_identities=40,
                  stats_sessions=4, first_segment_prob=0.2, threads=1, prefetch=2)
    c.sample = dict(num_steps=4, eta=0.0, num_reactions=3, sessions=2, num_frames=0, seed=0)
    c.train = dict(steps=6, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.98, schedule="constant", warmup_steps=0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=3, keep=2)
    c.log = dict(every=2)
    return c
