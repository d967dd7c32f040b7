"""The live session's client side (avatarjax/pipelines/streaming.py): the energy VAD with hangover, the jitter
buffer, barge-in (the agent's queued audio flushed at the end of the human's first speech chunk) with a
deterministic agent, and ``avatarjax bench streaming`` on a real DuplexAgent (stand-in tiny config)."""

import json
import types

import numpy as np
import pytest

from avatarjax.errors import ConfigError, DataError
from avatarjax.pipelines import streaming as st
from tests.conftest import REPO

SPF = 640


class ScriptedAgent:
    """A deterministic agent frame source shaped like ``DuplexAgent``: frame ``i`` carries the audio of frame
    ``i - (q - 1)`` (the delay pattern), every sample of audio frame ``j`` equal to ``(j + 1) / 1000`` so the
    played audio tells which frame it came from."""

    samples_per_frame, sample_rate = SPF, 16000

    def __init__(self, q: int = 3):
        self.q = q

    def stream(self, chunks, video=None, **kw):
        for i, _ in enumerate(chunks):
            j = i - (self.q - 1)
            audio = np.full(SPF, (j + 1) / 1000, np.float32) if j >= 0 else np.zeros(SPF, np.float32)
            yield types.SimpleNamespace(index=i, audio_frame=j, codes=None if j < 0 else np.zeros(self.q, np.int32),
                                        audio=audio, talking=j >= 0, latency_s=1e-4)


def _speech_at(frames, onset):
    return st.scripted_human(frames, SPF, 16000, onset, seed=3)


def test_energy_vad_onset_hangover_and_noise_floor():
    vad = st.EnergyVAD(threshold_db=-40.0, hangover_frames=2)
    loud, quiet = np.full(SPF, 0.1, np.float32), np.full(SPF, 10 ** (-50 / 20), np.float32)  # -20 / -50 dBFS
    seq = [quiet, quiet, loud, quiet, quiet, loud, quiet, quiet, quiet, quiet]
    out = [vad(c) for c in seq]
    assert [v.onset for v in out] == [False, False, True] + [False] * 7
    assert [v.speaking for v in out] == [False, False, True, True, True, True, True, True, False, False]
    assert [v.offset for v in out].index(True) == 8  # two quiet chunks of hangover, then the turn ends
    assert out[0].level_db == pytest.approx(-50.0, abs=0.01) and out[2].level_db == pytest.approx(-20.0, abs=0.01)
    vad2 = st.EnergyVAD(onset_frames=2)
    assert [vad2(c).onset for c in (loud, quiet, loud, loud)] == [False, False, False, True]
    with pytest.raises(ConfigError, match="onset_frames"):
        st.EnergyVAD(onset_frames=0)
    # the scripted human: silent before the onset frame, speech (above the agent's talking level) at it
    human = _speech_at(30, 12)
    assert not human[:12].any() and st.EnergyVAD.level_db(human[12]) > st.REAL_TALK_DB


def test_jitter_buffer_prefill_underrun_flush_capacity():
    buf = st.JitterBuffer(prefill=2, capacity=3)
    assert buf.pop() is None
    buf.push(0, np.zeros(SPF))
    assert buf.pop() is None and len(buf) == 1  # still filling
    buf.push(1, np.zeros(SPF))
    assert buf.pop()[0] == 0 and buf.pop()[0] == 1
    assert buf.pop() is None and buf.underruns == 1 and not buf.playing  # underrun: re-buffer
    for j in range(2, 6):
        buf.push(j, np.ones(SPF))
    assert buf.indices == [3, 4, 5] and buf.overflows == 1
    assert buf.flush() == ([3, 4, 5], 3 * SPF) and len(buf) == 0 and buf.pop() is None
    with pytest.raises(ConfigError, match="prefill"):
        st.JitterBuffer(prefill=4, capacity=2)


@pytest.mark.parametrize("drop_stale", [True, False])
def test_barge_in_flushes_queued_agent_audio_within_one_frame(drop_stale):
    frames, k, q, prefill = 48, 20, 3, 4
    session = st.PlayoutSession(SPF, prefill=prefill, drop_stale=drop_stale,
                               vad=st.EnergyVAD(hangover_frames=frames))  # one turn: no re-onset in pauses
    items = list(st.play(ScriptedAgent(q), _speech_at(frames, k), session))
    ticks = session.ticks
    assert len(items) == frames and all(s > 0 for *_, s in items)
    assert [b.frame for b in session.barge_ins] == [k]  # one onset, flushed at the end of chunk k
    barge = session.barge_ins[0]
    queued_before = ticks[k - 1].queued
    assert queued_before and barge.dropped == queued_before  # the agent was talking into a full buffer
    assert barge.samples_dropped == len(queued_before) * SPF
    assert all(tk.played is not None for tk in ticks[q - 1 + prefill - 1:k])  # it was playing up to the onset
    # nothing queued before the onset is played after it, neither by index nor by sample value
    played_after = {tk.played for tk in ticks[k:] if tk.played is not None}
    assert not played_after & set(queued_before)
    heard = session.played_audio().reshape(frames, SPF)[k:]
    assert not np.isin(np.round(heard * 1000).astype(int) - 1, queued_before).any()
    summary = session.summary()
    assert summary["flushed_frames_played_later"] == 0
    if drop_stale:
        # frames <= k arriving after the flush (the delay pattern's last q - 1 pre-interruption frames) are
        # dropped too: the queue is empty from the flush until frame k + 1's audio arrives
        assert all(tk.queued == [] for tk in ticks[k:k + q])
        assert barge.stale_dropped == list(range(k - q + 1, k + 1))
        assert min(played_after) == k + 1 and summary["frames_planned_before_interruption_played_after"] == 0
    else:
        assert ticks[k].queued == [k - q + 1] and not barge.stale_dropped  # only audio that arrived at k
        assert summary["frames_planned_before_interruption_played_after"] == q  # frames k - q + 1 .. k
    s = session.summary()
    assert s["barge_ins"][0]["frames_dropped"] == len(queued_before) and s["ticks"] == frames


