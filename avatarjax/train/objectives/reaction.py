"""Online multiple-appropriate facial reaction generation (MAFRG) on synthface dyadic sessions.

Data: dyadic sessions (``data.synthface.dyadic.generate_session``: a talking speaker clip with its audio and
``num_reactions`` appropriate listener reactions) generated on the fly and memoised per session index. Speaker and
listener identities of a session both come from the split's identity pool (``identity.identity_split``), so the
eval sessions are held-out identities. Each example picks a random segment position (the first segment with
probability ``first_segment_prob``, else any start ``>= S``) and a random one of the session's reactions as the
target, so the model learns the distribution of appropriate reactions rather than their mean:

- ``speaker`` ``[C, 58]`` standardised speaker coefficients of frames ``[end - C, end)`` (``end`` = the segment's
  end), ``speaker_mask`` ``[C]``, ``audio`` ``[C * 640]`` (zero-padded before frame 0);
- ``previous`` ``[S, 58]`` the same reaction's previous segment (teacher forcing; zeros when none),
  ``has_previous`` ``[]``;
- ``target`` ``[S, 58]`` the reaction's current segment.

Standardisation: per-dimension mean and std of the speaker and listener coefficients over the first
``stats_sessions`` training sessions (``coefficient_stats``; a deterministic function of ``data``), also stored in
the model (``ReactionGenerator`` ``CoefficientStats`` variables) so checkpoints and exports carry them. Dims that
are constant (the unmapped ARKit slots) get std 1.

Loss: the paper's L_general, ``||x0 - x0_hat||^2`` on the standardised segment (x0-prediction, DDPM noise), plus
``loss.velocity_weight`` times the MSE of first differences (0 by default; logged either way).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.data.synthface import identity as identity_lib
from avatarjax.data.synthface.dyadic import generate_session
from avatarjax.data.synthface.react import to_react_coefficients
from avatarjax.diffusion import schedules
from avatarjax.errors import ConfigError
from avatarjax.models.reaction_generator import (SAMPLES_PER_FRAME, ReactionGenerator, ReactionGeneratorConfig,
                                                 crop_context, reaction_generator_flops)
from avatarjax.train.task import Task

STD_FLOOR = 1e-3  # smallest std used for a varying dim
CONSTANT_STD = 1e-6  # below this a dim counts as constant (see _mean_std)


@dataclasses.dataclass(frozen=True)
class ReactionDiffusionConfig:
    num_train_steps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | cosine


@dataclasses.dataclass(frozen=True)
class ReactionLossConfig:
    velocity_weight: float = 0.0  # MSE of first differences (smoothness); 0 = the paper's L_general only


@dataclasses.dataclass(frozen=True)
class ReactionTaskConfig:
    """The ``model`` section: the network, the diffusion schedule and the loss."""

    net: ReactionGeneratorConfig = ReactionGeneratorConfig()
    diffusion: ReactionDiffusionConfig = ReactionDiffusionConfig()
    loss: ReactionLossConfig = ReactionLossConfig()


@dataclasses.dataclass(frozen=True)
class ReactionDataConfig:
    num_sessions: int = 200  # training sessions (speaker and listener identities of the train split)
    num_eval_sessions: int = 16  # eval sessions (held-out identities)
    num_frames: int = 250  # frames per session (25 fps)
    num_reactions: int = 10  # appropriate listener reactions per session
    num_identities: int = 200
    world_seed: int = 0
    stats_sessions: int = 16  # training sessions the standardisation statistics come from
    first_segment_prob: float = 0.1  # examples that are a clip's first segment (no previous segment)
    # "pfl": coefficients of the fixed PFL crop (head translation kept); "floating": of a nose-centred floating
    # crop, which cannot see head translation (the translation coefficients are 0 for speaker and listener)
    crop: str = "pfl"
    threads: int = 2
    prefetch: int = 4


@dataclasses.dataclass(frozen=True)
class ReactionSampleConfig:
    num_steps: int = 50  # DDIM steps per segment
    eta: float = 0.0
    num_reactions: int = 10  # K reactions per speaker clip (10 in REACT)
    sessions: int = 4  # eval sessions the CLI sampler writes
    num_frames: int = 0  # frames per sampled session; 0 = data.num_frames
    seed: int = 0


class ReactionSystem(nnx.Module):
    """The trained module: the generator plus its static task settings (diffusion schedule, loss weights)."""

    def __init__(self, cfg: ReactionTaskConfig, *, stats: dict[str, np.ndarray] | None, remat: str, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.settings = cfg
        self.net = ReactionGenerator(cfg.net, stats=stats, remat=remat, dtype=dtype, param_dtype=param_dtype,
                                     rngs=rngs)


# ------------------------------------------------------------------------------------------------------ data
def check_config(cfg) -> None:
    net, data = cfg.model.net, cfg.data
    if net.segment < 1 or net.context < net.segment:
        raise ConfigError(f"model.net.segment={net.segment} and model.net.context={net.context}: need segment >= 1 "
                          "and context >= segment (the context ends at the segment's end)")
    if data.num_frames < 2 * net.segment:
        raise ConfigError(f"data.num_frames={data.num_frames} is shorter than two segments of {net.segment}: raise "
                          "data.num_frames or lower model.net.segment")
    if net.coeff_dim != 58:
        raise ConfigError(f"model.net.coeff_dim must be 58 (REACT coefficients), got {net.coeff_dim}")
    if data.num_reactions < 1 or data.stats_sessions < 1:
        raise ConfigError("data.num_reactions and data.stats_sessions must be >= 1")
    if data.crop not in ("pfl", "floating"):
        raise ConfigError(f"data.crop must be 'pfl' or 'floating', got {data.crop!r}")
    if not 0.0 <= data.first_segment_prob <= 1.0:
        raise ConfigError(f"data.first_segment_prob must be in [0, 1], got {data.first_segment_prob}")


def identity_pool(num_identities: int, split: str) -> np.ndarray:
    """Identity indices of ``split`` ('train' | 'eval')."""
    pool = np.array([i for i in range(num_identities) if identity_lib.identity_split(i) == split])
    if len(pool) < 2:
        raise ConfigError(f"only {len(pool)} '{split}' identities among data.num_identities={num_identities}: "
                          "raise data.num_identities")
    return pool


def session_spec(data: ReactionDataConfig, split: str, index: int) -> tuple[int, int, int]:
    """(session seed, speaker identity, listener identity) of session ``index`` of ``split``."""
    rng = np.random.default_rng([data.world_seed, 0 if split == "train" else 1, int(index), 0x5EAC])
    speaker, listener = rng.choice(identity_pool(data.num_identities, split), size=2, replace=False)
    return int(rng.integers(2 ** 31)), int(speaker), int(listener)


def make_session(data: ReactionDataConfig, split: str, index: int, num_frames: int | None = None) -> dict:
    """Raw session arrays: ``speaker`` ``[T, 58]``, ``audio`` float32 ``[T * 640]``, ``listeners`` ``[R, T, 58]``,
    ``delays`` int ``[R]`` (ground-truth mirroring delays, frames)."""
    seed, speaker_id, listener_id = session_spec(data, split, index)
    session = generate_session(seed, speaker_id, listener_id, num_frames or data.num_frames, data.num_reactions,
                               split=split)
    speaker = to_react_coefficients(session.speaker.state)
    listeners = np.stack([to_react_coefficients(c.state) for c in session.listeners])
    if data.crop == "floating":  # a nose-centred crop moves with the head: no translation left to see
        speaker[..., TRANSLATION], listeners[..., TRANSLATION] = 0.0, 0.0
    return {"speaker": speaker, "audio": np.asarray(session.speaker.audio, np.float32), "listeners": listeners,
            "delays": np.asarray(session.reaction_delays_frames, np.int32)}


TRANSLATION = slice(55, 58)  # REACT coefficients: tx, ty, depth


def _mean_std(x: np.ndarray, constant_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim mean and std; a dim constant in the data gets ``constant_std``: 1 for inputs (a value the training
    data never showed is not blown up), ``STD_FLOOR`` for outputs (the generator's residual error in a dim the
    data never moves stays ~1e-3 of it instead of leaking in at unit scale)."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    std = x.std(0)
    std = np.where(std < CONSTANT_STD, constant_std, np.maximum(std, STD_FLOOR))
    return x.mean(0).astype(np.float32), std.astype(np.float32)


@functools.lru_cache(maxsize=8)
def coefficient_stats(data: ReactionDataConfig) -> dict[str, np.ndarray]:
    """Per-dimension ``speaker_mean/std`` and ``listener_mean/std`` ``[58]`` over the first ``stats_sessions``
    training sessions (all frames, all reactions). Deterministic in ``data``."""
    sessions = [make_session(data, "train", i) for i in range(data.stats_sessions)]
    sm, ss = _mean_std(np.concatenate([s["speaker"] for s in sessions]), 1.0)
    lm, ls = _mean_std(np.concatenate([s["listeners"].reshape(-1, 58) for s in sessions]), STD_FLOOR)
    return {"speaker_mean": sm, "speaker_std": ss, "listener_mean": lm, "listener_std": ls}


class ReactionSessions:
    """Standardised sessions of a split, generated on first use and memoised (thread-safe; audio kept as int16:
    ~0.3 MB per 10 s session)."""

    def __init__(self, data: ReactionDataConfig, split: str, stats: dict[str, np.ndarray]):
        self.data, self.split, self.stats = data, split, stats
        self.size = data.num_sessions if split == "train" else data.num_eval_sessions
        self._memo: dict[int, dict] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        with self._lock:
            hit = self._memo.get(index)
        if hit is None:
            raw = make_session(self.data, self.split, index)
            st = self.stats
            hit = {"speaker": (raw["speaker"] - st["speaker_mean"]) / st["speaker_std"],
                   "listeners": (raw["listeners"] - st["listener_mean"]) / st["listener_std"],
                   "audio": np.round(np.clip(raw["audio"], -1, 1) * 32767).astype(np.int16)}
            with self._lock:
                self._memo[index] = hit
        return hit


def make_example(session: dict, rng: np.random.Generator, *, segment: int, context: int,
                 first_segment_prob: float) -> dict:
    """One training window (see the module docstring), all float32 except ``speaker_mask`` (bool)."""
    speaker, listeners = session["speaker"], session["listeners"]
    t, s = speaker.shape[0], segment
    start = 0 if rng.random() < first_segment_prob else int(rng.integers(s, t - s + 1))
    r = int(rng.integers(len(listeners)))
    audio = session["audio"].astype(np.float32) / 32767.0
    spk, wav, mask = crop_context(speaker, audio, start + s, context)
    previous = listeners[r, start - s:start] if start >= s else np.zeros((s, speaker.shape[1]), np.float32)
    return {"speaker": spk.astype(np.float32), "speaker_mask": mask, "audio": wav,
            "previous": np.asarray(previous, np.float32), "has_previous": np.float32(start >= s),
            "target": np.asarray(listeners[r, start:start + s], np.float32)}


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of ``make_example`` (train: shuffled sessions, repeated; eval: one pass). Positions and reactions
    are drawn from per-row generators, so eval batches are the same every time."""
    check_config(cfg)
    data, net = cfg.data, cfg.model.net
    sessions = ReactionSessions(data, "train" if split == "train" else "eval", coefficient_stats(data))
    train = split == "train"
    kw = dict(segment=net.segment, context=net.context, first_segment_prob=data.first_segment_prob)
    ds = pipeline.batched(sessions, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=lambda session, rng: make_example(session, rng, **kw))
    return pipeline.to_iter(ds, threads=data.threads, prefetch=data.prefetch)


