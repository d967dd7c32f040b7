"""A live session's client side around the duplex agent: playout (jitter buffer), voice activity, barge-in; and
``avatarjax bench streaming``, the streaming numbers of a bounded live run.

Every 40 ms frame boundary ``t`` a ``PlayoutSession.tick`` does, in this order:

1. **voice activity** of the human's chunk ``t`` (``EnergyVAD``: chunk RMS in dBFS above a threshold, the
   agent's own ``REAL_TALK_DB`` by default, with a hangover of a few frames so that pauses between words do not
   end the turn);
2. **barge-in**: if the human *starts* speaking in chunk ``t`` the agent's queued audio is flushed now, at the end
   of the chunk in which speech began (within one frame of the onset), and the flush is recorded (frame,
   frames and samples dropped). With ``drop_stale`` the agent's audio frames ``<= t`` that arrive after the flush
   are dropped too: under the delay pattern the LM completes the audio of frame ``j`` at step ``j + Q - 1`` but
   sampled its first codebook at step ``j`` from the human's frames ``< j``, so frames ``<= t`` were planned
   before the LM heard the interruption;
3. the **agent's frame** ``t`` (``AgentFrame``: the audio of ``audio_frame = t - (Q - 1)``) is queued;
4. **playout**: one queued frame leaves the buffer (silence while it is filling: playback starts, and restarts
   after an underrun or a flush, once ``prefill`` frames are queued, as a client's jitter buffer does).

``play(agent, human_audio)`` runs a ``DuplexAgent`` (or anything with its ``stream`` generator) through such a
session and times every frame from handing the human's chunk over to the agent's frame leaving the tick.

Streaming numbers (``bench_streaming``): the first frame's latency (from the first human chunk to the agent's first
frame; ``DuplexAgent`` compiles ahead, so the cold start -- model load and compilation -- is reported next to it),
per-frame latency p50 / p95, the real-time factor (processing time per 40 ms frame), the steady-state frame rate
(frames per second the agent sustains after its first frames), deadline misses, the stream time to the agent's
first audible frame (delay pattern + jitter buffer), compile counts before and after the run, barge-in flushes
and the device. ``--mode windowed`` measures windowed online generation instead (``instruct_avatar.InstructAvatarOnline``: each
window of the InstructAvatar generator made as soon as its audio has arrived; ``online_schedule`` puts the
measured window times on the stream clock).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from avatarjax.errors import ConfigError, DataError
from avatarjax.pipelines.duplex_agent import FPS, REAL_TALK_DB
from avatarjax.train.export import fresh_model

FRAME_MS = 1000.0 / FPS
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ------------------------------------------------------------------------------------------- voice activity


@dataclasses.dataclass(frozen=True)
class VoiceActivity:
    """One chunk's VAD decision: level_db (RMS, dBFS), speaking (after onset / hangover), onset (speech began in
    this chunk), offset (the hangover ran out in this chunk)."""

    level_db: float
    speaking: bool
    onset: bool
    offset: bool


class EnergyVAD:
    """Energy voice-activity detector on the human's audio chunks (one per frame).

    A chunk is *loud* when its RMS exceeds ``threshold_db`` dBFS (default: the level above which the duplex agent's
    evaluation counts a frame as talking). Speech starts after ``onset_frames`` loud chunks in a row (1: in the
    first loud chunk, so a barge-in is caught within one frame) and ends after ``hangover_frames`` quiet chunks in
    a row (pauses between words and short phrases stay inside the turn)."""

    def __init__(self, threshold_db: float = REAL_TALK_DB, onset_frames: int = 1, hangover_frames: int = 6):
        if onset_frames < 1 or hangover_frames < 0:
            raise ConfigError(f"EnergyVAD needs onset_frames >= 1 and hangover_frames >= 0, got {onset_frames} and "
                              f"{hangover_frames}")
        self.threshold_db, self.onset_frames, self.hangover_frames = threshold_db, onset_frames, hangover_frames
        self.reset()

    def reset(self) -> None:
        self.speaking, self._loud, self._quiet = False, 0, 0

    @staticmethod
    def level_db(chunk: np.ndarray) -> float:
        x = np.asarray(chunk, np.float64).reshape(-1)
        return float(10 * np.log10(max(float(np.mean(x * x)) if x.size else 0.0, 1e-12)))

    def __call__(self, chunk: np.ndarray) -> VoiceActivity:
        level = self.level_db(chunk)
        loud = level > self.threshold_db
        onset = offset = False
        if self.speaking:
            self._quiet = 0 if loud else self._quiet + 1
            if self._quiet > self.hangover_frames:
                self.speaking, offset, self._loud = False, True, 0
        else:
            self._loud = self._loud + 1 if loud else 0
            if self._loud >= self.onset_frames:
                self.speaking, onset, self._quiet = True, True, 0
        return VoiceActivity(level, self.speaking, onset, offset)


# -------------------------------------------------------------------------------------------- jitter buffer


class JitterBuffer:
    """The client's playback queue of the agent's audio frames (``[samples_per_frame]`` each, tagged with their
    frame index). Playback starts once ``prefill`` frames are queued and restarts that way after an underrun or a
    flush; ``capacity`` (None: unbounded) drops the oldest frame when full (counted in ``overflows``)."""

    def __init__(self, prefill: int = 3, capacity: int | None = None):
        if prefill < 1 or (capacity is not None and capacity < prefill):
            raise ConfigError(f"a jitter buffer needs prefill >= 1 and capacity >= prefill, got prefill={prefill}, "
                              f"capacity={capacity}")
        self.prefill, self.capacity = prefill, capacity
        self.reset()

    def reset(self) -> None:
        self._frames: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self.playing = False
        self.underruns = self.overflows = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_samples(self) -> int:
        return int(sum(a.shape[0] for _, a in self._frames))

    @property
    def indices(self) -> list[int]:
        return [i for i, _ in self._frames]

    def push(self, index: int, audio: np.ndarray) -> None:
        if self.capacity is not None and len(self._frames) >= self.capacity:
            self._frames.popleft()
            self.overflows += 1
        self._frames.append((int(index), np.asarray(audio, np.float32)))

    def pop(self) -> tuple[int, np.ndarray] | None:
        """The next frame to play, or None (silence) while filling or after an underrun."""
        if not self.playing:
            if len(self._frames) < self.prefill:
                return None
            self.playing = True
        if not self._frames:
            self.playing = False
            self.underruns += 1
            return None
        return self._frames.popleft()

    def flush(self) -> tuple[list[int], int]:
        """Drop everything queued: (the dropped frame indices, samples dropped); playback re-buffers."""
        dropped, samples = self.indices, self.queued_samples
        self._frames.clear()
        self.playing = False
        return dropped, samples


# ---------------------------------------------------------------------------------------- playout session


@dataclasses.dataclass
class BargeIn:
    """One flush: at the end of the human's chunk ``frame`` (where speech began), the queued agent frames
    ``dropped`` (``samples_dropped`` samples) left the buffer unplayed; ``stale_dropped``: agent frames ``<= frame``
    that arrived after the flush and were dropped (``drop_stale``); ``flush_us``: wall time of VAD + flush."""

    frame: int
    dropped: list[int]
    samples_dropped: int
    stale_dropped: list[int] = dataclasses.field(default_factory=list)
    flush_us: float = 0.0

    @property
    def frames_dropped(self) -> int:
        return len(self.dropped)


@dataclasses.dataclass
class Tick:
    """One frame boundary: the human's VAD decision; the agent's audio frame queued (``enqueued``) or dropped as
    stale (``stale``), None when the agent had no complete audio frame; the frame ``played`` (None: silence); the
    buffer after the tick (``queued`` frame indices); ``barge_in`` when this tick flushed."""

    index: int
    voice: VoiceActivity
    enqueued: int | None
    stale: int | None
    played: int | None
    queued: list[int]
    barge_in: BargeIn | None


class PlayoutSession:
    """A live session's client: the VAD on the human's chunks, the jitter buffer of the agent's audio and barge-in
    (see the module docstring for the order of a tick). ``played_audio()`` is what the human heard."""

    def __init__(self, samples_per_frame: int, *, prefill: int = 3, capacity: int | None = None,
                 vad: EnergyVAD | None = None, drop_stale: bool = True):
        self.samples_per_frame = int(samples_per_frame)
        self.buffer = JitterBuffer(prefill, capacity)
        self.vad = vad or EnergyVAD()
        self.drop_stale = drop_stale
        self.reset()

    def reset(self) -> None:
        self.buffer.reset()
        self.vad.reset()
        self.ticks: list[Tick] = []
        self.barge_ins: list[BargeIn] = []
        self._cutoff = -1  # agent audio frames <= this were planned before the last interruption was heard
        self._played: list[np.ndarray] = []

    def tick(self, human_chunk: np.ndarray, agent_frame: Any | None) -> Tick:
        """One frame boundary: ``human_chunk`` ``[samples_per_frame]`` and the agent's frame of this boundary (an
        ``AgentFrame`` or anything with ``audio_frame``, ``codes`` and ``audio``; None: nothing arrived)."""
        t = len(self.ticks)
        chunk = np.asarray(human_chunk)
        if chunk.shape != (self.samples_per_frame,):
            raise DataError(f"human chunk {t} has shape {chunk.shape}, the session plays {self.samples_per_frame}-"
                            "sample frames: cut the human's audio into [frames, samples_per_frame] at the agent's rate")
        t0 = time.perf_counter()
        voice = self.vad(chunk)
        barge = None
        if voice.onset:
            dropped, samples = self.buffer.flush()
            barge = BargeIn(t, dropped, samples, flush_us=1e6 * (time.perf_counter() - t0))
            self.barge_ins.append(barge)
            self._cutoff = t
        enqueued = stale = None
        if agent_frame is not None and agent_frame.audio_frame >= 0 and agent_frame.codes is not None:
            j = int(agent_frame.audio_frame)
            audio = np.asarray(agent_frame.audio, np.float32)
            if audio.shape != (self.samples_per_frame,):
                raise DataError(f"the agent's audio frame {j} has shape {audio.shape}, the session plays "
                                f"{self.samples_per_frame}-sample frames")
            if self.drop_stale and j <= self._cutoff:
                stale = j
                self.barge_ins[-1].stale_dropped.append(j)
            else:
                self.buffer.push(j, audio)
                enqueued = j
        out = self.buffer.pop()
        self._played.append(np.zeros(self.samples_per_frame, np.float32) if out is None else out[1])
        tick = Tick(t, voice, enqueued, stale, None if out is None else out[0], self.buffer.indices, barge)
        self.ticks.append(tick)
        return tick

    def played_audio(self) -> np.ndarray:
        """The audio the human heard, one frame per tick (silence where nothing played)."""
        if not self._played:
            return np.zeros((0,), np.float32)
        return np.concatenate(self._played)

    def summary(self) -> dict:
        played = [tk.index for tk in self.ticks if tk.played is not None]
        first = played[0] if played else None
        flushed = planned = 0  # played after a barge-in: frames it flushed (always 0); frames <= its frame
        for b in self.barge_ins:
            after = [tk.played for tk in self.ticks[b.frame:] if tk.played is not None]
            flushed += len(set(after) & set(b.dropped))
            planned += sum(1 for j in after if j <= b.frame)
        return {"prefill_frames": self.buffer.prefill, "ticks": len(self.ticks), "frames_played": len(played),
                "first_played_tick": first, "underruns": self.buffer.underruns, "overflows": self.buffer.overflows,
                "barge_ins": [{"frame": b.frame, "frames_dropped": b.frames_dropped,
                               "samples_dropped": b.samples_dropped,
                               "ms_dropped": round(1000.0 * b.samples_dropped / (self.samples_per_frame * FPS), 1),
                               "stale_frames_dropped": len(b.stale_dropped), "flush_us": round(b.flush_us, 1),
                               "queue_after_flush": len(self.ticks[b.frame].queued)}
                              for b in self.barge_ins],
                "flushed_frames_played_later": flushed, "frames_planned_before_interruption_played_after": planned}


def play(agent, human_audio: np.ndarray, session: PlayoutSession | None = None, *,
         human_video: Iterable[Any] | None = None, **stream_kw) -> Iterator[tuple[Any, Tick, float]]:
    """Stream ``agent`` (a ``DuplexAgent`` or anything with its ``stream`` generator and ``samples_per_frame``)
    over the human's audio ``[frames, samples_per_frame]`` through a playout session. Yields ``(AgentFrame, Tick,
    seconds)`` per frame: the seconds from handing the human's chunk over to the tick's end (tokenizing, the LM
    step, decoding and the client's VAD / buffer work)."""
    chunks = np.asarray(human_audio, np.float32)
    if chunks.ndim != 2 or chunks.shape[1] != agent.samples_per_frame:
        raise DataError(f"human audio must be [frames, {agent.samples_per_frame}] (one chunk per 40 ms frame at "
                        f"{agent.sample_rate} Hz), got shape {chunks.shape}")
    session = session or PlayoutSession(agent.samples_per_frame)
    session.reset()
    handed: list[float] = []

    def feed():
        for chunk in chunks:
            handed.append(time.perf_counter())
            yield chunk

    for i, frame in enumerate(agent.stream(feed(), human_video, **stream_kw)):
        tick = session.tick(chunks[i], frame)
        yield frame, tick, time.perf_counter() - handed[i]


# ---------------------------------------------------------------------------------------------- the numbers


def stream_numbers(latencies_s: list[float], warmup_frames: int = 10) -> dict:
    """First-frame latency, per-frame p50 / p95 / max (ms), real-time factor, steady-state fps (after
    ``warmup_frames``) and deadline misses (frames slower than 40 ms) of a stream's per-frame latencies."""
    ms = 1000.0 * np.asarray(latencies_s, np.float64)
    if not ms.size:
        return {}
    steady = ms[min(warmup_frames, ms.size - 1):]
    return {"first_frame_ms": round(float(ms[0]), 3), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "max_ms": round(float(ms.max()), 3),
            "mean_ms": round(float(ms.mean()), 3), "real_time_factor": round(float(ms.mean()) / FRAME_MS, 4),
            "steady_state_fps": round(1000.0 / float(steady.mean()), 2), "steady_frames": int(steady.size),
            "deadline_misses": int(np.sum(ms > FRAME_MS)), "frames": int(ms.size)}


def scripted_human(frames: int, samples_per_frame: int, sample_rate: int, onset: int | None,
                   seed: int = 0) -> np.ndarray:
    """The human's audio ``[frames, samples_per_frame]``: silence, then synthface speech whose first voiced
    sample is at the start of frame ``onset`` (None or past the end: silent throughout)."""
    from avatarjax.data.synthface.audio import synth_speech

    out = np.zeros((frames, samples_per_frame), np.float32)
    if onset is None or onset >= frames:
        return out
    n = frames - onset
    wav, _, events = synth_speech(np.random.default_rng(seed), n + 20, sr=sample_rate)
    start = int(events["leading_silence_s"] * sample_rate)
    speech = wav[start:start + n * samples_per_frame]
    out[onset:].reshape(-1)[:speech.shape[0]] = speech
    return out


# ------------------------------------------------------------------------------------------------- bench


def _codec(path: str, task: str, fresh_config: Path, overrides: list[str], seed: int, init: str,
           notes: list[str]):
    """A codec from ``path`` if it exists, else a freshly initialised one of ``fresh_config`` (latency only)."""
    from avatarjax.config import load_config
    from avatarjax.pipelines.duplex_agent import load_codec

    if path and Path(path).exists():
        return load_codec(path, task), str(Path(path).absolute())
    notes.append(f"{task}: freshly initialised {fresh_config.relative_to(CONFIGS.parent)} {' '.join(overrides)} "
                 f"(no checkpoint at '{path}'; random weights: latency only)")
    return fresh_model(load_config(fresh_config, overrides), seed, init), f"fresh init ({init}; random weights)"


def _load_avg() -> float | None:
    """The host's 1-minute load average (shared CPUs: latency numbers are only comparable at similar load)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ------------------------------------------------------------------------------ windowed online generation


def online_schedule(plan, compute_s: list[float], fps: int = FPS) -> dict:
    """Streaming numbers of windowed online generation on the stream clock.

    The human's audio frame ``t`` has arrived at ``(t + 1) / fps`` s. Window ``k`` can start once its last audio
    frame has arrived and window ``k - 1`` is done (one generator, windows in order); it takes ``compute_s[k]`` and
    shows its new frames (those beyond the previous window's overlap) when done. A frame's latency is from its
    audio's arrival to its display, so it includes waiting for the rest of its window (the window's *algorithmic*
    latency) as well as compute and any backlog of earlier windows."""
    if len(compute_s) != plan.num_windows:
        raise DataError(f"{len(compute_s)} window timings for a plan of {plan.num_windows} windows")
    frame_s = 1.0 / fps
    done, lat, backlog = 0.0, [], []
    new_frames = []
    for k, start in enumerate(plan.starts):
        valid, known = plan.valid(k), plan.known_frames(k)
        ready = (start + valid) * frame_s
        begin = max(ready, done)
        backlog.append(begin - ready)
        done = begin + compute_s[k]
        lat += [done - (t + 1) * frame_s for t in range(start + known, start + valid)]
        new_frames.append(valid - known)
    lat_ms = 1000.0 * np.asarray(lat)
    c = np.asarray(compute_s, np.float64)
    steady = slice(1, None) if plan.num_windows > 1 else slice(None)
    media_s = plan.num_frames * frame_s
    return {"first_frame_ms": round(float(lat_ms[0]), 2), "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
            "p95_ms": round(float(np.percentile(lat_ms, 95)), 2), "max_ms": round(float(lat_ms.max()), 2),
            "algorithmic_ms": round(plan.window * frame_s * 1000.0, 1),
            "real_time_factor": round(float(c.sum()) / media_s, 4),
            "real_time_factor_steady": round(float(c[steady].sum()) / (sum(new_frames[steady]) * frame_s), 4),
            "steady_state_fps": round(sum(new_frames[steady]) / float(c[steady].sum()), 2),
            "window_compute_ms": [round(1000.0 * x, 1) for x in compute_s],
            "max_backlog_ms": round(1000.0 * max(backlog), 1), "keeps_up": bool(max(backlog[1:], default=0.0) == 0.0),
            "frames": plan.num_frames, "windows": plan.num_windows, "window": plan.window, "overlap": plan.overlap}


def run_online(plan, run_window) -> tuple[list[np.ndarray], list[float]]:
    """Run ``run_window(k)`` for every window of ``plan`` in order: (each window's new frames, its seconds)."""
    out, seconds = [], []
    for k in range(plan.num_windows):
        t0 = time.perf_counter()
        frames = run_window(k)
        seconds.append(time.perf_counter() - t0)
        want = plan.valid(k) - plan.known_frames(k)
        if len(frames) != want:
            raise DataError(f"window {k} gave {len(frames)} new frames, its plan has {want}")
        out.append(frames)
    return out, seconds


def _parse_with_overrides(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``p``'s options, and the ``--config.*`` overrides left over (anything else is an error)."""
    ns, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    return ns, rest


def bench_windowed(argv: list[str]) -> dict:
    """``avatarjax bench streaming --mode windowed [--checkpoint GEN] [--frames 250] [--out R.json]``: windowed
    online generation (``InstructAvatarOnline``) of a synthface utterance with the InstructAvatar generator."""
    from avatarjax.data.synthface import identity as identity_lib, render, schema
    from avatarjax.pipelines.demo_inputs import first_heldout_identity
    from avatarjax.pipelines import windowed
    from avatarjax.pipelines.instruct_avatar import InstructAvatarOnline, InstructAvatarPipeline

    p = argparse.ArgumentParser(prog="avatarjax bench streaming --mode windowed")
    p.add_argument("--mode", default="windowed")
    p.add_argument("--checkpoint", default=str(CONFIGS.parent / "assets" / "instructavatar_small" / "generator"),
                   help="InstructAvatar generator (workdir / export; default: the shipped small one)")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: the config's)")
    p.add_argument("--instruction", default="talk happily")
    p.add_argument("--seam-smoothing", type=float, default=None,
                   help="windowed.smooth_seam_causal sigma at each hand-over (default: the pipeline's; 0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    ns, rest = _parse_with_overrides(p, argv)
    load_start = _load_avg()
    t0 = time.perf_counter()
    pipe = InstructAvatarPipeline.load(ns.checkpoint, overrides=tuple(rest))
    load_s = time.perf_counter() - t0
    ident = identity_lib.sample_identity(first_heldout_identity())
    portrait = render.render_frames(ident, schema.neutral_state(1), size=pipe.frame_size)[0]
    wave = scripted_human(ns.frames, schema.SAMPLES_PER_FRAME, schema.SAMPLE_RATE, 0, ns.seed).reshape(-1)
    options = {"seed": ns.seed, **({"num_steps": ns.num_steps} if ns.num_steps else {})}
    kw = dict(window=ns.window, overlap=ns.overlap, **options)
    if ns.seam_smoothing is not None:
        kw["seam_smoothing"] = ns.seam_smoothing
    t0 = time.perf_counter()
    online = InstructAvatarOnline(pipe, portrait, wave, ns.instruction, **kw)
    prepare_s = time.perf_counter() - t0
    frames, seconds = run_online(online.plan, online)  # window 0 compiles the generator and decoder (not ahead)
    cold = online_schedule(online.plan, seconds)
    warm0 = InstructAvatarOnline(pipe, portrait, wave, ns.instruction, **kw)
    t0 = time.perf_counter()
    warm0(0)
    warm_first = time.perf_counter() - t0
    warm = online_schedule(online.plan, [warm_first] + seconds[1:])
    video = np.concatenate(frames)
    result = {
        "bench": "streaming", "mode": "windowed", "checkpoint": str(Path(ns.checkpoint).absolute()),
        "overrides": rest, "sampler": online.opts.sampler, "num_steps": pipe.steps_per_window(**options),
        "frames": ns.frames, "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
        "jax": jax.__version__,
        "host": {"cpus": os.cpu_count(), "load_avg_1m_start": load_start, "load_avg_1m_end": _load_avg()},
        "cold_start": {"load_s": round(load_s, 3), "prepare_s": round(prepare_s, 3),
                       "first_window_incl_compile_s": round(seconds[0], 3)},
        "latency": cold, "latency_compiled_ahead": {k: warm[k] for k in ("first_frame_ms", "p50_ms", "p95_ms",
                                                                         "max_ms", "keeps_up", "max_backlog_ms")},
        "output": {"frames": int(video.shape[0]), "audio_frames": len(online.wave) // online.spf,
                   "frame_shape": list(video.shape[1:])},
        "seam_smoothing": online.seam_smoothing,
        # the hand-overs as shown: seam p95 over the within-chunk p95 of the latents' frame-to-frame change
        "seams_latents": windowed.seam_jumps(np.abs(np.diff(online.shown, axis=0)).mean(axis=1), online.plan),
        "notes": ["latency counts from each frame's audio arriving to the frame being shown: a frame waits for the "
                  "rest of its window's audio (algorithmic_ms) plus compute; 'latency' includes compiling the "
                  "generator in window 0, 'latency_compiled_ahead' replaces window 0 with a compiled re-run",
                  "causal: per-window audio features and pose, pose smoothed over the past only"],
    }
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(json.dumps(result, indent=2))
        result["report"] = str(Path(ns.out).absolute())
    return result


def bench_streaming(argv: list[str]) -> dict:
    """``avatarjax bench streaming [--config C] [--checkpoint LM] [--frames 250] [--barge-in F] [--jitter N]
    [--out R.json] [--config.a.b=v ...]``: a bounded live run of the duplex agent through a playout session
    (see the module docstring); the human is silent, then speaks from frame ``--barge-in`` (default: half way)."""
    mode = argparse.ArgumentParser(add_help=False)
    mode.add_argument("--mode", choices=("duplex", "windowed"), default="duplex")
    if mode.parse_known_args(argv)[0].mode == "windowed":
        return bench_windowed(argv)
    p = argparse.ArgumentParser(prog="avatarjax bench streaming")
    p.add_argument("--mode", choices=("duplex", "windowed"), default="duplex",
                   help="duplex: the duplex agent; windowed: windowed online generation (see bench_windowed)")
    p.add_argument("--config", default=str(CONFIGS / "speechvideo" / "duplex_tiny.py"),
                   help="speech_video config (real tokens, e.g. duplex_tiny; or stand-in, e.g. synthface_small)")
    p.add_argument("--checkpoint", default="", help="speech_video LM workdir / export (default: fresh init)")
    p.add_argument("--dac", default="", help="DAC checkpoint (real tokens; default: data.dac, else fresh init)")
    p.add_argument("--video-tokenizer", default="", help="video tokenizer checkpoint (default: data.video_tokenizer, "
                                                         "else fresh init)")
    p.add_argument("--init", choices=("model", "normal"), default="model",
                   help="fresh weights: the model's initialisers, or N(0, 0.05) from numpy (no compilation)")
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--barge-in", type=int, default=None, help="frame where the human starts speaking (default: "
                                                              "frames // 2; negative: the human stays silent)")
    p.add_argument("--jitter", type=int, default=3, help="jitter-buffer prefill (frames)")
    p.add_argument("--hangover", type=int, default=6, help="VAD hangover (frames)")
    p.add_argument("--vad-db", type=float, default=REAL_TALK_DB, help="VAD threshold (dBFS)")
    p.add_argument("--warmup-frames", type=int, default=10, help="frames left out of the steady-state fps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    ns, rest = _parse_with_overrides(p, argv)
    if ns.frames < 2:
        raise ConfigError(f"--frames {ns.frames}: a stream needs at least 2 frames")
    notes: list[str] = []
    from avatarjax.config import load_config
    from avatarjax.pipelines.duplex_agent import DuplexAgent, make_tokenizers, uses_real_tokens
    from avatarjax.train.export import load_model

    load_start = _load_avg()
    t0 = time.perf_counter()
    if ns.checkpoint:
        model, cfg = load_model(ns.checkpoint, overrides=rest)
        weights = str(Path(ns.checkpoint).absolute())
    else:
        cfg = load_config(ns.config, rest)
        model = fresh_model(cfg, ns.seed, ns.init)
        weights = f"fresh init ({ns.init}; random weights: latency only, the agent's speech is noise)"
    if cfg.task != "speech_video":
        raise ConfigError(f"{ns.checkpoint or ns.config} is a '{cfg.task}' model: pass a speech_video config or LM")
    codecs: dict[str, str] = {}
    if uses_real_tokens(cfg):
        rates = ["--config.model.encoder_rates=(8, 8, 10)", "--config.model.decoder_rates=(10, 8, 8)"]
        dac, codecs["dac"] = _codec(ns.dac or cfg.data.dac, "dac", CONFIGS / "dac" / "synthface_tiny.py", rates,
                                    ns.seed, ns.init, notes)
        vt, codecs["video_tokenizer"] = _codec(ns.video_tokenizer or cfg.data.video_tokenizer, "video_tokenizer",
                                               CONFIGS / "video_tokenizer" / "synthface_tiny.py", [], ns.seed,
                                               ns.init, notes)
        tok = make_tokenizers(cfg, dac, vt)
    else:
        tok = make_tokenizers(cfg)
    load_s = time.perf_counter() - t0
    agent = DuplexAgent((model, cfg), max_frames=ns.frames, seed=ns.seed, tokenizers=tok)
    compiled = dict(agent.compilations)
    notes += agent.notes
    onset = ns.frames // 2 if ns.barge_in is None else (None if ns.barge_in < 0 else ns.barge_in)
    human = scripted_human(ns.frames, agent.samples_per_frame, agent.sample_rate, onset, ns.seed)
    video = None
    if tok.real:  # the human's camera: a grey frame each tick (its encoding is part of every frame's latency)
        video = [np.full((tok.frame_size, tok.frame_size, 3), 128, np.uint8)] * ns.frames
        notes.append("human video: a grey frame per tick (the video tokenizer encodes it every frame)")
    session = PlayoutSession(agent.samples_per_frame, prefill=ns.jitter,
                             vad=EnergyVAD(ns.vad_db, hangover_frames=ns.hangover))
    latencies, agent_s, talking = [], [], []
    for frame, _, seconds in play(agent, human, session, human_video=video):
        latencies.append(seconds)
        agent_s.append(frame.latency_s)
        if frame.talking is not None:
            talking.append(frame.talking)
    numbers = stream_numbers(latencies, ns.warmup_frames)
    q = agent.lm.num_codebooks
    playout = session.summary()
    first_tick = playout["first_played_tick"]
    # chunk t is complete at (t + 1) x 40 ms of stream time; the agent's tick t ends its latency later
    first_audio_ms = None if first_tick is None else round((first_tick + 1) * FRAME_MS + 1e3 * latencies[first_tick], 2)
    after = dict(agent.compilations)
    net = agent.lm.backbone
    result = {
        "bench": "streaming", "mode": "duplex", "config": str(ns.config) if not ns.checkpoint else None,
        "overrides": rest, "weights": weights, "tokens": "real" if tok.real else "stand-in", "codecs": codecs,
        "backbone": {"dim": net.dim, "layers": net.num_layers, "heads": net.num_heads},
        "frames": ns.frames, "audio_codebooks": q, "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform, "jax": jax.__version__,
        "host": {"cpus": os.cpu_count(), "load_avg_1m_start": load_start, "load_avg_1m_end": _load_avg()},
        "cold_start": {"load_s": round(load_s, 3), "compile_s": round(agent.warmup_s, 3),
                       "first_frame_incl_load_and_compile_s": round(load_s + agent.warmup_s + latencies[0], 3)},
        "latency": numbers,
        "agent_only_ms": {"p50": round(1e3 * float(np.percentile(agent_s, 50)), 3),
                          "p95": round(1e3 * float(np.percentile(agent_s, 95)), 3)},
        "first_audio": {"tick": first_tick, "stream_ms": first_audio_ms,
                        "explained": f"delay pattern: {q - 1} frame(s); jitter-buffer prefill: {ns.jitter} frame(s)"},
        "compilations": {"after_warmup": compiled, "after_stream": after,
                         "recompiled_during_stream": after != compiled},
        "human_speech_onset_frame": onset, "playout": playout,
        "agent_talking_fraction": round(float(np.mean(talking)), 4) if talking else None,
        "notes": notes,
    }
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(json.dumps({**result, "latency_ms_per_frame": [round(1e3 * s, 3) for s in latencies]},
                                           indent=2))
        result["report"] = str(Path(ns.out).absolute())
    return result
