"""Body of Her: how much the speech-video LM uses the dialogue context (``avatarjax eval ... -- --context-ablation``).

Teacher-forced metrics on held-out (eval split) packed windows, each computed for the same model and the same
windows under four input conditions (``CONDITIONS``):

- ``full``: the windows as they are (human audio codes and video tokens, text prompt, motion, identity);
- ``no_motion``: ``full`` with only the motion trajectory absent (its learned empty token): what the trajectory
  slot adds, i.e. whether a planner's trajectory can steer the model;
- ``no_human``: the human side replaced by what the model sees for an absent human: the human's audio codes set
  to the codes of a silent frame (``absent_human_codes``: the stand-in quantiser's or the DAC's silence, what the
  duplex agent feeds when no human audio arrives) and the human's video marked absent (its learned empty tokens);
  the text prompt, motion trajectory and identity kept;
- ``no_context``: the no-context baseline: ``no_human`` and also the text prompt, motion and identity absent
  (their learned empty tokens).

The agent's own past (its delayed audio codes and previous video frame) is teacher-forced in all three, so the gap
``full`` -> ``no_human`` is what the human's behaviour adds and ``no_human`` -> ``no_context`` what the
conditioning adds.

Metrics (sums over the pass, then ratios; per-row values give a paired standard error of the differences):

- ``audio_accuracy`` / ``audio_nll``: top-1 accuracy and cross-entropy (nats) of the agent's audio codes over all
  codebooks at the valid delayed positions only (``target_audio_mask``: the target is a real code of the
  window); ``audio_accuracy_q0``: the first codebook alone;
- ``video_loss``: the MAR head's eps-prediction MSE on the agent's video tokens (frames where the agent's video is
  present) averaged over a fixed grid of ``timesteps`` (stratified midpoints of the training schedule, so their
  mean estimates the training loss's expectation over uniform t) with noise drawn from a key fixed per batch: the
  same noise and timesteps for every condition, so the comparison is paired. Stage-1 models (trained without
  video) are scored on audio only, with both video streams absent as in their training.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.diffusion.schedules import q_sample
from avatarjax.errors import ConfigError
from avatarjax.models import speech_video_lm as svlm

CONDITIONS = ("full", "no_motion", "no_human", "no_context")
_SUMS = ("nll", "hits", "count", "hits_q0", "count_q0", "video_se", "video_count")


def absent_human_codes(cfg, mode: str = "silence") -> np.ndarray:
    """The human's audio codes ``[Q]`` of an absent human: ``"silence"`` = a silent frame's codes (stand-in
    quantiser, or the DAC of ``data.dac`` for real tokens); ``"special"`` = the delay pattern's special id (what the
    model reads before a window starts)."""
    net = cfg.model.net
    if mode == "special":
        return np.full((net.num_codebooks,), net.special_code, np.int32)
    if mode != "silence":
        raise ConfigError(f"--absent-audio must be 'silence' or 'special', got '{mode}'")
    if cfg.data.tokens:
        from avatarjax.pipelines.duplex_agent import silence_codes

        return np.asarray(silence_codes(cfg.data.dac), np.int32)
    from avatarjax.data.synthface import schema
    from avatarjax.train.objectives.speech_video import stand_in_audio_codes

    return stand_in_audio_codes(np.zeros(schema.SAMPLES_PER_FRAME), 1, net.num_codebooks, net.codebook_size,
                                tuple(cfg.data.code_range))[0]


# (human removed, prompt / motion / identity removed, motion removed)
CONDITION_FLAGS = {"full": (False, False, False), "no_motion": (False, False, True), "no_human": (True, False, False),
                   "no_context": (True, True, True)}


def ablate(batch: dict, condition: str, absent_codes) -> dict:
    """The batch as the model sees it under ``condition`` (see the module docstring); a new dict, same shapes."""
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown context condition '{condition}': use one of {CONDITIONS}")
    return ablate_flags(batch, *map(jnp.asarray, CONDITION_FLAGS[condition]), absent_codes)


def ablate_flags(batch: dict, human_off: jax.Array, controls_off: jax.Array, motion_off: jax.Array,
                 absent_codes) -> dict:
    """``ablate`` with the condition as three (traceable) booleans: the human side removed, the prompt / motion /
    identity removed, the motion alone removed; one compiled function serves every condition."""
    motion_off = motion_off | controls_off
    codes = jnp.asarray(batch["human_codes"])
    absent = jnp.broadcast_to(jnp.asarray(absent_codes, codes.dtype), codes.shape)
    off = lambda flag, x, empty: jnp.where(flag, empty, x)  # noqa: E731
    return {**batch, "human_codes": off(human_off, codes, absent),
            "human_video": off(human_off, batch["human_video"], 0.0).astype(batch["human_video"].dtype),
            "human_video_mask": jnp.asarray(batch["human_video_mask"]).astype(bool) & ~human_off,
            "text": off(controls_off, batch["text"], 0.0).astype(batch["text"].dtype),
            "text_mask": jnp.asarray(batch["text_mask"]).astype(bool) & ~controls_off,
            "motion": off(motion_off, batch["motion"], 0.0).astype(batch["motion"].dtype),
            "motion_mask": jnp.asarray(batch["motion_mask"]).astype(bool) & ~motion_off,
            "identity": off(controls_off, batch["identity"], -1).astype(batch["identity"].dtype)}


def stage_inputs(batch: dict, stage: int) -> dict:
    """Stage 1 trains with both video streams absent (``speech_video_loss``): score it the same way."""
    if stage == 1:
        return {**batch, "agent_video_mask": jnp.zeros_like(batch["agent_video_mask"]),
                "human_video_mask": jnp.zeros_like(batch["human_video_mask"])}
    return batch


def eval_timesteps(num_train_steps: int, count: int) -> tuple[int, ...]:
    """``count`` stratified midpoints of ``[0, num_train_steps)``."""
    if not 1 <= count <= num_train_steps:
        raise ConfigError(f"--timesteps={count} must be in [1, {num_train_steps}] (the head's training steps)")
    return tuple(int((j + 0.5) * num_train_steps / count) for j in range(count))


def row_sums(net: svlm.SpeechVideoLM, batch: dict, key: jax.Array, timesteps: tuple[int, ...],
             video: bool = True) -> dict[str, jax.Array]:
    """Per-row sums ``[B]`` (``_SUMS``) of the teacher-forced metrics of one (already ablated) batch.

    Audio: log-likelihood and top-1 hits of every valid delayed target (``count``), and of codebook 0. Video: the
    eps-prediction squared error summed over channels-mean per token, for each of ``timesteps`` with noise from
    ``key`` (``video_count`` tokens x timesteps)."""
    cfg = net.cfg
    out = net(batch)
    logits, targets, mask = out["audio_logits"], out["target_audio"], out["target_audio_mask"]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.where(mask, targets, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]  # [B, T, Q]
    m = mask.astype(jnp.float32)
    hit = (jnp.argmax(logits, -1) == safe).astype(jnp.float32) * m
    rows = lambda x: jnp.sum(x.reshape(x.shape[0], -1), axis=1)  # noqa: E731
    sums = {"nll": rows(nll * m), "hits": rows(hit), "count": rows(m), "hits_q0": rows(hit[..., 0]),
            "count_q0": rows(m[..., 0])}
    b = logits.shape[0]
    if not video:
        sums.update(video_se=jnp.zeros((b,)), video_count=jnp.zeros((b,)))
        return sums
    cond = out["video_condition"]  # [B, T, K, dim]
    target = out["target_video"].astype(jnp.float32)  # [B, T, K, D]
    vmask = jnp.broadcast_to(out["target_video_mask"][..., None], cond.shape[:3]).astype(jnp.float32)
    head, schedule = net.video_head, svlm.head_schedule(cfg.head)
    c = head.embed_condition(cond.reshape(-1, cond.shape[-1]))
    x0 = target.reshape(-1, cfg.video_dim)
    se = jnp.zeros(vmask.shape, jnp.float32)
    for j, step in enumerate(timesteps):
        noise = jax.random.normal(jax.random.fold_in(key, j), x0.shape, jnp.float32)
        t = jnp.full((x0.shape[0],), step, jnp.int32)
        pred = head.denoise(q_sample(schedule, x0, t, noise), t, c)
        se = se + jnp.mean(jnp.square(pred - noise), axis=-1).reshape(vmask.shape)
    sums.update(video_se=rows(se * vmask), video_count=rows(vmask) * len(timesteps))
    return sums


class ContextScorer:
    """``score(batch, key)`` -> ``{condition: row sums}`` for all ``CONDITIONS`` (one jitted function, the
    condition a traced argument: it compiles once per batch shape)."""

    def __init__(self, net: svlm.SpeechVideoLM, absent_codes, *, stage: int = 2, timesteps: tuple[int, ...] = (),
                 conditions: Iterable[str] = CONDITIONS):
        self.graphdef, self.params = nnx.split(net)
        self.absent = jnp.asarray(absent_codes, jnp.int32)
        self.stage, self.timesteps, self.conditions = stage, tuple(timesteps), tuple(conditions)
        video = stage == 2 and bool(self.timesteps)

        def one(params, batch, absent, key, human_off, controls_off, motion_off):
            model = nnx.merge(self.graphdef, params)
            ablated = ablate_flags(batch, human_off, controls_off, motion_off, absent)
            return row_sums(model, stage_inputs(ablated, stage), key, self.timesteps, video)

        self._one = jax.jit(one)

    def score(self, batch: dict, key: jax.Array) -> dict[str, dict[str, np.ndarray]]:
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return {c: jax.tree.map(np.asarray, self._one(self.params, batch, self.absent, key,
                                                      *map(jnp.asarray, CONDITION_FLAGS[c])))
                for c in self.conditions}


def summarise(rows: dict[str, dict[str, np.ndarray]], video: bool) -> dict:
    """Concatenated per-row sums per condition -> the metrics table and paired differences against ``full``."""
    def ratio(s, num, den):
        return float(np.sum(s[num]) / max(float(np.sum(s[den])), 1.0))

    table = {}
    for c, s in rows.items():
        table[c] = {"audio_accuracy": round(ratio(s, "hits", "count"), 4),
                    "audio_nll": round(ratio(s, "nll", "count"), 4),
                    "audio_accuracy_q0": round(ratio(s, "hits_q0", "count_q0"), 4)}
        if video:
            table[c]["video_loss"] = round(ratio(s, "video_se", "video_count"), 5)
    paired = {}
    full = rows.get("full")
    for c, s in rows.items():
        if c == "full" or full is None:
            continue
        # per-row means (rows with targets only), the difference condition - full, and its standard error
        d = {}
        for name, num, den in (("audio_nll", "nll", "count"), ("audio_accuracy", "hits", "count"),
                               ("video_loss", "video_se", "video_count")):
            if name == "video_loss" and not video:
                continue
            ok = full[den] > 0
            diff = s[num][ok] / full[den][ok] - full[num][ok] / full[den][ok]
            se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            d[name] = {"minus_full": round(table[c][name] - table["full"][name], 5), "row_se": round(se, 5)}
        paired[c] = d
    return {"table": table, "paired_vs_full": paired}


def evaluate_context(model, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint W -- --context-ablation [--batches N] [--timesteps M] [--seed S]
    [--absent-audio silence|special]``: the four-condition table on the eval split (see the module docstring).
    ``model`` is the task's ``SpeechVideoSystem`` (or a bare ``SpeechVideoLM``)."""
    from avatarjax.train.objectives.speech_video import dataset

    p = argparse.ArgumentParser(prog="avatarjax eval (speech_video --context-ablation)")
    p.add_argument("--context-ablation", action="store_true")
    p.add_argument("--batches", type=int, default=0, help="eval batches (0: the whole eval split)")
    p.add_argument("--timesteps", type=int, default=8, help="diffusion timesteps per video token (a fixed grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the diffusion noise (fixed per batch)")
    p.add_argument("--absent-audio", default="silence", choices=("silence", "special"))
    ns = p.parse_args(args)
    net = getattr(model, "net", model)
    stage = int(cfg.model.loss.stage)
    steps = eval_timesteps(net.cfg.head.num_train_steps, ns.timesteps)
    absent = absent_human_codes(cfg, ns.absent_audio)
    scorer = ContextScorer(net, absent, stage=stage, timesteps=steps)
    root = jax.random.key(ns.seed)
    rows: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    n = 0
    for n, batch in enumerate(dataset(cfg, "eval"), start=1):
        for c, s in scorer.score(batch, jax.random.fold_in(root, n - 1)).items():
            rows[c].append(s)
        if ns.batches and n >= ns.batches:
            break
    if n == 0:
        raise ConfigError(f"the eval split gives no batch (data.num_eval_sessions={cfg.data.num_eval_sessions} < "
                          f"train.batch_size={cfg.train.batch_size}): raise num_eval_sessions")
    cat = {c: {k: np.concatenate([r[k] for r in rs]) for k in _SUMS} for c, rs in rows.items()}
    report = summarise(cat, video=stage == 2)
    full = cat["full"]
    return {"context_ablation": report["table"], "paired_vs_full": report["paired_vs_full"], "batches": n,
            "rows": int(full["count"].shape[0]), "audio_targets": int(np.sum(full["count"])),
            "video_tokens": int(np.sum(full["video_count"]) // max(len(steps), 1)) if stage == 2 else 0,
            "stage": stage, "diffusion_timesteps": list(steps) if stage == 2 else [], "noise_seed": ns.seed,
            "absent_human_audio": {"mode": ns.absent_audio, "codes": [int(x) for x in absent]},
            "tokens": "real" if cfg.data.tokens else "stand-in"}
