"""The `steerlab` command line (being written: issue 14)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `steerlab` console script."""
    print("steerlab: the command line is not written yet", file=sys.stderr)
    return 2
