"""Decoder LM (Qwen2 architecture), tiny: for tests. Byte-level text of the package itself."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 0
    c.model = dict(vocab_size=256, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128)
    c.data = dict(path="", seq_len=32)
    c.train = dict(steps=8, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=2, weight_decay=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=4, keep=3)
    c.log = dict(every=2)
    return c
