"""The synthface tfds builder: writes train/eval splits of clips as ArrayRecord (no TensorFlow needed).

``avatarjax data build synthface --data_dir DIR --config.num_clips=1000`` builds it (a Beam pipeline: local
worker processes by default, any runner with ``--beam_options``); the loader reads it back with random access
(``as_data_source``). The eval split holds the clips of held-out identities, with instructions from
held-out paraphrase templates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from avatarjax.data.synthface import identity as identity_lib
from avatarjax.data.synthface.records import WorldConfig, clip_identity, clip_split, make_record
from avatarjax.data.synthface.schema import NUM_CHANNELS, NUM_KEYPOINTS
from avatarjax.data.tfds.beam import BeamBuilder, build as beam_build
from avatarjax.errors import DataError

SPLITS = ("train", "eval")


@dataclasses.dataclass(eq=False)
class SynthfaceConfig(tfds.core.BuilderConfig):
    world: WorldConfig = WorldConfig()
    workers: int = 0  # DirectRunner worker processes; 0 = one per CPU core (not part of the dataset's identity)


def _features(world: WorldConfig) -> dict:
    features = {
        "clip": np.int32,
        "state": tfds.features.Tensor(shape=(None, NUM_CHANNELS), dtype=np.float32),
        "keypoints": tfds.features.Tensor(shape=(None, NUM_KEYPOINTS, 2), dtype=np.float32),
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
        "identity": np.int32,
        "identity_vector": tfds.features.Tensor(shape=(identity_lib.IDENTITY_DIM,), dtype=np.float32),
        "audio_flag": np.int32,
        "kind": tfds.features.Text(),
        "label": tfds.features.Text(),
        "emotion": np.int32,
        "intensity": np.int32,
        "au_active": tfds.features.Tensor(shape=(10,), dtype=np.bool_),
        "instructions": tfds.features.Text(),
        "events": tfds.features.Text(),
        "split": tfds.features.Text(),
    }
    if world.frame_size:
        features["frames"] = tfds.features.Tensor(shape=(None,), dtype=np.object_)
    return features


class _MakeRecords:
    """Beam processor: a clip index -> its (key, record); picklable, so it runs in any worker."""

    def __init__(self, world: WorldConfig):
        self.world = world

    def __call__(self, descriptor: dict):
        index = descriptor["index"]
        yield f"{index:07d}", make_record(self.world, index)


class Synthface(BeamBuilder):
    """Procedural talking-face clips with exact ground truth (states, keypoints, audio, instructions).

    A Beam build (``avatarjax.data.tfds.beam``): the clip indices of each split are the work items, generated in
    the workers, so a million-clip build runs on a cluster runner as well as on local processes.
    """

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SynthfaceConfig(name="default", world=WorldConfig())]

    def features(self) -> dict:
        return _features(self.builder_config.world)

    def scan(self, root):
        del root  # nothing to read: every clip is generated
        world = self.builder_config.world
        splits = {split: [] for split in SPLITS}
        for i in range(world.num_clips):
            splits[clip_split(clip_identity(world, i))].append({"index": i})
        return splits

    def processor(self):
        return _MakeRecords(self.builder_config.world)


def builder(data_dir: str | Path, world: WorldConfig, workers: int = 0) -> Synthface:
    config = SynthfaceConfig(name=world.name(), world=world, workers=workers)
    return Synthface(config=config, data_dir=str(data_dir), file_format="array_record")


def build(data_dir: str | Path, world: WorldConfig, workers: int = 0, beam_options: str = "") -> Path:
    """Build (or reuse) the dataset with Beam (``workers`` local processes, 0 = one per core, or any runner
    through ``beam_options``); returns its directory."""
    config = SynthfaceConfig(name=world.name(), world=world, workers=workers)
    return beam_build(Synthface, config, data_dir=data_dir, beam_options=beam_options, workers=workers).directory


def load_source(data_dir: str | Path, world: WorldConfig, split: str):
    """Random-access source of a built split; a clear error when it was not built."""
    if split not in SPLITS:
        raise DataError(f"unknown synthface split '{split}': use train or eval")
    b = builder(data_dir, world)
    if not Path(b.data_dir).joinpath("dataset_info.json").exists():
        raise DataError(
            f"no synthface dataset '{world.name()}' under '{data_dir}': build it with `avatarjax data build synthface "
            f"--data_dir {data_dir} --config.num_clips={world.num_clips} --config.seed={world.seed} "
            f"--config.num_identities={world.num_identities} --config.frame_size={world.frame_size}`")
    if split not in b.info.splits:
        raise DataError(f"synthface dataset '{world.name()}' has no clips in split '{split}' (none of its "
                        f"{world.num_clips} clips has a {split} identity): build more clips (--config.num_clips)")
    return b.as_data_source(split=split)
