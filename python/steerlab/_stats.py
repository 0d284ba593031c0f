"""Small statistics shared by the evaluation and the plots (numbers in, numbers out)."""

from __future__ import annotations

from collections.abc import Sequence

from steerlab import _core

__all__ = ["spearman"]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank)."""
    return _core.spearman([float(v) for v in x], [float(v) for v in y])
