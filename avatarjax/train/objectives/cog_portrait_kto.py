"""CogPortrait KTO refinement on boundary cases (task ``cog_portrait_kto``), its record builder and its
before/after evaluation.

The paper (section 3.4, "KTO-based Refinement for Boundary Cases") refines the trained DiT with Diffusion-KTO on a
curated set of boundary cases: desirable samples are real clips of the case, undesirable ones the current model's
generations under the same conditions; the frozen reference is the checkpoint before refinement; KTO and flow
matching at equal weight, beta 625, lr 5e-8.

Model: ``kto.KTOModel(policy=CogPortraitSystem, reference=its frozen copy)``; the policy is loaded from
``model.init_from`` (a trained ``cog_portrait`` workdir or export; its ``model.net`` must equal this config's).
Loss: ``kto.flow_kto_objective`` with the ``cog_portrait`` velocity of the policy and of the reference on the same
noised latents and conditions, the reference-frame latent (first temporal slot) kept clean (timestep 0, out of
the loss); ``model.kto`` holds the ``KTOConfig`` fields. Optional condition dropout (``model.cond_drop_prob``, 0
by default) drops the same rows for policy and reference.

Boundary cases (thresholds from the control schema, ``data/synthface/schema.py``), decided per window of states:

* ``asymmetric_brow``: ``max_t max(|au1_l - au1_r|, |au2_l - au2_r|) >= BROW_ASYMMETRY`` (0.3 intensity, AU
  range [0, 1]; twice the 0.15 AU activity threshold of ``dynamics``);
* ``large_head_turn``: ``max_t |angle| >= HEAD_TURN_FRACTION (0.45) x`` the channel's schema range, i.e.
  ``|yaw| >= 20.25``, ``|pitch| >= 13.5`` or ``|roll| >= 13.5`` degrees (the paper's real-video thresholds,
  yaw > 40 / pitch > 30 / roll > 30 degrees, lie at or beyond synthface's +-45 / +-30 / +-30 ranges).

The synthface world never moves the brows one-sidedly (every brow AU target is symmetric), so asymmetric brows are
truly absent from training. With ``one_sided_brows`` (default on) the builder also turns windows whose brows rise
(``max brow AU >= BROW_RAISE``) into one-sided raises by zeroing the other side's AU1/AU2 over the clip (the side
alternates by clip); the window's video, keypoints and pose video are rendered from the edited states, so the
"real" clip is the world's exact rendering of the asymmetric motion. Such records carry ``constructed = True``.

Records (``kto.write_kto_record``): per boundary window one DESIRABLE record (the VAE latents of the true window)
and one UNDESIRABLE record (the current model's generation from the window's portrait, keypoints, audio and
instruction: ``CogPortraitPipeline.generate``, its normalised latents kept), both with the same conditions:
``pose`` (pose-video latents), ``audio``, ``text_tokens``, ``text_mask``, plus ``keypoints``, ``state``,
``identity_vector``, ``category``, ``constructed``, ``clip``, ``start``. ``meta.json`` records the thresholds and
the source checkpoint, and whether its EMA or raw parameters generated (``--no-ema``; training checks that
``model.init_use_ema`` agrees, so the frozen reference is the model that made the undesirable samples). The
trainer's EMA is not bias-corrected: after N steps at decay d it still holds d^N of the random initialisation
(0.999^1126 = 0.32), so for short runs the raw parameters are the better starting point.

    avatarjax data build cogportrait_kto --checkpoint outputs/cogportrait --out outputs/cogportrait_kto_records \
        --windows 32
    avatarjax train --config configs/cogportrait/kto_small.py --workdir outputs/cogportrait_kto
    avatarjax eval --checkpoint outputs/cogportrait_kto -- --reader outputs/face_reader --clips 12 \
        --subset boundary

``evaluate`` scores the refined policy (after) and the frozen reference (before, the model before KTO) on
held-out boundary windows of the eval split (held-out identities) with ``pipelines.cog_portrait.evaluate``.
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
from avatarjax.data import pipeline, transforms
from avatarjax.data.commands import DatasetCommands
from avatarjax.data.synthface import schema
from avatarjax.data.synthface.records import audio_float
from avatarjax.diffusion import flow, guidance
from avatarjax.errors import ConfigError, DataError
from avatarjax.models import cog_portrait as dit_lib
from avatarjax.train.objectives import cog_portrait as cp
from avatarjax.train.objectives import kto as kto_lib
from avatarjax.train.task import Task

BROW_PAIRS = (("au1_l", "au1_r"), ("au2_l", "au2_r"))
BROW_ASYMMETRY = 0.3  # AU intensity difference left vs right
BROW_RAISE = 0.3  # brows rising this much can be made one-sided
HEAD_TURN_FRACTION = 0.45  # of each pose channel's schema range
HEAD_TURN_DEGREES = {name: HEAD_TURN_FRACTION * schema.RANGES[name][1] for name in schema.POSE_CHANNELS}
CATEGORIES = ("asymmetric_brow", "large_head_turn")
TRAIN_KEYS = ("latents", "pose", "audio", "text_tokens", "text_mask", "desirable")
META_FILE = "meta.json"


# ------------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class CogPortraitKTOTaskConfig:
    net: dit_lib.CogPortraitDiTConfig = dit_lib.CogPortraitDiTConfig.synthface_small(audio_dim=80)
    flow: flow.FlowTrainConfig = flow.FlowTrainConfig(sampler="logit_normal", shift=1.0)
    cond_drop_prob: float = 0.0
    init_from: str = ""  # a trained cog_portrait workdir or export: the policy and the reference ("" = random)
    init_use_ema: bool = True  # take init_from's EMA parameters when it kept them (False: its raw parameters)
    kto: kto_lib.KTOConfig = kto_lib.KTOConfig()  # the paper: beta 625, KTO and flow losses at equal weight


@dataclasses.dataclass(frozen=True)
class CogPortraitKTODataConfig:
    records: str = ""  # a directory written by `avatarjax data build cogportrait_kto` (required for training)
    eval_records: str = ""  # optional held-out records for the trainer's eval loss
    window: int = 17  # frames per record (must match the records)
    frame_size: int = 64
    text_len: int = 32
    threads: int = 2
    prefetch: int = 2


def policy_settings(m: CogPortraitKTOTaskConfig) -> cp.CogPortraitTaskConfig:
    return cp.CogPortraitTaskConfig(net=m.net, flow=m.flow, cond_drop_prob=m.cond_drop_prob)


# ------------------------------------------------------------------------------------------------------- model
def _load_policy_state(path: str, net: dit_lib.CogPortraitDiTConfig, use_ema: bool = True) -> dict:
    """Host numpy state of the DiT of a cog_portrait workdir / export (checked against ``net``)."""
    from avatarjax.train.export import load_model

    with jax.ensure_compile_time_eval():
        model, cfg = load_model(path, use_ema=use_ema)
    if cfg.task != "cog_portrait":
        raise ConfigError(f"model.init_from '{path}' holds a '{cfg.task}' model; pass a trained cog_portrait "
                          "workdir or export")
    if model.dit.cfg != net:
        diff = {k: (v, getattr(model.dit.cfg, k)) for k, v in dataclasses.asdict(net).items()
                if getattr(model.dit.cfg, k) != v and not isinstance(v, dict)}
        raise ConfigError(f"model.init_from '{path}' was trained with a different model.net "
                          f"(this config vs that run: {diff}); set model.net to that run's")
    return jax.tree.map(np.asarray, nnx.state(model.dit))


def build_model(cfg, rngs: nnx.Rngs) -> kto_lib.KTOModel:
    check_config(cfg)
    m = cfg.model
    policy = cp.CogPortraitSystem(policy_settings(m), dtype=dtype_of(cfg.train.compute_dtype),
                                  param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)
    if m.init_from:
        nnx.update(policy.dit, jax.tree.map(jnp.asarray, _load_policy_state(m.init_from, m.net, m.init_use_ema)))
    model = kto_lib.KTOModel(policy)
    model.settings = m
    return model


def check_config(cfg) -> None:
    window = cfg.data.window
    if window < 5 or (window - 1) % 4:
        raise ConfigError(f"data.window={window}: the causal VAE needs 1 + 4k frames (5, 9, 17, 33, ...)")
    if cfg.model.net.audio_dim not in (0, 80):
        raise ConfigError(f"model.net.audio_dim={cfg.model.net.audio_dim}: the synthface task feeds 80-bin log-mel")


# -------------------------------------------------------------------------------------------------------- loss
def loss(model: kto_lib.KTOModel, batch, key, step):
    del step
    m = model.settings
    k_flow, k_drop = jax.random.split(key)
    x0 = batch["latents"]
    b, frames, h, w, _ = x0.shape
    keep = ~guidance.drop_condition_mask(k_drop, b, m.cond_drop_prob) if m.cond_drop_prob > 0 else None
    cond = cp.conditions(batch, keep)

    def velocity_of(system):
        # the per-example timestep sits on every noisy token (the last latent frame is never clean)
        return lambda x, t: cp.velocity(system.dit, x, t[:, -1, 0, 0], cond)

    return kto_lib.flow_kto_objective(velocity_of(model.policy), velocity_of(model.reference), x0,
                                      batch["desirable"], k_flow, m.kto, m.flow, flow.first_frame_mask(frames, h, w))


# -------------------------------------------------------------------------------------------------------- data
def latent_grid(cfg) -> tuple[int, int, int]:
    return 1 + (cfg.data.window - 1) // 4, cfg.data.frame_size // 8, cfg.data.frame_size // 8


def _check_records(src: kto_lib.KTORecordSource, cfg) -> None:
    missing = [k for k in TRAIN_KEYS if k not in src.keys]
    if missing:
        raise DataError(f"KTO records in {src.directory} lack {', '.join(missing)}: write them with `avatarjax data "
                        "build cogportrait_kto`")
    first, net = src[0], cfg.model.net
    expect = {"latents": (*latent_grid(cfg), net.in_channels), "pose": (*latent_grid(cfg), net.pose_channels),
              "audio": (cfg.data.window * schema.SAMPLES_PER_FRAME,), "text_tokens": (cfg.data.text_len,
                                                                                       net.text_dim)}
    for name, shape in expect.items():
        if name == "pose" and not net.pose_channels:
            continue
        if tuple(first[name].shape) != shape:
            raise DataError(f"KTO record '{name}' has shape {first[name].shape}, this config expects {shape}: set "
                            "data.window / data.frame_size / data.text_len and model.net to the records' model")


def _train_example(record: dict, rng) -> dict:
    del rng
    out = {k: np.asarray(record[k], np.float32) for k in ("latents", "pose", "audio", "text_tokens")}
    out["text_mask"] = np.asarray(record["text_mask"], bool)
    out["desirable"] = np.asarray(record["desirable"], bool)
    return out


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    check_config(cfg)
    train = split == "train"
    path = cfg.data.records if train else cfg.data.eval_records
    if not path:
        raise ConfigError(f"data.{'records' if train else 'eval_records'} is empty: build boundary-case records "
                          "with `avatarjax data build cogportrait_kto --checkpoint W --out DIR` and pass "
                          f"--config.data.{'records' if train else 'eval_records'}=DIR")
    src = kto_lib.KTORecordSource(path)
    _check_records(src, cfg)
    meta_path = Path(path) / META_FILE
    if cfg.model.init_from and meta_path.exists():
        ema = json.loads(meta_path.read_text()).get("ema", True)
        if ema != cfg.model.init_use_ema:
            raise ConfigError(f"the undesirable records in {path} were generated with the run's "
                              f"{'EMA' if ema else 'raw'} parameters but model.init_use_ema={cfg.model.init_use_ema}: "
                              f"the reference must be the model that generated them; set "
                              f"--config.model.init_use_ema={ema}")
    ds = pipeline.batched(src, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                          num_epochs=None if train else 1, process_index=process_index, process_count=process_count,
                          transform=_train_example)
    return pipeline.to_iter(ds, threads=cfg.data.threads, prefetch=cfg.data.prefetch)


def flops_per_example(cfg) -> float:
    """Policy forward (the trainer counts it 3x for forward + backward) plus the reference's forward."""
    f, h, w = latent_grid(cfg)
    one = dit_lib.flops_per_step(cfg.model.net, 1, f, h, w, cfg.data.text_len, audio_len=2 * cfg.data.window,
                                 per_token_timesteps=True)
    return one * 4.0 / 3.0


