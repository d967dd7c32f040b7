"""REACT2024 (NoXI + RECOLA): dyadic speaker/listener clip pairs for multiple appropriate facial reaction
generation, 30 s clips of 751 frames at 25 fps, with 3DMM coefficients, facial attributes, the official splits and
the appropriateness neighbour matrices.

``avatarjax data build react2024 --manual_dir RAW --data_dir OUT``. Expected raw layout (the challenge download;
``site`` is ``NoXI`` or ``RECOLA``, ``person`` e.g. ``Expert_video`` / ``Novice_video`` or ``P25`` / ``P26``)::

    RAW/train.csv, RAW/val.csv, RAW/test.csv     header row, then "index,speaker_path,listener_path" with paths
                                                 like NoXI/010_2016-03-25_Paris/Expert_video/1
    RAW/neighbour_emotion_<split>.npy            optional [2L, 2L] appropriateness matrix of a split of L rows
                                                 (``tool/matrix_split.py`` of the baseline writes it)
    RAW/<split>/Video_files/<site>/<session>/<person>/<clip>.mp4     (or a folder <clip>/1.png ... 751.png)
    RAW/<split>/Audio_files/<site>/<session>/<person>/<clip>.wav
    RAW/<split>/Emotion/<site>/<session>/<person>/<clip>.csv         header + [751, 25]: 15 AUs, valence,
                                                                     arousal, 8 expression probabilities
    RAW/<split>/3D_FV_files/<site>/<session>/<person>/<clip>.npy     float [751, 58]: 52 expression, 3 angle,
                                                                     3 translation coefficients

Pair ``i`` of a split's csv gives two records, as in the baseline's data loader: index ``i`` (speaker = the
csv's speaker, listener = its listener) and ``L + i`` (the roles swapped). ``appropriate`` holds the indices
``j`` with ``matrix[index, j] > 0``: the records whose listener reaction is appropriate for this speaker (empty
without a matrix). Videos must be 25 fps with one frame per coefficient row (wrong rates are reported, not
resampled: the annotations are per frame); they are stored as ``prep.size`` crops (default: the centred square,
the challenge's faces are already cropped to 256x256). Splits are named as in the csv files (train, val, test).
``--config.features`` adds pre-computed features for both people, prefixed by role (``speaker_wav2vec2``,
``listener_motion_latent``, ...; see ``avatarjax.data.tfds.features``).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from avatarjax.data.preprocess import video as video_lib
from avatarjax.data.preprocess.video import PreprocessConfig
from avatarjax.data.tfds import common
from avatarjax.data.tfds.beam import BeamBuilder, Problems

SPLITS = ("train", "val", "test")
COEFFS = 58
ATTRIBUTES = 25
ROLES = ("speaker", "listener")


@dataclasses.dataclass(frozen=True)
class ReactOptions:
    prep: PreprocessConfig = PreprocessConfig(crop="center", loudness_lufs=None)
    num_frames: int = 751
    splits: tuple[str, ...] = SPLITS
    features: str = ""  # pre-computed features per person, e.g. "wav2vec2:DIR" (avatarjax.data.tfds.features)


def _person_files(root: Path, split: str, rel: str) -> dict[str, Path]:
    video = root / split / "Video_files" / rel
    return {"video": video.with_suffix(".mp4") if video.with_suffix(".mp4").exists() or not video.is_dir()
            else video,
            "audio": (root / split / "Audio_files" / rel).with_suffix(".wav"),
            "emotion": (root / split / "Emotion" / rel).with_suffix(".csv"),
            "coeffs": (root / split / "3D_FV_files" / rel).with_suffix(".npy")}


def read_attributes(path: Path) -> np.ndarray:
    """The facial attribute csv (header row, then one row per frame) -> float32 [T, 25]."""
    return np.atleast_2d(np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32))


def read_split_csv(path: Path, problems: Problems) -> list[tuple[str, str]]:
    pairs = []
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    for number, row in enumerate(rows[1:], 2):
        if len(row) < 3 or row[1].count("/") != 3 or row[2].count("/") != 3:
            problems.add(path, f"line {number} is not 'index,site/session/person/clip,site/session/person/clip': "
                               f"{','.join(row)}")
            continue
        pairs.append((row[1].strip(), row[2].strip()))
    return pairs


class React2024(BeamBuilder):
    """REACT2024 speaker/listener pairs (see the module docstring for the raw layout)."""

    VERSION = tfds.core.Version("1.0.0")

    def features(self) -> dict:
        per_role = {}
        for role in ROLES:
            per_role.update({
                f"{role}_path": tfds.features.Text(),
                f"{role}_frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
                f"{role}_audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                f"{role}_3dmm": tfds.features.Tensor(shape=(None, COEFFS), dtype=np.float32),
                f"{role}_emotion": tfds.features.Tensor(shape=(None, ATTRIBUTES), dtype=np.float32)})
            if self.options.features:
                from avatarjax.data.tfds.features import record_features

                per_role.update({f"{role}_{k}": v for k, v in record_features(self.options.features).items()})
        return {**per_role, "index": np.int32, "appropriate": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "site": tfds.features.Text(), "session": tfds.features.Text(), "split": tfds.features.Text()}

    def _check_person(self, root: Path, split: str, rel: str, problems: Problems, videos: dict) -> bool:
        files = _person_files(root, split, rel)
        ok = all([problems.require(files["video"], "video"), problems.require(files["audio"], "audio"),
                  problems.require(files["emotion"], "facial attribute csv (metadata)"),
                  problems.require(files["coeffs"], "3DMM coefficients (metadata)")])
        if not ok:
            return False
        want = self.options.num_frames
        coeffs = np.load(files["coeffs"], mmap_mode="r")
        if coeffs.ndim != 2 or coeffs.shape != (want, COEFFS):
            problems.add(files["coeffs"], f"shape {coeffs.shape}, expected ({want}, {COEFFS})")
            ok = False
        try:
            attrs = read_attributes(files["emotion"])
            if attrs.shape != (want, ATTRIBUTES):
                problems.add(files["emotion"], f"{attrs.shape[0]} rows x {attrs.shape[1]} columns after the header, "
                                               f"expected {want} x {ATTRIBUTES}")
                ok = False
        except ValueError as err:
            problems.add(files["emotion"], f"not a numeric csv with a header row ({err})")
            ok = False
        if files["video"].is_dir():
            count = len(video_lib.image_files(files["video"]))
            if count != want:
                problems.add(files["video"], f"{count} frame images, expected {want}")
                ok = False
        else:
            videos[files["video"]] = rel
        return ok

    def scan(self, root: Path | None) -> dict[str, list[dict]]:
        opts = self.options
        problems = Problems("REACT2024", root)
        pairs_by_split, matrices = {}, {}
        for split in opts.splits:
            csv_path = root / f"{split}.csv"
            if problems.require(csv_path, f"split file (metadata) for '{split}'"):
                pairs_by_split[split] = read_split_csv(csv_path, problems)
            matrix_path = root / f"neighbour_emotion_{split}.npy"
            if matrix_path.exists() and split in pairs_by_split:
                matrix = np.load(matrix_path)
                size = 2 * len(pairs_by_split[split])
                if matrix.shape != (size, size):
                    problems.add(matrix_path, f"shape {matrix.shape}, expected ({size}, {size}) for the "
                                              f"{size // 2} pairs of {split}.csv")
                else:
                    matrices[split] = matrix
        videos: dict[Path, str] = {}
        good: dict[str, list[bool]] = {}
        for split, pairs in pairs_by_split.items():
            good[split] = [all([self._check_person(root, split, speaker, problems, videos),
                                self._check_person(root, split, listener, problems, videos)])
                           for speaker, listener in pairs]
        common.probe_videos(list(videos), problems, fps=video_lib.FPS, frames=lambda p: opts.num_frames)
        common.probe_audio([_person_files(root, s, r)["audio"] for s, pairs in pairs_by_split.items()
                            for pair in pairs for r in pair if _person_files(root, s, r)["audio"].exists()],
                           problems)
        problems.raise_if_any("complete the challenge download (every csv row needs video, audio, Emotion csv and "
                              f"3D_FV npy for both people, {opts.num_frames} frames at 25 fps) or remove the "
                              "rows of missing clips from the split csv (and its neighbour matrix)")
        splits = {}
        for split, pairs in pairs_by_split.items():
            count = len(pairs)
            matrix = matrices.get(split)
            items = []
            for i, (speaker, listener) in enumerate(pairs):
                neighbours = [np.flatnonzero(matrix[k] > 0).astype(np.int32).tolist() if matrix is not None else []
                              for k in (i, i + count)]
                items.append({"split": split, "index": i, "count": count, "speaker": speaker, "listener": listener,
                              "files": {r: {k: str(v) for k, v in _person_files(root, split, r).items()}
                                        for r in (speaker, listener)},
                              "appropriate": neighbours})
            splits[split] = items
        return splits

    def processor(self):
        return ReactPairProcessor(self.options)


class ReactPairProcessor:
    """One csv row -> its two records (both speaker/listener directions), each person processed once."""

    def __init__(self, options: ReactOptions):
        from avatarjax.data.tfds.features import SegmentFeatures

        self.options = options
        self.features = SegmentFeatures(options.features) if options.features else None

    def _person(self, files: dict) -> dict:
        prep, frames = self.options.prep, self.options.num_frames
        video = Path(files["video"])
        info = (video_lib.VideoInfo(video_lib.FPS, frames, *_image_size(video), False) if video.is_dir()
                else None)
        (segment,) = video_lib.process_clip(video, dataclasses.replace(prep, segment_frames=0), info=info,
                                            audio=files["audio"], num_frames=frames)
        person = {"frames": segment["frames"], "audio": segment["audio"],
                  "3dmm": np.load(files["coeffs"]).astype(np.float32),
                  "emotion": read_attributes(Path(files["emotion"]))}
        if self.features:
            person.update(self.features(segment, self.features.clip()))
        return person

    def __call__(self, item: dict):
        a, b = item["speaker"], item["listener"]
        people = {a: self._person(item["files"][a]), b: self._person(item["files"][b])}
        site, session = a.split("/")[:2]
        for offset, (speaker, listener) in enumerate(((a, b), (b, a))):
            index = item["index"] + offset * item["count"]
            record = {"index": np.int32(index), "appropriate": np.asarray(item["appropriate"][offset], np.int32),
                      "site": site, "session": session, "split": item["split"]}
            for role, rel in (("speaker", speaker), ("listener", listener)):
                record[f"{role}_path"] = rel
                record.update({f"{role}_{k}": v for k, v in people[rel].items()})
            yield f"{index:06d}", record


def _image_size(folder: Path) -> tuple[int, int]:
    first = min(video_lib.image_files(folder), key=lambda p: int(p.stem))
    height, width = video_lib.media.read_image(first).shape[:2]
    return width, height
