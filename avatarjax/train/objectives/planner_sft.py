"""Supervised fine-tuning of the local planner LLM (task ``planner_sft``): our Qwen2 decoder learns to answer the
dual-system planner's prompt with the target description / analysis / plan of the fine-tuning rows
(``synthface_planner`` JSONL; the paper fine-tunes its VLM on about 3,000 such samples).

Each row becomes ``prompt + target``: the prompt is exactly what the planner sends at inference
(``synthface_planner.sft_messages``: system prompt, keyframe descriptions, transcript; text only), the target the
compact JSON of the row's ``target`` followed by an end-of-sequence token; the loss is the next-token
cross-entropy on the target tokens only (``loss_mask``). When prompt and target do not fit ``data.seq_len``, the
prompt loses its oldest tokens, but keeps at least a quarter of the window; a target longer than the rest loses its
tail (``truncated`` marks the row): raise ``data.seq_len`` or lower ``data.traj_fps`` when that happens.

Tokens: with ``data.tokenizer`` a Qwen tokenizer directory (the chat template with the assistant turn opened; EOS
``<|im_end|>``), else bytes (vocab 256, EOS = byte 0: JSON never holds a NUL) for tiny tests. ``model.init_from``:
a converted Qwen2 directory (``avatarjax convert qwen2``) whose config must equal ``model.net``; the result serves
as ``llm.QwenBackend`` after ``avatarjax export``-ing the workdir's parameters (or from the workdir directly)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avatarjax.config import dtype_of
from avatarjax.data import pipeline
from avatarjax.errors import ConfigError
from avatarjax.models.decoder_lm import DecoderLM, DecoderLMConfig, decoder_lm_flops_per_sequence
from avatarjax.planning import llm as L
from avatarjax.planning import synthface_planner as SP
from avatarjax.train.task import Task

BYTE_EOS = 0


@dataclasses.dataclass(frozen=True)
class PlannerSFTModelConfig:
    net: DecoderLMConfig = DecoderLMConfig()
    init_from: str = ""  # a converted Qwen2 directory (avatarjax convert qwen2); "" = random init


@dataclasses.dataclass(frozen=True)
class PlannerSFTDataConfig:
    path: str = ""  # a directory with train.jsonl / eval.jsonl (avatarjax data build planner_sft); "" = in memory
    tokenizer: str = ""  # a Qwen tokenizer directory; "" = bytes (vocab 256)
    seq_len: int = 1024
    # in-memory rows from synthface dyadic sessions when path is ""
    num_sessions: int = 16
    num_eval_sessions: int = 4
    per_session: int = 4
    session_frames: int = 200
    traj_fps: float = 5.0
    world_seed: int = 0


def check_config(cfg) -> None:
    net, data = cfg.model.net, cfg.data
    if not data.tokenizer and net.vocab_size < 256:
        raise ConfigError(f"byte tokens need model.net.vocab_size >= 256, got {net.vocab_size}")
    if data.seq_len < 64:
        raise ConfigError(f"data.seq_len={data.seq_len} is too short for a plan: use >= 64")


class _Tokens:
    """prompt messages / target text -> token ids, bytes or a Qwen tokenizer."""

    def __init__(self, tokenizer_dir: str):
        self.tok = None
        if tokenizer_dir:
            from avatarjax.encoders import qwen2

            self.tok = qwen2.load_tokenizer(tokenizer_dir)
            eos = self.tok.convert_tokens_to_ids("<|im_end|>")
            self.eos = int(eos if isinstance(eos, int) and eos >= 0 else self.tok.eos_token_id)
            self.pad = int(self.tok.pad_token_id or 0)
        else:
            self.eos, self.pad = BYTE_EOS, 0

    def prompt(self, messages: list[dict]) -> list[int]:
        messages = L.text_only(messages)
        if self.tok is not None:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
        return list(text.encode("utf-8"))

    def target(self, text: str) -> list[int]:
        ids = (list(self.tok(text, add_special_tokens=False)["input_ids"]) if self.tok is not None
               else list(text.encode("utf-8")))
        return ids + [self.eos]


def encode_row(row: dict, tokens: _Tokens, seq_len: int) -> dict[str, np.ndarray]:
    """One row -> ``tokens`` int32 ``[seq_len + 1]`` and ``loss_mask`` float32 ``[seq_len]`` (1 where the next
    token is a target token), ``truncated`` int32 (1 when the target's tail was cut)."""
    prompt = tokens.prompt(SP.sft_messages(row))
    target = tokens.target(json.dumps(row["target"], separators=(",", ":")))
    room = seq_len + 1
    truncated = 0
    keep = room - min(len(prompt), room // 4)  # the prompt keeps at least a quarter of the window
    if len(target) > keep:
        target, truncated = target[:keep], 1
    prompt = prompt[-(room - len(target)):]
    seq = prompt + target
    ids = np.full((room,), tokens.pad, np.int32)
    ids[:len(seq)] = seq
    mask = np.zeros((seq_len,), np.float32)
    mask[len(prompt) - 1:len(seq) - 1] = 1.0  # position j predicts token j + 1
    return {"tokens": ids, "loss_mask": mask, "truncated": np.int32(truncated)}


class SFTRows:
    """Encoded rows of a split (memoised), from ``data.path`` or generated in memory."""

    def __init__(self, cfg, split: str):
        data = cfg.data
        if data.path:
            self.rows = SP.read_jsonl(Path(data.path) / f"{split}.jsonl")
        else:
            n = data.num_sessions if split == "train" else data.num_eval_sessions
            self.rows = SP.dyadic_samples(n, data.per_session, split=split, frames=data.session_frames,
                                          world_seed=data.world_seed, traj_fps=data.traj_fps)
        self.tokens = _Tokens(data.tokenizer)
        self.seq_len = data.seq_len
        self._memo: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index not in self._memo:
            self._memo[index] = encode_row(self.rows[index], self.tokens, self.seq_len)
        return self._memo[index]


def build_model(cfg, rngs: nnx.Rngs) -> DecoderLM:
    check_config(cfg)
    model = DecoderLM(cfg.model.net, dtype=dtype_of(cfg.train.compute_dtype),
                      param_dtype=dtype_of(cfg.train.param_dtype), remat=cfg.train.remat, rngs=rngs)
    if cfg.model.init_from:
        from avatarjax.checkpoint.convert import load_converted

        pre, pre_cfg, _ = load_converted(cfg.model.init_from)
        if pre_cfg != cfg.model.net:
            raise ConfigError(f"model.init_from '{cfg.model.init_from}' holds a decoder with {pre_cfg}, which differs "
                              "from model.net: copy its config into model.net")
        nnx.update(model, nnx.state(pre, nnx.Param))
    return model


def loss(model: DecoderLM, batch, key, step):
    del key, step
    tokens, mask = batch["tokens"], batch["loss_mask"]
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return jnp.sum(nll * mask) / count, {"target_accuracy": jnp.sum(correct * mask) / count,
                                         "target_tokens": count / tokens.shape[0]}


def dataset(cfg, split: str, process_index: int = 0, process_count: int = 1):
    source = SFTRows(cfg, split)
    train = split == "train"
    return pipeline.batched(source, batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train,
                            num_epochs=None if train else 1, process_index=process_index,
                            process_count=process_count)


def flops_per_example(cfg) -> float:
    return decoder_lm_flops_per_sequence(cfg.model.net, cfg.data.seq_len)


def example_batch(cfg, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = cfg.data.seq_len
    return {"tokens": rng.integers(0, min(cfg.model.net.vocab_size, 256), (batch_size, n + 1), dtype=np.int32),
            "loss_mask": np.ones((batch_size, n), np.float32), "truncated": np.zeros((batch_size,), np.int32)}


PLANNER_SFT_TASK = Task(name="planner_sft", model_config=PlannerSFTModelConfig, data_config=PlannerSFTDataConfig,
                        build_model=build_model, loss=loss, dataset=dataset, flops_per_example=flops_per_example,
                        example_batch=example_batch)


def generate_plan(model: DecoderLM, cfg, row: dict, max_new_tokens: int = 256) -> str:
    """Greedy reply of a byte-level planner model to a row's prompt (for checking a fine-tuned tiny model)."""
    from avatarjax.models.decoder_lm import generate

    tokens = _Tokens(cfg.data.tokenizer)
    prompt = tokens.prompt(SP.sft_messages(row))[-(cfg.data.seq_len - max_new_tokens):]
    ids = jnp.asarray(np.asarray(prompt, np.int32)[None])
    out = generate(model, ids, jnp.ones_like(ids), max_new_tokens, eos_token_id=[tokens.eos], pad_token_id=tokens.pad)
    toks = np.asarray(out.tokens)[0, :int(np.asarray(out.lengths)[0])]
    if tokens.tok is not None:
        return tokens.tok.decode(toks.tolist(), skip_special_tokens=True)
    return bytes(int(t) for t in toks if 0 < t < 256).decode("utf-8", "replace")
