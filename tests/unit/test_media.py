"""avatarjax.media round trips on small generated files: video+audio, odd sizes, atomic writes, image and audio
reading with their errors."""

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from avatarjax import media
from avatarjax.errors import DataError

SR = 16_000


def _smooth_frames(num: int, height: int, width: int) -> np.ndarray:
    """A slowly moving colour gradient ``uint8 [T, H, W, 3]`` (smooth, so H.264 should reproduce it closely)."""
    y, x = np.mgrid[:height, :width].astype(np.float64)
    frames = [np.stack([128 + 100 * np.sin(x / 9 + t / 7), 128 + 100 * np.cos(y / 11),
                        128 + 90 * np.sin((x + y) / 13 - t / 5)], axis=-1) for t in range(num)]
    return np.stack(frames).astype(np.uint8)


def _tone(seconds: float, rate: int = SR, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_video_with_audio_round_trip(tmp_path):
    frames, audio = _smooth_frames(30, 48, 64), _tone(1.5)  # 1.2 s of video, 1.5 s of audio: audio is trimmed
    path = media.write_video(tmp_path / "clip.mp4", frames, fps=25, audio=audio, sample_rate=SR)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
    out, fps, wave, rate = media.read_video(path)
    assert out.shape == frames.shape and fps == 25 and rate == SR
    assert _psnr(out, frames) > 30
    assert wave.dtype == np.float32 and wave.shape == (30 * 640,)  # exactly the video's duration
    # no delay from AAC priming; the encoder's first two 1024-sample blocks are coarse, so compare after them
    assert np.abs(wave[2048:] - audio[2048:30 * 640]).max() < 0.01
    assert media.read_audio(path).shape == (30 * 640,)  # the mp4's audio track via PyAV


def test_short_audio_is_padded_and_odd_sizes_work(tmp_path):
    frames = _smooth_frames(10, 33, 45)
    media.write_video(tmp_path / "odd.mp4", iter(frames), fps=25, audio=_tone(0.1))  # frames as an iterable
    out, _, wave, _ = media.read_video(tmp_path / "odd.mp4")
    assert out.shape == (10, 34, 46, 3)  # padded to even by repeating the last row / column
    assert _psnr(out[:, :33, :45], frames) > 30
    assert wave.shape == (10 * 640,) and np.abs(wave[-2000:]).max() < 0.02  # zero-padded past 0.1 s
    media.write_video(tmp_path / "silent.mp4", frames[:3])
    assert media.read_video(tmp_path / "silent.mp4")[2:] == (None, None)


def test_write_video_is_atomic(tmp_path):
    path = media.write_video(tmp_path / "out.mp4", _smooth_frames(5, 32, 32))
    before = path.read_bytes()

    def frames():  # fails after some frames are already encoded
        yield from _smooth_frames(4, 32, 32)
        yield np.zeros((32, 32, 3), np.float32)

    with pytest.raises(DataError, match=r"frame 4 for video '.*out\.mp4' is float32"):
        media.write_video(path, frames(), audio=_tone(1.0))
    assert path.read_bytes() == before
    with pytest.raises(DataError, match="got no frames"):
        media.write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(DataError, match="needs a container suffix"):
        media.write_video(tmp_path / "out", _smooth_frames(1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_read_image_resize_and_errors(tmp_path):
    rgb = _smooth_frames(1, 96, 128)[0]
    path = media.write_image(tmp_path / "face.png", rgb)
    np.testing.assert_array_equal(media.read_image(path), rgb)  # PNG is lossless, channel order kept
    np.testing.assert_array_equal(media.read_image(path, size=64, resize=True),
                                  cv2.resize(rgb[:, 16:112], (64, 64), interpolation=cv2.INTER_AREA))
    with pytest.raises(DataError, match=r"'.*face\.png' is 128x96 but the model expects 64x64.*resize"):
        media.read_image(path, size=64)
    with pytest.raises(DataError, match=r"'.*nope\.png' does not exist"):
        media.read_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "blank.png").touch()
    for name in ("notes.png", "blank.png"):
        with pytest.raises(DataError, match=rf"'.*{name}' cannot be decoded"):
            media.read_image(tmp_path / name)


@pytest.mark.parametrize("rate", [44_100, 8_000])
def test_read_audio_resamples_stereo_to_16k_mono(tmp_path, rate):
    stereo = np.stack([_tone(2.0, rate), _tone(2.0, rate)], axis=1)
    sf.write(tmp_path / "in.wav", stereo, rate, subtype="PCM_16")
    wave = media.read_audio(tmp_path / "in.wav")
    assert wave.dtype == np.float32 and wave.shape == (2 * SR,)
    assert abs(np.argmax(np.abs(np.fft.rfft(wave))) / 2.0 - 440) <= 1  # the tone survives (0.5 Hz bins)


def test_audio_round_trip_and_errors(tmp_path):
    path = media.write_audio(tmp_path / "a.wav", _tone(0.5))
    np.testing.assert_allclose(media.read_audio(path), _tone(0.5), atol=1e-4)
    with pytest.raises(DataError, match=r"'.*missing\.wav' does not exist"):
        media.read_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), SR)
    with pytest.raises(DataError, match=r"'.*empty\.wav' contains no samples"):
        media.read_audio(tmp_path / "empty.wav")
    for name in ("junk.wav", "junk.mp3"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(DataError, match=rf"'.*{name}' cannot be decoded"):
            media.read_audio(tmp_path / name)
    media.write_video(tmp_path / "mute.mp4", _smooth_frames(2, 16, 16))
    with pytest.raises(DataError, match=r"'.*mute\.mp4' has no audio track"):
        media.read_audio(tmp_path / "mute.mp4")
