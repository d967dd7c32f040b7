"""synthface identities: seeded face-shape and colour parameters, and the fixed train / eval split.

An identity is everything about a face that does not change over a clip: the proportions the face model in
``geometry.py`` is built from, and the colours ``render.py`` paints with. ``sample_identity(index, seed)`` is a
pure function of ``(index, seed)``: the same pair gives the same face on every machine and numpy version that
keeps ``PCG64`` stable (numpy >= 1.17).

Lengths are in face-model units (see ``geometry.py``): the face is about 2 units from chin to hairline and the
projection maps 1 unit to ``geometry.IMAGE_SCALE`` of the frame height at depth 0. Colours are RGB in [0, 1].

The split: ``is_heldout(index)`` holds out a fixed ~10% of identity indices for evaluation. The rule hashes the
index alone (splitmix64 of ``index`` xor a constant, modulo 1000, below 100), so it does not depend on the
appearance seed, is the same in every process, and does not correlate with index order (no "every tenth face").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

RGB = tuple[float, float, float]

# Ranges of the shape parameters (lo, hi), in face-model units except brow_arch (a shape in [0, 1]).
SHAPE_RANGES: dict[str, tuple[float, float]] = {
    "face_width": (0.64, 0.80),      # half-width of the face at ear level
    "face_height": (0.94, 1.04),     # chin depth below the face centre; the hairline sits at 0.95 of it above
    "eye_spacing": (0.30, 0.37),     # half the distance between the eye centres
    "eye_size": (0.13, 0.17),        # half the eye opening's width (corner to corner / 2)
    "brow_arch": (0.0, 1.0),         # 0 = straight brows, 1 = high arch
    "brow_thickness": (0.035, 0.075),
    "mouth_width": (0.19, 0.27),     # half the mouth's width (corner to corner / 2)
}
SHAPE_FIELDS = tuple(SHAPE_RANGES)
COLOUR_FIELDS = ("skin_rgb", "hair_rgb", "background_rgb", "iris_rgb")
IDENTITY_FIELDS = SHAPE_FIELDS + COLOUR_FIELDS
IDENTITY_DIM = len(SHAPE_FIELDS) + 3 * len(COLOUR_FIELDS)  # 7 + 12 = 19

HELDOUT_PER_MILLE = 100  # ~10% of identity indices are evaluation identities
_SPLIT_SALT = 0x5F3759DF_A5A5A5A5

# Palettes the colours are drawn from (then jittered): skin tones light to deep, natural hair, iris colours.
_SKIN_LIGHT = np.array([0.96, 0.84, 0.75])
_SKIN_DEEP = np.array([0.36, 0.23, 0.16])
_HAIR = np.array([
    [0.07, 0.06, 0.06],  # black
    [0.20, 0.13, 0.08],  # dark brown
    [0.38, 0.25, 0.15],  # brown
    [0.55, 0.27, 0.13],  # auburn
    [0.78, 0.64, 0.38],  # blond
    [0.62, 0.62, 0.62],  # grey
])
_IRIS = np.array([
    [0.30, 0.18, 0.09],  # brown
    [0.16, 0.10, 0.06],  # dark brown
    [0.25, 0.42, 0.62],  # blue
    [0.28, 0.45, 0.30],  # green
    [0.45, 0.38, 0.20],  # hazel
    [0.42, 0.46, 0.50],  # grey
])


@dataclasses.dataclass(frozen=True)
class Identity:
    """One synthetic face: shape (face-model units) and colours (RGB in [0, 1]). Hashable, so it can key caches."""

    face_width: float
    face_height: float
    eye_spacing: float
    eye_size: float
    brow_arch: float
    brow_thickness: float
    mouth_width: float
    skin_rgb: RGB
    hair_rgb: RGB
    background_rgb: RGB
    iris_rgb: RGB

    def to_vector(self) -> np.ndarray:
        """``float32 [IDENTITY_DIM]``: the shape fields, then skin, hair, background and iris RGB."""
        shape = [getattr(self, name) for name in SHAPE_FIELDS]
        colours = [c for name in COLOUR_FIELDS for c in getattr(self, name)]
        return np.asarray(shape + colours, np.float32)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> Identity:
        """Inverse of ``to_vector`` for a ``[IDENTITY_DIM]`` vector (exact for identities from ``sample_identity``)."""
        v = np.asarray(vector, np.float32)
        if v.shape != (IDENTITY_DIM,):
            raise ValueError(f"an identity vector has shape ({IDENTITY_DIM},), got {v.shape}")
        values = [float(x) for x in v]
        n = len(SHAPE_FIELDS)
        shape = dict(zip(SHAPE_FIELDS, values[:n]))
        colours = {name: tuple(values[n + 3 * i: n + 3 * i + 3]) for i, name in enumerate(COLOUR_FIELDS)}
        return cls(**shape, **colours)


def _f32(x: float) -> float:
    """Round to the nearest float32 so ``from_vector(to_vector(identity)) == identity`` holds exactly."""
    return float(np.float32(x))


def _rgb(x: np.ndarray) -> RGB:
    r, g, b = (_f32(c) for c in np.clip(x, 0.0, 1.0))
    return r, g, b


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _sample_skin(rng: np.random.Generator) -> np.ndarray:
    """A skin tone on the light-to-deep line with a small warm/cool and per-channel jitter."""
    tone = _SKIN_LIGHT + rng.uniform(0.0, 1.0) * (_SKIN_DEEP - _SKIN_LIGHT)
    warmth = rng.uniform(-0.03, 0.03) * np.array([1.0, 0.0, -1.0])
    return np.clip(tone + warmth + rng.normal(0.0, 0.01, 3), 0.0, 1.0)


def _sample_from_palette(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.15) + rng.normal(0.0, jitter, 3), 0, 1)


def _sample_background(rng: np.random.Generator, skin: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """A muted backdrop far enough from the skin and hair colours that the face outline is always visible."""
    for _ in range(64):
        hue = rng.uniform(0.0, 1.0, 3)
        grey = rng.uniform(0.15, 0.9)
        bg = np.clip(grey + 0.35 * (hue - hue.mean()), 0.0, 1.0)
        if np.linalg.norm(bg - skin) > 0.35 and np.linalg.norm(bg - hair) > 0.2:
            return bg
    return np.array([0.9, 0.9, 0.95]) if _luminance(skin) < 0.5 else np.array([0.12, 0.14, 0.2])


def _check_index(index: int) -> int:
    if int(index) != index or index < 0:
        raise ValueError(f"identity indices are non-negative integers, got {index!r}")
    return int(index)


def sample_identity(index: int, seed: int = 0) -> Identity:
    """The identity number ``index`` of the world seeded by ``seed``; deterministic per ``(index, seed)``."""
    index, seed = _check_index(index), _check_index(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x1D]))
    shape = {name: _f32(rng.uniform(lo, hi)) for name, (lo, hi) in SHAPE_RANGES.items()}
    skin = _sample_skin(rng)
    hair = _sample_from_palette(rng, _HAIR, 0.02)
    iris = _sample_from_palette(rng, _IRIS, 0.02)
    background = _sample_background(rng, skin, hair)
    return Identity(**shape, skin_rgb=_rgb(skin), hair_rgb=_rgb(hair), background_rgb=_rgb(background),
                    iris_rgb=_rgb(iris))


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser: a fixed, well-mixed 64-bit hash of ``x``."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def is_heldout(index: int) -> bool:
    """True for the ~10% of identity indices reserved for evaluation (``splitmix64(index ^ salt) % 1000 < 100``)."""
    return _splitmix64(_check_index(index) ^ _SPLIT_SALT) % 1000 < HELDOUT_PER_MILLE


def identity_split(index: int) -> Literal["train", "eval"]:
    """``"eval"`` for held-out identity indices, ``"train"`` for the rest."""
    return "eval" if is_heldout(index) else "train"
