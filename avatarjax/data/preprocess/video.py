"""Clip preprocessing for real talking-face datasets: 25 fps video, 16 kHz mono loudness-normalised audio, a face
crop resized to 256 or 512, optional per-frame AU features, streamed clip by clip and segment by segment.

One clip (a video file, optionally a separate audio file) becomes one or more *segments*, each a dict::

    frames     object [T]        encoded crops (JPEG or PNG bytes; ``records.decode_frames`` reads both)
    audio      int16 [T * 640]   16 kHz mono PCM aligned with the frames (frame t covers samples [640t, 640(t+1)))
    start      int32             first output frame of the segment in the clip
    crop_box   int32 [4]         x0, y0, x1, y1 of the crop in source-frame pixels (exclusive ends)
    source_fps float32           frame rate of the source video
    au         float32 [T, K]    only with an AU extractor

Memory stays bounded by one segment: frames are decoded one at a time and cropped, resized and encoded as they
arrive; a PFL crop first makes one detection pass over the clip (detections only, on a downscaled copy), then a
second decoding pass cuts the fixed window. Audio is decoded whole (a few MB per minute at 16 kHz).

Crops (``PreprocessConfig.crop``):

- ``"pfl"``: the PFL fixed window (``avatarjax.data.preprocess.pfl``): the head moves inside the crop as in the
  frame; the face must be found in (nearly) every frame (Haar by default, ``detector="skin"`` for synthface-like
  frames).
- ``"box"``: a fixed box given by the dataset (HDTF's ``crop_wh`` files, or REACT's already cropped 256 px faces).
- ``"center"``: the centred square of the frame (videos that are already face-centred portraits).

Hooks, named as ``"module.path:attribute"`` strings so that Beam workers (fresh processes) can import them; the
module must be importable in the worker (installed, or on ``PYTHONPATH``):

- ``denoiser``: ``fn(wav float32 [N], sample_rate) -> float32 [N]`` run before loudness normalisation.
- ``au_extractor``: ``fn(frames uint8 [T, S, S, 3]) -> float32 [T, K]``, called on chunks of frames; its
  ``AU_NAMES`` attribute (or ``au_names`` of the config) names the K columns.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from scipy import signal

from avatarjax import media
from avatarjax.data.preprocess import pfl
from avatarjax.errors import ConfigError, DataError, did_you_mean

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
CROPS = ("pfl", "box", "center")
IMAGE_FORMATS = ("jpeg", "png")
DETECTORS = ("haar", "skin")
AUTO_WINDOW = 1.6  # pfl_window=0: window side / mean face height


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How every clip is turned into training segments (the same for all clips of one build).

    size: side of the square face crop (256 or 512 in the papers; any positive size works).
    crop: "pfl", "box" or "center" (see the module docstring); datasets may force "box".
    detector: the PFL face detector, "haar" (real faces) or "skin" (synthface-like flat colours).
    pfl_window: PFL window side in source pixels (the released code's 256; larger for high-resolution video);
        0 = automatic: 1.6 times the mean tracked face height (a deviation from PFL, for folders of videos of
        mixed resolutions).
    loudness_lufs: integrated loudness target (ITU-R BS.1770 K-weighted, gated); None leaves the level alone.
    segment_frames: cut clips into segments of at most this many 25 fps frames (0: one segment per clip).
    image_format / jpeg_quality: how the crops are stored.
    denoiser, au_extractor: "module:attr" hooks (see the module docstring); "" for none.
    au_chunk: frames per AU-extractor call.
    """

    size: int = 256
    crop: str = "pfl"
    detector: str = "haar"
    pfl_window: int = 256
    loudness_lufs: float | None = -23.0
    segment_frames: int = 0
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    denoiser: str = ""
    au_extractor: str = ""
    au_names: tuple[str, ...] = ()
    au_chunk: int = 64

    def __post_init__(self):
        for name, value, choices in (("crop", self.crop, CROPS), ("image_format", self.image_format, IMAGE_FORMATS),
                                     ("detector", self.detector, DETECTORS)):
            if value not in choices:
                raise ConfigError(f"preprocessing {name} '{value}' is unknown: {did_you_mean(value, choices)}")
        if self.size < 8 or (self.pfl_window < 8 and self.pfl_window != 0):
            raise ConfigError(f"preprocessing size must be >= 8 pixels and pfl_window >= 8 (or 0: automatic), got "
                              f"{self.size}, {self.pfl_window}")
        if self.segment_frames < 0 or self.au_chunk < 1:
            raise ConfigError("preprocessing segment_frames must be >= 0 and au_chunk >= 1")
        for name in ("denoiser", "au_extractor"):
            value = getattr(self, name)
            if value and ":" not in value:
                raise ConfigError(f"preprocessing {name} '{value}' must be 'module.path:attribute' (importable by "
                                  f"every worker process)")


