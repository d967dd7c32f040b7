"""log_mel parity with transformers.audio_utils (numpy, float64 FFT) and torch.stft, shapes, jit and config checks."""

import jax
import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from avatarjax.errors import ConfigError
from avatarjax.nn.melspec import MelConfig, frame_audio, log_mel, mel_filterbank

TOL = 1e-3  # on log-mel (natural log); observed max ~2e-5 (float32 STFT vs float64 references)


def _audio(batch: int, samples: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(samples) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * np.linspace(0, 1, samples)  # some structure on top of noise
    return (0.1 * rng.standard_normal((batch, samples)) + tone).astype(np.float32)


def _hf_filters(cfg: MelConfig) -> np.ndarray:
    return mel_filter_bank(num_frequency_bins=cfg.n_fft // 2 + 1, num_mel_filters=cfg.n_mels,
                           min_frequency=cfg.f_min, max_frequency=cfg.f_max, sampling_rate=cfg.sample_rate,
                           norm=cfg.norm, mel_scale=cfg.mel_scale)


def _hf_log_mel(wave: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """transformers reference ``[frames, n_mels]`` with the centring frames dropped (frames = samples // hop)."""
    mel = spectrogram(wave, window_function(cfg.n_fft, "hann"), frame_length=cfg.n_fft, hop_length=cfg.hop,
                      power=2.0, mel_filters=_hf_filters(cfg), mel_floor=0.0, log_mel=None, center=True,
                      pad_mode="reflect", dtype=np.float64)
    assert mel.shape[1] == wave.shape[0] // cfg.hop + 1  # centring yields one extra frame at these sizes
    return np.log(np.maximum(mel, cfg.log_floor)).T[:wave.shape[0] // cfg.hop]


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(mel_scale="htk", norm=None, n_mels=40, f_min=50.0)],
                         ids=["slaney", "htk"])
def test_filterbank_matches_transformers(cfg):
    np.testing.assert_allclose(mel_filterbank(cfg), _hf_filters(cfg), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("samples", [64 * 640, 7_777])
def test_log_mel_matches_transformers(samples):
    cfg = MelConfig()
    audio = _audio(2, samples)
    ours = np.asarray(jax.jit(log_mel, static_argnums=1)(audio, cfg))
    ref = np.stack([_hf_log_mel(wave, cfg) for wave in audio])
    assert ours.shape == ref.shape == (2, samples // cfg.hop, cfg.n_mels)
    err = np.abs(ours - ref).max()
    print(f"max |log_mel - transformers| = {err:.2e}")
    assert err < TOL


def test_log_mel_matches_torch_stft():
    cfg = MelConfig()
    audio = _audio(3, 16_000)
    stft = torch.stft(torch.from_numpy(audio).double(), cfg.n_fft, cfg.hop, window=torch.hann_window(cfg.n_fft,
                      dtype=torch.float64), center=True, pad_mode="reflect", return_complex=True)
    power = (stft.abs() ** 2).numpy().transpose(0, 2, 1)[:, :audio.shape[1] // cfg.hop]
    ref = np.log(np.maximum(power @ _hf_filters(cfg), cfg.log_floor))
    err = np.abs(np.asarray(log_mel(audio, cfg)) - ref).max()
    print(f"max |log_mel - torch| = {err:.2e}")
    assert err < TOL


def test_shape_alignment_and_framing():
    cfg = MelConfig()
    out = jax.jit(log_mel)(np.zeros((2, 64 * 640), np.float32))
    assert out.shape == (2, 128, 80) and out.dtype == np.float32  # 2 mel frames per 25 fps video frame
    np.testing.assert_allclose(out, np.log(cfg.log_floor))  # silence sits on the floor
    audio = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000)
    frames = np.asarray(frame_audio(audio, cfg))
    padded = np.pad(audio, ((0, 0), (200, 200)), mode="reflect")
    assert frames.shape == (2, 3, 400)
    for t in range(3):
        np.testing.assert_array_equal(frames[:, t], padded[:, t * 320:t * 320 + 400])


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="mel_scale 'kaldi' is unknown"):
        MelConfig(mel_scale="kaldi")
    with pytest.raises(ConfigError, match="f_max"):
        MelConfig(f_max=9_000.0)