def example_batch(cfg, batch_size: int) -> dict:
    """Random arrays with the shapes and dtypes of a ``dataset`` batch."""
    net = cfg.model.net
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal((batch_size, *shape)).astype(np.float32)  # noqa: E731
    return {"speaker": f32(net.context, net.coeff_dim), "speaker_mask": np.ones((batch_size, net.context), bool),
            "audio": f32(net.context * SAMPLES_PER_FRAME) * 0.1, "previous": f32(net.segment, net.coeff_dim),
            "has_previous": np.ones((batch_size,), np.float32), "target": f32(net.segment, net.coeff_dim)}


def flops_per_example(cfg) -> float:
    return reaction_generator_flops(cfg.model.net)


# ------------------------------------------------------------------------------------------------ model, loss
def build_model(cfg, rngs: nnx.Rngs) -> ReactionSystem:
    check_config(cfg)
    return ReactionSystem(cfg.model, stats=coefficient_stats(cfg.data), remat=cfg.train.remat,
                          dtype=dtype_of(cfg.train.compute_dtype), param_dtype=dtype_of(cfg.train.param_dtype),
                          rngs=rngs)


def conditions(batch: dict) -> dict:
    return {k: batch[k] for k in ("speaker", "speaker_mask", "audio", "previous", "has_previous")}


