"""Online reaction generator, small: the evaluation model for issue 6 (PosNet smoothing). 4 conditioned Conformer
layers at d 128 over 2 x 25-frame tokens (previous + current segment), a 2-layer speaker encoder over a 50-frame
(2 s) context of coefficients and log-mel audio; 10 s synthface dyadic sessions with 10 reactions each; 10
reactions per speaker clip at sampling, as in REACT. Sized for ~15 minutes of training on a 2-core CPU.

    avatarjax train --config configs/reaction/synthface_small.py --workdir outputs/reaction
    avatarjax sample --checkpoint outputs/reaction --out outputs/reaction/samples
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "reaction"
    c.seed = 0
    c.model = dict(
        net=dict(segment=25, context=50, dim=128, num_layers=4, num_heads=4, ffn_dim=256, kernel_size=7,
                 dropout=0.0, conv_norm="group",
                 speaker_encoder=dict(dim=128, num_layers=2, num_heads=4, ffn_dim=256, kernel_size=7, dropout=0.0,
                                      conv_norm="group")),
        diffusion=dict(num_train_steps=1000, beta_schedule="linear"),
        loss=dict(velocity_weight=0.0))
    c.data = dict(num_sessions=400, num_eval_sessions=16, num_frames=250, num_reactions=10, num_identities=200,
                  stats_sessions=16, first_segment_prob=0.1, threads=2, prefetch=4)
    c.sample = dict(num_steps=50, eta=0.0, num_reactions=10, sessions=8, num_frames=750, seed=0)
    c.train = dict(steps=3000, batch_size=16, compute_dtype="float32", ema_decay=0.999)
    c.optim = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.98, schedule="cosine", warmup_steps=200, weight_decay=0.01,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=1000, keep=2)
    c.log = dict(every=100)
    c.eval = dict(every=0, batches=8)
    return c
