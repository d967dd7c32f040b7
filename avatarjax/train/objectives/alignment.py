"""Body of Her alignment on synthface preferences: reward model (task ``reward``), PPO (task ``ppo``) and the
LM form of KTO (task ``lm_kto``).

Preference set (``make_pair``; stand-in tokens as in ``objectives/speech_video.py``): from a synthface dyadic
session the human is the session's speaker and the agent its listener, whose real reaction nods at the speaker's
pauses and stays silent (its stand-in audio codes are all 0, the codes of silence). A pair is two segments of
``data.frames`` frames with the same human side and agent identity (no text, no motion trajectory: the trajectory
would carry the head pitch):

- preferred: the agent's real behaviour (silent codes, video tokens of the real listener state);
- rejected, kind ``overlap``: the same segment with agent speech pasted over a random span of
  ``[overlap_min_frac, 1] x frames`` frames: the audio codes of another session's speaker at a random offset, so
  the agent talks while the human talks;
- rejected, kind ``no_nod`` (probability ``no_nod_prob``, when the session has a nod): the same segment whose agent
  video tokens come from the listener state with every nod removed (its pitch minus the exact nod curves
  ``dynamics.nod`` recorded in the session's events), so the agent does not nod at the human's pauses.

With probability ``video_drop_prob`` an overlap pair has the agent's video absent (empty tokens) in both
segments, so the reward model also judges the audio alone (PPO rollouts with ``ppo.rollout_video`` off).

Windows are placed around one of the listener's nods (uniformly among the positions that contain it whole) when
the session has one. Record ``i`` of a split uses session ``i mod sessions``; train and eval sessions draw their
identities from the synthface train / eval identity splits.

Reward (``reward``): ``models.reward.RewardModel`` (optionally initialised from a fine-tuned ``speech_video``
checkpoint, ``model.init_from``) trained with the Bradley-Terry loss; metrics ``accuracy`` (overall and per kind)
and, with ``eval.every``, the same on held-out pairs (``eval_accuracy``). ``avatarjax eval`` reports the held-out
pair accuracy over the whole eval split (``evaluate_reward``).

PPO (``ppo``). The action at frame block ``i`` is the agent's delayed audio step (the Q codebook codes sampled
together, one "token"); its log-probability is the sum of the Q codebook log-probabilities. The agent's video
tokens are sampled from the diffusion head during the rollout and fed back, but their likelihood is intractable,
so they are part of the environment, not of the policy ratio (``ppo.rollout_video`` False turns the agent's video
stream off altogether: empty tokens for the policy, the reference and the reward model). A rollout streams
``frames + max_delay`` human frames through ``stream_step`` (the duplex streaming sampler: KV cache, delay pattern; temperature 1) in one
``lax.scan``; then one full-sequence forward of the policy (teacher-forced on the rollout: the same numbers as the
stream, with gradients) gives the token log-probabilities and the value head's values ``[B, N]``, the frozen
reference gives its log-probabilities, and the frozen reward model scores the first ``frames`` frames (all of
whose codebooks are complete). Per-token rewards ``r_i = -beta (log pi - log pi_ref)`` plus the score at the last
token; GAE with ``gamma``, ``lam`` (1, 0.95); whitened advantages; clipped policy loss and clipped value loss
(``clip`` 0.2, ``clip_value`` 0.2, ``vf_coef`` 0.1); ``epochs`` optimisation steps on each rollout batch.

Why PPO runs inside the one trainer: the trainer's step is ``loss -> grads -> optax update`` on ``nnx.Param``;
its non-parameter state ``rest`` is carried from step to step and checkpointed. The PPO module keeps the rollout
batch in ``Rollout`` variables (non-parameters, so in ``rest``): at steps ``step % epochs == 0`` the loss first
collects a fresh rollout (a ``lax.cond``; the rollout reads the parameters through ``stop_gradient``) from the
step's batch of human prompts, at the other steps it reuses the stored one, and every step takes one clipped PPO
gradient step on it. So ``epochs`` consecutive trainer steps are the epochs of one rollout batch, with the
trainer's optimizer, NaN guard, logging, checkpointing and resume unchanged, and no second training loop.
``train.grad_accum`` must be 1 (micro-batches would split the rollout). The policy, its value head, the frozen
reference (``kto.freeze`` of the initial policy) and the frozen reward model are one nnx module tree, sharded by
the trainer on one mesh; only the policy and value head hold ``nnx.Param`` variables, so only they are updated.
Sampled agent video stays bounded in rollouts because the diffusion head clips each x0 prediction
(``net.head.x0_clip``; unclipped, the few-step sampler's first step from t = 999 amplified eps errors ~2e4 x and
fed-back tokens of size ~1e4 derailed the stream).

What PPO can improve: a generator trained on the dyadic sessions already listens (silent codes while the human
talks), the preferred behaviour, so its rollouts score at the reward model's ceiling; one that always talks
scores on the reward's flat floor, where no rollout beats another. The measured run
(``configs/speechvideo/ppo_small.py``) starts from a higher-entropy generator (two-role training stopped early).
``avatarjax eval`` (``evaluate_ppo``) streams held-out prompts through the policy and through the reference
(the initial policy) and reports both mean rewards, the KL, the share of silent agent codes (code 0) and
``score_silent``, the reward of the preferred behaviour on the same prompts (the reference's rollout with all
agent codes 0): the room PPO has is ``score_silent - score_reference``.
The value head reads the policy's decoder states; with ``ppo.detach_value`` (default) through ``stop_gradient``,
so the value loss trains the head only: on a shared trunk its early errors (values start at 0, returns at the
reward model's scale) were seen to swamp the policy gradient and drive the policy's entropy and KL up. A separate
value LM (TRL) would cost a second trunk.

LM-form KTO (``lm_kto``): ``kto.kto_loss`` on ``kto.sequence_log_probs`` of the agent's audio codes (all Q
codebooks of every frame, flattened to one sequence) under the policy and its frozen reference; preferred segments
are desirable, rejected ones undesirable; the reference point comes from mismatched pairs (each agent segment with
the next row's human side, TRL's form). Only the audio likelihood is tractable, so the ``kto_tiny`` config uses
overlap pairs only (``no_nod_prob`` 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.data.synthface import dynamics, schema
from avatarjax.errors import ConfigError
from avatarjax.models import speech_video_lm as svlm
from avatarjax.models.reward import RewardModel, bradley_terry_loss, init_from_generator
from avatarjax.nn.linear import Dense
from avatarjax.train.objectives import kto as kto_lib
from avatarjax.train.objectives.speech_video import MemoisedSessions, stand_in_audio_codes, stand_in_video_tokens
from avatarjax.train.task import Task

PAIR_KINDS = ("overlap", "no_nod")
PITCH = schema.INDEX["pitch"]

# ------------------------------------------------------------------------------------------------------ configs


@dataclasses.dataclass(frozen=True)
class AlignmentDataConfig:
    """Synthface preference pairs (reward, lm_kto) and human prompts (ppo); see the module docstring."""

    num_sessions: int = 64  # train sessions
    num_eval_sessions: int = 16  # held-out sessions (eval identities)
    num_pairs: int = 256  # records per pass over the train split (record i uses session i mod num_sessions)
    num_eval_pairs: int = 64
    session_frames: int = 125  # frames per generated session (25 fps)
    num_identities: int = 16
    world_seed: int = 0
    frames: int = 32  # segment frames (the reward model's input; PPO scores the first `frames` of a rollout)
    no_nod_prob: float = 0.5  # share of rejected segments without nods (else agent speech overlap)
    overlap_min_frac: float = 0.5  # the pasted agent speech covers [overlap_min_frac, 1] x frames
    video_drop_prob: float = 0.0  # share of overlap pairs whose agent video is absent in both segments
    code_range: tuple[float, float] = (-5.0, 4.0)
    threads: int = 2
    prefetch: int = 4


@dataclasses.dataclass(frozen=True)
class RewardTaskConfig:
    net: svlm.SpeechVideoLMConfig = svlm.SpeechVideoLMConfig()
    init_from: str = ""  # a speech_video training workdir or export ("" = random init)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    beta: float = 0.01  # per-token KL penalty to the frozen initial policy
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2  # policy ratio clip
    clip_value: float = 0.2
    vf_coef: float = 0.1
    epochs: int = 4  # optimisation steps per rollout batch
    whiten_advantages: bool = True
    video_steps: int = 4  # diffusion steps per sampled agent video frame in rollouts
    video_temperature: float = 0.95
    rollout_video: bool = True  # False: the agent's video stream is off (empty tokens) in rollouts and scoring
    detach_value: bool = True  # the value loss trains the value head only, not the policy's trunk


@dataclasses.dataclass(frozen=True)
class PPOTaskConfig:
    net: svlm.SpeechVideoLMConfig = svlm.SpeechVideoLMConfig()
    policy_init: str = ""  # a speech_video workdir or export: the initial policy and the reference ("" = random)
    reward_init: str = ""  # a reward workdir or export ("" = random, for tests)
    ppo: PPOConfig = PPOConfig()


@dataclasses.dataclass(frozen=True)
class LMKTOConfig:
    beta: float = 0.1  # TRL's LM default
    lambda_d: float = 1.0
    lambda_u: float = 1.0
    mismatched_kl: bool = True  # reference point from mismatched pairs (else the batch's own log-ratio)


@dataclasses.dataclass(frozen=True)
class LMKTOTaskConfig:
    net: svlm.SpeechVideoLMConfig = svlm.SpeechVideoLMConfig()
    init_from: str = ""  # a speech_video workdir or export: the policy and the reference ("" = random)
    kto: LMKTOConfig = LMKTOConfig()


@dataclasses.dataclass(frozen=True)
class PPOSampleConfig:
    batches: int = 0  # eval prompt batches for `avatarjax eval` (0 = the whole eval split)
    seed: int = 0


def check_config(cfg) -> None:
    data, net = cfg.data, cfg.model.net
    if data.frames < 2 or data.session_frames < data.frames + net.max_delay:
        raise ConfigError(f"data.frames={data.frames} and data.session_frames={data.session_frames}: need frames >= 2 "
                          f"and session_frames >= frames + num_codebooks - 1 = {data.frames + net.max_delay}")
    if data.num_identities > net.num_identities:
        raise ConfigError(f"data.num_identities={data.num_identities} exceeds model.net.num_identities="
                          f"{net.num_identities}: raise the model's or lower the data's")
    if not (0.0 <= data.no_nod_prob <= 1.0 and 0.0 <= data.video_drop_prob <= 1.0
            and 0.0 < data.overlap_min_frac <= 1.0):
        raise ConfigError(f"data.no_nod_prob={data.no_nod_prob} and data.video_drop_prob={data.video_drop_prob} must "
                          f"be in [0, 1] and data.overlap_min_frac={data.overlap_min_frac} in (0, 1]")
    if data.num_sessions < 2:
        raise ConfigError("data.num_sessions must be >= 2 (overlap edits paste another session's speech)")
    if cfg.task == "ppo":
        p = cfg.model.ppo
        if p.epochs < 1 or p.clip <= 0 or p.clip_value <= 0 or p.beta < 0 or p.video_steps < 1:
            raise ConfigError(f"model.ppo: need epochs >= 1, clip > 0, clip_value > 0, beta >= 0, video_steps >= 1; "
                              f"got {p}")
        if p.video_steps > net.head.num_train_steps:
            raise ConfigError(f"model.ppo.video_steps={p.video_steps} exceeds model.net.head.num_train_steps")
        if cfg.train.grad_accum != 1:
            raise ConfigError("ppo needs train.grad_accum=1: its rollout batch is one trainer batch")


# -------------------------------------------------------------------------------------------- preference data


def nod_pitch(nods: list[dict], num_frames: int) -> np.ndarray:
    """The summed pitch offsets (deg) ``[num_frames]`` of a listener's recorded nods (``events['nods']``)."""
    t = np.arange(num_frames) / schema.FPS
    out = np.zeros(num_frames, np.float64)
    for n in nods:
        out += dynamics.nod(t, n["start_s"], n["end_s"] - n["start_s"], n["depth_deg"], int(n["cycles"]))
    return out.astype(np.float32)


