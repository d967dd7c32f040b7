"""DAC codec, small: the demo. 16 kHz synthface speech, hop 256 (62.5 frames/s), 4 codebooks of 256 entries
(codebook dim 8), encoder width 16 -> latent 256, decoder width 256; no discriminator (mel + L1 + VQ terms);
quantizer dropout 0.25 (DAC trains with 0.5; less dropout learns the full-codebook reconstruction faster).

Measured on the shared 2-core CPU (load 6-8 from other jobs), 10 minutes of `avatarjax train` (490 steps at lr 3e-4;
SIGTERM then `avatarjax eval --checkpoint W`, 4 eval batches of held-out identities' speech): eval mel distance
5.60 (untrained) -> 2.82, waveform L1 0.047, codebook perplexity 19 (codebook 0: 15.5; 17% of entries used).
For scale on the same eval audio: the clean audio plus white noise at 10 / 20 dB SNR scores 3.62 / 1.88.
lr 1e-3 (the previous default) trains less per step here (150-step probes: eval mel 4.03 at 1e-3, 3.34 at 3e-4,
3.41 at 1e-4) with codebook / commitment spikes; an autoencoder with the quantiser bypassed learned no faster
(3.98 at 150 steps, lr 1e-3), so the codec's convolutions, not the codebooks, set the pace on this CPU.
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
    c.optim = dict(name="adamw", lr=3e-4, b1=0.8, b2=0.99, schedule="cosine", warmup_steps=20, min_lr_ratio=0.1,
                   grad_clip=1.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, sequence=1, rules="fsdp")
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=10)
    c.eval = dict(every=0, batches=4)
    return c
