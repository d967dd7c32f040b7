"""The dual-system planner in the synthface world: an offline backend that reads the scene from the world's ground
truth, the fine-tuning data made from annotated dyadic sessions, and the steering evaluation.

- :class:`SynthfaceWorldBackend` (``name = "synthface-world"``): answers the planner's ``REQUEST_JSON`` (``task:
  "dual_plan"``, ``world``: the dyadic session's seed, identities, length and split; ``frame``) by regenerating the
  session (``dyadic.generate_session``, deterministic) and writing the three stages from its ground truth: the
  speaker (the human) talking or pausing, smiling, its emotion label; the listener (the agent) and its future
  reaction events (nods at pauses, mirrored smiles, glances away, brow raises). ``intent="oracle"`` plans the
  listener's ground-truth head and gaze trajectory for the next 3 s; the other intents (``INTENTS``) plan a fixed
  behaviour instead (``nod``: two 7-degree double nods; ``still``: the current pose held; ``shake``; ``look_away``;
  ``smile``: a still head with a smiling prompt), which the evaluation uses as controlled interventions.
- Fine-tuning data (:func:`dyadic_to_sft`, ``avatarjax data build planner_sft``): JSON lines, one sample per
  (session, moment): ``keyframes`` (PNG paths of the human's last four keyframes, one per second),
  ``keyframe_text`` (their text descriptions, for the text-only local backend), ``transcript`` (utterances ended
  by then), ``context_frame``, ``fps``, ``horizon_s`` and ``target`` (description, analysis, plan: the oracle
  plan with its trajectory at ``traj_fps``). :func:`sft_messages` rebuilds the exact prompt the planner sends at
  inference (``dual_system.build_messages``). The synthface world has no words: a transcript line marks each
  speaker phrase (between pauses) as ``(speaks, <label> tone)``.
- :func:`evaluate_planner`: on held-out dyadic sessions the duplex agent (a stand-in-token speech-video LM) is
  the listener while the threaded planner runs beside it with each intent; the agent's face states, read with the
  synthface reader (rendered keypoints -> ``reader.read_state``), give its head-pitch oscillation (std of the pitch
  velocity, deg/frame; ``_smooth``: also after a 2-frame Gaussian, which keeps nods and removes the per-frame
  sampling jitter), how well the smoothed pitch tracks the planned pitch (``pitch_track_corr``) and smile over the
  frames a plan steered. A plan steers in the intended direction when
  ``nod`` oscillates more than ``still`` (and the ``smile`` prompt smiles more than ``still``, for an LM with text
  input). Also: planner latency, plans valid / stale / applied, the fraction applied on time.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from avatarjax.data.commands import DatasetCommands
from avatarjax.data.synthface import dynamics as D
from avatarjax.data.synthface import schema
from avatarjax.data.synthface.dyadic import generate_session
from avatarjax.errors import ConfigError, DataError
from avatarjax.planning import dual_system as DS
from avatarjax.planning import llm as L

IX = schema.INDEX
INTENTS = ("oracle", "nod", "still", "shake", "look_away", "smile")
ENVIRONMENT = "plain studio background, frontal camera"
DEFAULT_TRAJ_FPS = 25.0


@functools.lru_cache(maxsize=16)
def _session(seed: int, speaker: int, listener: int, frames: int, split: str):
    return generate_session(seed, speaker, listener, frames, num_reactions=1, split=split)


def session_of(world: dict):
    try:
        return _session(int(world["seed"]), int(world["speaker_identity"]), int(world["listener_identity"]),
                        int(world["num_frames"]), str(world.get("split", "train")))
    except (KeyError, TypeError, ValueError) as err:
        raise L.LLMBackendError(f"the synthface-world backend needs world = {{seed, speaker_identity, "
                                f"listener_identity, num_frames, split}} in the request ({err})") from None


def _pose_gaze(state: np.ndarray) -> np.ndarray:
    """States ``[T, 24]`` -> trajectory channels ``[T, 5]`` (yaw, pitch, roll, gaze_h, gaze_v degrees)."""
    h, v = schema.gaze_angles(state)
    return np.concatenate([state[:, schema.POSE_SLICE], h[:, None], v[:, None]], -1).astype(np.float32)


def _overlaps(events: list[dict], a: int, b: int) -> list[dict]:
    return [e for e in events if e["start_frame"] < b and e["end_frame"] >= a]


def _in_pause(pauses: list[dict], frame: int) -> bool:
    return any(p["start_frame"] <= frame < p["end_frame"] for p in pauses)


def world_plan(req: dict, intent: str = "oracle", traj_fps: float = DEFAULT_TRAJ_FPS) -> dict:
    """The plan (schema dict) the ground truth implies for the request's frame (see the module docstring)."""
    if intent not in INTENTS:
        raise ConfigError(f"unknown planner intent '{intent}': choose one of {', '.join(INTENTS)}")
    s = session_of(req.get("world", {}))
    fps = float(req.get("fps", DS.FPS))
    horizon_s = float(req.get("horizon_s", DS.HORIZON_S))
    h = int(round(horizon_s * fps))
    speaker, listener = s.speaker, s.listeners[0]
    t_total = listener.num_frames if hasattr(listener, "num_frames") else listener.state.shape[0]
    c = int(np.clip(int(req["frame"]), 0, t_total - 1))
    window = np.clip(np.arange(c + 1, c + 1 + h), 0, t_total - 1)
    sp, ls = speaker.state[c], listener.state[c]
    pausing = _in_pause(s.pauses, c)
    human_smiles = sp[IX["smile"]] > 0.3
    human = {"who": f"synthface person #{speaker.identity}, the human talking to the agent",
             "emotion": f"{speaker.label}" + (", smiling" if human_smiles else ""),
             "behaviour": "pausing between phrases" if pausing else "talking",
             "environment": ENVIRONMENT}
    agent = {"who": f"synthface person #{listener.identity}, the agent, listening",
             "emotion": "amused" if ls[IX["smile"]] > 0.2 else "attentive",
             "behaviour": "listening" + (", looking away" if abs(_pose_gaze(ls[None])[0, 3]) > 6 else ""),
             "environment": ENVIRONMENT}
    ev = listener.events
    a, b = c + 1, c + 1 + h
    nods, glances = _overlaps(ev.get("nods", []), a, b), _overlaps(
        [g for g in ev.get("gaze_shifts", []) if g.get("direction") == "away"], a, b)
    brows = _overlaps(ev.get("brow_raises", []), a, b)
    smile_ahead = float(listener.state[window, IX["smile"]].max()) > 0.25
    notes = []
    if pausing:
        notes.append("the human has paused: a listener acknowledges a pause with a nod")
    if human_smiles:
        notes.append("the human smiles: mirror it after about half a second")
    if not notes:
        notes.append("the human keeps talking: keep attending, mostly looking at them")
    if intent == "oracle":
        traj = _pose_gaze(listener.state[window])
        acts = ([f"nod ({len(nods)}x)"] if nods else []) + (["smile back"] if smile_ahead else []) + \
               (["glance away briefly, then back"] if glances else []) + (["raise the eyebrows"] if brows else [])
        prompt = ("listen and " + ", ".join(acts)) if acts else "listen attentively and keep still"
        emotion = "happy" if smile_ahead else "attentive"
        behaviour = ", ".join(acts) if acts else "still listening"
    else:
        now = _pose_gaze(ls[None])[0]
        traj = np.repeat(now[None], h, 0)
        t = np.arange(1, h + 1) / fps
        emotion, behaviour = "attentive", intent
        if intent == "nod":
            traj[:, 1] += D.nod(t, 0.2, 0.8, 7.0, 2) + D.nod(t, 1.7, 0.8, 7.0, 2)
            prompt = "nod twice while listening"
        elif intent == "shake":
            traj[:, 0] += D.shake(t, 0.3, 1.2, 8.0, 2)
            prompt = "shake the head: no"
        elif intent == "look_away":
            traj[:, 3] = np.where((t > 0.3) & (t < 1.5), 12.0, 0.0)
            prompt = "glance away to the left, then back"
        elif intent == "smile":
            prompt, emotion, behaviour = "smile warmly while listening", "happy", "smile"
        else:
            prompt, behaviour = "keep the head still and listen", "still"
        notes.append(f"forced intent: {intent}")
    lo = np.array([DS.TRAJECTORY_RANGES[k][0] for k in DS.TRAJECTORY_CHANNELS], np.float32)
    hi = np.array([DS.TRAJECTORY_RANGES[k][1] for k in DS.TRAJECTORY_CHANNELS], np.float32)
    traj = np.clip(traj, lo, hi)
    return {"description": {"human": human, "agent": agent}, "analysis": "; ".join(notes) + ".",
            "plan": {"prompt": prompt, "emotion": emotion, "behaviour": behaviour,
                     "trajectory": DS.trajectory_to_dict(traj, traj_fps, horizon_s)}}


