"""Body of Her's duplex agent: a live speech-video dialogue from the streaming LM and the audio / video tokenizers.

``DuplexAgent(lm_checkpoint).stream(human_audio_chunks, human_video_frames, prompt=...)`` is a generator: for
every 40 ms frame of the human it yields one ``AgentFrame`` of the agent. Frame ``i`` of the agent is computed from
the human's frames ``< i`` only (the LM reads the human's frame ``i - 1``, as the paper's real-time constraint
asks): on receiving the human's frame ``i`` the agent tokenizes the *previous* human frame, runs one jitted
``DuplexSession`` step (fixed shapes, a preallocated KV cache: it compiles once), decodes the agent's video frame
``i`` and the audio of the frame whose codes became complete, and yields them with the time all this took.

Two kinds of LM checkpoints:

- **real tokens** (``data.tokens`` names a ``avatarjax data tokenize synthface_tokens`` directory, ``data.dac`` and
  ``data.video_tokenizer`` the codecs that made it; the LM trained on DAC codes and video-tokenizer latents):
  human audio is encoded by the DAC encoder on the fly (a sliding window of ``audio_context`` frames of left
  context, the newest frame's codes kept), human video by the video tokenizer's encoder (a sliding window of
  ``video_context`` frames: its temporal Transformer is causal, so the newest frame's latents see its past); the
  agent's audio is decoded by the DAC decoder in chunks (each frame's codes with ``audio_context`` frames of left
  context, the newest frame's samples kept) and its video frames by the video tokenizer's decoder.
- **stand-in tokens** (the default ``speech_video`` data: quantised mel-band powers and projected face states):
  the human side goes through ``speech_video.stand_in_audio_codes`` / ``stand_in_video_tokens`` (human video must
  then be given as synthface face states ``[24]``; pixels cannot be tokenized and are left out). The agent's
  audio and video **cannot be decoded to waveforms or pixels**: an ``AgentFrame`` carries the code track and the
  face state recovered from the video tokens (least squares through the fixed projection) instead.

Audio codes per LM frame: the LM's ``num_codebooks`` = DAC codebooks x ``R`` code frames per 40 ms video frame
(``R = sample_rate / 25 / hop``; R = 1 for a 16 kHz DAC with hop 640). ``stack_codes`` orders them codebook-major
(``q = c R + r``) so the coarse codebook's sub-frames get the smallest delays of the delay pattern. With the delay
pattern the complete codes of frame ``i - (Q - 1)`` are known after step ``i``: an ``AgentFrame`` carries the
audio of ``audio_frame = index - (Q - 1)`` (silence before the first complete frame).

Training data from token records (``record_dataset``, used by the ``speech_video`` task when ``data.tokens`` is
set): a record holds one synthface clip (``video_latents [T, K, D]``, ``audio_codes [n, T R]``). A talking or
motion clip is a window where the agent is that face with its own audio and the human is silent; a listening
clip (whose audio is the partner's speech) is a window where the agent listens and the human talks. The records
hold one face per clip, so the human's video is absent in these windows (the learned empty tokens); the agent
then does not feed the human's video either (``uses_human_video``).

Turn-taking evaluation (``evaluate_turn_taking``, the task's ``avatarjax eval``): on held-out synthface dyadic
sessions the agent is streamed twice: (A) the human is the session's speaker, (B) the human is a silent listener.
A frame is *talking* when its energy exceeds a threshold: decoded audio RMS above ``REAL_TALK_DB`` dBFS (real
tokens) or, for stand-in codes, the mean band level (dB) the codes quantise above the silence code's plus
``STAND_IN_TALK_MARGIN_DB``. Reported: ``quiet_while_human_speaks`` (A: fraction of the human's talking frames in
which the agent is quiet) and ``talks_when_human_silent`` (B: fraction of frames in which the agent talks) for the
model, for the training data itself (the agent's own track in the same sessions) and for a no-context baseline
(an agent that ignores the human and talks at the data's marginal rate ``p``: ``1 - p`` and ``p``); ``score`` is
their mean (0.5 for any no-context agent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.data.synthface import schema
from avatarjax.errors import AvatarError, ConfigError, DataError
from avatarjax.models import speech_video_lm as svlm
from avatarjax.train.objectives import speech_video as sv

FPS = schema.FPS
REAL_TALK_DB = -40.0  # decoded audio RMS (dBFS) above which a frame counts as talking (synthface speech
# frames: > -30; pauses: ~-72 raw, ~-50 through a 3-minute tiny DAC)
# stand-in codes: mean band level (dB) above the silence code's (speech frames: >= +43 dB, pauses: ~+16 dB; a mean,
# not a sum, so that one loud band sampled among silent ones does not count as speech)
STAND_IN_TALK_MARGIN_DB = 25.0


# ------------------------------------------------------------------------------------------- codes per frame


def codes_per_frame(sample_rate: int, hop: int, fps: int = FPS) -> int:
    """DAC code frames per video frame (``R``); the codec must tile a 40 ms frame with whole hops."""
    spf = sample_rate / fps
    if spf != int(spf) or int(spf) % hop:
        raise ConfigError(f"a DAC at {sample_rate} Hz with hop {hop} does not tile a {1000 / fps:.0f} ms video frame "
                          f"({spf:g} samples) with whole code frames: train the DAC with encoder/decoder rates whose "
                          f"product divides {spf:g} (e.g. rates (8, 8, 10) for hop 640 at 16 kHz)")
    return int(spf) // hop


def stack_codes(codes: np.ndarray, r: int) -> np.ndarray:
    """DAC codes ``[n, F]`` -> per video frame ``[F // r, n r]`` (codebook-major: ``q = c r + j``)."""
    n, f = codes.shape
    t = f // r
    return np.asarray(codes[:, :t * r]).reshape(n, t, r).transpose(1, 0, 2).reshape(t, n * r)


def unstack_codes(frames: np.ndarray, n: int, r: int) -> np.ndarray:
    """Inverse of ``stack_codes``: ``[T, n r]`` -> ``[n, T r]``."""
    t = frames.shape[0]
    return np.asarray(frames).reshape(t, n, r).transpose(1, 0, 2).reshape(n, t * r)


def fit_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB frame ``[H, W, 3]`` (uint8) centre-cropped to a square and resized to ``[size, size, 3]``."""
    import cv2

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise DataError(f"a human video frame must be RGB [H, W, 3], got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise DataError(f"a human video frame must be uint8 RGB, got {frame.dtype}: convert with "
                        "np.clip(x, 0, 255).astype(np.uint8)")
    h, w = frame.shape[:2]
    if (h, w) == (size, size):
        return frame
    s = min(h, w)
    crop = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)


def _db(x: float) -> float:
    return float(10 * np.log10(max(x, 1e-12)))


# ------------------------------------------------------------------------------------------------ tokenizers


class _Traced:
    """``jax.jit`` of ``fn`` that reports how many executables it compiled."""

    def __init__(self, fn):
        self._jit = jax.jit(fn)

    def __call__(self, *args):
        return self._jit(*args)

    @property
    def compiled(self) -> int:
        """Executables in the jit cache (a retrace or a recompile for other shardings each add one)."""
        return self._jit._cache_size()


class StandInTokenizers:
    """The ``speech_video`` task's stand-in tokens: 16 kHz audio -> quantised mel-band powers ``[Q]``; face
    states ``[24]`` -> projected tokens ``[K, D]``. Nothing decodes back to audio or pixels."""

    real = False

    def __init__(self, cfg):
        net = cfg.model.net
        self.cfg = cfg
        self.q, self.v, self.k, self.d = net.num_codebooks, net.codebook_size, net.video_tokens, net.video_dim
        self.sample_rate, self.samples_per_frame = schema.SAMPLE_RATE, schema.SAMPLES_PER_FRAME
        self.frame_size = None
        self.code_range = tuple(cfg.data.code_range)
        self._pinv = np.linalg.pinv(sv._video_projection(self.k, self.d))  # [K D, 21]
        self.silence = self.encode_audio(np.zeros(self.samples_per_frame, np.float32))
        self.silence_db = self.code_energy_db(self.silence)

    def reset(self) -> None:
        pass

    def encode_audio(self, chunk: np.ndarray) -> np.ndarray:
        return sv.stand_in_audio_codes(chunk, 1, self.q, self.v, self.code_range)[0]

    def encode_video(self, frame) -> np.ndarray | None:
        """A face state ``[24]`` -> tokens ``[K, D]``; pixels cannot be tokenized (None: human video absent)."""
        frame = np.asarray(frame)
        if frame.shape != (schema.NUM_CHANNELS,):
            return None
        return sv.stand_in_video_tokens(frame[None].astype(np.float32), self.k, self.d)[0]

    def face_state(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens ``[K, D]`` -> the face state ``[24]`` they project (least squares; translation channels 0)."""
        scaled = np.clip(np.asarray(tokens, np.float64).reshape(-1) @ self._pinv, -1.0, 1.0)
        state = schema.neutral_state(1)[0]
        lo, hi = schema.LOW[sv.VIDEO_CHANNELS], schema.HIGH[sv.VIDEO_CHANNELS]
        state[sv.VIDEO_CHANNELS] = (scaled + 1) / 2 * (hi - lo) + lo
        return schema.clip_to_range(state)

    def code_energy_db(self, codes: np.ndarray) -> float:
        """Mean band level (dB) that stand-in codes ``[Q]`` quantise."""
        lo, hi = self.code_range
        return float(np.mean(10.0 * (lo + np.asarray(codes, np.float64) / (self.v - 1) * (hi - lo))))

    def talking(self, codes: np.ndarray, audio: np.ndarray | None) -> bool:
        return self.code_energy_db(codes) > self.silence_db + STAND_IN_TALK_MARGIN_DB

    def decode_audio(self, codes: np.ndarray) -> np.ndarray | None:
        return None

    def decode_video(self, tokens: np.ndarray) -> np.ndarray | None:
        return None

    @property
    def compilations(self) -> dict[str, int]:
        return {}


class CodecTokenizers:
    """A trained DAC and video tokenizer, jitted with fixed shapes (each function compiles once).

    ``audio_context`` frames of left context for the DAC encoder and decoder windows, ``video_context`` frames
    (the newest included) for the video tokenizer's causal encoder."""

    real = True

    def __init__(self, dac_model, video_model, *, audio_context: int = 4, video_context: int = 4, fps: int = FPS):
        dc, vc = dac_model.cfg, video_model.cfg
        self.sample_rate = dc.sample_rate
        self.r = codes_per_frame(dc.sample_rate, dc.hop_length, fps)
        self.n, self.codebook_size = dc.n_codebooks, dc.codebook_size
        self.q = self.n * self.r
        self.samples_per_frame = dc.sample_rate // fps
        self.frame_size, self.k, self.d = vc.frame_size, vc.num_latent_tokens, vc.latent_dim
        self.audio_context, self.video_context = audio_context, video_context
        dac_def, dac_state = nnx.split(dac_model)
        vt_def, vt_state = nnx.split(video_model)
        self._dac_state, self._vt_state = dac_state, vt_state
        self._enc_audio = _Traced(lambda s, wav: nnx.merge(dac_def, s).encode(wav))
        self._dec_audio = _Traced(lambda s, codes: nnx.merge(dac_def, s).decode(codes))
        self._enc_video = _Traced(lambda s, frames: nnx.merge(vt_def, s).encode(frames.astype(jnp.float32)
                                                                                 / 127.5 - 1.0))
        self._dec_video = _Traced(lambda s, lat: nnx.merge(vt_def, s).decode(lat))
        self.reset()
        self.silence = self.encode_audio(np.zeros(self.samples_per_frame, np.float32))
        self.reset()

    def reset(self) -> None:
        self._wav = np.zeros(((self.audio_context + 1) * self.samples_per_frame,), np.float32)
        self._frames: np.ndarray | None = None
        self._codes: np.ndarray | None = None

    def encode_audio(self, chunk: np.ndarray) -> np.ndarray:
        """The human's audio of one frame ``[samples_per_frame]`` (codec rate) -> codes ``[n R]``."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)[:self.samples_per_frame]
        chunk = np.pad(chunk, (0, self.samples_per_frame - chunk.shape[0]))
        self._wav = np.concatenate([self._wav[self.samples_per_frame:], chunk])
        codes = np.asarray(self._enc_audio(self._dac_state, self._wav[None]))[0]  # [n, (ctx + 1) R]
        return stack_codes(codes[:, -self.r:], self.r)[0]

    def encode_video(self, frame) -> np.ndarray:
        """The human's RGB frame (any size: centre-cropped and resized) -> latents ``[K, D]``."""
        frame = fit_frame(frame, self.frame_size)
        if self._frames is None:  # the first frame stands in for the (unknown) past
            self._frames = np.repeat(frame[None], self.video_context, axis=0)
        else:
            self._frames = np.concatenate([self._frames[1:], frame[None]])
        return np.asarray(self._enc_video(self._vt_state, self._frames[None]))[0, -1]

    def decode_audio(self, codes: np.ndarray) -> np.ndarray:
        """The agent's complete codes of one frame ``[n R]`` -> its audio ``[samples_per_frame]``."""
        frame = unstack_codes(np.asarray(codes, np.int32)[None], self.n, self.r)  # [n, R]
        if self._codes is None:
            self._codes = np.repeat(unstack_codes(self.silence[None], self.n, self.r), self.audio_context + 1, 1)
        self._codes = np.concatenate([self._codes[:, self.r:], frame], axis=1)
        audio = np.asarray(self._dec_audio(self._dac_state, self._codes[None]))[0]
        return audio[-self.samples_per_frame:].astype(np.float32)

    def decode_video(self, tokens: np.ndarray) -> np.ndarray:
        """Latents ``[K, D]`` -> uint8 RGB ``[S, S, 3]``."""
        x = np.asarray(self._dec_video(self._vt_state, jnp.asarray(tokens, jnp.float32)[None, None]))[0, 0]
        return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)

    def face_state(self, tokens: np.ndarray) -> None:
        return None

    def talking(self, codes: np.ndarray, audio: np.ndarray | None) -> bool:
        return audio is not None and _db(float(np.mean(np.square(audio)))) > REAL_TALK_DB

    @property
    def compilations(self) -> dict[str, int]:
        return {"dac_encode": self._enc_audio.compiled, "dac_decode": self._dec_audio.compiled,
                "video_encode": self._enc_video.compiled, "video_decode": self._dec_video.compiled}


