"""PNG plots of metrics.jsonl and of evaluation tables (avatarjax/train/plots.py)."""

import json

import numpy as np
import pytest

from avatarjax.errors import DataError
from avatarjax.train import plots


def _write_metrics(workdir, rows, tail=""):
    workdir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (workdir / "metrics.jsonl").write_text(text)


def _png(path):
    from matplotlib import image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return image.imread(path)


def _rows():
    rows = []
    for step in range(10, 110, 10):
        rows.append({"step": step, "loss": 2.0 / step, "flow_loss": 1.5 / step, "grad_norm": 1.0, "lr": 1e-3,
                     "steps_per_sec": 3.0, "tflops_per_device": 0.01, "mfu": 0.05, "data_wait_frac": 0.1,
                     "kto/reward_gap": step * 0.01, "kto/kl": 0.5})
        if step % 50 == 0:
            rows.append({"step": step, "eval_loss": 3.0 / step, "eval_flow_loss": 2.0 / step})
    return rows


def test_plot_metrics_writes_one_png_per_group(tmp_path):
    _write_metrics(tmp_path, _rows(), tail='{"step": 110, "loss": 0.0')  # a torn last line is skipped
    written = plots.plot_metrics(tmp_path)
    assert set(written) == {"loss", "optimizer", "speed", "kto", "metrics"}
    for group, path in written.items():
        assert path == str(tmp_path / "plots" / f"{group}.png")
        img = _png(tmp_path / "plots" / f"{group}.png")
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert np.ptp(img[..., :3]) > 0.5  # something was drawn
    assert not list((tmp_path / "plots").glob(".*"))  # atomic writes leave no temporary files


def test_series_and_groups_pair_train_with_eval():
    series = plots.metric_series(_rows() + [{"step": 120, "loss": "nan", "note": "text"}])
    assert series["eval_loss"] == ([50, 100], [3.0 / 50, 3.0 / 100])
    assert np.isnan(series["loss"][1][-1]) and series["loss"][0][-1] == 120
    assert "note" not in series  # not a scalar
    groups = plots.metric_groups(series)
    assert list(groups) == ["loss", "optimizer", "speed", "metrics", "kto"]
    assert groups["loss"] == ["loss"] and groups["metrics"] == ["flow_loss"]
    assert groups["kto"] == ["kto/kl", "kto/reward_gap"]


def test_plot_metrics_errors_and_empty_runs(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl' does not exist"):
        plots.plot_metrics(tmp_path / "nowhere")
    _write_metrics(tmp_path / "empty", [])
    assert plots.plot_metrics(tmp_path / "empty") == {}
    _write_metrics(tmp_path / "bad", _rows()[:2], tail="not json\n" + json.dumps(_rows()[3]) + "\n")
    with pytest.raises(DataError, match="line 3 is not JSON"):
        plots.plot_metrics(tmp_path / "bad")


def test_plot_metrics_on_a_real_training_run(tmp_path):
    from avatarjax.config import load_config
    from avatarjax.train.loop import Trainer
    from tests.conftest import REPO, make_mesh

    cfg = load_config(REPO / "configs/lm/synthface_tiny.py",
                      ["--config.train.steps=4", "--config.log.every=1", "--config.eval.every=2",
                       "--config.eval.batches=1", "--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false",
                       "--config.checkpoint.every=100", "--config.mesh.data=1"])
    Trainer(cfg, tmp_path, mesh=make_mesh(cfg, 1)).run()
    written = plots.plot_metrics(tmp_path)
    assert {"loss", "optimizer", "speed"} <= set(written)
    rows = plots.read_metrics(tmp_path / "metrics.jsonl")
    assert any("eval_loss" in r for r in rows)
    _png(tmp_path / "plots" / "loss.png")


def test_plot_table(tmp_path):
    report = {"dynamic": {"au_f1": 0.317, "au_temp": 0.612, "eye_lmd": 0.137},
              "static": {"au_f1": 0.308, "au_temp": 0.608, "eye_lmd": 0.145, "extra": {"wall_s": 1.5}},
              "clips": 8, "settings": ["dynamic", "static"], "reader": "outputs/face_reader"}
    rows, columns, cells = plots.table_rows(report)
    assert rows == ["dynamic", "static", "summary"]
    assert columns == ["au_f1", "au_temp", "eye_lmd", "extra.wall_s", "clips", "reader"]
    assert cells[0] == ["0.317", "0.612", "0.137", "", "", ""]
    assert cells[2][columns.index("clips")] == "8" and cells[1][columns.index("extra.wall_s")] == "1.5"
    path = plots.plot_table(report, tmp_path / "eval" / "table.png", title="CogPortrait eval")
    assert path == str(tmp_path / "eval" / "table.png")
    assert _png(tmp_path / "eval" / "table.png").shape[1] > 200
    with pytest.raises(DataError, match="non-empty dict"):
        plots.plot_table({}, tmp_path / "x.png")
    with pytest.raises(DataError, match="no scalar metrics"):
        plots.plot_table({"a": [1, 2]}, tmp_path / "x.png")
