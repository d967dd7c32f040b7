import numpy as np
import pytest

from avatarjax.data import pipeline, transforms
from avatarjax.errors import DataError


def test_resample_keeps_a_tone_and_duration():
    sr = 44_100
    t = np.arange(sr) / sr
    wav = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = transforms.resample_audio(wav, sr)
    assert out.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins for a 1 s clip


def test_resample_mixes_stereo_and_rejects_bad_rates():
    stereo = np.stack([np.ones(100), -np.ones(100)], axis=1)
    assert np.allclose(transforms.resample_audio(stereo, 16_000), 0)
    with pytest.raises(DataError, match="sample rate must be positive"):
        transforms.resample_audio(np.zeros(10), 0)


def test_normalize():
    wav = np.array([1.0, 3.0, 5.0], np.float32)
    z = transforms.normalize_audio(wav)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-3
    assert np.isclose(np.abs(transforms.normalize_audio(wav, "peak")).max(), 0.95)
    with pytest.raises(DataError, match="unknown audio normalisation"):
        transforms.normalize_audio(wav, "loud")


def test_convert_fps_keeps_duration_and_interpolates():
    from avatarjax import media

    track = np.arange(30, dtype=np.float32)[:, None]  # 1 s at 30 fps, value = source frame index
    out = transforms.convert_fps(track, 30)
    assert out.shape == (25, 1)
    # output frame k's centre (k + 0.5) / 25 s sits at source position (k + 0.5) * 1.2 - 0.5 (between frame centres)
    np.testing.assert_allclose(out[:5, 0], [0.1, 1.3, 2.5, 3.7, 4.9], atol=1e-5)
    nearest = transforms.convert_fps(np.arange(50), 50, interpolate=False)
    np.testing.assert_array_equal(nearest[:4], [0, 2, 4, 6])
    # one rule for tracks and frames: nearest picks exactly the frames the video conversion shows
    for fps in (24, 30, 29.97, 50, 60):
        np.testing.assert_array_equal(transforms.convert_fps(np.arange(97), fps, interpolate=False),
                                      media.frame_indices_for_fps(97, fps, 25))
        np.testing.assert_allclose(np.round(transforms.convert_fps(np.arange(97.0), fps)),
                                   media.frame_indices_for_fps(97, fps, 25), atol=1)
    # the tail is never dropped: 7 frames at 24 fps last 0.29 s -> ceil(7 * 25 / 24) = 8
    assert transforms.convert_fps(np.zeros((7, 2)), 24).shape == (8, 2)


def test_crop_or_pad_and_audio_alignment():
    track = np.arange(5)
    piece, mask = transforms.crop_or_pad(track, 3, 4)
    np.testing.assert_array_equal(piece, [3, 4, 0, 0])
    np.testing.assert_array_equal(mask, [True, True, False, False])
    wav = np.arange(5 * 640, dtype=np.float32)
    audio = transforms.crop_audio(wav, 2, 2, 640)
    assert audio[0] == 2 * 640 and audio.shape == (1280,)
    assert transforms.window_start(10, 4, None) == 3
    rng = np.random.default_rng(0)
    assert all(0 <= transforms.window_start(10, 4, rng) <= 6 for _ in range(50))


def test_sample_instruction():
    rng = np.random.default_rng(0)
    picks = {transforms.sample_instruction(["a", "b", " "], rng) for _ in range(50)}
    assert picks == {"a", "b"}
    with pytest.raises(DataError, match="no non-empty instruction"):
        transforms.sample_instruction(["", "  "], rng)


class _Source:
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return {"x": np.array([i])}


def _rows(process_index, process_count, batches=3):
    ds = pipeline.batched(_Source(), batch_size=8, seed=3, process_index=process_index,
                          process_count=process_count,
                          transform=lambda r, rng: {"x": r["x"], "noise": rng.integers(0, 10**9, (1,))})
    it = iter(ds.to_iter_dataset())
    return [next(it) for _ in range(batches)]


def test_processes_split_global_batches_exactly():
    single = _rows(0, 1)
    halves = [_rows(p, 2) for p in range(2)]
    for b in range(3):
        for key in ("x", "noise"):
            joined = np.concatenate([halves[0][b][key], halves[1][b][key]])
            np.testing.assert_array_equal(joined, single[b][key])


def test_epochs_reshuffle_and_cover_everything():
    ds = pipeline.batched(_Source(), batch_size=8, seed=3)
    it = iter(ds.to_iter_dataset())
    epoch1 = np.concatenate([next(it)["x"] for _ in range(5)]).ravel()
    epoch2 = np.concatenate([next(it)["x"] for _ in range(5)]).ravel()
    assert sorted(epoch1) == list(range(40)) and sorted(epoch2) == list(range(40))
    assert not np.array_equal(epoch1, epoch2)
