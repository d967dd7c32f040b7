"""``avatarjax bench all [--quick] [--only a,b] [--out bench.json] [--timeout S]``: every model benchmark, each in
a fresh Python process (one crash, OOM or hang cannot take the others down; its failure is recorded in the
results, never dropped), then one table.

Writes ``OUT`` (JSON: each benchmark's full result or error, and the table rows), ``OUT`` with ``.md`` (a markdown
table: model, training step ms ours / PyTorch reference, ratio, TFLOP/s, MFU, memory, sampling speed-up) and
``OUT`` with ``.png`` (bar plots of MFU and of the ratio per model). ``--quick`` runs each benchmark's smoke mode
(tiny shapes, one or two timed steps): it checks that everything runs, its numbers mean little.

Each benchmark returns a ``summary`` list of rows (:func:`avatarjax.bench.harness.row`); a benchmark without one
still gets a row saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avatarjax.atomic import atomic_file
from avatarjax.bench.harness import ROW_KEYS

TRAIN = "train_step"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark of the suite: the registered bench ``bench`` run with ``argv`` (``quick`` in --quick mode)."""

    name: str
    bench: str
    argv: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)


def _train(family: str, config: str, tiny: str, reference: str = "", quick_extra: tuple[str, ...] = ()) -> Spec:
    extra = ("--reference", reference) if reference else ()
    return Spec(family, TRAIN, ("--model", family, "--config", config, *extra),
                ("--model", family, "--config", tiny, "--steps", "2", *extra, *quick_extra))


SUITE: tuple[Spec, ...] = (
    Spec("instructavatar", "instructavatar"),
    Spec("posnet", "posnet"),
    Spec("cogportrait", "cogportrait"),
    Spec("speechvideo", "speechvideo"),
    Spec("dac", "dac"),
    Spec("video_tokenizer", "video_tokenizer"),
    Spec("encoders", "encoders"),
    _train("motion_vae", "configs/motion_vae/synthface_small.py", "configs/motion_vae/synthface_tiny.py",
           "torch"),
    _train("wan_vae", "configs/wan_vae/synthface_small.py", "configs/wan_vae/synthface_tiny.py", "diffusers",
           ("--vae-base-dim", "8", "--vae-size", "16")),
    _train("face_reader", "configs/face_reader/synthface_small.py", "configs/face_reader/synthface_tiny.py",
           "torch"),
    _train("reaction", "configs/reaction/synthface_small.py", "configs/reaction/synthface_tiny.py"),
    _train("lm", "configs/lm/synthface_small.py", "configs/lm/synthface_tiny.py", "transformers"),
)


# ------------------------------------------------------------------------------------------------ running


def run_one(spec: Spec, quick: bool, timeout: float, python: str = sys.executable, torch_threads: int = 0) -> dict:
    """Run one benchmark in a fresh process: ``{"name", "argv", "seconds", "result"}`` or ``... "error"``."""
    argv = list(spec.quick if quick else spec.argv)
    env = dict(os.environ, AVATARJAX_BENCH_TORCH_THREADS=str(torch_threads)) if torch_threads else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, "-m", "avatarjax.bench.all", "--child", spec.bench, str(out), "--", *argv]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"name": spec.name, "argv": argv, "seconds": time.perf_counter() - t0,
                    "error": f"timed out after {timeout:.0f} s"}
        record = {"name": spec.name, "argv": argv, "seconds": time.perf_counter() - t0}
        if proc.returncode != 0 or not out.is_file():
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            tail = lines[-40:]
            last = _exception_line(lines)
            why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit status {proc.returncode}"
            record.update(error=f"{why}: {last}", stderr_tail="\n".join(tail))
        else:
            record["result"] = json.loads(out.read_text())
        return record


def _exception_line(lines: list[str]) -> str:
    """The last ``SomeError: message`` line of a traceback (JAX appends notes after it), else the last line."""
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if ":" in line and head and " " not in head and (head.endswith(("Error", "Exception", "Exit"))
                                                           or head.endswith("Interrupt")):
            return line.strip()
    return lines[-1].strip() if lines else ""


