"""CogPortrait Stage 2 end to end on tiny configs: Wan VAE -> DiT flow-matching training -> sampling with dynamic
CFG from ground-truth keypoints and from a Stage 1 label; plus the task's condition handling."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.e2e.test_cli import QUIET, avatarjax

REPO = Path(__file__).resolve().parents[2]
VAE_TINY = str(REPO / "configs" / "wan_vae" / "synthface_tiny.py")
DIT_TINY = str(REPO / "configs" / "cogportrait" / "synthface_tiny.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cog")
    vae, dit = str(root / "vae"), str(root / "dit")
    out = avatarjax("train", "--config", VAE_TINY, "--workdir", vae, "--config.train.steps=1", *QUIET)
    assert out.returncode == 0, out.stderr[-2000:]
    out = avatarjax("train", "--config", DIT_TINY, "--workdir", dit, f"--config.data.vae={vae}",
                    "--config.model.net.in_channels=4", "--config.model.net.out_channels=4",
                    "--config.model.net.pose_channels=4", "--config.train.steps=2", *QUIET)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (Path(vae) / "wan_latent_stats.json").exists()  # measured once, reused by sampling
    return root, dit


def test_train_and_sample_from_keypoints_and_label(trained):
    root, dit = trained
    out = avatarjax("sample", "--checkpoint", dit, "--out", str(root / "gt.mp4"), "--", "--guidance", "static")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["frames"] == 9 and Path(result["video"]).stat().st_size > 0
    # The form: the variant's config names the model (weights), task options among the command's own, and
    # the video is exactly as long as the audio, one frame per 40 ms (14 frames = 0.56 s at 25 fps, generated in
    # overlapping windows of the training clip length).
    import soundfile

    wav = root / "speech.wav"
    soundfile.write(wav, np.random.default_rng(0).normal(size=14 * 640).astype(np.float32) * 0.1, 16000)
    out = avatarjax("sample", "--config", DIT_TINY, f"--config.weights={dit}", f"--config.data.vae={root / 'vae'}",
                    "--config.model.net.in_channels=4", "--config.model.net.out_channels=4",
                    "--config.model.net.pose_channels=4", "--label", "drowsiness", "--instruction",
                    "look slightly left, then lower the head", "--audio", str(wav), "--out", str(root / "drowsy.mp4"))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["frames"] == 14 and result["guidance"] == "dynamic" and result["windows"] > 1
    plan = json.loads(Path(result["plan"]).read_text())
    assert "critic" in plan
    assert np.load(root / "drowsy.keypoints.npy").shape == (14, 62, 2)
    assert np.asarray(json.loads(Path(result["keypoints"]).read_text())["keypoints"]).shape == (14, 62, 2)


def test_sample_without_checkpoint_or_weights_fails_clearly():
    out = avatarjax("sample", "--config", DIT_TINY, "--label", "drowsiness")
    assert out.returncode == 2 and "sets no weights" in out.stderr and "--config.weights" in out.stderr


def test_bad_window_and_missing_vae_fail_clearly(tmp_path):
    out = avatarjax("train", "--config", DIT_TINY, "--workdir", str(tmp_path / "w"), "--config.data.synthface.window=8",
                    "--config.data.vae=x", *QUIET)
    assert out.returncode == 2 and "1 + 4k frames" in out.stderr
    out = avatarjax("train", "--config", DIT_TINY, "--workdir", str(tmp_path / "w2"), *QUIET)
    assert out.returncode == 2 and "data.vae is empty" in out.stderr


def test_condition_dropout_gives_the_null_condition():
    from avatarjax.train.objectives import cog_portrait as task

    rng = np.random.default_rng(0)
    batch = {"text_tokens": jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32),
             "text_mask": jnp.ones((2, 4), bool), "audio": jnp.asarray(rng.normal(size=(2, 5 * 640)) * 0.1),
             "pose": jnp.asarray(rng.normal(size=(2, 2, 4, 4, 3)), jnp.float32)}
    cond = task.conditions(batch, jnp.array([True, False]))
    null = task.null_conditions(task.conditions(batch))
    for name in ("text", "audio", "pose"):
        np.testing.assert_allclose(cond[name][1], null[name][1])
        assert not np.allclose(cond[name][0], null[name][0])
    np.testing.assert_array_equal(cond["text_mask"][1], null["text_mask"][1])
    assert jax.tree.map(jnp.shape, null) == jax.tree.map(jnp.shape, task.conditions(batch))
