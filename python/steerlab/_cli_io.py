"""Input and output helpers of the `steerlab` command line (`steerlab.cli`): reading texts
and JSONL records, parsing layer lists and ``PATH[:COEF]`` arguments, and writing files
atomically (a temporary file in the target's folder, then `os.replace`), so an error or
Ctrl-C never leaves a half-written output behind.

Every bad input raises `CliError`, which the command line prints as one line and turns
into exit code 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from steerlab._args import jsonl_records

__all__ = [
    "CliError",
    "atomic_path",
    "parse_layers",
    "parse_path_coef",
    "read_jsonl",
    "read_texts",
    "write_text_atomic",
]


class CliError(Exception):
    """A bad file or argument value found by the command line itself (exit code 1)."""


# ------------------------------------------------------------------ reading


def _read_file(path: str, what: str) -> str:
    """The text of `path` (``-``: standard input), as UTF-8."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} file {path!r} does not exist")
    if p.is_dir():
        raise CliError(f"{what} file {path!r} is a folder; expected a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{what} file {path!r} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise CliError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from None


def is_jsonl(path: str) -> bool:
    """Whether `path` names a JSON Lines file (by its extension)."""
    return path.lower().endswith((".jsonl", ".ndjson"))


def read_jsonl(path: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file, one per non-blank line, each with a
    ``"FILE, line N"`` label for messages.

    Raises:
        CliError: no such file, no records.
        InvalidArgumentError: a line that is not JSON or not an object.
    """
    out = jsonl_records(_read_file(path, what), path)
    if not out:
        raise CliError(f"{what} file {path!r} holds no records")
    return out


def text_field(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]`` as a non-empty str.

    Raises:
        CliError: the key is missing or not a non-empty string.
    """
    if key not in obj:
        keys = ", ".join(repr(k) for k in obj) or "none"
        raise CliError(f"{where}: no field {key!r} (the record has {keys})")
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise CliError(f"{where}: field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def read_texts(path: str, field: str, what: str = "texts") -> list[str]:
    """Texts from a file: JSON Lines (``.jsonl``: the string field `field` of each
    object) or plain text (one text per non-blank line; ``-`` reads standard input).

    Raises:
        CliError: no such file, a malformed line, no texts.
    """
    if is_jsonl(path):
        return [text_field(obj, field, where) for where, obj in read_jsonl(path, what)]
    texts = [line for line in _read_file(path, what).splitlines() if line.strip()]
    if not texts:
        raise CliError(f"{what} file {path!r} holds no texts (every line is blank)")
    return texts


# ------------------------------------------------------------------ argument values


def parse_layers(spec: str | None) -> list[int] | None:
    """``"12"``, ``"-1"``, ``"8:12"`` (8, 9, 10, 11), ``"0,5,10:14"`` or ``"all"`` ->
    a list of layer indices (negative: from the end), None for ``all`` or None.

    Raises:
        CliError: an item that is not an int or a ``START:STOP`` range with
            ``0 <= START < STOP``; an empty list.
    """
    if spec is None or spec.strip().lower() == "all":
        return None
    out: list[int] = []
    for raw in spec.split(","):
        item = raw.strip()
        try:
            if ":" in item:
                a, b = item.split(":")
                start, stop = int(a), int(b)
                if not 0 <= start < stop:
                    raise ValueError
                out.extend(range(start, stop))
            else:
                out.append(int(item))
        except ValueError:
            raise CliError(
                f"--layers: bad layer {item!r} in {spec!r}; expected comma-separated layer "
                f"indices (negative from the end), START:STOP ranges (0 <= START < STOP, STOP "
                f"excluded) or 'all'"
            ) from None
    return out


def parse_path_coef(value: str, option: str) -> tuple[str, float | None]:
    """``PATH`` or ``PATH:COEF`` -> (path, coefficient or None). A value that names an
    existing file is a path even when it contains ``:``.

    Raises:
        CliError: a coefficient that is not a finite number; an empty path.
    """
    if os.path.exists(value) or ":" not in value:
        return value, None
    path, _, coef = value.rpartition(":")
    try:
        k = float(coef)
    except ValueError:
        raise CliError(
            f"{option} {value!r}: bad coefficient {coef!r}; expected PATH or PATH:NUMBER "
            f"(e.g. happy.safetensors:4)"
        ) from None
    if not math.isfinite(k):
        raise CliError(f"{option} {value!r}: the coefficient must be finite, got {coef!r}")
    if not path:
        raise CliError(f"{option} {value!r}: no path before ':{coef}'")
    return path, k


def number(value: str, option: str) -> float:
    """A finite float from a string (for options parsed by hand)."""
    try:
        k = float(value)
    except ValueError:
        raise CliError(f"{option}: {value!r} is not a number") from None
    if not math.isfinite(k):
        raise CliError(f"{option}: expected a finite number, got {value!r}")
    return k


# ------------------------------------------------------------------ writing


def check_output(path: str, option: str = "--output") -> Path:
    """Fail early (before any slow work) when `path` cannot be an output file: its folder
    is missing or it is a folder.

    Raises:
        CliError: as above.
    """
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{option} {path!r} is a folder; expected a file path")
    parent = p.parent
    if not parent.is_dir():
        raise CliError(f"{option} {path!r}: the folder {str(parent)!r} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(path: str, option: str = "--output") -> Iterator[str]:
    """A temporary path next to `path` (same extension) to write to; on leaving the
    block without error it replaces `path`, otherwise it is removed.

    Raises:
        CliError: see `check_output`.
    """
    p = check_output(path, option)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{p.suffix}")
    try:
        yield str(tmp)
        if not tmp.exists():
            raise CliError(f"nothing was written to {path!r}")
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str, write: Callable[[str], None], option: str = "--output") -> None:
    """Call ``write(temporary_path)`` and move the result to `path` (see `atomic_path`)."""
    with atomic_path(path, option) as tmp:
        write(tmp)


def write_text_atomic(path: str, text: str, option: str = "--output") -> None:
    """Write `text` (UTF-8) to `path` atomically."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    write_atomic(path, write, option)
