"""The avatarjax command as a user runs it: train / eval / sample / profile / bench, SIGTERM, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_LM, xla_flags

QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]


def avatarjax(*args, timeout=600, **kwargs):
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    return subprocess.run([sys.executable, "-m", "avatarjax.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def test_train_eval_sample_profile(tmp_path):
    work = str(tmp_path / "w")
    # plots on (the default): the loss curve PNG lands beside metrics.jsonl
    out = avatarjax("train", "--config", TINY_LM, "--workdir", work, "--config.train.steps=4", "--config.log.every=1",
                    *QUIET[:2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train done at step 4" in out.stdout
    assert (Path(work) / "checkpoints" / "4").is_dir()
    assert (Path(work) / "plots" / "loss.png").stat().st_size > 0
    logged = (Path(work) / "commands.log").read_text().splitlines()  # the folder says what made it
    assert len(logged) == 1 and f"avatarjax train --config {TINY_LM} --workdir {work}" in logged[0]
    ev = avatarjax("eval", "--config", TINY_LM, "--workdir", work, "--batches", "2", "--plot", str(tmp_path / "r.png"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["step"] == 4 and (tmp_path / "r.png").stat().st_size > 0
    # sample needs no --config: the run's config.json is used
    sample = avatarjax("sample", "--workdir", work, "--", "--prompt", "import ", "--tokens", "16")
    assert sample.returncode == 0, sample.stderr[-2000:]
    result = json.loads(sample.stdout)
    assert Path(result["output"]).read_text().startswith("import ")
    prof = avatarjax("profile", "--config", TINY_LM, "--steps", "2")
    assert prof.returncode == 0, prof.stderr[-2000:]
    report = json.loads(prof.stdout)
    assert report["params"] > 0 and report["step_s_median"] > 0 and "peak_estimate_gib" in report["memory_per_device"]


def test_sigterm_saves_and_restart_resumes(tmp_path):
    work = tmp_path / "w"
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    proc = subprocess.Popen([sys.executable, "-m", "avatarjax.cli", "train", "--config", TINY_LM, "--workdir",
                             str(work), "--config.train.steps=100000", "--config.checkpoint.every=100000",
                             "--config.log.every=1", *QUIET], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("training never logged 5 steps")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "preempted" in stdout
    saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and saved[0] >= 5
    resumed = avatarjax("train", "--config", TINY_LM, "--workdir", str(work), f"--config.train.steps={saved[0] + 2}",
                        "--config.log.every=1", *QUIET)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [saved[0] + 1, saved[0] + 2]


@pytest.mark.parametrize("args, message", [
    (["train", "--config", TINY_LM, "--workdir", "{tmp}", "--config.trian.steps=3"],
     "error: unknown config key 'trian.steps': the nearest valid key is 'train.steps'"),
    (["train", "--config", "configs/nope.py", "--workdir", "{tmp}"], "error: config file 'configs/nope.py' does not exist"),
    (["train", "--config", TINY_LM, "--workdir", "{tmp}", "--config.train.batch_size=7"],
     "error: train.batch_size=7 does not divide"),
    (["eval", "--config", TINY_LM, "--workdir", "{tmp}"], "error: no checkpoint in"),
    (["bench", "nope"], "error: unknown benchmark 'nope'"),
    (["convert", "clip", "--from", "x"], "error: unknown converter 'clip'"),
    (["trian"], "error: unknown command 'trian': did you mean 'train'?"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path / "w")) for a in args]
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    out = subprocess.run([sys.executable, "-m", "avatarjax.cli", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_bench_trainer_runs(tmp_path):
    out = avatarjax("bench", "trainer", "--config", TINY_LM, "--steps", "4", "--warmup", "2", "--repeats", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["bare_step_ms"] > 0 and report["full_loop_step_ms"] > 0 and "overhead_ratio" in report


def test_output_dir_of_a_command(tmp_path):
    from avatarjax.cli import _output_dir

    (tmp_path / "run").mkdir()
    assert _output_dir(["train", "--config", "c.py", "--workdir", str(tmp_path / "run")]) == tmp_path / "run"
    assert _output_dir(["sample", "--out=" + str(tmp_path / "a" / "x.mp4"), "--", "--out", "y"]) == tmp_path / "a"
    assert _output_dir(["eval", "--checkpoint", "w", "--", "--out", "r.json"]) is None  # task options don't count