class SynthfaceWorldBackend:
    """The offline planner for synthface dialogues (no network; see the module docstring). ``delay_s``: sleep
    this long per reply (to simulate a VLM's 0.5-1 s)."""

    def __init__(self, intent: str = "oracle", traj_fps: float = DEFAULT_TRAJ_FPS, delay_s: float = 0.0):
        if intent not in INTENTS:
            raise ConfigError(f"unknown planner intent '{intent}': choose one of {', '.join(INTENTS)}")
        self.intent, self.traj_fps, self.delay_s = intent, float(traj_fps), float(delay_s)
        self.name = f"synthface-world:{intent}"

    def complete(self, messages: list[dict], *, seed: int = 0) -> str:
        req = L.request_of(messages)
        if req.get("task") != "dual_plan":
            raise L.LLMBackendError(f"the synthface-world backend answers task 'dual_plan', got {req.get('task')!r}")
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        return json.dumps(world_plan(req, self.intent, self.traj_fps))


def world_request(seed: int, speaker: int, listener: int, frames: int, split: str) -> dict:
    return {"task": "dual_plan", "world": {"seed": int(seed), "speaker_identity": int(speaker),
                                           "listener_identity": int(listener), "num_frames": int(frames),
                                           "split": split}}


def session_transcript(session, who: str = "human") -> DS.Transcript:
    """Utterances for the speaker's phrases (between its pauses); synthface speech has no words."""
    from avatarjax.data.synthface import audio as A
    from avatarjax.data.synthface.dyadic import _speech_segments

    env = A.frame_envelope(session.speaker.audio)
    tone = session.speaker.label.replace("_", " ")
    return DS.Transcript([DS.Utterance(a / DS.FPS, b / DS.FPS, who, f"(speaks, {tone} tone)")
                          for a, b in _speech_segments(session.pauses, env)])


