"""Body of Her's dual system (paper Sec. 5.2): an asynchronous chain-of-thought planner beside the duplex agent.

From the conversation so far (the last four keyframes, one per second, and the transcript) a planner writes three
stages, as one JSON object (the *plan schema*, validated by :func:`parse_plan`)::

    {"description": {"human": {"who", "emotion", "behaviour", "environment"},
                     "agent": {"who", "emotion", "behaviour", "environment"}},
     "analysis": "...",
     "plan": {"prompt": "...", "emotion": "...", "behaviour": "...",
              "trajectory": {"fps": F, "yaw": [...], "pitch": [...], "roll": [...], "gaze_h": [...], "gaze_v": [...]}}}

The trajectory is the agent's head rotation (yaw / pitch / roll) and eye-in-head gaze (horizontal, positive = the
agent's left; vertical, positive = up), absolute, in degrees, sampled at ``F`` fps (0 < F <= 25) from the first
frame after the context over the next ``horizon_s`` (3 s): ``round(horizon_s * F) + 1`` samples (both ends; a
25 fps trajectory may also give exactly 75). It is resampled linearly to the generator's 25 fps. ``gaze_h`` /
``gaze_v`` may be left out (held at 0). A plan is rejected, with the reason logged, when a key is missing, a text
field is empty, a number is not finite, a value leaves its range (:data:`TRAJECTORY_RANGES`) or the head turns
faster than :data:`MAX_HEAD_SPEED_DEG_S`; the agent then keeps its current controls.

Asynchrony (:class:`AsyncPlanner`): the planner runs in its own thread. The streaming loop calls it twice per
frame, never waiting on it: ``planner(i)`` at the boundary *before* frame ``i`` (returns the ``StreamControls``
fields to change, or None) and ``planner.observe(item, audio, human_frame)`` after it (a ring buffer append). Every
``cadence_frames`` of streamed media (25 = 1 s) the thread takes a snapshot of the context, asks its backend and,
when the reply validates, leaves the plan in a one-slot mailbox; the next frame boundary picks it up. A plan made
from context ending at frame ``c`` covers frames ``[c + 1, c + 1 + horizon)``: picked up at frame ``i`` it applies
its trajectory from offset ``i - (c + 1)``; a plan whose horizon has passed (in media frames, or in wall time since
its request) is dropped as stale; ``planner(0)`` starts a new dialogue (context and plans forgotten, a
plan still in flight for the old one dropped). On time = picked up within ``on_time_frames`` (25: the paper's
VLM answers in 0.5-1 s) of its first frame.

What a plan can steer in our speech-video LM (``models/speech_video_lm.StreamControls``): the **trajectory** enters
through the LM's motion slot, per frame, as the training data's motion features (``speech_video.motion_trajectory``
of the LM's ``data.motion_features``, passed as ``motion_features``: ``"velocity"``, the velocities of yaw, pitch
and roll scaled to [-1, 1] by their ranges, times 10, translation velocities 0; or ``"pose"``, the scaled yaw,
pitch and roll themselves); the
**prompt** through the text slot, only for an LM trained with ``data.text_encoder`` (else it is not used and a
note says so). Gaze and the emotion / behaviour labels have no input of their own: they act only through the text
prompt. Whether the LM follows them is a property of its training; ``synthface_planner.evaluate_planner`` measures
it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatarjax.data.synthface import schema
from avatarjax.errors import AvatarError, DataError
from avatarjax.planning import llm as L

FPS = schema.FPS
HORIZON_S = 3.0
TRAJECTORY_CHANNELS = ("yaw", "pitch", "roll", "gaze_h", "gaze_v")
HEAD_CHANNELS = ("yaw", "pitch", "roll")
TRAJECTORY_RANGES = {"yaw": schema.RANGES["yaw"], "pitch": schema.RANGES["pitch"], "roll": schema.RANGES["roll"],
                     "gaze_h": (-schema.GAZE_DEGREES, schema.GAZE_DEGREES),
                     "gaze_v": (-schema.GAZE_DEGREES, schema.GAZE_DEGREES)}
MAX_HEAD_SPEED_DEG_S = 300.0  # faster than any head turn people make (about 200 deg/s at most)
MAX_TEXT_CHARS = 600
PARTY_KEYS = ("who", "emotion", "behaviour", "environment")
MOTION_SCALE = 10.0  # speech_video.MOTION_SCALE: the LM's motion features are scaled velocities x 10
MOTION_FEATURES = ("velocity", "pose")  # speech_video.MOTION_FEATURES


class PlanError(AvatarError):
    """A planner reply that does not follow the plan schema (the reason names the field)."""


# ------------------------------------------------------------------------------------------------ plan schema


@dataclass
class DualPlan:
    """A validated plan. trajectory: float32 ``[horizon_frames, 5]`` (``TRAJECTORY_CHANNELS``, degrees, 25 fps);
    context_frame: the newest frame of the context it was made from (-1 = none): it covers frames
    ``[context_frame + 1, context_frame + 1 + horizon_frames)``."""

    description: dict
    analysis: str
    prompt: str
    emotion: str
    behaviour: str
    trajectory: np.ndarray
    context_frame: int = -1
    backend: str = ""
    latency_s: float = 0.0
    requested_at: float = 0.0  # wall clock (time.perf_counter) of the request

    @property
    def horizon_frames(self) -> int:
        return int(self.trajectory.shape[0])

    @property
    def start_frame(self) -> int:
        return self.context_frame + 1

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.horizon_frames

    def to_dict(self, fps: float = FPS) -> dict:
        """The plan in the schema (trajectory resampled to ``fps``, values rounded to 0.01 degree)."""
        return {"description": self.description, "analysis": self.analysis,
                "plan": {"prompt": self.prompt, "emotion": self.emotion, "behaviour": self.behaviour,
                         "trajectory": trajectory_to_dict(self.trajectory, fps)}}


def _text(d: dict, key: str, where: str) -> str:
    if key not in d:
        raise PlanError(f"{where}.{key} is missing")
    v = d[key]
    if not isinstance(v, str) or not v.strip():
        raise PlanError(f"{where}.{key} must be a non-empty string, got {str(v)[:40]!r}")
    if len(v) > MAX_TEXT_CHARS:
        raise PlanError(f"{where}.{key} has {len(v)} characters (at most {MAX_TEXT_CHARS})")
    return v.strip()


def _obj(d: Any, key: str, where: str) -> dict:
    if not isinstance(d, dict) or key not in d:
        raise PlanError(f"{where}.{key} is missing")
    if not isinstance(d[key], dict):
        raise PlanError(f"{where}.{key} must be an object, got {type(d[key]).__name__}")
    return d[key]


def parse_trajectory(t: dict, horizon_s: float = HORIZON_S, fps: float = FPS) -> np.ndarray:
    """A trajectory object (see the module docstring) -> float32 ``[round(horizon_s * fps), 5]`` at ``fps``."""
    rate = t.get("fps")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= fps:
        raise PlanError(f"plan.trajectory.fps must be a number in (0, {fps:g}], got {rate!r}")
    frames = int(round(horizon_s * fps))
    want = int(round(horizon_s * rate)) + 1
    unknown = sorted(set(t) - set(TRAJECTORY_CHANNELS) - {"fps"})
    if unknown:
        raise PlanError(f"plan.trajectory has unknown channels {unknown} (known: {list(TRAJECTORY_CHANNELS)})")
    out = np.zeros((frames, len(TRAJECTORY_CHANNELS)), np.float32)
    grid = np.arange(frames) / fps
    for c, name in enumerate(TRAJECTORY_CHANNELS):
        if name not in t:
            if name in HEAD_CHANNELS:
                raise PlanError(f"plan.trajectory.{name} is missing")
            continue
        values = t[name]
        if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                               for v in values):
            raise PlanError(f"plan.trajectory.{name} must be a list of numbers")
        if len(values) not in (want, frames if rate == fps else want):
            raise PlanError(f"plan.trajectory.{name} has {len(values)} samples; at {rate:g} fps over {horizon_s:g} s "
                            f"it needs {want}")
        v = np.asarray(values, np.float64)
        if not np.isfinite(v).all():
            raise PlanError(f"plan.trajectory.{name} holds a non-finite number")
        lo, hi = TRAJECTORY_RANGES[name]
        if v.min() < lo or v.max() > hi:
            raise PlanError(f"plan.trajectory.{name} leaves its range [{lo:g}, {hi:g}] degrees "
                            f"(min {v.min():.1f}, max {v.max():.1f})")
        out[:, c] = np.interp(grid, np.arange(len(v)) / rate, v)
    speed = np.abs(np.diff(out[:, :3], axis=0)).max(initial=0.0) * fps
    if speed > MAX_HEAD_SPEED_DEG_S:
        raise PlanError(f"plan.trajectory turns the head at {speed:.0f} deg/s (at most {MAX_HEAD_SPEED_DEG_S:g})")
    return out


def trajectory_to_dict(trajectory: np.ndarray, fps: float = FPS, horizon_s: float | None = None) -> dict:
    """float32 ``[frames, 5]`` at 25 fps -> the schema's trajectory object at ``fps`` (linear resampling)."""
    frames = trajectory.shape[0]
    horizon_s = frames / FPS if horizon_s is None else horizon_s
    n = frames if fps == FPS else int(round(horizon_s * fps)) + 1
    src = np.arange(frames) / FPS
    at = np.arange(n) / fps
    out: dict[str, Any] = {"fps": fps}
    for c, name in enumerate(TRAJECTORY_CHANNELS):
        out[name] = [round(float(x), 2) for x in np.interp(at, src, trajectory[:, c])]
    return out


