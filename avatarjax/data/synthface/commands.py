"""``avatarjax data build|preview|info synthface`` and ``avatarjax bench data``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from avatarjax.config import dataclass_from_overrides
from avatarjax.data.commands import DatasetCommands
from avatarjax.data.synthface.records import ProceduralSource, WorldConfig, decode_frames, text_field


def _split_config(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return rest, overrides


def build(argv: list[str]) -> dict:
    """Build the tfds dataset with Beam: ``--data_dir DIR [--workers N] [--beam_options OPTS]
    [--config.num_clips=...]``."""
    rest, overrides = _split_config(argv)
    p = argparse.ArgumentParser(prog="avatarjax data build synthface")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workers", type=int, default=0, help="local Beam worker processes (0: one per core)")
    p.add_argument("--beam_options", default="",
                   help="Beam pipeline options, e.g. '--runner=FlinkRunner --flink_master=HOST:8081' (default: "
                        "DirectRunner with --workers processes)")
    ns = p.parse_args(rest)
    world = dataclass_from_overrides(WorldConfig, overrides)
    from avatarjax.data.synthface.builder import build as build_dataset, load_source

    t0 = time.perf_counter()
    directory = build_dataset(ns.data_dir, world, ns.workers, ns.beam_options)
    seconds = time.perf_counter() - t0
    sizes = {split: len(load_source(ns.data_dir, world, split)) for split in ("train", "eval")}
    return {"dataset": str(directory), "config": world.name(), "clips": sizes, "seconds": round(seconds, 1),
            "use_with": f"--config.data.data_dir={ns.data_dir} --config.data.num_clips={world.num_clips}"}


def _records(data_dir: str, world: WorldConfig, split: str, count: int):
    if data_dir:
        from avatarjax.data.synthface.builder import load_source

        src = load_source(data_dir, world, split)
    else:
        src = ProceduralSource(world, split)
    return [src[i] for i in range(min(count, len(src)))]


def preview(argv: list[str]) -> dict:
    """Contact sheets of rendered frames with keypoints drawn over them, one PNG per clip."""
    rest, overrides = _split_config(argv)
    p = argparse.ArgumentParser(prog="avatarjax data preview synthface")
    p.add_argument("--out", default="outputs/synthface_preview")
    p.add_argument("--data_dir", default="", help="a built dataset; empty generates clips on the fly")
    p.add_argument("--split", default="train")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=16, help="frames per sheet, evenly spaced over the clip")
    p.add_argument("--size", type=int, default=128)
    ns = p.parse_args(rest)
    world = dataclass_from_overrides(WorldConfig, overrides)
    from avatarjax.data.synthface import identity as identity_lib
    from avatarjax.data.synthface.render import contact_sheet, render_frames

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, record in enumerate(_records(ns.data_dir, world, ns.split, ns.clips)):
        length = record["state"].shape[0]
        idx = np.linspace(0, length - 1, min(ns.frames, length)).round().astype(int)
        if "frames" in record and world.frame_size == ns.size:
            frames = decode_frames([record["frames"][i] for i in idx])
        else:
            ident = identity_lib.Identity.from_vector(np.asarray(record["identity_vector"]))
            frames = render_frames(ident, record["state"][idx], size=ns.size)
        path = out / f"clip{n:02d}_{text_field(record['kind'])}_{text_field(record['label'])}.png"
        contact_sheet(frames, record["keypoints"][idx], path=str(path))
        written.append({"png": str(path.absolute()), "frames": length, "label": text_field(record["label"]),
                        "instruction": json.loads(record["instructions"])[0]})
    return {"out": str(out.absolute()), "sheets": written}


def info(argv: list[str]) -> dict:
    rest, overrides = _split_config(argv)
    p = argparse.ArgumentParser(prog="avatarjax data info synthface")
    p.add_argument("--data_dir", default="")
    ns = p.parse_args(rest)
    world = dataclass_from_overrides(WorldConfig, overrides)
    out = {"config": world.name()}
    for split in ("train", "eval"):
        records = _records(ns.data_dir, world, split, 10**9) if ns.data_dir else None
        if records is None:
            out[split] = {"clips": len(ProceduralSource(world, split))}
            continue
        labels: dict[str, int] = {}
        for r in records:
            labels[text_field(r["label"])] = labels.get(text_field(r["label"]), 0) + 1
        out[split] = {"clips": len(records), "frames": int(sum(r["state"].shape[0] for r in records)),
                      "labels": labels}
    return out


SYNTHFACE_COMMANDS = DatasetCommands(build=build, preview=preview, info=info)


def _build_dyadic(argv: list[str]) -> dict:
    from avatarjax.data.synthface.react_export import build as build_dyadic

    return build_dyadic(argv)


DYADIC_COMMANDS = DatasetCommands(build=_build_dyadic)


def _loader_rate(data_cfg, batch_size: int, batches: int) -> float:
    from avatarjax.data.synthface.loader import dataset

    iterator = iter(dataset(data_cfg, split="train", batch_size=batch_size, seed=0))
    for _ in range(max(2, data_cfg.workers * data_cfg.prefetch)):  # start-up and buffer fill are not throughput
        next(iterator)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - t0)


def bench_data(argv: list[str]) -> dict:
    """Clips/s from the grain loader with 0, 1 and 2 workers, against the time of one training step."""
    import dataclasses

    rest, overrides = _split_config(argv)
    p = argparse.ArgumentParser(prog="avatarjax bench data")
    p.add_argument("--data_dir", default="")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--step_config", default="configs/lm/synthface_small.py",
                   help="the training step the loader must keep fed")
    ns = p.parse_args(rest)
    from avatarjax.data.synthface.loader import SynthfaceDataConfig

    base = dataclass_from_overrides(SynthfaceDataConfig, overrides)
    base = dataclasses.replace(base, data_dir=ns.data_dir or base.data_dir)
    rates = {}
    for workers in [int(w) for w in ns.workers.split(",")]:
        cfg = dataclasses.replace(base, workers=workers)
        rates[f"workers={workers}"] = _loader_rate(cfg, ns.batch_size, ns.batches)
    from avatarjax.config import load_config
    from avatarjax.profiling.report import profile_train_step

    step_cfg = load_config(ns.step_config, ["--config.log.progress=false"])
    step_s = profile_train_step(step_cfg, steps=3)["step_s_median"]
    needed = ns.batch_size / step_s
    best = max(rates.values())
    return {"clips_per_sec": rates, "batch_size": ns.batch_size, "window": base.window,
            "frame_size": base.frame_size, "source": base.data_dir or "procedural",
            "train_step_s": step_s, "step_config": ns.step_config, "clips_per_sec_needed": needed,
            "keeps_step_fed": best >= needed}
