"""REACT 2023/2024 challenge metrics for multiple appropriate facial reaction generation (MAFRG).

Inputs follow the challenge layout (25 fps, 30 s clips, 750 frames):

* ``pred``: generated listener reactions ``[N, K, T, D]``: ``N`` speaker clips, ``K`` reactions per clip (10 in the
  challenge), ``T`` frames, ``D = 25`` emotion dims: 15 AU occurrences (AU1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23,
  24, 25, 26), valence, arousal, then 8 facial-expression probabilities (:data:`REACT_DIMS`).
* ``speaker``: the speaker's own emotion track ``[N, T, D]`` (for FRSyn).
* ``appropriate``: the real reactions that are appropriate for each speaker clip, either a sequence of ``N`` arrays
  ``[M_i, T_i, D]`` (an ``[N, M, T, D]`` array also works), or an :class:`AppropriatePool`: a pool of real reactions
  ``[P, T, D]`` with a binary appropriateness matrix ``[N, P]`` (the challenge's ``neighbour_emotion_*.npy``; row
  ``n`` marks with 1 the pool entries appropriate for clip ``n``).

Definitions (they follow the challenge's released evaluation code; ``d`` indexes emotion dims)
--------------------------------------------------------------------------------------------
* **FRCorr** (appropriateness, higher is better): ``mean_n sum_k max_{m in A_n} mean_d CCC(pred[n, k, :, d],
  real[m, :, d])`` with ``CCC(x, y) = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2 + 1e-8)``, population
  (ddof 0) moments, and ``cov := 0`` when either series is constant (the released code's ``nan_to_num`` of the
  Pearson correlation). Summed, not averaged, over the ``K`` predictions.
* **FRDist** (appropriateness, lower is better): ``mean_n sum_k min_{m in A_n} sum_g w_g DTW(pred[n, k, :, g],
  real[m, :, g])`` over the dim groups ``g`` = AUs (weight 1/15), valence/arousal (1), expressions (1/8)
  (:data:`REACT_DIM_GROUPS`). ``DTW`` is the tslearn convention used by the challenge: the square root of the
  smallest sum of *squared Euclidean* frame distances along a monotone, continuous warping path
  (``metric="sqeuclidean"``). ``metric="l1"`` instead uses :func:`avatarjax.eval.dtw.dtw_distance`'s summed L1
  cost (not the challenge number).
* **FRDiv** (diversity among one clip's reactions, higher is better; the challenge's ``S-MSE``):
  ``mean_n sum_{a != b} ||z[n, a] - z[n, b]||^2 / (K (K - 1) T D)`` with ``z`` the flattened ``[T * D]`` reaction.
* **FRVar** (diversity over time, higher is better): ``mean_{n, k, d} var_t pred[n, k, t, d]`` with the unbiased
  (ddof 1) variance (``torch.var``'s default in the released code).
* **FRDvs** (diversity across speaker clips, higher is better): ``sum_k sum_{n != m} ||z[n, k] - z[m, k]||^2 /
  (N (N - 1) K T D)``: reactions with the same index ``k`` compared across clips.
* **FRSyn** (synchrony, lower is better): for each ``(n, k)``, the time-lagged cross-correlation
  ``r(L) = mean_d pearson(pred[n, k, t, d], speaker[n, t - L, d])`` over the overlapping frames, for lags
  ``L = -49 .. 49`` (2 s at 25 fps); FRSyn is the mean over ``(n, k)`` of ``|argmax_L r(L)|``. ``L > 0`` means
  the reaction follows the speaker by ``L`` frames; ties go to the most negative lag (first maximum).
  A Pearson correlation is undefined when a series is constant over the overlap (very common for AU occurrences).
  ``nan_policy="official"`` reproduces the released code: the dim mean is then NaN and NaN wins the argmax (numpy
  and torch both return the first NaN), so a dim that is constant over the whole clip pins the lag at -49 and
  ``|lag| = 49``; this is probably why published FRSyn values sit near 45-46. ``nan_policy="omit"`` averages only the
  defined dims (``nanmean``), skips lags where none is defined, and scores ``max_lag`` for a reaction with no
  defined correlation at any lag.
* **FRRea** (realism, lower is better): the Frechet Inception Distance between real and generated rendered
  frames, ``||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` over encoder features (Inception-v3 pool3,
  2048-d, in the challenge). :func:`fr_rea` takes features, or frames plus an ``encoder`` callable; it never
  downloads a network.

Released-code variants worth knowing: the multiprocessing FRSyn (``compute_TLCC_mp``) scores only the first of
the ``K`` reactions of each clip, while the single-process one (used here) scores all ``K``; both take
``|offset|``. Both FRCorr implementations give the same number (sum over ``k`` of the mean over ``n``).

Bad inputs raise :class:`~avatarjax.eval.dtw.MetricInputError` (``"<function>: <argument> <problem>"``); a missing
FID encoder raises :class:`~avatarjax.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.linalg

from avatarjax.errors import ConfigError, did_you_mean
from avatarjax.eval.dtw import MetricInputError, check_array, check_positive_int

__all__ = ["REACT_DIMS", "REACT_DIM_GROUPS", "REACT_MAX_LAG", "AppropriatePool", "appropriate_sets",
           "concordance_cc", "fr_corr", "weighted_dtw", "fr_dist", "fr_div", "fr_var", "fr_dvs", "tlcc_lags",
           "fr_syn", "frechet_distance", "fr_rea", "react_metrics"]

REACT_DIMS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24", "AU25",
    "AU26", "valence", "arousal", "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
"""Names of the 25 emotion dims, in order. The 8 expression names assume AffectNet's class order (the sources
give only their count); the AU, valence and arousal positions are as documented for the challenge."""

REACT_DIM_GROUPS: tuple[tuple[int, int, float], ...] = ((0, 15, 1 / 15), (15, 17, 1.0), (17, 25, 1 / 8))
"""FRDist dim groups ``(start, stop, weight)``: AUs, valence/arousal, expression probabilities."""

REACT_MAX_LAG = 49
"""FRSyn lag range ``-49 .. 49`` frames (``2 s * 25 fps - 1``)."""

_CCC_EPS = 1e-8
_PRED = "[N, K, T, D] (clips x reactions x frames x emotion dims)"
_SPEAKER = "[N, T, D] (clips x frames x emotion dims)"
_REACTIONS = "[M, T, D] (appropriate real reactions x frames x emotion dims)"
_DTW_METRICS = ("sqeuclidean", "l1")
_NAN_POLICIES = ("official", "omit")


class AppropriatePool(NamedTuple):
    """Appropriate real reactions as a shared pool plus a binary appropriateness matrix.

    Attributes:
      reactions: ``[P, T, D]`` real listener reactions (the challenge orders them listeners first, then speakers,
        since every recorded speaker is also someone's listener).
      matrix: ``[N, P]`` 0/1 (or bool); ``matrix[n, p] == 1`` iff ``reactions[p]`` is appropriate for clip ``n``.
    """

    reactions: np.ndarray
    matrix: np.ndarray


# ------------------------------------------------------------------------------------------------------- checks


def _pred(x, fn: str, min_frames: int = 1) -> np.ndarray:
    p = check_array(x, "pred", fn, ndim=4, shape_doc=_PRED)
    if min(p.shape[1:3]) < 1 or p.shape[2] < min_frames or p.shape[3] < 1:
        raise MetricInputError(f"{fn}: pred must have shape {_PRED} with K >= 1, T >= {min_frames}, D >= 1, "
                               f"got shape {p.shape}")
    return p


def _speaker(x, pred: np.ndarray, fn: str) -> np.ndarray:
    s = check_array(x, "speaker", fn, ndim=3, shape_doc=_SPEAKER)
    n, _, t, d = pred.shape
    if s.shape != (n, t, d):
        raise MetricInputError(f"{fn}: speaker must have shape [N, T, D] = {(n, t, d)} to match pred {pred.shape}, "
                               f"got shape {s.shape}")
    return s


def appropriate_sets(appropriate, num_clips: int, dims: int, *, fn: str = "appropriate_sets") -> list[np.ndarray]:
    """The appropriate real reactions of each clip as a list of ``N`` arrays ``[M_n, T_n, D]``.

    Args:
      appropriate: an :class:`AppropriatePool`, or a sequence of ``N`` arrays ``[M_n, T_n, D]`` (a ``[T, D]``
        entry counts as one reaction), or an ``[N, M, T, D]`` array.
      num_clips: ``N``, the number of speaker clips in ``pred``.
      dims: ``D``, the emotion dims of ``pred``.
      fn: function name used in error messages.

    Returns:
      List of ``N`` float64 arrays, each with at least one reaction.
    """
    if isinstance(appropriate, AppropriatePool):
        pool = check_array(appropriate.reactions, "appropriate.reactions", fn, ndim=3,
                           shape_doc="[P, T, D] (pool of real reactions)")
        if pool.shape[2] != dims:
            raise MetricInputError(f"{fn}: appropriate.reactions has D={pool.shape[2]} dims but pred has D={dims}")
        matrix = np.asarray(appropriate.matrix)
        if matrix.shape != (num_clips, len(pool)):
            raise MetricInputError(f"{fn}: appropriate.matrix must have shape [N, P] = {(num_clips, len(pool))} "
                                   f"(clips of pred x pool size), got shape {matrix.shape}")
        if matrix.dtype != bool and not (np.issubdtype(matrix.dtype, np.number) and np.isin(matrix, (0, 1)).all()):
            raise MetricInputError(f"{fn}: appropriate.matrix must hold only 0/1 (or bool) entries")
        matrix = matrix.astype(bool)
        empty = np.flatnonzero(~matrix.any(axis=1))
        if empty.size:
            raise MetricInputError(f"{fn}: appropriate.matrix rows {empty[:10].tolist()} mark no appropriate "
                                   f"reaction: every clip needs at least one")
        return [pool[row] for row in matrix]
    if isinstance(appropriate, (str, bytes)) or not hasattr(appropriate, "__len__"):
        raise MetricInputError(f"{fn}: appropriate must be an AppropriatePool or a sequence of N arrays "
                               f"{_REACTIONS}, got {type(appropriate).__name__}")
    if len(appropriate) != num_clips:
        raise MetricInputError(f"{fn}: appropriate has {len(appropriate)} entries but pred has N={num_clips} clips")
    sets = []
    for i, reactions in enumerate(appropriate):
        r = check_array(reactions, f"appropriate[{i}]", fn, ndim=(2, 3), shape_doc=_REACTIONS)
        r = r[None] if r.ndim == 2 else r
        if r.shape[2] != dims or r.shape[1] < 1:
            raise MetricInputError(f"{fn}: appropriate[{i}] must have shape {_REACTIONS} with D={dims} like pred, "
                                   f"got shape {r.shape}")
        sets.append(r)
    return sets


# ---------------------------------------------------------------------------------------------------- FRCorr


def _ccc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CCC per dim of every ``x`` against every ``y``: ``x [K, T, D]``, ``y [M, T, D]`` -> ``[K, M, D]``."""
    mx, my = x.mean(axis=1), y.mean(axis=1)                                     # [K, D], [M, D]
    xc, yc = x - mx[:, None], y - my[:, None]
    vx, vy = (xc ** 2).mean(axis=1), (yc ** 2).mean(axis=1)
    cov = np.einsum("ktd,mtd->kmd", xc, yc) / x.shape[1]
    # A constant series has an undefined Pearson correlation, which the released code zeroes (nan_to_num).
    defined = (np.ptp(x, axis=1) > 0)[:, None] & (np.ptp(y, axis=1) > 0)[None]
    cov = np.where(defined, cov, 0.0)
    return 2 * cov / (vx[:, None] + vy[None] + (mx[:, None] - my[None]) ** 2 + _CCC_EPS)


def concordance_cc(x, y) -> np.ndarray:
    """Lin's concordance correlation coefficient per dim, as in the REACT evaluation code.

    ``CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2 + 1e-8)`` with population moments; 0 when either
    series is constant.

    Args:
      x: ``[T]`` or ``[T, D]`` series.
      y: same shape as ``x``.

    Returns:
      ``[D]`` float array (a float for 1-D inputs), each in ``[-1, 1]``.
    """
    fn = "concordance_cc"
    a = check_array(x, "x", fn, ndim=(1, 2), shape_doc="[T] or [T, D]")
    b = check_array(y, "y", fn, ndim=(1, 2), shape_doc="[T] or [T, D]")
    if a.shape != b.shape:
        raise MetricInputError(f"{fn}: x and y must have the same shape, got {a.shape} and {b.shape}")
    out = _ccc(a.reshape(1, len(a), -1), b.reshape(1, len(b), -1))[0, 0]
    return float(out[0]) if a.ndim == 1 else out


def _fr_corr(p: np.ndarray, sets: list[np.ndarray], fn: str) -> float:
    for i, r in enumerate(sets):
        if r.shape[1] != p.shape[2]:
            raise MetricInputError(f"{fn}: appropriate[{i}] has T={r.shape[1]} frames but pred has T={p.shape[2]}: "
                                   f"CCC needs equal lengths, trim both to the same frames")
    per_clip = [_ccc(p[n], r).mean(axis=2).max(axis=1).sum() for n, r in enumerate(sets)]
    return float(np.mean(per_clip))


def fr_corr(pred, appropriate) -> float:
    """FRCorr: ``mean_n sum_k max_{m in A_n} mean_d CCC(pred[n, k, :, d], real[m, :, d])`` (module docstring).

    Args:
      pred: ``[N, K, T, D]`` generated reactions.
      appropriate: appropriate real reactions per clip (see :func:`appropriate_sets`), with ``T`` frames.

    Returns:
      A float in ``[-K, K]`` (higher is better).
    """
    fn = "fr_corr"
    p = _pred(pred, fn)
    return _fr_corr(p, appropriate_sets(appropriate, p.shape[0], p.shape[3], fn=fn), fn)


# ---------------------------------------------------------------------------------------------------- FRDist


def _dtw_pairs(x: list[np.ndarray], y: list[np.ndarray], metric: str) -> np.ndarray:
    """DTW of every ``x[g][k]`` against every ``y[g][m]``, all groups ``g`` at once.

    ``x[g]`` is ``[K, T1, D_g]`` and ``y[g]`` ``[M, T2, D_g]``; returns ``[G, K, M]``. The table is filled one row
    ``i`` at a time for all ``G * K * M`` pairs together, each row with the cumulative-sum / running-minimum form of
    the horizontal recurrence (see :mod:`avatarjax.eval.dtw`). Cost rows come in blocks: for ``"sqeuclidean"``
    from ``|x|^2 + |y|^2 - 2 x.y`` (one batched matmul), for ``"l1"`` from explicit differences.
    """
    g, (k, t1, _), (m, t2, _) = len(x), x[0].shape, y[0].shape
    batch = g * k * m
    widest = max(xg.shape[2] for xg in x)
    block = int(max(1, min(t1, 4_000_000 // (batch * t2 * (widest if metric == "l1" else 1)))))
    if metric == "sqeuclidean":
        xx = [np.einsum("ktd,ktd->kt", xg, xg) for xg in x]
        yy = [np.einsum("mtd,mtd->mt", yg, yg) for yg in y]
        yt = [yg.transpose(0, 2, 1)[None] for yg in y]                          # [1, M, D_g, T2]
    prev = np.full((batch, t2 + 1), np.inf)
    prev[:, 0] = 0.0                                                            # the virtual origin D[-1, -1]
    for i0 in range(0, t1, block):
        i1 = min(t1, i0 + block)
        blocks = []
        for gi in range(g):
            xb = x[gi][:, None, i0:i1]                                          # [K, 1, b, D_g]
            if metric == "sqeuclidean":
                c = xx[gi][:, None, i0:i1, None] + yy[gi][None, :, None, :] - 2 * np.matmul(xb, yt[gi])
                np.maximum(c, 0.0, out=c)                                       # rounding can go below zero
            else:
                c = np.abs(xb[:, :, :, None, :] - y[gi][None, :, None, :, :]).sum(axis=-1)
            blocks.append(c)                                                    # [K, M, b, T2]
        cost_rows = np.stack(blocks).reshape(batch, i1 - i0, t2)
        for r in range(i1 - i0):
            cost = cost_rows[:, r]
            t = cost + np.minimum(prev[:, :-1], prev[:, 1:])                    # diagonal / vertical predecessors
            csum = np.cumsum(cost, axis=1)
            prev[:, 1:] = csum + np.minimum.accumulate(t - csum, axis=1)        # horizontal predecessors, unrolled
            prev[:, 0] = np.inf
    out = prev[:, -1].reshape(g, k, m)
    return np.sqrt(out) if metric == "sqeuclidean" else out


def _groups(groups, dims: int, fn: str) -> tuple[tuple[int, int, float], ...]:
    try:
        gs = tuple((int(a), int(b), float(w)) for a, b, w in groups)
    except (TypeError, ValueError):
        raise MetricInputError(f"{fn}: groups must be a sequence of (start, stop, weight) triples, got "
                               f"{groups!r}") from None
    if not gs or any(not 0 <= a < b <= dims or not np.isfinite(w) for a, b, w in gs):
        raise MetricInputError(f"{fn}: groups must be non-empty (start, stop, weight) triples with "
                               f"0 <= start < stop <= D={dims} and finite weights, got {groups!r}")
    return gs


def _metric(metric: str, fn: str) -> str:
    if metric not in _DTW_METRICS:
        raise MetricInputError(f"{fn}: unknown metric '{metric}': {did_you_mean(str(metric), _DTW_METRICS)}")
    return metric


def _weighted_dtw_matrix(x: np.ndarray, y: np.ndarray, groups, metric: str) -> np.ndarray:
    """``[K, M]`` weighted group DTW of ``x [K, T1, D]`` against ``y [M, T2, D]``."""
    per_group = _dtw_pairs([x[..., a:b] for a, b, _ in groups], [y[..., a:b] for a, b, _ in groups], metric)
    return np.tensordot(np.array([w for _, _, w in groups]), per_group, axes=1)


def weighted_dtw(x, y, *, groups=REACT_DIM_GROUPS, metric: str = "sqeuclidean") -> float:
    """Group-weighted DTW between two emotion tracks: ``sum_g w_g DTW(x[:, g], y[:, g])``.

    Args:
      x: ``[T1, D]`` track.
      y: ``[T2, D]`` track (same ``D``).
      groups: ``(start, stop, weight)`` dim slices, default :data:`REACT_DIM_GROUPS` (needs ``D >= 25``).
      metric: ``"sqeuclidean"`` (challenge/tslearn: ``sqrt`` of the path sum of squared Euclidean frame
        distances) or ``"l1"`` (:func:`avatarjax.eval.dtw.dtw_distance`: path sum of L1 frame distances).

    Returns:
      A float ``>= 0``.
    """
    fn = "weighted_dtw"
    a = check_array(x, "x", fn, ndim=2, shape_doc="[T1, D]")
    b = check_array(y, "y", fn, ndim=2, shape_doc="[T2, D]")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"{fn}: x and y must have the same D, got shapes {a.shape} and {b.shape}")
    gs, metric = _groups(groups, a.shape[1], fn), _metric(metric, fn)
    return float(_weighted_dtw_matrix(a[None], b[None], gs, metric)[0, 0])


def _fr_dist(p: np.ndarray, sets: list[np.ndarray], groups, metric: str) -> float:
    per_clip = [_weighted_dtw_matrix(p[n], r, groups, metric).min(axis=1).sum() for n, r in enumerate(sets)]
    return float(np.mean(per_clip))


def fr_dist(pred, appropriate, *, groups=REACT_DIM_GROUPS, metric: str = "sqeuclidean") -> float:
    """FRDist: ``mean_n sum_k min_{m in A_n} sum_g w_g DTW(pred[n, k, :, g], real[m, :, g])``.

    Args:
      pred: ``[N, K, T, D]`` generated reactions.
      appropriate: appropriate real reactions per clip (see :func:`appropriate_sets`); their ``T`` may differ.
      groups: dim groups and weights, default :data:`REACT_DIM_GROUPS` (AUs 1/15, valence/arousal 1,
        expressions 1/8).
      metric: DTW frame cost, see :func:`weighted_dtw`.

    Returns:
      A float ``>= 0`` (lower is better). Cost ``O(K M T^2 D)`` per clip, vectorised over the ``K M`` pairs.
    """
    fn = "fr_dist"
    p = _pred(pred, fn)
    gs, metric = _groups(groups, p.shape[3], fn), _metric(metric, fn)
    return _fr_dist(p, appropriate_sets(appropriate, p.shape[0], p.shape[3], fn=fn), gs, metric)


# -------------------------------------------------------------------------------------- FRDiv, FRVar, FRDvs


def _mean_pairwise_sq(z: np.ndarray) -> np.ndarray:
    """``sum_{a != b} ||z[..., a, :] - z[..., b, :]||^2 / (S (S - 1))`` for ``z [..., S, F]`` -> ``[...]``.

    Uses ``sum_{a, b} ||z_a - z_b||^2 = 2 S sum_a ||z_a - mean z||^2``, after shifting by ``z_0`` so that identical
    rows give exactly 0.
    """
    s = z.shape[-2]
    d = z - z[..., :1, :]
    d = d - d.mean(axis=-2, keepdims=True)
    return 2 * s * (d ** 2).sum(axis=(-2, -1)) / (s * (s - 1))


def fr_div(pred) -> float:
    """FRDiv (the challenge's S-MSE): ``mean_n sum_{a != b} ||z[n, a] - z[n, b]||^2 / (K (K - 1) T D)``.

    ``z[n, k]`` is reaction ``k`` of clip ``n`` flattened to ``T * D`` values, so this is the mean over clips and
    ordered pairs of distinct reactions of the per-element mean squared difference.

    Args:
      pred: ``[N, K, T, D]`` generated reactions, ``K >= 2``.

    Returns:
      A float ``>= 0`` (higher is more diverse); 0 iff every clip's ``K`` reactions are identical.
    """
    fn = "fr_div"
    p = _pred(pred, fn)
    if p.shape[1] < 2:
        raise MetricInputError(f"{fn}: pred needs K >= 2 reactions per clip to compare, got shape {p.shape}")
    return _fr_div(p)


def _fr_div(p: np.ndarray) -> float:
    n, k, t, d = p.shape
    return float(_mean_pairwise_sq(p.reshape(n, k, t * d)).mean() / (t * d))


def fr_var(pred) -> float:
    """FRVar: ``mean_{n, k, d} var_t pred[n, k, t, d]``, unbiased (ddof 1) variance over time.

    Args:
      pred: ``[N, K, T, D]`` generated reactions, ``T >= 2``.

    Returns:
      A float ``>= 0`` (higher means more motion over time).
    """
    return _fr_var(_pred(pred, "fr_var", min_frames=2))


def _fr_var(p: np.ndarray) -> float:
    return float(np.var(p, axis=2, ddof=1).mean())


def fr_dvs(pred) -> float:
    """FRDvs: ``sum_k sum_{n != m} ||z[n, k] - z[m, k]||^2 / (N (N - 1) K T D)`` (diversity across clips).

    Args:
      pred: ``[N, K, T, D]`` generated reactions, ``N >= 2`` clips.

    Returns:
      A float ``>= 0`` (higher means reactions differ more between speaker clips).
    """
    fn = "fr_dvs"
    p = _pred(pred, fn)
    if p.shape[0] < 2:
        raise MetricInputError(f"{fn}: pred needs N >= 2 speaker clips to compare, got shape {p.shape}")
    return _fr_dvs(p)


def _fr_dvs(p: np.ndarray) -> float:
    n, k, t, d = p.shape
    return float(_mean_pairwise_sq(p.transpose(1, 0, 2, 3).reshape(k, n, t * d)).mean() / (t * d))


# ---------------------------------------------------------------------------------------------------- FRSyn


def _window_stats(x: np.ndarray, lags: np.ndarray, head: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum, sum of squares and constancy of ``x [..., T, D]`` over the windows used at each lag.

    For ``head=True`` the window at lag ``L`` is the first ``T - |L|`` frames, otherwise the last ``T - |L|``.
    Returns arrays ``[n_lags, ..., D]``.
    """
    t = x.shape[-2]
    idx = t - np.abs(lags) - 1                                                  # last frame index of the window
    src = x if head else np.flip(x, axis=-2)
    s1 = np.cumsum(src, axis=-2).take(idx, axis=-2)
    s2 = np.cumsum(src ** 2, axis=-2).take(idx, axis=-2)
    hi = np.maximum.accumulate(src, axis=-2).take(idx, axis=-2)
    lo = np.minimum.accumulate(src, axis=-2).take(idx, axis=-2)
    return tuple(np.moveaxis(a, -2, 0) for a in (s1, s2, hi == lo))


def _lag_correlations(p: np.ndarray, s: np.ndarray, max_lag: int) -> np.ndarray:
    """``r[L, n, k, d] = pearson(p[n, k, t, d], s[n, t - L, d])`` over the overlap, NaN where undefined."""
    t = p.shape[2]
    lags = np.arange(-max_lag, max_lag + 1)
    # Pearson is shift-invariant: centre each series on its own mean to keep the sums small.
    p = p - p.mean(axis=2, keepdims=True)
    s = (s - s.mean(axis=1, keepdims=True))[:, None]                            # [N, 1, T, D]
    # Cross sums for every lag at once: c[L] = sum_t p[t] s[t - L] over the overlap (zero padding, no wrap).
    nfft = 1 << int(np.ceil(np.log2(2 * t)))
    fp = np.fft.rfft(p, n=nfft, axis=2)
    fs = np.fft.rfft(s, n=nfft, axis=2)
    cross = np.fft.irfft(fp * np.conj(fs), n=nfft, axis=2)
    sxy = np.moveaxis(np.take(cross, lags % nfft, axis=2), 2, 0)               # [L, N, K, D]
    # Overlap windows: L >= 0 pairs p[L:] with s[:T-L]; L < 0 pairs p[:T+L] with s[-L:].
    pos = (lags >= 0).reshape(-1, 1, 1, 1)
    px_tail, pxx_tail, pc_tail = _window_stats(p, lags, head=False)
    px_head, pxx_head, pc_head = _window_stats(p, lags, head=True)
    sy_head, syy_head, sc_head = _window_stats(s, lags, head=True)
    sy_tail, syy_tail, sc_tail = _window_stats(s, lags, head=False)
    sx, sxx, cx = (np.where(pos, a, b) for a, b in ((px_tail, px_head), (pxx_tail, pxx_head), (pc_tail, pc_head)))
    sy, syy, cy = (np.where(pos, a, b) for a, b in ((sy_head, sy_tail), (syy_head, syy_tail), (sc_head, sc_tail)))
    m = (t - np.abs(lags)).reshape(-1, 1, 1, 1).astype(np.float64)
    cov = sxy - sx * sy / m
    var = np.maximum(sxx - sx ** 2 / m, 0.0) * np.maximum(syy - sy ** 2 / m, 0.0)
    undefined = cx | cy | (var <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(cov / np.sqrt(var), -1.0, 1.0)
    return np.where(undefined, np.nan, r)


def _tlcc_lags(p: np.ndarray, s: np.ndarray, max_lag: int, nan_policy: str) -> np.ndarray:
    r = _lag_correlations(p, s, max_lag)                                        # [L, N, K, D]
    if nan_policy == "official":
        rs = r.mean(axis=-1)                                                    # NaN if any dim is undefined
        idx = np.argmax(rs, axis=0)                                             # numpy: the first NaN wins
        return idx - max_lag
    defined = ~np.isnan(r)
    count = defined.sum(axis=-1)
    rs = np.where(count > 0, np.where(defined, r, 0.0).sum(axis=-1) / np.maximum(count, 1), -np.inf)
    lag = np.argmax(rs, axis=0) - max_lag
    return np.where(np.isinf(rs).all(axis=0), max_lag, lag)


def _lag_args(p: np.ndarray, max_lag, nan_policy: str, fn: str) -> int:
    max_lag = check_positive_int(max_lag, "max_lag", fn, 0)
    if p.shape[2] < max_lag + 2:
        raise MetricInputError(f"{fn}: pred has T={p.shape[2]} frames but max_lag={max_lag} needs T >= "
                               f"max_lag + 2 so that every lag overlaps by 2 frames")
    if nan_policy not in _NAN_POLICIES:
        raise MetricInputError(f"{fn}: unknown nan_policy '{nan_policy}': "
                               f"{did_you_mean(str(nan_policy), _NAN_POLICIES)}")
    return max_lag


def tlcc_lags(pred, speaker, *, max_lag: int = REACT_MAX_LAG, nan_policy: str = "official") -> np.ndarray:
    """Peak lag of the time-lagged cross-correlation of each reaction with its speaker.

    ``r(L) = mean_d pearson(pred[n, k, t, d], speaker[n, t - L, d])`` over the frames where both exist, for
    ``L = -max_lag .. max_lag``; the peak lag is the first ``argmax_L r(L)``. Computed for all lags at once
    (FFT cross sums, prefix sums for the window moments).

    Args:
      pred: ``[N, K, T, D]`` generated reactions.
      speaker: ``[N, T, D]`` speaker tracks.
      max_lag: largest lag in frames (49 in the challenge); needs ``T >= max_lag + 2``.
      nan_policy: ``"official"`` or ``"omit"`` for undefined (constant-window) correlations, see the module
        docstring.

    Returns:
      ``[N, K]`` int array of signed lags; ``L > 0``: the reaction follows the speaker by ``L`` frames.
    """
    fn = "tlcc_lags"
    p = _pred(pred, fn)
    max_lag = _lag_args(p, max_lag, nan_policy, fn)
    return _tlcc_lags(p, _speaker(speaker, p, fn), max_lag, nan_policy)


def fr_syn(pred, speaker, *, max_lag: int = REACT_MAX_LAG, nan_policy: str = "official") -> float:
    """FRSyn: mean over clips and reactions of ``|peak lag|`` of :func:`tlcc_lags`.

    Args:
      pred: ``[N, K, T, D]`` generated reactions.
      speaker: ``[N, T, D]`` speaker tracks.
      max_lag: largest lag in frames (49 in the challenge).
      nan_policy: ``"official"`` (reproduces the challenge numbers) or ``"omit"``; see the module docstring.

    Returns:
      A float in ``[0, max_lag]`` (lower is better).
    """
    fn = "fr_syn"
    p = _pred(pred, fn)
    max_lag = _lag_args(p, max_lag, nan_policy, fn)
    return float(np.abs(_tlcc_lags(p, _speaker(speaker, p, fn), max_lag, nan_policy)).mean())


# ---------------------------------------------------------------------------------------------------- FRRea


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians: ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    If ``S1 S2`` has no finite square root, ``eps * I`` is added to both covariances (as pytorch-fid does); the
    imaginary part that rounding can leave in the square root is dropped.

    Args:
      mu1, mu2: ``[F]`` means.
      sigma1, sigma2: ``[F, F]`` covariances.
      eps: diagonal offset used only when the plain square root fails.

    Returns:
      A float ``>= 0`` (up to rounding).
    """
    fn = "frechet_distance"
    m1 = check_array(mu1, "mu1", fn, ndim=1, shape_doc="[F]")
    m2 = check_array(mu2, "mu2", fn, ndim=1, shape_doc="[F]")
    s1 = check_array(sigma1, "sigma1", fn, ndim=2, shape_doc="[F, F]")
    s2 = check_array(sigma2, "sigma2", fn, ndim=2, shape_doc="[F, F]")
    f = len(m1)
    for name, a, shape in (("mu2", m2, (f,)), ("sigma1", s1, (f, f)), ("sigma2", s2, (f, f))):
        if a.shape != shape:
            raise MetricInputError(f"{fn}: {name} must have shape {shape} to match mu1 {m1.shape}, got {a.shape}")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(f) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(x, name: str, encoder, batch_size: int, fn: str) -> np.ndarray:
    arr = np.asarray(x) if encoder is None else x
    if encoder is None:
        if getattr(arr, "ndim", 0) >= 3:
            raise ConfigError(
                f"{fn}: {name} looks like frames (shape {arr.shape}) but no encoder was given: pass "
                f"encoder=<callable mapping a [B, H, W, C] frame batch to [B, F] features>, e.g. an Inception-v3 "
                f"pool3 (2048-d) extractor loaded from a local checkpoint, or pass precomputed [M, F] features; "
                f"avatarjax never downloads the Inception weights")
        return check_array(x, name, fn, ndim=2, shape_doc="[M, F] (frames x features)", min_len=2)
    if not callable(encoder):
        raise ConfigError(f"{fn}: encoder must be a callable mapping [B, H, W, C] frames to [B, F] features, "
                          f"got {type(encoder).__name__}")
    frames = np.asarray(x)
    if frames.ndim == 5:                                                        # videos [V, T, H, W, C]
        frames = frames.reshape(-1, *frames.shape[2:])
    if frames.ndim != 4 or len(frames) < 2:
        raise MetricInputError(f"{fn}: {name} must be frames [M, H, W, C] or videos [V, T, H, W, C] with at least "
                               f"2 frames, got shape {frames.shape}")
    feats = [np.asarray(encoder(frames[i:i + batch_size])) for i in range(0, len(frames), batch_size)]
    out = check_array(np.concatenate([f.reshape(len(f), -1) for f in feats]), f"encoder({name})", fn, ndim=2,
                      shape_doc="[M, F]", min_len=2)
    if len(out) != len(frames):
        raise MetricInputError(f"{fn}: encoder({name}) returned {len(out)} feature rows for {len(frames)} frames: "
                               f"it must return one [F] row per frame")
    return out


def fr_rea(real, generated, *, encoder: Callable | None = None, batch_size: int = 50) -> float:
    """FRRea: Frechet distance between the feature statistics of real and generated rendered frames (FID).

    Args:
      real: real frames ``[M, H, W, C]`` / videos ``[V, T, H, W, C]`` when ``encoder`` is given, else their
        precomputed features ``[M, F]``.
      generated: the same for generated frames (same ``F``).
      encoder: callable mapping a frame batch ``[B, H, W, C]`` to features ``[B, F]`` (the challenge uses the
        Inception-v3 pool3 features of pytorch-fid). Nothing is downloaded: without an encoder, frames raise a
        :class:`~avatarjax.errors.ConfigError` saying what to pass.
      batch_size: frames per encoder call.

    Returns:
      FID as a float ``>= 0`` (lower is more realistic); mean ``[F]`` and unbiased covariance ``[F, F]`` per set.
    """
    fn = "fr_rea"
    batch_size = check_positive_int(batch_size, "batch_size", fn, 1)
    a = _features(real, "real", encoder, batch_size, fn)
    b = _features(generated, "generated", encoder, batch_size, fn)
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"{fn}: real and generated features must have the same size F, got {a.shape[1]} "
                               f"and {b.shape[1]}")
    return frechet_distance(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)), b.mean(0),
                            np.atleast_2d(np.cov(b, rowvar=False)))


# ---------------------------------------------------------------------------------------------------- all


def react_metrics(pred, speaker, appropriate, *, max_lag: int = REACT_MAX_LAG, syn_nan_policy: str = "official",
                  dist_metric: str = "sqeuclidean", groups=REACT_DIM_GROUPS, realism: tuple | None = None,
                  encoder: Callable | None = None) -> dict[str, float]:
    """All REACT metrics for one set of generated reactions.

    Args:
      pred: ``[N, K, T, D]`` generated reactions (``D = 25`` for the default ``groups``).
      speaker: ``[N, T, D]`` speaker tracks (FRSyn).
      appropriate: appropriate real reactions per clip: an :class:`AppropriatePool` or ``N`` arrays ``[M_n, T, D]``.
      max_lag: FRSyn lag range in frames.
      syn_nan_policy: FRSyn handling of undefined correlations (``"official"`` or ``"omit"``).
      dist_metric: FRDist DTW frame cost (``"sqeuclidean"`` = challenge, or ``"l1"``).
      groups: FRDist dim groups and weights.
      realism: optional ``(real, generated)`` for FRRea, features ``[M, F]`` or frames with ``encoder``.
      encoder: FRRea frame encoder (see :func:`fr_rea`).

    Returns:
      ``{"FRCorr", "FRDist", "FRDiv", "FRVar", "FRDvs", "FRSyn"}`` (plus ``"FRRea"`` when ``realism`` is given) as
      floats. ``FRDiv`` is NaN when ``K < 2`` and ``FRDvs`` when ``N < 2`` (nothing to compare).
    """
    fn = "react_metrics"
    p = _pred(pred, fn, min_frames=2)
    s = _speaker(speaker, p, fn)
    sets = appropriate_sets(appropriate, p.shape[0], p.shape[3], fn=fn)
    gs, dist_metric = _groups(groups, p.shape[3], fn), _metric(dist_metric, fn)
    max_lag = _lag_args(p, max_lag, syn_nan_policy, fn)
    out = {
        "FRCorr": _fr_corr(p, sets, fn),
        "FRDist": _fr_dist(p, sets, gs, dist_metric),
        "FRDiv": _fr_div(p) if p.shape[1] >= 2 else float("nan"),
        "FRVar": _fr_var(p),
        "FRDvs": _fr_dvs(p) if p.shape[0] >= 2 else float("nan"),
        "FRSyn": float(np.abs(_tlcc_lags(p, s, max_lag, syn_nan_policy)).mean()),
    }
    if realism is not None:
        if not isinstance(realism, (tuple, list)) or len(realism) != 2:
            raise MetricInputError(f"{fn}: realism must be a (real, generated) pair, got {type(realism).__name__}")
        out["FRRea"] = fr_rea(realism[0], realism[1], encoder=encoder)
    return out
