"""Action-unit (AU) metrics: AU-F1 (per clip, dataset), AU-Temp (CogPortrait), AU_Emo coverage (InstructAvatar).

An AU trajectory is a float array ``[T, U]``: the intensity of each of ``U`` action units in each of ``T`` frames
(25 fps). Predicted and ground-truth trajectories must have the same ``U`` (same AU order); their ``T`` may differ.

Activation: AU ``u`` is *active* in a clip iff ``max_t A_u(t) > tau_u`` (strictly greater), with per-AU thresholds
``tau`` given as a scalar (same for all AUs) or an array ``[U]``.

Zero-division convention (used by :func:`au_f1`, :func:`au_f1_dataset`): with ``TP``, ``FP``, ``FN`` counted over
AUs, ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)`` (the harmonic
mean of precision and recall). When nothing is active in both truth and prediction (``TP = FP = FN = 0``) the
prediction is perfect and precision = recall = F1 = 1. Otherwise a ratio whose denominator is 0 is 0 (e.g.
predicting no AU while the truth has some gives precision 0, recall 0, F1 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from avatarjax.errors import did_you_mean
from avatarjax.eval.dtw import MetricInputError, check_array, check_indices, dtw_distance

__all__ = ["PRF", "AUF1Summary", "au_activations", "au_f1", "au_f1_dataset", "au_temp", "au_emo_coverage"]

_TRAJ = "[T, U] (frames x action units)"


class PRF(NamedTuple):
    """Precision, recall and F1: floats, or ``[U]`` arrays for per-AU results."""

    precision: float | np.ndarray
    recall: float | np.ndarray
    f1: float | np.ndarray


@dataclass(frozen=True)
class AUF1Summary:
    """Dataset-level AU-F1 (see :func:`au_f1_dataset`).

    Attributes:
      micro: precision/recall/F1 from TP/FP/FN summed over all clips and all AUs (floats).
      per_au: precision/recall/F1 per AU from that AU's counts summed over clips (``[U]`` arrays).
      macro_f1: mean of ``per_au.f1`` over AUs (macro average per AU).
      clip_mean_f1: mean over clips of the per-clip :func:`au_f1` F1.
      tp, fp, fn: ``[U]`` int arrays, counts per AU summed over clips.
    """

    micro: PRF
    per_au: PRF
    macro_f1: float
    clip_mean_f1: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def _trajectory(x, name: str, fn: str) -> np.ndarray:
    return check_array(x, name, fn, ndim=2, shape_doc=_TRAJ)


def _thresholds(thresholds, num_aus: int, fn: str) -> np.ndarray:
    tau = check_array(np.reshape(thresholds, -1) if np.ndim(thresholds) == 0 else thresholds, "thresholds", fn,
                      ndim=1, shape_doc="a scalar or [U]")
    if tau.size == 1:
        return np.full(num_aus, tau[0])
    if tau.size != num_aus:
        raise MetricInputError(f"{fn}: thresholds has {tau.size} entries but the trajectories have U={num_aus} AUs")
    return tau


def _same_aus(pred: np.ndarray, true: np.ndarray, fn: str) -> None:
    if pred.shape[1] != true.shape[1]:
        raise MetricInputError(f"{fn}: pred and true must have the same number of AUs, got shapes "
                               f"{pred.shape} and {true.shape}")


def _ratio(num: np.ndarray, den: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """``num / den``, with 0/0 -> 1 where ``empty`` (nothing active anywhere) and 0 elsewhere."""
    out = np.where(empty, 1.0, 0.0)
    return np.divide(num, den, out=out, where=den > 0)


def _prf(tp, fp, fn) -> PRF:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    empty = (tp + fp + fn) == 0
    p, r, f = _ratio(tp, tp + fp, empty), _ratio(tp, tp + fn, empty), _ratio(2 * tp, 2 * tp + fp + fn, empty)
    if p.ndim == 0:
        return PRF(float(p), float(r), float(f))
    return PRF(p, r, f)


def _counts(pred_act: np.ndarray, true_act: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return pred_act & true_act, pred_act & ~true_act, ~pred_act & true_act


def au_activations(traj, thresholds) -> np.ndarray:
    """Binary AU activation of a clip: ``a_u = max_t A_u(t) > tau_u``.

    Args:
      traj: ``[T, U]`` AU intensity trajectory.
      thresholds: scalar or ``[U]`` per-AU thresholds ``tau_u``.

    Returns:
      ``[U]`` bool array.
    """
    a = _trajectory(traj, "traj", "au_activations")
    return a.max(axis=0) > _thresholds(thresholds, a.shape[1], "au_activations")


def au_f1(pred, true, thresholds) -> PRF:
    """Per-clip AU-F1: precision/recall/F1 of the predicted AU activations against the true ones, over the U AUs.

    Args:
      pred: ``[T1, U]`` predicted AU intensities.
      true: ``[T2, U]`` ground-truth AU intensities (same AU order).
      thresholds: scalar or ``[U]`` activation thresholds (applied to both).

    Returns:
      :class:`PRF` of floats. If no AU is active in truth nor prediction, all three are 1 (module docstring).
    """
    fn = "au_f1"
    p, t = _trajectory(pred, "pred", fn), _trajectory(true, "true", fn)
    _same_aus(p, t, fn)
    tau = _thresholds(thresholds, p.shape[1], fn)
    tp, fp, fn_ = _counts(p.max(axis=0) > tau, t.max(axis=0) > tau)
    return _prf(tp.sum(), fp.sum(), fn_.sum())


def au_f1_dataset(preds: Sequence | np.ndarray, trues: Sequence | np.ndarray, thresholds) -> AUF1Summary:
    """Dataset-level AU-F1 over N clips: micro-averaged over clips and AUs, and macro-averaged per AU.

    Args:
      preds: N predicted trajectories, a sequence of ``[T_i, U]`` arrays or one ``[N, T, U]`` array.
      trues: N ground-truth trajectories, same layout and order as ``preds``.
      thresholds: scalar or ``[U]`` activation thresholds.

    Returns:
      :class:`AUF1Summary`. Per-AU scores use the module's zero-division rule, so an AU that is never active in
      any clip, in truth or prediction, scores F1 = 1 in the macro average.
    """
    fn = "au_f1_dataset"
    if len(preds) != len(trues):
        raise MetricInputError(f"{fn}: got {len(preds)} predicted clips but {len(trues)} ground-truth clips")
    if len(preds) == 0:
        raise MetricInputError(f"{fn}: preds is empty: pass at least one clip")
    pred_act, true_act = [], []
    num_aus = None
    for i, (p, t) in enumerate(zip(preds, trues)):
        p, t = _trajectory(p, f"preds[{i}]", fn), _trajectory(t, f"trues[{i}]", fn)
        _same_aus(p, t, fn)
        if num_aus is None:
            num_aus, tau = p.shape[1], _thresholds(thresholds, p.shape[1], fn)
        elif p.shape[1] != num_aus:
            raise MetricInputError(f"{fn}: clip {i} has {p.shape[1]} AUs but clip 0 has {num_aus}")
        pred_act.append(p.max(axis=0) > tau)
        true_act.append(t.max(axis=0) > tau)
    tp, fp, fn_ = _counts(np.stack(pred_act), np.stack(true_act))         # [N, U] bool each
    clip_f1 = _prf(tp.sum(1), fp.sum(1), fn_.sum(1)).f1
    tp_u, fp_u, fn_u = tp.sum(0), fp.sum(0), fn_.sum(0)
    per_au = _prf(tp_u, fp_u, fn_u)
    return AUF1Summary(micro=_prf(tp_u.sum(), fp_u.sum(), fn_u.sum()), per_au=per_au,
                       macro_f1=float(np.mean(per_au.f1)), clip_mean_f1=float(np.mean(clip_f1)),
                       tp=tp_u.astype(np.int64), fp=fp_u.astype(np.int64), fn=fn_u.astype(np.int64))


_NORMS = ("sum", "truth", "range")


def au_temp(pred, true, target_aus, *, norm: str = "sum", band: int | None = None) -> float:
    """AU-Temp (CogPortrait): ``1 - mean_{u in S} DTW(A_hat_u, A_u) / Z_u``, clipped to ``[0, 1]``.

    ``DTW`` is :func:`avatarjax.eval.dtw.dtw_distance` (summed absolute-difference cost along the best path).
    The normaliser ``Z_u`` (``norm``):

    * ``"sum"`` (default): ``Z_u = sum_t |A_u(t)| + sum_t |A_hat_u(t)|``, i.e. DTW of the truth against a zero
      trajectory plus DTW of the prediction against a zero trajectory. For equal lengths
      ``DTW <= sum_t |A_hat_u - A_u| <= Z_u``, so each term is already in ``[0, 1]``; it is 1 e.g. when one of
      the two is all zeros and the other is not. Symmetric in prediction and truth.
    * ``"truth"``: ``Z_u = sum_t |A_u(t)|`` (DTW of the ground truth against a zero trajectory).
    * ``"range"``: ``Z_u = T_true * (max_t A_u - min_t A_u)``.

    If ``Z_u == 0`` the term is 0 when the DTW cost is 0 and 1 otherwise. Each term is clipped to ``[0, 1]``, so the
    score is in ``[0, 1]``, 1 for identical trajectories, and unchanged when both are scaled by the same ``c > 0``.

    Args:
      pred: ``[T1, U]`` predicted AU intensities.
      true: ``[T2, U]`` ground-truth AU intensities (same AU order).
      target_aus: indices (into ``U``) of the category's target AU set ``S_y``; non-empty, no duplicates.
      norm: ``"sum"``, ``"truth"`` or ``"range"`` (above).
      band: optional Sakoe-Chiba radius for the DTW (must be ``>= |T1 - T2|``).

    Returns:
      AU-Temp as a float in ``[0, 1]`` (higher is better).
    """
    fn = "au_temp"
    p, t = _trajectory(pred, "pred", fn), _trajectory(true, "true", fn)
    _same_aus(p, t, fn)
    aus = check_indices(target_aus, "target_aus", fn, p.shape[1])
    if len(np.unique(aus)) != len(aus):
        raise MetricInputError(f"{fn}: target_aus has duplicate indices: {aus.tolist()}")
    if norm not in _NORMS:
        raise MetricInputError(f"{fn}: unknown norm '{norm}': {did_you_mean(norm, _NORMS)}")
    terms = []
    for u in aus:
        cost = dtw_distance(p[:, u], t[:, u], band=band)
        if norm == "sum":
            z = np.abs(t[:, u]).sum() + np.abs(p[:, u]).sum()
        elif norm == "truth":
            z = np.abs(t[:, u]).sum()
        else:
            z = len(t) * np.ptp(t[:, u])
        terms.append((0.0 if cost == 0 else 1.0) if z == 0 else min(cost / z, 1.0))
    return float(np.clip(1.0 - np.mean(terms), 0.0, 1.0))


def au_emo_coverage(pred, emotion: str, expected_aus: Mapping[str, Sequence[int]], thresholds) -> float:
    """AU_Emo coverage (InstructAvatar): fraction of the emotion's expected AUs that are active in the prediction.

    Args:
      pred: ``[T, U]`` predicted AU intensities.
      emotion: emotion label, a key of ``expected_aus``.
      expected_aus: mapping emotion -> indices (into ``U``) of the AUs that emotion should activate.
      thresholds: scalar or ``[U]`` activation thresholds (see :func:`au_activations`).

    Returns:
      ``|{u in E : a_u = 1}| / |E|`` in ``[0, 1]``, where ``E`` is the set of distinct expected AUs. An emotion
      mapped to an empty set (e.g. ``"neutral": []``) is vacuously covered: 1.0.
    """
    fn = "au_emo_coverage"
    p = _trajectory(pred, "pred", fn)
    if emotion not in expected_aus:
        raise MetricInputError(f"{fn}: emotion '{emotion}' is not in expected_aus: "
                               f"{did_you_mean(str(emotion), map(str, expected_aus))}")
    active = p.max(axis=0) > _thresholds(thresholds, p.shape[1], fn)
    if len(expected_aus[emotion]) == 0:
        return 1.0
    aus = np.unique(check_indices(expected_aus[emotion], f"expected_aus['{emotion}']", fn, p.shape[1]))
    return float(active[aus].mean())
