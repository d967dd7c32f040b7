"""Instruction text -> the features a text-conditioned generator attends to, from a frozen text encoder, memoised.

``InstructionFeatures(spec, max_length)(texts)`` returns numpy arrays:

- ``text_pooled`` float32 ``[N, D]``: the sentence embedding (MiniLM: mean-pooled, unit length; CLIP: the
  projected EOS state, as InstructAvatar's emotion branch uses)
- ``text_tokens`` float32 ``[N, L, D]``: last-layer states of all tokens (the motion branch), zero on padding
- ``text_mask`` bool ``[N, L]``

``spec``: ``"minilm"`` (the packaged all-MiniLM-L6-v2, D = 384, the default), ``"clip:DIR"`` (a local Hugging Face
CLIP text model folder, D = the projection size, 768 for ViT-L/14 as released) or ``"bert:DIR"`` (a
sentence-transformers BERT folder). Features are computed once per distinct string and kept (thread-safe), so a
data loader can call this per example: a training run encodes each instruction once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.errors import ConfigError, DataError


class InstructionFeatures:
    def __init__(self, spec: str = "minilm", max_length: int = 32):
        self.spec, self.max_length = spec, int(max_length)
        self._tokenize, self._forward, self.dim = _backend(spec, self.max_length)
        self._memo: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"instruction {text!r} is empty: describe the emotion or motion you want, e.g. "
                                "\"talk happily\" or \"turn your head to the left\"")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            ids, mask = self._tokenize(missing)
            pooled, tokens = (np.asarray(a) for a in self._forward(ids, mask))
            mask = mask.astype(bool)
            tokens = np.where(mask[..., None], tokens, 0.0).astype(np.float32)
            with self._lock:
                for i, text in enumerate(missing):
                    self._memo[text] = (pooled[i].astype(np.float32), tokens[i], mask[i])
        rows = [self._memo[t] for t in texts]
        return {"text_pooled": np.stack([r[0] for r in rows]), "text_tokens": np.stack([r[1] for r in rows]),
                "text_mask": np.stack([r[2] for r in rows])}

    def empty(self, n: int) -> dict[str, np.ndarray]:
        """The null condition (classifier-free guidance): zero features, one valid (zero) token."""
        mask = np.zeros((n, self.max_length), bool)
        mask[:, 0] = True
        return {"text_pooled": np.zeros((n, self.dim), np.float32),
                "text_tokens": np.zeros((n, self.max_length, self.dim), np.float32), "text_mask": mask}


def _padded_batches(forward, batch: int = 8):
    """Run ``forward(ids, mask)`` in fixed-size batches (one compilation) and concatenate."""

    def run(ids: np.ndarray, mask: np.ndarray):
        n = ids.shape[0]
        pad = (-n) % batch
        ids_p = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
        mask_p = np.concatenate([mask, np.ones((pad, mask.shape[1]), mask.dtype)])
        outs = [forward(jnp.asarray(ids_p[i:i + batch]), jnp.asarray(mask_p[i:i + batch]))
                for i in range(0, n + pad, batch)]
        return tuple(np.concatenate([np.asarray(o[k]) for o in outs])[:n] for k in range(2))

    return run


@functools.lru_cache(maxsize=4)
def _backend(spec: str, max_length: int):
    """(tokenize(texts) -> (ids, mask) int32 [N, L], forward(ids, mask) -> (pooled, tokens), dim), cached per
    process so that tasks, pipelines and tests share one loaded encoder."""
    kind, _, path = spec.partition(":")
    if kind in ("minilm", "bert"):
        from avatarjax.encoders import bert

        encoder = bert.default_text_encoder() if kind == "minilm" else bert.load_sentence_encoder(path)
        graphdef, state = nnx.split(encoder.model)
        modes, norm = encoder.pooling, encoder.normalize

        @jax.jit
        def forward(ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask).last_hidden_state
            pooled = bert.pool(hidden, mask, modes)
            return (bert.text.l2_normalize(pooled) if norm else pooled), hidden

        return (lambda texts: encoder.tokenize(texts, max_length)), _padded_batches(forward), encoder.dim
    if kind == "clip":
        from avatarjax.checkpoint.convert import from_pretrained
        from avatarjax.encoders import clip_text

        model, cfg = from_pretrained(clip_text.CONVERTER, path)
        tokenizer = clip_text.load_tokenizer(path)
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(ids, mask):
            out = nnx.merge(graphdef, state)(ids, mask)
            pooled = out.pooled if out.projected is None else out.projected
            return pooled, out.last_hidden_state

        def tokenize(texts):
            return clip_text.text.tokenize(tokenizer, texts, max_length)

        dim = cfg.projection_dim if getattr(cfg, "projection_dim", 0) else cfg.dim
        return tokenize, _padded_batches(forward), dim
    raise ConfigError(f"text encoder '{spec}' is unknown: use 'minilm', 'clip:HF_DIR' or 'bert:SENTENCE_BERT_DIR'")
