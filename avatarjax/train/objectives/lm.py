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


LM_TASK = Task(name="lm", model_config=DecoderLMConfig, data_config=text.TextDataConfig, build_model=build_model,
               loss=loss, dataset=dataset, flops_per_example=flops_per_example, example_batch=example_batch)