def example_batch(cfg, batch_size: int) -> dict:
    net = cfg.model.net
    f, h, w = latent_grid(cfg)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal((batch_size, *shape)).astype(np.float32)  # noqa: E731
    return {"latents": f32(f, h, w, net.in_channels), "pose": f32(f, h, w, max(net.pose_channels, 1)),
            "audio": f32(cfg.data.window * schema.SAMPLES_PER_FRAME) * 0.1,
            "text_tokens": f32(cfg.data.text_len, net.text_dim),
            "text_mask": np.ones((batch_size, cfg.data.text_len), bool),
            "desirable": np.arange(batch_size) % 2 == 0}


# ------------------------------------------------------------------------------------------ boundary selection
def brow_asymmetry(state: np.ndarray) -> float:
    """``max_t max(|au1_l - au1_r|, |au2_l - au2_r|)`` of states ``[T, 24]``."""
    ix = schema.INDEX
    return float(max(np.abs(state[:, ix[a]] - state[:, ix[b]]).max() for a, b in BROW_PAIRS))


def head_turn(state: np.ndarray) -> float:
    """The largest ``|angle| / threshold`` over frames and yaw / pitch / roll (>= 1: a large head turn)."""
    return float(max(np.abs(state[:, schema.INDEX[n]]).max() / HEAD_TURN_DEGREES[n] for n in schema.POSE_CHANNELS))


