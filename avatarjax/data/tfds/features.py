"""Optional pre-computed features written beside the clips by the real-dataset builders (``--config.features``).

``--config.features=wav2vec2:HF_DIR,motion_vae:CKPT,dac:CKPT,video_tokenizer:CKPT`` (any subset, any order;
also ``wav2vec2_hidden:HF_DIR``) makes the Beam per-clip transform also run trained models on every segment it
writes; their outputs become extra fields of the same record. Every field is time-major (its first axis runs
over time), aligned with the segment's ``T`` frames at 25 fps and its ``audio`` ``[T * 640]`` at 16 kHz:

============================  ============================  =====================================================
spec                          record fields                 shape and meaning
============================  ============================  =====================================================
``wav2vec2:HF_DIR``           ``wav2vec2``                  float32 ``[2T, F]``: InstructAvatar's audio front-end
                                                            (``train.objectives.instruct_avatar.AudioFrontend``):
                                                            the wav2vec2 CNN feature encoder's ``F``-d features
                                                            (512 for the released models) at 50 Hz; rows 2t, 2t+1
                                                            belong to frame t. HF_DIR: a local Hugging Face
                                                            wav2vec2 directory (``save_pretrained``).
``wav2vec2_hidden:HF_DIR``    ``wav2vec2_hidden``           float32 ``[2T, H]``: the wav2vec2 Transformer's last
                                                            hidden state at 50 Hz (rows 2t, 2t+1: frame t)
``motion_vae:CKPT``           ``motion_latent``             float32 ``[T, m*m*C]``: the motion VAE's per-frame
                                                            motion posterior mean, flattened (raw: the generator
                                                            standardises with ``motion_latent_stats.json``)
                              ``appearance_latent``         float32 ``[a, a, C]``: the appearance posterior mean of
                                                            the clip's first frame (the same in every segment)
``dac:CKPT``                  ``dac_codes``                 int32 ``[F_c, Q]``: DAC codes of the segment's audio
                                                            resampled to the codec's rate, code frame first;
                                                            ``F_c = ceil(T * rate / 25 / hop)``; code j covers
                                                            codec samples ``[j hop, (j + 1) hop)``
                              ``dac_frame_rate``            float32: code frames per second (``rate / hop``)
``video_tokenizer:CKPT``      ``video_latents``             float32 ``[T, K, D]``: the video tokenizer's latents,
                                                            encoded in windows of its training clip length
============================  ============================  =====================================================

CKPT is a training ``--workdir`` or an ``avatarjax export`` directory of the matching task (a DAC may also be
the output of ``avatarjax convert dac``); models are loaded with the project's loaders
(``train.export.load_model``, ``encoders.wav2vec2.from_pretrained``, ``data.tokenize``'s codec hooks). Frames
are the stored crops, decoded and resized to the model's ``frame_size``; audio is the stored (loudness
normalised) 16 kHz track.

Models are loaded once per process (:func:`extractor` is cached), i.e. once per Beam worker, and run jitted on
the default JAX device; inputs are padded to a few fixed shapes (audio to multiples of 1.28 s, frames in
fixed-size chunks) so that clips of every length reuse a handful of compiled programs. The driver loads them
too, before anything is written: a missing or incompatible checkpoint fails there with one ``ConfigError``
naming the path and the fix. The build's config name carries the feature kinds, and its hash a fingerprint of
each checkpoint (file sizes and modification times), so a retrained checkpoint gives a new build.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import numpy as np

from avatarjax.errors import ConfigError, did_you_mean

KINDS = ("wav2vec2", "wav2vec2_hidden", "motion_vae", "dac", "video_tokenizer")
SHORT = {"wav2vec2": "w2v", "wav2vec2_hidden": "w2vh", "motion_vae": "mvae", "dac": "dac", "video_tokenizer": "vtok"}
FPS = 25
SAMPLES_PER_FRAME = 640
AUDIO_BUCKET = 32 * SAMPLES_PER_FRAME  # 1.28 s: audio is zero-padded to a multiple of this (few compiled shapes)
FRAME_CHUNK = 16  # frames per motion VAE call
W2V_FIX = ("pass a local Hugging Face wav2vec2 directory (config.json + model.safetensors, e.g. "
           "facebook/wav2vec2-large-xlsr-53 re-saved with save_pretrained)")
FIXES = {
    "wav2vec2": W2V_FIX,
    "wav2vec2_hidden": W2V_FIX,
    "motion_vae": "pass the --workdir of a motion VAE training run (`avatarjax train --config "
                  "configs/motion_vae/synthface_small.py --workdir W`) or its `avatarjax export` directory",
    "dac": "pass the --workdir of a DAC training run (`avatarjax train --config configs/dac/synthface_small.py "
           "--workdir W`), its `avatarjax export` directory or the output of `avatarjax convert dac`",
    "video_tokenizer": "pass the --workdir of a video tokenizer training run (`avatarjax train --config "
                       "configs/video_tokenizer/synthface_small.py --workdir W`) or its `avatarjax export` "
                       "directory",
}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    kind: str
    path: str


def parse(text: str) -> tuple[FeatureSpec, ...]:
    """``"kind:path,kind:path"`` -> specs (paths made absolute); ``ConfigError`` for unknown or repeated kinds."""
    specs, seen = [], set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, sep, path = item.partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise ConfigError(f"--config.features: unknown feature '{kind}' in '{item}': {did_you_mean(kind, KINDS)} "
                              f"(each item is KIND:PATH)")
        if not sep or not path.strip():
            raise ConfigError(f"--config.features: '{item}' names no checkpoint: write {kind}:PATH")
        if kind in seen:
            raise ConfigError(f"--config.features names '{kind}' twice: keep one {kind}:PATH")
        seen.add(kind)
        specs.append(FeatureSpec(kind, str(Path(path.strip()).expanduser().absolute())))
    return tuple(sorted(specs, key=lambda s: KINDS.index(s.kind)))


def name_tag(text: str) -> str:
    """Short kinds for the build's config name, e.g. ``w2v_mvae``; "" without features."""
    return "_".join(SHORT[s.kind] for s in parse(text)) if text else ""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".msgpack", ".npz")


