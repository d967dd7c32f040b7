"""The ``avatarjax`` command: train | sample | eval | data | convert | bench | profile | export.

Every command that takes a config accepts ``--config FILE.py`` and any number of ``--config.a.b=value``
overrides. Errors the user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatarjax.errors import AvatarError

COMMANDS = ("train", "sample", "eval", "data", "convert", "bench", "profile", "export")

EXAMPLES = {
    "train": ["avatarjax train --config configs/lm/synthface_tiny.py --workdir outputs/lm --config.train.steps=100",
              "avatarjax train --config configs/cogportrait/synthface_small.py --workdir outputs/cogportrait "
              "--config.data.vae=outputs/wan_vae"],
    "sample": ["avatarjax sample --checkpoint assets/instructavatar_small/generator --out outputs/demo/happy.mp4 -- "
               "--portrait outputs/demo/portrait.png --instruction 'talk with a big smile'",
               "avatarjax sample --config configs/cogportrait/synthface_small.py --label drowsiness "
               "--instruction 'look slightly left, then lower the head' --out outputs/cogportrait/drowsy.mp4"],
    "eval": ["avatarjax eval --checkpoint outputs/lm --loss",
             "avatarjax eval --checkpoint outputs/posnet -- --generator outputs/reaction"],
    "data": ["avatarjax data build synthface --data_dir outputs/synthface",
             "avatarjax data preview synthface --out outputs/synthface_preview"],
    "convert": ["avatarjax convert umt5 --from checkpoints/umt5-base --to outputs/umt5"],
    "bench": ["avatarjax bench posnet", "avatarjax bench trainer"],
    "profile": ["avatarjax profile --config configs/lm/synthface_tiny.py --steps 5",
                "avatarjax profile memory --config configs/lm/paper.py --mesh data=2,fsdp=4 --device-kind H100",
                "avatarjax profile sharding --config configs/cogportrait/paper.py --mesh fsdp=4,tensor=2 "
                "--rules fsdp_tp"],
    "export": ["avatarjax export --workdir outputs/lm --out outputs/lm_export --dtype float16"],
}


def _examples(*commands: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for c in commands for line in EXAMPLES[c])


def _help_parser(prog: str, **kw) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"avatarjax {prog}", epilog=_examples(prog),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``--config.a.b=v`` (or ``--config.a.b v``) overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv):
                arg = f"{arg}={argv[i + 1]}"
                i += 1
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _config_parser(prog: str, workdir_required: bool = True, config_required: bool = True) -> argparse.ArgumentParser:
    p = _help_parser(prog)
    p.add_argument("--config", required=config_required,
                   help="configs/<system>/<variant>.py" + ("" if config_required else
                                                           " (default: the run's WORKDIR/config.json)"))
    p.add_argument("--workdir", required=workdir_required, help="run directory (checkpoints, metrics, tb)")
    return p


def _load(ns, overrides):
    from avatarjax.config import load_config, load_workdir_config

    if ns.config is None:
        return load_workdir_config(ns.workdir, overrides)
    return load_config(ns.config, overrides)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_train(argv: list[str]) -> int:
    args, overrides = _split_overrides(argv)
    ns = _config_parser("train").parse_args(args)
    cfg = _load(ns, overrides)
    from avatarjax.train.loop import PREEMPTED_EXIT_CODE, Trainer

    trainer = Trainer(cfg, ns.workdir)
    result = trainer.run()
    if trainer.primary:
        where = Path(ns.workdir).absolute()
        status = "preempted; checkpoint saved, rerun to resume" if result.preempted else "done"
        print(f"train {status} at step {result.step}: loss {result.last_metrics.get('loss', float('nan')):.4f}")
        print(f"workdir: {where}  (checkpoints/, metrics.jsonl, tb/, config.json)")
    return PREEMPTED_EXIT_CODE if result.preempted else 0


def _restored_trainer(ns, overrides):
    """A Trainer and the state of the checkpoint asked for; the caller closes ``trainer.checkpoints``."""
    from avatarjax.checkpoint.manager import saved_steps
    from avatarjax.train.loop import Trainer

    cfg = _load(ns, overrides)
    directory = Path(ns.workdir) / "checkpoints"
    if not saved_steps(directory):
        raise AvatarError(f"no checkpoint in '{directory}': run avatarjax train with this --workdir first")
    trainer = Trainer(cfg, ns.workdir)
    try:
        state = trainer.restore_or_init(None)
    except BaseException:
        trainer.checkpoints.close()
        raise
    return trainer, state


def _wants_help(args: list[str], parser: argparse.ArgumentParser, note: str) -> bool:
    """``-h``/``--help`` before any ``--``: print the usage (the parser has no automatic help because task options
    pass through) and say so."""
    own = args[:args.index("--")] if "--" in args else args
    if "-h" in own or "--help" in own:
        print(parser.format_help().rstrip() + f"\n\n{note}")
        return True
    return False


def _plot_report(report: dict, path: str | None) -> None:
    if path:
        from avatarjax.train.plots import plot_table

        plot_table(report, path)


def cmd_eval(argv: list[str]) -> int:
    """``avatarjax eval --checkpoint W [task options]``: the task's generation metrics when it has them, else (or
    with ``--loss``) the loss on eval batches."""
    args, overrides = _split_overrides(argv)
    p = _help_parser("eval", add_help=False)
    p.add_argument("--config", default=None)
    p.add_argument("--checkpoint", "--workdir", dest="workdir", default=None,
                   help="a training workdir or an export (default: the config's weights)")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--loss", action="store_true", help="report the loss on eval batches")
    p.add_argument("--plot", default=None, help="also write the report as a table PNG here (e.g. report.png)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="the raw parameters, not the EMA")
    if _wants_help(args, p, "task options after -- go to the task's evaluation (e.g. --reader, --clips)"):
        return 0
    ns, task_args = p.parse_known_args(args)
    from avatarjax.registry import TASKS

    if ns.workdir is None:
        ns.workdir = _configured_checkpoint(None, None if ns.config is None else _load(ns, overrides), ns.config)
    task = TASKS.get(_load(ns, overrides).task)
    if task.evaluate is not None and not ns.loss:
        from avatarjax.train.export import load_model

        cfg = None if ns.config is None else _load(ns, overrides)
        model, cfg = load_model(ns.workdir, overrides=overrides, cfg=cfg, use_ema=ns.ema)
        from avatarjax.nn.attention import use_implementation

        with use_implementation(cfg.mesh.attention):  # the attention kernel of mesh.attention, at trace time
            report = task.evaluate(model, cfg, [a for a in task_args if a != "--"], Path(ns.workdir))
        _plot_report(report, ns.plot)
        _print(report)
        return 0
    if task_args:
        raise AvatarError(f"unknown eval options {task_args}")
    trainer, state = _restored_trainer(ns, overrides)
    try:
        metrics = trainer.evaluate(state, ns.batches)
    finally:
        trainer.checkpoints.close()
    report = {"step": int(state.step), **metrics}
    _plot_report(report, ns.plot)
    _print(report)
    return 0


def _configured_checkpoint(checkpoint: str | None, cfg, config_path: str | None) -> str:
    """The checkpoint to use: ``--checkpoint`` when given, else the config's ``weights`` (so that
    ``avatarjax sample --config configs/<system>/<variant>.py ...`` names the model by its config alone)."""
    if checkpoint is not None:
        return checkpoint
    if cfg is None or not cfg.weights:
        where = f"config '{config_path}' sets no weights" if config_path else "no --config was given"
        raise AvatarError(f"no checkpoint given ({where}): pass --checkpoint W (a training workdir or an export) "
                          "or --config.weights=W")
    return cfg.weights


def cmd_sample(argv: list[str]) -> int:
    """``avatarjax sample --checkpoint W|EXPORT [--config FILE] [--out OUT] [task options]``: the task's sampler on
    the trained model (EMA weights when the run kept them). Without ``--checkpoint`` the config's
    ``weights`` names it; task options may follow ``--`` or stand among the command's own."""
    args, overrides = _split_overrides(argv)
    p = _help_parser("sample", add_help=False)
    p.add_argument("--checkpoint", "--workdir", dest="checkpoint", default=None,
                   help="a training workdir or an `avatarjax export` directory (default: the config's "
                        "weights)")
    p.add_argument("--config", default=None, help="config file (default: the one saved with the checkpoint)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="the raw parameters, not the EMA")
    p.add_argument("--out", default=None, help="output file or directory (default: CHECKPOINT/samples)")
    if _wants_help(args, p, "task options after -- go to the task's sampler (e.g. --portrait, --label)"):
        return 0
    ns, task_args = p.parse_known_args(args)
    task_args = [a for a in task_args if a != "--"]
    from avatarjax.registry import TASKS
    from avatarjax.train.export import load_model

    cfg = None if ns.config is None else _load(argparse.Namespace(config=ns.config, workdir=None), overrides)
    ns.checkpoint = _configured_checkpoint(ns.checkpoint, cfg, ns.config)
    model, cfg = load_model(ns.checkpoint, step=ns.step, overrides=overrides, cfg=cfg, use_ema=ns.ema)
    sample = getattr(TASKS.get(cfg.task), "sample", None)
    if sample is None:
        raise AvatarError(f"task '{cfg.task}' has no sampler")
    out = Path(ns.out or Path(ns.checkpoint) / "samples")
    from avatarjax.nn.attention import use_implementation

    with use_implementation(cfg.mesh.attention):  # the attention kernel of mesh.attention, at trace time
        _print(sample(model, cfg, out, task_args, Path(ns.checkpoint)))
    return 0


def cmd_export(argv: list[str]) -> int:
    """``avatarjax export --workdir W --out DIR [--step N] [--dtype float16] [--no-ema] [--overwrite]
    [--config.a.b=v ...]``: overrides change the exported config (e.g. where a shipped model finds its VAE)."""
    argv, overrides = _split_overrides(argv)
    p = _help_parser("export")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--no-ema", dest="ema", action="store_false")
    p.add_argument("--overwrite", action="store_true")
    ns = p.parse_args(argv)
    from avatarjax.train.export import export_model

    _print(export_model(ns.workdir, ns.out, step=ns.step, dtype=ns.dtype, use_ema=ns.ema, overwrite=ns.overwrite,
                        overrides=overrides))
    return 0


def cmd_profile_memory(argv: list[str]) -> int:
    """``avatarjax profile memory --config C --mesh data=2,fsdp=4 [--device-memory GIB | --device-kind KIND]``:
    compile the train step ahead of time for that mesh on fake CPU devices and report per-device bytes."""
    import math

    args, overrides = _split_overrides(argv)
    p = _config_parser("profile", workdir_required=False)
    p.prog = "avatarjax profile memory"
    p.add_argument("--mesh", required=True, help="target mesh, e.g. data=2,fsdp=4 (axes: data, fsdp, tensor, "
                                                 "sequence; unnamed axes are 1)")
    p.add_argument("--rules", default=None, help="rule preset (default: the config's mesh.rules)")
    p.add_argument("--device-memory", dest="device_memory", type=float, default=None, help="GiB per device")
    p.add_argument("--device-kind", dest="device_kind", default=None, help="e.g. H100, H200, A100, 'TPU v5p'")
    p.add_argument("--memory-fraction", dest="memory_fraction", type=float, default=1.0,
                   help="usable share of device memory (JAX on GPU preallocates 0.75 unless "
                        "XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise)")
    ns = p.parse_args(args)
    from avatarjax.profiling import memory

    sizes = memory.parse_mesh(ns.mesh)
    cfg = _load(ns, overrides)  # validate the config before any subprocess
    needed = math.prod(sizes.values())
    if memory.needs_subprocess(needed):
        return memory.run_in_subprocess(argv, needed)
    _print(memory.memory_report(cfg, sizes, rules=ns.rules, device_memory_gib=ns.device_memory,
                                device_kind=ns.device_kind, memory_fraction=ns.memory_fraction))
    return 0


def cmd_profile_sharding(argv: list[str]) -> int:
    """``avatarjax profile sharding --config C --mesh fsdp=4,tensor=2 [--rules PRESET] [--out F.json]``: every
    parameter's PartitionSpec and per-device shard under a preset (abstract: nothing is allocated)."""
    args, overrides = _split_overrides(argv)
    p = _config_parser("profile", workdir_required=False)
    p.prog = "avatarjax profile sharding"
    p.add_argument("--mesh", required=True, help="mesh axis sizes, e.g. data=2,fsdp=2,tensor=2")
    p.add_argument("--rules", default=None, help="rule preset (default: the config's mesh.rules)")
    p.add_argument("--out", default=None, help="write the full dump (one line per parameter) to this JSON file")
    p.add_argument("--limit", type=int, default=20, help="largest parameters to print")
    ns = p.parse_args(args)
    from avatarjax.parallel.rules import PRESETS
    from avatarjax.profiling import memory, sharding

    cfg = _load(ns, overrides)
    preset = ns.rules or cfg.mesh.rules
    if preset not in PRESETS:
        from avatarjax.errors import did_you_mean

        raise AvatarError(f"unknown rule preset '{preset}': {did_you_mean(preset, PRESETS)}")
    dump = sharding.sharding_dump(cfg, preset, memory.parse_mesh(ns.mesh), override=cfg.mesh.rules_override)
    if ns.out:
        sharding.write(dump, ns.out)
    problems = {k: r["problems"] for k, r in dump["params"].items() if "problems" in r}
    _print({k: dump[k] for k in ("task", "preset", "mesh", "summary")} | {"problems": problems,
                                                                           "largest": sharding.table(dump, ns.limit)})
    return 0


def cmd_profile(argv: list[str]) -> int:
    """``avatarjax profile [memory|sharding] --config C ...``: without a subcommand, compile and time a train
    step on this machine's devices (memory, FLOPs, MFU)."""
    if argv and argv[0] in ("memory", "sharding"):
        return {"memory": cmd_profile_memory, "sharding": cmd_profile_sharding}[argv[0]](argv[1:])
    args, overrides = _split_overrides(argv)
    p = _config_parser("profile", workdir_required=False)
    p.add_argument("--steps", type=int, default=5, help="timed steps after compilation")
    p.add_argument("--trace_dir", default=None, help="write a jax.profiler trace of the timed steps here")
    ns = p.parse_args(args)
    cfg = _load(ns, overrides)
    from avatarjax.profiling.report import profile_train_step

    _print(profile_train_step(cfg, steps=ns.steps, trace_dir=ns.trace_dir))
    return 0


DATA_ACTIONS = ("build", "preview", "info", "tokenize")


def cmd_data(argv: list[str]) -> int:
    """``avatarjax data ACTION NAME [options]``."""
    from avatarjax import registry
    from avatarjax.errors import did_you_mean

    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(f"usage: avatarjax data {{{','.join(DATA_ACTIONS)}}} NAME [options]\n"
              f"datasets: {', '.join(registry.DATASETS.names())}\n{_examples('data')}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    action, name = argv[0], argv[1]
    if action not in DATA_ACTIONS:
        raise AvatarError(f"unknown data action '{action}': {did_you_mean(action, DATA_ACTIONS)}")
    fn = getattr(registry.DATASETS.get(name), action, None)
    if fn is None:
        raise AvatarError(f"dataset '{name}' has no '{action}' action")
    result = fn(argv[2:])
    if result is not None:
        _print(result)
    return 0


def cmd_registry(kind: str, argv: list[str]) -> int:
    from avatarjax import registry

    reg = {"convert": registry.CONVERTERS, "bench": registry.BENCHMARKS}[kind]
    if not argv or argv[0] in ("-h", "--help"):
        names = ", ".join(reg.names()) or "none registered yet"
        print(f"usage: avatarjax {kind} NAME [options]\navailable: {names}\n{_examples(kind)}")
        return 0 if argv else 2
    if kind == "convert":
        from avatarjax.checkpoint.convert import convert_command

        result = convert_command(argv[0], argv[1:])
    else:
        result = reg.get(argv[0])(argv[1:])
    if result is not None:
        _print(result)
    return 0


OUTPUT_FLAGS = ("--workdir", "--out", "--to", "--data_dir", "--data-dir")
COMMANDS_LOG = "commands.log"


def _output_dir(argv: list[str]) -> Path | None:
    """Where a command wrote its results: the directory named by its output flag (a file's folder for
    ``--out FILE.ext``)."""
    args = argv[:argv.index("--")] if "--" in argv else argv
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in OUTPUT_FLAGS:
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            if value:
                path = Path(value)
                return path.parent if path.suffix and not path.is_dir() else path
    return None


def record_command(argv: list[str]) -> None:
    """Append the command that just succeeded to ``OUTPUT_DIR/commands.log`` (UTC time, then the shell-quoted
    command), so every output folder says what made it."""
    import datetime
    import shlex

    from avatarjax.parallel import distributed

    directory = _output_dir(argv)
    if directory is None or not directory.is_dir() or not distributed.is_primary():
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        with open(directory / COMMANDS_LOG, "a") as log:
            log.write(f"{stamp}  {shlex.join(['avatarjax', *argv])}\n")
    except OSError:
        pass  # a read-only output (e.g. a shipped export) keeps no log


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: avatarjax {" + ",".join(COMMANDS) + "} --config FILE.py [--config.key=value ...] [...]\n"
              "each command's options: avatarjax COMMAND --help\n" + _examples(*COMMANDS))
        if argv and argv[0] not in ("-h", "--help"):
            from avatarjax.errors import did_you_mean

            print(f"error: unknown command '{argv[0]}': {did_you_mean(argv[0], COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    try:
        from avatarjax.parallel import distributed

        distributed.initialize()
        handlers = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "profile": cmd_profile,
                    "data": cmd_data, "export": cmd_export}
        rc = handlers[command](rest) if command in handlers else cmd_registry(command, rest)
        if rc == 0:
            record_command(argv)
        return rc
    except AvatarError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
