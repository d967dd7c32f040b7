"""Write synthface dyadic sessions to disk in a REACT-style layout (for PFLPosNet and reaction generators).

Layout under ``OUT``::

    index.json                              sessions per split, with the world config
    <split>/<session>/meta.json             identities, seed, per-reaction mirroring delays, speaker pauses
    <split>/<session>/speaker/3dmm.npy      float32 [T, 58]  (52 expression + 3 rotation + 3 translation)
    <split>/<session>/speaker/emotion.csv   [T, 25] with a header (15 AUs, valence, arousal, 8 expressions)
    <split>/<session>/speaker/state.npy     float32 [T, 24]  the exact synthface state (ground truth)
    <split>/<session>/speaker/audio.wav     16 kHz mono PCM
    <split>/<session>/listener/reaction_XX/{3dmm.npy, emotion.csv, state.npy}   one folder per reaction

REACT clips are 30 s at 25 fps (751 frames); ``num_frames`` defaults to that. Sessions whose speaker identity
is held out form the ``val`` split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import soundfile
from tqdm.auto import tqdm

from avatarjax.config import dataclass_from_overrides
from avatarjax.data.synthface import identity as identity_lib, react
from avatarjax.data.synthface.dyadic import generate_session
from avatarjax.data.synthface.records import json_default
from avatarjax.data.synthface.schema import SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class DyadicConfig:
    num_sessions: int = 20
    seed: int = 0
    num_frames: int = 751
    num_reactions: int = 10
    num_identities: int = 200


def _identities(cfg: DyadicConfig, index: int) -> tuple[int, int]:
    rng = np.random.default_rng([cfg.seed, index, 11])
    speaker, listener = rng.choice(cfg.num_identities, size=2, replace=False)
    return int(speaker), int(listener)


def _write_track(folder: Path, state: np.ndarray, emotion_probs: np.ndarray | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "3dmm.npy", react.to_react_coefficients(state).astype(np.float32))
    np.save(folder / "state.npy", state.astype(np.float32))
    attributes = react.to_react_attributes(state, emotion_probs)
    header = ",".join(react.ATTRIBUTE_NAMES)
    np.savetxt(folder / "emotion.csv", attributes, delimiter=",", header=header, comments="", fmt="%.5f")


def export_sessions(out: str | Path, cfg: DyadicConfig) -> dict:
    out = Path(out)
    index: dict[str, list[str]] = {"train": [], "val": []}
    for n in tqdm(range(cfg.num_sessions), desc="dyadic sessions", unit="session", disable=None):
        speaker_id, listener_id = _identities(cfg, n)
        split = "val" if identity_lib.is_heldout(speaker_id) else "train"
        session = generate_session(int(np.random.default_rng([cfg.seed, n]).integers(2**31)), speaker_id,
                                   listener_id, cfg.num_frames, cfg.num_reactions,
                                   split="eval" if split == "val" else "train")
        name = f"session_{n:05d}"
        folder = out / split / name
        _write_track(folder / "speaker", session.speaker.state, react.emotion_probs_from_clip(session.speaker))
        soundfile.write(folder / "speaker" / "audio.wav", session.speaker.audio, SAMPLE_RATE, subtype="PCM_16")
        for k, listener in enumerate(session.listeners):
            _write_track(folder / "listener" / f"reaction_{k:02d}", listener.state)
        meta = {"speaker_identity": speaker_id, "listener_identity": listener_id, "seed": session.seed,
                "reaction_delays_frames": [int(d) for d in session.reaction_delays_frames],
                "speaker_label": session.speaker.label, "pauses": session.pauses}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=json_default))
        index[split].append(name)
    (out / "index.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), **index}, indent=1))
    return {"out": str(out.absolute()), "train": len(index["train"]), "val": len(index["val"])}


def build(argv: list[str]) -> dict:
    """``avatarjax data build synthface_dyadic --out DIR [--config.num_sessions=N ...]``."""
    rest = [a for a in argv if not a.startswith("--config.")]
    overrides = [a for a in argv if a.startswith("--config.")]
    p = argparse.ArgumentParser(prog="avatarjax data build synthface_dyadic")
    p.add_argument("--out", required=True)
    ns = p.parse_args(rest)
    return export_sessions(ns.out, dataclass_from_overrides(DyadicConfig, overrides))
