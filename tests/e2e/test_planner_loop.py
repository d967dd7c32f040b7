"""The dual-system planner beside the live duplex agent (stand-in synthface_tiny LM, random weights): controls
switch exactly at a frame boundary, the per-frame latency is unchanged with the planner thread running, the
steering evaluation runs end to end, and the planner's SFT task trains through the shared trainer."""

import json
import time

import numpy as np
import pytest

from avatarjax.config import load_config
from avatarjax.pipelines import duplex_agent as da
from avatarjax.planning import dual_system as DS
from avatarjax.planning import synthface_planner as SP
from tests.conftest import REPO, make_mesh
from tests.e2e.test_duplex_agent import _build

QUIET = ["--config.log.progress=false", "--config.log.tensorboard=false", "--config.log.plots=false"]
FRAMES = 48


@pytest.fixture(scope="module")
def agent():
    cfg = load_config(REPO / "configs" / "speechvideo" / "synthface_tiny.py", [f"--config.sample.frames={FRAMES}"])
    return da.DuplexAgent((_build(cfg), cfg))


@pytest.fixture(scope="module")
def world():
    seed, sp, li, frames = 7, 3, 5, 150
    session = SP._session(seed, sp, li, frames, "eval")  # memoised: the planner thread never generates it
    audio = session.speaker.audio[:FRAMES * 640].reshape(FRAMES, 640)
    return {"request": SP.world_request(seed, sp, li, frames, "eval"), "audio": audio,
            "human": list(session.speaker.state[:FRAMES]), "session": session}


class _Gated:
    """Offline world backend whose replies wait for a gate (so the test decides when a plan lands)."""

    name = "gated"

    def __init__(self, gate):
        self.inner, self.gate = SP.SynthfaceWorldBackend("nod"), gate

    def complete(self, messages, *, seed=0):
        self.gate.wait(10)
        return self.inner.complete(messages, seed=seed)


def test_controls_switch_exactly_at_a_frame_boundary(agent, world, monkeypatch):
    import threading

    gate = threading.Event()
    planner = DS.AsyncPlanner(_Gated(gate), cadence_frames=10, request=world["request"])
    used = []  # the motion controls each LM step ran with
    original = agent.session.step

    def step(*args):
        c = agent.session.controls
        used.append((np.asarray(c.motion)[0].copy(), bool(np.asarray(c.motion_mask)[0])))
        return original(*args)

    monkeypatch.setattr(agent.session, "step", step)
    with planner:
        for item in agent.stream(world["audio"], world["human"], controls_source=planner):
            if item.index == 12:  # the thread asked at frame 9; let it answer while frames keep streaming
                gate.set()
                deadline = time.time() + 10
                while planner.counts["valid"] == 0 and time.time() < deadline:
                    time.sleep(0.001)
    assert planner.counts["valid"] >= 1 and planner.counts["applied"] >= 1
    first = planner.applied[0]
    plan, f0 = first["plan"], first["frame"]
    # the thread is woken after frame 9 and reads the newest frame when it runs (never an older one): 9, or a later
    # frame when the stream got ahead of it on a busy CPU; the plan lands at the next boundary after the reply
    assert 9 <= plan.context_frame <= 12 and f0 == 13
    motion = DS.motion_features(plan.trajectory)
    for i, (m, on) in enumerate(used[:FRAMES]):
        if i < f0:
            assert not on and not m.any(), i
        elif len(planner.applied) < 2 or i < planner.applied[1]["frame"]:
            assert on, i
            np.testing.assert_array_equal(m, motion[i - plan.start_frame])
    assert agent.compilations == {"lm_step": 1}  # changing controls never recompiles
    # a stream after it starts with an empty motion slot again
    monkeypatch.undo()
    list(agent.stream(world["audio"][:2], world["human"][:2]))
    assert not bool(np.asarray(agent.session.controls.motion_mask)[0])


def test_streaming_latency_unchanged_with_the_planner_running(agent, world):
    def median_ms(source=None):
        items = list(agent.stream(world["audio"], world["human"], controls_source=source))
        return float(np.median([it.latency_s for it in items[2:]])) * 1000

    base = min(median_ms(), median_ms())
    planner = DS.AsyncPlanner(SP.SynthfaceWorldBackend("oracle"), cadence_frames=4, request=world["request"])
    with planner:
        busy = min(median_ms(planner), median_ms(planner))
    assert planner.counts["valid"] >= 4 and planner.counts["applied"] >= 1
    # the planner served four dialogues: each restart at frame 0 forgot the previous one's context and plans
    assert all(0 <= a["delay_frames"] and a["plan"].context_frame < FRAMES for a in planner.applied)
    # medians, with a generous factor: a loaded 2-core machine must not flake, a step that waited for a plan
    # (milliseconds of world generation and JSON per request) would still show
    assert busy <= 2.5 * base + 3.0, (base, busy)


def test_planner_evaluation_end_to_end(agent):
    from avatarjax.planning.synthface_planner import evaluate_planner

    out = evaluate_planner(agent.net, agent.cfg, ["--planner", "--sessions", "1", "--frames", str(FRAMES),
                                                  "--intents", "nod,still", "--cadence", "10"], agent=agent)
    assert set(out["agent_behaviour"]) == {"none", "nod", "still"}
    nod = out["agent_behaviour"]["nod"]
    assert nod["planned_pitch_osc"] > out["agent_behaviour"]["still"]["planned_pitch_osc"]
    assert np.isfinite(nod["pitch_osc"]) and out["nod_minus_still_pitch_osc"]["of"] == 1
    stats = out["planner"]["nod"]
    assert stats["valid"] >= 3 and stats["applied"] >= 1 and 0 <= stats["on_time_fraction"] <= 1
    assert out["steerable"]["trajectory_head"] and not out["steerable"]["prompt"]
    json.dumps(out)


def test_planner_sft_trains_a_few_steps(tmp_path):
    from avatarjax.train.objectives import planner_sft as PS
    from avatarjax.train.loop import Trainer

    cfg = load_config(REPO / "configs" / "speechvideo" / "planner_sft_tiny.py",
                      [*QUIET, "--config.train.steps=3", "--config.data.seq_len=256", "--config.checkpoint.every=1000"])
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(cfg, 1))
    result = trainer.run()
    losses = list(result.losses.values())
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert 0 <= result.last_metrics["target_accuracy"] <= 1
    # the rows the trainer read: the planner's inference prompt, the loss on the (truncated) target only
    rows = PS.SFTRows(cfg, "train")
    enc = rows[0]
    assert enc["loss_mask"].sum() > 0 and enc["loss_mask"][:len(enc["loss_mask"]) // 4 - 1].sum() == 0
