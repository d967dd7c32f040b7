"""Converting Hugging Face checkpoints (a local directory) into avatarjax models, and loading them back.

A converter states which files it needs, how to read the Hugging Face ``config.json`` into our config dataclass,
how to build our module, and how Hugging Face tensor names map to our parameter paths (``"a/b/c"``, stacked on a
leading layer axis for scanned stacks). Everything else is shared:

- ``from_pretrained(name, hf_dir)``: build our model and load the weights straight from safetensors;
- ``convert(name, hf_dir, out_dir)`` / ``avatarjax convert NAME --from HF_DIR --to ORBAX_DIR``: the same, saved as
  an Orbax checkpoint plus ``avatarjax_model.json`` (converter name and our config), loaded by ``load_converted``.

Nothing is downloaded: a missing directory or file fails naming the files expected and where they come from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.atomic import atomic_dir
from avatarjax.errors import CheckpointError

META_FILE = "avatarjax_model.json"


@dataclasses.dataclass(frozen=True)
class Converter:
    """How to turn one Hugging Face architecture into ours.

    name: registry name (``avatarjax convert NAME``).
    config_type: our (flat, frozen) config dataclass.
    source: where users get the directory (shown in errors), e.g. ``"openai/clip-vit-large-patch14 on the Hub"``.
    config_from_hf: HF ``config.json`` dict -> our config dataclass.
    build: (our config, rngs, dtype, param_dtype) -> nnx.Module.
    map_weights: (HF tensors by name, our config) -> {our parameter path "a/b/c": array}.
    extra_files: files besides config.json and the weights that must exist (e.g. tokenizer files).
    weights_name: the safetensors file stem: ``"model"`` (transformers) or ``"diffusion_pytorch_model"``
        (diffusers); sharded checkpoints use ``<stem>.safetensors.index.json``.
    read_checkpoint: for checkpoints that are not a Hugging Face directory (e.g. one official ``.pth`` file):
        path -> (config dict for ``config_from_hf``, tensors by name); when set it replaces reading
        ``config.json`` and safetensors.
    """

    name: str
    config_type: type
    source: str
    config_from_hf: Callable[[dict], Any]
    build: Callable[..., nnx.Module]
    map_weights: Callable[[dict[str, np.ndarray], Any], dict[str, np.ndarray]]
    extra_files: tuple[str, ...] = ()
    weights_name: str = "model"
    read_checkpoint: Callable[[Path], tuple[dict, dict[str, np.ndarray]]] | None = None


def _expected(converter: Converter) -> str:
    if converter.read_checkpoint is not None:
        return f"the checkpoint from {converter.source}"
    stem = converter.weights_name
    files = ["config.json", f"{stem}.safetensors (or {stem}.safetensors.index.json with its shards)",
             *converter.extra_files]
    return f"{', '.join(files)} (from {converter.source}, saved with save_pretrained)"


def read_hf_config(hf_dir: str | Path, converter: Converter) -> dict:
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError(f"checkpoint directory '{hf_dir}' does not exist: it must hold {_expected(converter)}")
    missing = [f for f in ("config.json", *converter.extra_files) if not (hf_dir / f).exists()]
    if missing:
        raise CheckpointError(f"'{hf_dir}' lacks {', '.join(missing)}: it must hold {_expected(converter)}")
    try:
        return json.loads((hf_dir / "config.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"'{hf_dir / 'config.json'}' is not valid JSON: {err}") from err


def read_safetensors(hf_dir: str | Path, converter: Converter | None = None) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, as float32/int numpy arrays."""
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    stem = converter.weights_name if converter else "model"
    single = hf_dir / f"{stem}.safetensors"
    index = hf_dir / f"{stem}.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [hf_dir / s for s in shards]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"'{hf_dir}' lacks the shards {', '.join(missing)} named in {index.name}")
    else:
        hint = " It holds pytorch_model.bin: re-save it with save_pretrained(..., safe_serialization=True)." \
            if (hf_dir / "pytorch_model.bin").exists() else ""
        expected = _expected(converter) if converter else f"{stem}.safetensors"
        raise CheckpointError(f"no safetensors weights in '{hf_dir}': it must hold {expected}.{hint}")
    from tqdm.auto import tqdm

    tensors: dict[str, np.ndarray] = {}
    for f in tqdm(files, desc="read shards", unit="file", disable=None if len(files) > 1 else True):
        try:
            loaded = _load_safetensors_any_dtype(f, load_file)
        except Exception as err:
            raise CheckpointError(f"'{f}' cannot be read ({type(err).__name__}: {err}): it may be truncated; "
                                  "copy it again") from err
        tensors.update(loaded)
    return tensors


