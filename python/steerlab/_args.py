"""The argument checkers every public entry point uses (one set, one wording).

Each checker takes the value and the argument's name, returns the value converted to
the plain Python type the extension takes, and otherwise raises a `SteerlabError`
subclass whose message names the argument, the value and what was expected:

- `InvalidTypeError` for a value of the wrong type (``True`` where an int is expected,
  a float where an int is expected, a str where a list is expected, ...);
- `InvalidArgumentError` for a value of the right type outside what is accepted (a
  negative count, NaN, a lone surrogate in a text, an empty list);
- `OutOfRangeError` for an index outside what can exist (a position beyond any text).

Numbers the extension stores in fixed-width integers (u64 seeds, i64 positions, u32
token ids) are bounded here, so Python's own ``OverflowError`` never reaches the user.
"""

from __future__ import annotations

import json
import numbers
import operator
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from steerlab.errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError, ShapeError

__all__ = [
    "I64_MAX",
    "I64_MIN",
    "U64_MAX",
    "factor",
    "flag",
    "index",
    "integer",
    "number",
    "path",
    "real",
    "scaled",
    "show",
    "text",
    "texts",
    "token_ids",
    "vector",
]

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1


def show(value: Any) -> str:
    """A value for a message: its repr, cut short when long, safe for any object (an
    int past Python's 4300-digit str limit, a repr that raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<{value.bit_length()}-bit int>"
    try:
        r = repr(value)
    except Exception:  # any repr failure: name the type only
        return f"a {type(value).__name__}"
    return r if len(r) <= 60 else r[:57] + "..."


def _show(value: Any) -> str:
    """``type value`` for a message."""
    return f"{type(value).__name__} {show(value)}"


def _int_like(value: Any, name: str, what: str = "an int") -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be {what}, got {_show(value)}")
    return operator.index(value)


def integer(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An int (numpy integers too, never a bool) in ``[minimum, maximum]``.

    Raises:
        InvalidTypeError: not an integer (a bool, a float, a str...).
        InvalidArgumentError: outside the bounds.
    """
    v = _int_like(value, name)
    if minimum is not None and v < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {show(v)}")
    if maximum is not None and v > maximum:
        raise InvalidArgumentError(f"{name} must be <= {maximum}, got {show(v)}")
    return v


def index(value: Any, name: str) -> int:
    """A token or layer index (negative: from the end) that fits the engine's i64.

    Raises:
        InvalidTypeError: not an integer.
        OutOfRangeError: beyond any sequence the engine can hold.
    """
    v = _int_like(value, name)
    if not I64_MIN <= v <= I64_MAX:
        raise OutOfRangeError(
            f"{name} {show(v)} is out of range: an index must lie within -2**63..2**63-1, and a "
            f"valid one within the text or model it indexes"
        )
    return v


def real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    expected: str | None = None,
) -> float:
    """A finite real number (numpy floats too, never a bool) within the bounds.

    Args:
        minimum / maximum: inclusive bounds; above: an exclusive lower bound.
        expected: how to describe an accepted value in the message (default: from the
            bounds).

    Raises:
        InvalidTypeError: not a real number.
        InvalidArgumentError: NaN, inf, or outside the bounds.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a number, got {_show(value)}")
    if expected is None:
        parts = ["a finite number"]
        if above is not None:
            parts.append(f"> {above}")
        if minimum is not None:
            parts.append(f">= {minimum}")
        if maximum is not None:
            parts.append(f"<= {maximum}")
        expected = parts[0] + (" " + ", ".join(parts[1:]) if len(parts) > 1 else "")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        raise InvalidArgumentError(f"{name} must be {expected}, got {show(value)}") from None
    ok = bool(np.isfinite(v))
    ok = ok and (above is None or v > above)
    ok = ok and (minimum is None or v >= minimum)
    ok = ok and (maximum is None or v <= maximum)
    if not ok:
        raise InvalidArgumentError(f"{name} must be {expected}, got {v}")
    return v


def number(value: Any, name: str, expected: str) -> float:
    """A real number as a float (numpy floats too, never a bool), NaN and inf included:
    the type check only, for settings whose values the engine checks.

    Raises:
        InvalidTypeError: not a real number.
        InvalidArgumentError: an int beyond float's range.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{name} must be {expected}, got {show(value)}") from None


def factor(value: Any, owner: str, op: str) -> float:
    """A finite real factor for a vector's arithmetic (``v * k``, ``v / k``, ``v.dose(k)``).

    Raises:
        InvalidTypeError: not a real number (a bool included).
        InvalidArgumentError: NaN or inf.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"a {owner} can be {op} a real number only, got {_show(value)}")
    try:
        v = float(value)
    except OverflowError:
        v = float("inf")
    if not np.isfinite(v):
        raise InvalidArgumentError(
            f"cannot scale a {owner} by {show(value)}; expected a finite number"
        )
    return v


def flag(value: Any, name: str) -> bool:
    """``True`` or ``False`` (a numpy bool too); nothing else is read as a truth value.

    Raises:
        InvalidTypeError: anything else (``"no"`` would otherwise read as True).
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise InvalidTypeError(f"{name} must be True or False, got {_show(value)}")


