"""tfds Beam builders: every dataset build is an Apache Beam pipeline writing ArrayRecord shards.

A :class:`BeamBuilder` lists its clips cheaply in the driver (:meth:`BeamBuilder.scan`: a manifest of picklable
clip descriptors per split, with every raw-layout problem collected), then ``_generate_examples`` returns the
pipeline ``Create(descriptors) | Reshuffle | FlatMap(processor)``: the expensive per-clip work (decoding,
resampling, face detection, cropping, feature extraction) runs in Beam workers, so it parallelises on one machine
and on a cluster alike. TensorFlow is not needed (tfds writes ArrayRecord through ``array_record``).

Runners (:func:`pipeline_options`): without ``--runner`` in ``beam_options`` a build runs on Beam's DirectRunner,
with ``--direct_running_mode=multi_processing --direct_num_workers=N`` for ``workers`` N > 1 (fresh worker
processes: processors and hooks must be importable from the installed package, never from ``__main__``) and
in-process for N = 1. Any other runner is chosen through ``beam_options``, e.g.
``--runner=SparkRunner --spark_master_url=spark://HOST:7077`` or ``--runner=FlinkRunner
--flink_master=HOST:8081 --environment_type=LOOPBACK``.

:func:`build` is the one entry point: it checks the raw layout (one ``DataError`` listing every problem, before
anything is written), builds into a hidden temporary directory beside the target and moves the finished dataset
into place only when every split succeeded, so a failed or interrupted build never leaves a partial split.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from avatarjax.errors import DataError

KeyRecord = tuple[str, dict[str, Any]]
Processor = Callable[[dict], Iterable[KeyRecord]]


def pipeline_options(beam_options: str | list[str] = "", workers: int = 0):
    """Beam ``PipelineOptions`` from a command-line style string (or list) of options.

    Without ``--runner`` this is the DirectRunner: ``workers`` > 1 worker processes
    (``multi_processing``), or in-process for ``workers`` = 1; 0 means one process per CPU core. Options given
    in ``beam_options`` win over these defaults.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    args = shlex.split(beam_options) if isinstance(beam_options, str) else list(beam_options)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        workers = workers or os.cpu_count() or 1
        mode = "multi_processing" if workers > 1 else "in_memory"
        args = ["--runner=DirectRunner", f"--direct_running_mode={mode}", f"--direct_num_workers={workers}",
                "--default_sdk_harness_log_level=WARNING", *args]
    return PipelineOptions(args)


class Problems:
    """Collects raw-layout problems (file, what is wrong) and raises them as one ``DataError``."""

    def __init__(self, dataset: str, root: Path | None):
        self.dataset, self.root = dataset, root
        self.items: list[tuple[str, str]] = []

    def add(self, path: str | Path, problem: str) -> None:
        self.items.append((self._rel(path), problem))

    def _rel(self, path: str | Path) -> str:
        if self.root is None:
            return str(path)
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def require(self, path: Path, what: str) -> bool:
        """True when ``path`` exists; else records it as missing."""
        if path.exists():
            return True
        self.add(path, f"missing {what}")
        return False

    def raise_if_any(self, fix: str, limit: int = 20) -> None:
        if not self.items:
            return
        shown = "\n".join(f"  - {path}: {problem}" for path, problem in self.items[:limit])
        more = f"\n  ... and {len(self.items) - limit} more" if len(self.items) > limit else ""
        where = f" under '{self.root}'" if self.root else ""
        raise DataError(f"{self.dataset}: {len(self.items)} problem(s) in the raw data{where}; nothing was written:"
                        f"\n{shown}{more}\nfix: {fix}")


class _FlatMapProcessor:
    """Calls a processor and counts clips and records in Beam metrics (visible in any runner's UI)."""

    def __init__(self, processor: Processor, name: str):
        self.processor, self.name = processor, name

    def __call__(self, descriptor: dict) -> Iterable[KeyRecord]:
        import apache_beam as beam

        beam.metrics.Metrics.counter(self.name, "clips").inc()
        for key, record in self.processor(descriptor):
            beam.metrics.Metrics.counter(self.name, "records").inc()
            yield key, record


class BeamBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the avatarjax dataset builders.

    Subclasses define ``VERSION``, ``BUILDER_CONFIGS`` (or are built with a config), and:

    - ``features() -> dict``: the tfds feature dict of one record;
    - ``scan(root: Path | None) -> dict[split, list[descriptor]]``: the clips of each split from the raw layout
      (``root`` is the manual dir), raising one ``DataError`` through :class:`Problems` when anything is
      missing or malformed; descriptors are small picklable dicts (paths as strings, metadata);
    - ``processor() -> fn(descriptor) -> iterable of (key, record)``: a picklable callable (a module-level class
      instance) doing the expensive work; it runs in Beam workers.
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the raw dataset folder with --manual_dir (its layout: the builder's docs)."

    @property
    def options(self):
        """The builder config's options (each builder's ``*Options`` dataclass)."""
        return self.builder_config.options

    def features(self) -> dict:
        raise NotImplementedError

    def scan(self, root: Path | None) -> dict[str, list[dict]]:
        raise NotImplementedError

    def processor(self) -> Processor:
        raise NotImplementedError

    def manifest(self, root: Path | None) -> dict[str, list[dict]]:
        """``scan(root)`` once per builder (the driver-side check; cached)."""
        cached = getattr(self, "_manifest", None)
        if cached is None or cached[0] != root:
            splits = self.scan(root)
            if not any(splits.values()):
                raise DataError(f"{self.name}: no clips found under '{root}': check --manual_dir against the "
                                f"layout in docs/datasets.md")
            self._manifest = (root, splits)
        return self._manifest[1]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=(type(self).__doc__ or "").split("\n\n")[0],
                                     features=tfds.features.FeaturesDict(self.features()))

    def _split_generators(self, dl_manager):
        root = Path(dl_manager._manual_dir) if getattr(dl_manager, "_manual_dir", None) else None
        return {split: self._generate_examples(clips) for split, clips in self.manifest(root).items() if clips}

    def _generate_examples(self, clips: list[dict]):
        import apache_beam as beam

        return (beam.Create(clips)
                | "Spread" >> beam.Reshuffle()  # one clip per work item, so every worker gets clips
                | "Process" >> beam.FlatMap(_FlatMapProcessor(self.processor(), self.name)))


def _dataset_dir(builder: tfds.core.DatasetBuilder, data_dir: Path) -> Path:
    return data_dir / Path(builder.data_dir).relative_to(Path(builder._data_dir_root))


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """directory: ``DATA_DIR/NAME/CONFIG/VERSION``; records: per split; reused: an existing build was kept;
    notes: what the scan reported besides errors (e.g. clips listed in metadata but absent)."""

    directory: Path
    records: dict[str, int]
    reused: bool
    notes: dict[str, Any]


def build(builder_cls: type[BeamBuilder], config: tfds.core.BuilderConfig, *, data_dir: str | Path,
          manual_dir: str | Path | None = None, beam_options: str | list[str] = "", workers: int = 0,
          overwrite: bool = False) -> BuildResult:
    """Check the raw layout, build every split with Beam and move the dataset into place. An existing complete
    build (same options, hence same config name) is reused unless ``overwrite``."""
    data_dir = Path(data_dir).absolute()
    root = None
    if manual_dir is not None:
        root = Path(manual_dir).absolute()
        if not root.is_dir():
            raise DataError(f"--manual_dir '{manual_dir}' is not a directory: pass the folder holding the raw "
                            f"{builder_cls.name} download")
    probe = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
    final = _dataset_dir(probe, data_dir)
    if (final / "dataset_info.json").exists() and not overwrite:
        return BuildResult(final, _records(builder_cls, config, data_dir), True, {})
    manifest = probe.manifest(root)  # raises before anything is written
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{builder_cls.name}.building.", dir=data_dir))
    try:
        builder = builder_cls(config=config, data_dir=str(tmp), file_format="array_record")
        builder._manifest = (root, manifest)
        download_config = tfds.download.DownloadConfig(
            manual_dir=str(root) if root else None, beam_options=pipeline_options(beam_options, workers),
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
        builder.download_and_prepare(download_dir=str(tmp / "downloads"), download_config=download_config)
        built = Path(builder.data_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        built.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(final, _records(builder_cls, config, data_dir), False, dict(getattr(probe, "notes", {})))


def _records(builder_cls: type[BeamBuilder], config: tfds.core.BuilderConfig, data_dir: Path) -> dict[str, int]:
    builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
    return {name: int(split.num_examples) for name, split in builder.info.splits.items()}


def load_source(builder_cls: type[BeamBuilder], config: tfds.core.BuilderConfig, data_dir: str | Path,
                split: str, build_hint: str):
    """Random-access source (len, getitem -> record dict) of a built split; a clear error when missing."""
    builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
    if not Path(builder.data_dir, "dataset_info.json").exists():
        raise DataError(f"no {builder_cls.name} dataset '{config.name}' under '{data_dir}': build it with "
                        f"`{build_hint}`")
    splits = list(builder.info.splits.keys())
    if split not in splits:
        raise DataError(f"{builder_cls.name} '{config.name}' has no split '{split}': it has {', '.join(splits)}")
    return builder.as_data_source(split=split)
