"""The docs in docs/*.md stay true to the code: every fenced ``avatarjax ...`` command names a real subcommand and
only options its parser (or its task's / dataset's / benchmark's parser) defines, every config and repository file
path mentioned exists, every relative link resolves, and every registered converter and benchmark is documented.

Commands are parsed, never run: the CLI's own parser is driven through ``avatarjax.cli.main`` with argparse
stopped right after parsing, and options handled by a task, dataset action or benchmark are checked against the
``add_argument`` calls of the module that defines it.
"""

import argparse
import importlib.util
import inspect
import re
import shlex
from pathlib import Path

import pytest

from avatarjax import cli, registry
from avatarjax.config import load_config
from tests.conftest import REPO

DOCS = REPO / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|launch|notebooks|avatarjax|tests|assets)/[\w./-]*\w\.(?:py|sh|md|yaml|"
                       r"sbatch|ipynb|json))")
OPTION_STRING = re.compile(r"add_argument\(\s*((?:[\"'][^\"']+[\"']\s*,\s*)+)")


def fenced_commands(text: str) -> list[str]:
    """``avatarjax ...`` lines of the fenced blocks, backslash continuations joined."""
    commands = []
    for block in FENCE.findall(text):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            line = line.strip().removeprefix("$ ")
            if line.startswith("avatarjax "):
                commands.append(line)
    return commands


def all_commands():
    return [(path.name, command) for path in DOC_FILES for command in fenced_commands(path.read_text())]


def _delegates(source: str) -> list[Path]:
    """Source files of the avatarjax modules that ``source`` imports inside a function (where task entry points
    hand a command over, e.g. ``eval -- --planner`` to ``planning.synthface_planner``)."""
    files = []
    for module in re.findall(r"^[ \t]+from (avatarjax(?:\.\w+)+) import", source, re.MULTILINE):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            files.append(Path(spec.origin))
    return files


def options_in(*objects) -> set[str]:
    """Option strings (``--x``) of every ``add_argument`` call in the source files defining ``objects`` and in the
    modules they delegate to."""
    found = set()
    for obj in objects:
        source = Path(inspect.getsourcefile(obj)).read_text()
        for text in [source] + [f.read_text() for f in _delegates(source)]:
            for group in OPTION_STRING.findall(text):
                found.update(s for s in re.findall(r"[\"']([^\"']+)[\"']", group) if s.startswith("-"))
    return found


def check_options(tokens: list[str], allowed: set[str], what: str) -> None:
    for token in tokens:
        if token == "--" or not token.startswith("-") or token.startswith("--config."):
            continue
        if re.fullmatch(r"-?\d[\d.e+-]*", token):  # a negative number is a value
            continue
        name = token.split("=", 1)[0]
        assert name in allowed, f"{what}: option {name} is not defined (known: {sorted(allowed)})"


class _Parsed(BaseException):
    def __init__(self, namespace, extra):
        super().__init__("parsed")
        self.namespace, self.extra = namespace, extra