def loss(model: ReactionSystem, batch: dict, key: jax.Array, step: jax.Array):
    """x0 MSE on the standardised segment (+ ``velocity_weight`` x first-difference MSE); metrics ``x0_loss``,
    ``velocity_loss``."""
    del step
    settings = model.settings
    d = settings.diffusion
    k_t, k_eps, k_model = jax.random.split(key, 3)
    x0 = batch["target"]
    schedule = schedules.make_discrete_schedule(d.beta_schedule, d.num_train_steps)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, d.num_train_steps)
    x_t = schedules.q_sample(schedule, x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))
    pred = model.net(x_t, t, conditions(batch), key=k_model, train=True).astype(jnp.float32)
    x0_loss = jnp.mean(jnp.square(pred - x0))
    velocity = jnp.mean(jnp.square(jnp.diff(pred, axis=1) - jnp.diff(x0, axis=1)))
    total = x0_loss + settings.loss.velocity_weight * velocity if settings.loss.velocity_weight > 0 else x0_loss
    return total, {"x0_loss": x0_loss, "velocity_loss": velocity}


# ------------------------------------------------------------------------------------------------------ sampling
def _pose_jumps(x: np.ndarray, segment: int) -> tuple[float, float]:
    """Mean |frame-to-frame change| of the 6 pose dims of ``x`` ``[..., T, 58]`` at segment boundaries (frame
    ``nS - 1`` -> ``nS``, PosNet's L_connect as a metric) and inside segments (L_sm1)."""
    from avatarjax.eval import smoothness

    scores = smoothness.segment_scores(x[..., 52:58].reshape(-1, x.shape[-2], 6), segment)
    return scores["seam_jump"], scores["within_step"]


