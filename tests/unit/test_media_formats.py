"""Formats in and out (avatarjax.media): the length arithmetic, audio resampling and down-mixing, frame-rate
conversion to 25 fps by timestamp, and audio/video sync through an mp4 round trip (a click lands on its frame)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from avatarjax import media
from avatarjax.errors import DataError

RATES = (8_000, 16_000, 22_050, 44_100, 48_000)


# ------------------------------------------------------------------------------------------- length arithmetic


def test_frame_count_equals_duration_for_many_lengths_and_rates():
    rng = np.random.default_rng(0)
    rates = list(RATES) + [11_025, 44_056]  # and two rates without a whole number of samples per 25 fps frame
    for trial in range(200):
        rate = rates[trial % len(rates)]
        num = int(rng.integers(0, 10 * rate)) if trial % 10 else int(rng.integers(0, 3))  # include 0, 1, 2 samples
        frames = media.frames_for_audio(num, rate)
        assert frames == math.ceil(Fraction(num, rate) * 25)  # one frame per started 40 ms
        assert (frames - 1) * Fraction(rate, 25) < num <= frames * Fraction(rate, 25) or num == frames == 0
        wave = rng.uniform(-1, 1, num).astype(np.float32)
        padded, count = media.pad_audio_to_frames(wave, rate)
        assert count == frames and padded.shape == (media.samples_for_frames(frames, rate),)
        assert (padded[:num] == wave).all() and (padded[num:] == 0).all()  # nothing lost, only zeros added
        assert media.frames_for_audio(padded.shape[0], rate) == frames
        # the inverse: n frames of audio is n frames again, and frame boundaries tile the audio
        assert media.frames_for_audio(media.samples_for_frames(frames, rate), rate) == frames
        assert frames == 0 or media.samples_for_frames(frames, rate) - media.samples_for_frames(frames - 1, rate) in (
            math.floor(rate / 25), math.ceil(rate / 25))


def test_fit_audio_and_other_frame_rates():
    wave = np.arange(1000, dtype=np.float32)
    np.testing.assert_array_equal(media.fit_audio(wave, 1, 16_000), wave[:640])  # trims
    fitted = media.fit_audio(wave, 2, 16_000)
    assert fitted.shape == (1280,) and (fitted[1000:] == 0).all() and (fitted[:1000] == wave).all()  # pads
    ntsc = Fraction(30000, 1001)
    for num in (0, 1, 1601, 48_000, 48_048):
        frames = media.frames_for_audio(num, 48_000, ntsc)
        assert frames == math.ceil(Fraction(num, 48_000) * ntsc)
        assert media.frames_for_audio(media.samples_for_frames(frames, 48_000, ntsc), 48_000, ntsc) == frames
    assert media.frames_for_audio(16_000, 16_000, 30000 / 1001) == 30  # a float NTSC rate is read as 30000/1001
    with pytest.raises(DataError, match="sample rate must be positive"):
        media.frames_for_audio(10, 0)


# ----------------------------------------------------------------------------------------------------- audio


def _tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def test_resampling_round_trip_keeps_a_tone():
    tone = _tone(1.0, 16_000)
    up = media.resample(tone, 16_000, 44_100)
    assert up.shape == (44_100,)
    edge = 200  # the filter's start-up and tail
    assert np.abs(up[edge:-edge] - _tone(1.0, 44_100)[edge:-edge]).max() < 2e-3
    back = media.resample(up, 44_100, 16_000)
    assert back.shape == tone.shape
    assert np.abs(back[edge:-edge] - tone[edge:-edge]).max() < 3e-3
    # nothing above the new Nyquist frequency survives: a 7 kHz tone at 44.1 kHz vanishes at 8 kHz
    assert np.abs(media.resample(_tone(0.5, 44_100, 7_000), 44_100, 8_000)[edge:-edge]).max() < 0.02


def test_read_audio_any_rate_and_channel_count(tmp_path):
    left, right = _tone(0.5, 44_100, 300), _tone(0.5, 44_100, 500)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], 1), 44_100)
    got = media.read_audio(tmp_path / "stereo.flac", 16_000)
    want = (_tone(0.5, 16_000, 300) + _tone(0.5, 16_000, 500)) / 2
    assert got.dtype == np.float32 and got.shape == (8000,)
    assert np.abs(got[200:-200] - want[200:-200]).max() < 3e-3  # 16-bit FLAC + filter
    three = np.stack([_tone(0.3, 8_000, 200)] * 3, 1)
    sf.write(tmp_path / "three.wav", three, 8_000, subtype="FLOAT")
    got = media.read_audio(tmp_path / "three.wav", 48_000)
    assert got.shape == (0.3 * 48_000,) and np.abs(got[600:-600] - _tone(0.3, 48_000, 200)[600:-600]).max() < 3e-3


# ----------------------------------------------------------------------------------------------- frame rates


@pytest.mark.parametrize("fps_in", [30, 50, 24, Fraction(30000, 1001)])
def test_fps_conversion_by_timestamp(fps_in):
    num = 3 * int(fps_in) + 1  # just over 3 s: the last output frame is partial
    index = media.frame_indices_for_fps(num, fps_in, 25)
    assert index.size == math.ceil(Fraction(num) / Fraction(fps_in) * 25)  # the end is not lost
    centre_out = (np.arange(index.size) + 0.5) / 25
    start_in, stop_in = index / float(fps_in), (index + 1) / float(fps_in)
    inside = (start_in <= centre_out + 1e-9) & (centre_out <= stop_in + 1e-9)
    assert inside[index < num - 1].all()  # each output frame shows the input frame on screen at its centre
    assert (np.diff(index) >= 0).all() and index[0] == 0 and index[-1] == num - 1
    times = np.arange(num) / float(fps_in)  # the timestamp path agrees with the exact integer path
    np.testing.assert_array_equal(media.frame_indices_for_fps(times, fps_in, 25), index)
    if fps_in == 50:
        np.testing.assert_array_equal(index, np.minimum(np.arange(index.size) * 2, num - 1))
    if fps_in == 30:  # every sixth frame is dropped
        assert sorted(set(range(30)) - set(index[:25].tolist())) == [3, 9, 15, 21, 27]
    if fps_in == 24:  # one frame shown twice per second
        assert np.bincount(index[:25]).max() == 2 and len(set(index[:25].tolist())) == 24


@pytest.mark.parametrize("fps_mid", [30, 50, 60, Fraction(30000, 1001)])
def test_fps_round_trip_through_a_higher_rate_is_exact(fps_mid):
    frames = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    up = media.convert_video_fps(frames, 25, fps_mid)
    assert up.shape[0] == math.ceil(Fraction(40, 25) * Fraction(fps_mid))
    back = media.convert_video_fps(up, fps_mid, 25)
    # 1.6 s is a whole number of frames at 30/50/60 fps; at 29.97 fps it is rounded up to 48 frames (1.6016 s),
    # which is 41 frames at 25 fps: the rounding-up repeats the last frame instead of losing it
    assert back.shape[0] == math.ceil(Fraction(up.shape[0]) / Fraction(fps_mid) * 25)
    np.testing.assert_array_equal(back[:40], frames)
    np.testing.assert_array_equal(back[40:], frames[-1:].repeat(back.shape[0] - 40, axis=0))


def test_fps_blend_and_variable_rate():
    ramp = (np.arange(20, dtype=np.float64) * 10).reshape(20, 1, 1, 1) * np.ones((1, 1, 1, 3))
    halved = media.convert_video_fps(ramp.astype(np.uint8), 50, 25, method="blend")
    np.testing.assert_array_equal(halved[:, 0, 0, 0], (np.arange(10) * 20 + 5).astype(np.uint8))  # pairs averaged
    # variable frame rate: frames at irregular times; each output frame shows the frame on screen at its centre
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.uniform(0.01, 0.05, 60))
    frames = np.arange(60, dtype=np.uint8).reshape(60, 1, 1, 1)
    out = media.convert_video_fps(frames, None, 25, times=times, end=times[-1] + 0.03)
    assert out.shape[0] == math.ceil(round((times[-1] + 0.03 - times[0]) * 25, 6))
    centres = times[0] + (np.arange(out.shape[0]) + 0.5) / 25
    for centre, shown in zip(centres, out[:, 0, 0, 0]):
        assert times[shown] <= centre and (shown == 59 or centre <= times[shown + 1])
    with pytest.raises(DataError, match="use 'nearest' or 'blend'"):
        media.convert_video_fps(frames, 30, 25, method="cubic")


# ------------------------------------------------------------------------------------------------------- sync

_BITS, _BAR = 7, 8  # a frame's index as 7 black/white bars of 8 px: survives H.264 exactly


def _coded_frames(num: int) -> np.ndarray:
    bits = (np.arange(num)[:, None] >> np.arange(_BITS)[None]) & 1
    bars = np.repeat(bits * 255, _BAR, axis=1).astype(np.uint8)  # [T, 56]
    return np.repeat(np.repeat(bars[:, None, :, None], 32, axis=1), 3, axis=3)  # [T, 32, 56, 3]


def _read_codes(frames: np.ndarray) -> np.ndarray:
    centres = frames[:, 4:28, _BAR // 2::_BAR, :].mean(axis=(1, 3))[:, :_BITS]
    return ((centres > 128) * (1 << np.arange(_BITS))).sum(axis=1)


def _click_time(audio: np.ndarray, rate: int) -> float:
    """Seconds of the loudest 5 ms of the audio (the click), robust to the codec's pre-echo."""
    energy = np.convolve(audio.astype(np.float64) ** 2, np.ones(rate // 200), mode="same")
    return float(np.argmax(energy)) / rate


def test_click_lands_on_its_frame_through_fps_conversion_and_mp4(tmp_path):
    click_at, rate_in, fps_in = 1.30, 44_100, 30  # the source: 30 fps, 44.1 kHz, 2.5 s
    source_frames = _coded_frames(75)
    audio = np.zeros(int(2.5 * rate_in), np.float32)
    start = round(click_at * rate_in)
    audio[start:start + rate_in // 200] = 0.8 * np.sin(2 * np.pi * 2000 * np.arange(rate_in // 200) / rate_in)
    src = media.write_video(tmp_path / "src.mp4", source_frames, fps=fps_in, audio=audio, sample_rate=rate_in)

    frames, wave = media.read_video_at(src, fps=25, sample_rate=16_000)  # -> 25 fps, 16 kHz mono, fitted
    assert frames.shape[0] == math.ceil(75 / fps_in * 25) and wave.shape == (frames.shape[0] * 640,)
    np.testing.assert_array_equal(_read_codes(frames), media.frame_indices_for_fps(75, fps_in, 25))
    assert abs(_click_time(wave, 16_000) - click_at) < 0.01

    out = media.write_video(tmp_path / "out.mp4", frames, fps=25, audio=wave, sample_rate=16_000)
    again, fps, wave2, rate = media.read_video(out)
    assert fps == 25 and again.shape[0] == frames.shape[0] and wave2.shape == wave.shape  # exact duration match
    np.testing.assert_array_equal(_read_codes(again), _read_codes(frames))  # no dropped or repeated frames
    click_frame = int(_click_time(wave2, rate) * 25)
    assert abs(click_frame - int(click_at * 25)) <= 1  # the click lands on the expected frame within one frame
    shown = _read_codes(again)[click_frame] / fps_in  # and that frame shows the source at the click's time
    assert abs(shown - click_at) < 1 / 25 + 1 / fps_in


def test_streams_starting_at_different_times_are_aligned(tmp_path):
    """A file whose video starts 0.2 s after its audio (edit lists, trimmed recordings): the audio returned by
    read_video_at starts with the first frame."""
    import av

    rate, path = 16_000, tmp_path / "late_video.mp4"
    audio = np.zeros(rate, np.float32)
    audio[8000:8080] = 0.8 * np.sin(2 * np.pi * 2000 * np.arange(80) / rate)  # click at 0.5 s on the audio clock
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="mono")
        for index in range(20):  # 0.8 s of video from 0.2 s
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
            frame.pts, frame.time_base = 5 + index, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, rate, 1024):
            chunk = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = rate, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
    frames, wave = media.read_video_at(path)
    assert frames.shape[0] == 20 and wave.shape == (20 * 640,)
    assert abs(_click_time(wave, rate) - 0.3) < 0.01  # 0.5 s on the audio clock is 0.3 s into the video