def load_codec(path: str | Path, task: str):
    """A trained codec (``task`` 'dac' or 'video_tokenizer') from a training workdir or export; a DAC may also be
    the output of ``avatarjax convert dac``."""
    from avatarjax.train.export import is_export, load_model

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"the {task} checkpoint '{path}' does not exist: train one (`avatarjax train --config "
                          f"configs/{task}/synthface_small.py --workdir {path}`) or fix data.{_KEYS[task]}")
    if (path / "checkpoints").is_dir() or is_export(path):
        model, cfg = load_model(path)
        if cfg.task != task:
            raise ConfigError(f"'{path}' holds a '{cfg.task}' model, not a {task}: fix data.{_KEYS[task]}")
        return model
    if task == "dac":
        from avatarjax.checkpoint.convert import load_converted

        return load_converted(path)[0]
    raise ConfigError(f"'{path}' is not a {task} training workdir or export: fix data.{_KEYS[task]}")


_KEYS = {"dac": "dac", "video_tokenizer": "video_tokenizer"}


def uses_real_tokens(cfg) -> bool:
    return bool(cfg.data.tokens)


def uses_human_video(cfg) -> bool:
    """Whether the LM saw the human's video in training (the record windows hold none; the stand-in data does
    with probability ``data.human_video_prob``)."""
    return not uses_real_tokens(cfg) and cfg.data.human_video_prob > 0


