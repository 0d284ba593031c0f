"""Shared fixtures.

Tests that need the Rust extension start with ``pytest.importorskip("steerlab._core")``
so the suite collects before the extension is built. ``make test`` sets
``STEERLAB_REQUIRE_CORE=1``: then a missing extension or default model is an error, not
a skip, so CI can never pass by skipping everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REQUIRE = os.environ.get("STEERLAB_REQUIRE_CORE") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE:
        try:
            import steerlab._core  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(
                f"STEERLAB_REQUIRE_CORE=1 but the extension does not import ({exc}); "
                f"build it with `make develop`"
            ) from exc


def _skip_or_fail(reason: str) -> None:
    if REQUIRE:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def model() -> Any:
    """The embedded default model (SmolLM2-135M-Instruct, Q4_1), loaded once."""
    sl = pytest.importorskip("steerlab")
    try:
        return sl.Model.load()
    except sl.ModelNotFoundError as exc:
        _skip_or_fail(f"default model not installed: {exc}")


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A tiny random Llama checkpoint in Hugging Face layout (written by bench/reference)."""
    path = FIXTURES / "tiny_llama"
    if not (path / "config.json").is_file():
        _skip_or_fail(f"{path} is missing")
    return path


@pytest.fixture(autouse=True)
def _progress_default() -> Any:
    """Every test starts with the default progress setting."""
    yield
    try:
        from steerlab import set_progress
    except ImportError:
        return
    set_progress(None)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Three short prompts of different lengths (so batches need padding)."""
    return [
        "The capital of France is",
        "Once upon a time, in a small village by the sea, there lived",
        "def fibonacci(n):",
    ]
