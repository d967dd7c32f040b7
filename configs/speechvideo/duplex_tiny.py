"""Body of Her speech-video LM on REAL tokens, tiny: for tests and the duplex-agent demo on this CPU.

The LM trains on DAC codes and video-tokenizer latents read from token records (``avatarjax data tokenize
synthface_tokens``; see avatarjax/pipelines/duplex_agent.py). It needs, before training:

    avatarjax train --config configs/dac/synthface_tiny.py --workdir outputs/duplex/dac \\
        --config.model.encoder_rates='(8, 8, 10)' --config.model.decoder_rates='(10, 8, 8)'
    avatarjax train --config configs/video_tokenizer/synthface_tiny.py --workdir outputs/duplex/vtok
    avatarjax data tokenize synthface_tokens --checkpoint outputs/duplex/vtok --audio_codec outputs/duplex/dac \\
        --out outputs/duplex/tokens --clips 48

A DAC with hop 640 at 16 kHz gives one code frame per 40 ms video frame, so the LM's codebooks are the DAC's
(2 x 64 entries in the tiny DAC); the tiny video tokenizer gives K = 4 latents of width 4 per 32 px frame.
Then ``avatarjax train --config configs/speechvideo/duplex_tiny.py --workdir outputs/duplex/lm`` and
``avatarjax sample --config configs/speechvideo/duplex_tiny.py --human-audio H.wav --human-video H.mp4 --out A.mp4``.

Measured on the shared 2-core CPU (load 5-15 from other jobs), each stage cut at 3 minutes: DAC 367 steps, video
tokenizer 600 steps (eval PSNR 17.7 dB: blurry faces), 40 + 27 clips tokenized, LM 366 steps (audio-code accuracy
0.79 at step 350). Streaming 100 frames of a held-out speaker (DAC encode + video encode + LM step + DAC decode +
video decode per frame): median 11.8 ms, p95 15.4 ms per 40 ms frame, real-time factor 0.29 (compiling: 7 s
before the first frame). Turn-taking on 8 held-out sessions x 64 frames: quiet while the human speaks 0.64, talks
when the human is silent 0.88 (score 0.76; the data 0.92, a no-context agent 0.5).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "speech_video"
    c.seed = 0
    c.model = dict(
        net=dict(backbone=dict(vocab_size=1, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                               tie_embeddings=True),
                 num_codebooks=2, codebook_size=64, video_tokens=4, video_dim=4, text_dim=384, motion_dim=6,
                 num_identities=64, head=dict(width=32, depth=2, sample_steps=10, temperature=0.95)),
        loss=dict(stage=2, diffusion_weight=1.0, diffusion_batch_mul=2))
    c.data = dict(tokens="outputs/duplex/tokens", dac="outputs/duplex/dac", video_tokenizer="outputs/duplex/vtok",
                  num_eval_sessions=2, session_frames=64, num_identities=64, frames=32, min_window=8,
                  text_encoder="", human_video_prob=0.0, motion_prob=0.0, threads=1, prefetch=2)
    c.train = dict(steps=200, batch_size=4, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=10, weight_decay=0.01)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp_tp")
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=10)
    c.sample = dict(frames=48, sessions=1, video_steps=4)
    c.weights = "outputs/duplex/lm"
    return c