def _child(bench: str, out: str, argv: list[str]) -> int:
    from avatarjax.registry import BENCHMARKS

    threads = int(os.environ.get("AVATARJAX_BENCH_TORCH_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)

    result = BENCHMARKS.get(bench)(argv)
    Path(out).write_text(json.dumps(result, default=_jsonable))
    return 0


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


# ------------------------------------------------------------------------------------------------ aggregation


def rows_of(records: list[dict]) -> list[dict]:
    """The table rows of every record: a benchmark's own ``summary`` rows (tagged with the benchmark's name and
    ``status: ok``), or one ``status: failed`` row carrying the error."""
    rows = []
    for rec in records:
        if "error" in rec:
            rows.append(dict({k: None for k in ROW_KEYS}, model=rec["name"], bench=rec["name"], status="failed",
                             note=rec["error"]))
            continue
        summary = rec["result"].get("summary") if isinstance(rec.get("result"), dict) else None
        if not summary:
            rows.append(dict({k: None for k in ROW_KEYS}, model=rec["name"], bench=rec["name"], status="ok",
                             note="benchmark reports no summary rows"))
            continue
        for r in summary:
            rows.append(dict({k: None for k in ROW_KEYS}, **r, bench=rec["name"]))
            rows[-1]["status"] = r.get("status") or "ok"
    return rows


def _fmt(x, digits: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if pct:
        return f"{100 * x:.2f}%"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


COLUMNS = ("model", "step ms ours", "step ms ref", "reference", "ratio ref/ours", "TFLOP/s", "MFU", "memory GiB",
           "sampling speed-up", "status", "note")


def markdown_table(rows: list[dict], header: dict | None = None) -> str:
    """A markdown table of ``rows`` (ratio: reference time / ours, > 1 means ours is faster; sampling speed-up:
    Python loop of per-step calls / one compiled loop)."""
    lines = []
    if header:
        lines += [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["model"], _fmt(r["train_ms_ours"]), _fmt(r["train_ms_ref"]), r["reference"] or "-",
                 _fmt(r["ratio"]), _fmt(r["tflops"]), _fmt(r["mfu"], pct=True), _fmt(r["memory_gib"]),
                 _fmt(r["sampling_speedup"]), r.get("status") or "-", (r["note"] or "").replace("|", "/")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | Path) -> Path | None:
    """Two horizontal bar charts: MFU (%) per model and reference/ours step-time ratio per model (line at 1)."""
    from avatarjax.train.plots import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    mfu = [(r["model"], 100 * r["mfu"]) for r in rows if r.get("mfu") is not None]
    ratio = [(r["model"], r["ratio"]) for r in rows if r.get("ratio") is not None]
    height = 1.0 + 0.35 * max(len(mfu), len(ratio), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, height))
    for ax, data, title in ((axes[0], mfu, "MFU (%)"), (axes[1], ratio, "step time: reference / ours (log)")):
        if data:
            names, values = zip(*data)
            ax.barh(range(len(values)), values, color="tab:blue")
            ax.set_yticks(range(len(values)), names, fontsize=8)
            ax.invert_yaxis()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    axes[1].axvline(1.0, color="tab:red", linestyle="--", linewidth=1)
    if ratio:
        axes[1].set_xscale("log")  # ratios span orders of magnitude; 1 (parity) sits in the middle
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_outputs(records: list[dict], out: str | Path, header: dict) -> dict:
    """Write ``out`` (JSON), its ``.md`` table and ``.png`` plot; returns the JSON document."""
    out = Path(out)
    rows = rows_of(records)
    doc = {**header, "rows": rows, "failed": [r["name"] for r in records if "error" in r], "benchmarks": records}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_jsonable))
    md = out.with_suffix(".md")
    with atomic_file(md) as tmp:
        tmp.write_text("# avatarjax benchmarks\n\n" + markdown_table(rows, header))
    png = plot(rows, out.with_suffix(".png"))
    doc["files"] = {"json": str(out), "markdown": str(md), "plot": str(png) if png else None}
    return doc


def _header(quick: bool) -> dict:
    import jax

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "load_average_1m_at_start": round(load[0], 2), "quick": quick,
            "ratio": "reference step time / ours (> 1: ours faster)",
            "sampling_speed_up": "Python loop of per-step jitted calls / one compiled loop"}


def bench_all(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax bench all")
    p.add_argument("--out", default="bench.json", help="JSON results; the .md table and .png plot go beside it")
    p.add_argument("--quick", action="store_true", help="smoke run: each benchmark's smallest mode")
    p.add_argument("--only", default="", help="comma-separated names (default: all): " + ",".join(s.name for s in SUITE))
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark before it is recorded as "
                                                                   "timed out")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="PyTorch intra-op threads in every benchmark (0: torch's default, all cores)")
    ns = p.parse_args(argv)
    only = [n for n in ns.only.split(",") if n]
    known = {s.name for s in SUITE}
    unknown = sorted(set(only) - known)
    if unknown:
        from avatarjax.errors import AvatarError

        raise AvatarError(f"bench all: unknown benchmark(s) {unknown}; choose from {sorted(known)}")
    header = dict(_header(ns.quick), torch_threads=ns.torch_threads or "default")
    records = []
    for spec in SUITE:
        if only and spec.name not in only:
            continue
        print(f"[bench all] {spec.name} ...", file=sys.stderr, flush=True)
        rec = run_one(spec, ns.quick, ns.timeout, torch_threads=ns.torch_threads)
        status = f"FAILED ({rec['error']})" if "error" in rec else "ok"
        print(f"[bench all] {spec.name}: {status} in {rec['seconds']:.0f} s", file=sys.stderr, flush=True)
        records.append(rec)
    doc = write_outputs(records, ns.out, header)
    return {"rows": doc["rows"], "failed": doc["failed"], "files": doc["files"]}


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        rest = sys.argv[4:]
        sys.exit(_child(sys.argv[2], sys.argv[3], rest[1:] if rest[:1] == ["--"] else rest))
    print("usage: avatarjax bench all [--quick] [--out bench.json]", file=sys.stderr)
    sys.exit(2)