def generated_sessions(model, cfg, split: str, sessions: int, *, num_reactions: int, seed: int,
                       num_steps: int | None, num_frames: int | None):
    """Yields ``(index, raw session (make_session), reactions [K, T', 58], seconds)`` for sessions
    ``0 .. sessions - 1`` of ``split``, each generated online with seed ``seed + index`` (``T'``: whole segments)."""
    from avatarjax.pipelines.reaction_generate import generate_online

    for i in range(sessions):
        raw = make_session(cfg.data, split, i, num_frames)
        start = time.perf_counter()
        pred = generate_online(model, cfg, raw["speaker"], raw["audio"], num_reactions=num_reactions, seed=seed + i,
                               num_steps=num_steps)
        yield i, raw, pred, time.perf_counter() - start


def generation_report(model, cfg, *, sessions: int, num_reactions: int, seed: int, num_steps: int | None,
                      num_frames: int | None, out: Path | None = None) -> dict:
    """Generate ``num_reactions`` reactions online for ``sessions`` eval sessions; REACT metrics on the 58-d
    coefficients (FRCorr against the session's real reactions, FRDiv, FRVar, FRSyn with undefined correlations
    omitted), the real reactions' FRDiv/FRVar for reference, pose jumps at segment boundaries vs inside
    segments (what PosNet smooths), latency and real-time factor. With ``out``, writes per session
    ``speaker.npy`` ``[T, 58]``, ``reactions.npy`` ``[K, T', 58]``, ``real_reactions.npy`` ``[R, T', 58]``."""
    from avatarjax.eval import react as react_metrics
    from avatarjax.pipelines.reaction_generate import segment_length

    seg = segment_length(cfg)
    preds, speakers, reals, seconds = [], [], [], []
    for i, raw, pred, took in generated_sessions(model, cfg, "eval", sessions, num_reactions=num_reactions, seed=seed,
                                                 num_steps=num_steps, num_frames=num_frames):
        seconds.append(took)
        frames = pred.shape[1]
        preds.append(pred)
        speakers.append(raw["speaker"][:frames])
        reals.append(raw["listeners"][:, :frames])
        if out is not None:
            folder = out / f"session_{i:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "speaker.npy", raw["speaker"])
            np.save(folder / "reactions.npy", pred)
            np.save(folder / "real_reactions.npy", reals[-1])
            (folder / "meta.json").write_text(json.dumps({"session_spec": session_spec(cfg.data, "eval", i),
                                                          "delays_frames": raw["delays"].tolist()}))
    p, s = np.stack(preds), np.stack(speakers)
    real = np.stack(reals)
    frames = p.shape[2]
    jump_at, jump_in = _pose_jumps(p, seg)
    corr = react_metrics.fr_corr(p, list(real))
    real_at, real_in = _pose_jumps(real, seg)
    return {
        "sessions": sessions, "reactions": num_reactions, "frames": int(frames), "segment": seg,
        "FRCorr": corr, "FRCorr_per_reaction": corr / num_reactions,
        "FRDiv": react_metrics.fr_div(p) if num_reactions > 1 else float("nan"), "FRVar": react_metrics.fr_var(p),
        "FRSyn": react_metrics.fr_syn(p, s, nan_policy="omit"),
        "real_FRDiv": react_metrics.fr_div(real) if real.shape[1] > 1 else float("nan"),
        "real_FRVar": react_metrics.fr_var(real),
        "real_FRSyn": react_metrics.fr_syn(real, s, nan_policy="omit"),
        "pose_jump_boundary": jump_at, "pose_jump_within": jump_in,
        "real_pose_jump_boundary": real_at, "real_pose_jump_within": real_in,
        "first_call_seconds": seconds[0], "seconds_per_session": float(np.mean(seconds[1:] or seconds)),
        "real_time_factor": float(np.mean(seconds[1:] or seconds)) / (frames / 25.0),
    }