def parse_with_cli(argv: list[str], monkeypatch) -> tuple[argparse.Namespace, list[str]]:
    """The namespace and leftover arguments of the CLI's first argparse call for ``argv``; nothing runs after it."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = original(self, args, namespace)
        raise _Parsed(namespace, extra)

    def parse_args(self, args=None, namespace=None):
        namespace, extra = original(self, args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed(namespace, [])

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    try:
        cli.main(argv)
    except _Parsed as parsed:
        return parsed.namespace, parsed.extra
    except SystemExit as err:
        raise AssertionError(f"the CLI's parser rejects {argv} (exit {err.code})") from None
    finally:
        monkeypatch.undo()
    raise AssertionError(f"avatarjax {' '.join(argv)} returned without parsing its options")


def check_command(command: str, monkeypatch) -> None:
    tokens = shlex.split(command, comments=True)
    argv = tokens[1:]
    if argv in (["--help"], ["-h"]) or (len(argv) == 2 and argv[1] in ("--help", "-h")):
        assert argv[0] in cli.COMMANDS or argv[0] in ("--help", "-h"), f"unknown subcommand in: {command}"
        try:  # help only prints
            code = cli.main(argv)
        except SystemExit as err:
            code = err.code
        assert code == 0, f"{command} exits with {code}"
        return
    assert argv and argv[0] in cli.COMMANDS, f"unknown subcommand in: {command}"
    sub, rest = argv[0], argv[1:]
    if sub in ("convert", "bench"):
        reg = registry.CONVERTERS if sub == "convert" else registry.BENCHMARKS
        assert rest and rest[0] in reg, f"'{rest[:1]}' is not a registered {sub} name ({reg.names()})"
        if sub == "convert":
            from avatarjax.checkpoint import convert

            check_options(rest[1:], options_in(convert.convert_command), command)
        else:
            check_options(rest[1:], options_in(reg.get(rest[0])), command)
        return
    if sub == "data":
        assert len(rest) >= 2 and rest[0] in cli.DATA_ACTIONS, f"data needs ACTION NAME: {command}"
        action = getattr(registry.DATASETS.get(rest[1]), rest[0], None)
        assert action is not None, f"dataset '{rest[1]}' has no '{rest[0]}' action: {command}"
        check_options(rest[2:], options_in(action), command)
        return
    args, overrides = cli._split_overrides(rest)
    for override in overrides:
        assert "=" in override, f"write overrides as --config.key=value: {override} in {command}"
    namespace, extra = parse_with_cli([sub, *args], monkeypatch)
    config = getattr(namespace, "config", None)
    cfg = None
    if config is not None:
        assert (REPO / config).is_file(), f"config '{config}' does not exist: {command}"
        cfg = load_config(REPO / config, overrides)  # unknown override keys fail here
    if sub in ("sample", "eval"):
        attr = "sample" if sub == "sample" else "evaluate"
        if cfg is not None:
            targets = [getattr(registry.TASKS.get(cfg.task), attr)]
        else:
            targets = [getattr(registry.TASKS.get(n), attr, None) for n in registry.TASKS.names()]
        targets = [t for t in targets if t is not None]
        assert targets, f"no task defines {attr}: {command}"
        check_options(extra, options_in(*targets), command)
    else:
        assert not extra, f"unexpected arguments {extra}: {command}"


def test_docs_exist_and_hold_commands():
    names = {p.name for p in DOC_FILES}
    for expected in ("index.md", "install.md", "configs.md", "systems.md", "converting.md", "datasets.md",
                     "scaling.md", "performance.md", "troubleshooting.md"):
        assert expected in names, f"docs/{expected} is missing"
    assert len(all_commands()) > 30


@pytest.mark.parametrize("doc,command", all_commands(), ids=lambda v: v if v.endswith(".md") else None)
def test_fenced_command_matches_the_cli(doc, command, monkeypatch):
    check_command(command, monkeypatch)


def test_checker_rejects_drift(monkeypatch):
    for bad in ("avatarjax trian --config configs/lm/synthface_tiny.py",
                "avatarjax train --config configs/lm/nope.py --workdir W",
                "avatarjax train --config configs/lm/synthface_tiny.py --workdir W --config.trian.steps=3",
                "avatarjax sample --config configs/cogportrait/synthface_small.py --lable drowsiness",
                "avatarjax convert nonesuch --from A --to B",
                "avatarjax convert umt5 --form A --to B",
                "avatarjax data build synthface --datadir D",
                "avatarjax bench trainer --nope 3"):
        with pytest.raises(Exception):
            check_command(bad, monkeypatch)
    check_command("avatarjax train --config configs/lm/synthface_tiny.py --workdir W --config.train.steps=3",
                  monkeypatch)


def test_paths_and_links_resolve():
    for path in DOC_FILES:
        text = path.read_text()
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            assert resolved.exists(), f"{path.name}: link '{target}' does not resolve"
        for mentioned in REPO_PATH.findall(text):
            assert (REPO / mentioned).exists(), f"{path.name}: '{mentioned}' does not exist"


def test_every_converter_and_benchmark_is_documented():
    converting = (DOCS / "converting.md").read_text()
    for name in registry.CONVERTERS.names():
        assert f"avatarjax convert {name} " in converting, f"docs/converting.md does not show `convert {name}`"
    performance = (DOCS / "performance.md").read_text()
    for name in registry.BENCHMARKS.names():
        assert f"avatarjax bench {name}" in performance, f"docs/performance.md does not show `bench {name}`"
    index = (DOCS / "index.md").read_text()
    for path in DOC_FILES:
        if path.name != "index.md":
            assert f"]({path.name})" in index, f"docs/index.md does not link {path.name}"
