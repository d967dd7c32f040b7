"""DAC codec, small: the demo. 16 kHz synthface speech, hop 256 (62.5 frames/s), 4 codebooks of 256 entries
(codebook dim 8), encoder width 16 -> latent 256, decoder width 256; no discriminator (mel + L1 + VQ terms);
quantizer dropout 0.25 (DAC trains with 0.5; less dropout learns the full-codebook reconstruction faster).

On the shared 2-core CPU (load ~8) a step of 8 x 2048 samples took ~1 s: in 3 minutes (~100 steps, compile
included) the eval mel distance with all codebooks fell from 5.60 (untrained) to 3.72. A 10-minute run (load
5-14, 281 steps) reached 3.77 (`avatarjax eval --checkpoint W`, 4 batches; codebook perplexity 47, 28% of
entries used): the train mel plateaus near 3 after ~130 steps while the codebook / commitment terms spike
(to 60, grad norms up to 500). A 10-minute run at lr 3e-4 (113 steps under heavier load) reached 3.58 but with
codebook 0 collapsed (perplexity 1.8) and larger spikes (codebook term 990), so lr stays at 1e-3.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "dac"
    c.seed = 0
    c.model = dict(sample_rate=16000, encoder_dim=16, encoder_rates=(2, 4, 4, 8), decoder_dim=256,
                   decoder_rates=(8, 4, 4, 2), n_codebooks=4, codebook_size=256, codebook_dim=8,
                   quantizer_dropout=0.25, mel_windows=(32, 64, 128, 256, 512, 1024, 2048),
                   mel_bins=(5, 10, 20, 40, 80, 160, 320))
    c.data = dict(source="synthface", segment=2048, synthface=dict(num_clips=400, num_identities=100, frame_size=0))
    c.train = dict(steps=2000, batch_size=8, compute_dtype="float32")
    c.optim = dict(name="adamw", lr=1e-3, b1=0.8, b2=0.99, schedule="cosine", warmup_steps=20, min_lr_ratio=0.1,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=10)
    c.eval = dict(every=0, batches=4)
    return c