def dump_generated(model, cfg, path, *, split: str, sessions: int, num_reactions: int, seed: int,
                   num_steps: int | None, num_frames: int | None) -> dict:
    """Generate ``num_reactions`` reactions online for ``sessions`` sessions of ``split`` and add them, with the
    sessions' real reactions and speaker, to the generated set at ``path`` (``eval`` sessions go to ``val``):
    PosNet's training and evaluation data, the generator frozen."""
    from avatarjax.pipelines import reaction as reaction_pipeline
    from avatarjax.pipelines.reaction_generate import segment_length

    seg = segment_length(cfg)
    rows = []
    from tqdm.auto import tqdm

    generated = generated_sessions(model, cfg, split, sessions, num_reactions=num_reactions,
                                   seed=seed + (0 if split == "eval" else 1_000_000), num_steps=num_steps,
                                   num_frames=num_frames)
    for i, raw, pred, _ in tqdm(generated, total=sessions, desc=f"generate {split}", unit="session", disable=None):
        frames = pred.shape[1]
        rows.append({"name": f"{split}_{i:04d}", "generated": pred, "truth": raw["listeners"][:, :frames],
                     "speaker": raw["speaker"][:frames]})
    index = reaction_pipeline.write_generated(path, "train" if split == "train" else "val", rows, segment=seg,
                                              source=f"reaction generator, crop={cfg.data.crop}")
    return {"generated_set": str(Path(path).absolute()), "index": str(index), "split": split, "sessions": sessions,
            "reactions": num_reactions, "segment": seg}


def _parse(args: list[str], cfg, prog: str):
    s = cfg.sample
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--sessions", type=int, default=s.sessions, help="eval sessions (held-out identities)")
    p.add_argument("--reactions", type=int, default=s.num_reactions, help="reactions per speaker clip")
    p.add_argument("--steps", type=int, default=s.num_steps, help="DDIM steps per segment")
    p.add_argument("--frames", type=int, default=s.num_frames or cfg.data.num_frames, help="frames per session")
    p.add_argument("--seed", type=int, default=s.seed)
    p.add_argument("--dump", default=None, help="write a generated set for PosNet here (pipelines/reaction.py)")
    p.add_argument("--split", default="eval", choices=("train", "eval"),
                   help="with --dump: sessions of this split (train: training identities; eval: held-out -> 'val')")
    ns = p.parse_args(args)
    if ns.sessions < 1 or ns.reactions < 1:
        raise ConfigError("--sessions and --reactions must be >= 1")
    return ns


def sample(model: ReactionSystem, cfg, out, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample --checkpoint W [--out DIR] [--sessions N] [--reactions K] [--steps N] [--frames T]``:
    reactions for eval sessions as .npy files plus ``report.json`` (see ``generation_report``)."""
    ns = _parse(args, cfg, "avatarjax sample (reaction)")
    if ns.dump:
        return dump_generated(model, cfg, ns.dump, split=ns.split, sessions=ns.sessions, num_reactions=ns.reactions,
                              seed=ns.seed, num_steps=ns.steps, num_frames=ns.frames)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = generation_report(model, cfg, sessions=ns.sessions, num_reactions=ns.reactions, seed=ns.seed,
                               num_steps=ns.steps, num_frames=ns.frames, out=out)
    report["checkpoint"] = None if checkpoint is None else str(checkpoint)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return {"output": str(out.absolute()), **report}


def evaluate(model: ReactionSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W [--sessions N] [--reactions K] [--steps N] [--frames T]``: the
    ``generation_report`` metrics (nothing written)."""
    ns = _parse(args, cfg, "avatarjax eval (reaction)")
    return generation_report(model, cfg, sessions=ns.sessions, num_reactions=ns.reactions, seed=ns.seed,
                             num_steps=ns.steps, num_frames=ns.frames)


REACTION_TASK = Task(name="reaction", model_config=ReactionTaskConfig, data_config=ReactionDataConfig,
                     sample_config=ReactionSampleConfig, build_model=build_model, loss=loss, dataset=dataset,
                     flops_per_example=flops_per_example, example_batch=example_batch, sample=sample,
                     evaluate=evaluate)