# ---------------------------------------------------------------------------------------------- fine-tuning data


def _eval_world(cfg_data, index: int, split: str, salt: int) -> tuple[int, int, int]:
    from avatarjax.train.objectives.speech_video import identity_pool

    rng = np.random.default_rng([cfg_data["world_seed"], 0 if split == "train" else 1, index, salt])
    sp, li = rng.choice(identity_pool(cfg_data["num_identities"], split), 2, replace=False)
    return int(rng.integers(2 ** 31)), int(sp), int(li)


def dyadic_samples(num_sessions: int, per_session: int, *, split: str = "train", frames: int = 250,
                   world_seed: int = 0, num_identities: int = 24, traj_fps: float = 5.0,
                   image_dir: str | Path | None = None, image_size: int = 64, num_keyframes: int = 4) -> list[dict]:
    """Fine-tuning rows (the JSONL format of the module docstring) from annotated synthface dyadic sessions;
    with ``image_dir`` the human's keyframes are rendered there as PNGs (paths relative to its parent)."""
    from avatarjax.data.synthface.identity import sample_identity
    from avatarjax.data.synthface.render import render_frames

    every, h = int(DS.FPS), int(round(DS.HORIZON_S * DS.FPS))
    first = (num_keyframes - 1) * every
    if frames < first + h + 2:
        raise DataError(f"sessions of {frames} frames are too short for {num_keyframes} keyframes one second apart "
                        f"and a {DS.HORIZON_S:g} s plan: use at least {first + h + 2} frames")
    rows = []
    for s in range(num_sessions):
        seed, sp, li = _eval_world({"world_seed": world_seed, "num_identities": num_identities}, s, split, 0x91A7)
        session = _session(seed, sp, li, frames, split)
        transcript = session_transcript(session)
        rng = np.random.default_rng([world_seed, s, 0x5F7])
        for c in np.sort(rng.choice(np.arange(first, frames - h - 1), per_session, replace=False)):
            c = int(c)
            kf = [c - k * every for k in range(num_keyframes)][::-1]
            req = {**world_request(seed, sp, li, frames, split), "frame": c, "fps": DS.FPS,
                   "horizon_s": DS.HORIZON_S}
            row = {"id": f"{split}-{s:04d}-{c:04d}", "world": req["world"], "context_frame": c, "fps": DS.FPS,
                   "horizon_s": DS.HORIZON_S, "keyframe_frames": kf,
                   "keyframe_text": [{"human": DS.describe_state(session.speaker.state[f]),
                                      "agent": DS.describe_state(session.listeners[0].state[f])} for f in kf],
                   "transcript": [{"start": u.start_s, "end": u.end_s, "speaker": u.speaker, "text": u.text}
                                  for u in transcript.before((c + 1) / DS.FPS)],
                   "target": world_plan(req, "oracle", traj_fps)}
            if image_dir is not None:
                import cv2

                image_dir = Path(image_dir)
                image_dir.mkdir(parents=True, exist_ok=True)
                images = render_frames(sample_identity(sp, world_seed), session.speaker.state[kf], size=image_size)
                paths = []
                for f, im in zip(kf, images):
                    path = image_dir / f"{row['id']}-{f:04d}.png"
                    cv2.imwrite(str(path), im[..., ::-1])
                    paths.append(str(path.relative_to(image_dir.parent)))
                row["keyframes"] = paths
            rows.append(row)
    return rows


