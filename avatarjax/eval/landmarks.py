"""Landmark metrics: inter-ocular distance and Eye-LMD.

Keypoints are float arrays ``[T, K, 2]`` (frames x points x (x, y)); 3-D points ``[T, K, 3]`` are also accepted.
Index sets (left eye, right eye) are given by the caller, so any landmark layout (68-point, MediaPipe, ...) works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avatarjax.eval.dtw import MetricInputError, check_array, check_indices

__all__ = ["inter_ocular_distance", "eye_lmd"]

_KPS = "[T, K, 2] (frames x points x coordinates)"


def _keypoints(x, name: str, fn: str) -> np.ndarray:
    return check_array(x, name, fn, ndim=3, shape_doc=_KPS, last_dim=(2, 3))


def _iod(kps: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.linalg.norm(kps[:, left].mean(axis=1) - kps[:, right].mean(axis=1), axis=-1)


def inter_ocular_distance(kps, left_eye: Sequence[int], right_eye: Sequence[int]) -> np.ndarray:
    """Per-frame inter-ocular distance: ``|| mean_{k in L} p_k(t) - mean_{k in R} p_k(t) ||_2``.

    Args:
      kps: ``[T, K, 2]`` keypoints.
      left_eye: indices of the left-eye landmarks (non-empty).
      right_eye: indices of the right-eye landmarks (non-empty).

    Returns:
      ``[T]`` float array.
    """
    fn = "inter_ocular_distance"
    k = _keypoints(kps, "kps", fn)
    return _iod(k, check_indices(left_eye, "left_eye", fn, k.shape[1]),
                check_indices(right_eye, "right_eye", fn, k.shape[1]))


def eye_lmd(pred, true, left_eye: Sequence[int], right_eye: Sequence[int], *,
            points: Sequence[int] | None = None) -> float:
    """Eye-LMD: mean L2 error of the eye-region landmarks, normalised by the ground truth's inter-ocular distance.

    ``Eye-LMD = mean_{t, k in P} ||p_hat_k(t) - p_k(t)||_2 / IOD_true(t)`` with ``IOD_true`` from
    :func:`inter_ocular_distance` on ``true``. Invariant to translating, rotating or uniformly scaling both
    ``pred`` and ``true`` together; 0 iff the eye landmarks coincide.

    Args:
      pred: ``[T, K, 2]`` predicted keypoints.
      true: ``[T, K, 2]`` ground-truth keypoints (same shape).
      left_eye: indices of the left-eye landmarks.
      right_eye: indices of the right-eye landmarks.
      points: indices of the landmarks to score; default: the union of ``left_eye`` and ``right_eye``.

    Returns:
      A float ``>= 0`` (fraction of the inter-ocular distance; lower is better).
    """
    fn = "eye_lmd"
    p, t = _keypoints(pred, "pred", fn), _keypoints(true, "true", fn)
    if p.shape != t.shape:
        raise MetricInputError(f"{fn}: pred and true must have the same shape, got {p.shape} and {t.shape}")
    left = check_indices(left_eye, "left_eye", fn, t.shape[1])
    right = check_indices(right_eye, "right_eye", fn, t.shape[1])
    pts = np.union1d(left, right) if points is None else np.unique(check_indices(points, "points", fn, t.shape[1]))
    iod = _iod(t, left, right)
    if np.any(iod <= 0):
        frames = np.flatnonzero(iod <= 0)[:5].tolist()
        raise MetricInputError(f"{fn}: the ground-truth inter-ocular distance is 0 in frame(s) {frames}: "
                               "check the left_eye/right_eye indices and the keypoints")
    err = np.linalg.norm(p[:, pts] - t[:, pts], axis=-1)                  # [T, |P|]
    return float(np.mean(err / iod[:, None]))