def boundary_categories(state: np.ndarray) -> list[str]:
    """The boundary-case families (``CATEGORIES``) a window of states ``[T, 24]`` belongs to."""
    found = []
    if brow_asymmetry(state) >= BROW_ASYMMETRY:
        found.append("asymmetric_brow")
    if head_turn(state) >= 1.0:
        found.append("large_head_turn")
    return found


def one_sided_brows(state: np.ndarray, keep_left: bool) -> np.ndarray:
    """A copy of ``state`` ``[T, 24]`` with the brow AUs (AU1, AU2) of one side zeroed."""
    out = np.array(state, np.float32, copy=True)
    for left, right in BROW_PAIRS:
        out[:, schema.INDEX[right if keep_left else left]] = 0.0
    return out


@dataclasses.dataclass
class BoundaryWindow:
    record: dict  # the clip's record (its ``state`` edited when ``constructed``)
    clip: int  # index in the split
    start: int
    category: str
    constructed: bool  # one-sided brows made from a symmetric raise


def _brow_raise(state: np.ndarray) -> float:
    ix = schema.INDEX
    return float(state[:, [ix[a] for pair in BROW_PAIRS for a in pair]].max())


def _best_start(state: np.ndarray, window: int, stride: int, score) -> tuple[int, float]:
    starts = list(range(0, len(state) - window + 1, stride))
    scores = [score(state[s:s + window]) for s in starts]
    i = int(np.argmax(scores))
    return starts[i], scores[i]


