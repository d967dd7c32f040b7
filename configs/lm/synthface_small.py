"""Decoder LM (Qwen2 architecture), small: the demo. Learns byte-level text of the package in about a minute."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 0
    c.model = dict(vocab_size=256, dim=128, num_layers=4, num_heads=4, num_kv_heads=2, mlp_dim=384)
    c.data = dict(path="", seq_len=128)
    c.train = dict(steps=300, batch_size=16, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=2e-3, schedule="cosine", warmup_steps=30, weight_decay=0.01, grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=25)
    c.eval = dict(every=100, batches=4)
    return c
