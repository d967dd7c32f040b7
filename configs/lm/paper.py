"""Decoder LM at Qwen2-7B size (hidden 3584, 28 layers, 28/4 heads, FFN 18944), bf16 compute, FSDP + TP.

Meant for accelerator pods; the vocabulary stays byte-level until a tokenizer-backed dataset is configured.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 0
    c.model = dict(vocab_size=256, dim=3584, num_layers=28, num_heads=28, num_kv_heads=4, mlp_dim=18944,
                   rope_theta=1_000_000.0, qkv_bias=True, attention="auto")
    c.data = dict(path="", seq_len=4096)
    c.train = dict(steps=10000, batch_size=256, compute_dtype="bfloat16", remat="dots_no_batch")
    c.optim = dict(name="adamw", lr=1e-5, b2=0.95, schedule="cosine", warmup_steps=500, weight_decay=0.1)
    c.mesh = dict(data=1, fsdp=-1, tensor=4, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=500, keep=3)
    c.log = dict(every=10)
    return c
