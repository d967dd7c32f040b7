"""Logical-axis rule presets: logical names used in model code -> mesh axes.

Parameters and activations carry logical names; the rules, chosen in config (``mesh.rules``, plus
``mesh.rules_override``), decide which mesh axes shard them. Parameter names and activation names are separate
(``embed`` vs ``act_embed``) so that FSDP can shard weights along ``embed`` over ``fsdp`` while activations keep
their batch dimension on ``fsdp``.

Logical names in use:
- parameters: ``embed``, ``mlp``, ``heads``, ``kv_heads``, ``head_dim``, ``vocab``, ``layers``, ``channels``,
  ``conv_in``, ``conv_out``, ``kernel``, ``norm`` (``WHERE_DIVISIBLE`` names those sharded only where they divide),
  ``features`` (the non-model side of a Dense projection to or from pixels, patches or CNN features: its other
  dim is ``embed``, so it must never share ``embed``'s mesh axis; no preset maps it)
- activations: ``batch``, ``length``, ``frames``, ``height``, ``width``, ``act_embed``, ``act_mlp``,
  ``act_heads``, ``act_kv_heads``, ``act_vocab``, ``act_channels``
"""

from __future__ import annotations

from collections.abc import Sequence

MeshAxes = tuple[str, ...] | str | None
Rules = tuple[tuple[str, MeshAxes], ...]

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

LOGICAL_AXES = (
    # parameters
    "embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers", "channels", "conv_in", "conv_out",
    "kernel", "norm", "codebooks", "latent", "features",
    # activations
    "batch", "length", "sequence", "kv_length", "frames", "height", "width", "act_embed", "act_mlp", "act_heads",
    "act_kv_heads", "act_head_dim", "act_vocab", "act_channels",
)

_BATCH = ("batch", ("data", "fsdp"))

PRESETS: dict[str, Rules] = {
    # Pure data parallelism: weights replicated, batch over every data-like axis.
    "dp": (_BATCH,),
    # ZeRO-3 style: weights sharded along their embed dimension (convolutions: their output channels) over fsdp,
    # gathered per layer by XLA.
    "fsdp": (_BATCH, ("embed", "fsdp"), ("conv_out", "fsdp")),
    # FSDP plus Megatron-style tensor parallelism over heads / mlp / vocab.
    "fsdp_tp": (
        _BATCH,
        ("embed", "fsdp"),
        ("conv_out", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("vocab", "tensor"),
        ("channels", "tensor"),
        ("act_mlp", "tensor"),
        ("act_heads", "tensor"),
        ("act_kv_heads", "tensor"),
        ("act_vocab", "tensor"),
        ("act_channels", "tensor"),
    ),
}
# Sequence (context) parallelism on top of FSDP + TP: long token / frame axes over `sequence`.
# `sequence` names the video-token axis of the DiT, `length` the text/audio token axes.
PRESETS["fsdp_tp_sp"] = PRESETS["fsdp_tp"] + (("length", "sequence"), ("sequence", "sequence"),
                                              ("frames", "sequence"))
PRESETS["sp"] = PRESETS["fsdp_tp_sp"]


# Parameter axes sharded only where they divide: convolution channel counts include 3 (RGB) and small latent
# widths that no mesh divides, and a replicated 3-channel output conv costs nothing. Any other axis that does not
# divide is an error naming the parameter (``mesh.check_divisible``).
WHERE_DIVISIBLE = frozenset({"conv_in", "conv_out"})


def resolve(preset: str, override: Sequence[tuple[str, MeshAxes]] = ()) -> Rules:
    """Complete rules: every logical name of ``LOGICAL_AXES`` (replicated unless the preset or ``override``
    maps it), with ``override`` entries replacing or adding names. Flax passes unmapped names through as mesh
    axis names, so completeness matters."""
    rules: dict[str, MeshAxes] = {name: None for name in LOGICAL_AXES}
    rules.update(PRESETS[preset])
    for name, axes in override:
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes) if axes else None
        rules[name] = axes or None
    return tuple(rules.items())


def mesh_axes_of(logical: str | None, rules: Rules) -> tuple[str, ...]:
    """The mesh axes a logical name maps to (empty when replicated)."""
    if logical is None:
        return ()
    for name, axes in rules:
        if name == logical:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    return ()
