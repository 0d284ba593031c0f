"""The Hugging Face Hub side of `Model.from_pretrained`: check the repository arguments,
download (or find in the hub's local cache) the files a model needs, and say where they are.

``huggingface_hub`` is imported when a download is asked for, not before (it is an
optional dependency: ``pip install 'steerlab[hub]'``).
"""

from __future__ import annotations

import os
from typing import Any

from steerlab._extras import require
from steerlab.errors import InvalidArgumentError, InvalidTypeError, ModelNotFoundError

__all__ = ["HF_PATTERNS", "check_repo_args", "download"]

#: Files of a Hugging Face model folder that `Model.load` reads.
HF_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
]


def check_repo_args(repo_id: Any, revision: Any, gguf_file: Any) -> None:
    """Raise unless `repo_id` is a non-empty str and `revision`, `gguf_file` are str or None."""
    for name, value in (("repo_id", repo_id), ("revision", revision), ("gguf_file", gguf_file)):
        if value is not None and not isinstance(value, str):
            raise InvalidTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not repo_id:
        raise InvalidArgumentError("repo_id is empty")


def download(repo_id: str, revision: str | None, gguf_file: str | None) -> str:
    """Path of the downloaded (or cached) model: the GGUF file `gguf_file` of the
    repository, or without it the folder holding its `HF_PATTERNS` files.

    Raises:
        MissingExtraError: ``huggingface_hub`` is not installed (an `ImportError`).
        ModelNotFoundError: the repository or file cannot be had (offline, unreachable,
            not found, gated) and is not in the local cache.
    """
    snapshot_download = require("huggingface_hub", "hub", "Model.from_pretrained").snapshot_download
    patterns = [gguf_file] if gguf_file else HF_PATTERNS
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except Exception as exc:  # offline, unreachable, not found, gated: all the same to us
        what = f"{repo_id!r}" + (f" ({gguf_file})" if gguf_file else "")
        raise ModelNotFoundError(
            f"could not get {what} from the Hugging Face Hub or its local cache "
            f"({type(exc).__name__}: {exc}). Without network, load a local copy "
            f'instead: Model.load("path/to/model.gguf") or Model.load("path/to/folder") '
            f"with a Hugging Face folder (config.json, *.safetensors, tokenizer.json)"
        ) from exc
    path = os.path.join(folder, gguf_file) if gguf_file else folder
    if gguf_file and not os.path.isfile(path):
        raise ModelNotFoundError(f"{repo_id!r} has no file {gguf_file!r}")
    return path
