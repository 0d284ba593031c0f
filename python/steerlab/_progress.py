"""Progress bars over batches (tqdm), on by default when a call spans several batches."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["progress_bar", "set_progress"]

_default: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Set whether capture/generate show a progress bar when called with ``progress=None``.

    Args:
        enabled: ``True`` shows a bar on every call, ``False`` never shows one, ``None``
            (the initial setting) shows one when the inputs span more than one batch.
    """
    global _default
    if enabled is not None and not isinstance(enabled, bool):
        from steerlab.errors import InvalidTypeError

        raise InvalidTypeError(
            f"set_progress expects True, False or None, got {type(enabled).__name__}"
        )
    _default = enabled


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: bool | None, total: int, batch_size: int, desc: str, unit: str) -> Any:
    """A bar over `total` items, or a no-op stand-in with the same `update`/`close`."""
    if progress is not None and not isinstance(progress, bool):
        from steerlab._args import show
        from steerlab.errors import InvalidTypeError

        raise InvalidTypeError(f"progress must be True, False or None, got {show(progress)}")
    enabled = _default if progress is None else progress
    if enabled is None:
        enabled = total > batch_size
    if not enabled:
        return _NoBar()
    with warnings.catch_warnings():
        # tqdm.auto warns when it falls back from the notebook widget to text.
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False)
