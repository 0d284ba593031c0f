"""The budget a chat template renders on (see `steerlab.templates`, whose docstring
gives the limits): the counters of one render, the size checks made before a value is
built, and the wrappers that route jinja's operators, calls, filters, tests, loops and
output through them. `steerlab.templates` builds the environment from these pieces and
imports this module, never the reverse.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from steerlab.errors import TemplateError

__all__ = [
    "BASE_CHARS",
    "BASE_STEPS",
    "CHARS_PER_INPUT",
    "MAX_INT_BITS",
    "MAX_JSON_INDENT",
    "STEPS_PER_INPUT",
    "VOLUME_PER_CHAR",
]

BASE_CHARS = 4 * 1024 * 1024
CHARS_PER_INPUT = 4
BASE_STEPS = 1_000_000
STEPS_PER_INPUT = 100
VOLUME_PER_CHAR = 32
MAX_INT_BITS = 65_536
MAX_JSON_INDENT = 64


class _Budget:
    """What one render may still do (see the module docstring)."""

    def __init__(self, input_chars: int, input_values: int) -> None:
        self.input_chars = input_chars
        self.max_chars = BASE_CHARS + CHARS_PER_INPUT * input_chars
        self.max_steps = BASE_STEPS + STEPS_PER_INPUT * input_values
        self.max_volume = VOLUME_PER_CHAR * self.max_chars
        self.steps = 0
        self.volume = 0

    def _limit_text(self) -> str:
        return (
            f"{self.max_chars} characters ({BASE_CHARS} plus {CHARS_PER_INPUT} per "
            f"character of the messages and arguments, which have {self.input_chars})"
        )

    def step(self, volume: int = 0) -> None:
        self.steps += 1
        self.volume += volume
        if self.steps > self.max_steps:
            raise TemplateError(
                f"the chat template ran more than its limit of {self.max_steps} steps "
                f"(loop iterations, calls and operators); it may loop without end"
            )
        if self.volume > self.max_volume:
            raise TemplateError(
                f"the chat template processed more than its limit of {self.max_volume} "
                f"characters or items in total ({VOLUME_PER_CHAR} times the size limit "
                f"of {self.max_chars})"
            )

    def size(self, n: int, what: str, at_least: bool = False) -> None:
        """Refuse to build a value of `n` (or, estimated, at least `n`) characters or items."""
        if n > self.max_chars:
            amount = f"at least {n}" if at_least else f"{n}"
            raise TemplateError(
                f"the chat template would build {what} of {amount} characters or items, "
                f"above the limit of {self._limit_text()}"
            )

    def output(self, n: int) -> None:
        if n > self.max_chars:
            raise TemplateError(
                f"the chat template's output exceeds the limit of {self._limit_text()}"
            )

    def int_bits(self, bits: int, what: str) -> None:
        if bits > MAX_INT_BITS:
            raise TemplateError(
                f"the chat template would compute {what}, an integer of about {bits} bits, "
                f"above the limit of {MAX_INT_BITS} bits"
            )


# The budget of the render running in this thread / task; a fresh default one for work
# done outside a render (jinja folds constants when it compiles).
_BUDGET: ContextVar[_Budget | None] = ContextVar("steerlab_template_budget", default=None)


def _budget() -> _Budget:
    b = _BUDGET.get()
    return b if b is not None else _Budget(0, 0)


def _sized(x: Any) -> int:
    """Characters or items in `x` (0 for values without a length)."""
    if isinstance(x, str | bytes | list | tuple | dict | set | frozenset | range):
        return len(x)
    return 0


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _text_size(x: Any, limit: int) -> int:
    """About the length of ``str(x)`` (or its JSON), without building it: an estimate
    that stops counting once it passes `limit`. A list repeated by reference is cheap to
    hold but not to print, so the walk visits each reference (every visit adds at least
    2, so the walk ends after about ``limit / 2`` visits). A container inside itself
    (reachable only through objects `steerlab.templates._measure` does not walk) counts
    as the ``[...]`` that ``str`` writes for it: the walk tracks the containers on its
    current path."""
    total = 0
    on_path: set[int] = set()
    stack: list[Any] = [x]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, _Leave):
            on_path.discard(v.key)
            continue
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, bool) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() * 3 // 10 + 2
        elif isinstance(v, Mapping | list | tuple | set | frozenset):
            if id(v) in on_path:
                total += 5
                continue
            on_path.add(id(v))
            stack.append(_Leave(id(v)))
            if isinstance(v, Mapping):
                total += 2 + 4 * len(v)
                stack.extend(v.keys())
                stack.extend(v.values())
            else:
                total += 2 + 2 * len(v)
                stack.extend(v)
        elif isinstance(v, range):
            total += 2 + 2 * len(v)
        else:
            total += 32
    return total


class _Leave:
    """A walk's marker: the container `key` (an id) is no longer on the current path."""

    __slots__ = ("key",)

    def __init__(self, key: int) -> None:
        self.key = key


