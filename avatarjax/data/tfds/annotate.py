"""InstructAvatar-style instruction annotation of real clips: emotion instructions, AU descriptions from the AU
intersection over three sampled frames, and paraphrases through the planning LLM backend, cached on disk.

- Emotion instructions come from synthface's instruction set (``avatarjax.data.synthface.instructions``: 60
  emotion templates plus neutral ones, an emotion synonym table and intensity adverbs, with a disjoint held-out
  set for ``eval``).
- AU descriptions: ``au_frames`` (3) frames are sampled from the clip; an AU counts as present when its
  intensity is at least ``au_threshold`` in *all* of them (the intersection keeps only AUs that persist, not a
  single frame's twitch); present AUs become imperative sentences ("Raise your cheeks."). AU columns are named
  as FACS AUs (``AU1`` / ``AU01`` ... as OpenFace or ME-GraphAU write them) or as synthface channels; AU45
  (blinks) and the speech-driven jaw (AU25-27) are never described for talking clips.
- Paraphrases: with ``backend`` ``"offline"`` (default) the variants are further template renderings, no model
  involved. With an LLM backend (``{"backend": "http", ...}``: an OpenAI-compatible endpoint, or ``qwen2``; see
  ``avatarjax.planning.llm.make_backend``) the first instruction is paraphrased by the model, JSON-checked, and
  the answer cached in ``cache_dir`` (one JSON file per request, written atomically, so parallel Beam workers
  and rebuilds reuse it and a rebuild never calls the model again for the same text).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from avatarjax.atomic import atomic_file
from avatarjax.data.synthface import instructions as text_lib
from avatarjax.errors import ConfigError

# FACS AU number -> synthface phrase keys (bilateral AUs name both sides so the merged phrase is used).
FACS_PHRASES = {1: ("au1_l", "au1_r"), 2: ("au2_l", "au2_r"), 4: ("au4",), 5: ("au5",), 6: ("au6",), 7: ("au7",),
                12: ("smile",), 15: ("frown",), 18: ("pucker",), 20: ("lip_stretch",), 26: ("jaw_open",),
                27: ("jaw_open",)}
NEVER_DESCRIBED_TALKING = {"au45_l", "au45_r", "jaw_open"}  # blinks, and the jaw that speech moves anyway


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """count: instructions per clip; au_threshold / au_frames: the AU intersection; au_share: fraction of the
    variants that carry an AU clause (the rest are pure emotion instructions); llm: the paraphrasing backend
    config (``{"backend": "offline"}`` = templates only); paraphrases: how many the LLM is asked for; cache_dir:
    where LLM answers are cached ("" = no cache)."""

    count: int = 4
    au_threshold: float = 0.5
    au_frames: int = 3
    au_share: float = 0.5
    llm: tuple[tuple[str, str], ...] = (("backend", "offline"),)
    paraphrases: int = 2
    cache_dir: str = ""

    def __post_init__(self):
        if self.count < 1 or self.au_frames < 1 or not 0.0 <= self.au_share <= 1.0:
            raise ConfigError("annotation count and au_frames must be >= 1 and au_share in [0, 1]")

    @property
    def backend_config(self) -> dict:
        return dict(self.llm)


def phrase_keys(name: str) -> tuple[str, ...]:
    """Synthface phrase keys for an AU column name (``AU12``, ``AU06_r``, ``au6``, ``smile``); () if unknown."""
    lowered = name.strip().lower()
    known = set(text_lib.S.AU_CHANNELS) | set(text_lib.MOUTH_THRESHOLDS)
    if lowered in known:
        return (lowered,)
    digits = "".join(ch for ch in lowered.removeprefix("au").split("_")[0] if ch.isdigit())
    return FACS_PHRASES.get(int(digits), ()) if digits and lowered.startswith("au") else ()


def au_intersection(au: np.ndarray, names: tuple[str, ...], rng: np.random.Generator, threshold: float = 0.5,
                    frames: int = 3) -> list[str]:
    """Column names whose value is >= ``threshold`` in every one of ``frames`` randomly sampled frames of
    ``au`` [T, K]."""
    au = np.asarray(au, np.float32)
    if au.ndim != 2 or au.shape[1] != len(names):
        raise ConfigError(f"AU features must be [T, {len(names)}] (one column per AU name), got {au.shape}")
    picks = rng.choice(au.shape[0], size=min(frames, au.shape[0]), replace=False)
    present = (au[picks] >= threshold).all(axis=0)
    return [name for name, on in zip(names, present) if on]


def describable(names: list[str], kind: str = "talking") -> list[str]:
    keys = [key for name in names for key in phrase_keys(name)]
    drop = NEVER_DESCRIBED_TALKING if kind == "talking" else {"au45_l", "au45_r"}
    return sorted({k for k in keys if k not in drop}, key=keys.index)


def _seed(*parts) -> int:
    return zlib.crc32(json.dumps(parts, default=str).encode())


def instructions(clip_key: str, emotion: str, intensity: int, split: str, config: AnnotateConfig,
                 au: np.ndarray | None = None, au_names: tuple[str, ...] = ()) -> list[str]:
    """``config.count`` distinct instructions for a clip (fewer distinct renderings repeat), seeded by the
    clip key: emotion instructions, some with the AU clause, then LLM paraphrases when a backend is set."""
    rng = np.random.default_rng(_seed(clip_key, split))
    level = intensity if emotion != "neutral" else 1
    active = []
    if au is not None and len(au_names):
        active = describable(au_intersection(au, au_names, rng, config.au_threshold, config.au_frames))
    out: list[str] = []
    for _ in range(8 * config.count):
        text = text_lib.emotion_instruction(rng, emotion, level, split)
        if active and rng.random() < config.au_share:
            text += " " + " ".join(text_lib.au_sentences(active, rng))
        if text not in out:
            out.append(text)
        if len(out) == config.count:
            break
    if config.backend_config.get("backend", "offline") != "offline":
        extra = Paraphraser(config).paraphrase(out[0], config.paraphrases, seed=_seed(clip_key))
        out = (out[:1] + [t for t in extra if t not in out] + out[1:])[:config.count]
    return out + [out[i % len(out)] for i in range(config.count - len(out))]


class Paraphraser:
    """LLM paraphrases of one instruction through ``planning.llm`` (JSON-checked), cached on disk."""

    def __init__(self, config: AnnotateConfig):
        self.config = config

    def _cache_path(self, text: str, count: int) -> Path | None:
        if not self.config.cache_dir:
            return None
        key = json.dumps([text, count, sorted(self.config.backend_config.items())], sort_keys=True)
        return Path(self.config.cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}.json"

    def paraphrase(self, text: str, count: int, seed: int = 0) -> list[str]:
        path = self._cache_path(text, count)
        if path is not None and path.exists():
            return json.loads(path.read_text())["paraphrases"]
        from avatarjax.planning import llm

        request = {"task": "paraphrase", "text": text, "count": count}
        prompt = (f"Rewrite this instruction for a talking-face avatar in {count} different ways. Keep the emotion, "
                  f"its intensity and every facial action; change only the wording. Instruction: {text!r}\n"
                  f'Reply with JSON: {{"paraphrases": [...{count} strings...]}}\n'
                  f"{llm.REQUEST_MARKER} {json.dumps(request)}")

        def check(reply: dict) -> list[str]:
            items = reply["paraphrases"]
            if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
                raise ValueError("paraphrases must be a list of non-empty strings")
            return [t.strip() for t in items][:count]

        backend = llm.make_backend(self.config.backend_config)
        result = llm.ask_json(backend, [{"role": "user", "content": prompt}], check, seed=seed)
        if path is not None:
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps({"text": text, "paraphrases": result, "backend": backend.name}))
        return result