def fingerprint(text: str) -> str:
    """Identifies the checkpoints' contents: the text of their top-level ``.json`` files, the sizes and times of
    their weight files and of a workdir's finished ``checkpoints/<step>`` folders. Logs and files written beside
    a checkpoint later (TensorBoard events, ``motion_latent_stats.json``) do not count."""
    digest = hashlib.sha1()
    for spec in parse(text):
        digest.update(f"{spec.kind}:{spec.path}\n".encode())
        root = Path(spec.path)
        if not root.is_dir():
            digest.update(f"{root.stat().st_size} {root.stat().st_mtime_ns}\n".encode() if root.exists()
                          else b"missing\n")
            continue
        for path in sorted(root.iterdir()):
            if path.suffix == ".json" and path.name != "motion_latent_stats.json" and path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
            elif path.suffix in WEIGHT_SUFFIXES and path.is_file():
                digest.update(f"{path.name} {path.stat().st_size} {path.stat().st_mtime_ns}\n".encode())
        steps = root / "checkpoints"
        for path in sorted(steps.iterdir()) if steps.is_dir() else ():
            if path.name.isdigit():
                digest.update(f"step {path.name} {path.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ extractors
def _resize(frames: np.ndarray, side: int) -> np.ndarray:
    if frames.shape[1] == side and frames.shape[2] == side:
        return frames
    import cv2

    interp = cv2.INTER_AREA if frames.shape[1] > side else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (side, side), interpolation=interp) for f in frames])


class Wav2Vec2Features:
    """``wav2vec2``: InstructAvatar's host-side audio front-end, reused as is."""

    def __init__(self, path: str):
        from avatarjax.train.objectives.instruct_avatar import AudioFrontend

        self.frontend = AudioFrontend(f"wav2vec2:{path}")

    def fields(self) -> dict:
        import tensorflow_datasets as tfds

        return {"wav2vec2": tfds.features.Tensor(shape=(None, self.frontend.dim), dtype=np.float32)}

    def __call__(self, frames, wav: np.ndarray, state: dict) -> dict:
        return {"wav2vec2": self.frontend.clip_features(wav)}


