"""Images, audio and mp4 video with audio, read and written as numpy arrays.

Arrays: images ``uint8 [H, W, 3]`` RGB, videos ``uint8 [T, H, W, 3]`` RGB, audio ``float32 [samples]`` mono in
[-1, 1]. Every unusable input raises :class:`DataError` naming the file, the problem and the fix. Writers are atomic:
they write a hidden temporary file next to the target and rename it over the target only once it is complete, so a
failure never leaves a half-written file and never replaces an existing good one.

Codecs: video is H.264 (``libx264``, which PyAV's bundled ffmpeg ships), ``yuv420p`` for universal playback; audio
is AAC (ffmpeg's native ``aac`` encoder).

Length arithmetic (the one place it is done; every pipeline uses it): video frame ``i`` at ``fps`` covers the time
``[i / fps, (i + 1) / fps)`` and the audio samples ``[samples_for_frames(i), samples_for_frames(i + 1))``.
:func:`frames_for_audio` rounds **up**, so a partial last frame still gets a frame and the end of the audio is never
lost; :func:`pad_audio_to_frames` zero-pads the audio to exactly those frames (and :func:`fit_audio` pads or trims
it to any frame count), so after it ``frames_for_audio(len(audio)) == num_frames`` and
``len(audio) == samples_for_frames(num_frames)``, exactly one frame per 40 ms at 25 fps.

Formats in: :func:`read_audio` takes any sample rate and channel count (channels averaged, then :func:`resample`:
scipy's polyphase FIR ``resample_poly`` with the exact rational rate ratio, Kaiser-windowed sinc, beta 5);
:func:`read_video_at` takes any frame rate, constant or variable, and returns 25 fps frames chosen by timestamp
(:func:`frame_indices_for_fps`) or blended (:func:`convert_video_fps`), with its audio resampled, down-mixed and
fitted to the frames.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf
from scipy import signal

from avatarjax.data.transforms import TARGET_FPS, TARGET_SAMPLE_RATE
from avatarjax.atomic import atomic_file
from avatarjax.errors import DataError

_SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"}  # everything else (mp3, m4a, mp4, ...) is decoded by PyAV
_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv"}  # containers that take H.264 + AAC


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist: check the path")
    if not path.is_file():
        raise DataError(f"{what} '{path}' is not a file: pass a file, not a directory")
    return path


@contextlib.contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic.atomic_file`` with write errors reported as one clear ``DataError``."""
    try:
        with atomic_file(path) as tmp:
            yield tmp
    except OSError as err:
        raise DataError(f"cannot write '{path}' ({err}): check that its directory is writable") from err


# ------------------------------------------------------------------------------------------- length arithmetic

FPS = TARGET_FPS  # 25: one video frame per 40 ms


def _rational(value: float | Fraction, what: str) -> Fraction:
    """A positive rate as an exact fraction (29.97 given as 30000/1001 stays 30000/1001)."""
    rate = Fraction(value).limit_denominator(1001) if not isinstance(value, (int, Fraction)) else Fraction(value)
    if rate <= 0:
        raise DataError(f"{what} must be positive, got {value}")
    return rate


