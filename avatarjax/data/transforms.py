"""Clip-level transforms shared by synthface and real datasets: audio resampling and normalisation, frame-rate
conversion to 25 fps, fixed-length windows with padding masks, and instruction sampling.

All functions take numpy arrays and a ``numpy.random.Generator`` where randomness is involved, so a pipeline can
seed them per record and stay deterministic under resume.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal

from avatarjax.errors import DataError

TARGET_SAMPLE_RATE = 16_000
TARGET_FPS = 25


def resample_audio(wav: np.ndarray, sample_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """``[samples]`` or ``[samples, channels]`` at ``sample_rate`` -> mono float32 ``[samples']`` at
    ``target_rate`` (polyphase filter, so no aliasing)."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise DataError(f"audio must be [samples] or [samples, channels], got shape {wav.shape}")
    if sample_rate <= 0:
        raise DataError(f"audio sample rate must be positive, got {sample_rate}")
    if sample_rate == target_rate:
        return wav
    ratio = Fraction(target_rate, sample_rate).limit_denominator(1000)
    return signal.resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


def normalize_audio(wav: np.ndarray, mode: str = "zero_mean_unit_var", eps: float = 1e-7) -> np.ndarray:
    """``zero_mean_unit_var`` (the wav2vec2 feature extractor's normalisation) or ``peak`` (max |x| = 0.95)."""
    wav = np.asarray(wav, np.float32)
    if mode == "zero_mean_unit_var":
        return ((wav - wav.mean()) / np.sqrt(wav.var() + eps)).astype(np.float32)
    if mode == "peak":
        peak = np.abs(wav).max()
        return (wav * (0.95 / peak) if peak > 0 else wav).astype(np.float32)
    raise DataError(f"unknown audio normalisation '{mode}': use zero_mean_unit_var or peak")


def convert_fps(track: np.ndarray, fps: float, target_fps: float = TARGET_FPS, *,
                interpolate: bool = True) -> np.ndarray:
    """Resample a per-frame array ``[T, ...]`` from ``fps`` to ``target_fps`` covering the same duration, at the
    output frames' centre times (``media.frame_indices_for_fps``, the rule the video frames follow, so a track stays
    aligned with its frames).

    ``interpolate=False`` takes the frame on screen at each centre time (images, labels; exactly the video's
    frames); ``True`` linearly interpolates between the two source frames whose centres bracket it (poses, AUs,
    keypoints). The output has ``ceil(T * target_fps / fps)`` frames, so the tail is kept.
    """
    from avatarjax.media import frame_indices_for_fps  # media imports this module

    track = np.asarray(track)
    if fps <= 0:
        raise DataError(f"frame rate must be positive, got {fps}")
    num = track.shape[0]
    if num == 0 or fps == target_fps:
        return track
    index = frame_indices_for_fps(num, fps, target_fps)
    if not interpolate:
        return track[index]
    src = np.clip((np.arange(len(index)) + 0.5) * (fps / target_fps) - 0.5, 0, num - 1)  # between frame centres
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, num - 1)
    w = (src - lo).reshape((-1,) + (1,) * (track.ndim - 1))
    return (track[lo] * (1.0 - w) + track[hi] * w).astype(track.dtype)


def window_start(length: int, window: int, rng: np.random.Generator | None) -> int:
    """A random (or, without rng, centred) start for a window of ``window`` frames in a clip of ``length``."""
    if length <= window:
        return 0
    if rng is None:
        return (length - window) // 2
    return int(rng.integers(0, length - window + 1))


def crop_or_pad(track: np.ndarray, start: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``track[start:start+window]`` zero-padded to ``window`` frames, and a bool mask ``[window]`` of real frames."""
    piece = np.asarray(track)[start:start + window]
    mask = np.zeros((window,), bool)
    mask[:piece.shape[0]] = True
    if piece.shape[0] < window:
        pad = [(0, window - piece.shape[0])] + [(0, 0)] * (piece.ndim - 1)
        piece = np.pad(piece, pad)
    return piece, mask


def crop_audio(wav: np.ndarray, start_frame: int, window: int, samples_per_frame: int) -> np.ndarray:
    """The audio aligned with frames ``[start_frame, start_frame + window)``, zero-padded."""
    piece, _ = crop_or_pad(wav, start_frame * samples_per_frame, window * samples_per_frame)
    return piece


def sample_instruction(instructions: list[str], rng: np.random.Generator) -> str:
    """One instruction variant per step (the per-step paraphrase sampling of InstructAvatar)."""
    choices = [text for text in instructions if text.strip()]
    if not choices:
        raise DataError("a clip has no non-empty instruction: rebuild the dataset or fix its instruction source")
    return choices[int(rng.integers(len(choices)))]
