"""Tokenize a synthface dataset once into ArrayRecord files for speech-video LM training.

``avatarjax data build synthface_tokens --checkpoint VIDEO_TOKENIZER --out DIR [--audio_codec DAC] [--splits
train,eval] [--clips N] [--chunk F] [--dtype float16] [--config.data.synthface.num_clips=...]`` writes

- ``DIR/{split}.array_record``: one record per clip, a msgpack dict (``flax.serialization``) with
  ``video_latents`` ``[frames, K, D]`` (one latent set per 25 fps synthface frame), ``audio_codes``
  ``[n_codebooks, code_frames]`` int32 when an audio codec is given, and the clip's ``clip``, ``identity``,
  ``emotion``, ``intensity``, ``audio_flag``, ``kind``, ``label``, ``split``;
- ``DIR/tokens.json``: what made them (checkpoints, tokenizer config, world, latent shape, frame rates, counts).

``TokenSource(DIR, split)`` reads them back with random access (a grain data source).

Video latents: the clip's frames (stored PNGs when the dataset holds them at the tokenizer's size, else rendered
from the state track) are encoded in consecutive windows of ``chunk`` frames (default: the tokenizer's training
clip length, so every latent sees the temporal context it was trained with). The last window is padded with
black frames to keep one compiled shape; the temporal Transformer is causal, so padding after a frame never
changes its latents.

The audio hook is ``AudioEncoder`` (``wav float32 [samples] at 16 kHz -> codes int32 [n_codebooks,
code_frames]``): ``dac_audio_encoder`` builds one from a DAC checkpoint (``avatarjax.codecs.dac``) and is where
audio codes enter the records; any other callable of that signature works (``tokenize_split(...,
encode_audio=...)``).

Layering: the record writing and reading here take plain callables (arrays in, arrays out); only the command
functions load models, importing them lazily as the CLI does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from avatarjax.data.commands import DatasetCommands
from avatarjax.data.synthface.records import audio_float, decode_frames, text_field
from avatarjax.data.synthface.schema import FPS, SAMPLE_RATE
from avatarjax.errors import AvatarError, DataError

META_FILE = "tokens.json"
RECORD_FIELDS = ("clip", "identity", "emotion", "intensity", "audio_flag")
TEXT_FIELDS = ("kind", "label", "split")

VideoEncoder = Callable[[np.ndarray], np.ndarray]  # uint8 frames [T, S, S, 3] -> latents [T, K, D]
AudioEncoder = Callable[[np.ndarray], np.ndarray]  # float32 wav [samples] at 16 kHz -> codes int32 [Q, F]


def record_path(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"{split}.array_record"


def serialize(example: dict) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize(example)


def deserialize(data: bytes) -> dict:
    from flax import serialization

    return serialization.msgpack_restore(data)


def clip_frames(record: dict, frame_size: int) -> np.ndarray:
    """uint8 ``[T, S, S, 3]``: the record's stored frames when they have size ``frame_size``, else rendered."""
    if "frames" in record and len(record["frames"]):
        frames = decode_frames(record["frames"])
        if frames.shape[1] == frame_size:
            return frames
    from avatarjax.data.synthface import identity as identity_lib
    from avatarjax.data.synthface.render import render_frames

    ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
    return render_frames(ident, np.asarray(record["state"]), size=frame_size)


def encode_in_chunks(encode: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, chunk: int) -> np.ndarray:
    """``encode`` (``[1, chunk, ...] -> [1, chunk, ...]``) over consecutive windows of ``frames`` ``[T, ...]``; the
    last window is padded with zeros (one compiled shape) and the padding's outputs dropped."""
    t = len(frames)
    padded = np.concatenate([frames, np.zeros((-t % chunk,) + frames.shape[1:], frames.dtype)])
    out = [np.asarray(encode(padded[None, i:i + chunk]))[0] for i in range(0, len(padded), chunk)]
    return np.concatenate(out)[:t]


