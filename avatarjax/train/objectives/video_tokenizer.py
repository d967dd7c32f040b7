"""The continuous video tokenizer on synthface clips: rebuild every frame of a short clip from its latents.

Each example is ``data.clip_frames`` consecutive frames (every ``frame_stride``-th) of one synthface clip from a
random start, rendered at ``data.frame_size``; clips come through the motion VAE task's ``ClipStates`` (identity
and state track per clip, cached), so the two codecs share one data path.

Loss = l1_weight * L1 + l2_weight * MSE + kl_weight * KL / (S * S * 3) + the optional GAN terms. L1 and MSE are
means over pixels; KL is summed over a frame's ``K * D`` latents and averaged over frames, so ``kl_weight`` is
relative to the L1 summed over a frame's pixels (the Stable Diffusion convention, as in the motion VAE). With
``regularizer="noise"`` the posterior std is fixed, so the KL is an L2 penalty on the latent means plus a
constant. The optional perceptual term is L1 feature matching on the features of a PatchGAN discriminator (no
LPIPS weights exist offline), trained with a hinge loss by the same optimizer; the discriminator sees frames,
so the terms are computed on all ``B * T`` frames of the batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.codecs import video_tokenizer as vt
from avatarjax.codecs.motion_vae import discriminator_flops, psnr, sample_posterior, to_model_range, to_uint8
from avatarjax.config import dtype_of
from avatarjax.data.synthface import identity as identity_lib, render
from avatarjax.data.synthface.loader import SynthfaceDataConfig
from avatarjax.errors import ConfigError
from avatarjax.train.objectives import motion_vae as mv_task
from avatarjax.train.task import Task


@dataclasses.dataclass(frozen=True)
class VideoTokenizerDataConfig:
    synthface: SynthfaceDataConfig = SynthfaceDataConfig()  # only its world, data_dir and loader fields are read
    frame_size: int = 64  # must equal model.frame_size
    clip_frames: int = 8  # T: frames per example
    frame_stride: int = 1  # take every n-th frame of the 25 fps clip


# ------------------------------------------------------------------------------------------------- data
def make_clip(clip: dict, rng: np.random.Generator, *, frame_size: int, clip_frames: int, stride: int) -> dict:
    """``frames`` uint8 ``[T, S, S, 3]`` (consecutive frames from a random start), ``identity`` int32,
    ``start`` int32 (first frame index in the clip)."""
    state = clip["state"]
    span = (clip_frames - 1) * stride + 1
    if len(state) < span:
        raise ConfigError(f"a synthface clip has {len(state)} frames, fewer than data.clip_frames="
                          f"{clip_frames} at data.frame_stride={stride}: lower them")
    start = int(rng.integers(len(state) - span + 1))
    states = state[start:start + span:stride]
    frames = render.render_frames(identity_lib.Identity.from_vector(clip["identity_vector"]), states, frame_size)
    return {"frames": frames, "identity": np.int32(clip["identity"]), "start": np.int32(start)}


def _check(cfg) -> None:
    if cfg.data.frame_size != cfg.model.frame_size:
        raise ConfigError(f"data.frame_size={cfg.data.frame_size} differs from model.frame_size="
                          f"{cfg.model.frame_size}: set both to the same size")
    if cfg.data.clip_frames < 1 or cfg.data.frame_stride < 1:
        raise ConfigError(f"data.clip_frames ({cfg.data.clip_frames}) and data.frame_stride "
                          f"({cfg.data.frame_stride}) must be >= 1")


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    """Batches of ``make_clip`` (train: shuffled, repeated; eval: one pass in order, the same every time)."""
    _check(cfg)
    world = cfg.data.synthface
    kw = dict(frame_size=cfg.data.frame_size, clip_frames=cfg.data.clip_frames, stride=cfg.data.frame_stride)
    return mv_task.clip_batches(cfg, split, process_index, process_count,
                                lambda clip, rng: make_clip(clip, rng, **kw))


def example_batch(cfg, batch_size: int) -> dict:
    """Zeros with the shapes and dtypes of a ``dataset`` batch."""
    s, t = cfg.model.frame_size, cfg.data.clip_frames
    return {"frames": np.zeros((batch_size, t, s, s, 3), np.uint8), "identity": np.zeros((batch_size,), np.int32),
            "start": np.zeros((batch_size,), np.int32)}


# ------------------------------------------------------------------------------------------------- model, loss
def build_model(cfg, rngs: nnx.Rngs) -> vt.VideoTokenizer:
    _check(cfg)
    return vt.VideoTokenizer(cfg.model, dtype=dtype_of(cfg.train.compute_dtype),
                             param_dtype=dtype_of(cfg.train.param_dtype), remat=cfg.train.remat, rngs=rngs)


def loss(model: vt.VideoTokenizer, batch: dict, key: jax.Array, step: jax.Array):
    """The weighted objective and its unweighted terms (``l1``, ``l2``, ``kl``, ``psnr``, ``latent_std``; with the
    discriminator also ``generator``, ``feature_match``, ``discriminator``)."""
    cfg = model.cfg
    target = to_model_range(batch["frames"])  # [B, T, S, S, 3]
    mean, logvar = model.posterior(target)
    recon = model.decode(sample_posterior(mean, logvar, key))
    flat_target, flat_recon = (x.reshape((-1,) + x.shape[2:]) for x in (target, recon))
    metrics = {"l1": jnp.mean(jnp.abs(recon - target)), "l2": jnp.mean(jnp.square(recon - target)),
               "kl": jnp.mean(vt.kl_per_frame(mean, logvar)), "psnr": jnp.mean(psnr(flat_recon, flat_target)),
               "latent_std": jnp.std(mean)}
    total = (cfg.l1_weight * metrics["l1"] + cfg.l2_weight * metrics["l2"]
             + cfg.kl_weight * metrics["kl"] / (cfg.frame_size ** 2 * 3))
    if model.discriminator is not None:
        gan, terms = mv_task.gan_terms(model.discriminator, flat_target, flat_recon, step, cfg)
        total += gan
        metrics.update(terms)
    return total, metrics


def flops_per_example(cfg) -> float:
    """Encode + decode of one clip, plus four discriminator passes per frame when the discriminator is on."""
    t = cfg.data.clip_frames
    disc = 4 * discriminator_flops(cfg.model) if cfg.model.use_discriminator else 0.0
    return t * (vt.flops_per_frame(cfg.model, t) + disc)


# ------------------------------------------------------------------------------------------------- eval, sample
def _reconstruct(model: vt.VideoTokenizer, frames: jax.Array) -> dict[str, jax.Array]:
    """Posterior-mean reconstructions of uint8 clips ``[B, T, S, S, 3]``, PSNR per frame ``[B, T]`` and latents."""
    target = to_model_range(frames)
    latents = model.encode(target)
    recon = model.decode(latents)
    b, t = target.shape[:2]
    flat = lambda x: x.reshape((b * t,) + x.shape[2:])
    return {"recon": recon, "latents": latents, "psnr": psnr(flat(recon), flat(target)).reshape(b, t)}


def _evaluate(model: vt.VideoTokenizer, cfg, batches: int) -> tuple[dict[str, float], dict]:
    """Eval PSNR (mean, first frame of the clip, last frame) and latent statistics over ``batches`` eval batches,
    and the first batch with its reconstructions."""
    run = nnx.jit(_reconstruct)
    psnrs, latents, first = [], [], None
    for n, batch in enumerate(dataset(cfg, "eval")):
        if n >= batches:
            break
        out = run(model, batch["frames"])
        if first is None:
            first = {"frames": batch["frames"], "recon": np.asarray(out["recon"])}
        psnrs.append(np.asarray(out["psnr"]))
        latents.append(np.asarray(out["latents"]))
    if not psnrs:
        raise ConfigError("the eval split holds fewer clips than one batch: raise data.synthface.num_clips")
    p, z = np.concatenate(psnrs), np.concatenate(latents)
    return {"eval_psnr": float(p.mean()), "eval_psnr_first_frame": float(p[:, 0].mean()),
            "eval_psnr_last_frame": float(p[:, -1].mean()), "eval_clips": len(p),
            "latent_mean": float(z.mean()), "latent_std": float(z.std()),
            "latent_shape_per_frame": list(z.shape[2:])}, first


def _parse(args: list[str], prog: str):
    import argparse

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--examples", type=int, default=4, help="clips on the contact sheet (sample)")
    p.add_argument("--batches", type=int, default=4, help="eval batches for the PSNRs")
    return p.parse_args(args)


def evaluate(model: vt.VideoTokenizer, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval ... [--batches N]``: eval PSNRs of posterior-mean reconstructions and latent statistics."""
    return _evaluate(model, cfg, _parse(args, "avatarjax eval (video_tokenizer)").batches)[0]