def boundary_windows(src, window: int, limit: int, *, one_sided: bool = True, stride: int = 4,
                     categories: tuple[str, ...] = CATEGORIES) -> list[BoundaryWindow]:
    """Up to ``limit`` boundary windows of ``src`` (records with ``state``), one per clip, the families
    alternating (round robin over ``categories``, in clip order). A clip's window is the one scoring highest for
    the family; with ``one_sided`` a clip whose brows rise symmetrically (>= ``BROW_RAISE``) becomes an
    asymmetric-brow candidate with one side's brow AUs zeroed (the kept side alternates by clip)."""
    pools: dict[str, list[BoundaryWindow]] = {c: [] for c in categories}
    for i in range(len(src)):
        if all(len(pool) >= limit for pool in pools.values()):
            break  # enough candidates of every family: the picks below would not change
        record = src[i]
        state = np.asarray(record["state"], np.float32)
        if len(state) < window:
            continue
        if "large_head_turn" in pools:
            start, score = _best_start(state, window, stride, head_turn)
            if score >= 1.0:
                pools["large_head_turn"].append(BoundaryWindow(record, i, start, "large_head_turn", False))
                continue
        if "asymmetric_brow" in pools:
            start, score = _best_start(state, window, stride, brow_asymmetry)
            if score >= BROW_ASYMMETRY:
                pools["asymmetric_brow"].append(BoundaryWindow(record, i, start, "asymmetric_brow", False))
            elif one_sided:
                start, raise_ = _best_start(state, window, stride, _brow_raise)
                if raise_ >= BROW_RAISE:
                    edited = one_sided_brows(state, keep_left=i % 2 == 0)
                    if "asymmetric_brow" in boundary_categories(edited[start:start + window]):
                        pools["asymmetric_brow"].append(
                            BoundaryWindow({**record, "state": edited}, i, start, "asymmetric_brow", True))
    picked: list[BoundaryWindow] = []
    while len(picked) < limit and any(pools.values()):
        for c in categories:
            if pools[c] and len(picked) < limit:
                picked.append(pools[c].pop(0))
    return picked