def sft_context(row: dict, root: str | Path | None = None, images: bool = False) -> DS.PlanContext:
    """The planner context of a fine-tuning row (keyframe images loaded from ``root`` when ``images``)."""
    kfs = []
    for k, f in enumerate(row["keyframe_frames"]):
        human = None
        if images and row.get("keyframes"):
            import cv2

            path = Path(root or ".") / row["keyframes"][k]
            im = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if im is None:
                raise DataError(f"keyframe '{path}' cannot be read: rebuild the fine-tuning data")
            human = im[..., ::-1].copy()
        text = row["keyframe_text"][k]
        kfs.append(DS.Keyframe(int(f), human, None, text["human"], text["agent"]))
    transcript = [DS.Utterance(float(u["start"]), float(u["end"]), u["speaker"], u["text"]) for u in row["transcript"]]
    return DS.PlanContext(int(row["context_frame"]), kfs, transcript, float(row["fps"]), float(row["horizon_s"]))


def sft_messages(row: dict, root: str | Path | None = None, images: bool = False) -> list[dict]:
    """The prompt the planner sends at inference for this row's context (``dual_system.build_messages``)."""
    return DS.build_messages(sft_context(row, root, images), images=images)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"fine-tuning data '{path}' does not exist: build it with `avatarjax data build planner_sft "
                        "--out DIR`")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n} is not JSON ({err.msg}): one sample per line") from None
        missing = [k for k in ("keyframe_frames", "keyframe_text", "transcript", "context_frame", "fps", "horizon_s",
                               "target") if k not in row]
        if missing:
            raise DataError(f"{path}:{n} lacks {missing}: see docs/planner.md for the format")
        try:
            DS.parse_plan(row["target"], horizon_s=float(row["horizon_s"]), fps=float(row["fps"]))
        except DS.PlanError as err:
            raise DataError(f"{path}:{n}: the target plan is invalid ({err})") from None
        rows.append(row)
    return rows


