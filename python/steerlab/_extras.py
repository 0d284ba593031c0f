"""Optional extras: their packages are imported when a feature needs them, never by
``import steerlab`` (the wheel test checks that)."""

from __future__ import annotations

import importlib
from types import ModuleType

from steerlab.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or say which extra brings it.

    Raises:
        MissingExtraError: `module` is not installed; the message names
            ``pip install 'steerlab[extra]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'steerlab[{extra}]'"
        ) from exc