class PreferenceSessions(MemoisedSessions):
    """Per-frame stand-in tokens of a split's dyadic sessions: ``human_codes`` ``[S, Q]`` / ``human_video``
    ``[S, K, D]`` (the speaker), ``agent_video`` and ``agent_video_no_nod`` ``[S, K, D]`` (the listener with and
    without its nods), ``identity`` (the listener's) and ``nods`` (frame spans)."""

    salt = 0xA11

    def arrays(self, session) -> dict:
        data, net = self.data, self.net
        s = data.session_frames
        listener = session.listeners[0]
        nods = listener.events["nods"]
        still = listener.state[:s].copy()
        still[:, PITCH] -= nod_pitch(nods, s)
        still = schema.clip_to_range(still)
        k, d = net.video_tokens, net.video_dim
        return {"human_codes": stand_in_audio_codes(session.speaker.audio, s, net.num_codebooks, net.codebook_size,
                                                    data.code_range),
                "human_video": stand_in_video_tokens(session.speaker.state[:s], k, d),
                "agent_video": stand_in_video_tokens(listener.state[:s], k, d),
                "agent_video_no_nod": stand_in_video_tokens(still, k, d),
                "identity": int(listener.identity),
                "nods": [(int(n["start_frame"]), int(n["end_frame"])) for n in nods]}


