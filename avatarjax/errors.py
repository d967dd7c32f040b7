"""User-facing errors.

Every failure caused by bad input (a config key, a file, a shape that does not divide the mesh, a checkpoint) is
raised as :class:`AvatarError` with a message that names the problem and the fix. The CLI prints such errors as
one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AvatarError(Exception):
    """An error the user can fix; ``str(err)`` names the problem and the fix."""


class ConfigError(AvatarError):
    """A config file, key or value is wrong."""


class ShardingError(AvatarError):
    """A shape does not divide the mesh axes it is sharded over."""


class CheckpointError(AvatarError):
    """A checkpoint is missing, corrupt or does not match the model."""


class DataError(AvatarError):
    """Input data (files, arrays, sample rates) is unusable."""


class FaceNotFound(DataError):
    """No face was detected in an image (or in some frames of a video) that needs one."""


class TrainingAborted(AvatarError):
    """Training stopped because the state went bad (NaN/Inf loss)."""


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``name`` (for "did you mean" hints), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A hint sentence naming the nearest valid choice, or listing the choices."""
    candidates = sorted(candidates)
    best = nearest(name, candidates)
    if best is not None:
        return f"did you mean '{best}'?"
    return "valid choices: " + ", ".join(candidates)