def sample(model: vt.VideoTokenizer, cfg, out_dir, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample ... [--examples N] [--batches N]``: a contact sheet with, per eval clip, a row of
    original frames and a row of reconstructions; and the ``evaluate`` metrics."""
    ns = _parse(args, "avatarjax sample (video_tokenizer)")
    metrics, first = _evaluate(model, cfg, ns.batches)
    k = min(ns.examples, len(first["frames"]))
    t = first["frames"].shape[1]
    rows = [np.concatenate([first["frames"][i], to_uint8(first["recon"][i])]) for i in range(k)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "video_tokenizer_sample.png"
    render.contact_sheet(np.concatenate(rows), columns=t, path=path)
    return {"output": str(path.absolute()), **metrics}


VIDEO_TOKENIZER_TASK = Task(name="video_tokenizer", model_config=vt.VideoTokenizerConfig,
                            data_config=VideoTokenizerDataConfig, build_model=build_model, loss=loss,
                            dataset=dataset, flops_per_example=flops_per_example, example_batch=example_batch,
                            sample=sample, evaluate=evaluate)


# ------------------------------------------------------------------------------------------------- benchmark
def bench_video_tokenizer(argv: list[str]) -> dict:
    """``avatarjax bench video_tokenizer [--config FILE] [--frames 24] [--batch 1] [--repeats 5]
    [--config.model.x=v ...]``: jitted encode and decode throughput of a randomly initialised tokenizer on this
    machine, in frames per second and as a real-time factor against 24 fps video (> 1: faster than real time),
    and the task's full training step of the config (TFLOP/s, MFU, compiled memory; ``--train-steps 0`` skips it).
    ``--quick``: the tiny config, 4 frames, 2 repeats. No PyTorch reference runs here (TiTok's release is a
    checkpoint format, converted by ``avatarjax convert titok``)."""
    import argparse
    import time

    from avatarjax.config import load_config

    rest, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    p = argparse.ArgumentParser(prog="avatarjax bench video_tokenizer")
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[3] / "configs" / "video_tokenizer"
                                           / "synthface_small.py"))
    p.add_argument("--frames", type=int, default=24, help="frames per encoded clip (one second at 24 fps)")
    p.add_argument("--batch", type=int, default=1, help="clips per call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=5, help="timed steps of the training-step benchmark (0: skip)")
    p.add_argument("--quick", action="store_true")
    ns = p.parse_args(rest)
    if ns.quick:
        ns.config = str(Path(ns.config).with_name("synthface_tiny.py"))
        ns.frames, ns.repeats, ns.train_steps = 4, 2, 2
    cfg = load_config(ns.config, overrides)
    mcfg = cfg.model
    with nnx.use_eager_sharding(False):
        model = build_model(cfg, nnx.Rngs(0))
    encode, decode = vt.jitted_encode(model), vt.jitted_decode(model)
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.uniform(-1, 1, (ns.batch, ns.frames, mcfg.frame_size, mcfg.frame_size, 3)), jnp.float32)

    def timed(fn, x):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(x))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(ns.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            times.append(time.perf_counter() - t0)
        return out, compile_s, float(np.median(times))

    latents, enc_compile, enc_s = timed(encode, frames)
    _, dec_compile, dec_s = timed(decode, latents)
    n = ns.batch * ns.frames
    result = {"device": jax.devices()[0].device_kind, "config": ns.config, "frame_size": mcfg.frame_size,
              "latent_shape_per_frame": [mcfg.num_latent_tokens, mcfg.latent_dim], "frames_per_call": n,
              "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))}
    for name, seconds, compile_s, flops in (("encode", enc_s, enc_compile, vt.encode_flops_per_frame(mcfg, ns.frames)),
                                            ("decode", dec_s, dec_compile, vt.decode_flops_per_frame(mcfg))):
        fps = n / seconds
        result[name] = {"ms_per_call": seconds * 1e3, "frames_per_second": fps, "realtime_factor_24fps": fps / 24.0,
                        "gflops_per_frame": flops / 1e9, "gflops_per_second": fps * flops / 1e9,
                        "compile_s": compile_s}
    both = 1.0 / (1.0 / result["encode"]["frames_per_second"] + 1.0 / result["decode"]["frames_per_second"])
    result["encode_decode_realtime_factor_24fps"] = both / 24.0
    if ns.train_steps > 0:
        from avatarjax.bench import harness

        train = harness.trainer_step(ns.config, overrides, steps=ns.train_steps)
        result["train"] = train
        result["summary"] = [harness.row(
            "video_tokenizer", train_ms_ours=train["step_ms"], tflops=train["tflops_per_device"], mfu=train["mfu"],
            memory_gib=train["memory_gib"],
            note=f"full task step, {Path(ns.config).name}, batch {train['batch']}; no PyTorch reference; "
                 f"encode+decode {result['encode_decode_realtime_factor_24fps']:.2f}x real time")]
    return result
