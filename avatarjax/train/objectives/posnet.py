"""The PosNet task: learn to correct a frozen windowed generator's head pose online (PFLPosNet stage 2).

Data: a generated set (``pipelines.reaction``: per session the generator's ``K`` reactions, the ``M`` real ones
and the speaker). An example is a run of ``data.segments`` consecutive generator segments of one generated
reaction (aligned to the generator's seams), with the fidelity target: the real reaction ``k mod M`` over the same
frames (``loss.fidelity="truth"``, the paper's L_general) or the generated pose itself (``"generated"``).

Loss: the segments are corrected online exactly as at inference (``correct_sequence``'s recurrence: segment 0 as
generated, each later one from the previous *corrected* last pose), unrolled with ``lax.scan`` so the gradient
flows through the recurrence, and the paper's terms are averaged over segments 1..S-1.

Batch: ``pose`` float32 ``[B, S * F, P]`` (generated), ``target`` float32 ``[B, S * F, P]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.errors import ConfigError, DataError
from avatarjax.eval import smoothness
from avatarjax.models.posnet import PosNet, PosNetConfig, PosNetLossConfig, correct_sequence, posnet_flops, \
    posnet_losses
from avatarjax.pipelines import reaction
from avatarjax.train.task import Task


@dataclasses.dataclass(frozen=True)
class PosNetTaskConfig:
    net: PosNetConfig = PosNetConfig()
    loss: PosNetLossConfig = PosNetLossConfig()


@dataclasses.dataclass(frozen=True)
class PosNetDataConfig:
    generated: str = ""  # a generated set directory (pipelines/reaction.py)
    segments: int = 8  # consecutive generator segments per example (S)
    pose_start: int = 52  # first pose column of the coefficients (REACT: 52..57)
    eval_split: str = "val"


@dataclasses.dataclass(frozen=True)
class PosNetSampleConfig:
    split: str = "val"


def _pose(x: np.ndarray, cfg) -> np.ndarray:
    start = cfg.data.pose_start
    return x[..., start:start + cfg.model.net.pose_dim]


class _Runs:
    """Random-access source of (session, reaction) pairs; ``make_example`` picks the segment run."""

    def __init__(self, cfg, split: str):
        if not cfg.data.generated:
            raise ConfigError("data.generated is empty: pass --config.data.generated=DIR, a generated set written "
                              "by the reaction generator (see avatarjax/pipelines/reaction.py)")
        segment, self.sessions = reaction.read_generated(cfg.data.generated, split)
        if segment != cfg.model.net.segment:
            raise ConfigError(f"the generated set at {cfg.data.generated} has {segment}-frame segments but "
                              f"model.net.segment={cfg.model.net.segment}: set --config.model.net.segment={segment}")
        self.pairs = [(i, k) for i, s in enumerate(self.sessions) for k in range(len(s["generated"]))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[dict, int]:
        s, k = self.pairs[i]
        return self.sessions[s], k


def make_example(item: tuple[dict, int], rng: np.random.Generator, cfg) -> dict:
    session, k = item
    f, n = cfg.model.net.segment, cfg.data.segments
    generated = _pose(session["generated"][k], cfg)
    available = len(generated) // f
    if available < n:
        raise DataError(f"session {session['name']} has {available} whole segments, fewer than data.segments={n}: "
                        "lower data.segments or generate longer sessions")
    start = int(rng.integers(available - n + 1)) * f
    truth = _pose(session["truth"][k % len(session["truth"])], cfg)
    target = truth if cfg.model.loss.fidelity == "truth" else generated
    return {"pose": generated[start:start + n * f], "target": target[start:start + n * f]}


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    if cfg.model.loss.fidelity not in ("truth", "generated"):
        raise ConfigError(f"model.loss.fidelity must be 'truth' or 'generated', got {cfg.model.loss.fidelity!r}")
    train = split == "train"
    ds = pipeline.batched(_Runs(cfg, "train" if train else cfg.data.eval_split), batch_size=cfg.train.batch_size,
                          seed=cfg.seed, shuffle=train, num_epochs=None if train else 1, process_index=process_index,
                          process_count=process_count, transform=lambda item, rng: make_example(item, rng, cfg))
    return pipeline.to_iter(ds, threads=1, prefetch=2)


def example_batch(cfg, batch_size: int) -> dict:
    shape = (batch_size, cfg.data.segments * cfg.model.net.segment, cfg.model.net.pose_dim)
    return {"pose": np.zeros(shape, np.float32), "target": np.zeros(shape, np.float32)}


def build_model(cfg, rngs: nnx.Rngs) -> PosNet:
    model = PosNet(cfg.model.net, dtype=dtype_of(cfg.train.compute_dtype),
                   param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)
    model.loss_cfg = cfg.model.loss  # static (part of the graphdef): the loss reads its weights from the model
    return model


def unrolled_losses(model: PosNet, pose: jax.Array, target: jax.Array, loss_cfg: PosNetLossConfig) -> dict:
    """Correct ``pose [B, S*F, P]`` online and return the paper's loss terms over segments 1..S-1."""
    f = model.cfg.segment
    b, t, p = pose.shape
    corrected = correct_sequence(model, pose).reshape(b, t // f, f, p)
    previous_last = corrected[:, :-1, -1]
    return posnet_losses(corrected[:, 1:], previous_last, target.reshape(b, t // f, f, p)[:, 1:], loss_cfg)


def loss(model: PosNet, batch, key, step):
    del key, step
    terms = unrolled_losses(model, batch["pose"], batch["target"], model.loss_cfg)
    return terms["total"], {k: v for k, v in terms.items() if k != "total"}


def flops_per_example(cfg) -> float:
    return (cfg.data.segments - 1) * posnet_flops(cfg.model.net)


# ------------------------------------------------------------------------------------------------- evaluation
def smoothing_report(smoother: reaction.PoseSmoother, sessions: list[dict], pose_start: int) -> dict:
    """Seam jumps and smoothness (``smoothness.segment_scores``) of the generated pose before and after online
    correction, over every generated reaction of ``sessions`` (the generator's segments are PosNet's segments)."""
    f, p = smoother.segment, smoother.pose_dim
    pose = slice(pose_start, pose_start + p)
    gen = np.concatenate([s["generated"] for s in sessions])  # [R, T, 58]
    b = smoothness.segment_scores(gen[..., pose], f)
    a = smoothness.segment_scores(smoother.smooth(gen, pose=pose)[..., pose], f)
    return {"before": b, "after": a, "seam_jump_reduction": b["seam_jump"] / max(a["seam_jump"], 1e-12),
            "sessions": len(sessions), "reactions": len(gen)}


def evaluate(model: PosNet, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W [-- --split val]``: seam jumps before/after PosNet on a generated set.

    ``-- --generator G [--floating F] [--sessions N --reactions K --steps S --frames T]``: the paper's table
    instead (``pipelines.reaction_eval``): generator G (PFL crop) with and without PosNet, and F (floating crop),
    generating online on held-out sessions."""
    del checkpoint
    p = argparse.ArgumentParser(prog="avatarjax eval (posnet)")
    p.add_argument("--split", default=cfg.data.eval_split)
    p.add_argument("--generated", default=cfg.data.generated)
    p.add_argument("--generator", default=None, help="reaction generator trained on PFL-crop data")
    p.add_argument("--floating", default=None, help="reaction generator trained on floating-crop data")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--reactions", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps per segment (default: the generator's)")
    p.add_argument("--frames", type=int, default=None, help="frames per session (default: the generator's)")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(args)
    smoother = reaction.PoseSmoother(model, cfg)
    if ns.generator:
        from avatarjax.pipelines import reaction_eval
        from avatarjax.train.export import load_model

        floating = load_model(ns.floating) if ns.floating else None
        return reaction_eval.evaluate_table(load_model(ns.generator), floating, smoother, sessions=ns.sessions,
                                            reactions=ns.reactions, num_steps=ns.steps, num_frames=ns.frames,
                                            seed=ns.seed)
    _, sessions = reaction.read_generated(ns.generated, ns.split)
    return smoothing_report(smoother, sessions, cfg.data.pose_start)


def sample(model: PosNet, cfg, out, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --checkpoint W [--out DIR]``: the evaluation report written as JSON."""
    report = evaluate(model, cfg, args, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "posnet_report.json").write_text(json.dumps(report, indent=2))
    return {**report, "report": str((out / "posnet_report.json").absolute())}


POSNET_TASK = Task(name="posnet", model_config=PosNetTaskConfig, data_config=PosNetDataConfig, build_model=build_model,
                   loss=loss, dataset=dataset, flops_per_example=flops_per_example, example_batch=example_batch,
                   sample_config=PosNetSampleConfig, sample=sample, evaluate=evaluate)
