"""Temporal smoothness metrics: jitter, seam jumps between generation windows, and PFLPosNet-style losses.

Signals are ``[T]`` (one scalar), ``[T, P]`` (P scalar dims, e.g. head pose) or ``[T, K, D]`` (K points of D
coordinates, e.g. keypoints ``[T, K, 2]``). A difference of a *point* is measured by its Euclidean norm over the
last axis; a difference of a *scalar dim* by its absolute value. The per-frame *step*

    s_t = mean over points/dims of |x_t - x_{t-1}|,   t = 1 .. T-1,

is the basis of the seam and PFLPosNet metrics.

Windows: long sequences are generated in windows of ``w`` frames and stitched, so window ``n`` holds frames
``[n w, (n + 1) w)`` (the last one may be shorter). The *seams* are the steps ``t = w, 2w, ... < T`` (from the last
frame of a window to the first frame of the next); every other step lies *within* a window.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from avatarjax.eval.dtw import MetricInputError, check_array, check_positive_int

__all__ = ["PoseJitter", "SeamJump", "keypoint_jitter", "pose_jitter", "step_sizes", "seam_jump",
           "l_connect", "l_sm1", "l_sm2", "motion_smoothness", "segment_scores"]

_SIGNAL = "[T], [T, P] or [T, K, D]"


class PoseJitter(NamedTuple):
    """Mean absolute second difference of a pose track: per dim (``[P]``) and averaged over dims (float)."""

    per_dim: np.ndarray
    overall: float


class SeamJump(NamedTuple):
    """Largest step at a window seam, the median step elsewhere, and their ratio (see :func:`seam_jump`)."""

    max_seam_jump: float
    median_step: float
    ratio: float


def _magnitude(d: np.ndarray) -> np.ndarray:
    """``[N, M]`` per-point (norm over the last axis) or per-dim (absolute value) size of a difference array."""
    if d.ndim == 3:
        return np.linalg.norm(d, axis=-1)
    return np.abs(d).reshape(len(d), -1)


def _signal(x, fn: str, min_len: int) -> np.ndarray:
    return check_array(x, "x", fn, ndim=(1, 2, 3), shape_doc=_SIGNAL, min_len=min_len)


def keypoint_jitter(kps) -> float:
    """Keypoint jitter: ``mean_{t, k} || p_k(t+1) - 2 p_k(t) + p_k(t-1) ||_2`` (mean acceleration magnitude).

    Args:
      kps: ``[T, K, 2]`` keypoints (``[T, K, 3]`` also accepted), ``T >= 3``.

    Returns:
      A float ``>= 0``, in keypoint units per frame^2; 0 for constant-velocity motion.
    """
    k = check_array(kps, "kps", "keypoint_jitter", ndim=3, shape_doc="[T, K, 2] with T >= 3", last_dim=(2, 3),
                    min_len=3)
    return float(_magnitude(np.diff(k, n=2, axis=0)).mean())


def pose_jitter(pose) -> PoseJitter:
    """Pose jitter: mean absolute second difference per pose dim, and its mean over dims.

    Args:
      pose: ``[T, P]`` pose parameters (e.g. yaw/pitch/roll, translation), ``T >= 3``.

    Returns:
      :class:`PoseJitter` ``(per_dim [P], overall)``, ``per_dim[p] = mean_t |x_p(t+1) - 2 x_p(t) + x_p(t-1)|``.
    """
    x = check_array(pose, "pose", "pose_jitter", ndim=2, shape_doc="[T, P] with T >= 3", min_len=3)
    per_dim = np.abs(np.diff(x, n=2, axis=0)).mean(axis=0)
    return PoseJitter(per_dim=per_dim, overall=float(per_dim.mean()))


def step_sizes(x) -> np.ndarray:
    """Per-frame steps ``s_t = mean over points/dims of |x_t - x_{t-1}|`` (module docstring).

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` signal, ``T >= 2``.

    Returns:
      ``[T - 1]`` float array; entry ``t - 1`` is the step into frame ``t``.
    """
    return _steps(_signal(x, "step_sizes", 2))


def _steps(x: np.ndarray) -> np.ndarray:
    return _magnitude(np.diff(x, axis=0)).mean(axis=1)


def _windowed_steps(x, window, fn: str, min_window: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Steps ``s`` ([T-1]), their indices ``t`` (1 .. T-1) and the window length (``T`` for ``window=None``)."""
    sig = _signal(x, fn, 2)
    w = len(sig) if window is None else check_positive_int(window, "window", fn, min_window)
    return _steps(sig), np.arange(1, len(sig)), w


def seam_jump(x, window: int) -> SeamJump:
    """Largest jump at window seams compared with the typical step.

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` stitched signal.
      window: window length ``w >= 2``; seams are the steps into frames ``w, 2w, ...`` and ``T > w`` is required.

    Returns:
      :class:`SeamJump` with ``max_seam_jump = max_{seams} s_t``, ``median_step = median_{other t} s_t`` and
      ``ratio = max_seam_jump / median_step`` (``inf`` if the median is 0 and the jump is not; 1 if both are 0).
      The ratio is invariant to scaling ``x``; about 1 when seams are invisible, large when they jump.
    """
    fn = "seam_jump"
    s, t, w = _windowed_steps(x, window, fn, 2)
    seam = t % w == 0
    if not seam.any():
        raise MetricInputError(f"{fn}: x has {len(s) + 1} frames, so window={w} leaves no seam: need T > window")
    jump, median = float(s[seam].max()), float(np.median(s[~seam]))
    ratio = jump / median if median > 0 else (1.0 if jump == 0 else float("inf"))
    return SeamJump(max_seam_jump=jump, median_step=median, ratio=ratio)


def l_connect(x, window: int) -> float:
    """PFLPosNet L_connect as a metric: mean over seams of ``|x_{first of window} - x_{last of previous window}|``.

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` stitched signal with ``T > window``.
      window: window length ``w >= 2``.

    Returns:
      ``mean_{t = w, 2w, ... < T} s_t`` (float ``>= 0``).
    """
    fn = "l_connect"
    s, t, w = _windowed_steps(x, window, fn, 2)
    seam = t % w == 0
    if not seam.any():
        raise MetricInputError(f"{fn}: x has {len(s) + 1} frames, so window={w} leaves no seam: need T > window")
    return float(s[seam].mean())


def l_sm1(x, window: int | None = None) -> float:
    """PFLPosNet L_sm1 as a metric: mean size of the first differences within windows.

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` signal, ``T >= 2``.
      window: window length ``w >= 2``; seam steps are left out (they are :func:`l_connect`'s business).
        ``None``: the whole sequence is one window.

    Returns:
      Mean of ``s_t`` over all within-window steps (equals the mean of the per-window losses when every window is
      full).
    """
    s, t, w = _windowed_steps(x, window, "l_sm1", 2)
    return float(s[t % w != 0].mean())


def l_sm2(x, window: int | None = None) -> float:
    """PFLPosNet L_sm2 as a metric: ``(1 / (w - 2)) sum_{i=1}^{w-2} (|P_{i+2} - P_{i+1}| - |P_{i+1} - P_i|)``.

    Computed within each window (pairs of consecutive steps that straddle a seam are left out) and averaged over
    all such pairs. Note that the sum telescopes: per window it equals ``(s_last - s_first) / (w - 2)``, the net
    change in step size across the window. It is therefore *signed* (negative when motion slows down) and is not
    a roughness measure by itself; use :func:`keypoint_jitter` / :func:`pose_jitter` for that.

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` signal, ``T >= 3``.
      window: window length ``w >= 3``, or ``None`` for one window spanning the sequence.

    Returns:
      Mean of ``s_{t+1} - s_t`` over step pairs inside one window (a float, may be negative).
    """
    fn = "l_sm2"
    s, t, w = _windowed_steps(x, window, fn, 3)
    if len(s) < 2:
        raise MetricInputError(f"{fn}: x needs at least 3 frames, got {len(s) + 1}")
    pair = (t[:-1] % w != 0) & (t[1:] % w != 0)
    return float((s[1:] - s[:-1])[pair].mean())


def motion_smoothness(x, scale=None) -> float:
    """A VBench-style motion-smoothness score on a pose or keypoint track (VBench drops the odd frames of a
    video, re-creates them with a frame interpolator and scores ``1 - mean |error| / 255``; here the
    interpolator is the midpoint of the two neighbouring frames, exact for locally linear motion).

    ``score = 1 - mean_{odd t} e_t / scale`` with ``e_t`` the mean over points/dims of ``|x_t - (x_{t-1} +
    x_{t+1}) / 2|`` (points: Euclidean norm), clipped to ``[0, 1]``.

    Args:
      x: ``[T]``, ``[T, P]`` or ``[T, K, D]`` signal, ``T >= 3``.
      scale: the signal's nominal range (like VBench's 255); default: the track's own range (max - min over
        time, averaged over dims or points), so the score does not depend on units.

    Returns:
      A float in ``[0, 1]``; 1 for piecewise-linear motion sampled at its kinks' parity, lower for jumps and
      jitter. A constant track scores 1.
    """
    fn = "motion_smoothness"
    sig = _signal(x, fn, 3)
    odd = np.arange(1, len(sig) - 1, 2)
    error = _magnitude(sig[odd] - (sig[odd - 1] + sig[odd + 1]) / 2).mean()
    if scale is None:
        span = sig.max(axis=0) - sig.min(axis=0)
        scale = float(np.linalg.norm(span, axis=-1).mean() if sig.ndim == 3 else span.mean())
    elif not np.isfinite(scale) or scale <= 0:
        raise MetricInputError(f"{fn}: scale must be a positive number, got {scale!r}")
    if scale == 0:
        return 1.0
    return float(np.clip(1.0 - error / scale, 0.0, 1.0))


def segment_scores(tracks, segment: int, scale: float | None = None) -> dict[str, float]:
    """Seam and smoothness scores of windowed tracks ``[N, T, P]`` (N tracks of P pose dims), each averaged
    over the tracks: ``seam_jump`` (:func:`l_connect`), ``max_seam_jump`` and ``seam_ratio`` (:func:`seam_jump`,
    the ratio as a median), ``within_step`` (:func:`l_sm1`), ``jitter`` (:func:`pose_jitter`) and
    ``motion_smoothness`` (with ``scale``, see :func:`motion_smoothness`)."""
    x = check_array(tracks, "tracks", "segment_scores", ndim=3, shape_doc="[N, T, P]")
    seams = [seam_jump(t, segment) for t in x]
    return {"seam_jump": float(np.mean([l_connect(t, segment) for t in x])),
            "max_seam_jump": float(np.mean([s.max_seam_jump for s in seams])),
            "seam_ratio": float(np.median([s.ratio for s in seams])),
            "within_step": float(np.mean([l_sm1(t, segment) for t in x])),
            "jitter": float(np.mean([pose_jitter(t).overall for t in x])),
            "motion_smoothness": float(np.mean([motion_smoothness(t, scale) for t in x]))}