def parse_plan(obj: Any, *, horizon_s: float = HORIZON_S, fps: float = FPS) -> DualPlan:
    """A reply object -> :class:`DualPlan`, or :class:`PlanError` naming the first problem."""
    if not isinstance(obj, dict):
        raise PlanError(f"the reply must be a JSON object, got {type(obj).__name__}")
    desc = _obj(obj, "description", "reply")
    description = {}
    for party in ("human", "agent"):
        p = _obj(desc, party, "description")
        description[party] = {k: _text(p, k, f"description.{party}") for k in PARTY_KEYS}
    analysis = _text(obj, "analysis", "reply")
    plan = _obj(obj, "plan", "reply")
    traj = parse_trajectory(_obj(plan, "trajectory", "plan"), horizon_s, fps)
    return DualPlan(description=description, analysis=analysis, prompt=_text(plan, "prompt", "plan"),
                    emotion=_text(plan, "emotion", "plan"), behaviour=_text(plan, "behaviour", "plan"),
                    trajectory=traj)


def _check_motion_features(kind: str) -> None:
    if kind not in MOTION_FEATURES:
        raise AvatarError(f"unknown motion features '{kind}': choose velocity or pose (the LM's data.motion_features)")


def motion_features(trajectory: np.ndarray, kind: str = "velocity") -> np.ndarray:
    """Trajectory ``[T, 5]`` (degrees) -> the LM's motion features ``[T, 6]``, as
    ``speech_video.motion_trajectory(state, kind)``: ``"velocity"``: scaled head-rotation velocities x 10, first
    frame 0; ``"pose"``: the scaled head rotation; translation channels 0 in both."""
    _check_motion_features(kind)
    lo = np.array([TRAJECTORY_RANGES[c][0] for c in HEAD_CHANNELS], np.float32)
    hi = np.array([TRAJECTORY_RANGES[c][1] for c in HEAD_CHANNELS], np.float32)
    x = 2 * (np.asarray(trajectory, np.float32)[:, :3] - lo) / (hi - lo) - 1
    out = np.zeros((x.shape[0], 6), np.float32)
    out[:, :3] = x if kind == "pose" else np.diff(x, axis=0, prepend=x[:1]) * MOTION_SCALE
    return out


