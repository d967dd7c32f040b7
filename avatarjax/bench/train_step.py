"""``avatarjax bench train_step --model NAME --config FILE [--steps N] [--reference transformers|diffusers]
[--config.x=v ...]``: the training step of any registered task (the trainer's jitted step on the task's example
batch: step time, TFLOP/s, MFU, compiled memory), for model families without a dedicated benchmark.

``--reference`` adds a PyTorch side by side in the same run:

- ``transformers``: the ``lm`` task's decoder against ``Qwen2ForCausalLM`` with the config's dimensions, one AdamW
  step of next-token cross-entropy on the same batch (ours: the trainer's full step, which also clips gradients
  and computes metrics).
- ``torch`` (``motion_vae``): the motion VAE (appearance and motion encoders, decoder) against the release's
  Stable-Diffusion-parts build (:class:`avatarjax.bench.torch_refs.MotionVAE`, diffusers ``Encoder`` /
  ``Decoder``) at the config's size, one AdamW step of L1 (summed over pixels) + KL on the same frames.
- ``torch`` (``face_reader``): the face reader against the same CNN in plain torch
  (:class:`avatarjax.bench.torch_refs.FaceReader`), one AdamW step of MSE on keypoints and state.
- ``diffusers``: our Wan VAE against ``AutoencoderKLWan`` with identical weights (converted), one AdamW step of
  reconstruction MSE through encode (posterior mean) and decode, at ``--vae-base-dim`` on a 9-frame clip.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.bench import harness


def _qwen2_side_by_side(cfg, batch: int, repeats: int) -> harness.StepTiming:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = cfg.model
    torch.manual_seed(0)
    ref = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=m.vocab_size, hidden_size=m.dim, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads, intermediate_size=m.mlp_dim, head_dim=m.resolved_head_dim, rope_theta=m.rope_theta,
        rms_norm_eps=m.norm_eps, tie_word_embeddings=m.tie_embeddings, max_position_embeddings=4 * cfg.data.seq_len))
    tokens = np.random.default_rng(0).integers(0, m.vocab_size, (batch, cfg.data.seq_len + 1)).astype(np.int64)

    def loss(model, tokens):
        logits = model(input_ids=tokens[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return harness.torch_train_step(ref, loss, (tokens,), repeats)


def _wan_vae_side_by_side(base_dim: int, size: int, repeats: int) -> dict:
    import tempfile

    import torch
    from diffusers import AutoencoderKLWan

    from avatarjax.checkpoint.convert import from_pretrained
    from avatarjax.registry import CONVERTERS

    torch.manual_seed(0)
    ref = AutoencoderKLWan(base_dim=base_dim, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4).float()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp, safe_serialization=True)
        with nnx.use_eager_sharding(False):
            model, _ = from_pretrained(CONVERTERS.get("wan-vae"), tmp)
    video = np.random.default_rng(0).uniform(-1, 1, (1, 9, size, size, 3)).astype(np.float32)

    def loss(m, v):
        mean, _ = m.encode(v)
        return jnp.mean(jnp.square(m.decode(mean, clip=False) - v))

    ours = harness.jax_train_step(model, loss, (video,), repeats)

    def ref_loss(m, v):
        z = m.encode(v).latent_dist.mode()
        return torch.mean(torch.square(m.decode(z).sample - v))

    reference = harness.torch_train_step(ref, ref_loss, (np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)),),
                                         repeats)
    out = harness.compare_train("wan_vae (encode+decode)", ours, reference, "diffusers AutoencoderKLWan",
                                note=f"base_dim {base_dim}, clip [1, 9, {size}, {size}, 3], same weights")
    out["detail"]["loss_ours_vs_reference"] = [ours.loss, reference.loss]
    return out


def _motion_vae_side_by_side(model_cfg, batch: int, repeats: int) -> dict:
    import dataclasses

    import torch

    from avatarjax.bench import torch_refs
    from avatarjax.codecs import motion_vae as mv

    # diffusers' blocks need a ResBlock per level; both sides get the same adjusted config
    cfg = dataclasses.replace(model_cfg, num_res_blocks=max(1, model_cfg.num_res_blocks), adversarial_weight=0.0,
                              perceptual_weight=0.0)
    with nnx.use_eager_sharding(False):
        model = mv.MotionVAE(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    shape = (batch, cfg.frame_size, cfg.frame_size, 3)
    source, target = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    w = cfg.kl_weight

    def loss(m, source, target):
        ka, km = jax.random.split(jax.random.key(0))
        a_mean, a_logvar = m.encode_appearance(source)
        m_mean, m_logvar = m.encode_motion(target)
        out = m.decode(mv.sample_posterior(a_mean, a_logvar, ka), mv.sample_posterior(m_mean, m_logvar, km))
        l1 = jnp.sum(jnp.abs(out - target).reshape(batch, -1), axis=-1)
        return jnp.mean(l1 + w * (mv.kl_divergence(a_mean, a_logvar) + mv.kl_divergence(m_mean, m_logvar)))

    ours = harness.jax_train_step(model, loss, (source, target), repeats)
    torch.manual_seed(0)
    ref = torch_refs.MotionVAE(cfg.channels, cfg.channel_mult, cfg.num_res_blocks, cfg.latent_channels,
                               cfg.motion_extra_down, cfg.groups, cfg.mid_attention)

    def ref_loss(m, source, target):
        out, (am, alv), (mm, mlv) = m(source, target)
        l1 = (out - target).abs().flatten(1).sum(dim=1)
        return torch.mean(l1 + w * (torch_refs.kl(am, alv) + torch_refs.kl(mm, mlv)))

    nchw = lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    reference = harness.torch_train_step(ref, ref_loss, (nchw(source), nchw(target)), repeats)
    return harness.compare_train("motion_vae (model)", ours, reference, "torch SD-parts VAE (diffusers blocks)",
                                 note=f"AdamW step, batch {batch}, {cfg.frame_size}px, "
                                      f"{cfg.num_res_blocks} res blocks/level")


def _face_reader_side_by_side(model_cfg, batch: int, repeats: int) -> dict:
    import dataclasses

    import torch

    from avatarjax.bench import torch_refs
    from avatarjax.data.synthface import schema
    from avatarjax.data.synthface.identity import IDENTITY_DIM
    from avatarjax.models import face_reader as fr

    cfg = dataclasses.replace(model_cfg, reference=False)
    with nnx.use_eager_sharding(False):
        model = fr.FaceReader(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (batch, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    identity = rng.uniform(0, 1, (batch, IDENTITY_DIM)).astype(np.float32)
    kp = rng.standard_normal((batch, schema.NUM_KEYPOINTS, 2)).astype(np.float32)
    state = rng.standard_normal((batch, schema.NUM_CHANNELS)).astype(np.float32)

    def loss(m, x, ident, kp, state):
        out = m(x, ident, normalised=True)
        return jnp.mean(jnp.square(out["keypoints"] - kp)) + jnp.mean(jnp.square(out["state"] - state))

    ours = harness.jax_train_step(model, loss, (frames, identity, kp, state), repeats)
    torch.manual_seed(0)
    ref = torch_refs.FaceReader(cfg.image_size, cfg.patch, cfg.stem_channels, cfg.channels, cfg.blocks_per_stage,
                                cfg.hidden, IDENTITY_DIM, cfg.identity_dim, cfg.joint, cfg.groups,
                                schema.NUM_KEYPOINTS, schema.NUM_CHANNELS)

    def ref_loss(m, x, ident, kp, state):
        k, s = m(x, ident)
        return torch.mean(torch.square(k - kp)) + torch.mean(torch.square(s - state))

    x_nchw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    reference = harness.torch_train_step(ref, ref_loss, (x_nchw, identity, kp, state), repeats)
    return harness.compare_train("face_reader (model)", ours, reference, "torch CNN (same layers)",
                                 note=f"AdamW step, batch {batch}, {cfg.image_size}px")


def bench_train_step(argv: list[str]) -> dict:
    from avatarjax.config import load_config

    rest, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    p = argparse.ArgumentParser(prog="avatarjax bench train_step")
    p.add_argument("--model", required=True, help="the model family's name in the table")
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=5, help="timed steps (medians)")
    p.add_argument("--batch", type=int, default=0, help="override the config's batch size")
    p.add_argument("--reference", default="", choices=("", "transformers", "diffusers", "torch"))
    p.add_argument("--vae-base-dim", type=int, default=32, help="--reference diffusers: the VAE's base width")
    p.add_argument("--vae-size", type=int, default=32, help="--reference diffusers: clip height = width")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ns = p.parse_args(rest)
    harness.set_torch_threads(ns.threads)
    ours = harness.trainer_step(ns.config, overrides, batch=ns.batch or None, steps=ns.steps)
    result = {"device": jax.devices()[0].device_kind, "model": ns.model, "train": ours}
    main = harness.row(ns.model, train_ms_ours=ours["step_ms"], tflops=ours["tflops_per_device"], mfu=ours["mfu"],
                       memory_gib=ours["memory_gib"], note=f"full task step, {ns.config}, batch {ours['batch']}")
    if ns.reference == "transformers":
        cfg = load_config(ns.config, overrides)
        ref = _qwen2_side_by_side(cfg, ours["batch"], ns.steps)
        ratio = ref.seconds * 1e3 / ours["step_ms"]
        main.update(train_ms_ref=ref.seconds * 1e3, reference="transformers Qwen2ForCausalLM", ratio=ratio)
        result["reference"] = {"name": "transformers Qwen2ForCausalLM", "step_ms": ref.seconds * 1e3,
                               "speedup_vs_reference": ratio}
    summary = [main]
    if ns.reference == "diffusers":
        side = _wan_vae_side_by_side(ns.vae_base_dim, ns.vae_size, ns.steps)
        result["reference"] = side["detail"]
        summary.append(side["summary"])
    elif ns.reference == "torch":
        cfg = load_config(ns.config, overrides)
        sides = {"motion_vae": _motion_vae_side_by_side, "face_reader": _face_reader_side_by_side}
        if cfg.task not in sides:
            from avatarjax.errors import AvatarError

            raise AvatarError(f"--reference torch exists for the tasks {sorted(sides)}, not {cfg.task!r}")
        side = sides[cfg.task](cfg.model, ours["batch"], ns.steps)
        result["reference"] = side["detail"]
        summary.append(side["summary"])
    elif ns.reference not in ("", "transformers"):
        raise AssertionError(ns.reference)
    result["summary"] = summary
    return result
