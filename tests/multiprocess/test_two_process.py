"""A 2-process jax.distributed run on CPU (via launch/local.sh) trains and matches the single-process losses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, TINY_LM, fixed_corpus, make_mesh, tiny_config, xla_flags

STEPS = 4


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path):
    from avatarjax.train.loop import Trainer

    common = [f"--config.train.steps={STEPS}", "--config.log.every=1", "--config.checkpoint.every=2",
              "--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false",
              f"--config.data.path={fixed_corpus()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARJAX_")}
    env["XLA_FLAGS"] = xla_flags(1)
    env["AVATARJAX_BIN"] = str(REPO / ".venv" / "bin" / "avatarjax") if (REPO / ".venv").exists() else "avatarjax"
    if not (REPO / ".venv").exists():
        env["AVATARJAX_BIN"] = os.path.join(os.path.dirname(sys.executable), "avatarjax")
    workdir = tmp_path / "two"
    proc = subprocess.run(["bash", str(REPO / "launch" / "local.sh"), "2", "train", "--config", TINY_LM,
                           "--workdir", str(workdir), "--config.mesh.data=2", *common],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[p0]" in proc.stdout and "[p1]" in proc.stdout
    two = _losses(workdir)

    cfg = tiny_config(*common)
    single = Trainer(cfg, tmp_path / "one", mesh=make_mesh(cfg, 1)).run().losses
    steps = list(range(1, STEPS + 1))
    np.testing.assert_allclose([two[s] for s in steps], [single[s] for s in steps], rtol=1e-5)
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()