def _check_text(x: Any, what: str) -> None:
    """Refuse to turn the container `x` into text too long for the budget."""
    if isinstance(x, _CONTAINERS):
        b = _budget()
        n = _text_size(x, b.max_chars)
        b.step(n)
        b.size(n, what, at_least=True)


def _check_result(x: Any, what: str) -> Any:
    b = _budget()
    n = _sized(x)
    b.step(n)
    b.size(n, what)
    return x


# -- operators -------------------------------------------------------------------------

_SEQ = (str, list, tuple)


def _binop_size(op: str, left: Any, right: Any) -> None:
    """Check the size of `left op right` before it is computed."""
    b = _budget()
    if op == "*":
        if isinstance(left, _SEQ) and isinstance(right, int):
            b.size(len(left) * max(right, 0), f"{type(left).__name__} * {right}")
        elif isinstance(right, _SEQ) and isinstance(left, int):
            b.size(len(right) * max(left, 0), f"{left} * {type(right).__name__}")
        elif isinstance(left, int) and isinstance(right, int):
            b.int_bits(left.bit_length() + right.bit_length(), "a product")
    elif op == "+":
        if isinstance(left, _SEQ) and isinstance(right, _SEQ):
            b.size(len(left) + len(right), f"a {type(left).__name__} sum")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            b.int_bits(max(left.bit_length(), 1) * right, f"{left} ** {right}")
    elif op == "%" and isinstance(left, str):
        _check_percent_format(left, right)
    b.step(_sized(left) + _sized(right))


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str, args: Any) -> None:
    """Refuse `fmt % args` when a field width or precision could be huge."""
    b = _budget()
    _check_text(args, "a formatted string")
    for m in _PERCENT_SPEC.finditer(fmt):
        for part in m.groups():
            if part == "*":
                values = args if isinstance(args, tuple) else (args,)
                for v in values:
                    if isinstance(v, int):
                        b.size(abs(v), "a formatted field")
            elif part is not None:
                b.size(int(part), "a formatted field")


_FORMATTER = string.Formatter()
_DIGITS = re.compile(r"\d+")


