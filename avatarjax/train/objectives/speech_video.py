"""Body of Her speech-video LM training (task ``speech_video``): stage 1 audio NLL, stage 2 NLL + diffusion loss.

Real tokens: with ``data.tokens`` (an ``avatarjax data tokenize synthface_tokens`` directory) plus ``data.dac`` and
``data.video_tokenizer`` (the codecs that made it) the rows come from the token records instead of the stand-ins
below (``pipelines.duplex_agent.record_dataset``); ``sample`` with ``--human-audio`` and ``evaluate``
(turn-taking) run the duplex agent (``pipelines.duplex_agent``).

Data (a stand-in until the real tokenizers are wired): synthface dyadic sessions
(``data.synthface.dyadic.generate_session``, one speaker clip and one listener reaction) turned into per-frame
"tokens" at 25 fps:

- audio codes ``[T, Q]`` (**stand-in for DAC codes**, ``stand_in_audio_codes``): for each 640-sample frame the
  Hann-windowed power spectrum is pooled into Q mel bands (``nn.melspec.mel_filterbank``, unit-peak filters,
  0-8 kHz) and ``log10`` of each band's power is quantised uniformly onto ``codebook_size`` levels over
  ``data.code_range``; band q plays codebook q. The listener is silent (all codes 0).
- video tokens ``[T, K, D]`` (**stand-in for the video tokenizer**, ``stand_in_video_tokens``): the 17 control
  channels and 4 mouth channels of the face state, each scaled to [-1, 1] by its range, times a fixed random
  matrix ``[21, K * D]`` (seed ``VIDEO_PROJECTION_SEED``, entries N(0, 1/21)), reshaped to ``[K, D]``.
- motion trajectory ``[T, 6]`` (``motion_trajectory``), present with probability ``motion_prob`` per window, in one
  of two forms (``data.motion_features``):

  - ``"velocity"`` (the paper's per-joint velocities, default): per-frame velocities of the agent's head rotation
    (yaw, pitch, roll) and translation (tx, ty, depth), each scaled to [-1, 1] by its range, times 10 (frame 0:
    0). Block ``i`` sees frame ``i - 1``'s video and ``r_i``, so the slot tells the pose change into frame ``i``:
    a per-frame change of a few hundredths of the scaled range, which the diffusion loss barely rewards.
  - ``"pose"``: the head rotation the frame should have (yaw, pitch, roll scaled to [-1, 1]; the three
    translation channels 0, since a planner plans rotation only), a target the LM can copy.
- text prompt: pooled features of the agent clip's first instruction from ``data.text_encoder`` (an
  ``encoders.instruction_features`` spec: ``"minilm"`` or ``"clip:DIR"``; ``""`` = text always absent).
- identity: the agent's synthface identity (present with probability ``identity_prob``).

Roles: per window, with probability ``agent_speaks_prob`` the agent is the session's speaker (it talks, the human
listens silently), else the agent is the listener (it nods and mirrors smiles while the human talks), so the model
has to infer turn-taking from the context. Each row packs dialogue windows of ``[min_window, frames]`` frames
(segment ids 1, 2, ...; 0 pads a remainder shorter than ``min_window``); per window the agent's and the human's
video are present with probabilities ``agent_video_prob`` / ``human_video_prob``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import threading
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.data.synthface import identity as identity_lib, schema
from avatarjax.data.synthface.dyadic import generate_session
from avatarjax.errors import ConfigError
from avatarjax.models import speech_video_lm as svlm
from avatarjax.nn.melspec import MelConfig, hann_window, mel_filterbank
from avatarjax.train.task import Task

VIDEO_PROJECTION_SEED = 0x5EED
VIDEO_CHANNELS = slice(0, 21)  # 17 controls + 4 mouth channels
MOTION_CHANNELS = np.array([schema.INDEX[c] for c in ("yaw", "pitch", "roll", "tx", "ty", "depth")])
MOTION_SCALE = 10.0
MOTION_FEATURES = ("velocity", "pose")

@dataclasses.dataclass(frozen=True)
class SpeechVideoLossConfig:
    stage: int = 2  # 1: audio-only NLL (paper eq. 3); 2: NLL + diffusion_weight x diffusion loss (eq. 4)
    diffusion_weight: float = 1.0
    diffusion_batch_mul: int = 4  # noisy copies per video token (MAR)
    # std of Gaussian noise on the agent's previous-frame video tokens the LM reads (not the targets); 0 = plain
    # teacher forcing (the paper). > 0 makes the motion trajectory carry a loss signal (SpeechVideoLM.__call__)
    context_noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class SpeechVideoTaskConfig:
    """The ``model`` section: the network and the loss."""

    net: svlm.SpeechVideoLMConfig = svlm.SpeechVideoLMConfig()
    loss: SpeechVideoLossConfig = SpeechVideoLossConfig()


@dataclasses.dataclass(frozen=True)
class SpeechVideoDataConfig:
    num_sessions: int = 64  # training sessions (identities of the train split)
    num_eval_sessions: int = 8  # eval sessions (held-out identities)
    session_frames: int = 150  # frames per generated session (25 fps); >= frames
    num_identities: int = 16  # synthface identities (must not exceed model.net.num_identities)
    world_seed: int = 0
    frames: int = 64  # frames per packed row
    min_window: int = 16  # shortest dialogue window packed into a row
    agent_speaks_prob: float = 0.5
    agent_video_prob: float = 1.0
    human_video_prob: float = 0.8
    motion_prob: float = 0.5
    motion_features: str = "velocity"  # "velocity" (paper: per-joint velocities) | "pose" (target head rotation)
    identity_prob: float = 0.8
    text_prob: float = 0.5
    text_encoder: str = ""  # "" (no text) | "minilm" | "clip:DIR" (pooled dim must equal model.net.text_dim)
    code_range: tuple[float, float] = (-5.0, 4.0)  # log10 band power range mapped onto the codebook
    # real tokens instead of the stand-ins (avatarjax.pipelines.duplex_agent): an `avatarjax data tokenize
    # synthface_tokens` directory, and the DAC and video tokenizer (workdirs / exports) that made it
    tokens: str = ""
    dac: str = ""
    video_tokenizer: str = ""
    threads: int = 2
    prefetch: int = 4


@dataclasses.dataclass(frozen=True)
class SpeechVideoSampleConfig:
    frames: int = 50  # frames streamed per eval session
    sessions: int = 1
    temperature: float = 1.0  # audio codes
    video_steps: int = 0  # 0 = model.net.head.sample_steps
    seed: int = 0


class SpeechVideoSystem(nnx.Module):
    """The trained module: the speech-video LM plus its static loss settings."""

    def __init__(self, cfg: SpeechVideoTaskConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        self.settings = cfg
        self.net = svlm.SpeechVideoLM(cfg.net, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)


# ------------------------------------------------------------------------------------------------- stand-ins


@functools.lru_cache(maxsize=8)
def _band_filters(num_bands: int) -> np.ndarray:
    mel = MelConfig(n_fft=schema.SAMPLES_PER_FRAME, hop=schema.SAMPLES_PER_FRAME, n_mels=num_bands, norm=None)
    return mel_filterbank(mel).astype(np.float64)  # [n_fft // 2 + 1, bands]


def stand_in_audio_codes(audio: np.ndarray, num_frames: int, num_codebooks: int, codebook_size: int,
                         code_range: tuple[float, float]) -> np.ndarray:
    """Stand-in for DAC codes: 16 kHz audio -> int32 ``[num_frames, Q]``, quantised log10 power of Q mel bands
    per 640-sample frame (see the module docstring)."""
    hop = schema.SAMPLES_PER_FRAME
    audio = np.asarray(audio, np.float64)[:num_frames * hop]
    audio = np.pad(audio, (0, num_frames * hop - audio.shape[0])).reshape(num_frames, hop)
    power = np.abs(np.fft.rfft(audio * hann_window(hop), axis=-1)) ** 2
    log_power = np.log10(np.maximum(power @ _band_filters(num_codebooks), 1e-12))
    lo, hi = code_range
    levels = np.round((log_power - lo) / (hi - lo) * (codebook_size - 1))
    return np.clip(levels, 0, codebook_size - 1).astype(np.int32)


@functools.lru_cache(maxsize=8)
def _video_projection(tokens: int, dim: int) -> np.ndarray:
    n = VIDEO_CHANNELS.stop - VIDEO_CHANNELS.start
    rng = np.random.default_rng(VIDEO_PROJECTION_SEED)
    return (rng.standard_normal((n, tokens * dim)) / np.sqrt(n)).astype(np.float32)


def _scaled(state: np.ndarray) -> np.ndarray:
    """Face state ``[T, 24]`` with each channel mapped to [-1, 1] by its range."""
    return (2 * (state - schema.LOW) / (schema.HIGH - schema.LOW) - 1).astype(np.float32)


def stand_in_video_tokens(state: np.ndarray, tokens: int, dim: int) -> np.ndarray:
    """Stand-in for the video tokenizer: face state ``[T, 24]`` -> ``[T, K, D]`` (scaled controls + mouth through
    a fixed random projection)."""
    flat = _scaled(state)[:, VIDEO_CHANNELS] @ _video_projection(tokens, dim)
    return flat.reshape(state.shape[0], tokens, dim)


def motion_trajectory(state: np.ndarray, kind: str = "velocity") -> np.ndarray:
    """Face state ``[T, 24]`` -> motion features ``[T, 6]`` of ``kind`` (``MOTION_FEATURES``; module docstring):
    ``"velocity"``: head rotation and translation velocities (scaled x ``MOTION_SCALE``; frame 0 has velocity 0);
    ``"pose"``: scaled head rotation, translation channels 0."""
    x = _scaled(state)[:, MOTION_CHANNELS]
    if kind == "pose":
        return np.concatenate([x[:, :3], np.zeros_like(x[:, 3:])], axis=1).astype(np.float32)
    if kind != "velocity":
        raise ConfigError(f"unknown motion features '{kind}': choose from {', '.join(MOTION_FEATURES)}")
    return (np.diff(x, axis=0, prepend=x[:1]) * MOTION_SCALE).astype(np.float32)


# ------------------------------------------------------------------------------------------------------- data


def check_config(cfg) -> None:
    data, net = cfg.data, cfg.model.net
    if data.frames < 2 or not 1 <= data.min_window <= data.frames:
        raise ConfigError(f"data.frames={data.frames} and data.min_window={data.min_window}: need frames >= 2 and "
                          "1 <= min_window <= frames")
    if data.session_frames < data.frames:
        raise ConfigError(f"data.session_frames={data.session_frames} is shorter than a row (data.frames="
                          f"{data.frames}): raise session_frames")
    if data.num_identities > net.num_identities:
        raise ConfigError(f"data.num_identities={data.num_identities} exceeds model.net.num_identities="
                          f"{net.num_identities}: raise the model's or lower the data's")
    if net.motion_dim != 6:
        raise ConfigError(f"model.net.motion_dim must be 6 for synthface trajectories (head rotation and "
                          f"translation velocities), got {net.motion_dim}")
    if data.motion_features not in MOTION_FEATURES:
        raise ConfigError(f"data.motion_features='{data.motion_features}' is unknown: choose from "
                          f"{', '.join(MOTION_FEATURES)}")
    if cfg.model.loss.stage not in (1, 2):
        raise ConfigError(f"model.loss.stage must be 1 or 2, got {cfg.model.loss.stage}")
    lo, hi = data.code_range
    if not lo < hi:
        raise ConfigError(f"data.code_range={data.code_range} must be (low, high) with low < high")
    if data.tokens or data.dac or data.video_tokenizer:
        from avatarjax.pipelines.duplex_agent import check_real_tokens

        check_real_tokens(cfg)


def identity_pool(num_identities: int, split: str) -> np.ndarray:
    pool = np.array([i for i in range(num_identities) if identity_lib.identity_split(i) == split])
    if len(pool) < 2:
        raise ConfigError(f"only {len(pool)} '{split}' identities among data.num_identities={num_identities}: "
                          "raise data.num_identities")
    return pool


_TEXT_LOCK = threading.Lock()
_TEXT_ENCODERS: dict[str, object] = {}


def _text_features(spec: str):
    """One ``InstructionFeatures`` per spec. Built under a lock: loader threads asking at once would import
    transformers concurrently (an ImportError, then a crash, seen with data.text_encoder=minilm and 2 threads)."""
    from avatarjax.encoders.instruction_features import InstructionFeatures

    with _TEXT_LOCK:
        if spec not in _TEXT_ENCODERS:
            _TEXT_ENCODERS[spec] = InstructionFeatures(spec)
        return _TEXT_ENCODERS[spec]


class MemoisedSessions:
    """Synthface dyadic sessions of a split (speaker and one listener from the split's identity pool), generated on
    first use and memoised (thread-safe); subclasses turn a generated session into per-frame arrays (``arrays``).
    ``salt`` separates the random streams of different session sets."""

    salt = 0

    def __init__(self, cfg, split: str):
        self.data, self.net, self.split = cfg.data, cfg.model.net, split
        self.size = self.data.num_sessions if split == "train" else self.data.num_eval_sessions
        self._memo: dict[int, dict] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def session(self, index: int) -> dict:
        index = int(index) % self.size
        with self._lock:
            hit = self._memo.get(index)
        if hit is not None:
            return hit
        data = self.data
        rng = np.random.default_rng([data.world_seed, 0 if self.split == "train" else 1, index, self.salt])
        speaker_id, listener_id = rng.choice(identity_pool(data.num_identities, self.split), 2, replace=False)
        session = generate_session(int(rng.integers(2 ** 31)), int(speaker_id), int(listener_id),
                                   data.session_frames, num_reactions=1, split=self.split)
        out = self.arrays(session)
        with self._lock:
            self._memo[index] = out
        return out

    def arrays(self, session) -> dict:
        raise NotImplementedError


class DialogueSessions(MemoisedSessions):
    """``session(i)`` = ``{"speaker": party, "listener": party}``; a party holds ``codes`` ``[T, Q]``, ``video``
    ``[T, K, D]``, ``motion`` ``[T, 6]``, ``text`` ``[Dt]``, ``identity``."""

    salt = 0xB0D7

    def arrays(self, session) -> dict:
        data, net = self.data, self.net
        t = data.session_frames
        out = {}
        for role, clip, audio in (("speaker", session.speaker, session.speaker.audio),
                                  ("listener", session.listeners[0], np.zeros(t * schema.SAMPLES_PER_FRAME))):
            text = np.zeros((net.text_dim,), np.float32)
            if data.text_encoder:
                text = _text_features(data.text_encoder)(clip.instructions[0])["text_pooled"][0]
            out[role] = {"codes": stand_in_audio_codes(audio, t, net.num_codebooks, net.codebook_size,
                                                       data.code_range),
                         "video": stand_in_video_tokens(clip.state[:t], net.video_tokens, net.video_dim),
                         "motion": motion_trajectory(clip.state[:t], data.motion_features),
                         "text": text.astype(np.float32), "identity": int(clip.identity)}
        return out

    def __getitem__(self, index: int) -> int:
        return int(index)


def empty_row(cfg, frames: int | None = None) -> dict[str, np.ndarray]:
    """Zeros (segment 0 = padding everywhere) with the shapes and dtypes of one packed row."""
    net, t = cfg.model.net, frames or cfg.data.frames
    q, k, d = net.num_codebooks, net.video_tokens, net.video_dim
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    b = lambda: np.zeros((t,), bool)  # noqa: E731
    return {"agent_codes": np.zeros((t, q), np.int32), "human_codes": np.zeros((t, q), np.int32),
            "agent_video": f(t, k, d), "human_video": f(t, k, d), "agent_video_mask": b(), "human_video_mask": b(),
            "text": f(t, net.text_dim), "text_mask": b(), "motion": f(t, net.motion_dim), "motion_mask": b(),
            "identity": np.full((t,), -1, np.int32), "segment_ids": np.zeros((t,), np.int32)}


def make_row(sessions: DialogueSessions, first: int, rng: np.random.Generator, cfg) -> dict[str, np.ndarray]:
    """One packed row of dialogue windows (see the module docstring); the first window comes from session
    ``first``, later ones from random sessions of the split."""
    data = cfg.data
    row = empty_row(cfg)
    pos, seg, index = 0, 1, first
    while data.frames - pos >= data.min_window:
        room = data.frames - pos
        length = room if rng.random() < 0.5 else int(rng.integers(data.min_window, room + 1))
        session = sessions.session(index)
        start = int(rng.integers(0, data.session_frames - length + 1))
        agent_role = "speaker" if rng.random() < data.agent_speaks_prob else "listener"
        agent = session[agent_role]
        human = session["listener" if agent_role == "speaker" else "speaker"]
        win, src = slice(pos, pos + length), slice(start, start + length)
        row["agent_codes"][win], row["human_codes"][win] = agent["codes"][src], human["codes"][src]
        row["agent_video"][win], row["human_video"][win] = agent["video"][src], human["video"][src]
        row["agent_video_mask"][win] = rng.random() < data.agent_video_prob
        row["human_video_mask"][win] = rng.random() < data.human_video_prob
        if data.text_encoder and rng.random() < data.text_prob:
            row["text"][win], row["text_mask"][win] = agent["text"], True
        if rng.random() < data.motion_prob:
            row["motion"][win], row["motion_mask"][win] = agent["motion"][src], True
        if rng.random() < data.identity_prob:
            row["identity"][win] = agent["identity"]
        row["segment_ids"][win] = seg
        pos, seg, index = pos + length, seg + 1, int(rng.integers(len(sessions)))
    return row


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of packed rows (train: shuffled, repeated; eval: one pass, the same every time)."""
    check_config(cfg)
    if cfg.data.tokens:  # real DAC codes and video-tokenizer latents from token records
        from avatarjax.pipelines.duplex_agent import record_dataset

        return record_dataset(cfg, split, process_index, process_count)
    sessions = DialogueSessions(cfg, "train" if split == "train" else "eval")
    train = split == "train"
    ds = pipeline.batched(sessions, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=lambda index, rng: make_row(sessions, index, rng, cfg))
    return pipeline.to_iter(ds, threads=cfg.data.threads, prefetch=cfg.data.prefetch)


def example_batch(cfg, batch_size: int) -> dict[str, np.ndarray]:
    """A batch of the right shapes and dtypes (one segment per row)."""
    row = empty_row(cfg)
    row["segment_ids"][:] = 1
    return {k: np.broadcast_to(v, (batch_size,) + v.shape).copy() for k, v in row.items()}


# ------------------------------------------------------------------------------------------------ model, loss


def build_model(cfg, rngs: nnx.Rngs) -> SpeechVideoSystem:
    check_config(cfg)
    return SpeechVideoSystem(cfg.model, remat=cfg.train.remat, dtype=dtype_of(cfg.train.compute_dtype),
                             param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)


def loss(model: SpeechVideoSystem, batch, key, step):
    del step
    settings = model.settings.loss
    return svlm.speech_video_loss(model.net, batch, key, stage=settings.stage,
                                  diffusion_weight=settings.diffusion_weight,
                                  batch_mul=settings.diffusion_batch_mul, context_noise=settings.context_noise)


def flops_per_example(cfg) -> float:
    settings = cfg.model.loss
    return svlm.flops_per_window(cfg.model.net, cfg.data.frames,
                                 batch_mul=settings.diffusion_batch_mul if settings.stage == 2 else 0)


# ---------------------------------------------------------------------------------------------------- sampling


def sample(model: SpeechVideoSystem, cfg, out_dir, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample ... [--frames N] [--sessions N]``: the duplex agent (``pipelines.duplex_agent.DuplexAgent``,
    compiled once) answers held-out eval sessions' speaker, fed frame by frame as a live stream (16 kHz audio
    chunks and face states, tokenized as they arrive), and writes per session the agent's codes
    ``agent_codes_XXX.npy`` ``[frames - Q + 1, Q]``, video tokens ``agent_video_XXX.npy`` ``[frames, K, D]`` and face
    states ``agent_face_state_XXX.npy`` ``[frames, 24]``, with the per-frame latency and real-time factor (25 fps).

    With ``--human-audio WAV [--human-video MP4] [--prompt TEXT]`` (and always for an LM trained on real tokens)
    the duplex agent answers a recorded human instead (``pipelines.duplex_agent.sample_cli``)."""
    from avatarjax.pipelines import duplex_agent

    if cfg.data.tokens or any(a.startswith("--human-audio") for a in args):
        return duplex_agent.sample_cli(model, cfg, out_dir, args, checkpoint)
    sc = cfg.sample
    p = argparse.ArgumentParser(prog="avatarjax sample (speech_video)")
    p.add_argument("--frames", type=int, default=sc.frames)
    p.add_argument("--sessions", type=int, default=sc.sessions)
    ns = p.parse_args(args)
    frames = min(ns.frames, cfg.data.session_frames)
    agent = duplex_agent.DuplexAgent((model, cfg), max_frames=frames)
    tok, spf = agent.tokenizers, agent.samples_per_frame
    sessions = duplex_agent.RawSessions(cfg, "eval")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latencies: list[float] = []
    from tqdm.auto import tqdm

    for s in tqdm(range(min(ns.sessions, len(sessions))), desc="duplex sessions", unit="session", disable=None):
        sess = sessions.session(s)
        audio = np.zeros((frames * spf,), np.float32)
        audio[:min(len(sess["speaker_audio"]), frames * spf)] = sess["speaker_audio"][:frames * spf]
        human = duplex_agent.human_frames(tok, sess["speaker_state"], sess["speaker_id"])
        items = list(agent.stream(audio.reshape(frames, spf), human, seed=sc.seed + s))
        latencies += [it.latency_s for it in items]
        codes = [it.codes for it in items if it.codes is not None]
        np.save(out_dir / f"agent_codes_{s:03d}.npy", np.asarray(codes, np.int32).reshape(-1, agent.lm.num_codebooks))
        np.save(out_dir / f"agent_video_{s:03d}.npy", np.stack([it.video_tokens for it in items]).astype(np.float32))
        if not agent.real:
            np.save(out_dir / f"agent_face_state_{s:03d}.npy", np.stack([it.face_state for it in items]))
    report = duplex_agent.latency_report(latencies, skip_first=False)
    return {"output": str(out_dir.absolute()), "latency": report, "compile_s": round(agent.warmup_s, 2),
            "notes": agent.notes, "device": jax.devices()[0].device_kind}


def evaluate(model: SpeechVideoSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval``: turn-taking on held-out dyadic sessions (``pipelines.duplex_agent``); with
    ``-- --context-ablation`` the teacher-forced agent audio accuracy / NLL and video loss with the full context vs
    the human side and the conditioning removed (``eval.speech_video_context``); with ``-- --planner`` the dual
    system's steering evaluation (``planning.synthface_planner.evaluate_planner``)."""
    if "--planner" in args:
        from avatarjax.planning.synthface_planner import evaluate_planner

        return evaluate_planner(model, cfg, args, checkpoint)
    if "--context-ablation" in args:
        from avatarjax.eval.speech_video_context import evaluate_context

        return evaluate_context(model, cfg, args, checkpoint)
    from avatarjax.pipelines.duplex_agent import evaluate_turn_taking

    return evaluate_turn_taking(model, cfg, args, checkpoint)


SPEECH_VIDEO_TASK = Task(name="speech_video", model_config=SpeechVideoTaskConfig, data_config=SpeechVideoDataConfig,
                         build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                         example_batch=example_batch, sample_config=SpeechVideoSampleConfig, sample=sample,
                         evaluate=evaluate)
