"""Body of Her speech-video LM, small: a CPU demo on synthface dyadic sessions (stand-in tokens, see
avatarjax/train/objectives/speech_video.py). Stage 2 (audio NLL + video diffusion); MiniLM text prompts."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "speech_video"
    c.seed = 0
    c.model = dict(
        net=dict(backbone=dict(vocab_size=1, dim=256, num_layers=4, num_heads=8, num_kv_heads=2, mlp_dim=768,
                               tie_embeddings=True),
                 num_codebooks=9, codebook_size=128, video_tokens=4, video_dim=8, text_dim=384, motion_dim=6,
                 num_identities=64, head=dict(width=128, depth=3, sample_steps=25, temperature=0.95)),
        loss=dict(stage=2, diffusion_weight=1.0, diffusion_batch_mul=4))
    c.data = dict(num_sessions=256, num_eval_sessions=16, session_frames=200, num_identities=64, frames=64,
                  min_window=24, text_encoder="minilm")
    c.train = dict(steps=2000, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, weight_decay=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=500, keep=3)
    c.log = dict(every=20)
    c.sample = dict(frames=100, sessions=2)
    c.weights = "outputs/speechvideo"  # `avatarjax sample --config configs/speechvideo/synthface_small.py ...`
    return c
