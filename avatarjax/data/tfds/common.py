"""What the real-video builders share: their tfds config (options dataclass -> stable config name), the record
features of a talking-face clip, the Beam processor that turns a clip descriptor into segments, header probing of
raw files (threaded, collecting problems), identity splits and emotion instructions.

A clip record (one segment of a clip; see ``avatarjax.data.preprocess.video`` for the media fields)::

    clip_id text, identity int32 (index in the sorted identities of the build), identity_name text,
    frames bytes [T], audio int16 [T * 640], start int32, crop_box int32 [4], source_fps float32,
    emotion int32 (index in synthface schema.EMOTIONS, -1 unknown), intensity int32 (1-3, 0 unknown),
    label text, kind text ("talking"), audio_flag int32, instructions text (JSON list), split text,
    au float32 [T, K] (only with an AU extractor)
    wav2vec2, wav2vec2_hidden, motion_latent, appearance_latent, dac_codes, dac_frame_rate, video_latents
    (only with ``--config.features``; shapes in ``avatarjax.data.tfds.features``)

The media fields, ``emotion``, ``intensity``, ``label``, ``kind``, ``audio_flag``, ``instructions`` and ``split``
mean what they mean in synthface records, so the same windowing code reads both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from avatarjax.data.preprocess import video as video_lib
from avatarjax.data.synthface import schema
from avatarjax.data.tfds.beam import Problems

SPLITS = ("train", "eval")


@dataclasses.dataclass(eq=False)
class OptionsConfig(tfds.core.BuilderConfig):
    """A tfds config carrying a dataset's options dataclass; build with :func:`config_for`."""

    options: Any = None


def config_for(options) -> OptionsConfig:
    """A config named after its options (``<crop><size>-<hash>``), so builds with different options live in
    different directories and a rebuild with the same options is reused."""
    from avatarjax.data.tfds import features as features_lib

    fields = dataclasses.asdict(options)
    spec = fields.pop("features", "")  # absent from the hash when unused: builds without features keep their names
    if spec:
        fields["features"] = spec
        fields["features_fingerprint"] = features_lib.fingerprint(spec)
    text = json.dumps(fields, sort_keys=True, default=str)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    prep = getattr(options, "prep", None)
    prefix = f"{prep.crop}{prep.size}-" if prep is not None else ""
    tag = f"{features_lib.name_tag(spec)}-" if spec else ""
    return OptionsConfig(name=f"{prefix}{tag}{digest}", description=text, options=options)


def clip_features(prep: video_lib.PreprocessConfig, extra: dict | None = None, extra_features: str = "") -> dict:
    """The tfds features of a clip record; ``extra_features`` (``--config.features``) adds the pre-computed feature
    fields (``avatarjax.data.tfds.features``), loading and so checking their checkpoints."""
    features = {
        "clip_id": tfds.features.Text(),
        "identity": np.int32,
        "identity_name": tfds.features.Text(),
        "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "start": np.int32,
        "crop_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
        "source_fps": np.float32,
        "emotion": np.int32,
        "intensity": np.int32,
        "label": tfds.features.Text(),
        "kind": tfds.features.Text(),
        "audio_flag": np.int32,
        "instructions": tfds.features.Text(),
        "split": tfds.features.Text(),
    }
    names = video_lib.au_names(prep)
    if prep.au_extractor:
        features["au"] = tfds.features.Tensor(shape=(None, len(names) or None), dtype=np.float32)
    features.update(extra or {})
    if extra_features:
        from avatarjax.data.tfds import features as features_lib

        features.update(features_lib.record_features(extra_features))
    return features


class ClipProcessor:
    """Beam processor for talking-face clips: descriptor -> (key, record) per segment.

    A descriptor holds ``key``, ``video`` (path), optional ``audio`` (path), ``box`` (x0, y0, x1, y1),
    ``silent``, ``fields`` (the record's metadata fields, already typed) and, for emotion-labelled clips,
    ``annotation`` (``emotion``, ``intensity``, ``split``): the segment's instructions are then written here, in
    the worker, from the emotion and the segment's AU features (``annotate.instructions``). Module-level and
    picklable. ``features`` (``--config.features``) adds the pre-computed feature fields of every segment
    (``avatarjax.data.tfds.features``; the models are loaded once per worker process).
    """

    def __init__(self, prep: video_lib.PreprocessConfig, annotation=None, features: str = ""):
        from avatarjax.data.tfds.annotate import AnnotateConfig
        from avatarjax.data.tfds.features import SegmentFeatures

        self.prep = prep
        self.annotation = annotation or AnnotateConfig()
        self.features = SegmentFeatures(features) if features else None

    def __call__(self, descriptor: dict) -> Iterable[tuple[str, dict]]:
        from avatarjax.data.tfds import annotate

        clip_state = self.features.clip() if self.features else None
        for segment in video_lib.process_clip(descriptor["video"], self.prep, audio=descriptor.get("audio"),
                                              box=descriptor.get("box"), silent=descriptor.get("silent", False)):
            key = f"{descriptor['key']}/{int(segment['start']):06d}"
            record = {**descriptor["fields"], **segment}
            if self.features:
                record.update(self.features(segment, clip_state))
            label = descriptor.get("annotation")
            if label:
                record["instructions"] = json.dumps(annotate.instructions(
                    key, label["emotion"], label["intensity"], label["split"], self.annotation, segment.get("au"),
                    video_lib.au_names(self.prep)))
            yield key, record


