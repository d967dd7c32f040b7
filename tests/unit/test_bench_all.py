"""``avatarjax bench all``: aggregation of per-model results into rows, the markdown table, the plot, failure
recording, and one real benchmark end to end in --quick mode."""

import json

import numpy as np
import pytest

from avatarjax.bench import all as bench_all
from avatarjax.bench import harness


def _records():
    ok = {"name": "posnet", "argv": ["--quick"], "seconds": 3.0, "result": {"summary": [
        harness.row("posnet", train_ms_ours=2.0, train_ms_ref=5.0, reference="torch PosNet", ratio=2.5,
                    tflops=0.01, mfu=0.05, memory_gib=0.02, sampling_speedup=3.0, note="AdamW step")]}}
    two = {"name": "speechvideo", "argv": [], "seconds": 9.0, "result": {"summary": [
        harness.row("speechvideo", train_ms_ours=80.0, tflops=0.002, mfu=0.01, memory_gib=0.5),
        harness.row("speechvideo backbone", train_ms_ours=4.0, train_ms_ref=2.0, reference="Qwen2Model",
                    ratio=0.5, mfu=0.002),
        harness.row("encoder bert", status="failed", note="ImportError: no transformers")]}}
    bare = {"name": "cpu_peak", "argv": [], "seconds": 1.0, "result": {"tflops": 0.2}}
    failed = {"name": "cogportrait", "argv": ["--quick"], "seconds": 2.0,
              "error": "killed (out of memory?): MemoryError", "stderr_tail": "MemoryError"}
    return [ok, two, bare, failed]


def test_rows_keep_every_benchmark_and_mark_failures():
    rows = bench_all.rows_of(_records())
    by_model = {r["model"]: r for r in rows}
    assert [r["model"] for r in rows] == ["posnet", "speechvideo", "speechvideo backbone", "encoder bert",
                                          "cpu_peak", "cogportrait"]
    assert by_model["posnet"]["status"] == "ok" and by_model["posnet"]["ratio"] == 2.5
    assert by_model["speechvideo backbone"]["bench"] == "speechvideo"
    assert by_model["encoder bert"]["status"] == "failed"
    assert by_model["cpu_peak"]["status"] == "ok" and "no summary" in by_model["cpu_peak"]["note"]
    assert by_model["cogportrait"]["status"] == "failed" and "out of memory" in by_model["cogportrait"]["note"]
    assert all(set(harness.ROW_KEYS) <= set(r) for r in rows)


def test_markdown_table_formats_numbers_and_missing_values():
    table = bench_all.markdown_table(bench_all.rows_of(_records()), {"device": "cpu"})
    lines = table.splitlines()
    assert lines[0] == "- device: cpu"
    header = next(i for i, line in enumerate(lines) if line.startswith("| model"))
    assert len(lines) - header - 2 == 6  # one line per row
    posnet = next(line for line in lines if line.startswith("| posnet "))
    cells = [c.strip() for c in posnet.strip("|").split("|")]
    assert cells[:10] == ["posnet", "2", "5", "torch PosNet", "2.5", "0.01", "5.00%", "0.02", "3", "ok"]
    failed = next(line for line in lines if line.startswith("| cogportrait "))
    assert "| - | - |" in failed and "failed" in failed


def test_write_outputs_json_markdown_and_png(tmp_path):
    doc = bench_all.write_outputs(_records(), tmp_path / "bench.json", {"device": "cpu", "quick": True})
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["failed"] == ["cogportrait"] and len(data["rows"]) == 6
    assert data["benchmarks"][3]["stderr_tail"] == "MemoryError"
    assert "| posnet |" in (tmp_path / "bench.md").read_text()
    png = tmp_path / "bench.png"
    assert doc["files"]["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_row_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown summary keys"):
        harness.row("x", speedup=2.0)


def test_scan_vs_loop_and_median_seconds():
    calls = []
    assert harness.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5
    out = harness.scan_vs_loop(lambda: np.ones(3), lambda: np.ones(3) * 1.5, repeats=2)
    assert out["max_abs_diff_scan_vs_loop"] == 0.5 and out["speedup"] > 0


def test_a_crashing_benchmark_is_recorded_not_raised(tmp_path):
    spec = bench_all.Spec("broken", "no_such_benchmark", (), ())
    rec = bench_all.run_one(spec, quick=True, timeout=120)
    assert rec["name"] == "broken" and "exit status 1" in rec["error"]
    assert "no_such_benchmark" in rec["stderr_tail"]


def test_error_line_skips_jax_notes_after_the_exception():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: bad shape (3,)",
             "--------------------", "For simplicity, JAX has removed its internal frames: see above."]
    assert bench_all._exception_line(lines) == "ValueError: bad shape (3,)"
    assert bench_all._exception_line(["just text"]) == "just text"
    assert bench_all._exception_line([]) == ""


def test_quick_posnet_end_to_end(tmp_path):
    """The cheapest real model benchmark through the whole path: subprocess, summary rows, files."""
    out = bench_all.bench_all(["--quick", "--only", "posnet", "--out", str(tmp_path / "b.json")])
    assert out["failed"] == []
    (posnet,) = out["rows"]
    assert posnet["model"] == "posnet" and posnet["status"] == "ok"
    assert posnet["train_ms_ours"] > 0 and posnet["train_ms_ref"] > 0 and posnet["ratio"] > 0
    assert 0 < posnet["mfu"] and posnet["memory_gib"] > 0 and posnet["sampling_speedup"] > 0
    assert (tmp_path / "b.md").is_file() and (tmp_path / "b.png").is_file()
