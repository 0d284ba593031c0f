"""steerlab's exceptions.

Every error steerlab raises on bad input is a `SteerlabError`. Each subclass also derives
from the built-in exception a Python user would expect, so ``except ValueError`` keeps
working:

- `ModelNotFoundError` (`FileNotFoundError`): no file or folder at the path, a model
  package that is not installed, a model that cannot be downloaded.
- `ModelFormatError` (`ValueError`): a truncated, corrupt or inconsistent model file.
- `UnsupportedModelError` (`ModelFormatError`): an architecture steerlab does not run.
- `InvalidArgumentError` (`ValueError`): a value outside what an argument accepts.
- `InvalidTypeError` (`TypeError`): an argument of the wrong Python type.
- `DivisionByZeroError` (`InvalidArgumentError`, `ZeroDivisionError`): a steering
  value divided by zero.
- `OutOfRangeError` (`IndexError`): a layer or position index outside the model/prompt.
- `ShapeError` (`ValueError`): an array of the wrong shape, e.g. a vector whose width is
  not the model's `d_model`.
- `ContextLengthError` (`ValueError`): a prompt longer than the model's context.
- `TokenizerError` (`ValueError`): text or ids the tokenizer cannot handle.
- `BackendError` (`RuntimeError`): a failure inside the compute backend.
- `MissingExtraError` (`ImportError`): a feature of an optional extra (plots, the hub,
  the server, Ray) used without the extra installed; the message names the
  ``pip install 'steerlab[...]'`` that brings it.

All but `InvalidTypeError`, `DivisionByZeroError`, `TemplateError` and `MissingExtraError` are defined by the Rust extension, which raises them itself.
"""

from steerlab._core import (
    BackendError,
    ContextLengthError,
    InvalidArgumentError,
    ModelFormatError,
    ModelNotFoundError,
    OutOfRangeError,
    ShapeError,
    SteerlabError,
    TokenizerError,
    UnsupportedModelError,
)

__all__ = [
    "BackendError",
    "ContextLengthError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "MissingExtraError",
    "ModelFormatError",
    "ModelNotFoundError",
    "OutOfRangeError",
    "ShapeError",
    "SteerlabError",
    "TokenizerError",
    "UnsupportedModelError",
]


class InvalidTypeError(SteerlabError, TypeError):
    """An argument of the wrong Python type (e.g. a prompt that is not a string)."""


class TemplateError(SteerlabError, ValueError):
    """A chat template exceeded a limit while rendering: the size of its output or of a
    value it builds, the number of steps it takes, or the total work; the message names
    the limit (see `steerlab.templates`). Templates come from model files, so these
    limits keep a hostile or broken one from exhausting memory or time."""


__all__ += ["TemplateError"]


class MissingExtraError(SteerlabError, ImportError):
    """An optional extra's package is not installed (the message names the extra)."""


class DivisionByZeroError(InvalidArgumentError, ZeroDivisionError):
    """A `Steering` or `SteeringVector` divided by zero. Also a `ZeroDivisionError`, so
    code that catches Python's own division error keeps working."""


__all__ += ["DivisionByZeroError"]
