"""``avatarjax bench speechvideo``: per-frame duplex streaming latency of the speech-video LM.

- Ours: ``DuplexSession.step`` of a config (default: the small synthface config): one jitted call per frame
  that embeds the human's previous frame, extends the preallocated KV cache by the frame's block of tokens,
  samples the agent's 9 audio codes and runs the diffusion head's sampling loop for its K video tokens.
- Like for like, same run: our backbone alone (``DecoderLM.extend_embeddings`` on the frame's token block, jitted,
  preallocated cache) against transformers' ``Qwen2Model`` with the same dimensions doing the same block with its
  ``DynamicCache``, eager PyTorch as Hugging Face's ``generate`` runs it. The full-frame ratio is reported too;
  there ours does strictly more work (heads and the diffusion sampling loop).
- Training, same run: the task's full training step of the config (the trainer's jitted step: TFLOP/s, MFU,
  compiled memory), and one AdamW step of the backbone on ``--train-frames`` frames of token blocks (causal, MSE on
  the hidden states) ours against ``Qwen2Model`` with the same dimensions.
- The analytic FLOPs per frame of the ``paper`` config (8B-class backbone) at 240 frames of context, and the
  frame budget at 24 fps (the paper's 42 ms target).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from avatarjax.bench import harness

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "speechvideo"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_speechvideo(argv: list[str]) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2Model
    from transformers.cache_utils import DynamicCache

    from avatarjax.config import load_config
    from avatarjax.models.decoder_lm import KVCache
    from avatarjax.models import speech_video_lm as svlm
    from avatarjax.registry import TASKS

    p = argparse.ArgumentParser(prog="avatarjax bench speechvideo")
    p.add_argument("--config", default=str(CONFIGS / "synthface_small.py"))
    p.add_argument("--frames", type=int, default=40, help="timed frames after the compiling one")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--train-frames", type=int, default=16, help="frames per sequence of the backbone training step")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: the tiny config, few frames and steps")
    ns = p.parse_args(argv)
    if ns.quick:
        ns.config, ns.frames = str(CONFIGS / "synthface_tiny.py"), 4
        ns.train_frames, ns.train_batch, ns.train_steps = 4, 2, 2
    if ns.threads:
        torch.set_num_threads(ns.threads)
    cfg = load_config(ns.config, [])
    with nnx.use_eager_sharding(False):
        system = TASKS.get("speech_video").build_model(cfg, nnx.Rngs(0))
    net = system.net
    c = net.cfg
    rng = np.random.default_rng(0)
    session = svlm.DuplexSession(net, max_frames=ns.frames + 1, seed=0)
    human = [(rng.integers(0, c.codebook_size, (1, c.num_codebooks)),
              rng.standard_normal((1, c.video_tokens, c.video_dim)).astype(np.float32)) for _ in range(ns.frames + 1)]
    t0 = time.perf_counter()
    session.step(*human[0])
    first = time.perf_counter() - t0
    ours = []
    for codes, video in human[1:]:
        t0 = time.perf_counter()
        session.step(codes, video)
        ours.append(time.perf_counter() - t0)

    # our backbone alone on the same per-frame blocks (the like-for-like comparison with the reference)
    b = c.backbone
    block = c.tokens_per_frame
    graphdef, state = nnx.split(net.backbone)

    @jax.jit
    def extend(state, x, cache):
        return nnx.merge(graphdef, state).extend_embeddings(x, cache)

    blocks = rng.standard_normal((ns.frames + 1, 1, block, b.dim)).astype(np.float32)
    cache = KVCache.init(b, 1, (ns.frames + 1) * block)
    backbone = []
    for i in range(ns.frames + 1):
        t0 = time.perf_counter()
        out, cache = extend(state, blocks[i], cache)
        out.block_until_ready()
        if i:
            backbone.append(time.perf_counter() - t0)

    hf = Qwen2Model(Qwen2Config(hidden_size=b.dim, num_hidden_layers=b.num_layers, num_attention_heads=b.num_heads,
                                num_key_value_heads=b.num_kv_heads, intermediate_size=b.mlp_dim, vocab_size=32,
                                head_dim=b.resolved_head_dim, max_position_embeddings=4096,
                                rope_theta=b.rope_theta)).eval()
    embeds = torch.from_numpy(blocks.reshape(1, -1, b.dim))
    cache = DynamicCache()
    reference = []
    with torch.inference_mode():
        for i in range(ns.frames + 1):
            t0 = time.perf_counter()
            out = hf(inputs_embeds=embeds[:, i * block:(i + 1) * block], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            if i:
                reference.append(time.perf_counter() - t0)

    paper_net = load_config(str(CONFIGS / "paper.py"), []).model.net
    ours_ms, ref_ms = 1e3 * statistics.median(ours), 1e3 * statistics.median(reference)
    training = summary = None
    if not ns.skip_train:
        training, summary = _training(ns, net, hf)
    return {
        "summary": summary or [],
        "training": training,
        "device": jax.devices()[0].platform,
        "config": ns.config, "tokens_per_frame": block, "backbone": {"dim": b.dim, "layers": b.num_layers},
        "params": svlm.param_count(c),
        "ours_frame_ms": {"median": ours_ms, "p90": 1e3 * _percentile(ours, 90), "first_with_compile_s": first,
                          "compilations": session.traces},
        "real_time_factor_25fps": ours_ms / 40.0,
        "ours_backbone_frame_ms": {"median": 1e3 * statistics.median(backbone), "p90": 1e3 * _percentile(backbone, 90)},
        "reference_backbone_frame_ms": {"median": ref_ms, "p90": 1e3 * _percentile(reference, 90)},
        "backbone_speedup_vs_transformers": ref_ms / (1e3 * statistics.median(backbone)),
        "full_frame_vs_transformers_backbone_only": ref_ms / ours_ms,
        "paper": {"params": svlm.param_count(paper_net),
                  "inference_gflops_per_frame_ctx240": svlm.flops_per_frame(paper_net, 240, training=False) / 1e9,
                  "target_ms_per_frame": 42.0},
    }


def _training(ns, net, hf) -> tuple[dict, list[dict]]:
    """The task's full training step, and the backbone's AdamW step ours vs ``Qwen2Model`` (same dimensions)."""
    import torch

    full = harness.trainer_step(ns.config, steps=ns.train_steps)
    b = net.cfg.backbone
    length = ns.train_frames * net.cfg.tokens_per_frame
    rng = np.random.default_rng(1)
    x = rng.standard_normal((ns.train_batch, length, b.dim)).astype(np.float32)
    y = rng.standard_normal(x.shape).astype(np.float32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (ns.train_batch, length)).copy()

    def loss(m, x, y, positions):
        import jax.numpy as jnp

        return jnp.mean(jnp.square(m.hidden_states_from_embeddings(x, positions) - y))

    ours = harness.jax_train_step(net.backbone, loss, (x, y, positions), ns.train_steps)
    reference = harness.torch_train_step(
        hf, lambda m, x, y: torch.mean(torch.square(m(inputs_embeds=x, use_cache=False).last_hidden_state - y)),
        (x, y), ns.train_steps)
    side = harness.compare_train("speechvideo backbone", ours, reference, "transformers Qwen2Model",
                                 note=f"AdamW step, [{ns.train_batch}, {length}, {b.dim}] embeddings")
    rows = [harness.row("speechvideo", train_ms_ours=full["step_ms"], tflops=full["tflops_per_device"],
                        mfu=full["mfu"], memory_gib=full["memory_gib"],
                        note=f"full task step, {Path(ns.config).name}, batch {full['batch']}"), side["summary"]]
    return {"task_step": full, "backbone_vs_transformers": side["detail"]}, rows
