"""Inputs for the InstructAvatar demo, made by synthface (nothing downloaded): a held-out identity's neutral
portrait and a synthetic utterance.

    python -m avatarjax.pipelines.demo_inputs OUT_DIR [--size 64] [--seconds 4] [--identity N] [--seed S]

writes ``OUT_DIR/portrait.png`` and ``OUT_DIR/speech.wav`` (16 kHz) and prints their paths as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from avatarjax import media
from avatarjax.data.synthface import audio, identity as identity_lib, render, schema


def first_heldout_identity(start: int = 0) -> int:
    index = start
    while not identity_lib.is_heldout(index):
        index += 1
    return index


def make_inputs(out_dir: str | Path, *, size: int = 64, seconds: float = 4.0, identity: int | None = None,
                seed: int = 0) -> dict[str, str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = first_heldout_identity() if identity is None else identity
    ident = identity_lib.sample_identity(index)
    portrait = render.render_frames(ident, schema.neutral_state(1), size=size)[0]
    frames = int(round(seconds * schema.FPS))
    wave, _, _ = audio.synth_speech(np.random.default_rng(seed), frames)
    paths = {"portrait": media.write_image(out_dir / "portrait.png", portrait),
             "speech": media.write_audio(out_dir / "speech.wav", wave, schema.SAMPLE_RATE)}
    return {"identity": index, **{k: str(Path(v).absolute()) for k, v in paths.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m avatarjax.pipelines.demo_inputs")
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--identity", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    print(json.dumps(make_inputs(ns.out_dir, size=ns.size, seconds=ns.seconds, identity=ns.identity, seed=ns.seed)))


if __name__ == "__main__":
    main()