# ----------------------------------------------------------------------------------------------- transcript


_LINE = re.compile(r"^\s*\[\s*(?P<start>[\d.]+)\s*(?:-|–|,)\s*(?P<end>[\d.]+)\s*\]"
                   r"\s*(?P<who>[^:]+?)\s*:\s*(?P<text>.*)$")


@dataclass(frozen=True)
class Utterance:
    start_s: float
    end_s: float
    speaker: str
    text: str

    def line(self) -> str:
        return f"[{self.start_s:.2f}-{self.end_s:.2f}] {self.speaker}: {self.text}"


def parse_utterance(line: str) -> Utterance:
    """``[START-END] SPEAKER: TEXT`` (seconds from the start of the dialogue) or a JSON object ``{"start",
    "end", "speaker", "text"}`` -> :class:`Utterance`; :class:`DataError` naming the format otherwise."""
    s = line.strip()
    if s.startswith("{"):
        try:
            d = json.loads(s)
            u = Utterance(float(d["start"]), float(d["end"]), str(d["speaker"]).strip(), str(d["text"]).strip())
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"transcript line {s[:60]!r} is not a JSON object with start, end, speaker, text "
                            f"({type(err).__name__}); fix the line or use '[START-END] SPEAKER: TEXT'") from None
    else:
        m = _LINE.match(s)
        if not m:
            raise DataError(f"transcript line {s[:60]!r} is not '[START-END] SPEAKER: TEXT' (seconds, e.g. "
                            "'[1.20-2.85] human: hello') or a JSON object with start, end, speaker, text")
        u = Utterance(float(m["start"]), float(m["end"]), m["who"].strip(), m["text"].strip())
    if not (np.isfinite(u.start_s) and np.isfinite(u.end_s)) or u.end_s < u.start_s or u.start_s < 0:
        raise DataError(f"transcript line {s[:60]!r}: need 0 <= start <= end (seconds)")
    if not u.speaker or not u.text:
        raise DataError(f"transcript line {s[:60]!r}: the speaker and the text must not be empty")
    return u