def frames_for_audio(num_samples: int, sample_rate: float, fps: float = FPS) -> int:
    """The number of video frames for ``num_samples`` of audio: ``ceil(duration * fps)``, computed exactly in
    integers, so a partial last frame counts as a frame and the end of the audio is never lost (0 samples: 0)."""
    if num_samples < 0:
        raise DataError(f"audio length must be >= 0 samples, got {num_samples}")
    ratio = _rational(fps, "frame rate") / _rational(sample_rate, "sample rate")  # frames per sample
    return -(-num_samples * ratio.numerator // ratio.denominator)


def samples_for_frames(num_frames: int, sample_rate: float, fps: float = FPS) -> int:
    """The number of audio samples under ``num_frames`` video frames: ``floor(num_frames * sample_rate / fps)``
    (exact whenever a frame holds a whole number of samples, e.g. 640 at 16 kHz and 25 fps).

    Inverse of :func:`frames_for_audio`: ``frames_for_audio(samples_for_frames(n)) == n`` for every n, and
    ``samples_for_frames(frames_for_audio(s)) >= s``; frame ``i``'s samples are
    ``[samples_for_frames(i), samples_for_frames(i + 1))``."""
    if num_frames < 0:
        raise DataError(f"frame count must be >= 0, got {num_frames}")
    ratio = _rational(sample_rate, "sample rate") / _rational(fps, "frame rate")  # samples per frame
    return num_frames * ratio.numerator // ratio.denominator


def fit_audio(wave: np.ndarray, num_frames: int, sample_rate: float, fps: float = FPS) -> np.ndarray:
    """``[samples]`` audio zero-padded or trimmed at the end to exactly ``samples_for_frames(num_frames)``."""
    wave = np.asarray(wave, np.float32)
    target = samples_for_frames(num_frames, sample_rate, fps)
    if wave.shape[0] >= target:
        return wave[:target]
    return np.pad(wave, [(0, target - wave.shape[0])] + [(0, 0)] * (wave.ndim - 1))


def pad_audio_to_frames(wave: np.ndarray, sample_rate: float, fps: float = FPS) -> tuple[np.ndarray, int]:
    """``[samples]`` audio -> (the audio zero-padded to whole frames, that frame count
    ``frames_for_audio(len(wave))``). Only ever pads: no sample of the input is dropped."""
    wave = np.asarray(wave, np.float32)
    num_frames = frames_for_audio(wave.shape[0], sample_rate, fps)
    return fit_audio(wave, num_frames, sample_rate, fps), num_frames


# ------------------------------------------------------------------------------------------------- resampling

_MAX_POLYPHASE = 4096  # largest up/down factor used as is; rarer ratios are approximated to better than 1e-7


def resample(wave: np.ndarray, sample_rate: float, target_rate: float = TARGET_SAMPLE_RATE) -> np.ndarray:
    """``[samples]`` or ``[samples, channels]`` audio -> mono ``float32 [samples']`` at ``target_rate``.

    Channels are averaged first. Resampling is scipy's ``resample_poly``: polyphase FIR filtering with a
    Kaiser-windowed sinc (beta 5, cut-off at the lower Nyquist frequency, so no aliasing) at the exact rational
    ratio ``target_rate / sample_rate`` (44.1 kHz -> 16 kHz is up 160, down 441). The output has
    ``ceil(samples * target_rate / sample_rate)`` samples and no delay.
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise DataError(f"audio must be [samples] or [samples, channels], got shape {wave.shape}: pass one clip")
    ratio = _rational(target_rate, "target sample rate") / _rational(sample_rate, "sample rate")
    if ratio == 1 or wave.shape[0] == 0:
        return wave
    if max(ratio.numerator, ratio.denominator) > _MAX_POLYPHASE:
        ratio = ratio.limit_denominator(_MAX_POLYPHASE)
    return signal.resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)


# ------------------------------------------------------------------------------------------- frame rates


def frame_indices_for_fps(times: np.ndarray | int, fps_in: float | None = None, fps_out: float = FPS,
                          end: float | None = None, count: int | None = None) -> np.ndarray:
    """Which input frame each output frame at ``fps_out`` shows: ``int64 [T_out]``.

    ``times`` is either the input frames' start times in seconds (sorted; variable frame rate works) or, for a
    constant rate, the input frame count with ``fps_in`` (then computed exactly in integers). ``end`` (seconds, on
    the clock of ``times``) is when the last frame stops showing; it defaults to ``T_in / fps_in``, or the last time
    plus ``1 / fps_in`` (plus the median frame interval without ``fps_in``). The duration is ``end - times[0]``.
    Output frame ``j`` shows the input frame on screen at its centre time ``(j + 0.5) / fps_out`` (a tie at a frame
    boundary goes to the earlier frame), so each output frame's content is within half an input frame of its own
    time; there are ``ceil(duration * fps_out)`` output frames, so the end is never lost. 30 -> 25 fps drops every
    sixth frame, 50 -> 25 keeps frames 0, 2, 4, ..., 24 -> 25 shows one frame twice per second. ``count`` forces
    the number of output frames (e.g. to match per-frame annotations; frames past the input's end show its last).

    This is the one frame-rate rule of the package: ``media.convert_video_fps``, ``transforms.convert_fps`` (tracks)
    and the dataset preprocessing (``data.preprocess.video``) all sample at these centre times.
    """
    fps_out_r = _rational(fps_out, "output frame rate")
    if np.ndim(times) == 0:
        num = int(times)
        fps_in_r = _rational(fps_in if fps_in is not None else 0, "input frame rate")
        if end is None:  # exact integer arithmetic for constant rates
            if count is None:
                count = -(-num * fps_out_r.numerator * fps_in_r.denominator
                          // (fps_out_r.denominator * fps_in_r.numerator))
            centres = (2 * np.arange(count, dtype=np.int64) + 1) * fps_in_r.numerator * fps_out_r.denominator
            index = (centres - 1) // (2 * fps_in_r.denominator * fps_out_r.numerator)  # ceil(x) - 1: ties go early
            return np.minimum(index, max(num - 1, 0))
        times = np.arange(num, dtype=np.float64) * (fps_in_r.denominator / fps_in_r.numerator)
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or times.size == 0:
        raise DataError(f"frame times must be a non-empty 1-D array, got shape {times.shape}")
    if end is None:
        step = 1.0 / float(_rational(fps_in, "input frame rate")) if fps_in else (
            float(np.median(np.diff(times))) if times.size > 1 else 1.0 / float(fps_out_r))
        end = times[-1] + step
    duration = float(end) - float(times[0])
    if count is None:
        count = max(1, math.ceil(round(duration * float(fps_out_r), 6)))  # round off float noise before the ceil
    centres = times[0] + (np.arange(count) + 0.5) / float(fps_out_r)
    return np.clip(np.searchsorted(times, centres - 1e-9, side="right") - 1, 0, times.size - 1)


def convert_video_fps(frames: np.ndarray, fps_in: float | None, fps_out: float = FPS, method: str = "nearest",
                      times: np.ndarray | None = None, end: float | None = None) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` frames at ``fps_in`` (or at the start ``times`` in seconds, ending at ``end``) ->
    frames at ``fps_out`` covering the same duration (``ceil(duration * fps_out)`` frames).

    ``method="nearest"``: each output frame is the input frame on screen at its centre time (sharp; motion is
    sampled, see :func:`frame_indices_for_fps`). ``"blend"``: each output frame linearly blends the two input frames
    whose centres bracket its centre time (50 -> 25 averages pairs; smoother motion, ghosting on fast motion).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise DataError(f"video frames must be a non-empty [T, H, W, C] array, got shape {frames.shape}")
    num = frames.shape[0]
    if method not in ("nearest", "blend"):
        raise DataError(f"unknown frame-rate conversion method '{method}': use 'nearest' or 'blend'")
    if times is None:
        if _rational(fps_in, "input frame rate") == _rational(fps_out, "output frame rate") and end is None:
            return frames
        if method == "nearest" and end is None:
            return frames[frame_indices_for_fps(num, fps_in, fps_out)]
        times = np.arange(num, dtype=np.float64) / float(_rational(fps_in, "input frame rate"))
    times = np.asarray(times, np.float64)
    if times.shape != (num,):
        raise DataError(f"got {times.size} frame times for {num} frames: pass one start time per frame")
    index = frame_indices_for_fps(times, fps_in, fps_out, end)
    if method == "nearest":
        return frames[index]
    last_end = end if end is not None else times[-1] + (
        1.0 / float(fps_in) if fps_in else (np.median(np.diff(times)) if num > 1 else 1.0 / float(fps_out)))
    ends = np.append(times[1:], last_end)
    in_centres = (times + ends) / 2
    out_centres = times[0] + (np.arange(index.size) + 0.5) / float(_rational(fps_out, "output frame rate"))
    position = np.interp(out_centres, in_centres, np.arange(num, dtype=np.float64))  # clamps at both ends
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, num - 1)
    weight = (position - lo).reshape(-1, 1, 1, 1).astype(np.float32)
    mixed = frames[lo].astype(np.float32) * (1 - weight) + frames[hi].astype(np.float32) * weight
    return np.clip(np.rint(mixed), 0, 255).astype(frames.dtype) if frames.dtype == np.uint8 else mixed


# ---------------------------------------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, size: int | None = None, resize: bool = False) -> np.ndarray:
    """An image file (PNG, JPEG, BMP, WebP, ...) -> ``uint8 [H, W, 3]`` RGB (grey is expanded, alpha dropped).

    With ``size``, the image must be ``size x size``; with ``resize=True`` any other image is centre-cropped to a
    square and resized instead (area interpolation when shrinking, cubic when enlarging).
    """
    path = _existing(path, "image")
    data = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise DataError(f"image '{path}' cannot be decoded (not an image, or corrupt): pass a PNG or JPEG file")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    if size is None or (height, width) == (size, size):
        return rgb
    if not resize:
        raise DataError(f"image '{path}' is {width}x{height} but the model expects {size}x{size} (square): crop or "
                        f"resize it, or pass resize=True (--resize on the command line) to centre-crop and resize")
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Writes ``uint8 [H, W, 3]`` RGB as PNG (whatever the suffix); returns the path."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"image for '{path}' must be uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}: convert it "
                        f"with np.clip(x * 255, 0, 255).astype(np.uint8) or similar")
    _, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    with _atomic(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return Path(path)


# ----------------------------------------------------------------------------------------------------------- audio


def _decode(container: av.container.InputContainer, video: bool,
            times: dict | None = None) -> tuple[list[np.ndarray], np.ndarray, int | None]:
    """One pass over the first audio stream and, if ``video``, the first video stream of an open container ->
    (RGB frames ``uint8 [H, W, 3]``, audio ``float32 [samples, channels]``, audio sample rate or None). With a
    ``times`` dict, it receives ``"video"``: the video frames' presentation times in seconds (None where unknown)
    and ``"audio"``: the first audio frame's time (or None)."""
    streams = container.streams.video[:int(video)] + container.streams.audio[:1]
    to_float = av.AudioResampler(format="fltp")  # planar float, keeping layout and rate
    images, chunks = [], []
    for frame in container.decode(*streams):
        if isinstance(frame, av.VideoFrame):
            images.append(frame.to_ndarray(format="rgb24"))
            if times is not None:
                times.setdefault("video", []).append(frame.time)
        else:
            if times is not None and "audio" not in times:
                times["audio"] = frame.time
            chunks += [out.to_ndarray() for out in to_float.resample(frame)]
    chunks += [out.to_ndarray() for out in to_float.resample(None)]
    audio = np.concatenate(chunks, axis=1).T if chunks else np.zeros((0, 1), np.float32)
    if not container.streams.audio:
        return images, audio, None
    stream = container.streams.audio[0]
    if stream.duration:  # drop the encoder's padding of the last frame (e.g. AAC pads to 1024 samples)
        audio = audio[:round(stream.duration * stream.time_base * stream.rate)]
    return images, audio.astype(np.float32), stream.rate


def read_audio(path: str | os.PathLike, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """An audio file at any sample rate with any number of channels -> ``float32 [samples]`` mono at
    ``sample_rate``.

    WAV/FLAC/OGG are read with soundfile; anything else (mp3, m4a, the audio track of an mp4, ...) with PyAV.
    Channels are averaged; other sample rates are converted with :func:`resample` (polyphase windowed sinc).
    """
    path = _existing(path, "audio")
    try:
        if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
            wav, rate = sf.read(path, dtype="float32", always_2d=True)
        else:
            with av.open(str(path)) as container:
                if not container.streams.audio:
                    raise DataError(f"'{path}' has no audio track: pass a file with sound, or a separate audio file")
                _, wav, rate = _decode(container, video=False)
    except (sf.LibsndfileError, av.FFmpegError) as err:
        raise DataError(f"audio '{path}' cannot be decoded ({err}): convert it to WAV, e.g. "
                        f"`ffmpeg -i '{path}' -ac 1 -ar {sample_rate} out.wav`") from err
    if wav.shape[0] == 0:
        raise DataError(f"audio '{path}' contains no samples: pass a non-empty recording")
    return resample(wav, rate, sample_rate)


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> Path:
    """Writes ``[samples]`` (or ``[samples, channels]``) float audio in [-1, 1] as 16-bit PCM WAV; returns the path.
    Samples outside [-1, 1] are clipped."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise DataError(f"audio for '{path}' must be a non-empty [samples] or [samples, channels] array, "
                        f"got shape {wave.shape}")
    if Path(path).suffix.lower() != ".wav":
        raise DataError(f"write_audio writes WAV, but '{path}' does not end in .wav: rename it to *.wav")
    with _atomic(path) as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return Path(path)


# ----------------------------------------------------------------------------------------------------------- video


def _checked_frame(frame: np.ndarray, index: int, path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    """``frame`` as a ``uint8 [H, W, 3]`` array of ``shape`` (when given), or a DataError."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or (shape and frame.shape != shape):
        expected = f"{shape} like frame 0" if shape else "[H, W, 3]"
        raise DataError(f"frame {index} for video '{path}' is {frame.dtype} {frame.shape} but must be uint8 "
                        f"{expected} (RGB): convert the frames to uint8 of one size")
    return frame


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float = 25,
                audio: np.ndarray | None = None, sample_rate: int = TARGET_SAMPLE_RATE, crf: int = 18) -> Path:
    """Writes ``uint8 [T, H, W, 3]`` RGB frames (an array, or any iterable of ``[H, W, 3]`` frames, so long videos
    can be streamed) as H.264 (libx264, yuv420p, constant quality ``crf``: 0 lossless .. 51 worst), with mono
    ``float32 [samples]`` ``audio`` at ``sample_rate`` muxed in as AAC, trimmed or zero-padded to the video's
    duration. The container follows the suffix (.mp4, .m4v, .mov, .mkv). Returns the path.

    yuv420p stores colour at half resolution, so H.264 needs even sizes: an odd height or width is padded by
    repeating the last row or column, and the file is then one pixel taller or wider than the frames.
    """
    path = Path(path)
    if path.suffix.lower() not in _VIDEO_SUFFIXES:
        raise DataError(f"video '{path}' needs a container suffix: name it *.mp4 (or .mov, .mkv)")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise DataError(f"video '{path}' needs a positive frame rate, got fps={fps}")
    if audio is not None:
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise DataError(f"audio for video '{path}' must be mono [samples], got shape {audio.shape}: average the "
                            f"channels first (read_audio does)")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise DataError(f"video '{path}' got no frames: pass at least one [H, W, 3] frame")
    first = _checked_frame(first, 0, path, None)
    height, width = first.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with _atomic(path) as tmp, av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        video.options = {"crf": str(crf)}
        sound = None if audio is None else container.add_stream("aac", rate=sample_rate, layout="mono")
        for index, frame in enumerate(itertools.chain([first], frames)):
            frame = _checked_frame(frame, index, path, first.shape)
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.pad(frame, pad, mode="edge"), "rgb24")))
            if sound is not None:  # the audio under this video frame, zero-padded past the end of `audio`
                start, stop = (samples_for_frames(i, sample_rate, rate) for i in (index, index + 1))
                chunk = audio[start:stop]
                samples = av.AudioFrame.from_ndarray(np.pad(chunk, (0, stop - start - chunk.size))[None],
                                                     format="fltp", layout="mono")
                samples.sample_rate, samples.pts = sample_rate, start
                container.mux(sound.encode(samples))
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return path


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float, np.ndarray | None, int | None]:
    """A video file -> (``uint8 [T, H, W, 3]`` RGB frames, fps, ``float32 [samples]`` mono audio at its own
    sample rate or None, that sample rate or None)."""
    path = _existing(path, "video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"'{path}' has no video track: pass a video file")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames, wav, rate = _decode(container, video=True)
    except av.FFmpegError as err:
        raise DataError(f"video '{path}' cannot be decoded ({err}): pass an mp4/mov/mkv file, or re-encode it with "
                        f"`ffmpeg -i '{path}' out.mp4`") from err
    if not frames:
        raise DataError(f"video '{path}' has no frames: pass a non-empty video")
    return np.stack(frames), fps, (wav.mean(axis=1) if rate else None), rate


def read_video_at(path: str | os.PathLike, fps: float = FPS, sample_rate: int = TARGET_SAMPLE_RATE,
                  method: str = "nearest") -> tuple[np.ndarray, np.ndarray | None]:
    """A video file at any frame rate (constant or variable) with audio at any rate and channel count ->
    (``uint8 [T, H, W, 3]`` RGB frames at ``fps``, ``float32 [samples]`` mono audio at ``sample_rate`` or None).

    Frames are placed by their presentation timestamps (:func:`convert_video_fps`, ``method`` "nearest" or
    "blend"); ``T = ceil(video duration * fps)``. The audio is resampled with :func:`resample`, shifted so it
    starts with the first frame (files whose streams start at different times), and fitted to the frames
    (:func:`fit_audio`: exactly ``samples_for_frames(T)`` samples, zero-padded or trimmed at the end), so it can be
    passed straight to :func:`write_video` and stays in sync.
    """
    path = _existing(path, "video")
    stamps_of: dict = {}
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"'{path}' has no video track: pass a video file")
            stream = container.streams.video[0]
            rate_in = stream.average_rate or stream.guessed_rate or stream.base_rate
            frames, wav, audio_rate = _decode(container, video=True, times=stamps_of)
    except av.FFmpegError as err:
        raise DataError(f"video '{path}' cannot be decoded ({err}): pass an mp4/mov/mkv file, or re-encode it with "
                        f"`ffmpeg -i '{path}' out.mp4`") from err
    if not frames:
        raise DataError(f"video '{path}' has no frames: pass a non-empty video")
    frames = np.stack(frames)
    times = stamps_of.get("video", [])
    if rate_in is None and (None in times or len(times) < 2):
        raise DataError(f"video '{path}' has neither a frame rate nor frame timestamps: re-encode it with "
                        f"`ffmpeg -i '{path}' -r 25 out.mp4`")
    if None in times:  # no timestamps: trust the nominal rate
        out = convert_video_fps(frames, rate_in, fps, method)
    else:
        stamps = np.asarray(times, np.float64)
        if rate_in:  # the last frame lasts one nominal frame interval
            end = stamps.max() + 1.0 / float(rate_in)
        else:
            end = stamps.max() + float(np.median(np.diff(np.sort(stamps))))
        order = np.argsort(stamps, kind="stable")  # decoders return presentation order, but be safe
        out = convert_video_fps(frames[order], None, fps, method, times=stamps[order], end=end)
    audio = None
    if audio_rate:
        audio = resample(wav, audio_rate, sample_rate)
        audio_start = stamps_of.get("audio")
        if audio_start is not None and None not in times:  # streams that start at different times: align them
            shift = round((min(times) - audio_start) * sample_rate)  # > 0: the audio starts before the first frame
            audio = audio[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift, np.float32), audio])
        audio = fit_audio(audio, out.shape[0], sample_rate, fps)
    return out, audio
