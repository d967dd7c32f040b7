"""Pre-computed features written beside the clips (``--config.features``): a fake MEAD build with a tiny random
wav2vec2 (transformers ``save_pretrained``), motion VAE (a training workdir saved by our checkpoint manager), DAC
and video tokenizer (exports; all from the synthface_tiny configs), read back through the grain loader with shapes
and frame alignment checked; bad checkpoints fail before anything is written."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avatarjax import media
from avatarjax.config import load_config
from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.synthface.records import decode_frames
from avatarjax.data.tfds import commands, features, loader
from avatarjax.data.tfds.mead import MeadOptions
from avatarjax.errors import ConfigError
from avatarjax.train.export import fresh_model
from tests.conftest import REPO
from tests.unit.test_tfds_builders import _gradient_frames, _speech, _write_m4a

PREP = PreprocessConfig(crop="center", size=32, image_format="png", segment_frames=16)
FRAMES = 25  # 30 source frames at 30 fps


def _random_model(cfg):
    """A random model of ``cfg`` (N(0, 0.05) weights from numpy: no per-shape initialiser programs to compile)."""
    return fresh_model(cfg, 0, init="normal")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from avatarjax.train.export import save_export

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    hf = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)  # XLSR-style
    Wav2Vec2Model(hf).eval().save_pretrained(root / "w2v", safe_serialization=True)
    paths = {"wav2vec2": root / "w2v"}
    for task in ("motion_vae", "dac", "video_tokenizer"):
        cfg = load_config(REPO / "configs" / task / "synthface_tiny.py")
        if task == "motion_vae":  # a training workdir, as `avatarjax train` leaves it
            _save_workdir(_random_model(cfg), cfg, root / task)
        else:  # exports
            save_export(_random_model(cfg), cfg, root / task)
        paths[task] = root / task
    return paths


def _save_workdir(model, cfg, workdir):
    """``workdir/config.json`` and step 0 of ``workdir/checkpoints`` written by our checkpoint manager."""
    from avatarjax.checkpoint.manager import CheckpointManager
    from avatarjax.train import optim
    from avatarjax.train.state import TrainState

    tx, _ = optim.make_optimizer(cfg.optim, cfg.train.steps)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema_decay > 0 else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params), ema=ema)
    manager = CheckpointManager(workdir / "checkpoints", async_save=False)
    manager.save(0, state)
    manager.close()
    (workdir / "config.json").write_text(cfg.to_json())


def _spec(paths: dict) -> str:
    items = [f"{kind}:{path}" for kind, path in paths.items()]
    return ",".join(items + [f"wav2vec2_hidden:{paths['wav2vec2']}"])


def write_raw(root):
    take = root / "M003" / "video" / "front" / "happy" / "level_2" / "001.mp4"
    take.parent.mkdir(parents=True)
    media.write_video(take, _gradient_frames(30, 32, 48, 0), fps=30)
    _write_m4a(root / "M003" / "audio" / "happy" / "level_2" / "001.m4a", _speech(1.2, 48_000, 0), 48_000)


def test_mead_build_with_features_read_back_aligned(tmp_path, checkpoints):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw(raw)
    opts = MeadOptions(prep=PREP, eval_identities=("W009",), features=_spec(checkpoints))
    result = commands.build_dataset("mead", manual_dir=raw, data_dir=out, options=opts, workers=1)
    assert result.records == {"train": 2}  # 25 frames -> segments of 16 and 9
    assert result.directory.parent.name.startswith("center32-w2v_w2vh_mvae_dac_vtok-")

    src = loader.source(loader.ClipDataConfig(dataset="mead", data_dir=str(out)), "train")
    records = sorted((src[i] for i in range(len(src))), key=lambda r: int(r["start"]))
    assert [len(r["frames"]) for r in records] == [16, 9]
    mvae = features.extractor("motion_vae", str(checkpoints["motion_vae"]))
    dac = features.extractor("dac", str(checkpoints["dac"]))
    for r in records:
        t = len(r["frames"])
        assert r["wav2vec2"].shape == (2 * t, 8) and r["wav2vec2"].dtype == np.float32  # 50 Hz, 8 CNN channels
        assert r["wav2vec2_hidden"].shape == (2 * t, 16)
        assert r["motion_latent"].shape == (t, 12)  # 32 px: a 2x2x3 motion latent per frame
        assert r["appearance_latent"].shape == (8, 8, 3)
        assert r["dac_codes"].shape == (20 * t, 2) and float(r["dac_frame_rate"]) == 500.0  # 16 kHz, hop 32
        assert r["video_latents"].shape == (t, 4, 4)
        assert np.isfinite(r["wav2vec2"]).all() and r["dac_codes"].max() < 64
        # frame alignment: the latents are those of this segment's own stored frames, in order
        again = mvae(lambda: decode_frames(r["frames"]), None, {})
        np.testing.assert_allclose(r["motion_latent"], again["motion_latent"], atol=1e-5)
    # the hidden states of the padded, masked run are those of the segment's audio alone
    from avatarjax.encoders import wav2vec2

    model, _ = wav2vec2.from_pretrained(checkpoints["wav2vec2"])
    values, _ = wav2vec2.prepare_audio(records[1]["audio"] / 32767.0, 16_000)
    alone = np.asarray(wav2vec2.jit_forward(model)(values).last_hidden_state[0])
    np.testing.assert_allclose(records[1]["wav2vec2_hidden"][:len(alone)], alone, atol=1e-4)
    np.testing.assert_array_equal(records[0]["appearance_latent"], records[1]["appearance_latent"])  # the clip's
    np.testing.assert_array_equal(  # the codes of the segment's own audio
        records[1]["dac_codes"], dac(None, records[1]["audio"] / 32767.0, {})["dac_codes"])
    assert not np.array_equal(records[0]["motion_latent"][:9], records[1]["motion_latent"])

    # the grain loader cuts every feature to its window (rows 2t, 2t+1 of wav2vec2 and 20 codes per frame)
    cfg = loader.ClipDataConfig(dataset="mead", data_dir=str(out), window=8, frame_size=16)
    batch = next(iter(loader.dataset(cfg, split="train", batch_size=2, seed=0)))
    assert batch["motion_latent"].shape == (2, 8, 12) and batch["wav2vec2"].shape == (2, 16, 8)
    assert batch["dac_codes"].shape == (2, 160, 2) and batch["video_latents"].shape == (2, 8, 4, 4)
    assert batch["wav2vec2_hidden"].shape == (2, 16, 16)
    assert batch["appearance_latent"].shape == (2, 8, 8, 3)
    for i, start in enumerate(batch["start"].tolist()):
        r = records[0] if start < 16 else records[1]
        s = start - int(r["start"])
        n = int(batch["mask"][i].sum())
        np.testing.assert_array_equal(batch["motion_latent"][i, :n], r["motion_latent"][s:s + n])
        np.testing.assert_array_equal(batch["wav2vec2"][i, :2 * n], r["wav2vec2"][2 * s:2 * (s + n)])
        np.testing.assert_array_equal(batch["dac_codes"][i, :20 * n], r["dac_codes"][20 * s:20 * (s + n)])

    # the build name follows the checkpoints: files written beside them later do not count, new weights do
    name = lambda: commands.builder_and_config("mead", opts)[1].name  # noqa: E731
    assert name() == result.directory.parent.name
    (checkpoints["motion_vae"] / "motion_latent_stats.json").write_text("{}")
    assert name() == result.directory.parent.name
    weights = checkpoints["dac"] / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert name() != result.directory.parent.name


def test_bad_checkpoints_fail_before_anything_is_written(tmp_path, checkpoints):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_raw(raw)
    wrong = MeadOptions(prep=PREP, features=f"motion_vae:{checkpoints['dac']}")  # a DAC where the VAE should be
    with pytest.raises(ConfigError) as err:
        commands.build_dataset("mead", manual_dir=raw, data_dir=out, options=wrong, workers=1)
    message = str(err.value)
    assert f"the motion_vae checkpoint '{checkpoints['dac']}' cannot be used" in message
    assert "holds a 'dac' model" in message and "fix: pass the --workdir of a motion VAE training run" in message
    missing = MeadOptions(prep=PREP, features=f"wav2vec2:{tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="wav2vec2 checkpoint '.*nowhere' does not exist"):
        commands.build_dataset("mead", manual_dir=raw, data_dir=out, options=missing, workers=1)
    with pytest.raises(ConfigError, match="unknown feature 'dac2'"):
        features.parse("dac2:x")
    assert not out.exists()
