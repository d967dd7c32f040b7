"""One checkpoint manager for every system: train state, the grain iterator state and the config in one step
directory, async saves, keep-N, restore onto any mesh.

Orbax writes each step into a temporary directory and renames it when complete, so an interrupted save never
becomes the latest checkpoint. A step that exists but cannot be read (truncated, corrupt, or a different model) is
refused with a message naming the step and the way out; nothing is deleted or overwritten by a failing run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from avatarjax.errors import CheckpointError


class CheckpointManager:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # -- queries -------------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once JAX's preemption notice arrived (multi-process runs)."""
        return self._mngr.reached_preemption(step)

    # -- save ----------------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, *, data_iterator: Any = None, config: dict | None = None,
             force: bool = True) -> bool:
        """Start saving ``step`` (async when enabled). Returns False if Orbax skipped it."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    # -- restore -------------------------------------------------------------------------------------------------
    def _check_step(self, step: int | None) -> int:
        available = self.steps()
        if step is None or step < 0:
            if not available:
                raise CheckpointError(f"no checkpoint in '{self.directory}': train first or point --workdir at a "
                                      "run that has checkpoints/")
            return available[-1]
        if step not in available:
            raise CheckpointError(f"checkpoint step {step} not found in '{self.directory}': available steps are "
                                  f"{available or 'none'}")
        return step

    def restore(self, step: int | None, abstract_state: Any, *, data_iterator: Any = None) -> tuple[int, Any]:
        """Restore ``step`` (None: latest) onto the shardings in ``abstract_state`` (ShapeDtypeStructs with
        ``sharding``), and the iterator state into ``data_iterator`` in place. Returns (step, state)."""
        step = self._check_step(step)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        step_dir = self.directory / str(step)
        if data_iterator is not None and (step_dir / "data").exists():
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # Orbax/TensorStore raise many types for unreadable data
            others = [s for s in self.steps() if s != step]
            alt = (f"pass --config.checkpoint.restore_step={others[-1]} to resume from an earlier one"
                   if others else "start a fresh --workdir")
            raise CheckpointError(
                f"checkpoint step {step} in '{self.directory}' cannot be restored ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:300]}). It may be truncated or written for a different model/config; "
                f"it was left untouched: {alt}.") from err
        return step, restored["state"]


def saved_steps(directory: str | Path) -> list[int]:
    """Finished checkpoint steps in ``directory`` without opening a manager (Orbax writes unfinished saves under
    temporary names, so only plain integer names count)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (for restoring onto a new mesh)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