def build_command(argv: list[str]) -> dict:
    """``avatarjax data build planner_sft --out DIR [--sessions N --per-session K --frames F --traj-fps R
    --image-size S --split train|eval --world-seed W]``: DIR/{split}.jsonl and DIR/keyframes/*.png."""
    p = argparse.ArgumentParser(prog="avatarjax data build planner_sft")
    p.add_argument("--out", required=True)
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--per-session", type=int, default=4)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--traj-fps", type=float, default=5.0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--split", default="train", choices=("train", "eval"))
    p.add_argument("--world-seed", type=int, default=0)
    ns = p.parse_args(argv)
    out = Path(ns.out)
    rows = dyadic_samples(ns.sessions, ns.per_session, split=ns.split, frames=ns.frames, world_seed=ns.world_seed,
                          traj_fps=ns.traj_fps, image_dir=out / "keyframes", image_size=ns.image_size)
    path = write_jsonl(rows, out / f"{ns.split}.jsonl")
    return {"output": str(path.absolute()), "samples": len(rows), "keyframes": str((out / "keyframes").absolute())}


PLANNER_SFT_COMMANDS = DatasetCommands(build=build_command)


# -------------------------------------------------------------------------------------------------- evaluation


class _Recorder:
    """Wraps a planner as the agent's controls source and records, per frame, the plan trajectory applied."""

    def __init__(self, planner: DS.AsyncPlanner, frames: int):
        self.planner = planner
        self.planned = np.full((frames, len(DS.TRAJECTORY_CHANNELS)), np.nan, np.float32)
        self.prompts: list[str | None] = [None] * frames

    def __call__(self, i: int):
        fields = self.planner(i)
        active = self.planner.active
        if active is not None and 0 <= i - active[0].start_frame < active[0].horizon_frames:
            self.planned[i] = active[0].trajectory[i - active[0].start_frame]
            self.prompts[i] = active[0].prompt
        return fields

    def observe(self, item, audio, frame):
        self.planner.observe(item, audio, frame)


def read_agent_states(states: np.ndarray, identity: int, world_seed: int = 0) -> np.ndarray:
    """The agent's face states as the synthface reader sees them: rendered keypoints -> ``reader.read_state``."""
    from avatarjax.data.synthface import geometry as geo
    from avatarjax.data.synthface.identity import sample_identity
    from avatarjax.data.synthface.reader import read_state

    ident = sample_identity(int(identity), world_seed)
    return read_state(geo.keypoints(ident, np.asarray(states, np.float32)), ident)


def _paced(chunks):
    """Yield the human's frames no faster than 25 fps (a live microphone)."""
    import time

    t0 = time.perf_counter()
    for i, chunk in enumerate(chunks):
        wait = t0 + i / DS.FPS - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield chunk


def _osc(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.std(np.diff(x))) if x.size > 2 else float("nan")


SMOOTH_SIGMA = 2.0  # frames: keeps head motion below ~3 Hz (nods are 1-2 Hz), removes per-frame sampling jitter


def _smooth(x: np.ndarray) -> np.ndarray:
    from avatarjax.pipelines.windowed import gaussian_smooth

    return gaussian_smooth(np.asarray(x, np.float32)[:, None], SMOOTH_SIGMA)[:, 0]