def make_tokenizers(cfg, dac=None, video_tokenizer=None, **kw):
    """The tokenizers the LM of ``cfg`` was trained with (models or checkpoint paths override the config's)."""
    if not uses_real_tokens(cfg) and dac is None:
        return StandInTokenizers(cfg)
    dac = dac if isinstance(dac, nnx.Module) else load_codec(dac or cfg.data.dac, "dac")
    vt = video_tokenizer
    vt = vt if isinstance(vt, nnx.Module) else load_codec(vt or cfg.data.video_tokenizer, "video_tokenizer")
    tok = CodecTokenizers(dac, vt, **kw)
    net = cfg.model.net
    if (tok.q, tok.codebook_size, tok.k, tok.d) != (net.num_codebooks, net.codebook_size, net.video_tokens,
                                                    net.video_dim):
        raise ConfigError(f"the codecs give {tok.n} codebooks x {tok.r} code frames per video frame of "
                          f"{tok.codebook_size} entries and {tok.k} x {tok.d} video latents, but the LM has "
                          f"num_codebooks={net.num_codebooks}, codebook_size={net.codebook_size}, video_tokens="
                          f"{net.video_tokens}, video_dim={net.video_dim}: set model.net to match the codecs")
    return tok


# ------------------------------------------------------------------------------------------------ the agent


