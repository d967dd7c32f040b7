"""Body of Her dual-system planner, SFT of the local LLM, tiny: for tests. A byte-level Qwen2-architecture decoder
learns the planner's replies (description, analysis, plan with a 5 fps head / eye trajectory) on fine-tuning rows
made in memory from synthface dyadic sessions (the oracle plans of synthface_planner). For a real local planner
set model.net to a converted Qwen2's config, model.init_from to its directory and data.tokenizer to its tokenizer."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "planner_sft"
    c.seed = 0
    c.model = dict(net=dict(vocab_size=256, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128),
                   init_from="")
    c.data = dict(path="", tokenizer="", seq_len=1280, num_sessions=2, num_eval_sessions=1, per_session=4,
                  session_frames=180, traj_fps=2.0)
    c.train = dict(steps=4, batch_size=4, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=1, weight_decay=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=4, keep=1)
    c.log = dict(every=2)
    return c