def _check_brace_format(fmt: str, args: Iterable[Any]) -> None:
    """Refuse `fmt.format(...)` when a field width or precision could be huge."""
    b = _budget()
    for v in args:
        _check_text(v, "a formatted string")
    try:
        fields = list(_FORMATTER.parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        for d in _DIGITS.findall(spec):
            b.size(int(d), "a formatted field")
        if "{" in spec:  # a nested field takes its width from the arguments
            for v in args:
                if isinstance(v, int):
                    b.size(abs(v), "a formatted field")


# -- calls: str methods whose result size is known in advance ---------------------------


def _check_str_method(s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    b = _budget()
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            b.size(width, f"str.{name}({width})")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            b.size(len(s) + s.count("\t") * max(tab, 0), f"str.expandtabs({tab})")
    elif name == "replace" and len(args) >= 2:
        _check_replace(s, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "join" and args:
        pass  # handled by the caller (it needs the items)
    elif name in ("format", "format_map"):
        values = list(args) + list(kwargs.values())
        if name == "format_map" and args and isinstance(args[0], Mapping):
            values = list(args[0].values())
        _check_brace_format(s, values)


def _check_replace(s: Any, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _budget().size(len(s) + hits * (len(new) - len(old)), "a replaced string")


def _join_size(sep: str, parts: list[Any]) -> None:
    b = _budget()
    b.step(len(parts))
    total = 0
    for p in parts:
        total += len(p) if isinstance(p, str) else _text_size(p, b.max_chars)
        if total > b.max_chars:
            break
    b.size(total + len(sep) * max(len(parts) - 1, 0), "a joined string")


def _join(sep: str, items: Iterable[Any]) -> str:
    parts = list(items)
    _join_size(sep, parts)
    return sep.join(parts)


# -- filters and tests ------------------------------------------------------------------


# Filters that turn their value (which may be a container) into text.
_STRINGIFYING = frozenset(
    [
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "join",
        "lower", "pprint", "replace", "safe", "string", "striptags", "title", "tojson", "trim",
        "truncate", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
    ]
)  # fmt: skip


def _pre_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Checks, before the call, for filters whose result can outgrow their input; returns
    the arguments to call with (an iterable to join is read into a list first)."""
    b = _budget()
    value = args[0] if args else None
    rest = args[1:]
    if name in _STRINGIFYING:
        _check_text(value, f"the text of a value given to the {name} filter")

    def arg(i: int, key: str, default: Any) -> Any:
        return rest[i] if len(rest) > i else kwargs.get(key, default)

    if name == "center":
        width = arg(0, "width", 80)
        if isinstance(width, int):
            b.size(width, f"center({width})")
    elif name == "indent":
        width = arg(0, "width", 4)
        w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        text = str(value) if value is not None else ""
        b.size(len(text) + (text.count("\n") + 1) * max(w, 0), f"indent({width!r})")
    elif name == "format":
        if isinstance(value, str):
            _check_percent_format(value, rest if rest else kwargs)
    elif name == "replace":
        _check_replace(value, arg(0, "old", None), arg(1, "new", None), arg(2, "count", None))
    elif name == "wordwrap":
        width = arg(0, "width", 79)
        wrap = arg(2, "wrapstring", None)
        text = str(value) if value is not None else ""
        if isinstance(width, int) and isinstance(wrap, str):
            lines = len(text) // max(width, 1) + 1
            b.size(len(text) + lines * len(wrap), "a wrapped string")
    elif name in ("batch", "slice"):
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int):
            b.size(count, f"{name}({count})")
    elif name == "join":
        sep = arg(0, "d", "")
        if not isinstance(value, str) and isinstance(value, Iterable):
            items = list(value)
            _join_size(str(sep), items)
            return (items, *rest)
    elif name == "sum":
        items = list(value) if isinstance(value, Iterable) else []
        if any(isinstance(v, _SEQ) for v in items):  # concatenation: quadratic
            total = sum(_sized(v) for v in items)
            b.size(total, "a sum of sequences")
            b.step(total * len(items) // 2)
        return (items, *rest)
    elif name == "tojson":
        indent = arg(1, "indent", None)
        if isinstance(indent, int) and indent > MAX_JSON_INDENT:
            raise TemplateError(
                f"tojson indent={indent} is above the limit of {MAX_JSON_INDENT} in a chat template"
            )
    return args


def _budgeted(name: str, func: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """`func` (a filter or test) charged to the render's budget. Marked as needing the
    context, so jinja never runs it while compiling (outside any budget)."""
    from jinja2.utils import _PassArg, pass_context

    passes = _PassArg.from_obj(func)

    @pass_context
    def wrapper(context: Any, *args: Any, **kwargs: Any) -> Any:
        if kind == "filter":
            args = _pre_filter(name, args, kwargs)
        b = _budget()
        b.step(sum(_sized(a) for a in args))
        if passes is _PassArg.context:
            out = func(context, *args, **kwargs)
        elif passes is _PassArg.eval_context:
            out = func(context.eval_ctx, *args, **kwargs)
        elif passes is _PassArg.environment:
            out = func(context.environment, *args, **kwargs)
        else:
            out = func(*args, **kwargs)
        return _check_result(out, f"the result of the {name} {kind}") if kind == "filter" else out

    functools.update_wrapper(wrapper, func)
    wrapper.jinja_pass_arg = _PassArg.context  # type: ignore[attr-defined]
    return wrapper


def _budget_iter(iterable: Any, cost: int) -> Iterator[Any]:
    """Each loop iteration is one step, plus the template text of the loop body."""
    b = _budget()
    for item in iterable:
        b.step(cost)
        yield item


def _budget_tick(cost: int) -> str:
    _budget().step(cost)
    return ""


def _budget_operand(x: Any) -> Any:
    """An operand of a comparison: comparing costs its size."""
    _budget().step(_sized(x))
    return x


def _budget_concat(parts: Sequence[Any]) -> str:
    for p in parts:
        _check_text(p, "a ~ concatenation")
    texts = [str(p) for p in parts]
    b = _budget()
    n = sum(len(t) for t in texts)
    b.step(n)
    b.size(n, "a ~ concatenation")
    return "".join(texts)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` is written as text: check how long before it is built."""
    _check_text(value, "the text of an output value")
    return value


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    from jinja2.utils import generate_lorem_ipsum

    if n * max * 12 > _budget().max_chars:
        _budget().size(n * max * 12, f"lipsum({n}, max={max})")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))
