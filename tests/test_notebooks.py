"""Every notebook in ``notebooks/`` runs top to bottom without an error.

Each notebook runs in a fresh kernel started from this interpreter (the venv's python),
with ``MPLBACKEND=Agg`` so that plots render without a display, and a 600 s limit per
cell. The committed notebooks carry no outputs; the executed copies are thrown away.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "steerlab-test"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernel spec that runs this very interpreter, whatever is installed globally."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "steerlab test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("TQDM_DISABLE", "1")
        mp.setenv("STEERLAB_NOTEBOOK_FAST", "1")
        yield KERNEL


def test_quickstart_exists() -> None:
    assert any(p.name == "01_quickstart.ipynb" for p in NOTEBOOKS), "notebooks/ lacks it"


def _generator() -> Any:
    path = Path(__file__).parent.parent / "notebooks" / "make_notebooks.py"
    spec = importlib.util.spec_from_file_location("make_notebooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_match_their_generator() -> None:
    """Each committed notebook is what notebooks/make_notebooks.py writes (edit the cells
    there, then rerun it), and every generated notebook is committed."""
    gen = _generator()
    assert sorted(gen.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    assert "04_optimized_vectors.ipynb" in gen.NOTEBOOKS
    for path in NOTEBOOKS:
        committed = nbformat.read(path, as_version=4)
        expected = gen.build(gen.NOTEBOOKS[path.name])
        assert [c.source for c in committed.cells] == [c.source for c in expected.cells], (
            f"{path.name} differs from make_notebooks.py; run python notebooks/make_notebooks.py"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_name: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs"
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}")