class Transcript:
    """The conversation as text, fed live from any thread (``add`` / ``feed``); the planner reads only what was
    said before its context's end (``before``), so a transcript known in advance never leaks the future."""

    def __init__(self, utterances: Iterable[Utterance | str] = (), max_lines: int = 200):
        self._lines: deque[Utterance] = deque(maxlen=max_lines)
        self._lock = threading.Lock()
        self.feed(utterances)

    def add(self, u: Utterance | str) -> Utterance:
        u = parse_utterance(u) if isinstance(u, str) else u
        with self._lock:
            self._lines.append(u)
        return u

    def feed(self, lines: Iterable[Utterance | str]) -> int:
        """Add every non-blank line (``#`` comments skipped); returns how many were added."""
        n = 0
        for line in lines:
            if isinstance(line, str) and (not line.strip() or line.lstrip().startswith("#")):
                continue
            self.add(line)
            n += 1
        return n

    @classmethod
    def from_file(cls, path: str | Path) -> Transcript:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"transcript file '{path}' does not exist: pass a text file of "
                            "'[START-END] SPEAKER: TEXT' lines (or JSON lines)")
        return cls(path.read_text().splitlines())

    def follow(self, stream: Iterable[str]) -> threading.Thread:
        """Read ``stream`` (e.g. ``sys.stdin`` or a socket file) line by line in a daemon thread."""
        thread = threading.Thread(target=self.feed, args=(stream,), daemon=True, name="transcript")
        thread.start()
        return thread

    def before(self, t_s: float, last: int = 12) -> list[Utterance]:
        """The utterances that ended by ``t_s`` seconds, the last ``last`` of them, in time order."""
        with self._lock:
            done = [u for u in self._lines if u.end_s <= t_s + 1e-9]
        return sorted(done, key=lambda u: (u.end_s, u.start_s))[-last:]


# -------------------------------------------------------------------------------------------------- context


@dataclass
class Keyframe:
    """One keyframe of the context: the human's frame (RGB uint8 ``[H, W, 3]`` or a synthface face state
    ``[24]``; None when absent) and the agent's (RGB or face state) at media frame ``frame``."""

    frame: int
    human: np.ndarray | None
    agent: np.ndarray | None
    human_text: str | None = None  # a text description replacing describe_frame(human) (fine-tuning rows)
    agent_text: str | None = None


