"""Configs: load ``configs/*.py`` files, apply ``--config.a.b=value`` overrides, validate into typed dataclasses.

A config file defines ``get_config() -> ml_collections.ConfigDict``. The shared sections (``train``, ``optim``,
``mesh``, ``checkpoint``, ``log``, ``profile``, ``eval``) have fixed schemas below; ``model``, ``data`` and
``sample`` are typed by the task named in ``task`` (see :mod:`avatarjax.registry`). Every key is checked: an unknown
key fails with its full dotted name and the nearest valid key.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from avatarjax.errors import ConfigError, nearest


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes. ``-1`` on one axis fills the remaining devices. ``dcn_*`` multiply across slices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    sequence: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    rules: str = "fsdp"  # a preset in avatarjax.parallel.rules.PRESETS
    rules_override: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ((logical_name, (mesh axes...)), ...)
    # Attention kernel for every attend() call (avatarjax.nn.attention_kernels): model (each model's own
    # `attention` key) | auto | xla | cudnn | splash | chunked | ring | ulysses (ring/ulysses shard over `sequence`).
    attention: str = "model"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False
    schedule: str = "constant"  # constant | cosine | inverse_sqrt | linear
    warmup_steps: int = 0
    decay_steps: int = 0  # cosine/linear horizon; 0 means train.steps
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # global-norm clip; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # global batch, split over the data and fsdp mesh axes
    grad_accum: int = 1  # micro-batches per step; batch_size must divide by it
    compute_dtype: str = "float32"  # float32 | bfloat16 (params and optimizer state stay param_dtype)
    param_dtype: str = "float32"
    ema_decay: float = 0.0  # 0 disables the parameter EMA
    remat: str = "none"  # none | full | dots | dots_no_batch (policy for scanned layer stacks)
    nan_check: bool = True  # skip non-finite updates on device and abort naming the step


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500
    keep: int = 3
    async_save: bool = True
    restore_step: int = -1  # -1 resumes from the latest checkpoint in the workdir


@dataclasses.dataclass(frozen=True)
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    progress: bool = True
    plots: bool = True  # PNG loss curves / metric groups in WORKDIR/plots at the end of training


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    start_step: int = -1  # first step of the trace window; -1 disables tracing
    num_steps: int = 3


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 0  # 0 disables periodic evaluation during training
    batches: int = 4


@dataclasses.dataclass(frozen=True)
class EmptySection:
    """For tasks that have no ``sample`` options."""


@dataclasses.dataclass(frozen=True)
class Config:
    task: str
    model: Any
    data: Any
    seed: int = 0
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()
    profile: ProfileConfig = ProfileConfig()
    eval: EvalConfig = EvalConfig()
    sample: Any = EmptySection()
    # Where this config's trained model lives (a training workdir or an export): `avatarjax sample --config` and
    # `avatarjax eval --config` use it when no --checkpoint is given.
    weights: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _task_schema(task_name: str) -> dict[str, type]:
    from avatarjax.registry import TASKS

    task = TASKS.get(task_name)
    return {
        "model": task.model_config,
        "data": task.data_config,
        "sample": getattr(task, "sample_config", None) or EmptySection,
    }


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if hasattr(value, "to_dict"):  # ConfigDict
        return _to_plain(value.to_dict())
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against ``annotation`` (int, float, bool, str, tuple[...], dataclass), converting lists."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            value = _to_plain(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{path}' must be a section (a dict of keys), got {value!r}")
        return _build(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"config key '{path}' must be a list or tuple, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"config key '{path}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{path}' must be a string, got {value!r}")
    return value


def _build(cls: type, mapping: Mapping[str, Any], path: str, schema: dict[str, type] | None = None) -> Any:
    hints = _section_types(cls)
    if schema:
        hints = {**hints, **schema}
    names = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in names:
            full = f"{path}.{key}" if path else key
            best = nearest(key, names)
            hint = f"the nearest valid key is '{path + '.' if path else ''}{best}'" if best else (
                "valid keys here: " + ", ".join(names))
            raise ConfigError(f"unknown config key '{full}': {hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        full = f"{path}.{f.name}" if path else f.name
        if f.name in mapping:
            kwargs[f.name] = _coerce(mapping[f.name], hints[f.name], full)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = _coerce({}, hints[f.name], full)
            else:
                raise ConfigError(f"config key '{full}' is required but missing: set it in the config file")
        elif dataclasses.is_dataclass(hints[f.name]) and schema and f.name in schema:
            kwargs[f.name] = _coerce({}, hints[f.name], full)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section '{path or 'root'}' is invalid: {err}") from err


def config_from_dict(mapping: Mapping[str, Any]) -> Config:
    """Validate a plain nested dict (e.g. a ConfigDict's ``to_dict()`` or a saved config.json) into a Config."""
    mapping = _to_plain(mapping)
    if "task" not in mapping:
        raise ConfigError("config key 'task' is required: name the system to train, e.g. task='lm'")
    try:
        schema = _task_schema(mapping["task"])
    except Exception as err:  # unknown task: surface the registry's hint
        raise ConfigError(str(err)) from err
    cfg = _build(Config, mapping, "", schema)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that the schema alone cannot express."""
    t = cfg.train
    if t.steps < 0:
        raise ConfigError(f"train.steps must be >= 0, got {t.steps}")
    if t.batch_size <= 0:
        raise ConfigError(f"train.batch_size must be positive, got {t.batch_size}")
    if t.grad_accum <= 0 or t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must divide by train.grad_accum={t.grad_accum}: "
            "change one of them")
    for key in ("compute_dtype", "param_dtype"):
        if getattr(t, key) not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"train.{key} must be float32, bfloat16 or float16, got '{getattr(t, key)}'")
    if t.remat not in ("none", "full", "dots", "dots_no_batch"):
        raise ConfigError(f"train.remat must be one of none, full, dots, dots_no_batch; got '{t.remat}'")
    if cfg.optim.name not in ("adamw", "adam", "sgd"):
        raise ConfigError(f"optim.name must be adamw, adam or sgd; got '{cfg.optim.name}'")
    if cfg.optim.schedule not in ("constant", "cosine", "inverse_sqrt", "linear"):
        raise ConfigError(
            f"optim.schedule must be constant, cosine, inverse_sqrt or linear; got '{cfg.optim.schedule}'")
    if cfg.checkpoint.every <= 0 or cfg.log.every <= 0:
        raise ConfigError("checkpoint.every and log.every must be positive")
    if cfg.checkpoint.keep <= 0:
        raise ConfigError("checkpoint.keep must be positive (how many checkpoints to keep)")
    from avatarjax.nn.attention_kernels import CONFIG_CHOICES

    if cfg.mesh.attention not in CONFIG_CHOICES:
        best = nearest(cfg.mesh.attention, CONFIG_CHOICES)
        raise ConfigError(f"unknown mesh.attention '{cfg.mesh.attention}': "
                          + (f"did you mean '{best}'? " if best else "") + "choose one of " + ", ".join(CONFIG_CHOICES))
    from avatarjax.parallel.rules import PRESETS

    if cfg.mesh.rules not in PRESETS:
        best = nearest(cfg.mesh.rules, PRESETS)
        raise ConfigError(f"unknown mesh.rules preset '{cfg.mesh.rules}': "
                          + (f"did you mean '{best}'?" if best else "choose one of " + ", ".join(PRESETS)))


# ---------------------------------------------------------------------------------------------------------------
# Loading files and overrides


def _load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist: pass --config configs/<system>/<variant>.py")
    spec = importlib.util.spec_from_file_location(f"avatarjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"config file '{path}' failed to load: {type(err).__name__}: {err}") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' has no get_config() function: define one returning a ConfigDict")
    return _to_plain(module.get_config())


def sibling_config(this_file: str | Path, name: str):
    """The ``ConfigDict`` of the config file ``name`` beside ``this_file``, for a config that is another plus a few
    changes: ``c = sibling_config(__file__, "synthface_tiny.py"); c.task = "ppo"; ...``."""
    import ml_collections

    return ml_collections.ConfigDict(_load_file(Path(this_file).parent / name))


def _schema_paths(cls: type, prefix: str, schema: dict[str, type] | None = None) -> dict[str, Any]:
    """Every valid dotted key of a dataclass schema -> its annotation."""
    hints = _section_types(cls)
    if schema:
        hints = {**hints, **schema}
    out = {}
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        ann = hints[f.name]
        if dataclasses.is_dataclass(ann):
            out.update(_schema_paths(ann, full + "."))
        else:
            out[full] = ann
    return out


def _parse_value(text: str, annotation: Any) -> Any:
    if annotation is str:
        return text
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _set_dotted(mapping: dict[str, Any], key: str, value: Any) -> None:
    """``mapping['a']['b'] = value`` for ``key='a.b'``, creating sections as needed."""
    node = mapping
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """``['--config.a.b=1', 'x.y=2']`` -> ``[('a.b', '1'), ('x.y', '2')]``."""
    out = []
    for arg in args:
        text = arg[len("--config."):] if arg.startswith("--config.") else arg
        if "=" not in text:
            raise ConfigError(f"override '{arg}' needs a value: write --config.{text}=VALUE")
        key, value = text.split("=", 1)
        out.append((key.strip(), value))
    return out


def apply_overrides(mapping: dict[str, Any], overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Set dotted keys in a nested dict, checking each key against the full schema (including the task's)."""
    mapping = json.loads(json.dumps(mapping))  # deep copy of plain data
    for key, text in overrides:  # the task decides the schema of model/data/sample, so apply it first
        if key == "task":
            mapping["task"] = text
    try:
        schema = _task_schema(mapping.get("task", ""))
    except Exception as err:
        raise ConfigError(str(err)) from err
    valid = _schema_paths(Config, "", schema)
    for key, text in overrides:
        if key == "task":
            continue
        if key not in valid:
            best = nearest(key, valid)
            hint = f"the nearest valid key is '{best}'" if best else "check the config file for valid keys"
            raise ConfigError(f"unknown config key '{key}': {hint}")
        _set_dotted(mapping, key, _parse_value(text, valid[key]))
    return mapping


def dataclass_from_overrides(cls: type, overrides: Sequence[str], prefix: str = "config") -> Any:
    """Build a flat-or-nested dataclass from ``--config.key=value`` strings, with nearest-key errors."""
    valid = _schema_paths(cls, "")
    mapping: dict[str, Any] = {}
    for key, text in parse_overrides(overrides):
        if key not in valid:
            best = nearest(key, valid)
            hint = f"the nearest valid key is '{prefix}.{best}'" if best else "valid keys: " + ", ".join(valid)
            raise ConfigError(f"unknown config key '{prefix}.{key}': {hint}")
        _set_dotted(mapping, key, _parse_value(text, valid[key]))
    return _build(cls, mapping, prefix)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a config file, apply ``--config.a.b=value`` overrides and validate it."""
    mapping = _load_file(path)
    mapping = apply_overrides(mapping, parse_overrides(overrides))
    return config_from_dict(mapping)


def load_workdir_config(workdir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config a training run saved in ``WORKDIR/config.json``, with overrides applied."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"'{path}' does not exist: pass --config FILE.py, or a --workdir of a training run")
    try:
        mapping = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"'{path}' is not valid JSON ({err}): pass --config FILE.py instead") from err
    return config_from_dict(apply_overrides(mapping, parse_overrides(overrides)))


def dtype_of(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
