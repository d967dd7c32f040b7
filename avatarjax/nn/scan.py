"""Scanned layer stacks: create N identical layers with one stacked parameter set, run them with ``lax.scan``.

Scanning compiles one layer instead of N (compile time independent of depth); the remat policy decides which
activations are saved for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def create_stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """``num_layers`` layers built by ``make_layer`` whose parameters are stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
        return make_layer(layer_rngs)

    return create(rngs)


def run_stacked(layers: nnx.Module, body: Callable[[nnx.Module, Any, Any], Any], carry: Any, per_layer: Any = None,
                *, remat: str = "none", write_back: bool = True) -> Any:
    """Run ``carry = body(layer, carry, per_layer_slice)`` over the stacked layers with ``lax.scan``.

    ``per_layer`` is a pytree with a leading layers axis (e.g. per-layer dropout keys) or None. Non-parameter
    state that layers update (e.g. batch statistics) is written back after the scan unless ``write_back`` is False
    (inference inside another transform, e.g. a sampler's scan, must not mutate the module).
    """
    graphdef, params, rest = nnx.split(layers, nnx.Param, ...)

    def step(carry, xs):
        layer_params, layer_rest, extra = xs
        layer = nnx.merge(graphdef, layer_params, layer_rest)
        carry = body(layer, carry, extra)
        _, _, new_rest = nnx.split(layer, nnx.Param, ...)
        return carry, new_rest

    policy = REMAT_POLICIES[remat]
    if remat != "none":
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    carry, new_rest = jax.lax.scan(step, carry, (params, rest, per_layer))
    if write_back:
        nnx.update(layers, new_rest)
    return carry
