"""Body of Her's dual-system planner without the LM: plan schema and validation, the trajectory -> motion mapping,
the transcript, the planner's frame-boundary / staleness rules, the offline world backend, the HTTP backend with
keyframe images against a stub server on 127.0.0.1, and the fine-tuning rows."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from avatarjax.errors import AvatarError, DataError
from avatarjax.planning import dual_system as DS
from avatarjax.planning import llm as L
from avatarjax.planning import synthface_planner as SP
from tests.unit.test_planning import Scripted  # a backend returning scripted replies

WORLD = SP.world_request(11, 2, 5, 150, "eval")


def _plan_dict(**plan_changes) -> dict:
    d = SP.world_plan({**WORLD, "frame": 40, "fps": 25, "horizon_s": 3.0}, "nod", traj_fps=5)
    d["plan"].update(plan_changes)
    return d


def test_world_plan_validates_and_round_trips():
    d = _plan_dict()
    plan = DS.parse_plan(d)
    assert plan.trajectory.shape == (75, 5) and plan.prompt == "nod twice while listening"
    assert set(plan.description) == {"human", "agent"} and all(set(p) == set(DS.PARTY_KEYS)
                                                               for p in plan.description.values())
    assert np.ptp(plan.trajectory[:, 1]) > 5  # the nods (7 deg) survive 5 fps sampling
    again = DS.parse_plan(json.loads(json.dumps(plan.to_dict())))  # at 25 fps: 75 samples accepted
    np.testing.assert_allclose(again.trajectory, plan.trajectory, atol=0.01)
    oracle = DS.parse_plan(SP.world_plan({**WORLD, "frame": 40}, "oracle"))
    listener = SP._session(11, 2, 5, 150, "eval").listeners[0].state
    np.testing.assert_allclose(oracle.trajectory[:, 1], listener[41:116, 14 + 1], atol=0.01)  # the future pitch


def _traj(**changes):
    t = dict(_plan_dict()["plan"]["trajectory"])
    t.update(changes)
    return t


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d.pop("analysis"), "analysis is missing"),
    (lambda d: d["description"]["human"].update(emotion=""), "description.human.emotion must be a non-empty"),
    (lambda d: d["plan"].update(trajectory=_traj(pitch=[50.0] * 16)), "pitch leaves its range"),
    (lambda d: d["plan"].update(trajectory=_traj(yaw=[0.0] * 9)), "has 9 samples"),
    (lambda d: d["plan"].update(trajectory={"fps": 25, "yaw": [0.0] * 75, "pitch": [0.0] * 75,
                                             "roll": [-20.0, 20.0] * 37 + [0.0]}), "1000 deg/s"),
    (lambda d: d["plan"].update(trajectory=_traj(yaw=[float("nan")] * 16)), "non-finite"),
    (lambda d: d["plan"].update(trajectory=_traj(fps=60)), "fps must be"),
    (lambda d: d["plan"].update(trajectory=_traj(elbow=[0.0] * 16)), "unknown channels"),
    (lambda d: d["plan"]["trajectory"].pop("yaw"), "yaw is missing"),
    (lambda d: d["plan"].update(prompt=True), "prompt must be a non-empty string"),
])
def test_malformed_plans_are_rejected_with_the_reason(mutate, reason):
    d = _plan_dict()
    mutate(d)
    with pytest.raises(DS.PlanError, match=reason):
        DS.parse_plan(d)


@pytest.mark.parametrize("kind", ["velocity", "pose"])
def test_motion_features_match_the_lm_training_features(kind):
    from avatarjax.train.objectives.speech_video import motion_trajectory

    state = SP._session(11, 2, 5, 150, "eval").listeners[0].state[:75]
    traj = SP._pose_gaze(state)
    ours, lm = DS.motion_features(traj, kind), motion_trajectory(state, kind)
    np.testing.assert_allclose(ours[:, :3], lm[:, :3], atol=1e-5)
    assert np.std(ours[:, :3]) > 0.01
    if kind == "pose":  # translation is never planned, and the LM's pose features leave it out too
        assert not ours[:, 3:].any() and not lm[:, 3:].any()
    with pytest.raises(AvatarError, match="velocity or pose"):
        DS.motion_features(traj, "angles")


def test_transcript_lines_and_no_future_leak():
    tr = DS.Transcript(["# comment", "[0.00-1.20] human: hello there", '{"start": 1.5, "end": 2.0, "speaker": '
                        '"agent", "text": "hi"}', "[2.50-4.00] human: how are you?"])
    assert [u.text for u in tr.before(2.0)] == ["hello there", "hi"]
    assert len(tr.before(10.0)) == 3
    tr.follow(iter(["[4.1-4.5] agent: fine"])).join(1.0)
    assert tr.before(5.0)[-1].speaker == "agent"
    for bad in ("hello", "[2.0-1.0] human: backwards", '{"start": 1}'):
        with pytest.raises(DataError, match="transcript line"):
            DS.parse_utterance(bad)


def _observe(planner, upto, start=0):
    for i in range(start, upto + 1):
        planner.observe(SimpleNamespace(index=i, video=None, face_state=np.zeros(24, np.float32)), None,
                        np.zeros(24, np.float32))


def test_planner_applies_at_the_next_boundary_drops_stale_and_malformed():
    good = json.dumps(_plan_dict())
    backend = Scripted([good, "not json at all", json.dumps(_plan_dict(prompt="")), good])
    planner = DS.AsyncPlanner(backend, request={"task": "dual_plan"})
    _observe(planner, 30)
    plan = planner.plan_now()  # context ends at frame 30: covers 31..105
    assert plan is not None and plan.start_frame == 31 and plan.end_frame == 106
    f = planner(33)  # picked up 2 frames late: trajectory offset 2
    np.testing.assert_allclose(f["motion"][0], DS.motion_features(plan.trajectory)[2])
    assert f["motion"].dtype == np.float32 and f["motion_mask"].dtype == bool and f["motion_mask"][0]
    assert planner.applied[0]["delay_frames"] == 2 and planner.applied[0]["on_time"]
    # malformed replies change nothing: the active plan keeps steering
    assert planner.plan_now() is None and planner.plan_now() is None
    assert [e["event"] for e in planner.log[-2:]] == ["rejected", "rejected"]
    assert "prompt must be a non-empty" in planner.log[-1]["reason"]
    np.testing.assert_allclose(planner(34)["motion"][0], DS.motion_features(plan.trajectory)[3])
    # a plan that arrives after its horizon is dropped as stale
    _observe(planner, 40, 31)
    late = planner.plan_now()
    assert late.end_frame == 41 + 75
    f = planner(41 + 75)
    assert planner.counts["stale"] == 1 and "horizon ended" in planner.log[-1]["reason"]
    # ...and when the old plan's horizon is over too, the motion slot is emptied once
    assert f is not None and not f["motion_mask"][0] and planner(41 + 76) is None
    assert planner.counts == {"requested": 4, "valid": 2, "rejected": 2, "failed": 0, "stale": 1, "superseded": 0,
                              "applied": 1}
    # the prompt carries the context: keyframes one per second back from the newest (frames 30 and 5 so far)
    text = backend.seen[0][1]["content"]
    assert "(oldest first, 2)" in text and "keyframe 0 at 0.20 s" in text and "keyframe 1 at 1.20 s" in text
    assert '"frame": 30' in text and L.REQUEST_MARKER in text


def test_planner_wall_clock_staleness_and_backend_failure():
    now = [0.0]
    planner = DS.AsyncPlanner(Scripted([json.dumps(_plan_dict())]), clock=lambda: now[0])
    _observe(planner, 10)
    planner.plan_now()
    now[0] = 3.5  # the request is older than the 3 s horizon
    assert planner(11) is None and planner.counts["stale"] == 1

    class Down:
        name = "down"

        def complete(self, messages, *, seed=0):
            raise L.LLMBackendError("server unreachable")

    p2 = DS.AsyncPlanner(Down())
    _observe(p2, 5)
    assert p2.plan_now() is None and p2.counts["failed"] == 1 and "unreachable" in p2.log[0]["reason"]


def test_a_plan_for_a_previous_dialogue_is_dropped():
    class Restarting(Scripted):
        def complete(self, messages, *, seed=0):
            planner(0)  # the stream restarted while the backend was thinking
            return super().complete(messages, seed=seed)

    planner = DS.AsyncPlanner(Restarting([json.dumps(_plan_dict())]))
    _observe(planner, 30)
    assert planner.plan_now() is None and planner._mailbox is None
    assert planner.counts["stale"] == 1 and "previous dialogue" in planner.log[-1]["reason"]


def test_planner_thread_follows_the_media_cadence():
    backend = SP.SynthfaceWorldBackend("nod")
    planner = DS.AsyncPlanner(backend, cadence_frames=25, request={**WORLD})
    with planner:
        for i in range(100):
            planner(i)
            _observe(planner, i, i)
            time.sleep(0.002)
        deadline = time.time() + 10
        while planner.counts["requested"] < 3 and time.time() < deadline:
            time.sleep(0.01)
    assert planner.counts["requested"] >= 3 and planner.counts["valid"] == planner.counts["requested"]
    assert planner._thread is None  # stopped and joined


# ------------------------------------------------------------------------------------------ HTTP with images


class _Stub(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.bodies.append(body)
        parts = body["messages"][-1]["content"]
        images = [p for p in parts if isinstance(p, dict) and p.get("type") == "image_url"] \
            if isinstance(parts, list) else []
        shapes = []
        for p in images:
            header, data = p["image_url"]["url"].split(",", 1)
            assert header == "data:image/png;base64"
            im = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
            shapes.append(list(im.shape))
        plan = _plan_dict()
        plan["analysis"] = f"saw {len(images)} images of shapes {shapes}"
        reply = {"choices": [{"message": {"content": json.dumps(plan)}}]}
        out = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_http_backend_sends_keyframes_as_base64_images():
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        backend = L.make_backend({"backend": "http", "base_url": url, "model": "stub-vlm", "retries": 0})
        planner = DS.AsyncPlanner(backend, images=True, transcript=DS.Transcript(["[0.0-0.8] human: look at this"]))
        rng = np.random.default_rng(0)
        for i in range(80):
            planner.observe(SimpleNamespace(index=i, video=None, face_state=None), None,
                            rng.integers(0, 255, (24, 32, 3), np.uint8))
        plan = planner.plan_now()
        assert plan is not None and plan.analysis == "saw 4 images of shapes [[24, 32, 3], [24, 32, 3], [24, 32, " \
                                                     "3], [24, 32, 3]]"
        body = _Stub.bodies[-1]
        assert body["model"] == "stub-vlm" and body["response_format"] == {"type": "json_object"}
        text = body["messages"][-1]["content"][0]["text"]
        assert "image 3 shows the human" in text and "human: look at this" in text
        # a text-only endpoint gets the same turn flattened, images as placeholders
        flat = L.make_backend({"backend": "http", "base_url": url, "model": "stub", "retries": 0, "vision": False})
        planner.backend = flat
        assert planner.plan_now().analysis.startswith("saw 0 images")
        assert "[image 3]" in _Stub.bodies[-1]["messages"][-1]["content"]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------- fine-tuning rows


def test_sft_rows_rebuild_the_inference_prompt_and_mask_the_target(tmp_path):
    from avatarjax.train.objectives import planner_sft as PS

    out = SP.build_command(["--out", str(tmp_path), "--sessions", "1", "--per-session", "2", "--frames", "180",
                            "--traj-fps", "2", "--image-size", "32"])
    rows = SP.read_jsonl(out["output"])
    assert out["samples"] == 2 and len(rows) == 2
    row = rows[0]
    c = row["context_frame"]
    assert row["keyframe_frames"] == [c - 75, c - 50, c - 25, c] and len(row["keyframes"]) == 4
    assert all(u["end"] <= (c + 1) / 25 for u in row["transcript"])  # nothing said after the context
    im = cv2.imread(str(tmp_path / row["keyframes"][0]))
    assert im.shape == (32, 32, 3)
    msgs = SP.sft_messages(row, tmp_path, images=True)
    assert L.count_images(msgs) == 4
    assert L.content_text(msgs[1]["content"]).startswith(f"Now: {c / 25:.2f} s")
    enc = PS.encode_row(row, PS._Tokens(""), 1536)
    target = json.dumps(row["target"], separators=(",", ":")).encode() + b"\x00"
    picked = enc["tokens"][1:][enc["loss_mask"] > 0]
    assert bytes(picked.astype(np.uint8).tolist()) == target and enc["truncated"] == 0
    short = PS.encode_row(row, PS._Tokens(""), 256)  # too short: the prompt keeps its newest quarter
    assert short["truncated"] == 1 and int(np.argmax(short["loss_mask"])) == 257 // 4 - 1
    assert bytes(short["tokens"][:257 // 4].astype(np.uint8).tolist()).endswith(b"<|assistant|>\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**row, "target": _plan_dict(prompt="")}) + "\n")
    with pytest.raises(DataError, match="target plan is invalid"):
        SP.read_jsonl(bad)