@dataclasses.dataclass
class AgentFrame:
    """One 40 ms frame of the agent.

    index: the agent's frame ``i``; video_tokens ``[K, D]`` of frame i; video uint8 ``[S, S, 3]`` (real tokens) or
    None; face_state ``[24]`` (stand-in tokens) or None; delayed_codes ``[Q]``: this step's sample (codebook q of
    frame ``i - q``); audio_frame: ``i - (Q - 1)``, the frame whose complete codes (``codes [Q]``) and audio
    (``audio [samples_per_frame]`` at the codec's rate; zeros for stand-in tokens) this item carries, < 0 before
    the first complete frame (codes None, audio silent); talking: the agent's audio of ``audio_frame`` is
    speech (None before the first); latency_s: tokenizing the human's frame i - 1, the LM step and decoding."""

    index: int
    video_tokens: np.ndarray
    video: np.ndarray | None
    face_state: np.ndarray | None
    delayed_codes: np.ndarray
    audio_frame: int
    codes: np.ndarray | None
    audio: np.ndarray
    talking: bool | None
    latency_s: float


class DuplexAgent:
    """The live agent around one ``DuplexSession`` (compiled once; ``stream`` resets it for every dialogue).

    ``lm_checkpoint``: a ``speech_video`` training workdir or export, or an already loaded ``(model, cfg)``;
    ``dac`` / ``video_tokenizer``: models or checkpoints replacing the config's ``data.dac`` /
    ``data.video_tokenizer``; ``max_frames``: the longest dialogue (the KV cache size; default
    ``sample.frames``)."""

    def __init__(self, lm_checkpoint, *, dac=None, video_tokenizer=None, overrides: Iterable[str] = (),
                 max_frames: int | None = None, seed: int | None = None, temperature: float | None = None,
                 video_steps: int | None = None, audio_context: int = 4, video_context: int = 4, tokenizers=None):
        if isinstance(lm_checkpoint, tuple):
            system, cfg = lm_checkpoint
        else:
            from avatarjax.train.export import load_model

            system, cfg = load_model(lm_checkpoint, overrides=list(overrides))
        if cfg.task != "speech_video":
            raise AvatarError(f"the LM checkpoint holds a '{cfg.task}' model: pass a speech_video run or export")
        self.cfg = cfg
        self.net = system.net if hasattr(system, "net") else system
        self.lm = self.net.cfg
        sc = cfg.sample
        self.tokenizers = tokenizers or make_tokenizers(cfg, dac, video_tokenizer, audio_context=audio_context,
                                                        video_context=video_context)
        self.max_frames = int(max_frames or sc.frames)
        self.seed = sc.seed if seed is None else seed
        self.session = svlm.DuplexSession(self.net, max_frames=self.max_frames, seed=self.seed,
                                          temperature=sc.temperature if temperature is None else temperature,
                                          video_steps=video_steps or sc.video_steps or None)
        self.notes: list[str] = []
        t0 = time.perf_counter()
        self.warmup()
        self.warmup_s = time.perf_counter() - t0
        if not self.tokenizers.real:
            self.notes.append("stand-in tokens (mel-band codes, projected face states): the agent's audio and video "
                              "cannot be decoded to waveforms or pixels; its code track and face states are written "
                              "instead")

    @property
    def real(self) -> bool:
        return self.tokenizers.real

    @property
    def sample_rate(self) -> int:
        return self.tokenizers.sample_rate

    @property
    def samples_per_frame(self) -> int:
        return self.tokenizers.samples_per_frame

    @property
    def compilations(self) -> dict[str, int]:
        """Compiled executables of every jitted function the stream runs (1 each after any number of frames)."""
        return {"lm_step": self.session._step._cache_size(), **self.tokenizers.compilations}

    def controls(self, prompt: str | None, identity: int | None, human_video: bool) -> dict[str, Any]:
        """StreamControls fields for a prompt (via ``data.text_encoder``), an agent identity and whether the
        human's video is fed; the motion trajectory starts empty (a ``controls_source`` may fill it)."""
        lm, data = self.lm, self.cfg.data
        fields = {"text": np.zeros((1, lm.text_dim), np.float32), "text_mask": np.zeros((1,), bool),
                  "identity": np.full((1,), -1, np.int32),
                  "motion": np.zeros((1, lm.motion_dim), np.float32), "motion_mask": np.zeros((1,), bool),
                  "human_video_mask": np.array([human_video and uses_human_video(self.cfg)]),
                  "agent_video_mask": np.array([self.cfg.model.loss.stage == 2])}
        if prompt:
            if data.text_encoder:
                fields["text"] = sv._text_features(data.text_encoder)(prompt)["text_pooled"][:1].astype(np.float32)
                fields["text_mask"] = np.ones((1,), bool)
            elif "prompt ignored" not in " ".join(self.notes):
                self.notes.append("prompt ignored: the LM was trained without text (data.text_encoder is empty)")
        if identity is not None and identity >= 0:
            if identity >= lm.num_identities:
                raise DataError(f"identity {identity} is outside the LM's {lm.num_identities} identities: pass "
                                f"0..{lm.num_identities - 1} or -1 (none)")
            fields["identity"] = np.full((1,), identity, np.int32)
        return fields

    def warmup(self) -> None:
        """Compile every jitted function of the stream once (a dummy frame), so that no frame of a stream pays for
        compilation."""
        tok, lm = self.tokenizers, self.lm
        self.reset(self.seed, self.controls(None, None, False))
        self.session.step(tok.silence[None], np.zeros((1, lm.video_tokens, lm.video_dim), np.float32))
        tok.decode_video(np.zeros((lm.video_tokens, lm.video_dim), np.float32))
        tok.decode_audio(tok.silence)
        if tok.real:
            tok.encode_video(np.zeros((tok.frame_size, tok.frame_size, 3), np.uint8))
        tok.reset()

    def reset(self, seed: int, controls: dict[str, Any]) -> None:
        s = self.session
        s.reset(seed)
        s.set_controls(**controls)
        self.tokenizers.reset()

    def stream(self, human_audio_chunks: Iterable[np.ndarray], human_video_frames: Iterable[Any] | None = None,
               prompt: str | None = None, identity: int | None = None, seed: int | None = None,
               max_frames: int | None = None, controls_source=None) -> Iterator[AgentFrame]:
        """Yield one ``AgentFrame`` per human frame (``[samples_per_frame]`` audio at the codec's rate; video
        frames uint8 ``[H, W, 3]`` for real tokens or face states ``[24]`` for stand-in tokens, or None). The
        agent's frame ``i`` is yielded on receiving the human's frame ``i`` and depends on frames ``< i`` only.

        ``controls_source`` (e.g. ``planning.dual_system.AsyncPlanner``): called as ``source(i)`` at the boundary
        before frame ``i``; a returned dict of ``StreamControls`` fields (same shapes and dtypes) replaces them from
        frame ``i`` on (None: no change). Its optional ``observe(item, audio_chunk, human_frame)`` is called after
        each frame. Both must return at once: the stream never waits for a planner."""
        tok = self.tokenizers
        video_iter = None if human_video_frames is None else iter(human_video_frames)
        self.reset(self.seed if seed is None else seed, self.controls(prompt, identity, video_iter is not None))
        limit = min(self.max_frames, max_frames or self.max_frames)
        q = self.lm.num_codebooks
        zero_video = np.zeros((self.lm.video_tokens, self.lm.video_dim), np.float32)
        pending: tuple[np.ndarray, Any] | None = None
        silent = np.zeros((self.samples_per_frame,), np.float32)
        observe = getattr(controls_source, "observe", None)
        for i, chunk in enumerate(human_audio_chunks):
            if i >= limit:
                break
            frame = None if video_iter is None else next(video_iter, None)
            t0 = time.perf_counter()
            if controls_source is not None:
                changes = controls_source(i)
                if changes:
                    self.session.set_controls(**changes)
            codes_prev, video_prev = tok.silence, zero_video
            if pending is not None:  # tokenize the human's frame i - 1
                codes_prev = tok.encode_audio(pending[0])
                if pending[1] is not None:
                    encoded = tok.encode_video(pending[1])
                    video_prev = zero_video if encoded is None else encoded
            out = self.session.step(codes_prev[None], video_prev[None])
            tokens = out.video[0]
            video = tok.decode_video(tokens)
            codes = out.codes[0] if bool(out.codes_valid) else None
            audio = tok.decode_audio(codes) if codes is not None else None
            talking = None if codes is None else tok.talking(codes, audio)
            latency = time.perf_counter() - t0
            pending = (chunk, frame)
            item = AgentFrame(index=i, video_tokens=tokens, video=video, face_state=tok.face_state(tokens),
                              delayed_codes=out.delayed_codes[0], audio_frame=i - (q - 1), codes=codes,
                              audio=silent if audio is None else audio, talking=talking, latency_s=latency)
            if observe is not None:
                observe(item, chunk, frame)
            yield item


