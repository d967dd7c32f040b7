"""Every notebook in notebooks/ runs top to bottom in a fresh kernel of this environment, and the committed .ipynb
files are exactly what notebooks/build.py writes (outputs stripped).

A notebook runs the way a person's Jupyter runs it: working directory notebooks/, none of the test session's
XLA_FLAGS but its optimisation level (notebook 05 sets its own 8 fake devices), outputs redirected to a temporary
AVATARJAX_OUTPUTS. A failing or timed-out cell fails the test with the cell's index, its source and the error.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from tests.conftest import REPO, TEST_XLA_FLAGS

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # one cell, compilation included, on a busy 2-core CPU


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOK_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_built_from_build_py_and_stripped():
    build = _build_module()
    assert sorted(build.NOTEBOOKS) == [p.name for p in NOTEBOOKS], "notebooks/ and build.NOTEBOOKS disagree"
    for path in NOTEBOOKS:
        assert path.read_text() == build.render(build.NOTEBOOKS[path.name]), \
            f"{path.name} differs from notebooks/build.py: run `python notebooks/build.py`"
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=TEST_XLA_FLAGS, AVATARJAX_OUTPUTS=str(tmp_path), JAX_PLATFORMS="cpu",
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    timings = []
    with client.setup_kernel(env=env, cwd=str(NOTEBOOK_DIR)):
        # the kernel is this environment's Python (the kernelspec says "python", which jupyter_client maps to
        # the running interpreter), not whatever `python` is first on PATH
        assert client.km.format_kernel_cmd()[0] == sys.executable
        for index, cell in enumerate(nb.cells):
            start = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
                pytest.fail(f"{path.name}: cell {index} failed after {time.perf_counter() - start:.0f} s\n"
                            f"--- cell source ---\n{cell.source}\n--- error ---\n{err}", pytrace=False)
            timings.append((index, time.perf_counter() - start))
    slowest = sorted(timings, key=lambda t: -t[1])[:3]
    print(f"{path.name}: {sum(t for _, t in timings):.1f} s; slowest cells "
          + ", ".join(f"#{i} {t:.1f} s" for i, t in slowest))
    outputs = list((tmp_path / "notebooks" / path.stem).rglob("*"))
    assert outputs, f"{path.name} wrote nothing under AVATARJAX_OUTPUTS"
