"""Next-token cross-entropy for the decoder LM on byte-level text."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline, text
from avatarjax.models.decoder_lm import DecoderLM, DecoderLMConfig, decoder_lm_flops_per_sequence
from avatarjax.train.task import Task


def build_model(cfg, rngs: nnx.Rngs) -> DecoderLM:
    return DecoderLM(cfg.model, dtype=dtype_of(cfg.train.compute_dtype), param_dtype=dtype_of(cfg.train.param_dtype),
                     remat=cfg.train.remat, rngs=rngs)


def loss(model: DecoderLM, batch, key, step):
    del key, step
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mean_nll = jnp.mean(nll)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
    return mean_nll, {"bits_per_byte": mean_nll / jnp.log(2.0), "accuracy": accuracy}


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    source = text.byte_windows(cfg.data, split)
    return pipeline.batched(source, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=split == "train",
                            num_epochs=None if split == "train" else 1, process_index=process_index,
                            process_count=process_count)


def flops_per_example(cfg) -> float:
    return decoder_lm_flops_per_sequence(cfg.model, cfg.data.seq_len)


def example_batch(cfg, batch_size: int):
    rng = np.random.default_rng(0)
    return {"tokens": rng.integers(0, cfg.model.vocab_size, (batch_size, cfg.data.seq_len + 1), dtype=np.int32)}


def generate(model: DecoderLM, prompt: jax.Array, num_tokens: int, key: jax.Array, temperature: float) -> jax.Array:
    """Extend ``prompt`` ``[batch, p]`` by ``num_tokens`` sampled tokens, all in one ``lax.scan``.

    The whole ``[batch, p + num_tokens]`` buffer is re-run each step (causal attention makes later slots
    irrelevant), which keeps shapes static; fine for the short byte-level demo.
    """
    batch, plen = prompt.shape
    buffer = jnp.concatenate([prompt, jnp.zeros((batch, num_tokens), prompt.dtype)], axis=1)

    def step(carry, i):
        buf, key = carry
        key, sub = jax.random.split(key)
        logits = model(buf)[:, plen + i - 1]
        if temperature > 0:
            token = jax.random.categorical(sub, logits / temperature)
        else:
            token = jnp.argmax(logits, -1)
        buf = jax.lax.dynamic_update_slice(buf, token[:, None].astype(buf.dtype), (0, plen + i))
        return (buf, key), None

    (buffer, _), _ = jax.lax.scan(step, (buffer, key), jnp.arange(num_tokens))
    return buffer


def sample(model: DecoderLM, cfg, out_dir, args: list[str], checkpoint=None) -> dict:
    """``avatarjax sample ... -- --prompt TEXT --tokens N --temperature T``: write generated text."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="avatarjax sample (lm)")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    ns = p.parse_args(args)
    prompt = np.frombuffer(ns.prompt.encode("utf-8"), np.uint8).astype(np.int32)[None]
    if prompt.shape[1] == 0:
        from avatarjax.errors import AvatarError

        raise AvatarError("the prompt is empty: pass --prompt with at least one character")
    gen = nnx.jit(generate, static_argnums=(2, 4))
    tokens = np.asarray(gen(model, jnp.asarray(prompt), ns.tokens, jax.random.key(cfg.seed), ns.temperature))
    text_out = bytes(tokens[0].astype(np.uint8).tolist()).decode("utf-8", errors="replace")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "lm_sample.txt"
    path.write_text(text_out)
    return {"output": str(path.absolute()), "text": text_out}


LM_TASK = Task(name="lm", model_config=DecoderLMConfig, data_config=text.TextDataConfig, build_model=build_model,
               loss=loss, dataset=dataset, flops_per_example=flops_per_example, example_batch=example_batch,
               sample=sample)
