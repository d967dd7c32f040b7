"""grain pipelines over a built real-clip dataset (mead, hdtf, talking_folders, cc_v1): fixed-length windows of
decoded face crops with padding masks and the aligned 16 kHz audio, sharded across processes like every other
avatarjax pipeline (``avatarjax.data.pipeline``).

Each example (before batching):
- ``frames`` uint8 [W, S, S, 3] (``S`` = the stored crop size, or ``frame_size`` when set), ``mask`` bool [W]
- ``audio`` float32 [W * 640] when ``audio``
- ``identity``, ``emotion``, ``intensity``, ``audio_flag``, ``start`` int32 (window start frame in the clip)
- whatever ``text_fn(instruction)`` returns, with one of the record's instructions sampled per step;
- the pre-computed features of a ``--config.features`` build (``avatarjax.data.tfds.features``), cut to the same
  window and zero-padded: ``motion_latent`` [W, D], ``video_latents`` [W, K, D], ``wav2vec2`` [2W, F] and
  ``wav2vec2_hidden`` [2W, H] (50 Hz), ``dac_codes`` [ceil(W * r), Q] (``r`` = code frames per video frame,
  from ``dac_frame_rate``) and the clip's ``appearance_latent`` [a, a, C] as stored.

The build is read from its directory (``DATA_DIR/NAME/CONFIG/VERSION``, ``features.json`` describes it), so the
loader needs no builder options: ``config`` is the name ``avatarjax data build`` printed ("" when only one
config of the dataset was built).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import grain
import numpy as np

from avatarjax.data import pipeline, transforms
from avatarjax.data.synthface.records import audio_float, decode_frames
from avatarjax.errors import DataError

SAMPLES_PER_FRAME = 640
FPS = 25


@dataclasses.dataclass(frozen=True)
class ClipDataConfig:
    dataset: str = "mead"
    data_dir: str = ""
    config: str = ""  # the build's config name; "" = the only config of `dataset` under data_dir
    window: int = 64  # frames per example
    frame_size: int = 0  # 0 = the stored crop size
    audio: bool = True
    threads: int = 2
    prefetch: int = 4


def build_directory(cfg: ClipDataConfig) -> Path:
    """``DATA_DIR/NAME/CONFIG/VERSION`` of the build ``cfg`` names; a clear error when it is missing."""
    root = Path(cfg.data_dir) / cfg.dataset
    configs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    hint = (f"build it with `avatarjax data build {cfg.dataset} --manual_dir RAW --data_dir {cfg.data_dir}`")
    if cfg.config:
        if cfg.config not in configs:
            raise DataError(f"no {cfg.dataset} build '{cfg.config}' under '{root}' (built: {configs or 'none'}): "
                            f"{hint} or set data.config to one of the built ones")
        name = cfg.config
    elif len(configs) == 1:
        name = configs[0]
    else:
        raise DataError(f"{len(configs)} {cfg.dataset} builds under '{root}' ({configs or 'none'}): "
                        + ("set data.config to one of them" if configs else hint))
    versions = sorted((p for p in (root / name).iterdir() if (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(int(v) for v in p.name.split(".")))
    if not versions:
        raise DataError(f"the {cfg.dataset} build '{name}' under '{root}' is incomplete: {hint} --overwrite")
    return versions[-1]


def source(cfg: ClipDataConfig, split: str):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(build_directory(cfg)))
    if split not in builder.info.splits:
        raise DataError(f"the {cfg.dataset} build has no split '{split}': it has "
                        f"{', '.join(builder.info.splits.keys())}")
    return builder.as_data_source(split=split)


def make_example(record: dict, rng: np.random.Generator | None, cfg: ClipDataConfig,
                 text_fn: Callable[[str], dict] | None = None) -> dict[str, Any]:
    """One fixed-shape example from a clip record: a window (random with ``rng``, centred without)."""
    length = len(record["frames"])
    start = transforms.window_start(length, cfg.window, rng)
    frames = decode_frames(record["frames"][start:start + cfg.window])
    if cfg.frame_size and frames.shape[1] != cfg.frame_size:
        frames = np.stack([cv2.resize(f, (cfg.frame_size, cfg.frame_size), interpolation=cv2.INTER_AREA)
                           for f in frames])
    frames, mask = transforms.crop_or_pad(frames, 0, cfg.window)
    example = {"frames": frames, "mask": mask, "identity": np.int32(record["identity"]),
               "emotion": np.int32(record["emotion"]), "intensity": np.int32(record["intensity"]),
               "audio_flag": np.int32(record["audio_flag"]), "start": np.int32(int(record["start"]) + start)}
    if cfg.audio:
        example["audio"] = transforms.crop_audio(audio_float(record["audio"]), start, cfg.window, SAMPLES_PER_FRAME)
    example.update(window_features(record, start, cfg.window))
    if text_fn is not None:
        text = transforms.sample_instruction(json.loads(record["instructions"]), rng or np.random.default_rng(0))
        example.update(text_fn(text))
    return example


def window_features(record: dict, start: int, window: int) -> dict[str, np.ndarray]:
    """The pre-computed feature fields of ``record`` for frames ``[start, start + window)`` (see the docstring)."""
    out = {}
    for name, per_frame in (("motion_latent", 1), ("video_latents", 1), ("wav2vec2", 2), ("wav2vec2_hidden", 2)):
        if name in record:
            out[name] = transforms.crop_or_pad(record[name], per_frame * start, per_frame * window)[0]
    if "appearance_latent" in record:
        out["appearance_latent"] = np.asarray(record["appearance_latent"], np.float32)
    if "dac_codes" in record:
        per_frame = float(record["dac_frame_rate"]) / FPS
        out["dac_codes"] = transforms.crop_or_pad(record["dac_codes"], int(math.floor(start * per_frame)),
                                                  math.ceil(window * per_frame))[0]
    return out


def dataset(cfg: ClipDataConfig, *, split: str, batch_size: int, seed: int, process_index: int = 0,
            process_count: int = 1, text_fn: Callable[[str], dict] | None = None,
            num_epochs: int | None = None) -> grain.IterDataset:
    """Batches of this process's rows; train windows are random crops, other splits' windows are centred."""
    return pipeline.clip_windows(
        source(cfg, split), lambda record, rng: make_example(record, rng, cfg, text_fn), split=split,
        batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count,
        num_epochs=num_epochs, threads=cfg.threads, prefetch=cfg.prefetch)
