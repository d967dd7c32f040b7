"""``avatarjax bench encoders``: each encoder's forward time against its PyTorch reference at the same small size,
as a ratio measured in one run on this machine.

Each encoder module defines ``benchmark_cases() -> list[BenchCase]``: two zero-argument callables computing the
same output from the same weights and inputs (ours jitted, the reference in PyTorch eager, no grad), built on a
tiny random checkpoint written with ``save_pretrained`` and converted with our converter.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax

from avatarjax.bench import harness

ENCODER_MODULES = ("avatarjax.encoders.clip_text", "avatarjax.encoders.bert", "avatarjax.encoders.wav2vec2",
                   "avatarjax.encoders.umt5", "avatarjax.encoders.qwen2")


@dataclasses.dataclass
class BenchCase:
    name: str
    ours: Callable[[], Any]
    reference: Callable[[], Any]
    note: str = ""
    per: int = 1  # units per call (e.g. generated tokens), for a per-unit time
    unit: str = "call"


def _time(fn: Callable[[], Any], repeats: int) -> float:
    return harness.median_seconds(fn, repeats)


def bench_encoders(args: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="avatarjax bench encoders")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats")
    ns = p.parse_args(args)
    if ns.quick:
        ns.repeats = 2
    import torch

    if ns.threads:
        torch.set_num_threads(ns.threads)
    only = {n for n in ns.only.split(",") if n}
    results = {}
    for module_name in ENCODER_MODULES:
        try:
            cases = importlib.import_module(module_name).benchmark_cases()
        except Exception as err:  # one broken encoder must not hide the others' numbers
            results[module_name.rsplit(".", 1)[1]] = {"error": f"{type(err).__name__}: {err}"}
            continue
        for case in cases:
            if only and case.name not in only:
                continue
            with torch.inference_mode():
                ref_s = _time(case.reference, ns.repeats)
            ours_s = _time(case.ours, ns.repeats)
            results[case.name] = {"ours_ms": ours_s * 1e3, "pytorch_ms": ref_s * 1e3,
                                  "speedup_vs_pytorch": ref_s / ours_s, "note": case.note}
            if case.per > 1:
                results[case.name].update({f"ours_ms_per_{case.unit}": ours_s * 1e3 / case.per,
                                           f"pytorch_ms_per_{case.unit}": ref_s * 1e3 / case.per})
    summary = [harness.row(f"encoder {name}", ratio=r.get("speedup_vs_pytorch"), train_ms_ours=r.get("ours_ms"),
                           train_ms_ref=r.get("pytorch_ms"), reference="transformers" if "ours_ms" in r else None,
                           status="failed" if "error" in r else None,
                           note=r.get("error") or f"forward only (frozen encoder). {r.get('note', '')}".strip())
               for name, r in results.items()]
    return {"summary": summary, "device": str(jax.devices()[0]), "torch_threads": torch.get_num_threads(),
            "cases": results,
            "goal": "speedup_vs_pytorch >= 1 for forwards; >= 2 for the Qwen2 decode step"}