@functools.lru_cache(maxsize=16)
def load_hook(spec: str) -> Callable:
    """The object named by ``"module.path:attribute"`` (imported once per process)."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import hook '{spec}' ({err}): the module must be importable in every worker "
                          f"process (install it, or put it on PYTHONPATH)") from err


def au_names(config: PreprocessConfig) -> tuple[str, ...]:
    """Column names of the AU features (empty without an extractor)."""
    if not config.au_extractor:
        return ()
    return tuple(config.au_names) or tuple(getattr(load_hook(config.au_extractor), "AU_NAMES", ()))


# ------------------------------------------------------------------------------------------------------- audio
def _biquad(kind: str, fc: float, q: float, gain_db: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ cookbook biquad (b, a) for a high shelf or a high pass."""
    w0 = 2 * math.pi * fc / rate
    alpha = math.sin(w0) / (2 * q)
    cos = math.cos(w0)
    if kind == "high_shelf":
        big_a = 10 ** (gain_db / 40)
        root = 2 * math.sqrt(big_a) * alpha
        b = [big_a * ((big_a + 1) + (big_a - 1) * cos + root), -2 * big_a * ((big_a - 1) + (big_a + 1) * cos),
             big_a * ((big_a + 1) + (big_a - 1) * cos - root)]
        a = [(big_a + 1) - (big_a - 1) * cos + root, 2 * ((big_a - 1) - (big_a + 1) * cos),
             (big_a + 1) - (big_a - 1) * cos - root]
    else:
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.asarray(b) / a[0], np.asarray(a) / a[0]


def loudness(wav: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4: K-weighting, 400 ms blocks with 75% overlap, absolute gate at
    -70 LUFS, relative gate 10 LU below); -inf for silence or audio shorter than one block."""
    wav = np.asarray(wav, np.float64)
    for kind, fc, q, gain in (("high_shelf", 1681.97, 0.7072, 4.0), ("high_pass", 38.14, 0.5003, 0.0)):
        b, a = _biquad(kind, fc, q, gain, rate)
        wav = signal.lfilter(b, a, wav)
    block, hop = int(0.4 * rate), int(0.1 * rate)
    if wav.size < block:
        return -math.inf
    power = np.array([np.mean(wav[s:s + block] ** 2) for s in range(0, wav.size - block + 1, hop)])
    with np.errstate(divide="ignore"):
        level = -0.691 + 10 * np.log10(power)
    gated = power[level > -70.0]
    if not gated.size:
        return -math.inf
    relative = -0.691 + 10 * np.log10(gated.mean()) - 10.0
    gated = gated[-0.691 + 10 * np.log10(gated) > relative]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def normalize_loudness(wav: np.ndarray, target_lufs: float = -23.0, rate: int = SAMPLE_RATE,
                       peak: float = 0.99) -> np.ndarray:
    """Scale to ``target_lufs`` integrated loudness, then down (never up) so that no sample exceeds ``peak``.
    Silence (and clips shorter than 400 ms) is returned unchanged."""
    wav = np.asarray(wav, np.float32)
    level = loudness(wav, rate)
    if not math.isfinite(level):
        return wav
    out = wav * np.float32(10 ** ((target_lufs - level) / 20))
    top = float(np.abs(out).max())
    return (out * (peak / top) if top > peak else out).astype(np.float32)


def prepare_audio(path: str | Path, num_frames: int, config: PreprocessConfig) -> np.ndarray:
    """16 kHz mono float32 ``[num_frames * 640]`` of a file's (first) audio track: denoised (hook), loudness
    normalised, trimmed or zero-padded to the video's length."""
    wav = media.read_audio(path, SAMPLE_RATE)
    if config.denoiser:
        wav = np.asarray(load_hook(config.denoiser)(wav, SAMPLE_RATE), np.float32)
    if config.loudness_lufs is not None:
        wav = normalize_loudness(wav, config.loudness_lufs)
    need = num_frames * SAMPLES_PER_FRAME
    return np.pad(wav[:need], (0, max(0, need - wav.size)))


