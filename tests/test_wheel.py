"""The wheel (issue 14, part 1): `maturin build` gives an abi3 wheel that installs into a
fresh virtual environment with no Rust toolchain on PATH and runs there, on the kernels
chosen at run time (the portable path forced by STEERLAB_ISA=scalar gives the same
numbers bit for bit); `import steerlab` pulls none of the optional extras.

The test builds with the profile `make develop` uses (so it reuses target/ and takes
seconds); STEERLAB_WHEEL_RELEASE=1 builds `--release` as `make wheel` does (minutes).
It needs the package index for the wheel's three dependencies (numpy, tqdm, jinja2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATURIN = Path(sys.executable).parent / "maturin"

pytestmark = pytest.mark.skipif(
    not (ROOT / "Cargo.toml").is_file() or not MATURIN.is_file(),
    reason="needs the source tree and maturin (make develop)",
)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    env["PYO3_PYTHON"] = sys.executable
    env["VIRTUAL_ENV"] = sys.prefix
    cmd = [str(MATURIN), "build", "--out", str(out), "--manifest-path", str(ROOT / "Cargo.toml")]
    if os.environ.get("STEERLAB_WHEEL_RELEASE") == "1":
        cmd.append("--release")
    _run(cmd, env, timeout=3600)
    (whl,) = out.glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> dict[str, Any]:
    """A fresh venv from the base interpreter holding the wheel; PATH without Rust."""
    venv = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], dict(os.environ))
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "LANG": "C.UTF-8",
    }
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], env)
    return {"venv": venv, "env": env}


def test_wheel_is_abi3_for_any_linux_x86_64(wheel: Path) -> None:
    assert re.fullmatch(r"steerlab-[\w.]+-cp311-abi3-manylinux_\d+_\d+_x86_64\.whl", wheel.name), (
        wheel.name
    )
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry = z.read(info).decode()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for need in ("steerlab/_core.abi3.so", "steerlab/_core.pyi", "steerlab/py.typed"):
        assert need in names, need
    assert any(n.startswith("steerlab/data/") for n in names)
    entry = entry.replace(" ", "")
    assert "[console_scripts]\nsteerlab=steerlab.cli:main" in entry
    assert "[pytest11]\nsteerlab=steerlab.pytest_plugin" in entry
    # Required dependencies are the three small ones; the rest are extras.
    required = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(re.split(r"[<>=\s]", r)[0].lower() for r in required) == [
        "jinja2",
        "numpy",
        "tqdm",
    ]
    extras = {
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Provides-Extra:")
    }
    assert {"serve", "ray", "plot", "hub"} <= extras


def test_installed_wheel_runs_without_rust_and_without_extras(clean_venv: dict[str, Any]) -> None:
    import steerlab as sl
    from steerlab import catalog

    venv, env = clean_venv["venv"], dict(clean_venv["env"])
    env["STEERLAB_SMOKE_GGUF"] = catalog.smollm2_135m_path()
    py = str(venv / "bin" / "python")
    smoke = str(ROOT / "tests" / "wheel_smoke.py")
    # Run outside the source tree, so nothing resolves to python/steerlab by accident.
    first = json.loads(_run([py, "-I", smoke], env).strip().splitlines()[-1])
    assert Path(first["python"]).parent.parent == venv
    assert first["cargo_on_path"] is None and first["rustc_on_path"] is None
    assert first["pulled_optional"] == []
    assert first["version"] == sl.__version__
    assert first["acts_shape"] == [2, 2, 576]
    assert first["plain"] != first["steered"] and first["plain"][1] == first["steered"][1]
    for module, extra in (("steerlab.server", "serve"), ("steerlab.ray", "ray")):
        assert f"steerlab[{extra}]" in first["extras_missing"][module], first["extras_missing"]
    # The same wheel on the portable kernels (what a CPU without AVX2 runs) gives the
    # same numbers bit for bit: the instruction set is picked at run time.
    scalar = json.loads(_run([py, "-I", smoke], {**env, "STEERLAB_ISA": "scalar"}).splitlines()[-1])
    assert scalar.pop("kernel_isa") == "scalar"
    assert first.pop("kernel_isa") in {"avx512", "avx2", "scalar"}
    assert scalar == first


def test_console_script_in_the_clean_venv(clean_venv: dict[str, Any]) -> None:
    venv, env = clean_venv["venv"], clean_venv["env"]
    script = venv / "bin" / "steerlab"
    assert script.is_file()
    out = _run([str(script), "--version"], env)
    assert out.strip().startswith("steerlab ")
    assert shutil.which("steerlab", path=env["PATH"]) == str(script)
