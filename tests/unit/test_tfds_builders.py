"""tfds Beam builders on miniature fake raw datasets in the real layouts: MEAD, HDTF, REACT2024 (in-process
DirectRunner, one shared build per builder), synthface on 2 multi_processing workers, read back through grain;
malformed raw data gives one error listing every problem and leaves no output behind."""

import json

import av
import grain
import numpy as np
import pytest

from avatarjax import media
from avatarjax.data.preprocess import video as video_lib
from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.synthface.records import decode_frames
from avatarjax.data.tfds import commands
from avatarjax.errors import DataError


# ------------------------------------------------------------------------------------------------ fake media
def _speech(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.1 * envelope * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(t.size))).astype(np.float32)


def _write_m4a(path, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, wave.size, 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _face_frames(identity: int, num: int, size: int) -> np.ndarray:
    """Synthface frames with the head drifting sideways (a face the skin detector finds)."""
    from avatarjax.data.synthface import identity as identity_lib, render, schema

    state = np.zeros((num, schema.NUM_CHANNELS), np.float32)
    state[:, schema.INDEX["depth"]] = -0.3
    state[:, schema.INDEX["tx"]] = np.linspace(-0.03, 0.03, num)
    return render.render_frames(identity_lib.sample_identity(identity), state, size)


def _gradient_frames(num: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, height, width, 3)).astype(np.int32)
    shift = (np.arange(num) * 3)[:, None, None, None]
    return ((base + shift) % 256).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- fake datasets
def write_mead(root, identities=("M003", "W009"), takes=(("happy", 2, "001"), ("neutral", 1, "001"))):
    for n, ident in enumerate(identities):
        for emotion, level, take in takes:
            video = root / ident / "video" / "front" / emotion / f"level_{level}" / f"{take}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            media.write_video(video, _face_frames(n, 36, 128), fps=30)  # 1.2 s at MEAD's 30 fps
            _write_m4a(root / ident / "audio" / emotion / f"level_{level}" / f"{take}.m4a",
                       _speech(1.2, 48_000, n), 48_000)


def write_hdtf(root):
    meta = root / "HDTF_dataset"
    meta.mkdir(parents=True)
    # windows refer to 96-pixel-high frames (resolution.txt); the clips are 48 high, so they are halved
    (meta / "WDA_crop_wh.txt").write_text("BarackObama_0.mp4 20 40 4 40\nZoeLofgren_0.mp4 1 2 3 4\n")
    (meta / "WDA_resolution.txt").write_text("BarackObama.mp4 96\n")
    (meta / "RD_crop_wh.txt").write_text("AmyKlobuchar1_2.mp4 8 32 8 32\n")
    for name, seed in (("BarackObama_0", 0), ("AmyKlobuchar1_2", 1)):
        media.write_video(root / "clips" / f"{name}.mp4", _gradient_frames(40, 48, 64, seed), fps=25,
                          audio=_speech(1.6, 16_000, seed), sample_rate=16_000)


REACT_FRAMES = 751


def write_react_person(root, split, rel, seed, *, fps=25, frames=REACT_FRAMES, images=False):
    video = (root / split / "Video_files" / rel).with_suffix(".mp4")
    video.parent.mkdir(parents=True, exist_ok=True)
    if images:  # the README's layout: a folder <clip>/1.png ... 751.png
        folder = video.with_suffix("")
        folder.mkdir()
        for i, frame in enumerate(_gradient_frames(frames, 16, 16, seed), 1):
            media.write_image(folder / f"{i}.png", frame)
    else:
        media.write_video(video, _gradient_frames(frames, 16, 16, seed), fps=fps, crf=40)
    audio = (root / split / "Audio_files" / rel).with_suffix(".wav")
    audio.parent.mkdir(parents=True, exist_ok=True)
    import soundfile

    soundfile.write(audio, _speech(REACT_FRAMES / 25, 44_100, seed), 44_100)  # the challenge's 44.1 kHz
    rng = np.random.default_rng(seed)
    coeffs = (root / split / "3D_FV_files" / rel).with_suffix(".npy")
    coeffs.parent.mkdir(parents=True, exist_ok=True)
    np.save(coeffs, rng.standard_normal((REACT_FRAMES, 58)).astype(np.float32))
    emotion = (root / split / "Emotion" / rel).with_suffix(".csv")
    emotion.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([f"AU{i}" for i in range(15)] + ["valence", "arousal"] + [f"expr{i}" for i in range(8)])
    np.savetxt(emotion, rng.random((REACT_FRAMES, 25)), delimiter=",", header=header, comments="", fmt="%.4f")


