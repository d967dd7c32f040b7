"""The Body of Her duplex agent end to end: real tokenizers (a random-init DAC with hop 640 and video tokenizer),
token records and the LM's training rows from them, the generator API, the CLI and bad input; and the stand-in
path with the turn-taking evaluation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from avatarjax.config import load_config
from avatarjax.errors import ConfigError, DataError
from avatarjax.pipelines import duplex_agent as da
from avatarjax.train.export import fresh_model
from tests.conftest import REPO, xla_flags

QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]
DUPLEX_TINY = REPO / "configs" / "speechvideo" / "duplex_tiny.py"


def _build(cfg):
    """A random model of ``cfg`` (N(0, 0.05) weights from numpy: no per-shape initialiser programs to compile)."""
    return fresh_model(cfg, 0, init="normal")


def _records(world_seed: int = 0):
    """Four short synthface clip records (two talking, two listening; 40 frames each: one compiled shape)."""
    from avatarjax.data.synthface.clips import generate_clip
    from avatarjax.data.synthface.identity import sample_identity
    from avatarjax.data.synthface.records import pcm16

    for n, kind in enumerate(("talking", "listening", "talking", "listening")):
        clip = generate_clip(100 + n, identity=n + 1, kind=kind, num_frames=40)
        yield {"clip": np.int32(n), "state": clip.state, "audio": pcm16(clip.audio), "identity": np.int32(n + 1),
               "identity_vector": sample_identity(n + 1, world_seed).to_vector().astype(np.float32),
               "audio_flag": np.int32(clip.audio_flag), "kind": kind.encode(), "label": clip.label.encode(),
               "split": b"train"}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Exports of a random-init DAC (16 kHz, hop 640), video tokenizer (32 px, K = 4 x 4) and speech-video LM
    (configs/speechvideo/duplex_tiny.py), and token records of four clips written by data.tokenize."""
    from avatarjax.data import tokenize as T
    from avatarjax.train.export import save_export

    root = tmp_path_factory.mktemp("duplex")
    dac_cfg = load_config(REPO / "configs" / "dac" / "synthface_tiny.py",
                          ["--config.model.encoder_rates=(8, 8, 10)", "--config.model.decoder_rates=(10, 8, 8)"])
    vt_cfg = load_config(REPO / "configs" / "video_tokenizer" / "synthface_tiny.py")
    save_export(_build(dac_cfg), dac_cfg, root / "dac")
    save_export(_build(vt_cfg), vt_cfg, root / "vtok")
    encode_video, _, chunk = T.video_encoder(root / "vtok", [])
    encode_audio, audio_info = T.dac_audio_encoder(root / "dac")
    T.tokenize_split(_records(), T.record_path(root / "tokens", "train"), encode_video, 32, encode_audio)
    meta = {"video_tokenizer": str(root / "vtok"), "latent_shape_per_frame": [4, 4], "video_fps": 25,
            "chunk_frames": chunk, "audio_codec": audio_info, "clips": {"train": 4}}
    (root / "tokens" / T.META_FILE).write_text(json.dumps(meta))
    paths = [f"--config.data.tokens={root / 'tokens'}", f"--config.data.dac={root / 'dac'}",
             f"--config.data.video_tokenizer={root / 'vtok'}"]
    cfg = load_config(DUPLEX_TINY, [*paths, *QUIET, "--config.train.batch_size=2"])
    save_export(_build(cfg), cfg, root / "lm")
    return {"root": root, "cfg": cfg, "lm": root / "lm", "overrides": paths}


def test_stack_codes_round_trip_and_frame_tiling():
    codes = np.arange(2 * 12).reshape(2, 12)
    stacked = da.stack_codes(codes, 3)
    assert stacked.shape == (4, 6) and list(stacked[1]) == [3, 4, 5, 15, 16, 17]  # codebook-major per frame
    np.testing.assert_array_equal(da.unstack_codes(stacked, 2, 3), codes)
    assert da.codes_per_frame(16000, 640) == 1 and da.codes_per_frame(16000, 320) == 2
    with pytest.raises(ConfigError, match="does not tile"):
        da.codes_per_frame(16000, 256)


def test_record_rows_pair_the_agent_with_a_silent_or_talking_human(real):
    from avatarjax.train.objectives.speech_video import SPEECH_VIDEO_TASK

    cfg = real["cfg"]
    batch = next(iter(SPEECH_VIDEO_TASK.dataset(cfg, "train")))
    silence = da.silence_codes(cfg.data.dac)
    seg = batch["segment_ids"]
    assert batch["agent_codes"].shape == (2, cfg.data.frames, 2) and batch["agent_video"].shape[-2:] == (4, 4)
    assert (seg > 0).any() and not batch["human_video_mask"].any()
    real_frames = seg > 0
    quiet_agent = (batch["agent_codes"] == silence).all(-1)
    quiet_human = (batch["human_codes"] == silence).all(-1)
    assert (quiet_agent | quiet_human)[real_frames].all()  # one party per window is the record's audio
    assert batch["agent_codes"].max() < cfg.model.net.codebook_size


