"""One record format for synthface clips, and the two random-access sources that produce it.

A record is a dict of numpy arrays (and bytes for text): what the tfds builder writes and what the procedural
source generates on the fly, so the loader cannot tell them apart.

- ``state`` float32 [T, 24]; ``keypoints`` float32 [T, 99, 2]; ``audio`` int16 PCM [T * 640] (16 kHz; half the
  disk of float32, and what real recordings hold; ``audio_float`` converts back)
- ``clip`` int32 (index in the world); ``identity`` int32 (index); ``identity_vector`` float32 [IDENTITY_DIM]
- ``audio_flag`` int32 (1 talking, 0 text-only motion); ``kind`` / ``label`` bytes; ``emotion``, ``intensity``
  int32; ``au_active`` bool [10]; ``instructions`` bytes (JSON list of strings); ``events`` bytes (JSON)
- ``frames`` bytes [T] of PNG images, only when the dataset was built with a frame size (else rendered on the fly)
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np

from avatarjax.data.synthface import geometry, identity as identity_lib
from avatarjax.data.synthface.clips import generate_clip


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """What clips a synthface dataset holds (shared by the builder and the procedural source)."""

    num_clips: int = 1000
    seed: int = 0
    num_identities: int = 200
    frame_size: int = 0  # >0 stores PNG frames of this size; 0 renders frames in the loader instead
    lip_lag_frames: int = 2

    def name(self) -> str:
        return f"n{self.num_clips}_s{self.seed}_i{self.num_identities}_f{self.frame_size}_l{self.lip_lag_frames}"


def clip_split(identity_index: int) -> str:
    return identity_lib.identity_split(identity_index)


def clip_identity(world: WorldConfig, index: int) -> int:
    """Identity of clip ``index``: a seeded draw over ``num_identities``."""
    rng = np.random.default_rng([world.seed, index, 7])
    return int(rng.integers(world.num_identities))


def make_record(world: WorldConfig, index: int) -> dict:
    """Generate clip ``index`` of ``world`` (deterministic) as a record."""
    ident_index = clip_identity(world, index)
    ident = identity_lib.sample_identity(ident_index, seed=world.seed)
    split = clip_split(ident_index)
    clip = generate_clip(int(np.random.default_rng([world.seed, index]).integers(2**31)), identity=ident_index,
                         split=split, lip_lag_frames=world.lip_lag_frames)
    record = {
        "clip": np.int32(index),
        "state": clip.state.astype(np.float32),
        "keypoints": geometry.keypoints(ident, clip.state).astype(np.float32),
        "audio": pcm16(clip.audio),
        "identity": np.int32(ident_index),
        "identity_vector": ident.to_vector().astype(np.float32),
        "audio_flag": np.int32(clip.audio_flag),
        "kind": clip.kind.encode(),
        "label": clip.label.encode(),
        "emotion": np.int32(clip.emotion),
        "intensity": np.int32(clip.intensity),
        "au_active": np.asarray(clip.au_active, bool),
        "instructions": json.dumps(list(clip.instructions)).encode(),
        "events": json.dumps(clip.events, default=json_default).encode(),
        "split": split.encode(),
    }
    if world.frame_size:
        from avatarjax.data.synthface.render import render_frames

        frames = render_frames(ident, clip.state, size=world.frame_size)
        record["frames"] = np.array([cv2.imencode(".png", f[..., ::-1])[1].tobytes() for f in frames], dtype=object)
    return record


def pcm16(wav: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 PCM (clipped)."""
    return np.round(np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)


def audio_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1]."""
    return np.asarray(pcm, np.float32) / 32767.0


def json_default(value):
    """``json.dumps(..., default=json_default)``: numpy arrays and scalars as plain JSON values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def decode_frames(encoded) -> np.ndarray:
    """PNG bytes [T] -> uint8 RGB [T, H, W, 3]."""
    return np.stack([cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] for b in encoded])


def text_field(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ProceduralSource:
    """Random-access source generating the clips of ``world`` of one split on demand (no build step).

    Index ``i`` of the split maps to the i-th clip whose identity belongs to the split.
    """

    def __init__(self, world: WorldConfig, split: str = "train"):
        self.world = world
        self.split = split
        self._indices = [i for i in range(world.num_clips)
                         if clip_split(clip_identity(world, i)) == split]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict:
        return make_record(self.world, self._indices[index])