REACT_PAIRS = {"train": ("NoXI/010_2016-03-25_Paris/Expert_video/1", "NoXI/010_2016-03-25_Paris/Novice_video/1"),
               "val": ("RECOLA/group-1/P25/2", "RECOLA/group-1/P26/2")}


def write_react(root, splits=("train",)):
    for n, split in enumerate(splits):
        speaker, listener = REACT_PAIRS[split]
        (root / f"{split}.csv").write_text(f",speaker_path,listener_path\n0,{speaker},{listener}\n")
        write_react_person(root, split, speaker, 2 * n)
        write_react_person(root, split, listener, 2 * n + 1, images=True)
    np.save(root / "neighbour_emotion_train.npy", np.array([[1.0, 0.0], [1.0, 1.0]]))


def write_folders(root):
    """TalkVid-style folders: a clip with its own audio track, one with a .wav beside it and emotion metadata."""
    media.write_video(root / "spk_a" / "clip0.mp4", _gradient_frames(20, 24, 32, 0), fps=25,
                      audio=_speech(0.8, 16_000, 0), sample_rate=16_000)
    media.write_video(root / "spk_b" / "take7.mp4", _gradient_frames(15, 24, 32, 1), fps=30)
    import soundfile

    soundfile.write(root / "spk_b" / "take7.wav", _speech(0.5, 22_050, 1), 22_050)
    (root / "spk_b" / "take7.json").write_text(json.dumps({"emotion": "sad", "intensity": 3}))


def options(name, **kw):
    _, option_spec = commands.BUILDERS[name]
    return commands._load(option_spec)(**kw)


SMALL = dict(size=32, image_format="png")