def segment_row(net: svlm.SpeechVideoLMConfig, agent_codes, agent_video, human_codes, human_video,
                identity: int) -> dict[str, np.ndarray]:
    """One segment in the speech-video LM's batch format (video present, no text, no motion, one segment)."""
    t = agent_codes.shape[0]
    return {"agent_codes": np.asarray(agent_codes, np.int32), "human_codes": np.asarray(human_codes, np.int32),
            "agent_video": np.asarray(agent_video, np.float32), "human_video": np.asarray(human_video, np.float32),
            "agent_video_mask": np.ones((t,), bool), "human_video_mask": np.ones((t,), bool),
            "text": np.zeros((t, net.text_dim), np.float32), "text_mask": np.zeros((t,), bool),
            "motion": np.zeros((t, net.motion_dim), np.float32), "motion_mask": np.zeros((t,), bool),
            "identity": np.full((t,), identity, np.int32), "segment_ids": np.ones((t,), np.int32)}


def _window(session: dict, frames: int, session_frames: int, rng: np.random.Generator) -> tuple[int, bool]:
    """(start of a window of ``frames`` frames, whether it holds a whole nod)."""
    nods = [(a, b) for a, b in session["nods"] if b - a <= frames and b <= session_frames]
    if not nods:
        return int(rng.integers(0, session_frames - frames + 1)), False
    a, b = nods[int(rng.integers(len(nods)))]
    lo, hi = max(0, b - frames), min(a, session_frames - frames)
    return int(rng.integers(lo, hi + 1)), True


def make_pair(sessions: PreferenceSessions, index: int, rng: np.random.Generator, cfg) -> dict[str, np.ndarray]:
    """One preference pair (see the module docstring): ``chosen_*`` and ``rejected_*`` segments and ``kind``
    (index into ``PAIR_KINDS``)."""
    data, net = cfg.data, cfg.model.net
    t = data.frames
    s = sessions.session(index)
    start, has_nod = _window(s, t, data.session_frames, rng)
    src = slice(start, start + t)
    silent = np.zeros((t, net.num_codebooks), np.int32)
    chosen = segment_row(net, silent, s["agent_video"][src], s["human_codes"][src], s["human_video"][src],
                         s["identity"])
    rejected = {k: v.copy() for k, v in chosen.items()}
    chosen = {k: v.copy() for k, v in chosen.items()}
    kind = "no_nod" if has_nod and rng.random() < data.no_nod_prob else "overlap"
    if kind == "no_nod":
        rejected["agent_video"] = s["agent_video_no_nod"][src].copy()
    else:
        donor = sessions.session(index + 1 + int(rng.integers(len(sessions) - 1)))["human_codes"]
        length = int(rng.integers(int(np.ceil(data.overlap_min_frac * t)), t + 1))
        at = int(rng.integers(0, t - length + 1))
        offset = int(rng.integers(0, data.session_frames - length + 1))
        rejected["agent_codes"][at:at + length] = donor[offset:offset + length]
        if rng.random() < data.video_drop_prob:
            for side in (chosen, rejected):
                side["agent_video"][:], side["agent_video_mask"][:] = 0.0, False
    out = {f"chosen_{k}": v for k, v in chosen.items()}
    out.update({f"rejected_{k}": v for k, v in rejected.items()})
    out["kind"] = np.int32(PAIR_KINDS.index(kind))
    return out


def make_prompt(sessions: PreferenceSessions, index: int, rng: np.random.Generator, cfg,
                fixed: bool = False) -> dict[str, np.ndarray]:
    """PPO prompt: the human side of ``frames + max_delay`` frames (around a nod-inducing pause when the session has
    one; ``fixed``: the same window each time) and the agent identity."""
    data, net = cfg.data, cfg.model.net
    n = data.frames + net.max_delay
    s = sessions.session(index)
    start, _ = _window(s, n, data.session_frames, np.random.default_rng(index) if fixed else rng)
    src = slice(start, start + n)
    return {"human_codes": s["human_codes"][src].astype(np.int32), "human_video": s["human_video"][src],
            "identity": np.int32(s["identity"])}