@dataclass
class PlanContext:
    frame: int  # the newest frame of the context
    keyframes: list[Keyframe]
    transcript: list[Utterance]
    fps: float = FPS
    horizon_s: float = HORIZON_S
    request: dict = field(default_factory=dict)  # extra machine-readable fields for the backend (offline world)
    dialogue: int = 0  # which dialogue of the planner the context belongs to


def describe_state(state: np.ndarray) -> str:
    """A face state ``[24]`` in words (for text-only planners): head pose, gaze, smile, brows, eyes, mouth."""
    s = np.asarray(state, np.float32)
    ix = schema.INDEX
    h, v = schema.gaze_angles(s)
    d = lambda x: f"{int(round(float(x))):+d}"  # noqa: E731 - no "-0"
    parts = [f"head yaw {d(s[ix['yaw']])} pitch {d(s[ix['pitch']])} roll {d(s[ix['roll']])} deg",
             f"gaze {d(h)} / {d(v)} deg"]
    smile = float(s[ix["smile"]])
    parts.append("smiling" if smile > 0.3 else "frowning" if smile < -0.2 else "neutral mouth")
    if s[ix["jaw_open"]] > 0.25:
        parts.append("mouth open (talking)")
    brows = float(np.mean(s[[ix["au1_l"], ix["au1_r"], ix["au2_l"], ix["au2_r"]]]))
    if brows > 0.3:
        parts.append("brows raised")
    if s[ix["au4"]] > 0.3:
        parts.append("brows lowered")
    if min(s[ix["au45_l"]], s[ix["au45_r"]]) > 0.6:
        parts.append("eyes closed")
    return ", ".join(parts)


def describe_frame(frame: np.ndarray | None) -> str:
    if frame is None:
        return "not seen"
    frame = np.asarray(frame)
    if frame.shape == (schema.NUM_CHANNELS,):
        return describe_state(frame)
    if frame.ndim == 3:
        return f"image {frame.shape[1]}x{frame.shape[0]} (no text description: use a vision-language endpoint)"
    return f"array of shape {frame.shape}"


SYSTEM_PROMPT = (
    "You are the planner of a conversational video agent. Think in three stages. Description: portray the human and "
    "the agent (who: characteristics such as gender, age, appearance; emotion; behaviour; environment: space, time, "
    "critical objects). Analysis: the details of emotions, behaviours and critical objects and how they should "
    "influence the agent. Plan: the agent's behaviour for the next {horizon:g} seconds as a short text prompt, an "
    "emotion, a behaviour, and a head and eye trajectory. Reply with ONE JSON object only: "
    '{{"description": {{"human": {{"who", "emotion", "behaviour", "environment"}}, "agent": {{same keys}}}}, '
    '"analysis": "...", "plan": {{"prompt": "...", "emotion": "...", "behaviour": "...", "trajectory": {{"fps": F, '
    '"yaw": [...], "pitch": [...], "roll": [...], "gaze_h": [...], "gaze_v": [...]}}}}}}. The trajectory is absolute '
    "degrees from the next frame on, round({horizon:g} * F) + 1 samples per channel; ranges: yaw [-45, 45] (positive "
    "= the agent's left), pitch [-30, 30] (positive = up), roll [-30, 30], gaze_h and gaze_v [-30, 30] (eye-in-head; "
    "positive = left / up); head speed at most {speed:g} deg/s.")


def context_text(ctx: PlanContext, images: bool) -> str:
    lines = [f"Now: {ctx.frame / ctx.fps:.2f} s into the conversation (frame {ctx.frame} at {ctx.fps:g} fps). "
             f"Plan the next {ctx.horizon_s:g} s."]
    lines.append(f"Keyframes (oldest first, {len(ctx.keyframes)}):")
    for k, kf in enumerate(ctx.keyframes):
        t = kf.frame / ctx.fps
        if images and kf.human is not None and np.asarray(kf.human).ndim == 3:
            lines.append(f"  keyframe {k} at {t:.2f} s: image {k} shows the human")
        else:
            lines.append(f"  keyframe {k} at {t:.2f} s: human: {kf.human_text or describe_frame(kf.human)}")
        lines.append(f"    agent: {kf.agent_text or describe_frame(kf.agent)}")
    lines.append("Transcript (most recent last):" if ctx.transcript else "Transcript: (nothing said yet)")
    lines += ["  " + u.line() for u in ctx.transcript]
    return "\n".join(lines)


