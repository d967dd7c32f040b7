"""The synthface tfds builder: writes train/eval splits of clips as ArrayRecord (no TensorFlow needed).

``avatarjax data build synthface --data_dir DIR --config.num_clips=1000`` builds it; the loader reads it back with
random access (``as_data_source``). The eval split holds the clips of held-out identities, with instructions from
held-out paraphrase templates.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from avatarjax.data.synthface import identity as identity_lib
from avatarjax.data.synthface.records import WorldConfig, clip_identity, clip_split, make_record
from avatarjax.data.synthface.schema import NUM_CHANNELS, NUM_KEYPOINTS
from avatarjax.errors import DataError

SPLITS = ("train", "eval")


@dataclasses.dataclass(eq=False)
class SynthfaceConfig(tfds.core.BuilderConfig):
    world: WorldConfig = WorldConfig()
    workers: int = 0  # generation processes; 0 = one per CPU core


def _features(world: WorldConfig) -> tfds.features.FeaturesDict:
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
    return tfds.features.FeaturesDict(features)


def _make(args):
    world, index = args
    return index, make_record(world, index)


class Synthface(tfds.core.GeneratorBasedBuilder):
    """Procedural talking-face clips with exact ground truth (states, keypoints, audio, instructions)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SynthfaceConfig(name="default", world=WorldConfig())]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=_features(self.builder_config.world))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        world = self.builder_config.world
        indices = [i for i in range(world.num_clips) if clip_split(clip_identity(world, i)) == split]
        workers = self.builder_config.workers or os.cpu_count() or 1
        # disable=None: a bar on a terminal, silent when stderr is a file or a pipe (logs, tests)
        with tqdm(total=len(indices), desc=f"synthface {split}", unit="clip", disable=None) as bar:
            if workers <= 1:
                for i in indices:
                    yield f"{i:07d}", make_record(world, i)
                    bar.update(1)
                return
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for i, record in pool.imap(_make, [(world, i) for i in indices], chunksize=8):
                    yield f"{i:07d}", record
                    bar.update(1)


def builder(data_dir: str | Path, world: WorldConfig, workers: int = 0) -> Synthface:
    config = SynthfaceConfig(name=world.name(), world=world, workers=workers)
    return Synthface(config=config, data_dir=str(data_dir), file_format="array_record")


def build(data_dir: str | Path, world: WorldConfig, workers: int = 0) -> Path:
    """Build (or reuse) the dataset; returns its directory."""
    b = builder(data_dir, world, workers)
    b.download_and_prepare()
    return Path(b.data_dir)


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
    return b.as_data_source(split=split)