def pcm16(wav: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)


# ------------------------------------------------------------------------------------------------------- video
@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a container header says: frame rate, frame count (estimated from the duration when the header has
    none), size, and whether an audio track is present."""

    fps: float
    frames: int
    width: int
    height: int
    has_audio: bool


def read_header(path: str | Path) -> VideoInfo:
    """Header facts of a video without decoding it; raises PyAV's / the OS's own errors (``probe_video`` turns
    them into a ``DataError``)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video track")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = int(stream.frames or 0)
        if not frames and fps:
            duration = (float(stream.duration * stream.time_base) if stream.duration
                        else (container.duration or 0) / av.time_base)
            frames = int(round(duration * fps))
        return VideoInfo(fps, frames, stream.codec_context.width, stream.codec_context.height,
                         bool(container.streams.audio))


def probe_video(path: str | Path) -> VideoInfo:
    """Header facts of a video; ``DataError`` when it cannot be opened or has no video track."""
    try:
        return read_header(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"'{path}' cannot be opened as a video ({err}): re-encode it with `ffmpeg -i '{path}' "
                        f"out.mp4`") from err


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """RGB frames ``uint8 [H, W, 3]`` of a video file (or a folder of numbered images), one at a time."""
    path = Path(path)
    if path.is_dir():
        for image in sorted(image_files(path), key=lambda p: int(p.stem)):
            yield media.read_image(image)
        return
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as err:
        raise DataError(f"video '{path}' cannot be decoded ({err}): re-encode it with `ffmpeg -i '{path}' "
                        f"out.mp4`") from err


def image_files(folder: Path) -> list[Path]:
    """The numbered frame images (``1.png``, ``2.jpg``, ...) of a frame folder."""
    return [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.stem.isdigit()]


def resample_frames(frames: Iterator[np.ndarray], index: np.ndarray) -> Iterator[np.ndarray]:
    """Stream source frame ``index[k]`` for every output frame ``k`` (``media.frame_indices_for_fps``: the frame on
    screen at each 25 fps frame's centre time) from a stream of source frames; the last frame repeats when the
    source ends early."""
    total = len(index)
    k, last = 0, None
    for i, frame in enumerate(frames):
        last = frame
        while k < total and index[k] <= i:  # every earlier output frame was already emitted
            yield frame
            k += 1
        if k >= total:
            return
    while last is not None and k < total:
        yield last
        k += 1


