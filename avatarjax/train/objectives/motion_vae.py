"""The InstructAvatar motion/appearance VAE on synthface: rebuild frame i of identity A from the appearance of
frame j of A and the motion of frame i as worn by another identity B.

Each example comes from one synthface clip (a record of the ``data.synthface`` world): frames i and j are drawn
at random and rendered at ``data.frame_size``:

- ``target`` = (A, state_i), what the decoder must produce;
- ``source`` = (A, state_j), read by the appearance encoder;
- ``driver`` = (B, state_i), read by the motion encoder, where with probability ``swap_prob`` B is another
  identity of the same split (else B = A and driver = target). The swap forces the motion latent to carry the
  expression and pose but no identity.

With probability ``neutral_source_prob`` the source is instead A in the neutral state (head straight, mouth
closed: the kind of portrait the pipelines animate), so the whole expression and pose must come through the motion
latent. Two frames of one clip often differ only around the mouth and eyes, so copying the source is a good
reconstruction and a deep local optimum: the small config trained with the released objective (source from the
clip, plain L1) reconstructed swaps worse than the source frame itself (26.5 vs 27.6 dB) and, decoding from a
neutral portrait, moved the mouth 100x less than the true face. ``model.moving_weight`` adds that weight times the
L1 over the moving pixels (``moving_pixels``: source and target differ), the pixels the copy gets wrong. Of the
two, the moving-pixel L1 is what breaks the copy (small config, 2000 steps, mouth amplitude of the transfer from a
neutral portrait, ``motion_transfer``: released 0.010, neutral sources 0.058, moving weight 1 0.85, both 0.76).

Loss = l1_weight * L1 + moving_weight * L1(moving) + kl_weight * KL + the optional GAN terms. L1 is the mean over pixels; the KL of both
posteriors is summed over latent dims and divided by the pixel count, so ``kl_weight`` keeps its SD meaning
(relative to the L1 summed over pixels). The PatchGAN discriminator is a submodule of the same model, trained
by the same optimizer; its parameters are disjoint from the VAE's, so one gradient of the sum serves both:

- generator terms (hinge ``-D(fake)`` and the "perceptual" L1 between discriminator features of real and fake
  frames) run the discriminator with ``stop_gradient`` on its parameters: they train only the VAE;
- the discriminator term (hinge ``relu(1 - D(real)) + relu(1 + D(fake))``) sees ``stop_gradient(fake)``: it
  trains only the discriminator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.codecs import motion_vae as mv
from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.data.synthface import identity as identity_lib, render, schema
from avatarjax.data.synthface.loader import SynthfaceDataConfig, source as synthface_source
from avatarjax.data.synthface.schema import NUM_CHANNELS
from avatarjax.errors import ConfigError
from avatarjax.train.task import Task


@dataclasses.dataclass(frozen=True)
class MotionVAEDataConfig:
    synthface: SynthfaceDataConfig = SynthfaceDataConfig()  # only its world, data_dir and loader fields are read
    frame_size: int = 64  # must equal model.frame_size
    swap_prob: float = 0.5  # probability that the driver is another identity
    neutral_source_prob: float = 0.0  # probability that the source is the identity's neutral face (0 = released)


# ------------------------------------------------------------------------------------------------- data
class ClipStates:
    """The records of a synthface source reduced to identity and state track, cached after first use.

    Generating a procedural clip costs ~30 ms (audio, keypoints); rendering the three frames an example needs
    costs ~0.5 ms. Cached per process: ~7 KB per clip.
    """

    def __init__(self, records):
        self.records = records
        self.cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if index not in self.cache:
            record = self.records[index]
            self.cache[index] = {key: record[key] for key in ("identity", "identity_vector", "state")}
        return self.cache[index]


def split_identities(cfg: SynthfaceDataConfig, split: str) -> np.ndarray:
    """Identity indices of ``split`` in the world (the pool swap identities are drawn from)."""
    return np.array([i for i in range(cfg.num_identities) if identity_lib.identity_split(i) == split])


def make_example(clip: dict, rng: np.random.Generator, *, frame_size: int, swap_prob: float, pool: np.ndarray,
                 world_seed: int, neutral_source_prob: float = 0.0) -> dict:
    """``target``, ``source``, ``driver`` uint8 ``[S, S, 3]``; ``state`` float32 ``[24]`` (of target and driver);
    ``identity``, ``driver_identity`` int32."""
    state = clip["state"]
    i, j = rng.integers(len(state), size=2)
    a = int(clip["identity"])
    source_state = state[j]
    if neutral_source_prob > 0 and rng.random() < neutral_source_prob:  # no draw at 0: released picks unchanged
        source_state = schema.neutral_state(1)[0]
    target, src = render.render_frames(identity_lib.Identity.from_vector(clip["identity_vector"]),
                                       np.stack([state[i], source_state]), frame_size)
    b, driver = a, target
    if rng.random() < swap_prob:
        others = pool[pool != a]
        b = int(others[rng.integers(len(others))])
        driver = render.render_frames(identity_lib.sample_identity(b, seed=world_seed), state[i], frame_size)
    return {"target": target, "source": src, "driver": driver, "state": state[i].astype(np.float32),
            "identity": np.int32(a), "driver_identity": np.int32(b)}


def _check(cfg) -> None:
    if cfg.data.frame_size != cfg.model.frame_size:
        raise ConfigError(f"data.frame_size={cfg.data.frame_size} differs from model.frame_size="
                          f"{cfg.model.frame_size}: set both to the same size")
    for name in ("swap_prob", "neutral_source_prob"):
        if not 0.0 <= getattr(cfg.data, name) <= 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(cfg.data, name)}")
    if cfg.model.moving_weight < 0:
        raise ConfigError(f"model.moving_weight must be >= 0, got {cfg.model.moving_weight}")


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1, swap_prob: float | None = None,
            neutral_source_prob: float | None = None):
    """Batches of ``make_example`` (train: shuffled, repeated; eval: one pass in order). Frame picks and swaps
    are seeded per row, so eval batches are the same every time. ``swap_prob`` and ``neutral_source_prob``
    override the ``data`` fields of those names."""
    _check(cfg)
    world = cfg.data.synthface
    pick = lambda given, name: getattr(cfg.data, name) if given is None else given  # noqa: E731
    transform_kw = dict(frame_size=cfg.data.frame_size, pool=split_identities(world, split),
                        swap_prob=pick(swap_prob, "swap_prob"), world_seed=world.world_seed,
                        neutral_source_prob=pick(neutral_source_prob, "neutral_source_prob"))
    return clip_batches(cfg, split, process_index, process_count,
                        lambda clip, rng: make_example(clip, rng, **transform_kw))


def clip_batches(cfg, split: str, process_index: int, process_count: int, transform):
    """Batches of ``transform(clip, rng)`` over the synthface clips of ``split`` (train: shuffled, repeated;
    eval: one pass in order), in-process or in ``data.synthface.workers`` grain worker processes. Shared by the
    frame codecs' tasks (motion VAE, Wan VAE, video tokenizer)."""
    world = cfg.data.synthface
    ds = pipeline.batched(ClipStates(synthface_source(world, split)), batch_size=cfg.train.batch_size,
                          seed=cfg.seed, shuffle=split == "train", num_epochs=None if split == "train" else 1,
                          process_index=process_index, process_count=process_count, transform=transform)
    iterable = pipeline.to_iter(ds, threads=world.threads, prefetch=world.prefetch)
    if world.workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=world.workers,
                                                                     per_worker_buffer_size=world.prefetch))
    return iterable