def latency_report(latencies: list[float], skip_first: bool = True) -> dict[str, float]:
    """Median / p95 / mean per-frame latency (ms), after the first frame when ``skip_first``, and the real-time
    factor (processing time per 40 ms of media; < 1 keeps up with a live stream). ``DuplexAgent`` compiles
    before streaming (``warmup``), so its frames need no skipping."""
    frame_ms = 1000.0 / FPS
    warm = np.asarray(latencies[1:] if skip_first and len(latencies) > 1 else latencies) * 1000.0
    if not warm.size:
        return {}
    first = {"first_frame_ms": round(1000.0 * latencies[0], 2)} if skip_first else {}
    return {**first, "median_ms": round(float(np.median(warm)), 3),
            "p95_ms": round(float(np.percentile(warm, 95)), 3), "mean_ms": round(float(np.mean(warm)), 3),
            "real_time_factor": round(float(np.sum(warm)) / (warm.size * frame_ms), 4),
            "real_time_factor_median": round(float(np.median(warm)) / frame_ms, 4), "frames_timed": int(warm.size)}


# ------------------------------------------------------------------------------------------------------ CLI


def _read_human_video(path: str, count: int, tok, notes: list[str]) -> list[np.ndarray] | None:
    from avatarjax import media

    frames, fps, _, _ = media.read_video(path)
    if not tok.real:
        notes.append(f"human video '{path}' not used: stand-in tokens are made from face states, not pixels")
        return None
    if fps and abs(fps - FPS) > 0.01:
        idx = np.minimum(np.round(np.arange(len(frames) * FPS / fps) * fps / FPS).astype(int), len(frames) - 1)
        frames = frames[idx]
        notes.append(f"human video resampled from {fps:g} to {FPS} fps")
    if frames.shape[1:3] != (tok.frame_size, tok.frame_size):
        notes.append(f"human video {frames.shape[2]}x{frames.shape[1]} centre-cropped and resized to "
                     f"{tok.frame_size}x{tok.frame_size} (the video tokenizer's size)")
    if len(frames) < count:
        notes.append(f"human video has {len(frames)} frames for {count} frames of audio: its last frame is held")
        frames = np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])
    return list(frames[:count])


