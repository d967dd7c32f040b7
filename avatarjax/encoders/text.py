"""Shared pieces of the text encoders (CLIP text, BERT/MiniLM): activations by Hugging Face name, the MLP, masks,
pooling, tokenizer loading and padding to fixed shapes, tensor lookup for converters, and a jitted forward.

A *text encoder* in avatarjax is any object with ``dim`` and ``encode(texts) -> float32 [N, dim]`` (see
:class:`TextEncoder`); :func:`avatarjax.encoders.bert.default_text_encoder` is the packaged default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.errors import CheckpointError, ConfigError
from avatarjax.nn.linear import Dense
from avatarjax.nn.mlp import gelu_erf
from avatarjax.parallel.mesh import constrain


@runtime_checkable
class TextEncoder(Protocol):
    """What conditioning code needs from a sentence encoder."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # float32 [len(texts), dim]
        ...


# --------------------------------------------------------------------------------------------------- activations

def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


HF_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_erf,  # exact (erf) GELU, torch's formula
    "gelu_python": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def hf_config(parse: Callable[[], Any], what: str):
    """``parse()`` (a transformers config class reading a ``config.json`` dict), its validation errors re-raised
    as a ConfigError naming the model."""
    try:
        return parse()
    except Exception as err:  # transformers / huggingface_hub validation errors share no base but Exception
        reason = str(err).strip().splitlines()[-1].strip()[:300]
        raise ConfigError(f"the {what} config.json is invalid: {reason}") from err


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation a Hugging Face ``hidden_act`` names."""
    if name not in HF_ACTIVATIONS:
        raise ConfigError(f"hidden_act '{name}' is not supported by avatarjax's text encoders: use one of "
                          f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[name]


class TextMLP(nnx.Module):
    """``fc2(act(fc1(x)))`` with an activation named as Hugging Face names it: ``[..., dim]`` -> ``[..., dim]``."""

    def __init__(self, dim: int, hidden: int, *, activation_name: str, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.activation_name = activation_name
        self.fc1 = Dense(dim, hidden, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(hidden, dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = activation(self.activation_name)(self.fc1(x))
        h = constrain(h, ("batch", "length", "act_mlp"))
        return self.fc2(h)


def table(rows: int, dim: int, *, param_dtype, rngs: nnx.Rngs, stddev: float = 0.02) -> nnx.Param:
    """A small embedding table (positions, token types): rows replicated, ``dim`` on ``embed``."""
    init = nnx.initializers.normal(stddev=stddev)
    return nnx.Param(init(rngs.params(), (rows, dim), param_dtype), out_sharding=(None, "embed"))


# ----------------------------------------------------------------------------------------------- masks, pooling

def key_mask(mask: jax.Array | None) -> jax.Array | None:
    """Padding mask ``[batch, length]`` (1 = token) -> attention mask ``[batch, 1, 1, length]`` (True = attend)."""
    return None if mask is None else (mask != 0)[:, None, None, :]


def attend_masked(attn, x: jax.Array, *, mask: jax.Array | None, causal: bool) -> jax.Array:
    """``attn(x)`` (an :class:`avatarjax.nn.attention.Attention`) under a padding mask ``[batch, length]`` and
    optionally the causal mask.

    A query that may attend to no key at all (left padding under the causal mask, an all-padding row) gets a zero
    attention output before the output projection, as PyTorch's SDPA (transformers' default) does, instead of the
    uniform average a plain masked softmax gives.
    """
    out = attn(x, causal=causal, mask=key_mask(mask))
    if mask is None:
        return out
    valid = mask != 0
    has_key = (jnp.cumsum(valid, axis=-1) > 0) if causal else jnp.any(valid, axis=-1, keepdims=True)
    empty = attn.o_proj.bias[...].astype(out.dtype) if attn.o_proj.bias is not None else jnp.zeros((), out.dtype)
    return jnp.where(has_key[..., None], out, empty)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the tokens of ``hidden`` ``[batch, length, dim]`` where ``mask`` ``[batch, length]`` is 1
    (sentence-transformers' ``pooling_mode_mean_tokens``: the count is clamped at 1e-9)."""
    m = mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return summed / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` over the last dim (``torch.nn.functional.normalize``)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------------------------------- tokenizers

def load_tokenizer(directory: str | Path, *, loader: Callable[[str], Any], required: Sequence[str],
                   what: str, source: str, alternatives: Sequence[str] = ()):
    """``loader(directory)`` (e.g. ``CLIPTokenizer.from_pretrained`` with ``local_files_only``) after checking that
    the directory and its files exist; fails naming the expected files and where they come from.

    ``alternatives``: files any one of which replaces ``required`` (e.g. a fast ``tokenizer.json``).
    """
    directory = Path(directory)
    expected = f"{' and '.join(required)}" + (f" (or {' / '.join(alternatives)})" if alternatives else "")
    if not directory.is_dir():
        raise CheckpointError(f"{what} tokenizer directory '{directory}' does not exist: it must hold {expected} "
                              f"(from {source})")
    missing = [f for f in required if not (directory / f).exists()]
    if missing and not any((directory / f).exists() for f in alternatives):
        raise CheckpointError(f"'{directory}' lacks {', '.join(missing)}: a {what} tokenizer directory must hold "
                              f"{expected} (from {source}, saved with save_pretrained)")
    try:
        return loader(str(directory))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"the {what} tokenizer in '{directory}' cannot be loaded ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}): it must hold {expected} (from {source})") from err


def pad_batch(sequences: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (and cut) token id lists to ``length``: (ids int32 ``[N, length]``, mask int32 ``[N, length]``)."""
    ids = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), np.int32)
    for i, seq in enumerate(sequences):
        seq = list(seq)[:length]
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = 1
    return ids, mask


def tokenize(tokenizer, texts: Sequence[str] | str, max_length: int, *, pad_id: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize (special tokens added, truncated to ``max_length``) and right-pad to exactly ``max_length``:
    (ids int32 ``[N, max_length]``, mask int32 ``[N, max_length]``) — fixed shapes for jit."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    return pad_batch(enc["input_ids"], max_length, 0 if pad is None else int(pad))


def bucket(n: int, *, minimum: int, maximum: int) -> int:
    """The next power of two >= ``n`` within [minimum, maximum] (few distinct shapes -> few compilations)."""
    size = minimum
    while size < n:
        size *= 2
    return min(size, maximum)


# ------------------------------------------------------------------------------------------ building, forward

def build_module(make: Callable[[], nnx.Module]) -> nnx.Module:
    """``make()`` with parameters created sharded under ``jax.set_mesh`` + ``nnx.logical_axis_rules``, and as plain
    single-device arrays outside any mesh (the logical axes stay as metadata either way)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        with nnx.use_eager_sharding(False):
            return make()
    return make()


def jit_forward(model: nnx.Module, method: str = "__call__") -> Callable[..., Any]:
    """A ``jax.jit`` of ``model.method(*args, **kwargs)`` that closes over the split parameters once (no per-call
    graph traversal as with ``nnx.jit``). The model must not be mutated afterwards."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *args, **kwargs):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)

    return lambda *args, **kwargs: run(state, *args, **kwargs)


# ------------------------------------------------------------------------------------------- weight conversion

def take(tensors: dict[str, np.ndarray], name: str, what: str) -> np.ndarray:
    """``tensors[name]`` or a CheckpointError naming the missing Hugging Face tensor."""
    if name not in tensors:
        leaf = name.rsplit(".", 1)[-1]
        near = sorted(k for k in tensors if k.endswith("." + leaf))[:3]
        raise CheckpointError(f"the {what} checkpoint has no tensor '{name}'"
                              + (f" (it has e.g. {near})" if near else "")
                              + ": is it the right architecture and config?")
    return np.asarray(tensors[name])


def linear(weight: np.ndarray, in_shape: tuple[int, ...] | None = None, out_shape: tuple[int, ...] | None = None
           ) -> np.ndarray:
    """torch ``nn.Linear`` weight ``[out, in]`` -> our Dense kernel ``[*in_shape, *out_shape]``."""
    k = np.asarray(weight).T
    return k.reshape(tuple(in_shape or (k.shape[0],)) + tuple(out_shape or (k.shape[1],)))


def stacked(tensors: dict[str, np.ndarray], pattern: str, num_layers: int, what: str,
            fn: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> np.ndarray:
    """``fn`` of each layer's tensor (``pattern`` with ``{i}``), stacked on a leading layers axis."""
    return np.stack([fn(take(tensors, pattern.format(i=i), what)) for i in range(num_layers)])


def strip_prefix(tensors: dict[str, np.ndarray], marker: str, prefixes: Sequence[str], what: str
                 ) -> dict[str, np.ndarray]:
    """The tensors under the first prefix in ``prefixes`` for which ``prefix + marker`` exists, prefix removed."""
    for prefix in prefixes:
        if prefix + marker in tensors:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    raise CheckpointError(f"the checkpoint holds no {what} weights: expected a tensor named "
                          f"{' or '.join(repr(p + marker) for p in prefixes)}; it has e.g. {sorted(tensors)[:5]}")


def random_padded_batch(batch: int, length: int, *, bos: int, eos: int, low: int, high: int, pad: int = 0,
                        min_len: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random rows of lengths in ``[min_len, length]``: ``bos``, ids from ``[low, high)``, ``eos``, then ``pad``.

    Returns (ids int32 [batch, length], mask int32 [batch, length]); for benchmarks and tests.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, length + 1, batch)
    ids = np.full((batch, length), pad, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = bos, rng.integers(low, high, n - 2), eos
        mask[i, :n] = 1
    return ids, mask
