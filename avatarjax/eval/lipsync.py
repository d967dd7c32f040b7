"""Lip-sync metrics: audio RMS envelope, mouth opening, and the lagged mouth/audio correlation score.

Video is 25 fps; audio is a mono 16 kHz waveform, so one video frame spans 640 samples. Frame ``t`` of the
envelope covers samples ``[640 t, 640 (t + 1))``.

Lag sign convention: a *positive* lag ``L`` means the mouth *follows* the audio by ``L`` frames, i.e. the score at
lag ``L`` is the Pearson correlation of ``mouth[t]`` with ``envelope[t - L]`` over the frames where both exist.
At 25 fps one frame is 40 ms, so the default search range ``max_lag=5`` is +-200 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avatarjax.eval.dtw import MetricInputError, check_array, check_indices, check_positive_int

__all__ = ["audio_rms_envelope", "mouth_opening", "lagged_correlation", "lipsync_score"]

_MIN_OVERLAP = 3  # a Pearson correlation of 2 points is always +-1, so demand at least 3 overlapping frames


def audio_rms_envelope(wave, *, sample_rate: int = 16000, fps: int = 25, num_frames: int | None = None) -> np.ndarray:
    """Per-video-frame RMS envelope of a mono waveform.

    Args:
      wave: ``[N]`` mono waveform (mix multi-channel audio down first, e.g. ``wave.mean(axis=1)``).
      sample_rate: audio rate in Hz (16000).
      fps: video frame rate (25); ``sample_rate / fps`` must be an integer (640 samples per frame by default).
      num_frames: if given, the waveform is cut or zero-padded to exactly ``num_frames`` frames (use the video's
        frame count so the envelope lines up with the mouth signal). If ``None``, ``T = ceil(N / spf)`` and a
        partial last frame is the RMS of the samples it has.

    Returns:
      ``[T]`` float array, ``sqrt(mean(wave[spf t : spf (t + 1)] ** 2))``.
    """
    fn = "audio_rms_envelope"
    if np.ndim(wave) == 2:
        raise MetricInputError(f"{fn}: wave must be mono [N], got shape {np.shape(wave)}: mix multi-channel audio "
                               "down first, e.g. wave.mean(axis=1)")
    w = check_array(wave, "wave", fn, ndim=1, shape_doc="[N] (mono samples)")
    sample_rate, fps = check_positive_int(sample_rate, "sample_rate", fn, 1), check_positive_int(fps, "fps", fn, 1)
    if sample_rate % fps:
        raise MetricInputError(f"{fn}: sample_rate {sample_rate} is not a multiple of fps {fps}: resample the audio "
                               "so each video frame spans a whole number of samples")
    spf = sample_rate // fps
    if num_frames is not None:
        num_frames = check_positive_int(num_frames, "num_frames", fn, 1)
        w = np.pad(w[:num_frames * spf], (0, max(0, num_frames * spf - len(w))))
    frames = -(-len(w) // spf)
    padded = np.pad(w, (0, frames * spf - len(w))).reshape(frames, spf)
    counts = np.full(frames, spf)
    counts[-1] = len(w) - (frames - 1) * spf
    return np.sqrt((padded ** 2).sum(axis=1) / counts)


def mouth_opening(kps, upper_lip: Sequence[int], lower_lip: Sequence[int]) -> np.ndarray:
    """Per-frame mouth opening: mean distance between paired upper and lower inner-lip keypoints.

    ``opening(t) = mean_i || p_{upper[i]}(t) - p_{lower[i]}(t) ||_2``; ``upper_lip[i]`` is paired with
    ``lower_lip[i]`` (e.g. the points above and below the same mouth column).

    Args:
      kps: ``[T, K, 2]`` keypoints.
      upper_lip: indices of upper inner-lip keypoints.
      lower_lip: indices of lower inner-lip keypoints, same length as ``upper_lip``.

    Returns:
      ``[T]`` float array in keypoint units.
    """
    fn = "mouth_opening"
    k = check_array(kps, "kps", fn, ndim=3, shape_doc="[T, K, 2] (frames x points x coordinates)", last_dim=(2, 3))
    up = check_indices(upper_lip, "upper_lip", fn, k.shape[1])
    low = check_indices(lower_lip, "lower_lip", fn, k.shape[1])
    if len(up) != len(low):
        raise MetricInputError(f"{fn}: upper_lip and lower_lip must pair up one-to-one, got {len(up)} and "
                               f"{len(low)} indices")
    return np.linalg.norm(k[:, up] - k[:, low], axis=-1).mean(axis=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def lagged_correlation(mouth, envelope, *, max_lag: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of ``mouth[t]`` and ``envelope[t - L]`` for every lag ``L`` in ``[-max_lag, max_lag]``.

    Args:
      mouth: ``[T]`` mouth opening per frame.
      envelope: ``[T]`` audio envelope per frame (same ``T``; see ``audio_rms_envelope(num_frames=T)``).
      max_lag: largest ``|L|`` in frames (5 = 200 ms at 25 fps); ``T - max_lag`` must be at least 3.

    Returns:
      ``(lags, corr)``: ``[2 max_lag + 1]`` int lags (ascending) and float correlations; ``corr`` is NaN where
      either overlapping segment is constant (the correlation is undefined).
    """
    fn = "lagged_correlation"
    m = check_array(mouth, "mouth", fn, ndim=1, shape_doc="[T]")
    e = check_array(envelope, "envelope", fn, ndim=1, shape_doc="[T]")
    if len(m) != len(e):
        raise MetricInputError(f"{fn}: mouth has {len(m)} frames but envelope has {len(e)}: compute the envelope "
                               "with audio_rms_envelope(wave, num_frames=len(mouth))")
    max_lag = check_positive_int(max_lag, "max_lag", fn, 0)
    if len(m) - max_lag < _MIN_OVERLAP:
        raise MetricInputError(f"{fn}: {len(m)} frames are too few for max_lag={max_lag}: need at least "
                               f"{max_lag + _MIN_OVERLAP} frames")
    lags = np.arange(-max_lag, max_lag + 1)
    t = len(m)
    corr = np.array([_pearson(m[lag:], e[:t - lag]) if lag >= 0 else _pearson(m[:t + lag], e[-lag:])
                     for lag in lags])
    return lags, corr


def lipsync_score(mouth, envelope, *, max_lag: int = 5) -> tuple[float, int]:
    """Lip-sync score: the highest mouth/audio Pearson correlation over lags within ``+-max_lag`` frames.

    Args:
      mouth: ``[T]`` mouth opening (e.g. :func:`mouth_opening`).
      envelope: ``[T]`` audio envelope (e.g. :func:`audio_rms_envelope` with ``num_frames=T``).
      max_lag: search range in frames (5 = +-200 ms at 25 fps).

    Returns:
      ``(score, lag_frames)``: ``score`` in ``[-1, 1]`` (1 = perfectly linearly related) and the lag achieving it,
      positive when the mouth follows the audio (module docstring). Ties go to the smallest ``|lag|``, then to
      the negative lag. Invariant to positive scaling and offsets of either signal. If every lag is undefined
      (a constant signal), returns ``(nan, 0)``.
    """
    lags, corr = lagged_correlation(mouth, envelope, max_lag=max_lag)
    order = np.lexsort((lags, np.abs(lags)))                            # 0, -1, 1, -2, 2, ...
    ranked = np.where(np.isnan(corr[order]), -np.inf, corr[order])
    if np.all(np.isneginf(ranked)):
        return float("nan"), 0
    best = order[int(np.argmax(ranked))]
    return float(corr[best]), int(lags[best])
