"""Trained models out of a run: load for inference from a workdir or an export, and export to a small portable
directory.

An export holds ``model.safetensors`` (every model variable: parameters, EMA parameters when the run kept an
EMA, and non-parameter state such as BatchNorm statistics, by ``a/b/c`` path), ``config.json`` (the run's full
config) and ``export.json`` (task, step, source). It carries no optimizer state, so it is about a third of a
checkpoint (half again in float16): the form a repository or a notebook ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.atomic import atomic_dir
from avatarjax.config import Config, config_from_dict, load_workdir_config
from avatarjax.errors import CheckpointError
from avatarjax.train.state import jit_init

WEIGHTS_FILE = "model.safetensors"
META_FILE = "export.json"
CONFIG_FILE = "config.json"


def _build_abstract(cfg: Config):
    from avatarjax.registry import TASKS

    task = TASKS.get(cfg.task)
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: task.build_model(cfg, nnx.Rngs(0)))


def _flat(state) -> dict[str, nnx.Variable]:
    return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def fresh_model(cfg, seed: int = 0, init: str = "model") -> nnx.Module:
    """A freshly initialised model of ``cfg``: ``init='model'`` runs its own initialisers (one compiled program,
    not one eager program per parameter shape); ``'normal'`` fills every float parameter with N(0, 0.05) from
    numpy (no compilation at all: for quick tests, notebooks and latency benchmarks). UNTRAINED weights."""
    from avatarjax.registry import TASKS

    build = lambda: TASKS.get(cfg.task).build_model(cfg, nnx.Rngs(seed))  # noqa: E731
    with nnx.use_eager_sharding(False):
        graphdef, abstract = nnx.split(nnx.eval_shape(build))
        if init == "model":
            return nnx.merge(graphdef, jit_init(lambda: nnx.split(build())[1])())
    rng = np.random.default_rng(seed)

    def fill(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(rng.normal(0.0, 0.05, x.shape), x.dtype)
        return jnp.zeros(x.shape, x.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, abstract))


def is_export(path: str | Path) -> bool:
    return (Path(path) / META_FILE).exists()


def load_model(path: str | Path, *, step: int | None = None, use_ema: bool = True,
               overrides: list[str] | tuple[str, ...] = (), cfg: Config | None = None) -> tuple[nnx.Module, Config]:
    """(model ready for inference, its config) from a training workdir (latest or ``step`` checkpoint; the EMA
    parameters when the run kept them and ``use_ema``) or from an export directory. ``cfg`` replaces the saved
    config (it must build the same model); ``overrides`` apply to the saved one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist: pass a training --workdir or an export directory")
    if is_export(path):
        return _load_export(path, overrides, cfg)
    if not (path / "checkpoints").is_dir():
        raise CheckpointError(f"'{path}' is neither a training workdir (no checkpoints/) nor an export (no "
                              f"{META_FILE}): pass the --workdir of an `avatarjax train` run or an `avatarjax export` "
                              "directory")
    cfg = cfg or load_workdir_config(path, list(overrides))
    return _load_workdir(path, cfg, step, use_ema), cfg


def _load_workdir(workdir: Path, cfg: Config, step: int | None, use_ema: bool) -> nnx.Module:
    from avatarjax.checkpoint.manager import CheckpointManager
    from avatarjax.registry import TASKS
    from avatarjax.train import optim, state as state_lib

    task = TASKS.get(cfg.task)
    tx, _ = optim.make_optimizer(cfg.optim, cfg.train.steps)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    build = lambda rngs: task.build_model(cfg, rngs)
    with nnx.use_eager_sharding(False):
        graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param, ...)
        abstract = jax.eval_shape(state_lib.make_init_fn(build, tx, cfg.train.ema_decay > 0), jax.random.key(0))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    manager = CheckpointManager(workdir / "checkpoints", async_save=False)
    try:
        _, restored = manager.restore(step, target)
    finally:
        manager.close()
    params = restored.ema if (use_ema and restored.ema is not None) else restored.params
    return nnx.merge(graphdef, params, restored.rest)


def _load_export(directory: Path, overrides, cfg: Config | None) -> tuple[nnx.Module, Config]:
    from safetensors.numpy import load_file

    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
        weights = load_file(str(directory / WEIGHTS_FILE))
    except Exception as err:
        raise CheckpointError(f"export '{directory}' cannot be read ({type(err).__name__}: {err}): export it again "
                              "with `avatarjax export`") from err
    from avatarjax.config import apply_overrides, parse_overrides

    cfg = cfg or config_from_dict(apply_overrides(raw, parse_overrides(list(overrides))))
    model = _build_abstract(cfg)
    variables = _flat(nnx.state(model))
    missing = sorted(set(variables) - set(weights))
    if missing:
        raise CheckpointError(f"export '{directory}' lacks {missing[:6]}: it was written for another model or "
                              "config; export the run again")
    for name, var in variables.items():
        want = var.get_value()
        value = weights[name]
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(f"export '{directory}': {name} has shape {value.shape}, the config builds "
                                  f"{tuple(want.shape)}: the config does not match the weights")
        var.set_value(jnp.asarray(value.astype(want.dtype)))
    return model, cfg


def export_model(workdir: str | Path, out: str | Path, *, step: int | None = None, dtype: str = "float32",
                 use_ema: bool = True, overwrite: bool = False, overrides: list[str] | tuple[str, ...] = ()
                 ) -> dict[str, Any]:
    """Write the export of ``workdir``'s checkpoint to ``out`` (built beside it, then moved into place)."""
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:  # fail before loading anything
        raise CheckpointError(f"'{out}' already exists and is not empty: choose a new --out or pass --overwrite")
    model, cfg = load_model(workdir, step=step, use_ema=use_ema, overrides=overrides)
    from avatarjax.checkpoint.manager import saved_steps

    chosen = step if step is not None else saved_steps(Path(workdir) / "checkpoints")[-1]
    return save_export(model, cfg, out, step=int(chosen), source=str(Path(workdir).absolute()), dtype=dtype,
                       ema=bool(use_ema and cfg.train.ema_decay > 0), overwrite=overwrite)


def save_export(model: nnx.Module, cfg: Config, out: str | Path, *, step: int = 0, source: str = "",
                dtype: str = "float32", ema: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write ``model`` (built by ``cfg``'s task) as an export directory ``out``."""
    from safetensors.numpy import save_file

    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"'{out}' already exists and is not empty: choose a new --out or pass --overwrite")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CheckpointError(f"export dtype must be float32, float16 or bfloat16, got '{dtype}'")
    store = np.dtype(jnp.dtype(dtype))
    weights = {}
    for name, var in _flat(nnx.state(model)).items():
        value = np.asarray(var.get_value())
        weights[name] = value.astype(store) if np.issubdtype(value.dtype, np.floating) else value
    meta = {"task": cfg.task, "step": int(step), "source": source, "dtype": dtype, "ema": ema}
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(cfg.to_json())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    size = (out / WEIGHTS_FILE).stat().st_size
    return {**meta, "out": str(out), "bytes": size}