# ----------------------------------------------------------------------------------------------- shared builds
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One in-process build of each builder (Beam pipelines start slowly: built once for the module)."""
    root = tmp_path_factory.mktemp("tfds")
    out = {}
    specs = {
        "mead": (write_mead, options("mead", prep=PreprocessConfig(crop="pfl", detector="skin", pfl_window=96,
                                                                   **SMALL), eval_identities=("W009",))),
        "hdtf": (write_hdtf, options("hdtf", prep=PreprocessConfig(crop="box", segment_frames=16, **SMALL))),
        "react2024": (write_react, options("react2024", prep=PreprocessConfig(crop="center", loudness_lufs=None,
                                                                             size=16, image_format="png"),
                                           splits=("train",))),
        "talking_folders": (write_folders, options("talking_folders", prep=PreprocessConfig(crop="center",
                                                                                          **SMALL))),
    }
    for name, (writer, opts) in specs.items():
        raw = root / f"{name}_raw"
        raw.mkdir()
        writer(raw)
        result = commands.build_dataset(name, manual_dir=raw, data_dir=root / "out", options=opts, workers=1)
        out[name] = (result, opts, root / "out")
    return out


def _grain_read(name, built, split):
    result, opts, data_dir = built[name]
    source = commands.load_source(name, data_dir, split, opts)
    return list(grain.MapDataset.source(source)), result


def test_mead_build_reads_back_through_grain(built):
    records, result = _grain_read("mead", built, "train")
    assert result.records == {"train": 2, "eval": 2} and not result.reused
    by_label = {r["label"].decode(): r for r in records}
    assert set(by_label) == {"happy", "neutral"}
    happy = by_label["happy"]
    frames = decode_frames(happy["frames"])
    assert frames.shape == (30, 32, 32, 3)  # 36 frames at 30 fps -> 30 at 25 fps
    assert happy["audio"].shape == (30 * 640,) and happy["audio"].dtype == np.int16
    assert abs(video_lib.loudness(happy["audio"] / 32767.0) + 23.0) < 1.0  # normalised to -23 LUFS
    assert happy["intensity"] == 2 and happy["emotion"] == 1 and happy["identity_name"].decode() == "M003"
    assert happy["clip_id"].decode() == "M003/front/happy/level_2/001"
    assert any("happ" in text.lower() or "joy" in text.lower() or "cheer" in text.lower()
               for text in json.loads(happy["instructions"]))
    x0, y0, x1, y1 = happy["crop_box"]
    assert x1 - x0 == y1 - y0 == 96  # the PFL fixed window
    eval_records, _ = _grain_read("mead", built, "eval")
    assert {r["identity_name"].decode() for r in eval_records} == {"W009"}
    # a second build with the same options is reused, not redone
    again = commands.build_dataset("mead", manual_dir=".", data_dir=built["mead"][2], options=built["mead"][1])
    assert again.reused and again.directory == result.directory


def test_clip_loader_windows_frames_audio_and_text(built):
    from avatarjax.data.tfds import loader

    result, _, data_dir = built["mead"]
    cfg = loader.ClipDataConfig(dataset="mead", data_dir=str(data_dir), window=32, frame_size=16)
    assert loader.build_directory(cfg) == result.directory

    def tokens(text):
        return {"text_len": np.int32(len(text))}

    batch = next(iter(loader.dataset(cfg, split="train", batch_size=2, seed=0, text_fn=tokens)))
    assert batch["frames"].shape == (2, 32, 16, 16, 3) and batch["frames"].dtype == np.uint8
    assert batch["mask"].sum(1).tolist() == [30, 30]  # 30-frame clips padded to the 32-frame window
    assert not batch["frames"][:, 30:].any() and batch["audio"].shape == (2, 32 * 640)
    assert sorted(batch["intensity"].tolist()) == [1, 2] and (batch["text_len"] > 5).all()
    with pytest.raises(DataError, match="no mead build 'nope'"):
        loader.build_directory(loader.ClipDataConfig(dataset="mead", data_dir=str(data_dir), config="nope"))


def test_hdtf_build_segments_and_scales_windows(built):
    records, result = _grain_read("hdtf", built, "train")
    assert result.records == {"train": 6}  # 2 clips of 40 frames -> segments of 16, 16, 8 (both identities train)
    assert result.notes["listed_but_absent"] == 1
    records = sorted((r for r in records if r["clip_id"] == b"BarackObama_0"), key=lambda r: int(r["start"]))
    assert [int(r["start"]) for r in records] == [0, 16, 32]
    assert [len(r["frames"]) for r in records] == [16, 16, 8]
    assert [r["audio"].size for r in records] == [16 * 640, 16 * 640, 8 * 640]
    np.testing.assert_array_equal(records[0]["crop_box"], [10, 2, 30, 22])  # (20, 4, 40, 40) at half scale
    assert records[0]["identity_name"].decode() == "BarackObama" and records[0]["group"].decode() == "WDA"


def test_react_pairs_both_directions_with_neighbours(built):
    records, result = _grain_read("react2024", built, "train")
    assert result.records == {"train": 2}
    by_index = {int(r["index"]): r for r in records}
    speaker, listener = REACT_PAIRS["train"]
    assert by_index[0]["speaker_path"].decode() == speaker and by_index[1]["speaker_path"].decode() == listener
    np.testing.assert_array_equal(by_index[0]["speaker_3dmm"], by_index[1]["listener_3dmm"])
    assert by_index[0]["speaker_3dmm"].shape == (REACT_FRAMES, 58)
    assert by_index[0]["listener_emotion"].shape == (REACT_FRAMES, 25)
    assert len(by_index[0]["speaker_frames"]) == len(by_index[0]["listener_frames"]) == REACT_FRAMES
    np.testing.assert_array_equal(decode_frames(by_index[0]["listener_frames"][:3]),
                                  _gradient_frames(3, 16, 16, 1))  # the PNG folder, losslessly
    assert by_index[0]["speaker_audio"].shape == (REACT_FRAMES * 640,)
    assert by_index[0]["appropriate"].tolist() == [0] and by_index[1]["appropriate"].tolist() == [0, 1]
    with pytest.raises(DataError, match="has no split 'val'"):
        commands.load_source("react2024", built["react2024"][2], "val", built["react2024"][1])


def test_talking_folders_build(built):
    records, result = _grain_read("talking_folders", built, "train")
    assert result.records == {"train": 2}
    by_id = {r["clip_id"].decode(): r for r in records}
    assert len(by_id["spk_a/clip0"]["frames"]) == 20 and by_id["spk_a/clip0"]["audio_flag"] == 1
    sad = by_id["spk_b/take7"]
    # 15 frames at 30 fps last 0.5 s = 12.5 frames at 25 fps: 13, the last partial one kept (media.frame_indices_for_fps)
    assert len(sad["frames"]) == 13 and sad["audio"].size == 13 * 640
    assert sad["label"] == b"sad" and sad["intensity"] == 3 and json.loads(sad["instructions"])
    assert np.abs(sad["audio"][:8000]).max() > 0  # the .wav beside the clip, resampled from 22.05 kHz


def test_cc_v1_motion_clips_need_instructions(tmp_path):
    raw = tmp_path / "cc"
    media.write_video(raw / "actor1" / "nod.mp4", _gradient_frames(10, 16, 16, 0), fps=25,
                      audio=_speech(0.4, 16_000, 0), sample_rate=16_000)
    (raw / "actor1" / "nod.txt").write_text("Nod twice.\nGive two nods.\n")
    media.write_video(raw / "actor1" / "shake.mp4", _gradient_frames(10, 16, 16, 1), fps=25)
    builder_cls, config = commands.builder_and_config("cc_v1", options("cc_v1", prep=PreprocessConfig(
        crop="center", **SMALL)))
    builder = builder_cls(config=config, data_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match="actor1/shake.txt: missing instruction text"):
        builder.manifest(raw)
    (raw / "actor1" / "shake.txt").write_text("Shake your head.")
    (descriptor, _), = [(d, s) for s, items in builder.manifest(raw).items() for d in items
                        if d["key"] == "actor1/nod"]
    (key, record), = builder.processor()(descriptor)
    assert key == "actor1/nod/000000" and record["kind"] == "motion" and record["audio_flag"] == 0
    assert json.loads(record["instructions"]) == ["Nod twice.", "Give two nods."]
    assert not record["audio"].any()  # motion clips are silent even when the file has sound
    assert not (tmp_path / "out").exists()


def test_malformed_raw_data_lists_every_problem_and_writes_nothing(tmp_path):
    raw = tmp_path / "mead"
    write_mead(raw, identities=("M003",), takes=(("happy", 1, "001"), ("sad", 3, "002")))
    (raw / "M003" / "audio" / "sad" / "level_3" / "002.m4a").unlink()  # missing audio
    bad = raw / "M003" / "video" / "front" / "angry" / "level_1" / "003.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a video at all")  # unreadable video (its audio exists)
    _write_m4a(raw / "M003" / "audio" / "angry" / "level_1" / "003.m4a", _speech(0.5, 16_000, 0), 16_000)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        commands.build_dataset("mead", manual_dir=raw, data_dir=out, workers=1)
    message = str(err.value)
    assert "2 problem(s)" in message and "nothing was written" in message
    assert "M003/audio/sad/level_3/002.m4a: missing audio" in message
    assert "M003/video/front/angry/level_1/003.mp4: unreadable video" in message
    assert not out.exists()

    react = tmp_path / "react"
    react.mkdir()
    speaker, listener = REACT_PAIRS["val"]
    (react / "val.csv").write_text(f",speaker_path,listener_path\n0,{speaker},{listener}\n")
    write_react_person(react, "val", speaker, 0, fps=30)  # wrong frame rate
    write_react_person(react, "val", listener, 1, frames=REACT_FRAMES)
    (react / "val" / "3D_FV_files" / listener).with_suffix(".npy").unlink()  # missing metadata
    with pytest.raises(DataError) as err:
        commands.build_dataset("react2024", manual_dir=react, data_dir=out, workers=1,
                               options=options("react2024", splits=("val",)))
    message = str(err.value)
    assert "wrong frame rate: 30 fps, expected 25" in message
    assert "P26/2.npy: missing 3DMM coefficients" in message
    assert not out.exists()

    hdtf = tmp_path / "hdtf"
    write_hdtf(hdtf)
    media.write_video(hdtf / "clips" / "TedLieu_0.mp4", _gradient_frames(5, 16, 16, 0), fps=25)
    with pytest.raises(DataError, match="TedLieu_0.mp4: missing metadata: no line for this clip"):
        commands.build_dataset("hdtf", manual_dir=hdtf, data_dir=out, workers=1)
    assert not out.exists()


def test_failed_build_leaves_no_partial_dataset(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_mead(raw, identities=("M003",), takes=(("happy", 1, "001"),))
    out = tmp_path / "out"

    def broken(*args, **kwargs):
        raise DataError("decoder exploded")

    monkeypatch.setattr(video_lib, "process_clip", broken)
    with pytest.raises(Exception, match="decoder exploded"):
        commands.build_dataset("mead", manual_dir=raw, data_dir=out, workers=1,
                               options=options("mead", prep=PreprocessConfig(crop="center", **SMALL)))
    assert list(out.iterdir()) == []  # the temporary build directory is gone, no split was moved in


def test_synthface_builds_on_two_worker_processes(tmp_path):
    from avatarjax.data.synthface.builder import build, load_source
    from avatarjax.data.synthface.records import ProceduralSource, WorldConfig

    world = WorldConfig(num_clips=4, seed=0, num_identities=12)  # all 4 clips have train identities: one split
    build(tmp_path, world, workers=2)  # DirectRunner multi_processing: fresh worker processes
    built_src, procedural = load_source(tmp_path, world, "train"), ProceduralSource(world, "train")
    assert len(built_src) == len(procedural) == 4
    records = {int(r["clip"]): r for r in grain.MapDataset.source(built_src)}
    assert sorted(records) == [0, 1, 2, 3]
    np.testing.assert_array_equal(records[2]["state"], procedural[2]["state"])
    with pytest.raises(DataError, match="no clips in split 'eval'"):
        load_source(tmp_path, world, "eval")


# hooks for test_clip_hooks_and_automatic_pfl_window, named "tests.unit.test_tfds_builders:..." as a user would
def colour_aus(frames):
    return frames.reshape(len(frames), -1, 3).mean(1).astype(np.float32) / 255.0


colour_aus.AU_NAMES = ("red", "green", "blue")


def halve(wav, rate):
    assert rate == 16_000
    return wav * 0.5


def test_clip_hooks_and_automatic_pfl_window(tmp_path):
    path = tmp_path / "face.mp4"
    media.write_video(path, _face_frames(3, 20, 128), fps=25, audio=_speech(0.8, 16_000, 3), sample_rate=16_000)
    module = "tests.unit.test_tfds_builders"
    prep = PreprocessConfig(crop="pfl", detector="skin", pfl_window=0, size=24, segment_frames=8,
                            au_extractor=f"{module}:colour_aus", au_chunk=3, denoiser=f"{module}:halve",
                            loudness_lufs=None)
    segments = list(video_lib.process_clip(path, prep))
    assert [len(s["frames"]) for s in segments] == [8, 8, 4]
    assert [s["au"].shape for s in segments] == [(8, 3), (8, 3), (4, 3)]
    np.testing.assert_allclose(segments[0]["au"][0], colour_aus(decode_frames(segments[0]["frames"][:1]))[0],
                               atol=0.02)  # the extractor saw the crops that were stored (up to PNG/JPEG loss)
    assert video_lib.au_names(prep) == ("red", "green", "blue")
    reference = video_lib.media.read_audio(path)[:8 * 640]
    np.testing.assert_allclose(segments[0]["audio"] / 32767.0, 0.5 * reference, atol=2e-4)  # denoiser ran
    x0, y0, x1, y1 = segments[0]["crop_box"]
    assert x1 - x0 == y1 - y0 and 40 < x1 - x0 < 128  # 1.6 x the face height, not the released 256


def test_preprocessing_pieces():
    # streaming 30 -> 25 fps picks the nearest source frame and keeps the tail
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(36)]
    out = list(video_lib.resample_frames(iter(frames), video_lib.media.frame_indices_for_fps(36, 30.0, 25)))
    assert [int(f[0, 0, 0]) for f in out] == list(video_lib.media.frame_indices_for_fps(36, 30.0, 25))  # one rule
    assert len(out) == 30
    index = video_lib.media.frame_indices_for_fps(5, 25.0, 25, count=8)
    assert len(list(video_lib.resample_frames(iter(frames[:5]), index))) == 8  # short source: last repeats
    # BS.1770: a full-scale 1 kHz sine reads about -3 LUFS; normalisation reaches the target
    t = np.arange(16_000 * 2) / 16_000
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert abs(video_lib.loudness(sine) + 3.0) < 0.3
    quiet = 0.01 * sine
    assert abs(video_lib.loudness(video_lib.normalize_loudness(quiet, -23.0)) + 23.0) < 0.05
    np.testing.assert_array_equal(video_lib.normalize_loudness(np.zeros(100, np.float32)), np.zeros(100))
    with pytest.raises(Exception, match="crop 'pfll' is unknown"):
        PreprocessConfig(crop="pfll")


def test_instruction_annotation_au_intersection_and_cached_paraphrases(tmp_path, monkeypatch):
    from avatarjax.data.tfds import annotate
    from avatarjax.planning import llm

    assert annotate.phrase_keys("AU12") == ("smile",) and annotate.phrase_keys("AU06_r") == ("au6",)
    assert annotate.phrase_keys("AU01") == ("au1_l", "au1_r") and annotate.phrase_keys("gaze_x") == ()
    names = ("AU06", "AU12", "AU04", "AU45")
    au = np.zeros((50, 4), np.float32)
    au[:, 0] = au[:, 1] = au[:, 3] = 0.9  # cheek raiser, smile and blink held throughout
    au[::2, 2] = 0.9  # brow lowerer in every other frame only
    rng = np.random.default_rng(0)
    present = [annotate.au_intersection(au, names, rng) for _ in range(20)]
    assert all({"AU06", "AU12", "AU45"} <= set(p) for p in present)
    assert any("AU04" not in p for p in present)  # three frames rarely all land on the brow frames
    assert annotate.describable(["AU06", "AU12", "AU45", "AU26"]) == ["au6", "smile"]  # no blink, no speech jaw
    config = annotate.AnnotateConfig(count=6, au_share=1.0)
    texts = annotate.instructions("M003/x/000000", "happy", 3, "train", config, au, names)
    assert len(texts) == 6 and len(set(texts)) == 6
    assert all("Raise your cheeks." in t or "Lift your cheeks." in t for t in texts)
    assert texts == annotate.instructions("M003/x/000000", "happy", 3, "train", config, au, names)  # seeded

    calls = []

    class FakeLLM:
        name = "fake"

        def complete(self, messages, *, seed=0):
            calls.append(messages[-1]["content"])
            return json.dumps({"paraphrases": ["Grin widely as you speak.", "Talk with a huge smile."]})

    monkeypatch.setattr(llm, "make_backend", lambda cfg: FakeLLM())
    config = annotate.AnnotateConfig(count=3, llm=(("backend", "http"), ("model", "m")), cache_dir=str(tmp_path))
    first = annotate.instructions("clip", "happy", 3, "train", config)
    assert first[1:] == ["Grin widely as you speak.", "Talk with a huge smile."] and len(calls) == 1
    assert "REQUEST_JSON:" in calls[0] and "paraphrase" in calls[0]
    assert annotate.instructions("clip", "happy", 3, "train", config) == first and len(calls) == 1  # cached
    assert len(list(tmp_path.glob("*.json"))) == 1
