"""Byte-level text corpora for the decoder LM: fixed-length windows over the bytes of a folder of text files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from avatarjax.data.commands import DatasetCommands
from avatarjax.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json")


@dataclasses.dataclass(frozen=True)
class TextDataConfig:
    path: str = ""  # a text file or a folder of them; "" = the avatarjax package's own source and docs
    seq_len: int = 128
    eval_fraction: float = 0.05  # the last part of the corpus is held out for evaluation


def default_corpus_root() -> Path:
    return Path(__file__).resolve().parents[1]


def read_corpus(path: str) -> bytes:
    """All text files under ``path`` (sorted, so the corpus is deterministic), joined by newlines."""
    root = Path(path) if path else default_corpus_root()
    if not root.exists():
        raise DataError(f"text corpus '{root}' does not exist: set data.path to a text file or a folder of text files")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES
                                                  and p.is_file() and "__pycache__" not in p.parts)
    if not files:
        raise DataError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under '{root}': point data.path at text")
    return b"\n".join(p.read_bytes() for p in files)


class ByteWindows:
    """Record ``i``: ``{"tokens": int32 [seq_len + 1]}``, the bytes ``[i*seq_len, i*seq_len + seq_len + 1)``."""

    def __init__(self, data: np.ndarray, seq_len: int):
        self.data = data
        self.seq_len = seq_len
        self._len = max(0, (len(data) - 1) // seq_len)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        start = index * self.seq_len
        return {"tokens": self.data[start:start + self.seq_len + 1].astype(np.int32)}


def byte_windows(cfg: TextDataConfig, split: str) -> ByteWindows:
    data = np.frombuffer(read_corpus(cfg.path), dtype=np.uint8)
    cut = int(len(data) * (1.0 - cfg.eval_fraction))
    part = data[:cut] if split == "train" else data[cut:]
    windows = ByteWindows(part, cfg.seq_len)
    if len(windows) == 0:
        raise DataError(f"the {split} split of the text corpus has {len(part)} bytes, fewer than one window of "
                        f"{cfg.seq_len + 1}: use more text or a smaller data.seq_len")
    return windows


def text_info(args: list[str]) -> dict:
    """``avatarjax data info text --path DIR --seq_len N``: what the corpus yields (windows per split)."""
    import argparse

    parser = argparse.ArgumentParser(prog="avatarjax data info text")
    parser.add_argument("--path", default="")
    parser.add_argument("--seq_len", type=int, default=128)
    ns = parser.parse_args(args)
    cfg = TextDataConfig(path=ns.path, seq_len=ns.seq_len)
    return {split: len(byte_windows(cfg, split)) for split in ("train", "eval")}


TEXT_COMMANDS = DatasetCommands(info=text_info)