def test_session_rejects_wrong_chunk_sizes():
    session = st.PlayoutSession(SPF)
    with pytest.raises(DataError, match="640-sample"):
        session.tick(np.zeros(320, np.float32), None)
    with pytest.raises(DataError, match=r"\[frames, 640\]"):
        list(st.play(ScriptedAgent(), np.zeros(SPF * 4, np.float32)))


def test_stream_numbers():
    lat = [0.5] + [0.01] * 19 + [0.05]
    n = st.stream_numbers(lat, warmup_frames=5)
    assert n["first_frame_ms"] == 500.0 and n["p50_ms"] == pytest.approx(10.0) and n["deadline_misses"] == 2
    assert n["steady_state_fps"] == pytest.approx(1000 / np.mean([10.0] * 15 + [50.0]), abs=0.01)
    assert n["real_time_factor"] == pytest.approx(np.mean(lat) * 1000 / 40, abs=1e-4)


def test_bench_streaming_on_a_duplex_agent(tmp_path):
    out = tmp_path / "stream.json"
    frames, k = 24, 14
    res = st.bench_streaming(["--config", str(REPO / "configs" / "speechvideo" / "synthface_tiny.py"),
                              "--frames", str(frames), "--barge-in", str(k), "--jitter", "2", "--warmup-frames", "4",
                              "--init", "normal", "--out", str(out), "--config.sample.video_steps=2"])
    saved = json.loads(out.read_text())
    assert len(saved["latency_ms_per_frame"]) == frames and res["report"] == str(out.absolute())
    assert res["tokens"] == "stand-in" and res["weights"].startswith("fresh init")
    assert res["overrides"] == ["--config.sample.video_steps=2"]
    lat = res["latency"]
    assert lat["frames"] == frames and 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    assert lat["first_frame_ms"] > 0 and lat["steady_state_fps"] > 0 and lat["real_time_factor"] > 0
    assert res["cold_start"]["compile_s"] > 0
    assert res["compilations"]["after_stream"] == {"lm_step": 1} and not res["compilations"]["recompiled_during_stream"]
    q = res["audio_codebooks"]  # 9 stand-in codebooks: the first audio frame completes at step q - 1
    assert res["first_audio"]["tick"] == q - 1 + 2 - 1
    playout = res["playout"]
    assert [b["frame"] for b in playout["barge_ins"]][:1] == [k]
    first = playout["barge_ins"][0]
    assert first["frames_dropped"] >= 1 and first["samples_dropped"] == first["frames_dropped"] * 640
    assert first["queue_after_flush"] == 0 and playout["flushed_frames_played_later"] == 0
    assert playout["frames_planned_before_interruption_played_after"] == 0
    with pytest.raises(SystemExit):
        st.bench_streaming(["--frames", "10", "--bogus"])


def test_online_windowed_schedule_and_runner():
    from avatarjax.pipelines.windowed import plan_windows

    plan = plan_windows(100, 40, 10)  # windows at 0, 30, 60: 40 + 30 + 30 new frames
    fast = st.online_schedule(plan, [0.1, 0.1, 0.1])
    assert fast["first_frame_ms"] == pytest.approx(1000 * (40 * 0.04 + 0.1 - 0.04))  # waits for its window
    assert fast["p50_ms"] >= 100 and fast["max_ms"] == pytest.approx(fast["first_frame_ms"])
    assert fast["keeps_up"] and fast["max_backlog_ms"] == 0 and fast["algorithmic_ms"] == 1600
    assert fast["real_time_factor"] == pytest.approx(0.3 / 4.0) and fast["steady_state_fps"] == pytest.approx(300)
    slow = st.online_schedule(plan, [2.0, 2.0, 2.0])  # 2 s per 1.2 s of new video: a growing backlog
    assert not slow["keeps_up"] and slow["max_backlog_ms"] == pytest.approx(1000 * (3.6 - 2.8 + 2.0 - 1.2 + 0.0),
                                                                              abs=1e-6)
    calls = []

    def window(k):
        calls.append(k)
        return np.zeros((plan.valid(k) - plan.known_frames(k), 4, 4, 3), np.uint8)

    frames, seconds = st.run_online(plan, window)
    assert calls == [0, 1, 2] and sum(len(f) for f in frames) == 100 and len(seconds) == 3
    with pytest.raises(DataError, match="new frames"):
        st.run_online(plan, lambda k: np.zeros((1, 4, 4, 3), np.uint8))