def _load_safetensors_any_dtype(path: Path, load_file) -> dict[str, np.ndarray]:
    """numpy has no bfloat16: read bf16 tensors through ml_dtypes and widen them to float32."""
    try:
        return {k: np.asarray(v) for k, v in load_file(str(path)).items()}
    except (TypeError, ValueError):
        import ml_dtypes
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="flax") as f:
            for key in f.keys():
                value = np.asarray(f.get_tensor(key))  # read once
                out[key] = value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
        return out


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Our parameters by ``"a/b/c"`` path."""
    return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_into(model: nnx.Module, weights: dict[str, np.ndarray], *, what: str = "checkpoint") -> None:
    """Assign every parameter of ``model`` from ``weights`` (by path), checking names and shapes both ways."""
    params = param_paths(model)
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"the {what} does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}: is it the right architecture "
            "and config?")
    for path, var in params.items():
        value = np.asarray(weights[path])
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(f"parameter {path}: the {what} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(var.shape)}: the config does not match the weights")
        dtype = var.get_value().dtype  # the value may be abstract (ShapeDtypeStruct) before loading
        var.set_value(jax.device_put(value.astype(dtype), _target_sharding(var)))


def _target_sharding(var: nnx.Variable):
    """Where a loaded parameter goes: its logical sharding under the active mesh and rules, else device 0."""
    from flax.core import spmd as core_spmd

    from avatarjax.parallel.mesh import logical_to_spec

    mesh = jax.sharding.get_mesh()  # the concrete mesh of jax.set_mesh (device_put needs devices)
    rules = core_spmd.get_logical_axis_rules()
    logical = var.get_metadata().get("out_sharding")
    if mesh is None or mesh.empty or not rules or not logical:
        return None
    return jax.sharding.NamedSharding(mesh, logical_to_spec(logical, rules))


def build_abstract(converter: Converter, cfg: Any, *, dtype=jnp.float32, param_dtype=jnp.float32) -> nnx.Module:
    """Our module with shapes only (no random init, no memory): loading then fills every parameter once, so the
    peak is one copy of the weights. Built without eager sharding; ``load_into`` places arrays by the active
    mesh and rules."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: converter.build(cfg, nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))


def _check_materialised(model: nnx.Module, converter: Converter) -> None:
    abstract = [("/".join(map(str, p))) for p, v in nnx.to_flat_state(nnx.state(model))
                if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:
        raise CheckpointError(f"converter '{converter.name}' left {abstract[:4]} without values: its model has "
                              "state besides parameters that loading does not fill")


def from_pretrained(converter: Converter, hf_dir: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(our model with the Hugging Face weights, our config), straight from a local directory. Under
    ``jax.set_mesh`` + ``nnx.logical_axis_rules`` the parameters are placed sharded."""
    if converter.read_checkpoint is not None:
        raw_config, tensors = converter.read_checkpoint(Path(hf_dir))
    else:
        raw_config, tensors = read_hf_config(hf_dir, converter), read_safetensors(hf_dir, converter)
    cfg = converter.config_from_hf(raw_config)
    weights = converter.map_weights(tensors, cfg)
    model = build_abstract(converter, cfg, dtype=dtype, param_dtype=param_dtype)
    load_into(model, weights, what=f"checkpoint in '{hf_dir}'")
    _check_materialised(model, converter)
    return model, cfg


def convert(converter: Converter, hf_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Convert to an Orbax checkpoint in ``out_dir`` (written beside it first, then moved into place)."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"'{out_dir}' already exists and is not empty: choose a new --to or pass --overwrite")
    model, cfg = from_pretrained(converter, hf_dir)
    with atomic_dir(out_dir) as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "params", nnx.state(model, nnx.Param))
        checkpointer.wait_until_finished()
        meta = {"converter": converter.name, "config": dataclasses.asdict(cfg), "source": str(Path(hf_dir).absolute())}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def load_converted(out_dir: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """(model, config, converter name) from a directory written by ``convert``."""
    import orbax.checkpoint as ocp

    from avatarjax.registry import CONVERTERS

    out_dir = Path(out_dir).absolute()
    meta_path = out_dir / META_FILE
    if not meta_path.exists():
        raise CheckpointError(f"'{out_dir}' is not a converted checkpoint (no {META_FILE}): create it with "
                              "`avatarjax convert NAME --from HF_DIR --to DIR`")
    meta = json.loads(meta_path.read_text())
    converter: Converter = CONVERTERS.get(meta["converter"])
    cfg = converter.config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    model = build_abstract(converter, cfg, dtype=dtype, param_dtype=param_dtype)
    target = nnx.state(model, nnx.Param)  # abstract; give every leaf the sharding it should be restored onto
    for _, var in nnx.to_flat_state(target):
        sds = var.get_value()
        sharding = _target_sharding(var) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        var.set_value(jax.ShapeDtypeStruct(sds.shape, sds.dtype, sharding=sharding))
    try:
        restored = ocp.StandardCheckpointer().restore(out_dir / "params", target)
    except Exception as err:
        raise CheckpointError(f"converted checkpoint '{out_dir}' cannot be restored ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}): convert it again") from err
    nnx.update(model, restored)
    _check_materialised(model, converter)
    return model, cfg, meta["converter"]



def convert_command(name: str, argv: list[str]) -> dict:
    """``avatarjax convert NAME --from HF_DIR --to ORBAX_DIR [--overwrite]``."""
    from avatarjax.registry import CONVERTERS

    converter: Converter = CONVERTERS.get(name)
    p = argparse.ArgumentParser(prog=f"avatarjax convert {name}")
    p.add_argument("--from", dest="src", required=True, help=f"directory with {_expected(converter)}")
    p.add_argument("--to", dest="dst", required=True, help="output directory (Orbax)")
    p.add_argument("--overwrite", action="store_true")
    ns = p.parse_args(argv)
    out = convert(converter, ns.src, ns.dst, overwrite=ns.overwrite)
    model, cfg, _ = load_converted(out)
    count = sum(int(np.prod(v.shape)) for v in param_paths(model).values())
    return {"converter": name, "from": str(Path(ns.src).absolute()), "to": str(out), "params": count}