def sample_cli(model, cfg, out, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --config configs/speechvideo/<variant>.py --human-audio WAV [--human-video MP4]
    [--prompt TEXT] [--identity N] [--frames N] [--seed N] [--temperature T] --out OUT.mp4``.

    Real tokens: OUT.mp4 (agent video + agent audio), OUT.json (per-frame latency median / p95, real-time factor).
    Stand-in tokens: OUT.codes.npy (``[frames, Q]``), OUT.face_state.npy (``[frames, 24]``), OUT.video_tokens.npy
    and OUT.json (no mp4: stand-in tokens cannot be decoded)."""
    from avatarjax import media

    p = argparse.ArgumentParser(prog="avatarjax sample (speech_video duplex agent)")
    p.add_argument("--human-audio", required=True, help="the human's speech (any rate: resampled)")
    p.add_argument("--human-video", default="", help="the human's face video (any size / fps: adapted)")
    p.add_argument("--prompt", default="")
    p.add_argument("--identity", type=int, default=-1)
    p.add_argument("--frames", type=int, default=0, help="at most this many frames (0: the audio's length)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    ns = p.parse_args(args)
    for flag, path in (("--human-audio", ns.human_audio), ("--human-video", ns.human_video)):
        if path and not Path(path).is_file():
            raise DataError(f"{flag} '{path}' does not exist: pass the human's recording")
    tok = make_tokenizers(cfg)
    rate = tok.sample_rate
    notes: list[str] = []
    wav = media.read_audio(ns.human_audio, rate)
    if Path(ns.human_audio).suffix.lower() in (".wav", ".flac", ".ogg"):
        import soundfile as sf

        original = sf.info(ns.human_audio).samplerate
        if original != rate:
            notes.append(f"human audio resampled from {original} Hz to {rate} Hz")
    spf = rate // FPS
    count = -(-wav.shape[0] // spf)
    if ns.frames > 0:
        count = min(count, ns.frames)
    agent = DuplexAgent((model, cfg), max_frames=count, seed=ns.seed, temperature=ns.temperature, tokenizers=tok)
    video = _read_human_video(ns.human_video, count, agent.tokenizers, notes) if ns.human_video else None
    wav = np.pad(wav, (0, count * spf - min(wav.shape[0], count * spf)))[:count * spf]
    chunks = wav.reshape(count, spf)
    items = list(agent.stream(chunks, video, prompt=ns.prompt or None, identity=ns.identity))
    notes += agent.notes
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        out = out / "agent.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    q = agent.lm.num_codebooks
    codes = np.asarray([it.codes for it in items if it.codes is not None], np.int32).reshape(-1, q)
    stem = out.with_suffix("")
    result: dict[str, Any] = {"frames": len(items), "tokens": "real" if agent.real else "stand-in",
                              "latency": latency_report([it.latency_s for it in items], skip_first=False),
                              "compile_s": round(agent.warmup_s, 2), "compilations": agent.compilations,
                              "device": jax.devices()[0].device_kind}
    if agent.real:
        # audio frame j arrives with item j + Q - 1: align it under video frame j, the last Q - 1 frames silent
        audio = np.zeros((len(items) * spf,), np.float32)
        for it in items:
            if it.audio_frame >= 0:
                audio[it.audio_frame * spf:(it.audio_frame + 1) * spf] = it.audio
        media.write_video(out, np.stack([it.video for it in items]), fps=FPS, audio=audio, sample_rate=rate)
        result["output"] = str(out.absolute())
        if q > 1:
            notes.append(f"the last {q - 1} frames' audio is silent: the delay pattern completes frame i's codes "
                         f"{q - 1} steps later")
    else:
        np.save(f"{stem}.codes.npy", codes)
        np.save(f"{stem}.face_state.npy", np.stack([it.face_state for it in items]))
        result["output"] = str(Path(f"{stem}.face_state.npy").absolute())
        result["codes"] = str(Path(f"{stem}.codes.npy").absolute())
    np.save(f"{stem}.video_tokens.npy", np.stack([it.video_tokens for it in items]))
    talk = [it.talking for it in items if it.talking is not None]
    result["agent_talking_fraction"] = round(float(np.mean(talk)), 4) if talk else None
    result["notes"] = notes
    result["report"] = str(Path(f"{stem}.json").absolute())
    Path(f"{stem}.json").write_text(json.dumps({**result, "latency_ms_per_frame": [round(1000 * it.latency_s, 3)
                                                                                  for it in items]}, indent=2))
    return result


# ------------------------------------------------------------------------------------- turn-taking evaluation


class RawSessions(sv.MemoisedSessions):
    """The task's held-out dyadic sessions as raw signals: ``speaker_audio`` (16 kHz), both parties' states and
    identities (the same sessions as ``speech_video.DialogueSessions``)."""

    salt = sv.DialogueSessions.salt

    def arrays(self, session) -> dict:
        t = self.data.session_frames
        return {"speaker_audio": np.asarray(session.speaker.audio[:t * schema.SAMPLES_PER_FRAME], np.float32),
                "speaker_state": np.asarray(session.speaker.state[:t], np.float32),
                "listener_state": np.asarray(session.listeners[0].state[:t], np.float32),
                "speaker_id": int(session.speaker.identity), "listener_id": int(session.listeners[0].identity)}


def human_frames(tok, state: np.ndarray, identity: int) -> list:
    """What the human's camera gives the agent for face states ``[T, 24]``: the states themselves for stand-in
    tokens, else synthface frames of ``identity`` rendered at the video tokenizer's size."""
    if not tok.real:
        return list(state)
    from avatarjax.data.synthface.identity import sample_identity
    from avatarjax.data.synthface.render import render_frames

    return list(render_frames(sample_identity(identity), state, size=tok.frame_size))


def _frame_talking_real(audio16k: np.ndarray, frames: int) -> np.ndarray:
    a = np.asarray(audio16k[:frames * schema.SAMPLES_PER_FRAME], np.float64).reshape(frames, -1)
    return 10 * np.log10(np.maximum(np.mean(a ** 2, axis=1), 1e-12)) > REAL_TALK_DB


def evaluate_turn_taking(model, cfg, args: list[str], checkpoint=None, agent: DuplexAgent | None = None) -> dict:
    """``avatarjax eval --config C [-- --sessions N --frames F --seed S]``: turn-taking on held-out sessions (see
    the module docstring). ``agent``: an already compiled agent of this model (at least F frames)."""
    p = argparse.ArgumentParser(prog="avatarjax eval (speech_video turn-taking)")
    p.add_argument("--sessions", type=int, default=cfg.data.num_eval_sessions)
    p.add_argument("--frames", type=int, default=cfg.sample.frames)
    p.add_argument("--seed", type=int, default=cfg.sample.seed)
    ns = p.parse_args(args)
    frames = min(ns.frames, cfg.data.session_frames)
    if agent is None or agent.max_frames < frames:
        agent = DuplexAgent((model, cfg), max_frames=frames, seed=ns.seed)
    tok = agent.tokenizers
    sessions = RawSessions(cfg, "eval")
    use_identity = cfg.data.identity_prob > 0
    q = agent.lm.num_codebooks
    counts = {k: [0, 0] for k in ("quiet", "talk", "data_talk")}
    latencies: list[float] = []
    for s in range(min(ns.sessions, len(sessions))):
        sess = sessions.session(s)
        rate = tok.sample_rate
        audio = sess["speaker_audio"]
        if rate != schema.SAMPLE_RATE:
            from avatarjax.data.transforms import resample_audio

            audio_in = resample_audio(audio, schema.SAMPLE_RATE, rate)
        else:
            audio_in = audio
        spf = tok.samples_per_frame
        audio_in = np.pad(audio_in, (0, max(0, frames * spf - audio_in.shape[0])))[:frames * spf]
        human_talks = _frame_talking_real(audio, frames)
        if tok.real:
            data_talk = human_talks
        else:
            codes = sv.stand_in_audio_codes(audio, frames, tok.q, tok.v, tok.code_range)
            data_talk = np.array([tok.talking(c, None) for c in codes])
        # (A) the human talks (the session's speaker), the agent is the listener
        a_items = list(agent.stream(audio_in.reshape(frames, spf), human_frames(tok, sess["speaker_state"],
                                                                                  sess["speaker_id"]),
                                    identity=sess["listener_id"] if use_identity else None, seed=ns.seed + 2 * s))
        # (B) the human is a silent listener, the agent is addressed
        b_items = list(agent.stream(np.zeros((frames, spf), np.float32),
                                    human_frames(tok, sess["listener_state"], sess["listener_id"]),
                                    identity=sess["speaker_id"] if use_identity else None, seed=ns.seed + 2 * s + 1))
        latencies += [it.latency_s for it in a_items + b_items]
        for it in a_items:
            if it.talking is not None and human_talks[it.audio_frame]:
                counts["quiet"][0] += int(not it.talking)
                counts["quiet"][1] += 1
        for it in b_items:
            if it.talking is not None:
                counts["talk"][0] += int(it.talking)
                counts["talk"][1] += 1
        counts["data_talk"][0] += int(np.sum(data_talk[:frames - (q - 1)]))
        counts["data_talk"][1] += frames - (q - 1)
    rate_of = lambda k: counts[k][0] / max(counts[k][1], 1)  # noqa: E731
    quiet, talk = rate_of("quiet"), rate_of("talk")
    speaker_talk = rate_of("data_talk")  # the agent-as-speaker's talking rate in the data
    marginal = cfg.data.agent_speaks_prob * speaker_talk
    # in the data the listener's audio is silence: quiet whenever the human speaks
    metrics = {
        "model": {"quiet_while_human_speaks": round(quiet, 4), "talks_when_human_silent": round(talk, 4),
                  "score": round((quiet + talk) / 2, 4)},
        "data": {"quiet_while_human_speaks": 1.0, "talks_when_human_silent": round(speaker_talk, 4),
                 "score": round((1.0 + speaker_talk) / 2, 4)},
        "no_context": {"quiet_while_human_speaks": round(1 - marginal, 4),
                       "talks_when_human_silent": round(marginal, 4), "score": 0.5},
    }
    classifier = (f"decoded audio RMS > {REAL_TALK_DB} dBFS" if tok.real else
                  f"stand-in mean band level > silence code's + {STAND_IN_TALK_MARGIN_DB} dB")
    return {"turn_taking": metrics, "sessions": min(ns.sessions, len(sessions)), "frames": frames,
            "human_talking_frames": counts["quiet"][1], "agent_frames_scored": counts["talk"][1],
            "tokens": "real" if tok.real else "stand-in", "talking_classifier": classifier,
            "latency": latency_report(latencies, skip_first=False), "compilations": agent.compilations,
            "notes": agent.notes}


# ------------------------------------------------------------------------------ training data: token records


def token_meta(cfg) -> dict:
    from avatarjax.data.tokenize import META_FILE

    path = Path(cfg.data.tokens) / META_FILE
    if not path.exists():
        raise ConfigError(f"data.tokens='{cfg.data.tokens}' holds no {META_FILE}: tokenize a dataset first with "
                          "`avatarjax data tokenize synthface_tokens --checkpoint VIDEO_TOKENIZER --audio_codec DAC "
                          f"--out {cfg.data.tokens}`")
    return json.loads(path.read_text())


def check_real_tokens(cfg) -> None:
    """The codecs the agent needs, and the LM's shapes against the token records' metadata (when present)."""
    data, net = cfg.data, cfg.model.net
    if not data.tokens:
        raise ConfigError("data.dac / data.video_tokenizer are only used with data.tokens (the token records made "
                          "with those codecs): set data.tokens or clear them")
    if not data.dac or not data.video_tokenizer:
        raise ConfigError("data.tokens needs data.dac and data.video_tokenizer (the codecs that made the records: "
                          "the DAC gives the silence codes, both decode the agent's output)")
    from avatarjax.data.tokenize import META_FILE

    if not (Path(data.tokens) / META_FILE).exists():
        return  # checked when the records are read (a shipped LM samples without them)
    meta = token_meta(cfg)
    audio = meta.get("audio_codec")
    if not audio:
        raise ConfigError(f"the token records in '{data.tokens}' hold no audio codes: tokenize with --audio_codec DAC")
    rate = int(audio["sample_rate"])
    r = codes_per_frame(rate, round(rate / float(audio["frame_rate"])))
    k, d = meta["latent_shape_per_frame"]
    want = (audio["n_codebooks"] * r, audio["codebook_size"], k, d)
    have = (net.num_codebooks, net.codebook_size, net.video_tokens, net.video_dim)
    if want != have:
        raise ConfigError(f"the token records have {audio['n_codebooks']} codebooks x {r} code frames per video "
                          f"frame of {audio['codebook_size']} entries and {k} x {d} video latents, but model.net has "
                          f"num_codebooks={have[0]}, codebook_size={have[1]}, video_tokens={have[2]}, video_dim="
                          f"{have[3]}: set them to {want}")


class RecordDialogues:
    """Token records of a split as dialogue windows: ``record(i)`` = ``{"codes" [T, Q], "video" [T, K, D],
    "listening", "identity"}`` (memoised)."""

    def __init__(self, cfg, split: str, silence: np.ndarray):
        from avatarjax.data.tokenize import TokenSource

        meta = token_meta(cfg)
        rate = int(meta["audio_codec"]["sample_rate"])
        self.r = codes_per_frame(rate, round(rate / float(meta["audio_codec"]["frame_rate"])))
        self.source = TokenSource(cfg.data.tokens, split)
        self.silence = silence
        self._memo: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> int:
        return int(index)

    def record(self, index: int) -> dict:
        index = int(index) % len(self)
        if index not in self._memo:
            rec = self.source[index]
            codes = stack_codes(np.asarray(rec["audio_codes"], np.int32), self.r)
            video = np.asarray(rec["video_latents"], np.float32)
            t = min(len(codes), len(video))
            kind = rec.get("kind", "talking")
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            self._memo[index] = {"codes": codes[:t], "video": video[:t], "listening": kind == "listening",
                                 "identity": int(np.asarray(rec.get("identity", -1)))}
        return self._memo[index]


def record_row(source: RecordDialogues, first: int, rng: np.random.Generator, cfg) -> dict[str, np.ndarray]:
    """One packed row of windows from token records (see the module docstring)."""
    data, net = cfg.data, cfg.model.net
    row = sv.empty_row(cfg)
    pos, seg, index, misses = 0, 1, first, 0
    while data.frames - pos >= data.min_window and misses < 64:
        rec = source.record(index)
        index = int(rng.integers(len(source)))
        room = data.frames - pos
        length = min(room if rng.random() < 0.5 else int(rng.integers(data.min_window, room + 1)), len(rec["codes"]))
        if length < data.min_window:
            misses += 1
            continue
        start = int(rng.integers(0, len(rec["codes"]) - length + 1))
        win, src = slice(pos, pos + length), slice(start, start + length)
        own, silence = rec["codes"][src], np.broadcast_to(source.silence, (length, net.num_codebooks))
        row["agent_codes"][win] = silence if rec["listening"] else own
        row["human_codes"][win] = own if rec["listening"] else silence
        row["agent_video"][win] = rec["video"][src]
        row["agent_video_mask"][win] = rng.random() < data.agent_video_prob
        if 0 <= rec["identity"] < net.num_identities and rng.random() < data.identity_prob:
            row["identity"][win] = rec["identity"]
        row["segment_ids"][win] = seg
        pos, seg = pos + length, seg + 1
    return row


_SILENCE: dict[tuple[str, int], np.ndarray] = {}


def silence_codes(dac_path: str, fps: int = FPS) -> np.ndarray:
    """The DAC's stacked codes ``[n R]`` of one silent frame (the listener's audio in record windows)."""
    key = (str(dac_path), fps)
    if key not in _SILENCE:
        model = load_codec(dac_path, "dac")
        c = model.cfg
        r = codes_per_frame(c.sample_rate, c.hop_length, fps)
        spf = c.sample_rate // fps
        codes = np.asarray(model.encode(jnp.zeros((1, 5 * spf), jnp.float32)))[0]
        _SILENCE[key] = stack_codes(codes, r)[2]
    return _SILENCE[key]


def record_dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of packed rows from the token records (train: shuffled, repeated; eval: one pass)."""
    from avatarjax.data import pipeline

    check_real_tokens(cfg)
    source = RecordDialogues(cfg, "train" if split == "train" else "eval", silence_codes(cfg.data.dac))
    train = split == "train"
    ds = pipeline.batched(source, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=lambda index, rng: record_row(source, index, rng, cfg))
    return pipeline.to_iter(ds, threads=cfg.data.threads, prefetch=cfg.data.prefetch)