def clip_fields(*, clip_id: str, identity: int, identity_name: str, split: str, emotion: int = -1,
                intensity: int = 0, label: str = "", instructions: Iterable[str] = (), audio_flag: int = 1,
                kind: str = "talking", **extra) -> dict:
    return {"clip_id": clip_id, "identity": np.int32(identity), "identity_name": identity_name,
            "emotion": np.int32(emotion), "intensity": np.int32(intensity), "label": label, "kind": kind,
            "audio_flag": np.int32(audio_flag), "instructions": json.dumps(list(instructions)), "split": split,
            **extra}


# ------------------------------------------------------------------------------------------------ splits, text
def stable_fraction(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) per string (crc32: the same on every machine and Python)."""
    return zlib.crc32(text.encode()) / 2**32


def identity_split(name: str, eval_identities: tuple[str, ...], eval_fraction: float) -> str:
    """``eval`` for listed identities (when any are listed), else for a stable ``eval_fraction`` of them."""
    if eval_identities:
        return "eval" if name in eval_identities else "train"
    return "eval" if stable_fraction(name) < eval_fraction else "train"


def annotation(emotion: str, intensity: int, split: str) -> dict | None:
    """A descriptor's ``annotation`` entry for an emotion-labelled clip (None for unknown emotions)."""
    if emotion not in schema.EMOTIONS:
        return None
    return {"emotion": emotion, "intensity": int(intensity) if emotion != "neutral" else 1, "split": split}


def emotion_index(name: str) -> int:
    return schema.EMOTIONS.index(name) if name in schema.EMOTIONS else -1


# ---------------------------------------------------------------------------------------------------- probing
def probe_videos(paths: list[Path], problems: Problems, *, fps: float | None = None,
                 frames: Callable[[Path], int | None] | None = None,
                 threads: int = 16) -> dict[Path, video_lib.VideoInfo]:
    """Header facts of every video (threaded: I/O bound), recording unreadable files, empty videos and, when
    given, a frame rate other than ``fps`` or a frame count other than ``frames(path)``."""

    def probe(path: Path):
        try:
            return path, video_lib.read_header(path), None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a problem to list
            return path, None, f"{type(err).__name__}: {err}"

    infos = {}
    with ThreadPoolExecutor(threads) as pool:
        for path, info, error in pool.map(probe, paths):
            if error is not None:
                problems.add(path, f"unreadable video ({error})")
                continue
            if info.frames <= 0 or info.fps <= 0:
                problems.add(path, f"no frames or no frame rate in the header (fps {info.fps}, {info.frames} "
                                   f"frames)")
                continue
            if fps is not None and abs(info.fps - fps) > 0.01:
                problems.add(path, f"wrong frame rate: {info.fps:g} fps, expected {fps:g}")
                continue
            expected = frames(path) if frames is not None else None
            if expected is not None and abs(info.frames - expected) > 1:
                problems.add(path, f"{info.frames} frames, expected {expected} (one per annotation row)")
                continue
            infos[path] = info
    return infos


def probe_audio(paths: list[Path], problems: Problems, threads: int = 16) -> None:
    """Record audio files that cannot be opened or hold no audio track."""
    import av
    import soundfile

    def check(path: Path):
        try:
            if path.suffix.lower() in (".wav", ".flac", ".ogg"):
                return path, None if soundfile.info(str(path)).frames > 0 else "no samples"
            with av.open(str(path)) as container:
                return path, None if container.streams.audio else "no audio track"
        except Exception as err:  # noqa: BLE001 - any decoder failure is a problem to list
            return path, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(threads) as pool:
        for path, error in pool.map(check, paths):
            if error is not None:
                problems.add(path, f"unreadable audio ({error})")


def identity_indices(names: Iterable[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(set(names)))}