# ---------------------------------------------------------------------------------------------------- records
def window_conditions(bw: BoundaryWindow, cfg, encode, text) -> tuple[dict, np.ndarray]:
    """(the record's condition arrays, true video uint8 ``[F, S, S, 3]``) of a boundary window of a cog_portrait
    config ``cfg``; ``encode(video) -> normalised latents``, ``text([instruction]) -> text_tokens/text_mask``."""
    from avatarjax.data.preprocess import pose_video

    window, size = cfg.data.synthface.window, cfg.data.synthface.frame_size
    kps, state = cp.window_truth(bw.record, bw.start, window, cp.keypoint_count(cfg))
    video, _ = cp.render_truth(bw.record, kps, state, size)
    instructions = json.loads(bw.record["instructions"]) if bw.record["instructions"] else [""]
    tokens = text([instructions[0]])
    cond = {
        "pose": encode(pose_video.render_pose_video(kps, size)).astype(np.float32),
        "audio": transforms.crop_audio(audio_float(bw.record["audio"]), bw.start, window, schema.SAMPLES_PER_FRAME),
        "text_tokens": np.asarray(tokens["text_tokens"][0], np.float32),
        "text_mask": np.asarray(tokens["text_mask"][0], bool),
        "keypoints": kps.astype(np.float32), "state": state.astype(np.float32),
        "identity_vector": np.asarray(bw.record["identity_vector"], np.float32),
        "category": np.asarray(bw.category), "constructed": np.asarray(bw.constructed),
        "clip": np.asarray(bw.clip, np.int32), "start": np.asarray(bw.start, np.int32),
        "instruction": np.asarray(instructions[0]),
    }
    return cond, video


def write_window_records(out: str | Path, index: int, bw: BoundaryWindow, cfg, encode, text, generate) -> int:
    """Write the desirable (true latents) and undesirable (``generate(portrait, keypoints, audio, instruction)
    -> normalised latents``) records of one window at ``index`` and ``index + 1``; returns the next index."""
    cond, video = window_conditions(bw, cfg, encode, text)
    real = encode(video).astype(np.float32)
    fake = np.asarray(generate(video[0], cond["keypoints"], cond["audio"], str(cond["instruction"])), np.float32)
    if fake.shape != real.shape:
        raise DataError(f"generated latents {fake.shape} differ from the true window's {real.shape}")
    kto_lib.write_kto_record(out, index, {**cond, "desirable": True, "latents": real})
    kto_lib.write_kto_record(out, index + 1, {**cond, "desirable": False, "latents": fake})
    return index + 2


