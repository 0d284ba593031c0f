"""Deprecated alias of `steerlab.catalog` (where the models steerlab knows about live).

The module was renamed so that ``models`` (the model catalogue) and ``model`` (the
`Model` class) no longer read as one word; ``steerlab.models`` keeps working and
re-exports the same objects. New code should use `steerlab.catalog`.
"""

from steerlab.catalog import (
    DEFAULT_MODEL_ENV,
    default_model_path,
    gemma3_270m_path,
    smollm2_135m_path,
)

__all__ = [
    "DEFAULT_MODEL_ENV",
    "default_model_path",
    "gemma3_270m_path",
    "smollm2_135m_path",
]
