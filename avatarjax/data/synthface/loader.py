"""grain pipelines over synthface: fixed-length windows with padding masks, frames rendered on the fly (or
decoded), audio aligned to the window, per-step instruction sampling, multi-worker prefetch.

Each example (before batching):
- ``state`` float32 [W, 24], ``mask`` bool [W] (False on padding), ``keypoints`` float32 [W, 99, 2]
- ``audio`` float32 [W * 640] (16 kHz, aligned with the frames) when ``audio``
- ``frames`` uint8 [W, S, S, 3] when ``frame_size`` > 0
- ``identity`` int32, ``identity_vector`` float32 [D], ``audio_flag`` int32, ``emotion`` int32, ``intensity``
  int32, ``au_active`` bool [10], ``start`` int32 (window start frame in the clip)
- whatever ``text_fn(instruction)`` returns (e.g. token ids) when given: strings never enter a batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from avatarjax.data import pipeline, transforms
from avatarjax.data.synthface import identity as identity_lib
from avatarjax.data.synthface.records import ProceduralSource, WorldConfig, audio_float, decode_frames
from avatarjax.data.synthface.schema import SAMPLES_PER_FRAME


@dataclasses.dataclass(frozen=True)
class SynthfaceDataConfig:
    data_dir: str = ""  # a built dataset (avatarjax data build synthface); "" generates clips on the fly
    num_clips: int = 1000
    world_seed: int = 0
    num_identities: int = 200
    stored_frame_size: int = 0  # the frame_size the dataset was built with
    lip_lag_frames: int = 2
    window: int = 64  # frames per example
    frame_size: int = 64  # rendered frame size; 0 leaves frames out
    audio: bool = True
    workers: int = 0  # grain worker processes (0 = load in the training process)
    threads: int = 2  # loader threads (in-process, or per worker)
    prefetch: int = 4  # batches read ahead

    def world(self) -> WorldConfig:
        return WorldConfig(num_clips=self.num_clips, seed=self.world_seed, num_identities=self.num_identities,
                           frame_size=self.stored_frame_size, lip_lag_frames=self.lip_lag_frames)


def source(cfg: SynthfaceDataConfig, split: str):
    if cfg.data_dir:
        from avatarjax.data.synthface.builder import load_source

        return load_source(cfg.data_dir, cfg.world(), split)
    return ProceduralSource(cfg.world(), split)


def make_example(record: dict, rng: np.random.Generator | None, cfg: SynthfaceDataConfig,
                 text_fn: Callable[[str], dict] | None = None) -> dict[str, Any]:
    """One fixed-shape example from a record: a window (random with ``rng``, centred without)."""
    length = record["state"].shape[0]
    start = transforms.window_start(length, cfg.window, rng)
    state, mask = transforms.crop_or_pad(record["state"], start, cfg.window)
    keypoints, _ = transforms.crop_or_pad(record["keypoints"], start, cfg.window)
    example = {
        "state": state.astype(np.float32), "mask": mask, "keypoints": keypoints.astype(np.float32),
        "identity": np.int32(record["identity"]), "identity_vector": np.asarray(record["identity_vector"], np.float32),
        "audio_flag": np.int32(record["audio_flag"]), "emotion": np.int32(record["emotion"]),
        "intensity": np.int32(record["intensity"]), "au_active": np.asarray(record["au_active"], bool),
        "start": np.int32(start),
    }
    if cfg.audio:
        example["audio"] = transforms.crop_audio(audio_float(record["audio"]), start, cfg.window, SAMPLES_PER_FRAME)
    if cfg.frame_size:
        example["frames"] = _frames(record, start, cfg, state, mask)
    if text_fn is not None:
        instructions = json.loads(record["instructions"])
        text = transforms.sample_instruction(instructions, rng or np.random.default_rng(0))
        example.update(text_fn(text))
    return example


def _frames(record: dict, start: int, cfg: SynthfaceDataConfig, state: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if "frames" in record and cfg.stored_frame_size == cfg.frame_size:
        frames, _ = transforms.crop_or_pad(decode_frames(record["frames"][start:start + cfg.window]), 0, cfg.window)
        return frames
    from avatarjax.data.synthface.render import render_frames

    ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
    frames = render_frames(ident, state, size=cfg.frame_size)
    frames[~mask] = 0
    return frames


def dataset(cfg: SynthfaceDataConfig, *, split: str, batch_size: int, seed: int, process_index: int = 0,
            process_count: int = 1, text_fn: Callable[[str], dict] | None = None,
            num_epochs: int | None = None) -> grain.IterDataset:
    """Batches of this process's rows; train windows are random crops, eval windows are centred."""
    iterable = pipeline.clip_windows(
        source(cfg, split), lambda record, rng: make_example(record, rng, cfg, text_fn), split=split,
        batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count,
        num_epochs=num_epochs, threads=cfg.threads, prefetch=cfg.prefetch)
    if cfg.workers > 0:
        _absl_flags_parsed()
        options = grain.MultiprocessingOptions(num_workers=cfg.workers, per_worker_buffer_size=cfg.prefetch)
        iterable = iterable.mp_prefetch(options)
    return iterable


def _absl_flags_parsed() -> None:
    """grain's multiprocessing reads absl flags; mark them parsed when the program did not use absl.app."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