class _Records:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return int(index)


def _dataset(cfg, split: str, process_index: int, process_count: int, make):
    check_config(cfg)
    train = split == "train"
    sessions = PreferenceSessions(cfg, "train" if train else "eval")
    records = _Records(cfg.data.num_pairs if train else cfg.data.num_eval_pairs)
    ds = pipeline.batched(records, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=lambda i, rng: make(sessions, i, rng, cfg))
    return pipeline.to_iter(ds, threads=cfg.data.threads, prefetch=cfg.data.prefetch)


def pair_dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of preference pairs (train: shuffled, repeated; eval: one pass, the same every time)."""
    return _dataset(cfg, split, process_index, process_count, make_pair)


def prompt_dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of PPO prompts (eval: fixed windows)."""
    make = make_prompt if split == "train" else functools.partial(make_prompt, fixed=True)
    return _dataset(cfg, split, process_index, process_count, make)


def _stack(rows: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    return {k: np.broadcast_to(np.asarray(v), (batch_size,) + np.shape(v)).copy() for k, v in rows.items()}


def example_pairs(cfg, batch_size: int) -> dict[str, np.ndarray]:
    net, t = cfg.model.net, cfg.data.frames
    seg = segment_row(net, np.zeros((t, net.num_codebooks)), np.zeros((t, net.video_tokens, net.video_dim)),
                      np.zeros((t, net.num_codebooks)), np.zeros((t, net.video_tokens, net.video_dim)), 0)
    row = {f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in seg.items()}
    row["kind"] = np.int32(0)
    return _stack(row, batch_size)


def example_prompts(cfg, batch_size: int) -> dict[str, np.ndarray]:
    net = cfg.model.net
    n = cfg.data.frames + net.max_delay
    return _stack({"human_codes": np.zeros((n, net.num_codebooks), np.int32),
                   "human_video": np.zeros((n, net.video_tokens, net.video_dim), np.float32),
                   "identity": np.int32(0)}, batch_size)


def split_pairs(batch: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """A pair batch -> (chosen, rejected) segment batches."""
    chosen = {k[len("chosen_"):]: v for k, v in batch.items() if k.startswith("chosen_")}
    rejected = {k[len("rejected_"):]: v for k, v in batch.items() if k.startswith("rejected_")}
    return chosen, rejected


def _concat(a: dict, b: dict) -> dict:
    return {k: jnp.concatenate([a[k], b[k]], axis=0) for k in a}


# ---------------------------------------------------------------------------------------- loading checkpoints


@functools.lru_cache(maxsize=8)
def _load_host_state(path: str, task: str, attr: str) -> tuple[object, dict]:
    """(config, host numpy state) of ``attr`` of the model of a ``task`` workdir or export at ``path``."""
    from avatarjax.train.export import load_model

    with jax.ensure_compile_time_eval():
        model, cfg = load_model(path)
    if cfg.task != task:
        raise ConfigError(f"'{path}' holds a '{cfg.task}' model; a '{task}' workdir or export is needed here")
    module = getattr(model, attr)
    return module.cfg, jax.tree.map(np.asarray, nnx.state(module))


def _load_into(module: nnx.Module, path: str, task: str, attr: str, what: str) -> None:
    net, state = _load_host_state(path, task, attr)
    if net != module.cfg:
        raise ConfigError(f"{what} '{path}' was trained with a different model.net: set model.net to that run's")
    nnx.update(module, jax.tree.map(jnp.asarray, state))


def _load_generator(path: str) -> svlm.SpeechVideoLM:
    """The ``SpeechVideoLM`` of a speech_video workdir or export (values as host-loaded constants)."""
    net, state = _load_host_state(path, "speech_video", "net")
    with nnx.use_eager_sharding(False):
        lm = nnx.eval_shape(lambda: svlm.SpeechVideoLM(net, rngs=nnx.Rngs(0)))
    nnx.update(lm, jax.tree.map(jnp.asarray, state))
    return lm


# --------------------------------------------------------------------------------------------------- reward


class RewardSystem(nnx.Module):
    def __init__(self, cfg: RewardTaskConfig, *, remat: str, dtype, param_dtype, rngs: nnx.Rngs):
        self.settings = cfg
        self.reward = RewardModel(cfg.net, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        if cfg.init_from:
            init_from_generator(self.reward, _load_generator(cfg.init_from))


def _kwargs(cfg) -> dict:
    return dict(remat=cfg.train.remat, dtype=dtype_of(cfg.train.compute_dtype),
                param_dtype=dtype_of(cfg.train.param_dtype))


def build_reward(cfg, rngs: nnx.Rngs) -> RewardSystem:
    check_config(cfg)
    return RewardSystem(cfg.model, **_kwargs(cfg), rngs=rngs)


def pair_scores(reward: RewardModel, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Scores ``[B]`` of the chosen and the rejected segments (one forward over both)."""
    chosen, rejected = split_pairs(batch)
    scores = reward(_concat(chosen, rejected))
    b = scores.shape[0] // 2
    return scores[:b], scores[b:]


def _per_kind(values: jax.Array, kind: jax.Array, name: str) -> dict[str, jax.Array]:
    out = {}
    for k, kind_name in enumerate(PAIR_KINDS):
        m = (kind == k).astype(jnp.float32)
        out[f"{name}_{kind_name}"] = jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)
        out[f"count_{kind_name}"] = jnp.sum(m)
    return out


def reward_loss(system: RewardSystem, batch, key, step):
    del key, step
    chosen, rejected = pair_scores(system.reward, batch)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    metrics.update(_per_kind((chosen > rejected).astype(jnp.float32), batch["kind"], "accuracy"))
    return loss, metrics


def reward_flops(cfg) -> float:
    """Forward FLOPs of one pair: two segments through the LM without the audio and diffusion heads."""
    net = cfg.model.net
    audio_head = 2 * net.backbone.dim * net.num_codebooks * net.codebook_size
    per_segment = svlm.flops_per_window(net, cfg.data.frames, batch_mul=0) - cfg.data.frames * audio_head
    return 2.0 * per_segment


def evaluate_reward(system: RewardSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval`` for ``reward``: held-out pair accuracy over the whole eval split, per kind too."""
    if args:
        raise ConfigError(f"unknown reward eval options {args}")
    return pair_accuracy(system.reward, cfg, "eval")


def pair_accuracy(reward: RewardModel, cfg, split: str = "eval") -> dict:
    """Accuracy (``r_w > r_l``) of ``reward`` over one pass of the eval split's pairs, overall and per kind."""
    if split != "eval":
        raise ValueError("pair_accuracy runs over the (finite) eval split")
    graphdef, state = nnx.split(reward)
    score = jax.jit(lambda s, b: pair_scores(nnx.merge(graphdef, s), b))
    hits, kinds = [], []
    for batch in pair_dataset(cfg, split):
        chosen, rejected = score(state, jax.tree.map(jnp.asarray, batch))
        hits.append(np.asarray(chosen > rejected))
        kinds.append(np.asarray(batch["kind"]))
    hits, kinds = np.concatenate(hits), np.concatenate(kinds)
    out = {"pairs": int(hits.size), "accuracy": float(hits.mean())}
    for k, name in enumerate(PAIR_KINDS):
        if np.any(kinds == k):
            out[f"accuracy_{name}"] = float(hits[kinds == k].mean())
            out[f"pairs_{name}"] = int(np.sum(kinds == k))
    return out


REWARD_TASK = Task(name="reward", model_config=RewardTaskConfig, data_config=AlignmentDataConfig,
                   build_model=build_reward, loss=reward_loss, dataset=pair_dataset, flops_per_example=reward_flops,
                   example_batch=example_pairs, evaluate=evaluate_reward)


# ------------------------------------------------------------------------------------------------ PPO maths


def gae(rewards: jax.Array, values: jax.Array, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over ``[B, N]`` per-token rewards and values (the value after the last
    token is 0): ``delta_i = r_i + gamma V_{i+1} - V_i``, ``A_i = delta_i + gamma lam A_{i+1}``; returns
    (advantages, returns = advantages + values)."""
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def back(carry, delta):
        adv = delta + gamma * lam * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[:, 0]), deltas.T, reverse=True)
    adv = adv.T
    return adv, adv + values


def whiten(x: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over all entries (the mean added back when not ``shift_mean``)."""
    mean, var = jnp.mean(x), jnp.var(x)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    return out if shift_mean else out + mean


def ppo_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                    clip: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate ``mean(max(-A r, -A clip(r, 1 - clip, 1 + clip)))``, ``r = exp(logp - old_logp)``;
    metrics: ``clipfrac`` and ``approx_kl`` (``mean((logp - old)^2) / 2``)."""
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = jnp.mean(jnp.maximum(unclipped, clipped))
    return loss, {"clipfrac": jnp.mean((clipped > unclipped).astype(jnp.float32)),
                  "approx_kl": 0.5 * jnp.mean(jnp.square(log_ratio)), "ratio": jnp.mean(ratio)}


def ppo_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                   clip: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value loss ``0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    a, b = jnp.square(values - returns), jnp.square(clipped - returns)
    return 0.5 * jnp.mean(jnp.maximum(a, b)), {"vf_clipfrac": jnp.mean((b > a).astype(jnp.float32))}


# ------------------------------------------------------------------------------------------------ PPO model


def rollout_batch(net: svlm.SpeechVideoLMConfig, agent_codes, agent_video, human_codes, human_video,
                  identity, agent_video_on: bool = True) -> dict[str, jax.Array]:
    """Rollout arrays ``[B, N, ...]`` (identity ``[B]``) -> a speech-video LM batch (human video on, agent video
    on unless ``agent_video_on`` is False, no text / motion)."""
    b, n = agent_codes.shape[:2]
    on, off = jnp.ones((b, n), bool), jnp.zeros((b, n), bool)
    return {"agent_codes": agent_codes, "human_codes": human_codes, "agent_video": agent_video,
            "human_video": human_video, "agent_video_mask": on if agent_video_on else off, "human_video_mask": on,
            "text": jnp.zeros((b, n, net.text_dim), jnp.float32), "text_mask": off,
            "motion": jnp.zeros((b, n, net.motion_dim), jnp.float32), "motion_mask": off,
            "identity": jnp.broadcast_to(identity[:, None], (b, n)).astype(jnp.int32),
            "segment_ids": jnp.ones((b, n), jnp.int32)}


def token_log_probs(lm: svlm.SpeechVideoLM, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-block log-probabilities ``[B, N]`` of the agent's delayed audio steps (summed over the codebooks that
    hold a code), their entropies ``[B, N]`` and the decoder states ``[B, N, L, dim]``."""
    out = lm(batch)
    logp = jax.nn.log_softmax(out["audio_logits"], axis=-1)
    mask = out["target_audio_mask"]
    picked = jnp.take_along_axis(logp, jnp.where(mask, out["target_audio"], 0)[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    m = mask.astype(jnp.float32)
    return jnp.sum(picked * m, axis=-1), jnp.sum(entropy * m, axis=-1), out["hidden"]


def undelay(delayed: jax.Array, fill: int = 0) -> jax.Array:
    """The stream's samples ``[B, N, Q]`` (step ``i``: codebook ``q`` of frame ``i - q``) -> frames ``[B, N, Q]``
    (``codes[t, q] = delayed[t + q, q]``; ``fill`` where ``t + q >= N``, never sampled)."""
    b, n, q = delayed.shape
    src = jnp.arange(n)[:, None] + jnp.arange(q)[None, :]
    got = jnp.take_along_axis(delayed, jnp.broadcast_to(jnp.clip(src, 0, n - 1)[None], (b, n, q)), axis=1)
    return jnp.where((src < n)[None], got, fill).astype(jnp.int32)


def stream_rollout(lm: svlm.SpeechVideoLM, human_codes: jax.Array, human_video: jax.Array, identity: jax.Array,
                   key: jax.Array, *, video_steps: int, video_temperature: float,
                   return_logits: bool = False, agent_video_on: bool = True) -> tuple[jax.Array, ...]:
    """Stream ``N`` human frames (``[B, N, Q]`` codes, ``[B, N, K, D]`` video) through ``stream_step`` in one
    ``lax.scan`` (audio temperature 1); returns the agent's codes ``[B, N, Q]`` (undelayed; codebook ``q`` of the
    last ``q`` frames is 0: not sampled yet) and video ``[B, N, K, D]`` (and, with ``return_logits``, the stream's
    audio logits ``[B, N, Q, V]``, for tests)."""
    cfg = lm.cfg
    b, n, _ = human_codes.shape
    state = svlm.init_stream(cfg, b, n, lm.dtype)
    controls = svlm.StreamControls.empty(cfg, b).replace(identity=identity.astype(jnp.int32),
                                                         agent_video_mask=jnp.full((b,), agent_video_on))
    prev = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # noqa: E731  frame i-1
    xs = (jnp.swapaxes(prev(human_codes), 0, 1), jnp.swapaxes(prev(human_video), 0, 1), jax.random.split(key, n))

    def step(state, x):
        codes, video, k = x
        out, state = svlm.stream_step(lm, state, controls, codes, video, k, temperature=1.0,
                                      video_steps=video_steps, video_temperature=video_temperature)
        return state, (out.delayed_codes, out.video, out.audio_logits if return_logits else None)

    _, (delayed, video, logits) = jax.lax.scan(step, state, xs)
    delayed = jnp.swapaxes(delayed, 0, 1)
    delayed = jnp.where(delayed == cfg.special_code, 0, delayed)
    out = (undelay(delayed), jnp.swapaxes(video, 0, 1))
    return out + (jnp.swapaxes(logits, 0, 1),) if return_logits else out


class Rollout(nnx.Variable):
    """A stored PPO rollout array (not a parameter: carried in the trainer's ``rest`` and checkpointed)."""


ROLLOUT_FIELDS = ("human_codes", "human_video", "identity", "agent_codes", "agent_video", "logp", "ref_logp",
                  "values", "advantages", "returns", "score")


class RolloutBuffer(nnx.Module):
    """The current rollout batch (``B`` rows of ``N = frames + max_delay`` blocks)."""

    def __init__(self, net: svlm.SpeechVideoLMConfig, batch: int, blocks: int):
        q, k, d = net.num_codebooks, net.video_tokens, net.video_dim
        shapes = {"human_codes": ((batch, blocks, q), jnp.int32), "human_video": ((batch, blocks, k, d), jnp.float32),
                  "identity": ((batch,), jnp.int32), "agent_codes": ((batch, blocks, q), jnp.int32),
                  "agent_video": ((batch, blocks, k, d), jnp.float32), "score": ((batch,), jnp.float32)}
        for name in ("logp", "ref_logp", "values", "advantages", "returns"):
            shapes[name] = ((batch, blocks), jnp.float32)
        for name in ROLLOUT_FIELDS:
            shape, dtype = shapes[name]
            setattr(self, name, Rollout(jnp.zeros(shape, dtype), out_sharding=("batch",) + (None,) * (len(shape) - 1)))

    def get(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in ROLLOUT_FIELDS}

    def set(self, values: dict[str, jax.Array]) -> None:
        for name in ROLLOUT_FIELDS:
            getattr(self, name).set_value(values[name])


class PPOSystem(nnx.Module):
    """Policy (speech-video LM) + value head (trained), frozen reference (the initial policy) and frozen reward
    model, plus the rollout buffer: one module tree."""

    def __init__(self, cfg: PPOTaskConfig, batch: int, frames: int, *, remat: str, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.settings = cfg
        net = cfg.net
        self.policy = svlm.SpeechVideoLM(net, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        if cfg.policy_init:
            _load_into(self.policy, cfg.policy_init, "speech_video", "net", "model.policy_init")
        self.value_head = Dense(net.backbone.dim, 1, axes=("embed", None), kernel_init=nnx.initializers.zeros,
                                dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.reference = kto_lib.freeze(self.policy)
        reward = RewardModel(net, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        if cfg.reward_init:
            _load_into(reward, cfg.reward_init, "reward", "reward", "model.reward_init")
        self.reward = kto_lib.freeze(reward)
        self.buffer = RolloutBuffer(net, batch, frames + net.max_delay)

    def values(self, hidden: jax.Array) -> jax.Array:
        """Decoder states ``[B, N, L, dim]`` -> values ``[B, N]`` (read at each block's last token; through
        ``stop_gradient`` when ``ppo.detach_value``)."""
        h = hidden[:, :, -1, :]
        h = jax.lax.stop_gradient(h) if self.settings.ppo.detach_value else h
        return self.value_head(h)[..., 0].astype(jnp.float32)


def build_ppo(cfg, rngs: nnx.Rngs) -> PPOSystem:
    check_config(cfg)
    return PPOSystem(cfg.model, cfg.train.batch_size, cfg.data.frames, **_kwargs(cfg), rngs=rngs)


def _stopped(module: nnx.Module) -> nnx.Module:
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def sample_and_score(policy: svlm.SpeechVideoLM, reward: RewardModel, prompts: dict[str, jax.Array], key: jax.Array,
                     frames: int, ppo: PPOConfig) -> tuple[dict[str, jax.Array], jax.Array]:
    """Stream a rollout of ``policy`` on ``prompts`` and score its first ``frames`` frames with ``reward``:
    (LM batch of the rollout, scores ``[B]``)."""
    net = policy.cfg
    codes, video = stream_rollout(policy, prompts["human_codes"], prompts["human_video"], prompts["identity"], key,
                                  video_steps=ppo.video_steps, video_temperature=ppo.video_temperature,
                                  agent_video_on=ppo.rollout_video)
    batch = rollout_batch(net, codes, video, prompts["human_codes"], prompts["human_video"], prompts["identity"],
                          ppo.rollout_video)
    score = reward({k: v[:, :frames] for k, v in batch.items()})
    return batch, score


def collect_rollout(system: PPOSystem, prompts: dict[str, jax.Array], key: jax.Array,
                    frames: int) -> dict[str, jax.Array]:
    """A fresh rollout batch (``ROLLOUT_FIELDS``) with old log-probs, values, KL-shaped rewards and advantages."""
    ppo = system.settings.ppo
    # fresh copies (this may run inside lax.cond, which must not write to the outer modules' variables)
    policy, value_head = _stopped(system.policy), _stopped(system.value_head)
    reference, reward = _stopped(system.reference), _stopped(system.reward)
    batch, score = sample_and_score(policy, reward, prompts, key, frames, ppo)
    logp, _, hidden = token_log_probs(policy, batch)
    values = value_head(hidden[:, :, -1, :])[..., 0].astype(jnp.float32)
    ref_logp, _, _ = token_log_probs(reference, batch)
    rewards = -ppo.beta * (logp - ref_logp)
    rewards = rewards.at[:, -1].add(score)
    advantages, returns = gae(rewards, values, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = whiten(advantages)
    out = {"human_codes": batch["human_codes"].astype(jnp.int32), "human_video": batch["human_video"],
           "identity": prompts["identity"].astype(jnp.int32), "agent_codes": batch["agent_codes"],
           "agent_video": batch["agent_video"], "logp": logp, "ref_logp": ref_logp, "values": values,
           "advantages": advantages, "returns": returns, "score": score}
    return jax.lax.stop_gradient(out)


def ppo_loss(system: PPOSystem, batch, key, step):
    """One PPO epoch on the stored rollout, after refreshing it from ``batch`` (prompts) every ``epochs`` steps."""
    ppo = system.settings.ppo
    n = system.buffer.logp.shape[1]
    stored = system.buffer.get()
    fresh = step % ppo.epochs == 0
    data = jax.lax.cond(fresh, lambda: collect_rollout(system, batch, key, n - system.settings.net.max_delay),
                        lambda: stored)
    system.buffer.set(data)
    lm_batch = rollout_batch(system.settings.net, data["agent_codes"], data["agent_video"], data["human_codes"],
                             data["human_video"], data["identity"], ppo.rollout_video)
    logp, entropy, hidden = token_log_probs(system.policy, lm_batch)
    values = system.values(hidden)
    pg, pg_metrics = ppo_policy_loss(logp, data["logp"], data["advantages"], ppo.clip)
    vf, vf_metrics = ppo_value_loss(values, data["values"], data["returns"], ppo.clip_value)
    kl = jnp.sum(data["logp"] - data["ref_logp"], axis=1)
    metrics = {"pg_loss": pg, "vf_loss": vf, "score": jnp.mean(data["score"]), "kl": jnp.mean(kl),
               "non_score_reward": -ppo.beta * jnp.mean(kl), "entropy": jnp.mean(entropy),
               "value": jnp.mean(values), "returns": jnp.mean(data["returns"]), "fresh_rollout": fresh,
               **pg_metrics, **vf_metrics}
    return pg + ppo.vf_coef * vf, metrics


def ppo_flops(cfg) -> float:
    """Forward-equivalent FLOPs per prompt and trainer step (the trainer multiplies by 3): the policy's forward and
    backward on the rollout every step, plus once per ``epochs`` steps the streamed rollout (with ``video_steps``
    diffusion evaluations per video token), the old-policy, reference and reward forwards."""
    net, ppo = cfg.model.net, cfg.model.ppo
    n = cfg.data.frames + net.max_delay
    window = svlm.flops_per_window(net, n, batch_mul=0)
    stream = sum(svlm.flops_per_frame(net, i + 1, training=False, sample_steps=ppo.video_steps) for i in range(n))
    rollout = stream + 3 * window
    return window + rollout / (3.0 * ppo.epochs)


def evaluate_ppo(system: PPOSystem, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval`` for ``ppo`` (``[--batches N] [--seed S]``): mean reward-model score of rollouts of the
    policy and of the reference (the initial policy) on held-out prompts, and the policy's KL to the reference
    (mean over prompts of the summed per-token log-ratio of its own samples)."""
    p = argparse.ArgumentParser(prog="avatarjax eval (ppo)")
    p.add_argument("--batches", type=int, default=cfg.sample.batches)
    p.add_argument("--seed", type=int, default=cfg.sample.seed)
    ns = p.parse_args(args)
    return held_out_rewards(system, cfg, batches=ns.batches, seed=ns.seed)


def held_out_rewards(system: PPOSystem, cfg, *, batches: int = 0, seed: int = 0) -> dict:
    """See ``evaluate_ppo``."""
    graphdef, state = nnx.split(system)
    frames, ppo = cfg.data.frames, cfg.model.ppo

    @jax.jit
    def measure(state, prompts, key):
        m = nnx.merge(graphdef, state)
        k1, k2 = jax.random.split(key)
        batch, score = sample_and_score(m.policy, m.reward, prompts, k1, frames, ppo)
        logp, _, _ = token_log_probs(m.policy, batch)
        ref_logp, _, _ = token_log_probs(m.reference, batch)
        ref_batch, ref_score = sample_and_score(m.reference, m.reward, prompts, k2, frames, ppo)
        silent = lambda b: jnp.mean((b["agent_codes"][:, :frames] == 0).astype(jnp.float32), axis=(1, 2))  # noqa
        # the preferred behaviour's score on the same prompts: the reference's rollout with its audio silenced
        quiet = {k: v[:, :frames] for k, v in ref_batch.items()}
        quiet_score = m.reward({**quiet, "agent_codes": jnp.zeros_like(quiet["agent_codes"])})
        return (score, ref_score, jnp.sum(logp - ref_logp, axis=1), silent(batch), silent(ref_batch),
                quiet_score)

    outs = [[] for _ in range(6)]
    key = jax.random.key(seed)
    for i, prompts in enumerate(prompt_dataset(cfg, "eval")):
        if batches and i >= batches:
            break
        for out, v in zip(outs, measure(state, jax.tree.map(jnp.asarray, prompts), jax.random.fold_in(key, i))):
            out.append(np.asarray(v))
    scores, ref_scores, kls, silence, ref_silence, quiet_scores = map(np.concatenate, outs)
    q = cfg.model.net.num_codebooks
    codes_per_rollout = sum(min(i + 1, q) for i in range(frames + q - 1))  # sampled codes (delay pattern)
    return {"prompts": int(scores.size), "score_policy": float(scores.mean()),
            "score_reference": float(ref_scores.mean()), "score_gain": float(scores.mean() - ref_scores.mean()),
            "score_gain_stderr": float(np.sqrt((scores.var() + ref_scores.var()) / scores.size)),
            "score_silent": float(quiet_scores.mean()),
            "kl": float(kls.mean()), "kl_per_code": float(kls.mean() / codes_per_rollout),
            "silent_codes_policy": float(silence.mean()), "silent_codes_reference": float(ref_silence.mean())}


PPO_TASK = Task(name="ppo", model_config=PPOTaskConfig, data_config=AlignmentDataConfig, build_model=build_ppo,
                loss=ppo_loss, dataset=prompt_dataset, flops_per_example=ppo_flops, example_batch=example_prompts,
                sample_config=PPOSampleConfig, evaluate=evaluate_ppo)


# ---------------------------------------------------------------------------------------------------- LM KTO


def build_lm_kto(cfg, rngs: nnx.Rngs) -> kto_lib.KTOModel:
    check_config(cfg)
    policy = svlm.SpeechVideoLM(cfg.model.net, **_kwargs(cfg), rngs=rngs)
    if cfg.model.init_from:
        _load_into(policy, cfg.model.init_from, "speech_video", "net", "model.init_from")
    model = kto_lib.KTOModel(policy)
    model.settings = cfg.model
    return model


def audio_sequence_log_probs(lm: svlm.SpeechVideoLM, batch: dict[str, jax.Array]) -> jax.Array:
    """``kto.sequence_log_probs`` of the agent's audio codes (all codebooks of every block as one sequence)
    ``[B]``."""
    out = lm(batch)
    logits = out["audio_logits"]
    b, n, q, v = logits.shape
    return kto_lib.sequence_log_probs(logits.reshape(b, n * q, v), out["target_audio"].reshape(b, n * q),
                                      out["target_audio_mask"].reshape(b, n * q))


def mismatched(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Each row's agent segment with the next row's human side (the KL reference point's mismatched pairs)."""
    return {**batch, "human_codes": jnp.roll(batch["human_codes"], 1, axis=0),
            "human_video": jnp.roll(batch["human_video"], 1, axis=0)}


def lm_kto_loss(model: kto_lib.KTOModel, batch, key, step):
    del key, step
    settings = model.settings.kto
    chosen, rejected = split_pairs(batch)
    rows = _concat(chosen, rejected)
    b = batch["kind"].shape[0]
    desirable = jnp.arange(2 * b) < b
    policy_logp = audio_sequence_log_probs(model.policy, rows)
    reference_logp = audio_sequence_log_probs(model.reference, rows)
    kl = {}
    if settings.mismatched_kl:
        other = mismatched(rows)
        kl = {"kl_policy_logp": audio_sequence_log_probs(model.policy, other),
              "kl_reference_logp": audio_sequence_log_probs(model.reference, other)}
    losses, aux = kto_lib.kto_loss(policy_logp, reference_logp, desirable, beta=settings.beta,
                                   lambda_d=settings.lambda_d, lambda_u=settings.lambda_u, **kl)
    d = desirable.astype(jnp.float32)
    mean = lambda x, m: jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)  # noqa: E731
    metrics = {"kl_z0": aux["z0"], "reward_desirable": mean(aux["reward"], d),
               "reward_undesirable": mean(aux["reward"], 1 - d),
               "margin_accuracy": jnp.mean((aux["log_ratio"][:b] > aux["log_ratio"][b:]).astype(jnp.float32)),
               "logp_desirable": mean(policy_logp, d), "logp_undesirable": mean(policy_logp, 1 - d)}
    return jnp.mean(losses), metrics


def lm_kto_flops(cfg) -> float:
    """Forward FLOPs per pair: two segments through policy and reference (doubled with mismatched pairs)."""
    per = svlm.flops_per_window(cfg.model.net, cfg.data.frames, batch_mul=0)
    return per * 4.0 * (2.0 if cfg.model.kto.mismatched_kl else 1.0)


LM_KTO_TASK = Task(name="lm_kto", model_config=LMKTOTaskConfig, data_config=AlignmentDataConfig,
                   build_model=build_lm_kto, loss=lm_kto_loss, dataset=pair_dataset, flops_per_example=lm_kto_flops,
                   example_batch=example_pairs)
