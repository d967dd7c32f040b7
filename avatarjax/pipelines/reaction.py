"""Online head-pose smoothing with PosNet, as a post-processor for any windowed generator's motion.

``PoseSmoother.load(checkpoint).smooth(track, pose=slice(52, 58))`` rewrites the pose channels of ``track
[..., T, D]`` segment by segment (``correct_sequence``: segment 0 as generated, each later segment corrected from
the last pose of the previous corrected one) and copies every other channel through bit for bit. The segments
must line up with the generator's windows: ``offset`` frames before the first seam are kept as generated.
Sources it serves:

- reaction generator output: REACT coefficients ``[K, T, 58]``, pose = ``[52:58]`` (3 rotations + 3 translations);
- InstructAvatar: the pose head's ``[T, 6]`` (pass ``pose=slice(0, 6)``) or any per-frame track with pose columns;
- the speech-video LM's agent motion, once it exists, the same way.

Generated sets (what PosNet trains on; the generator is frozen). A directory ``DIR`` holds::

    DIR/index.json                      {"segment": F, "splits": {split: [session names]}, "source": ...}
    DIR/<split>/<session>.npz           generated [K, T, 58], truth [M, T, 58], speaker [T, 58] (float32)

``write_generated`` / ``read_generated`` write and read it (atomically per file).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.atomic import atomic_file
from avatarjax.errors import DataError

POSE = slice(52, 58)  # REACT coefficients: 3 rotations (radians) + 3 translations


# ------------------------------------------------------------------------------------------------ generated sets
def _atomic_savez(path: Path, **arrays) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_generated(out_dir: str | Path, split: str, sessions: list[dict], *, segment: int, source: str = "") -> Path:
    """Add ``sessions`` (dicts with ``name``, ``generated [K, T, 58]``, ``truth [M, T, 58]``, ``speaker [T, 58]``)
    to the generated set at ``out_dir`` under ``split``; returns the index path."""
    out_dir = Path(out_dir)
    index_path = out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"segment": segment, "splits": {}}
    if index["segment"] != segment:
        raise DataError(f"{out_dir} holds {index['segment']}-frame segments, not {segment}: write to a new directory")
    names = index["splits"].setdefault(split, [])
    for s in sessions:
        arrays = {k: np.asarray(s[k], np.float32) for k in ("generated", "truth", "speaker")}
        t = arrays["speaker"].shape[0]
        if arrays["generated"].ndim != 3 or arrays["generated"].shape[1] > t or arrays["truth"].shape[1] != t:
            raise DataError(f"session {s['name']}: generated {arrays['generated'].shape}, truth "
                            f"{arrays['truth'].shape}, speaker {arrays['speaker'].shape} do not line up in time")
        _atomic_savez(out_dir / split / f"{s['name']}.npz", **arrays)
        if s["name"] not in names:
            names.append(s["name"])
    index["source"] = source or index.get("source", "")
    with atomic_file(index_path) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    return index_path


def read_generated(path: str | Path, split: str) -> tuple[int, list[dict]]:
    """``(segment, sessions)`` of a generated set; each session a dict of float32 arrays plus ``name``."""
    path = Path(path)
    index_path = path / "index.json"
    if not index_path.exists():
        raise DataError(f"{path} is not a generated set (no index.json): make one with "
                        "`avatarjax sample --checkpoint REACTION_WORKDIR -- --dump DIR` (see pipelines/reaction.py)")
    index = json.loads(index_path.read_text())
    names = index["splits"].get(split, [])
    if not names:
        raise DataError(f"{path} has no '{split}' sessions (it has {sorted(index['splits'])}): generate that split")
    sessions = []
    for name in names:
        with np.load(path / split / f"{name}.npz") as z:
            sessions.append({"name": name, **{k: z[k].astype(np.float32) for k in z.files}})
    return int(index["segment"]), sessions


# ----------------------------------------------------------------------------------------------------- smoother
class PoseSmoother:
    """A trained PosNet applied online to stitched windowed motion (see the module docstring)."""

    def __init__(self, model, cfg=None):
        from avatarjax.models.posnet import correct_sequence

        self.model, self.cfg = model, cfg
        self.segment, self.pose_dim = model.cfg.segment, model.cfg.pose_dim
        graphdef, self._state = nnx.split(model)
        self._run = jax.jit(lambda state, pose: correct_sequence(nnx.merge(graphdef, state), pose))

    @classmethod
    def load(cls, checkpoint: str | Path) -> "PoseSmoother":
        from avatarjax.train.export import load_model

        model, cfg = load_model(checkpoint)
        return cls(model, cfg)

    def smooth(self, track, pose: slice = POSE, offset: int = 0) -> np.ndarray:
        """``track [T, D]`` or ``[B, T, D]`` -> the same with ``track[..., offset:, pose]`` corrected segment by
        segment (a last partial segment is padded by repeating its final frame, corrected, and trimmed).
        Channels outside ``pose`` and frames before ``offset`` are returned unchanged, bit for bit."""
        track = np.asarray(track)
        single = track.ndim == 2
        x = track[None] if single else track
        if x.ndim != 3:
            raise DataError(f"smooth expects a track [T, D] or [B, T, D], got shape {track.shape}")
        width = len(range(*pose.indices(x.shape[-1])))
        if width != self.pose_dim:
            raise DataError(f"the pose slice {pose} selects {width} of {x.shape[-1]} channels, PosNet reads "
                            f"{self.pose_dim}: pass pose=slice(first, first + {self.pose_dim})")
        seq = x[:, offset:, pose].astype(np.float32)
        t = seq.shape[1]
        if t <= self.segment:
            return track.copy()
        pad = -t % self.segment
        padded = np.concatenate([seq, np.repeat(seq[:, -1:], pad, axis=1)], axis=1) if pad else seq
        fixed = np.asarray(jax.device_get(self._run(self._state, jnp.asarray(padded))))[:, :t]
        out = x.copy()
        out[:, offset:, pose] = fixed.astype(out.dtype)
        return out[0] if single else out


# -------------------------------------------------------------------------------------------------- benchmark
def _posnet_side_by_side(model, cfg, batch: int, repeats: int, threads: int, frames: int, rng) -> tuple[dict, dict]:
    """One AdamW step ours vs the released torch PosNet, and ``correct_sequence`` (one scan) vs a Python loop of
    per-segment jitted calls."""
    import torch

    from avatarjax.bench import harness, torch_refs
    from avatarjax.models.posnet import correct_sequence, posnet_flops

    harness.set_torch_threads(threads)
    last = rng.normal(size=(batch, cfg.pose_dim)).astype(np.float32)
    pose = rng.normal(size=(batch, cfg.segment, cfg.pose_dim)).astype(np.float32)
    target = rng.normal(size=pose.shape).astype(np.float32)
    ours = harness.jax_train_step(model, lambda m, a, b, y: jnp.mean(jnp.square(m(a, b) - y)), (last, pose, target),
                                  repeats)
    torch.manual_seed(0)
    ref = torch_refs.PosNet(cfg.pose_dim, cfg.segment, cfg.hidden, cfg.kernel_size)
    reference = harness.torch_train_step(ref, lambda m, a, b, y: torch.mean(torch.square(m(a, b) - y)),
                                         (last, pose, target), repeats)
    side = harness.compare_train("posnet", ours, reference, "torch PosNet (released layout)",
                                 flops=3 * batch * posnet_flops(cfg))
    graphdef, state = nnx.split(model)
    segments = max(frames // cfg.segment, 2)
    track = jnp.asarray(rng.normal(size=(1, segments * cfg.segment, cfg.pose_dim)), jnp.float32)
    scanned = jax.jit(lambda s, x: correct_sequence(nnx.merge(graphdef, s), x))
    window = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))

    def looped():
        segs = [track[:, i * cfg.segment:(i + 1) * cfg.segment] for i in range(segments)]
        out = [segs[0]]
        for seg in segs[1:]:
            out.append(window(state, out[-1][:, -1], seg))
        return jnp.concatenate(out, axis=1)

    sampling = harness.scan_vs_loop(lambda: scanned(state, track), looped, repeats)
    sampling["segments"] = segments
    return side, sampling


def bench_posnet(args: list[str]) -> dict:
    """``avatarjax bench posnet [--hidden 512] [--segment 25] [--repeats 200] [--quick]``: PosNet latency per window
    (batch 1, jitted, the streaming case), the online-smoothing cost per second of generated video (10 reactions of
    a 30 s REACT clip through ``PoseSmoother.smooth``), the online correction as one ``lax.scan`` against a Python
    loop of per-window jitted calls, and one AdamW training step (MSE to a target pose, ``--train-batch``) ours
    jitted against the released torch PosNet at the same size, in one run; randomly initialised released-size
    PosNet."""
    import argparse
    import time

    from avatarjax.models.posnet import PosNet, PosNetConfig, posnet_flops

    p = argparse.ArgumentParser(prog="avatarjax bench posnet")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--segment", type=int, default=25)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--reactions", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, short clip")
    ns = p.parse_args(args)
    if ns.quick:
        ns.repeats, ns.reactions, ns.seconds, ns.train_batch, ns.hidden = 5, 2, 4.0, 8, 128
    cfg = PosNetConfig(hidden=ns.hidden, segment=ns.segment)
    with nnx.use_eager_sharding(False):
        model = PosNet(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    window = jax.jit(lambda s, last, pose: nnx.merge(graphdef, s)(last, pose))
    rng = np.random.default_rng(0)
    last = jnp.asarray(rng.normal(size=(1, cfg.pose_dim)), jnp.float32)
    pose = jnp.asarray(rng.normal(size=(1, cfg.segment, cfg.pose_dim)), jnp.float32)
    window(state, last, pose).block_until_ready()
    times = []
    for _ in range(ns.repeats):
        t0 = time.perf_counter()
        window(state, last, pose).block_until_ready()
        times.append(time.perf_counter() - t0)
    smoother = PoseSmoother(model)
    frames = int(round(ns.seconds * 25))
    track = rng.normal(size=(ns.reactions, frames, 58)).astype(np.float32)
    smoother.smooth(track)  # compile
    runs = []
    for _ in range(max(3, ns.repeats // 20)):
        t0 = time.perf_counter()
        smoother.smooth(track)
        runs.append(time.perf_counter() - t0)
    per_window_ms = float(np.median(times) * 1e3)
    smooth_s = float(np.median(runs))
    side, sampling = _posnet_side_by_side(model, cfg, ns.train_batch, max(3, ns.repeats // 20), ns.threads,
                                          frames, rng)
    summary = [dict(side["summary"], sampling_speedup=sampling["speedup"],
                    note=f"AdamW step, batch {ns.train_batch}; sampling: online correction of {frames} frames")]
    return {"summary": summary, "train_vs_pytorch": side["detail"], "online_correction_scan_vs_loop": sampling,
            "device": jax.devices()[0].device_kind, "hidden": ns.hidden, "segment": ns.segment,
            "flops_per_window": posnet_flops(cfg), "window_latency_ms_median": per_window_ms,
            "window_latency_ms_p90": float(np.percentile(times, 90) * 1e3),
            "goal_window_under_1ms": per_window_ms < 1.0,
            "smooth_reactions": ns.reactions, "smooth_video_seconds": ns.seconds,
            "smooth_ms_per_video_second": smooth_s * 1e3 / ns.seconds,
            "smooth_ms_per_video_second_per_reaction": smooth_s * 1e3 / ns.seconds / ns.reactions}