def example_batch(cfg, batch_size: int) -> dict:
    """Zeros with the shapes and dtypes of a ``dataset`` batch."""
    s = cfg.model.frame_size
    frames = np.zeros((batch_size, s, s, 3), np.uint8)
    return {"target": frames, "source": frames.copy(), "driver": frames.copy(),
            "state": np.zeros((batch_size, NUM_CHANNELS), np.float32), "identity": np.zeros((batch_size,), np.int32),
            "driver_identity": np.zeros((batch_size,), np.int32)}


# ------------------------------------------------------------------------------------------------- model, loss
def build_model(cfg, rngs: nnx.Rngs) -> mv.MotionVAE:
    _check(cfg)
    return mv.MotionVAE(cfg.model, dtype=dtype_of(cfg.train.compute_dtype),
                        param_dtype=dtype_of(cfg.train.param_dtype), rngs=rngs)


def _frozen(module: nnx.Module) -> nnx.Module:
    """A copy of ``module`` whose parameters are behind ``stop_gradient``."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def loss(model: mv.MotionVAE, batch: dict, key: jax.Array, step: jax.Array):
    """The weighted objective and its unweighted terms (``l1``, ``kl``, ``psnr``; with the discriminator also
    ``generator``, ``feature_match``, ``discriminator``)."""
    cfg = model.cfg
    target, src, driver = (mv.to_model_range(batch[k]) for k in ("target", "source", "driver"))
    app_key, mot_key = jax.random.split(key)
    app_mean, app_logvar = model.encode_appearance(src)
    mot_mean, mot_logvar = model.encode_motion(driver)
    recon = model.decode(mv.sample_posterior(app_mean, app_logvar, app_key),
                         mv.sample_posterior(mot_mean, mot_logvar, mot_key))
    error = jnp.abs(recon - target)
    moving = moving_pixels(src, target)
    metrics = {"l1": jnp.mean(error),
               "l1_moving": jnp.sum(error * moving) / jnp.maximum(jnp.sum(moving) * 3, 1.0),
               "kl": jnp.mean(mv.kl_divergence(app_mean, app_logvar) + mv.kl_divergence(mot_mean, mot_logvar)),
               "psnr": jnp.mean(mv.psnr(recon, target))}
    total = (cfg.l1_weight * metrics["l1"] + cfg.moving_weight * metrics["l1_moving"]
             + cfg.kl_weight * metrics["kl"] / (cfg.frame_size ** 2 * 3))
    if model.discriminator is not None:
        gan, terms = gan_terms(model.discriminator, target, recon, step, cfg)
        total += gan
        metrics.update(terms)
    return total, metrics


def gan_terms(discriminator, real: jax.Array, fake: jax.Array, step: jax.Array, cfg) -> tuple[jax.Array, dict]:
    """(loss to add, metrics) of the hinge GAN with feature matching: the generator is scored by a frozen copy of
    the discriminator (its adversarial and feature-matching terms), the discriminator on real vs stopped fakes;
    all off before ``cfg.disc_start``. ``real``/``fake`` ``[N, S, S, 3]`` frames; ``cfg`` has
    ``adversarial_weight``, ``perceptual_weight`` and ``disc_start``."""
    n = real.shape[0]
    logits, features = _frozen(discriminator)(jnp.concatenate([real, fake]))
    metrics = {"generator": -jnp.mean(logits[n:]),
               "feature_match": sum(jnp.mean(jnp.abs(f[n:] - f[:n])) for f in features) / len(features)}
    logits, _ = discriminator(jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
    metrics["discriminator"] = jnp.mean(jax.nn.relu(1.0 - logits[:n])) + jnp.mean(jax.nn.relu(1.0 + logits[n:]))
    on = (step >= cfg.disc_start).astype(jnp.float32)
    return on * (cfg.adversarial_weight * metrics["generator"] + cfg.perceptual_weight * metrics["feature_match"]
                 + metrics["discriminator"]), metrics


def flops_per_example(cfg) -> float:
    """VAE forward for one frame, plus four discriminator passes (real and fake, frozen and live) when on."""
    disc = 4 * mv.discriminator_flops(cfg.model) if cfg.model.use_discriminator else 0.0
    return mv.flops_per_frame(cfg.model) + disc


# ------------------------------------------------------------------------------------------------- sampling
MOVING_THRESHOLD = 16 / 255  # in [-1, 1] units: 8 levels of 255 in some channel


def moving_pixels(source: jax.Array, target: jax.Array) -> jax.Array:
    """float32 ``[N, S, S, 1]``: 1 where frames ``[N, S, S, 3]`` in [-1, 1] differ by more than
    ``MOVING_THRESHOLD`` in some channel (what copying the source gets wrong)."""
    return jnp.any(jnp.abs(source - target) > MOVING_THRESHOLD, axis=-1, keepdims=True).astype(jnp.float32)


def _reconstruct(model: mv.MotionVAE, batch: dict) -> dict[str, jax.Array]:
    """Posterior-mean reconstructions from the driver's motion (``swap``) and from the target's own (``self``),
    and per-image PSNRs of them and of the source frame itself (``copy``: what ignoring the motion scores), over
    the whole frame and over the ``moving`` pixels (those that differ between source and target)."""
    target, src = mv.to_model_range(batch["target"]), mv.to_model_range(batch["source"])
    app, _ = model.encode_appearance(src)
    preds = {"swap": model.decode(app, model.encode_motion(mv.to_model_range(batch["driver"]))[0]),
             "self": model.decode(app, model.encode_motion(target)[0]), "copy": src}
    moving = moving_pixels(src, target) > 0
    out = {f"psnr_{name}": mv.psnr(pred, target) for name, pred in preds.items()}
    out.update({f"psnr_{name}_moving": mv.psnr(pred, target, moving) for name, pred in preds.items()})
    return {**out, "swap": preds["swap"], "self": preds["self"]}


def _encode_motion(model: mv.MotionVAE, frames: np.ndarray, chunk: int) -> np.ndarray:
    """uint8 frames ``[N, S, S, 3]`` -> flat motion posterior means ``[N, motion_dim]``, in chunks of one shape."""
    encode = nnx.jit(lambda m, x: mv.flatten_motion(m.encode_motion(mv.to_model_range(x))[0]))
    padded = np.concatenate([frames, np.zeros((-len(frames) % chunk,) + frames.shape[1:], np.uint8)])
    out = [np.asarray(encode(model, padded[i:i + chunk])) for i in range(0, len(padded), chunk)]
    return np.concatenate(out)[:len(frames)]


def motion_latent_stats(model: mv.MotionVAE, cfg, clips: int = 16, stride: int = 2, identities: int = 4,
                        states: int = 64) -> dict[str, float]:
    """Statistics of the motion posterior means on eval clips (every ``stride``-th frame of the first ``clips``):

    - ``motion_latent_mean`` / ``_std``: over every element (a global normaliser);
    - ``motion_latent_centred_std``: the std left after removing each dimension's mean (the motion signal);
    - ``motion_identity_share``: the share of the latent variance explained by identity: ``states`` states each
      rendered on ``identities`` eval identities; mean variance across identities at a fixed state over the total
      variance (0 = the motion latent ignores identity).
    """
    records = synthface_source(cfg.data.synthface, "eval")
    size, chunk = cfg.model.frame_size, cfg.train.batch_size
    tracks = [records[i] for i in range(min(clips, len(records)))]
    frames = np.concatenate([render.render_frames(identity_lib.Identity.from_vector(r["identity_vector"]),
                                                  r["state"][::stride], size) for r in tracks])
    flat = _encode_motion(model, frames, chunk)
    pool = split_identities(cfg.data.synthface, "eval")[:identities]
    picked = np.concatenate([r["state"][::stride] for r in tracks])
    picked = picked[np.linspace(0, len(picked) - 1, states).astype(int)]
    swapped = np.concatenate([render.render_frames(identity_lib.sample_identity(int(b), cfg.data.synthface.world_seed),
                                                   picked, size) for b in pool])
    by_identity = _encode_motion(model, swapped, chunk).reshape(len(pool), states, -1)
    total = by_identity.reshape(-1, flat.shape[1]).var(0).mean()
    return {"motion_latent_mean": float(flat.mean()), "motion_latent_std": float(flat.std()),
            "motion_latent_centred_std": float(np.sqrt(flat.var(0).mean())), "motion_latent_frames": len(flat),
            "motion_identity_share": float(by_identity.var(0).mean() / total)}


def _evaluate(model: mv.MotionVAE, cfg, batches: int) -> tuple[dict[str, float], dict]:
    """Mean eval PSNRs (see ``_reconstruct``) over ``batches`` eval batches with swap_prob 1, twice: ``eval_*``
    with the source drawn from the clip (the released objective's condition) and ``eval_neutral_*`` with the
    neutral face as the source (the pipelines' condition: a neutral portrait's appearance, every expression from
    the motion latent); and the first batch of the first pass with its reconstructions."""
    run = nnx.jit(_reconstruct)
    metrics, first = {}, None
    for prefix, neutral in (("eval_", 0.0), ("eval_neutral_", 1.0)):
        sums: dict[str, list] = {}
        for n, batch in enumerate(dataset(cfg, "eval", swap_prob=1.0, neutral_source_prob=neutral)):
            if n >= batches:
                break
            out = run(model, batch)
            if first is None:
                first = {**batch, "swap": np.asarray(out["swap"]), "self": np.asarray(out["self"])}
            for name, value in out.items():
                if name.startswith("psnr"):
                    sums.setdefault(name, []).append(np.asarray(value))
        metrics.update({f"{prefix}{k}": float(np.mean(np.concatenate(v))) for k, v in sums.items()})
    return metrics, first


def motion_transfer(model: mv.MotionVAE, cfg, seconds: float = 20.0, chunk: int = 100) -> dict[str, float]:
    """How much expression survives the pipelines' use of the VAE: the true face of a held-out identity speaking
    ``seconds`` of synthetic speech (``eval.drift.true_talking_frames``), each frame's motion decoded with the
    appearance of the identity's neutral portrait. ``transfer_mouth_amplitude``: the mouth box's pixel-change
    std of the decoded frames over the true frames' (1 = the mouth moves as much; a VAE that copies its source
    scores ~0); ``transfer_mouth_correlation``: the two mouth signals' correlation; ``transfer_l1``: the mean
    absolute error in 0-255 levels."""
    from avatarjax.eval import drift

    size = cfg.model.frame_size
    _, identity, portrait, wave = drift.utterance(size, seconds, extra_samples=0)
    truth = drift.true_talking_frames(identity, wave, len(wave) // schema.SAMPLES_PER_FRAME, size)
    mouth = drift.mouth_box_signal(identity, portrait)

    @nnx.jit
    def decode(m, frames):
        appearance, _ = m.encode_appearance(mv.to_model_range(portrait[None]))
        motion, _ = m.encode_motion(mv.to_model_range(frames))
        return m.decode(jnp.broadcast_to(appearance, (frames.shape[0],) + appearance.shape[1:]), motion)

    padded = np.concatenate([truth, np.zeros((-len(truth) % chunk,) + truth.shape[1:], np.uint8)])
    out = np.concatenate([mv.to_uint8(decode(model, padded[i:i + chunk]))
                          for i in range(0, len(padded), chunk)])[:len(truth)]
    a, b = mouth(out), mouth(truth)
    return {"transfer_mouth_amplitude": float(a.std() / b.std()), "transfer_mouth_correlation":
            float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0,
            "transfer_l1": float(np.abs(out.astype(np.float32) - truth.astype(np.float32)).mean())}


def _parse(args: list[str], prog: str):
    import argparse

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--examples", type=int, default=8, help="columns of the contact sheet (sample)")
    p.add_argument("--batches", type=int, default=3, help="eval batches (swap_prob 1) for the PSNRs")
    p.add_argument("--clips", type=int, default=16, help="eval clips for the motion latent statistics")
    p.add_argument("--transfer-seconds", type=float, default=20.0,
                   help="utterance length of the motion-transfer check (motion_transfer; 0 = skip it)")
    return p.parse_args(args)


def evaluate(model: mv.MotionVAE, cfg, args: list[str], checkpoint=None) -> dict:
    """``avatarjax eval ... [--batches N] [--clips N] [--transfer-seconds S]``: eval PSNRs of swapped and self
    reconstructions (whole frame and moving pixels) beside the copy-the-source baseline, the motion latent
    statistics and the motion transfer from a neutral portrait (``motion_transfer``)."""
    ns = _parse(args, "avatarjax eval (motion_vae)")
    metrics, _ = _evaluate(model, cfg, ns.batches)
    transfer = motion_transfer(model, cfg, ns.transfer_seconds) if ns.transfer_seconds > 0 else {}
    return {**metrics, **motion_latent_stats(model, cfg, clips=ns.clips), **transfer}


def sample(model: mv.MotionVAE, cfg, out_dir, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample ... [--examples N] [--batches N] [--clips N]``: a contact sheet of identity-swapped
    reconstructions of eval identities (rows: source = appearance, driver = motion, target, swap reconstruction,
    self reconstruction) and the ``evaluate`` metrics."""
    ns = _parse(args, "avatarjax sample (motion_vae)")
    metrics, first = _evaluate(model, cfg, ns.batches)
    k = min(ns.examples, len(first["target"]))
    rows = [first["source"], first["driver"], first["target"], mv.to_uint8(first["swap"]), mv.to_uint8(first["self"])]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "motion_vae_sample.png"
    render.contact_sheet(np.concatenate([row[:k] for row in rows]), columns=k, path=path)
    return {"output": str(path.absolute()), **metrics, **motion_latent_stats(model, cfg, clips=ns.clips)}


MOTION_VAE_TASK = Task(name="motion_vae", model_config=mv.MotionVAEConfig, data_config=MotionVAEDataConfig,
                       build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                       example_batch=example_batch, sample=sample, evaluate=evaluate)
