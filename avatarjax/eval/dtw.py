"""Dynamic time warping (DTW) with an absolute-difference cost, plus the input checks shared by ``avatarjax.eval``.

DTW
---
``D[i, j] = c[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``c[i, j] = sum_d |x[i, d] - y[j, d]|``
(plain ``|x[i] - y[j]|`` for 1-D series) and ``D[-1, -1] = 0``. The DTW distance is ``D[T1-1, T2-1]``: the
*summed* (not averaged) cost along the cheapest monotone, continuous path from ``(0, 0)`` to ``(T1-1, T2-1)``.

The table is filled one row at a time, each row in a single vectorised numpy pass: writing
``t[j] = c[i, j] + min(D[i-1, j-1], D[i-1, j])`` and ``C[j] = sum_{m<=j} c[i, m]``, the horizontal recurrence
``D[i, j] = min(t[j], c[i, j] + D[i, j-1])`` unrolls to ``D[i, j] = C[j] + min_{k<=j} (t[k] - C[k])``, i.e. a
cumulative sum and a running minimum. Cost: O(T1*T2) time, O(T2) memory for :func:`dtw_distance`.

Optional Sakoe-Chiba band of radius ``band``: only cells with ``|i - j| <= band`` may be visited. ``band`` must be at
least ``|T1 - T2|``, otherwise no path reaches the end cell (a :class:`MetricInputError` says so).

Input checks
------------
:class:`MetricInputError` subclasses both :class:`avatarjax.errors.DataError` (so the CLI prints it as one line)
and :class:`ValueError` (the usual numpy/scipy convention for bad shapes). Every metric in this package raises it
with a message ``"<function>: <argument> <problem>"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from avatarjax.errors import DataError

__all__ = ["MetricInputError", "dtw_distance", "dtw_cost_matrix"]


class MetricInputError(DataError, ValueError):
    """An array given to an ``avatarjax.eval`` metric has the wrong shape, length, dtype or values."""


# ----------------------------------------------------------------------------------------------- shared checks


def check_array(x, name: str, fn: str, *, ndim: int | tuple[int, ...], shape_doc: str,
                last_dim: tuple[int, ...] | None = None, min_len: int = 1) -> np.ndarray:
    """``x`` as a finite float64 array of the given rank, or a :class:`MetricInputError` naming the problem.

    ``shape_doc`` describes the expected shape (e.g. ``"[T, K, 2]"``); ``last_dim`` restricts the size of the last
    axis; ``min_len`` is the minimum size of axis 0 (the time axis for every metric here).
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MetricInputError(f"{fn}: {name} must be a numeric array of shape {shape_doc} ({err})") from None
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise MetricInputError(f"{fn}: {name} must have shape {shape_doc}, got shape {arr.shape}")
    if last_dim is not None and arr.shape[-1] not in last_dim:
        raise MetricInputError(f"{fn}: {name} must have shape {shape_doc}, got shape {arr.shape} "
                               f"(last axis must be {' or '.join(map(str, last_dim))})")
    if arr.shape[0] < min_len:
        raise MetricInputError(f"{fn}: {name} needs at least {min_len} frame(s) along axis 0, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{fn}: {name} contains NaN or Inf: clean or mask the data before scoring")
    return arr


def check_indices(idx, name: str, fn: str, size: int) -> np.ndarray:
    """``idx`` as a non-empty 1-D int array with values in ``[0, size)``, or a :class:`MetricInputError`."""
    arr = np.asarray(idx)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise MetricInputError(f"{fn}: {name} must be a non-empty 1-D sequence of indices, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise MetricInputError(f"{fn}: {name} must hold integer indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= size:
        raise MetricInputError(f"{fn}: {name} has indices outside [0, {size}): {arr.tolist()}")
    return arr.astype(np.intp)


def check_positive_int(value, name: str, fn: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a :class:`MetricInputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MetricInputError(f"{fn}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------- DTW


def _as_series(x, name: str, fn: str) -> np.ndarray:
    arr = check_array(x, name, fn, ndim=(1, 2), shape_doc="[T] or [T, D]")
    return arr[:, None] if arr.ndim == 1 else arr


def _dtw_rows(x, y, band: int | None, fn: str) -> Iterator[np.ndarray]:
    """Yield the rows ``D[i, :]`` of the accumulated-cost table (``inf`` outside the band)."""
    xs, ys = _as_series(x, "x", fn), _as_series(y, "y", fn)
    if xs.shape[1] != ys.shape[1]:
        raise MetricInputError(f"{fn}: x and y must have the same feature size, got shapes {xs.shape} and {ys.shape}")
    t1, t2 = len(xs), len(ys)
    if band is not None:
        band = check_positive_int(band, "band", fn, 0)
        if band < abs(t1 - t2):
            raise MetricInputError(f"{fn}: band={band} is narrower than the length difference |{t1} - {t2}|, "
                                   f"so no warping path reaches the end: use band >= {abs(t1 - t2)} or band=None")
    # prev[j + 1] = D[i-1, j]; prev[0] = D[i-1, -1] (the virtual origin D[-1, -1] = 0 for the first row).
    prev = np.full(t2 + 1, np.inf)
    prev[0] = 0.0
    for i in range(t1):
        lo, hi = (0, t2) if band is None else (max(0, i - band), min(t2, i + band + 1))
        cost = np.abs(ys[lo:hi] - xs[i]).sum(axis=1)
        t = cost + np.minimum(prev[lo:hi], prev[lo + 1:hi + 1])      # diagonal / vertical predecessors
        csum = np.cumsum(cost)
        row = np.full(t2, np.inf)
        row[lo:hi] = csum + np.minimum.accumulate(t - csum)           # horizontal predecessors, unrolled
        yield row
        prev = np.concatenate(([np.inf], row))


def dtw_cost_matrix(x, y, *, band: int | None = None) -> np.ndarray:
    """Accumulated DTW cost table ``D`` of shape ``[T1, T2]`` (``inf`` for cells outside the band).

    Args:
      x: ``[T1]`` or ``[T1, D]`` series.
      y: ``[T2]`` or ``[T2, D]`` series (same ``D``).
      band: Sakoe-Chiba radius (cells with ``|i - j| > band`` are forbidden) or ``None`` for no constraint.

    Returns:
      ``[T1, T2]`` float64 array; ``D[-1, -1]`` is :func:`dtw_distance`.
    """
    return np.stack(list(_dtw_rows(x, y, band, "dtw_cost_matrix")))


def dtw_distance(x, y, *, band: int | None = None) -> float:
    """DTW distance between two series: the summed absolute-difference cost along the best warping path.

    Args:
      x: ``[T1]`` or ``[T1, D]`` series.
      y: ``[T2]`` or ``[T2, D]`` series (same ``D``; the per-cell cost is the L1 distance over ``D``).
      band: Sakoe-Chiba radius or ``None``; must be ``>= |T1 - T2|``.

    Returns:
      A float ``>= 0``; 0 iff ``y`` is a time-warped copy of ``x``. Symmetric in ``x`` and ``y``.
    """
    row = None
    for row in _dtw_rows(x, y, band, "dtw_distance"):
        pass
    return float(row[-1])
