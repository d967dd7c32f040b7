"""PNG plots of a training run's metrics and of evaluation tables, written next to the numbers they show.

    plot_metrics("runs/x")                 # runs/x/metrics.jsonl -> runs/x/plots/{loss,optimizer,speed,...}.png
    plot_table(report, "runs/x/eval.png")  # a nested {row: {metric: value}} dict as a table image

``plot_metrics`` groups the logged scalars: ``loss.png`` (train ``loss`` and, when the run evaluated, ``eval_loss``
against the step), ``optimizer.png`` (``lr``, ``grad_norm``), ``speed.png`` (``steps_per_sec``,
``tflops_per_device``, ``mfu``, ``data_wait_frac``), one PNG per ``prefix/`` of task metrics named ``prefix/name``,
and ``metrics.png`` for the other task metrics. Every metric gets its own panel; a train metric and its ``eval_``
twin share one. Matplotlib runs with the Agg backend (no display needed); files are written atomically.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

from avatarjax.atomic import atomic_file
from avatarjax.errors import DataError

EVAL_PREFIX = "eval_"
# Trainer-logged scalars, by the file they go to. Everything else is a task metric.
TRAINER_GROUPS = {
    "loss": ("loss",),
    "optimizer": ("lr", "grad_norm"),
    "speed": ("steps_per_sec", "tflops_per_device", "mfu", "data_wait_frac"),
}
TASK_GROUP = "metrics"


def _pyplot():
    """matplotlib.pyplot, on the Agg backend unless the process (e.g. a notebook) already chose one; None (with a
    warning) when matplotlib is not installed."""
    import sys

    try:
        import matplotlib
    except ImportError:
        warnings.warn("matplotlib is not installed: no PNG plots written (pip install matplotlib)", stacklevel=3)
        return None
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a torn last line (a run killed mid-write) is skipped, other bad lines fail."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist: pass the --workdir of an `avatarjax train` run")
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            if number == len(lines):
                continue
            raise DataError(f"'{path}' line {number} is not JSON ({err}): the metrics file is damaged") from err
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _number(value) -> float | None:
    """A float for numbers and the strings the metrics writer uses for non-finite values; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        return float(value)
    return None


def metric_series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` of every scalar in ``rows`` (eval metrics keep their ``eval_`` prefix)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        step = int(row["step"])
        for name, value in row.items():
            value = _number(value)
            if name == "step" or value is None:
                continue
            steps, values = series.setdefault(name, ([], []))
            steps.append(step)
            values.append(value)
    return series


def metric_groups(names) -> dict[str, list[str]]:
    """``{group: [base metric names]}``: base names drop ``eval_``, so a metric and its eval twin share a panel."""
    bases = sorted({n[len(EVAL_PREFIX):] if n.startswith(EVAL_PREFIX) else n for n in names})
    groups: dict[str, list[str]] = {}
    owner = {name: group for group, members in TRAINER_GROUPS.items() for name in members}
    for base in bases:
        group = owner.get(base) or (base.split("/", 1)[0] if "/" in base else TASK_GROUP)
        groups.setdefault(group, []).append(base)
    order = [*TRAINER_GROUPS, TASK_GROUP]
    return dict(sorted(groups.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order),
                                                       kv[0])))


def _file_name(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("._") or "metrics"


def _use_log_scale(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 50


def _plot_group(plt, bases: list[str], series: dict, title: str, path: Path) -> Path:
    columns = min(len(bases), 3)
    rows = math.ceil(len(bases) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    for ax, base in zip(axes.flat, bases):
        plotted: list[float] = []
        for name, label, style in ((base, "train", "-"), (EVAL_PREFIX + base, "eval", "o-")):
            if name in series:
                steps, values = series[name]
                ax.plot(steps, values, style, label=label, lw=1.4, ms=3)
                plotted.extend(values)
        if _use_log_scale(plotted):
            ax.set_yscale("log")
        ax.set_title(base, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if EVAL_PREFIX + base in series:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(bases):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def plot_metrics(workdir: str | Path) -> dict[str, str]:
    """Write ``WORKDIR/plots/<group>.png`` from ``WORKDIR/metrics.jsonl``; returns ``{group: path}`` ({} when the
    run logged nothing yet or matplotlib is missing)."""
    workdir = Path(workdir)
    series = metric_series(read_metrics(workdir / "metrics.jsonl"))
    if not series:
        return {}
    plt = _pyplot()
    if plt is None:
        return {}
    out = workdir / "plots"
    written = {}
    for group, bases in metric_groups(series).items():
        path = out / f"{_file_name(group)}.png"
        _plot_group(plt, bases, series, f"{workdir.name}: {group}", path)
        written[group] = str(path)
    return written


# ------------------------------------------------------------------------------------------------------ tables
def _format(value) -> str:
    number = _number(value)
    if number is None:
        return str(value)
    if number == int(number) and abs(number) < 1e6 and isinstance(value, int):
        return str(int(number))
    return f"{number:.4g}"


def _flatten(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    """Scalars and short strings of a nested mapping as ``{"a.b": value}``; lists and long texts are left out."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif _number(value) is not None or (isinstance(value, str) and len(value) <= 40):
            flat[name] = value
    return flat


def table_rows(metrics: Mapping) -> tuple[list[str], list[str], list[list[str]]]:
    """(row labels, column labels, cells) of a metrics dict: each entry whose value is a mapping is a row (its
    nested scalars the columns); the top-level scalars form one more row, ``summary``."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise DataError("plot_table needs a non-empty dict of metrics ({row: {metric: value}} or {metric: value})")
    rows: dict[str, dict[str, object]] = {}
    summary: dict[str, object] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat = _flatten(value)
            if flat:
                rows[str(key)] = flat
        elif _number(value) is not None or (isinstance(value, str) and len(value) <= 40):
            summary[str(key)] = value
    if summary:
        rows["summary" if "summary" not in rows else "summary_"] = summary
    if not rows:
        raise DataError("plot_table found no scalar metrics to show")
    columns: list[str] = []
    for flat in rows.values():
        columns.extend(c for c in flat if c not in columns)
    cells = [[_format(flat[c]) if c in flat else "" for c in columns] for flat in rows.values()]
    return list(rows), columns, cells


def plot_table(metrics: Mapping, path: str | Path, title: str = "") -> str | None:
    """Render an evaluation report as a table PNG at ``path`` (rows: the report's sub-dicts plus ``summary``;
    columns: their scalar metrics). Returns the path, or None when matplotlib is missing."""
    row_labels, columns, cells = table_rows(metrics)
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    width = min(1.0 + 0.9 * len(columns) + 0.08 * max(len(r) for r in row_labels), 40.0)
    fig, ax = plt.subplots(figsize=(width, 0.9 + 0.38 * (len(row_labels) + 1)))
    ax.axis("off")
    table = ax.table(cellText=cells, rowLabels=row_labels, colLabels=columns, loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(columns))))
    table.scale(1.0, 1.3)
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)