def test_generator_fixed_shapes_no_recompilation(real):
    agent = da.DuplexAgent(real["lm"], max_frames=10)
    assert agent.real and agent.sample_rate == 16000 and agent.samples_per_frame == 640
    rng = np.random.default_rng(0)
    frames = 10
    audio = (0.1 * rng.standard_normal((frames, 640))).astype(np.float32)
    video = [rng.integers(0, 255, (40, 48, 3), np.uint8) for _ in range(frames)]  # wrong size: resized
    items = list(agent.stream(audio, video, prompt="say hello", identity=3))
    assert [it.index for it in items] == list(range(frames))
    q = agent.lm.num_codebooks
    for it in items:
        assert it.video.shape == (32, 32, 3) and it.video.dtype == np.uint8
        assert it.video_tokens.shape == (4, 4) and it.audio.shape == (640,) and it.audio.dtype == np.float32
        assert it.audio_frame == it.index - (q - 1) and (it.codes is None) == (it.audio_frame < 0)
        assert it.latency_s > 0
    assert any("prompt ignored" in n for n in agent.notes)
    first = dict(agent.compilations)
    assert set(first.values()) == {1}, first  # LM step, DAC encode/decode, video encode/decode: one each
    list(agent.stream(audio[:6], video[:6], seed=1))
    assert agent.compilations == first
    with pytest.raises(DataError, match="uint8"):
        list(agent.stream(audio[:3], [np.zeros((32, 32, 3), np.float32)] * 3))


def _avatarjax(*args):
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    return subprocess.run([sys.executable, "-m", "avatarjax.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)


def test_cli_writes_playable_mp4_with_audio_and_latency_json(real, tmp_path):
    from avatarjax import media

    t = 0.8  # seconds: 20 frames
    wav = (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(22050 * t)) / 22050)).astype(np.float32)
    media.write_audio(tmp_path / "human.wav", wav, 22050)  # wrong rate: resampled to the DAC's 16 kHz
    frames = np.random.default_rng(0).integers(0, 255, (15, 48, 64, 3), np.uint8)
    media.write_video(tmp_path / "human.mp4", frames, fps=30)  # other size and fps: adapted
    out = tmp_path / "agent.mp4"
    res = _avatarjax("sample", "--config", str(DUPLEX_TINY), f"--config.weights={real['lm']}", *real["overrides"],
                     "--human-audio", str(tmp_path / "human.wav"), "--human-video", str(tmp_path / "human.mp4"),
                     "--prompt", "tell me about your day", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout)
    video, fps, audio, rate = media.read_video(out)
    assert video.shape == (20, 32, 32, 3) and fps == pytest.approx(25) and rate == 16000
    assert audio is not None and abs(audio.shape[0] - 20 * 640) <= 1024
    report = json.loads((tmp_path / "agent.json").read_text())
    lat = report["latency"]
    assert lat["median_ms"] > 0 and lat["p95_ms"] >= lat["median_ms"] and lat["real_time_factor"] > 0
    assert len(report["latency_ms_per_frame"]) == 20 and set(result["compilations"].values()) == {1}
    notes = " ".join(result["notes"])
    assert "22050 Hz" in notes and "30 to 25 fps" in notes and "resized to 32x32" in notes


@pytest.mark.parametrize("flag,path,message", [
    ("--human-audio", "missing.wav", "does not exist"),
    ("--human-video", "not_a_video.mp4", "cannot be decoded"),
])
def test_bad_input_is_one_clear_line(real, tmp_path, capsys, flag, path, message):
    from avatarjax import media
    from avatarjax.cli import main

    media.write_audio(tmp_path / "human.wav", np.zeros(3200, np.float32), 16000)
    (tmp_path / "not_a_video.mp4").write_bytes(b"this is not an mp4")
    args = {"--human-audio": str(tmp_path / "human.wav"), flag: str(tmp_path / path)}
    argv = ["sample", "--config", str(DUPLEX_TINY), f"--config.weights={real['lm']}", *real["overrides"],
            "--out", str(tmp_path / "a.mp4")]
    for k, v in args.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_stand_in_agent_and_turn_taking_eval():
    from avatarjax.data.synthface.dyadic import generate_session

    cfg = load_config(REPO / "configs" / "speechvideo" / "synthface_tiny.py", ["--config.sample.frames=16"])
    model = _build(cfg)
    agent = da.DuplexAgent((model, cfg))
    assert not agent.real and "cannot be decoded" in agent.notes[0]
    session = generate_session(7, 3, 5, 16)
    items = list(agent.stream(session.speaker.audio.reshape(16, 640), list(session.speaker.state)))
    assert len(items) == 16 and all(it.video is None and it.face_state.shape == (24,) for it in items)
    assert all(not it.audio.any() for it in items) and agent.compilations == {"lm_step": 1}
    # the face state recovered from stand-in tokens is the one projected (channels 0..20, where in range)
    from avatarjax.train.objectives.speech_video import stand_in_video_tokens

    state = session.speaker.state[5]
    back = agent.tokenizers.face_state(stand_in_video_tokens(state[None], 2, 8)[0])
    assert back.shape == (24,)
    out = da.evaluate_turn_taking(model, cfg, ["--sessions", "1", "--frames", "16"], agent=agent)
    tt = out["turn_taking"]
    assert tt["data"]["quiet_while_human_speaks"] == 1.0 and tt["no_context"]["score"] == 0.5
    for row in tt.values():
        assert 0.0 <= row["quiet_while_human_speaks"] <= 1.0 and 0.0 <= row["talks_when_human_silent"] <= 1.0
    assert out["agent_frames_scored"] == 16 - (cfg.model.net.num_codebooks - 1)