def evaluate_planner(model, cfg, args: list[str], checkpoint=None, agent=None) -> dict:
    """``--planner [--sessions N --frames F --intents nod,still,... --cadence C --delay S --seed S --realtime]``:
    see the module docstring. ``agent``: an already compiled ``DuplexAgent`` of this model (at least F frames)."""
    from avatarjax.pipelines.duplex_agent import DuplexAgent
    from avatarjax.train.objectives.speech_video import DialogueSessions

    p = argparse.ArgumentParser(prog="avatarjax eval (speech_video dual-system planner)")
    p.add_argument("--planner", action="store_true")
    p.add_argument("--sessions", type=int, default=cfg.data.num_eval_sessions)
    p.add_argument("--frames", type=int, default=cfg.data.session_frames)
    p.add_argument("--intents", default="nod,still,smile,oracle")
    p.add_argument("--cadence", type=int, default=DS.FPS)
    p.add_argument("--delay", type=float, default=0.0, help="simulated backend latency per plan (s)")
    p.add_argument("--seed", type=int, default=cfg.sample.seed)
    p.add_argument("--realtime", action="store_true", help="pace the stream to 25 fps (as a live dialogue)")
    ns = p.parse_args(args)
    intents = [x for x in ns.intents.split(",") if x]
    for x in intents:
        if x not in INTENTS:
            raise ConfigError(f"unknown intent '{x}' in --intents: choose from {', '.join(INTENTS)}")
    frames = min(ns.frames, cfg.data.session_frames)
    if agent is None or agent.max_frames < frames:
        agent = DuplexAgent((model, cfg), max_frames=frames, seed=ns.seed)
    if agent.real:
        raise ConfigError("the planner evaluation reads the agent's face states, which only a stand-in-token LM "
                          "gives (a real-token LM yields pixels, and no pixel face reader is trained here): evaluate "
                          "a speech_video LM trained without data.tokens")
    data = cfg.data
    world = {"world_seed": data.world_seed, "num_identities": data.num_identities}
    encode = DS.agent_prompt_encoder(agent)
    per: dict[str, dict[str, list]] = {x: {"pitch_osc": [], "planned_pitch_osc": [], "smile": [], "pitch_corr": [],
                                           "pitch_osc_smooth": [], "pitch_track_corr": []}
                                       for x in intents + ["none"]}
    planner_stats: dict[str, list[dict]] = {x: [] for x in intents}
    n_sessions = min(ns.sessions, data.num_eval_sessions)
    for s in range(n_sessions):
        seed, sp, li = _eval_world(world, s, "eval", DialogueSessions.salt)
        session = _session(seed, sp, li, data.session_frames, "eval")
        audio = np.asarray(session.speaker.audio[:frames * schema.SAMPLES_PER_FRAME], np.float32)
        audio = np.pad(audio, (0, frames * schema.SAMPLES_PER_FRAME - audio.shape[0])).reshape(frames, -1)
        human = list(session.speaker.state[:frames])
        identity = li if data.identity_prob > 0 else None
        for x in ["none"] + intents:
            rec = None
            if x != "none":
                planner = DS.AsyncPlanner(SynthfaceWorldBackend(x, delay_s=ns.delay), cadence_frames=ns.cadence,
                                          encode_prompt=encode, transcript=session_transcript(session),
                                          request=world_request(seed, sp, li, data.session_frames, "eval"),
                                          motion_features=getattr(data, "motion_features", "velocity"))
                rec = _Recorder(planner, frames)
                with planner:
                    chunks = _paced(audio) if ns.realtime else audio
                    items = list(agent.stream(chunks, human, identity=identity, seed=ns.seed + s, controls_source=rec))
                planner_stats[x].append(planner.stats())
            else:
                items = list(agent.stream(audio, human, identity=identity, seed=ns.seed + s))
            states = read_agent_states(np.stack([it.face_state for it in items]), li, data.world_seed)
            steered = np.isfinite(rec.planned[:, 0]) if rec is not None else np.zeros(frames, bool)
            if x == "none":  # compare over the frames the planned runs steer (after the first plan)
                steered = np.arange(frames) >= ns.cadence + 1
            pitch, smile = states[:, IX["pitch"]], states[:, IX["smile"]]
            if steered.sum() > 2:
                per[x]["pitch_osc"].append(_osc(np.where(steered, pitch, np.nan)))
                per[x]["pitch_osc_smooth"].append(_osc(np.where(steered, _smooth(pitch), np.nan)))
                per[x]["smile"].append(float(np.mean(smile[steered])))
                if rec is not None:
                    planned = rec.planned[:, 1]
                    per[x]["planned_pitch_osc"].append(_osc(np.where(steered, planned, np.nan)))
                    dp, dq = np.diff(np.where(steered, pitch, np.nan)), np.diff(planned)
                    ok = np.isfinite(dp) & np.isfinite(dq)
                    if ok.sum() > 2 and np.std(dp[ok]) > 0 and np.std(dq[ok]) > 0:
                        per[x]["pitch_corr"].append(float(np.corrcoef(dp[ok], dq[ok])[0, 1]))
                    head, aim = _smooth(pitch)[steered], planned[steered]  # does the (smoothed) head follow the plan?
                    if np.std(head) > 0 and np.std(aim) > 0:
                        per[x]["pitch_track_corr"].append(float(np.corrcoef(head, aim)[0, 1]))
            else:  # no plan applied in this session: keep the per-session lists aligned for paired differences
                per[x]["pitch_osc"].append(np.nan)
                per[x]["pitch_osc_smooth"].append(np.nan)
                per[x]["smile"].append(np.nan)
    mean = lambda v: round(float(np.nanmean(v)), 4) if len(v) else None  # noqa: E731
    table = {x: {k: mean(v) for k, v in d.items()} for x, d in per.items()}
    out: dict = {"sessions": n_sessions, "frames": frames, "agent_behaviour": table,
                 "steerable": DS.steerable(agent)}
    for key in ("pitch_osc", "pitch_osc_smooth"):
        if "nod" in per and "still" in per and per["nod"][key] and per["still"][key]:
            diff = np.asarray(per["nod"][key]) - np.asarray(per["still"][key])
            diff = diff[np.isfinite(diff)]  # sessions where both intents applied a plan
            out[f"nod_minus_still_{key}"] = {"mean": round(float(diff.mean()), 4) if diff.size else None,
                                             "sessions_in_intended_direction": int((diff > 0).sum()),
                                             "of": int(diff.size)}
    if "smile" in per and "still" in per and per["smile"]["smile"] and per["still"]["smile"]:
        diff = np.asarray(per["smile"]["smile"]) - np.asarray(per["still"]["smile"])
        diff = diff[np.isfinite(diff)]
        out["smile_minus_still_smile"] = {"mean": round(float(diff.mean()), 4) if diff.size else None,
                                          "sessions_in_intended_direction": int((diff > 0).sum()),
                                          "of": int(diff.size)}
    stats = {}
    for x, runs in planner_stats.items():
        lat = [r["latency_ms"]["median"] for r in runs if r["latency_ms"]]
        keys = ("requested", "valid", "rejected", "failed", "stale", "superseded", "applied")
        tot = {k: int(sum(r[k] for r in runs)) for k in keys}
        on_time = [a for r in runs for a in ([r["on_time_fraction"]] if r["on_time_fraction"] is not None else [])]
        stats[x] = {**tot, "latency_ms_median": round(float(np.median(lat)), 2) if lat else None,
                    "on_time_fraction": round(float(np.mean(on_time)), 4) if on_time else None}
    out["planner"] = stats
    out["reader"] = "agent face states -> geometry.keypoints -> reader.read_state (exact on clean keypoints)"
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m avatarjax.planning.synthface_planner --checkpoint RUN [evaluation options]``: the steering
    evaluation of a trained stand-in-token speech_video LM (a workdir or export), printed as JSON."""
    import sys

    from avatarjax.errors import AvatarError
    from avatarjax.train.export import load_model

    p = argparse.ArgumentParser(prog="python -m avatarjax.planning.synthface_planner")
    p.add_argument("--checkpoint", required=True, help="a speech_video training workdir or export")
    ns, rest = p.parse_known_args(argv)
    try:
        system, cfg = load_model(ns.checkpoint)
        if cfg.task != "speech_video":
            raise ConfigError(f"'{ns.checkpoint}' holds a '{cfg.task}' model: pass a speech_video run")
        print(json.dumps(evaluate_planner(system, cfg, ["--planner", *rest], ns.checkpoint), indent=2))
    except AvatarError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