def build_messages(ctx: PlanContext, *, images: bool = False, image_format: str = "png") -> list[dict]:
    """Chat messages for a planner: the system prompt and one user turn. With ``images`` the human's RGB keyframes
    are attached as OpenAI ``image_url`` parts (base64 data URLs) after the text; otherwise everything is text.
    ``ctx.request`` (machine-readable context for the offline backend) is appended as a ``REQUEST_JSON`` line."""
    text = context_text(ctx, images)
    if ctx.request:
        text += "\n" + L.REQUEST_MARKER + " " + json.dumps(ctx.request)
    system = {"role": "system", "content": SYSTEM_PROMPT.format(horizon=ctx.horizon_s, speed=MAX_HEAD_SPEED_DEG_S)}
    pics = [kf.human for kf in ctx.keyframes if images and kf.human is not None and np.asarray(kf.human).ndim == 3]
    return [system, L.user_message(text, pics, image_format)]


# ------------------------------------------------------------------------------------------------ the planner


class AsyncPlanner:
    """The planner thread and the agent's ``controls_source`` (see the module docstring).

    backend: an ``llm`` backend (``complete(messages, seed) -> str``); images: attach RGB keyframes (HTTP VLMs);
    cadence_frames: media frames between requests; keyframe_every / num_keyframes: the context's keyframes (one per
    second, the last four); encode_prompt: ``prompt -> {"text", "text_mask"}`` fields or None (the LM has no text
    input), run in the planner thread; transcript: a :class:`Transcript` (optional); request: a dict or
    ``frame -> dict`` of machine-readable context for the backend; on_time_frames: how late (frames after its first
    frame) a plan may start and still count as on time; motion_features: the LM's ``data.motion_features``
    (``"velocity"`` or ``"pose"``), the form the trajectory is fed in."""

    def __init__(self, backend: L.Backend, *, images: bool = False, cadence_frames: int = FPS,
                 keyframe_every: int = FPS, num_keyframes: int = 4, horizon_s: float = HORIZON_S, fps: float = FPS,
                 encode_prompt: Callable[[str], dict | None] | None = None, transcript: Transcript | None = None,
                 request: dict | Callable[[int], dict] | None = None, on_time_frames: int = FPS,
                 max_repairs: int = 0, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                 motion_features: str = "velocity"):
        if cadence_frames < 1 or keyframe_every < 1 or num_keyframes < 1:
            raise AvatarError("the planner's cadence_frames, keyframe_every and num_keyframes must be >= 1")
        self.backend, self.images = backend, bool(images)
        self.cadence, self.every, self.num_keyframes = int(cadence_frames), int(keyframe_every), int(num_keyframes)
        self.horizon_s, self.fps = float(horizon_s), float(fps)
        self.encode_prompt, self.transcript, self.request = encode_prompt, transcript, request
        self.on_time_frames, self.max_repairs = int(on_time_frames), int(max_repairs)
        self.seed, self.clock = seed, clock
        _check_motion_features(motion_features)
        self.motion_features = motion_features
        self._buffer: deque[Keyframe] = deque(maxlen=(self.num_keyframes - 1) * self.every + 1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._mailbox: tuple[DualPlan, dict | None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._dialogue = 0
        self.reset()

    # ---- bookkeeping ----

    def reset(self) -> None:
        """Forget the dialogue and the statistics."""
        self._new_dialogue()
        self.log: list[dict] = []
        self.applied: list[dict] = []  # {"plan", "frame", "delay_frames", "on_time"}
        self.latencies: list[float] = []
        self.counts = {"requested": 0, "valid": 0, "rejected": 0, "failed": 0, "stale": 0, "superseded": 0,
                       "applied": 0}

    def _new_dialogue(self) -> None:
        """Forget the context and the plans (a stream restarted at frame 0); a plan still in flight for the old
        dialogue is dropped when it arrives."""
        with self._lock:
            self._buffer.clear()
            self._mailbox = None
            self._latest = -1
            self._next_request = self.cadence - 1
            self._dialogue += 1
        self.active: tuple[DualPlan, dict | None] | None = None
        self._motion_on = False

    def stats(self) -> dict:
        lat = np.asarray(self.latencies) * 1000.0
        applied = self.counts["applied"]
        return {**self.counts,
                "latency_ms": ({"median": round(float(np.median(lat)), 2), "p95": round(float(np.percentile(lat, 95)),
                                                                                         2),
                                "max": round(float(lat.max()), 2)} if lat.size else {}),
                "on_time_fraction": (round(sum(a["on_time"] for a in self.applied) / applied, 4) if applied else None),
                "on_time_fraction_of_valid": (round(sum(a["on_time"] for a in self.applied) / self.counts["valid"], 4)
                                              if self.counts["valid"] else None),
                "mean_delay_frames": (round(float(np.mean([a["delay_frames"] for a in self.applied])), 2)
                                      if applied else None)}

    # ---- the streaming side (never waits on the backend) ----

    def observe(self, item: Any, human_audio: Any = None, human_frame: Any = None) -> None:
        """After the agent's frame ``item.index``: remember the human's and the agent's frame; wake the thread
        when a request is due."""
        agent = getattr(item, "video", None)
        if agent is None:
            agent = getattr(item, "face_state", None)
        kf = Keyframe(int(item.index), None if human_frame is None else np.asarray(human_frame), agent)
        with self._wake:
            self._buffer.append(kf)
            self._latest = kf.frame
            if kf.frame >= self._next_request:
                self._wake.notify()

    def __call__(self, frame: int) -> dict | None:
        """At the boundary before ``frame``: the ``StreamControls`` fields that change, or None. Frame 0 starts a
        new dialogue (the stream resets its controls itself)."""
        if frame == 0:
            self._new_dialogue()
        with self._lock:
            new, self._mailbox = self._mailbox, None
        fields: dict = {}
        if new is not None:
            plan, text = new
            late = frame - plan.start_frame
            if frame >= plan.end_frame or self.clock() - plan.requested_at > self.horizon_s:
                self.counts["stale"] += 1
                self.log.append({"frame": frame, "event": "stale", "context_frame": plan.context_frame,
                                 "reason": f"arrived at frame {frame}, its horizon ended at frame {plan.end_frame - 1}"
                                 if frame >= plan.end_frame else f"older than its {self.horizon_s:g} s horizon"})
            else:
                if self.active is not None and self.active[0].end_frame > frame:
                    self.counts["superseded"] += 1
                self.active = new
                self.counts["applied"] += 1
                self.applied.append({"plan": plan, "frame": frame, "delay_frames": late,
                                     "on_time": late <= self.on_time_frames})
                if text is not None:
                    fields.update(text)
        if self.active is not None:
            plan, _ = self.active
            k = frame - plan.start_frame
            if 0 <= k < plan.horizon_frames:
                fields["motion"] = plan_motion(plan, self.motion_features)[k][None]
                fields["motion_mask"] = np.ones((1,), bool)
                self._motion_on = True
            elif frame >= plan.end_frame:
                self.active = None
        if self.active is None and self._motion_on:  # the horizon ran out: the trajectory slot is empty again
            fields["motion"] = np.zeros((1, 6), np.float32)
            fields["motion_mask"] = np.zeros((1,), bool)
            self._motion_on = False
        return fields or None

    # ---- the planner side ----

    def context(self) -> PlanContext | None:
        """A snapshot of the latest context (None before the first observed frame)."""
        with self._lock:
            if not self._buffer:
                return None
            buf, dialogue = list(self._buffer), self._dialogue
        newest = buf[-1].frame
        wanted = {newest - k * self.every for k in range(self.num_keyframes)}
        keyframes = [kf for kf in buf if kf.frame in wanted]
        t = (newest + 1) / self.fps
        transcript = self.transcript.before(t) if self.transcript is not None else []
        req = self.request(newest) if callable(self.request) else dict(self.request or {})
        if req:
            req = {**req, "frame": newest, "fps": self.fps, "horizon_s": self.horizon_s}
        return PlanContext(newest, keyframes, transcript, self.fps, self.horizon_s, req, dialogue)

    def plan_now(self) -> DualPlan | None:
        """Ask the backend once for the current context; publish a valid plan to the mailbox (returned), log a
        rejected or failed one (None)."""
        ctx = self.context()
        if ctx is None:
            return None
        self.counts["requested"] += 1
        t0 = self.clock()
        messages = build_messages(ctx, images=self.images)
        try:
            plan = L.ask_json(self.backend, messages, lambda d: parse_plan(d, horizon_s=self.horizon_s, fps=self.fps),
                              max_repairs=self.max_repairs, seed=self.seed + ctx.frame)
        except L.LLMReplyError as err:
            self.counts["rejected"] += 1
            self.log.append({"frame": ctx.frame, "event": "rejected", "reason": str(err)})
            return None
        except (L.LLMError, AvatarError, OSError) as err:
            self.counts["failed"] += 1
            self.log.append({"frame": ctx.frame, "event": "failed", "reason": f"{type(err).__name__}: {err}"})
            return None
        plan.context_frame, plan.requested_at = ctx.frame, t0
        plan.latency_s, plan.backend = self.clock() - t0, self.backend.name
        self.latencies.append(plan.latency_s)
        text = self.encode_prompt(plan.prompt) if self.encode_prompt is not None else None
        self.counts["valid"] += 1
        self.log.append({"frame": ctx.frame, "event": "valid", "latency_ms": round(1000 * plan.latency_s, 2),
                         "prompt": plan.prompt, "behaviour": plan.behaviour})
        with self._lock:
            if ctx.dialogue != self._dialogue:  # the stream restarted while the backend was thinking
                self.counts["stale"] += 1
                self.log.append({"frame": ctx.frame, "event": "stale", "reason": "made for a previous dialogue"})
                return None
            self._mailbox = (plan, text)
        return plan

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and self._latest < self._next_request:
                    self._wake.wait(0.05)
                if self._stop:
                    return
                # skip to the newest frame: a slow backend never builds a backlog
                self._next_request = self._latest + self.cadence
            self.plan_now()

    def start(self) -> AsyncPlanner:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, daemon=True, name="dual-planner")
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> AsyncPlanner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_MOTION_CACHE_ATTR = "_motion"


def plan_motion(plan: DualPlan, kind: str = "velocity") -> np.ndarray:
    """The plan's motion features ``[horizon, 6]`` of ``kind`` (computed once per plan and kind)."""
    cache = getattr(plan, _MOTION_CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(plan, _MOTION_CACHE_ATTR, cache)
    if kind not in cache:
        cache[kind] = motion_features(plan.trajectory, kind)
    return cache[kind]


def agent_prompt_encoder(agent) -> Callable[[str], dict | None] | None:
    """``prompt -> {"text", "text_mask"}`` with the duplex agent's text encoder, or None when its LM was trained
    without text (``data.text_encoder`` empty: the prompt cannot steer it)."""
    if not agent.cfg.data.text_encoder:
        return None

    def encode(prompt: str) -> dict:
        f = agent.controls(prompt, None, False)
        return {"text": f["text"], "text_mask": f["text_mask"]}

    return encode


def steerable(agent) -> dict:
    """What a plan can steer in this agent's LM (see the module docstring)."""
    text = bool(agent.cfg.data.text_encoder)
    motion = float(getattr(agent.cfg.data, "motion_prob", 0.0)) > 0 and agent.lm.motion_dim == 6
    return {"trajectory_head": motion, "prompt": text, "gaze": False, "emotion_label": False,
            "notes": [("head yaw / pitch / roll through the LM's motion slot" if motion else
                       "trajectory NOT steerable: the LM was trained without motion (data.motion_prob = 0)"),
                      ("prompt through the LM's text slot" if text else
                       "prompt NOT steerable: the LM was trained without text (data.text_encoder is empty)"),
                      "gaze and the emotion / behaviour labels have no LM input of their own (text prompt only)"]}