class Wav2Vec2HiddenFeatures:
    """``wav2vec2_hidden``: the wav2vec2 Transformer's last hidden state at 50 Hz (the contextual features most
    audio-driven portrait models read). Layer-norm checkpoints (large / XLSR) are padded to 1.28 s buckets with an
    attention mask, which leaves the valid frames as an unpadded run gives them; group-norm (base) checkpoints
    normalise over the whole input, so they run unpadded (one compilation per segment length)."""

    def __init__(self, path: str):
        from avatarjax.encoders import wav2vec2

        model, self.cfg = wav2vec2.from_pretrained(path)
        self._forward = wav2vec2.jit_forward(model)
        self._prepare = wav2vec2.prepare_audio

    def fields(self) -> dict:
        import tensorflow_datasets as tfds

        return {"wav2vec2_hidden": tfds.features.Tensor(shape=(None, self.cfg.hidden_size), dtype=np.float32)}

    def __call__(self, frames, wav: np.ndarray, state: dict) -> dict:
        rows = 2 * (len(wav) // SAMPLES_PER_FRAME)
        if self.cfg.feat_extract_norm == "layer":
            values, mask = self._prepare(wav, 16_000, pad_to_multiple_of=AUDIO_BUCKET)
            hidden = self._forward(values, mask).last_hidden_state
        else:
            values, _ = self._prepare(wav, 16_000)
            hidden = self._forward(values).last_hidden_state
        valid = min(rows, int(self.cfg.num_frames(len(wav))))  # frames computed from real samples only
        hidden = np.asarray(hidden[0], np.float32)[:valid]
        if len(hidden) < rows:  # the conv's last frame repeats, as in InstructAvatar's front-end
            hidden = np.concatenate([hidden, np.repeat(hidden[-1:], rows - len(hidden), axis=0)])
        return {"wav2vec2_hidden": hidden}


class MotionVAEFeatures:
    """``motion_vae``: per-frame motion latents and the clip's appearance latent (posterior means)."""

    def __init__(self, path: str):
        import jax
        from flax import nnx

        from avatarjax.codecs import motion_vae as mv
        from avatarjax.train.export import load_model

        model, cfg = load_model(path)
        if cfg.task != "motion_vae":
            raise ConfigError(f"it holds a '{cfg.task}' model, not a motion VAE")
        self.cfg = model.cfg
        graphdef, params = nnx.split(model)

        @jax.jit
        def encode(params, frames):
            vae = nnx.merge(graphdef, params)
            x = mv.to_model_range(frames)
            return vae.encode_appearance(x)[0], mv.flatten_motion(vae.encode_motion(x)[0])

        self._encode = lambda frames: encode(params, frames)

    def fields(self) -> dict:
        import tensorflow_datasets as tfds

        a, c = self.cfg.appearance_size, self.cfg.latent_channels
        return {"motion_latent": tfds.features.Tensor(shape=(None, self.cfg.motion_dim), dtype=np.float32),
                "appearance_latent": tfds.features.Tensor(shape=(a, a, c), dtype=np.float32)}

    def __call__(self, frames, wav, state: dict) -> dict:
        frames = _resize(frames(), self.cfg.frame_size)
        motion = []
        for i in range(0, len(frames), FRAME_CHUNK):
            part = frames[i:i + FRAME_CHUNK]
            padded = np.concatenate([part, np.zeros((FRAME_CHUNK - len(part),) + part.shape[1:], part.dtype)])
            app, mot = self._encode(padded)
            motion.append(np.asarray(mot)[:len(part)])
            if "appearance_latent" not in state:  # the clip's first frame (its first segment's first chunk)
                state["appearance_latent"] = np.asarray(app[0], np.float32)
        return {"motion_latent": np.concatenate(motion).astype(np.float32),
                "appearance_latent": state["appearance_latent"]}


class DacFeatures:
    """``dac``: codes of the segment's audio (``data.tokenize``'s DAC hook: resampled to the codec's rate)."""

    def __init__(self, path: str):
        from avatarjax.data.tokenize import dac_audio_encoder

        self._encode, self.info = dac_audio_encoder(path)
        self.hop = round(self.info["sample_rate"] / self.info["frame_rate"])

    def fields(self) -> dict:
        import tensorflow_datasets as tfds

        return {"dac_codes": tfds.features.Tensor(shape=(None, self.info["n_codebooks"]), dtype=np.int32),
                "dac_frame_rate": np.float32}

    def code_frames(self, samples_16k: int) -> int:
        return math.ceil(math.ceil(samples_16k * self.info["sample_rate"] / 16_000) / self.hop)

    def __call__(self, frames, wav: np.ndarray, state: dict) -> dict:
        padded = np.zeros(-(-len(wav) // AUDIO_BUCKET) * AUDIO_BUCKET, np.float32)
        padded[:len(wav)] = wav
        codes = np.asarray(self._encode(padded), np.int32)[:, :self.code_frames(len(wav))]
        return {"dac_codes": np.ascontiguousarray(codes.T),
                "dac_frame_rate": np.float32(self.info["frame_rate"])}


class VideoTokenizerFeatures:
    """``video_tokenizer``: per-frame latents (``data.tokenize``'s encoder: windows of the training clip length)."""

    def __init__(self, path: str):
        from avatarjax.data.tokenize import video_encoder

        self._encode, cfg, self.chunk = video_encoder(path, [])
        self.cfg = cfg.model

    def fields(self) -> dict:
        import tensorflow_datasets as tfds

        return {"video_latents": tfds.features.Tensor(
            shape=(None, self.cfg.num_latent_tokens, self.cfg.latent_dim), dtype=np.float32)}

    def __call__(self, frames, wav, state: dict) -> dict:
        return {"video_latents": np.asarray(self._encode(_resize(frames(), self.cfg.frame_size)), np.float32)}


EXTRACTORS = {"wav2vec2": Wav2Vec2Features, "wav2vec2_hidden": Wav2Vec2HiddenFeatures, "motion_vae": MotionVAEFeatures,
              "dac": DacFeatures, "video_tokenizer": VideoTokenizerFeatures}


@functools.lru_cache(maxsize=None)
def extractor(kind: str, path: str):
    """The loaded extractor of one spec, once per process (Beam workers and the driver each load it once)."""
    if not Path(path).exists():
        raise ConfigError(f"--config.features: the {kind} checkpoint '{path}' does not exist; nothing was written."
                          f"\nfix: {FIXES[kind]}")
    try:
        return EXTRACTORS[kind](path)
    except Exception as err:  # noqa: BLE001 - whatever the loaders raise, the fix is the same: another path
        raise ConfigError(f"--config.features: the {kind} checkpoint '{path}' cannot be used ({err}); nothing was "
                          f"written.\nfix: {FIXES[kind]}") from err


def record_features(text: str) -> dict:
    """The tfds features the specs add to a record (loads, hence checks, every checkpoint in this process)."""
    out = {}
    for spec in parse(text):
        out.update(extractor(spec.kind, spec.path).fields())
    return out


class SegmentFeatures:
    """Picklable: holds the spec text only; the models come from the per-process :func:`extractor` cache.

    ``clip()`` gives the per-clip state (the appearance latent of its first frame); ``__call__(segment, state)``
    the feature fields of one segment (``frames`` encoded crops, ``audio`` int16)."""

    def __init__(self, text: str):
        self.text = text
        parse(text)  # fail in the driver on a malformed spec

    def __bool__(self) -> bool:
        return bool(parse(self.text))

    def clip(self) -> dict:
        return {}

    def __call__(self, segment: dict, state: dict) -> dict:
        from avatarjax.data.synthface.records import audio_float, decode_frames

        decoded = []

        def frames() -> np.ndarray:  # decoded once, only when a video feature asks
            if not decoded:
                decoded.append(decode_frames(segment["frames"]))
            return decoded[0]

        wav = audio_float(segment["audio"])
        out = {}
        for spec in parse(self.text):
            out.update(extractor(spec.kind, spec.path)(frames, wav, state))
        return out
