"""``avatarjax data build|info NAME`` for the real-dataset Beam builders (mead, hdtf, react2024,
talking_folders, cc_v1).

``--config.KEY=VALUE`` overrides set fields of the dataset's options dataclass (e.g. ``--config.prep.size=512``,
``--config.prep.crop=pfl``, ``--config.eval_identities="('M003',)"``); the options decide the build's config
name, so builds with different options live side by side under ``DATA_DIR/NAME/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from pathlib import Path

from avatarjax.config import dataclass_from_overrides
from avatarjax.data.commands import DatasetCommands

# name -> (builder class, options class)
BUILDERS = {
    "mead": ("avatarjax.data.tfds.mead:Mead", "avatarjax.data.tfds.mead:MeadOptions"),
    "hdtf": ("avatarjax.data.tfds.hdtf:Hdtf", "avatarjax.data.tfds.hdtf:HdtfOptions"),
    "react2024": ("avatarjax.data.tfds.react:React2024", "avatarjax.data.tfds.react:ReactOptions"),
    "talking_folders": ("avatarjax.data.tfds.folders:TalkingFolders", "avatarjax.data.tfds.folders:FolderOptions"),
    "cc_v1": ("avatarjax.data.tfds.folders:CcV1", "avatarjax.data.tfds.folders:CcOptions"),
}


def _load(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def builder_and_config(name: str, options=None, overrides: list[str] = ()):
    """The builder class and its config for ``options`` (default: the defaults plus ``overrides``)."""
    from avatarjax.data.tfds.common import config_for

    builder_spec, options_spec = BUILDERS[name]
    options = options if options is not None else dataclass_from_overrides(_load(options_spec), list(overrides))
    return _load(builder_spec), config_for(options)


def build_dataset(name: str, *, manual_dir: str | Path, data_dir: str | Path, options=None,
                  beam_options: str = "", workers: int = 0, overwrite: bool = False):
    """Python entry point of ``avatarjax data build NAME``; returns a ``beam.BuildResult``."""
    from avatarjax.data.tfds.beam import build

    builder_cls, config = builder_and_config(name, options)
    return build(builder_cls, config, data_dir=data_dir, manual_dir=manual_dir, beam_options=beam_options,
                 workers=workers, overwrite=overwrite)


def load_source(name: str, data_dir: str | Path, split: str, options=None):
    """Random-access source of a built split (``len``, ``[i]`` -> record dict), e.g. for a grain pipeline."""
    from avatarjax.data.tfds.beam import load_source as load

    builder_cls, config = builder_and_config(name, options)
    return load(builder_cls, config, data_dir, split,
                f"avatarjax data build {name} --manual_dir RAW --data_dir {data_dir} (with the same --config.*)")


def _split_config(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return rest, overrides


def _commands(name: str) -> DatasetCommands:
    def build(argv: list[str]) -> dict:
        rest, overrides = _split_config(argv)
        builder_cls, _ = builder_and_config(name)
        p = argparse.ArgumentParser(prog=f"avatarjax data build {name}",
                                    description=(builder_cls.__module__ and
                                                 importlib.import_module(builder_cls.__module__).__doc__),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--manual_dir", required=True, help="the raw download (layout: see above)")
        p.add_argument("--data_dir", required=True, help="where the ArrayRecord dataset is written")
        p.add_argument("--beam_options", default="",
                       help="Beam pipeline options, e.g. '--runner=FlinkRunner --flink_master=HOST:8081' (default: "
                            "DirectRunner with --workers processes)")
        p.add_argument("--workers", type=int, default=0, help="local worker processes (0: one per core)")
        p.add_argument("--overwrite", action="store_true", help="rebuild even if this config was built")
        ns = p.parse_args(rest)
        _, config = builder_and_config(name, overrides=overrides)
        t0 = time.perf_counter()
        result = build_dataset(name, manual_dir=ns.manual_dir, data_dir=ns.data_dir, options=config.options,
                               beam_options=ns.beam_options, workers=ns.workers, overwrite=ns.overwrite)
        return {"dataset": str(result.directory), "config": config.name, "records": result.records,
                "reused": result.reused, "seconds": round(time.perf_counter() - t0, 1), **result.notes,
                "options": dataclasses.asdict(config.options)}

    def info(argv: list[str]) -> dict:
        rest, overrides = _split_config(argv)
        p = argparse.ArgumentParser(prog=f"avatarjax data info {name}")
        p.add_argument("--data_dir", required=True)
        ns = p.parse_args(rest)
        _, config = builder_and_config(name, overrides=overrides)
        out = {"config": config.name, "splits": {}}
        root = Path(ns.data_dir) / _load(BUILDERS[name][0]).name
        out["built_configs"] = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        builder_cls, _ = builder_and_config(name, config.options)
        builder = builder_cls(config=config, data_dir=str(ns.data_dir), file_format="array_record")
        if Path(builder.data_dir, "dataset_info.json").exists():
            out["splits"] = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
        return out

    return DatasetCommands(build=build, info=info)


MEAD_COMMANDS = _commands("mead")
HDTF_COMMANDS = _commands("hdtf")
REACT2024_COMMANDS = _commands("react2024")
TALKING_FOLDERS_COMMANDS = _commands("talking_folders")
CC_V1_COMMANDS = _commands("cc_v1")
