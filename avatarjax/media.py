"""Images, audio and mp4 video with audio, read and written as numpy arrays.

Arrays: images ``uint8 [H, W, 3]`` RGB, videos ``uint8 [T, H, W, 3]`` RGB, audio ``float32 [samples]`` mono in
[-1, 1]. Every unusable input raises :class:`DataError` naming the file, the problem and the fix. Writers are atomic:
they write a hidden temporary file next to the target and rename it over the target only once it is complete, so a
failure never leaves a half-written file and never replaces an existing good one.

Codecs: video is H.264 (``libx264``, which PyAV's bundled ffmpeg ships), ``yuv420p`` for universal playback; audio
is AAC (ffmpeg's native ``aac`` encoder).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

from avatarjax.data.transforms import TARGET_SAMPLE_RATE, resample_audio
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


def _decode(container: av.container.InputContainer, video: bool) -> tuple[list[np.ndarray], np.ndarray, int | None]:
    """One pass over the first audio stream and, if ``video``, the first video stream of an open container ->
    (RGB frames ``uint8 [H, W, 3]``, audio ``float32 [samples, channels]``, audio sample rate or None)."""
    streams = container.streams.video[:int(video)] + container.streams.audio[:1]
    to_float = av.AudioResampler(format="fltp")  # planar float, keeping layout and rate
    images, chunks = [], []
    for frame in container.decode(*streams):
        if isinstance(frame, av.VideoFrame):
            images.append(frame.to_ndarray(format="rgb24"))
        else:
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
    """An audio file -> ``float32 [samples]`` mono at ``sample_rate``.

    WAV/FLAC/OGG are read with soundfile; anything else (mp3, m4a, the audio track of an mp4, ...) with PyAV.
    Channels are averaged; other sample rates are resampled with :func:`transforms.resample_audio`.
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
    return resample_audio(wav, rate, sample_rate)


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
                start, stop = (round(i * sample_rate / rate) for i in (index, index + 1))
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