def tokenize_record(record: dict, encode_video: VideoEncoder, frame_size: int,
                    encode_audio: AudioEncoder | None = None, dtype=np.float32) -> dict:
    """One clip record -> the token record (see the module docstring)."""
    out = {name: int(np.asarray(record[name])) for name in RECORD_FIELDS if name in record}
    out.update({name: text_field(record[name]) for name in TEXT_FIELDS if name in record})
    out["video_latents"] = np.asarray(encode_video(clip_frames(record, frame_size)), dtype)
    if encode_audio is not None:
        # -- the DAC hook: audio codes of the clip's speech (16 kHz synthface audio) --
        out["audio_codes"] = np.asarray(encode_audio(audio_float(record["audio"])), np.int32)
    return out


def tokenize_split(records: Iterable[dict], path: str | Path, encode_video: VideoEncoder, frame_size: int,
                   encode_audio: AudioEncoder | None = None, dtype=np.float32, total: int | None = None) -> int:
    """Write the token records of ``records`` to the ArrayRecord file ``path``; returns how many. ``total`` sizes
    the progress bar (shown on a terminal only)."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    count = 0
    try:
        for record in tqdm(records, total=total, desc=f"tokenize {path.stem}", unit="clip", disable=None):
            writer.write(serialize(tokenize_record(record, encode_video, frame_size, encode_audio, dtype)))
            count += 1
    finally:
        writer.close()
    tmp.replace(path)  # a finished file only: an interrupted run leaves no half-written split behind
    return count


class TokenSource:
    """Random-access token records of one split (a grain ``RandomAccessDataSource``): dicts of numpy arrays."""

    def __init__(self, directory: str | Path, split: str):
        import grain

        path = record_path(directory, split)
        if not path.exists():
            raise DataError(f"no token records '{path}': write them with `avatarjax data build synthface_tokens "
                            f"--checkpoint VIDEO_TOKENIZER --out {directory} --splits {split}`")
        self.meta = json.loads((Path(directory) / META_FILE).read_text())
        self._source = grain.sources.ArrayRecordDataSource([str(path)])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return deserialize(self._source[index])


# ------------------------------------------------------------------------------------------------ model hooks
def video_encoder(checkpoint: str | Path, overrides: list[str], chunk: int = 0):
    """(VideoEncoder over uint8 frames, the tokenizer's config, the chunk used) from a ``video_tokenizer``
    training workdir or export directory."""
    import jax.numpy as jnp

    from avatarjax.codecs import video_tokenizer as vt
    from avatarjax.train.export import load_model

    model, cfg = load_model(checkpoint, overrides=overrides)
    if cfg.task != "video_tokenizer":
        raise AvatarError(f"'{checkpoint}' holds a '{cfg.task}' model: pass a video_tokenizer run or export")
    encode = vt.jitted_encode(model)
    chunk = chunk or cfg.data.clip_frames
    run = lambda x: encode(jnp.asarray(x, jnp.float32) / 127.5 - 1.0)
    return (lambda frames: encode_in_chunks(run, frames, chunk)), cfg, chunk


def dac_audio_encoder(checkpoint: str | Path) -> tuple[AudioEncoder, dict]:
    """The DAC hook: (AudioEncoder, info) from a DAC checkpoint: a ``dac`` training workdir / export, or the
    output of ``avatarjax convert dac`` (the official 44.1 kHz weights)."""
    from avatarjax.codecs import dac
    from avatarjax.train.export import is_export, load_model

    path = Path(checkpoint)
    if (path / "checkpoints").is_dir() or is_export(path):
        model, cfg = load_model(path)
    else:
        from avatarjax.checkpoint.convert import load_converted

        model, _, _ = load_converted(path)
    if not isinstance(model, dac.DAC):
        raise AvatarError(f"'{checkpoint}' does not hold a DAC codec: pass a dac training run, export or converted "
                          "checkpoint")
    encode, info = audio_encoder_from_dac(model)
    return encode, {"checkpoint": str(path.absolute()), **info}


def audio_encoder_from_dac(model) -> tuple[AudioEncoder, dict]:
    """(AudioEncoder, info) over a loaded ``avatarjax.codecs.dac.DAC``: synthface audio (16 kHz) is resampled to
    the codec's rate and encoded with all its codebooks."""
    from avatarjax.codecs import dac
    from avatarjax.data.transforms import resample_audio

    cfg = model.cfg
    encode = dac.jit_encode(model)

    def run(wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, np.float32)
        if cfg.sample_rate != SAMPLE_RATE:
            wav = resample_audio(wav, SAMPLE_RATE, cfg.sample_rate).astype(np.float32)
        return np.asarray(encode(wav[None]))[0]

    return run, {"sample_rate": cfg.sample_rate, "n_codebooks": cfg.n_codebooks,
                 "codebook_size": cfg.codebook_size, "frame_rate": cfg.frame_rate}


# ------------------------------------------------------------------------------------------------ commands
def _split_config(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return rest, overrides


def tokenize_command(argv: list[str]) -> dict:
    """``--checkpoint W --out DIR [--audio_codec DAC] [--splits train,eval] [--clips N] [--chunk F] [--dtype D]
    [--config.data.synthface.*=...]`` (overrides apply to the tokenizer's saved config, e.g. which world)."""
    from avatarjax.data.synthface.loader import source as synthface_source

    rest, overrides = _split_config(argv)
    p = argparse.ArgumentParser(prog="avatarjax data build synthface_tokens")
    p.add_argument("--checkpoint", required=True, help="a video_tokenizer training workdir or export directory")
    p.add_argument("--out", required=True)
    p.add_argument("--audio_codec", default="", help="a DAC run, export or converted checkpoint (adds audio_codes)")
    p.add_argument("--splits", default="train,eval")
    p.add_argument("--clips", type=int, default=0, help="clips per split (0: all)")
    p.add_argument("--chunk", type=int, default=0, help="frames per encoder window (0: the training clip length)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    ns = p.parse_args(rest)
    encode_video, cfg, chunk = video_encoder(ns.checkpoint, overrides, ns.chunk)
    encode_audio, audio_info = dac_audio_encoder(ns.audio_codec) if ns.audio_codec else (None, None)
    world = cfg.data.synthface
    out = Path(ns.out)
    counts, t0 = {}, time.perf_counter()
    for split in [s for s in ns.splits.split(",") if s]:
        src = synthface_source(world, split)
        n = len(src) if ns.clips <= 0 else min(ns.clips, len(src))
        counts[split] = tokenize_split((src[i] for i in range(n)), record_path(out, split), encode_video,
                                       cfg.model.frame_size, encode_audio, np.dtype(ns.dtype), total=n)
    meta = {"video_tokenizer": str(Path(ns.checkpoint).absolute()), "tokenizer_config": dataclasses.asdict(cfg.model),
            "world": dataclasses.asdict(world),
            "latent_shape_per_frame": [cfg.model.num_latent_tokens, cfg.model.latent_dim],
            "video_fps": FPS, "chunk_frames": chunk, "dtype": ns.dtype, "audio_codec": audio_info, "clips": counts}
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return {"out": str(out.absolute()), "clips": counts, "seconds": round(time.perf_counter() - t0, 1),
            "files": [str(record_path(out, s).absolute()) for s in counts],
            "audio_codes": audio_info is not None}


def info_command(argv: list[str]) -> dict:
    """``--out DIR``: the metadata of a tokenized dataset and the shapes of its first record per split."""
    p = argparse.ArgumentParser(prog="avatarjax data info synthface_tokens")
    p.add_argument("--out", required=True)
    ns = p.parse_args(argv)
    meta_path = Path(ns.out) / META_FILE
    if not meta_path.exists():
        raise DataError(f"no {META_FILE} in '{ns.out}': tokenize with `avatarjax data build synthface_tokens`")
    meta = json.loads(meta_path.read_text())
    first = {}
    for split in meta["clips"]:
        src = TokenSource(ns.out, split)
        if len(src):
            first[split] = {k: list(np.shape(v)) for k, v in src[0].items() if np.ndim(v)}
    return {**meta, "first_record_shapes": first}


TOKENS_COMMANDS = DatasetCommands(build=tokenize_command, info=info_command, tokenize=tokenize_command)