def _detect_small(frame: np.ndarray, detector: pfl.Detector, max_side: int = 640) -> np.ndarray:
    """Detections on a copy of the frame downscaled to ``max_side`` (boxes in full-frame pixels)."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return pfl._as_boxes(detector(frame))
    small = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    boxes = pfl._as_boxes(detector(small)).astype(np.float64)
    return np.round(boxes / scale).astype(np.int64)


def pfl_box(path: str | Path, config: PreprocessConfig, size: tuple[int, int]) -> np.ndarray:
    """The PFL fixed window ``int [4]`` (x0, y0, x1, y1) of a video, from one streaming detection pass."""
    detector = pfl.SkinDetector() if config.detector == "skin" else pfl.HaarDetector()
    detections = [_detect_small(frame, detector) for frame in iter_frames(path)]
    tracked, detected = pfl.track_faces(detections)
    pfl_config = pfl.PFLConfig(output_size=config.size)
    pfl.check_detections(detected, pfl_config, f"'{path}'")
    counted = tracked[~np.isnan(tracked[:, 0])]
    window = config.pfl_window or max(8, round(AUTO_WINDOW * float(np.mean(counted[:, 3]))))
    return pfl.released_window(counted, size, pfl_config.padding, window)


def center_box(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return np.array([x0, y0, x0 + side, y0 + side], np.int64)


def clamp_box(box, size: tuple[int, int], path: str | Path) -> np.ndarray:
    """A given box clipped to the frame; ``DataError`` when nothing of it is inside."""
    width, height = size
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise DataError(f"the crop box {list(box)} of '{path}' lies outside its {width}x{height} frames: fix the "
                        f"crop metadata of this clip")
    return np.array([x0, y0, x1, y1], np.int64)


def encode_image(rgb: np.ndarray, config: PreprocessConfig) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if config.image_format == "png":
        return cv2.imencode(".png", bgr)[1].tobytes()
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])[1].tobytes()


def crop_resize(frame: np.ndarray, box: np.ndarray, side: int) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    patch = np.ascontiguousarray(frame[y0:y1, x0:x1])
    if patch.shape[:2] == (side, side):
        return patch
    interp = cv2.INTER_AREA if patch.shape[0] > side else cv2.INTER_CUBIC
    return cv2.resize(patch, (side, side), interpolation=interp)


def process_clip(video: str | Path, config: PreprocessConfig, *, audio: str | Path | None = None,
                 box=None, info: VideoInfo | None = None, num_frames: int | None = None,
                 silent: bool = False) -> Iterator[dict]:
    """Segments (see the module docstring) of one clip, yielded as they are complete.

    video: a video file, or a folder of numbered frame images at ``info.fps``.
    audio: the audio file (default: the video's own track; None with no track gives silence).
    box: the fixed crop box (x0, y0, x1, y1) in source pixels for ``crop="box"``.
    info: header facts when already probed (required for a frame folder).
    num_frames: force the 25 fps length (e.g. to match per-frame annotations); default: the video's duration.
    silent: store silence whatever the file holds (text-only motion clips).
    """
    info = info or probe_video(video)
    if info.fps <= 0:
        raise DataError(f"video '{video}' has no frame rate in its header: re-encode it with `ffmpeg -i '{video}' "
                        f"-r 25 out.mp4`")
    size = (info.width, info.height)
    if config.crop == "pfl":
        crop = pfl_box(video, config, size)
    elif config.crop == "box":
        if box is None:
            raise DataError(f"crop='box' needs a crop box for '{video}', and this dataset gives none: use "
                            f"--config.prep.crop=pfl or --config.prep.crop=center")
        crop = clamp_box(box, size, video)
    else:
        crop = center_box(size)
    source_frames = info.frames if info.frames > 0 else sum(1 for _ in iter_frames(video))
    # 25 fps frames covering the video (the tail kept), or num_frames of them
    index = media.frame_indices_for_fps(source_frames, info.fps, FPS, count=num_frames or None)
    total = len(index)
    if silent:
        audio_path = None
    else:
        audio_path = audio if audio is not None else (video if info.has_audio else None)
    wav = (prepare_audio(audio_path, total, config) if audio_path is not None
           else np.zeros(total * SAMPLES_PER_FRAME, np.float32))
    extractor = load_hook(config.au_extractor) if config.au_extractor else None
    seg_len = config.segment_frames or total
    pending: list[np.ndarray] = []  # crops not yet given to the AU extractor (at most au_chunk)
    au_rows: list[np.ndarray] = []

    def extract() -> None:
        if pending:
            rows = np.asarray(extractor(np.stack(pending)), np.float32)
            if rows.ndim != 2 or rows.shape[0] != len(pending):
                raise DataError(f"the AU extractor '{config.au_extractor}' returned shape {rows.shape} for "
                                f"{len(pending)} frames: it must return float [frames, K], one row per frame")
            au_rows.append(rows)
            pending.clear()

    def segment(start: int, encoded: list[bytes]) -> dict:
        end = start + len(encoded)
        out = {"frames": np.array(encoded, dtype=object),
               "audio": pcm16(wav[start * SAMPLES_PER_FRAME:end * SAMPLES_PER_FRAME]),
               "start": np.int32(start), "crop_box": crop.astype(np.int32), "source_fps": np.float32(info.fps)}
        if extractor is not None:
            extract()
            out["au"] = np.concatenate(au_rows, 0)
            au_rows.clear()
        return out

    start, encoded = 0, []
    for frame in resample_frames(iter_frames(video), index):
        patch = crop_resize(frame, crop, config.size)
        encoded.append(encode_image(patch, config))
        if extractor is not None:
            pending.append(patch)
            if len(pending) == config.au_chunk:
                extract()
        if len(encoded) == seg_len:
            yield segment(start, encoded)
            start, encoded = start + seg_len, []
    if encoded:
        yield segment(start, encoded)