def build_records(checkpoint: str, out: str, *, windows: int = 32, split: str = "train", one_sided: bool = True,
                  guidance_setting: str | None = None, seed: int = 0, use_ema: bool = True) -> dict:
    """Boundary-case KTO records of ``split`` from a trained cog_portrait ``checkpoint`` (see the module doc)."""
    from avatarjax.data.synthface.loader import source
    from avatarjax.pipelines.cog_portrait import CogPortraitPipeline
    from avatarjax.train.export import load_model

    model, cfg = load_model(checkpoint, use_ema=use_ema)
    if cfg.task != "cog_portrait":
        raise ConfigError(f"--checkpoint '{checkpoint}' holds a '{cfg.task}' model; pass a trained cog_portrait run")
    out_dir = Path(out)
    if any(out_dir.glob("[0-9]*.npz")):
        raise DataError(f"'{out_dir}' already holds KTO records: pass an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = CogPortraitPipeline(model, cfg)
    picked = boundary_windows(source(cfg.data.synthface, split), cfg.data.synthface.window, windows,
                              one_sided=one_sided)
    if not picked:
        raise DataError(f"no boundary-case window in the {split} split: lower the thresholds or use more clips")
    options = {"guidance": guidance_setting} if guidance_setting else {}
    index = 0
    for n, bw in enumerate(picked):
        generate = lambda *a, n=n: pipe.generate(*a, seed=seed + n, **options).latents  # noqa: E731
        index = write_window_records(out_dir, index, bw, cfg, pipe.latents.encode, pipe.text, generate)
    counts = {c: sum(bw.category == c for bw in picked) for c in CATEGORIES}
    meta = {"checkpoint": str(Path(checkpoint).absolute()), "ema": use_ema, "split": split, "windows": len(picked),
            "records": index, "categories": counts, "constructed": sum(bw.constructed for bw in picked),
            "thresholds": {"brow_asymmetry": BROW_ASYMMETRY, "brow_raise": BROW_RAISE,
                           "head_turn_degrees": HEAD_TURN_DEGREES},
            "window": cfg.data.synthface.window, "frame_size": cfg.data.synthface.frame_size,
            "text_len": cfg.data.text_len, "guidance": guidance_setting or cfg.sample.guidance,
            "clips": [[bw.clip, bw.start, bw.category, bw.constructed] for bw in picked]}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return {"out": str(out_dir.absolute()), **{k: meta[k] for k in ("windows", "records", "categories",
                                                                   "constructed", "thresholds")}}


def build_command(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax data build cogportrait_kto",
                                description="boundary-case KTO records from a trained cog_portrait run")
    p.add_argument("--checkpoint", required=True, help="a trained cog_portrait workdir or export")
    p.add_argument("--out", required=True, help="new directory for the records")
    p.add_argument("--windows", type=int, default=32, help="boundary windows (2 records each)")
    p.add_argument("--split", default="train")
    p.add_argument("--no-one-sided-brows", action="store_true",
                   help="only natural asymmetric brows (synthface has none)")
    p.add_argument("--guidance", default=None, choices=("dynamic", "static", "none"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true",
                   help="generate with the run's raw parameters, not its EMA (pair with model.init_use_ema=False)")
    ns = p.parse_args(argv)
    return build_records(ns.checkpoint, ns.out, windows=ns.windows, split=ns.split,
                         one_sided=not ns.no_one_sided_brows, guidance_setting=ns.guidance, seed=ns.seed,
                         use_ema=not ns.no_ema)


def info_command(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax data info cogportrait_kto")
    p.add_argument("--records", required=True)
    ns = p.parse_args(argv)
    src = kto_lib.KTORecordSource(ns.records)
    flags = src.desirable_flags()
    meta_path = Path(ns.records) / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return {"records": len(src), "desirable": int(flags.sum()), "undesirable": int((~flags).sum()),
            "keys": list(src.keys),
            **{k: meta[k] for k in ("categories", "constructed", "checkpoint", "ema") if k in meta}}


KTO_RECORD_COMMANDS = DatasetCommands(build=build_command, info=info_command)


# --------------------------------------------------------------------------------------------------- evaluate
def _base_config(path: str):
    """The config of the cog_portrait run KTO started from (the VAE, text encoder, world and window)."""
    from avatarjax.config import config_from_dict, load_workdir_config
    from avatarjax.train.export import CONFIG_FILE, is_export

    if not path:
        raise ConfigError("model.init_from is empty: the before/after evaluation needs the cog_portrait run the "
                          "refinement started from")
    if is_export(path):
        return config_from_dict(json.loads((Path(path) / CONFIG_FILE).read_text()))
    return load_workdir_config(path)


def evaluate(model: kto_lib.KTOModel, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval --checkpoint KTO_WORKDIR -- --reader R [--clips 12] [--subset boundary|all]
    [--settings dynamic] [--split eval] [--by-category]``: AU-F1, AU-Temp and Eye-LMD of the refined policy (after)
    and of the frozen reference (before: the model before KTO) on held-out boundary windows (``boundary_windows`` of
    the eval split, held-out identities; ``--by-category`` scores each family apart) or, with ``--subset all``, on
    the usual held-out clips."""
    from avatarjax.data.synthface.loader import source
    from avatarjax.pipelines import cog_portrait as pipeline_lib
    from avatarjax.pipelines.instruct_avatar_eval import Reader

    p = argparse.ArgumentParser(prog="avatarjax eval (cog_portrait_kto)")
    p.add_argument("--reader", required=True, help="a trained face_reader workdir or export")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--subset", default="boundary", choices=("boundary", "all"))
    p.add_argument("--settings", default="dynamic")
    p.add_argument("--split", default="eval")
    p.add_argument("--no-one-sided-brows", action="store_true")
    p.add_argument("--by-category", action="store_true", help="score each boundary family separately")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(args)
    base = dataclasses.replace(_base_config(cfg.model.init_from), sample=cfg.sample)
    groups: dict[str, list | None] = {"all": None}
    listing = None
    if ns.subset == "boundary":
        picked = boundary_windows(source(base.data.synthface, ns.split), base.data.synthface.window, ns.clips,
                                  one_sided=not ns.no_one_sided_brows)
        if not picked:
            raise DataError(f"no boundary-case window in the {ns.split} split")
        listing = [[bw.clip, bw.start, bw.category, bw.constructed] for bw in picked]
        families = sorted({bw.category for bw in picked}) if ns.by_category else ["boundary"]
        groups = {f: [(bw.record, bw.start) for bw in picked if f in ("boundary", bw.category)] for f in families}
    reader = Reader(ns.reader)
    settings = tuple(ns.settings.split(","))
    pipes = {name: pipeline_lib.CogPortraitPipeline(system, base)
             for name, system in (("before_kto", model.reference), ("after_kto", model.policy))}
    metrics = ("au_f1", "au_temp", "eye_lmd")
    out: dict = {"subset": ns.subset, "windows": listing}
    for group, windows in groups.items():
        reports = {name: pipeline_lib.evaluate(pipe, reader, clips=ns.clips, settings=settings, seed=ns.seed,
                                               split=ns.split, windows=windows) for name, pipe in pipes.items()}
        table = {f"generated_{s}": {m: {k: reports[k][f"generated_{s}"][m] for k in reports} for m in metrics}
                 for s in settings}
        table["vae_reconstruction"] = {m: reports["before_kto"]["vae_reconstruction"][m] for m in metrics}
        table["ground_truth_video"] = {m: reports["before_kto"]["ground_truth_video"][m] for m in metrics}
        out[group] = {"table": table, **reports}
    return out


COG_PORTRAIT_KTO_TASK = Task(name="cog_portrait_kto", model_config=CogPortraitKTOTaskConfig,
                             data_config=CogPortraitKTODataConfig, build_model=build_model, loss=loss,
                             dataset=dataset, flops_per_example=flops_per_example, example_batch=example_batch,
                             sample_config=cp.CogPortraitSampleConfig, evaluate=evaluate)