def text(value: Any, name: str) -> str:
    """A str the tokenizer can take: valid Unicode (no lone surrogate such as ``\\ud800``).

    Raises:
        InvalidTypeError: not a str.
        InvalidArgumentError: a lone surrogate, which UTF-8 cannot encode.
    """
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} must be a str, got {_show(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end]
            raise InvalidArgumentError(
                f"{name} contains a lone surrogate {bad!r} at index {exc.start}, which is not "
                f"valid Unicode text; expected a str that encodes to UTF-8 (clean it with "
                f"s.encode('utf-8', 'replace').decode())"
            ) from None
    return value


def texts(value: Any, name: str) -> tuple[list[str], bool]:
    """A non-empty list of valid texts, and whether a single str was given.

    Raises:
        InvalidTypeError: not a str or an iterable of str.
        InvalidArgumentError: an empty list, an invalid text.
    """
    if isinstance(value, str):
        return [text(value, name)], True
    if isinstance(value, bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidTypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    out = list(value)
    if not out:
        raise InvalidArgumentError(f"{name} is empty; pass at least one string")
    for i, item in enumerate(out):
        text(item, f"{name}[{i}]")
    return out, False


def token_ids(value: Any, name: str) -> list[int]:
    """A list of token ids (ints in 0..2**32-1; the vocabulary is checked by the engine).

    Raises:
        InvalidTypeError: not an iterable of ints.
        OutOfRangeError: a negative id or one past any vocabulary.
    """
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidTypeError(f"{name} must be a list of ints, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        v = _int_like(item, f"{name}[{i}]")
        if not 0 <= v <= _U32_MAX:
            raise OutOfRangeError(
                f"{name}[{i}] is {show(v)}; expected a token id >= 0 in the vocabulary"
            )
        out.append(v)
    return out


def path(value: Any, name: str) -> str:
    """A file-system path (str or os.PathLike of str) the OS can be given.

    Raises:
        InvalidTypeError: not a str or path, or a bytes path.
        InvalidArgumentError: an empty path, a NUL character, a lone surrogate.
    """
    if not isinstance(value, str | os.PathLike):
        raise InvalidTypeError(f"{name} must be a str or a pathlib.Path, got {_show(value)}")
    resolved = os.fspath(value)
    if not isinstance(resolved, str):
        raise InvalidTypeError(f"{name} must be a str or a str path, not bytes")
    if not resolved:
        raise InvalidArgumentError(f"{name} is empty; expected a file or folder path")
    if "\x00" in resolved:
        raise InvalidArgumentError(f"{name} {resolved!r} contains a NUL character")
    try:
        os.fsencode(resolved)
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{name} {resolved!r} cannot be encoded for the file system ({exc.reason})"
        ) from None
    return os.path.expanduser(resolved)


def vector(value: Any, name: str) -> npt.NDArray[np.float32]:
    """A read-only float32 copy of a 1-D, non-empty vector of finite real numbers.

    Raises:
        InvalidTypeError: not numbers (strings, bools, complex, objects).
        ShapeError: not 1-D, or empty.
        InvalidArgumentError: NaN or inf entries (also values beyond float32's range).
    """
    try:
        src = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidTypeError(f"{name} is not an array of numbers ({exc})") from None
    if src.dtype.kind not in "iuf":
        raise InvalidTypeError(
            f"{name} is not an array of numbers: got dtype {src.dtype}; expected int or "
            f"float entries"
        )
    if src.ndim != 1:
        raise ShapeError(f"{name} must be 1-D [d_model], got shape {src.shape}")
    if src.size == 0:
        raise ShapeError(f"{name} must be 1-D [d_model] with at least one entry, got shape (0,)")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.array(src, dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        j = int(np.argmin(finite))
        raise InvalidArgumentError(
            f"{name} contains {bad} NaN or inf value(s) (first at index {j}: {float(src[j])}, "
            f"float32 holds up to 3.4e38); every entry must be finite"
        )
    arr.flags.writeable = False
    return arr


def scaled(
    arrays: Mapping[int, npt.NDArray[np.float32]], k: float, what: str
) -> dict[int, npt.NDArray[np.float32]]:
    """``{layer: v * k}`` as new read-only float32 arrays.

    Raises:
        InvalidArgumentError: the product overflows float32.
    """
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for layer, v in arrays.items():
            w = (v.astype(np.float64) * k).astype(np.float32)
            if not np.isfinite(w).all():
                raise InvalidArgumentError(
                    f"{what} at layer {layer} overflows float32 (max 3.4e38); expected a "
                    f"smaller factor"
                )
            w.flags.writeable = False
            out[layer] = w
    return out


def jsonl_records(text: str, label: str) -> list[tuple[str, dict[str, Any]]]:
    """The JSON objects of JSON Lines `text`, one per non-blank line, each with its
    ``"LABEL, line N"`` for messages.

    Raises:
        InvalidArgumentError: a line that is not JSON, or not a JSON object.
    """
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{where}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise InvalidArgumentError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise InvalidArgumentError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out.append((where, obj))
    return out
