"""Chat templates: compile and render the jinja source that model files carry.

Rendering follows transformers' ``apply_chat_template`` (sandboxed jinja, ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception``, ``strftime_now``
and a ``tojson`` that does not escape HTML).

A template comes from a file someone downloaded, so jinja's sandbox (no attribute
access to internals, no mutation) is not enough: ``{{ 'x' * 8000000000 }}`` or two
nested ``range(100000)`` loops pass it and exhaust memory or time. Every render here
runs on a budget, checked *before* the work is done wherever the size of a result can
be known in advance:

- the rendered text, and any single string or list a template builds, is at most
  `BASE_CHARS` plus `CHARS_PER_INPUT` characters per character of the messages and
  arguments (`max_chars`);
- the template takes at most `BASE_STEPS` plus `STEPS_PER_INPUT` per input value
  steps: loop iterations, calls (functions, methods, macros, filters, tests) and
  operators (`max_steps`);
- the characters (or items) that those steps read and write add up to at most
  `VOLUME_PER_CHAR` times `max_chars` (`max_volume`): this bounds the time of the work
  done in C (copies, searches, joins) that a step count does not see;
- integers stay below `MAX_INT_BITS` bits, and ``tojson`` indents by at most
  `MAX_JSON_INDENT`.

Exceeding one raises `steerlab.errors.TemplateError`, which names what was exceeded and
its limit. So does a macro or recursive loop that recurses past Python's limit.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

from steerlab import _args
from steerlab.errors import InvalidArgumentError, ModelFormatError, TemplateError

if TYPE_CHECKING:
    import jinja2
    from jinja2 import nodes
    from jinja2.compiler import Frame

__all__ = [
    "BASE_CHARS",
    "BASE_STEPS",
    "CHARS_PER_INPUT",
    "MAX_INT_BITS",
    "MAX_JSON_INDENT",
    "STEPS_PER_INPUT",
    "VOLUME_PER_CHAR",
    "render_chat",
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
    (reachable only through objects `_measure` does not walk) counts as the ``[...]``
    that ``str`` writes for it: the walk tracks the containers on its current path."""
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


# -- the environment ----------------------------------------------------------------------


def _static_text(body: Iterable[nodes.Node]) -> int:
    """Characters of template text inside `body` (written once per loop iteration)."""
    from jinja2 import nodes

    total = 0
    for node in body:
        for data in node.find_all(nodes.TemplateData):
            total += len(data.data)
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
    return total


@functools.cache
def _environment_class() -> type[jinja2.sandbox.ImmutableSandboxedEnvironment]:
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BudgetCodeGenerator(CodeGenerator):
        """Routes loops, ``~`` and comparisons through the render's budget."""

        def visit_For(self, node: nodes.For, frame: Frame) -> None:
            if not getattr(node, "_steerlab_budgeted", False):
                cost = nodes.Const(1 + _static_text(node.body))
                # Each item of the outer iterable is a step (filtered out or not); the
                # items of a recursive loop's inner calls are charged in the body.
                node.iter = nodes.Call(
                    nodes.EnvironmentAttribute("steerlab_iter"),
                    [node.iter, cost],
                    [],
                    None,
                    None,
                    lineno=node.lineno,
                )
                if node.recursive:
                    tick = nodes.Call(
                        nodes.EnvironmentAttribute("steerlab_tick"),
                        [cost],
                        [],
                        None,
                        None,
                        lineno=node.lineno,
                    )
                    node.body = [nodes.ExprStmt(tick, lineno=node.lineno), *node.body]
                node._steerlab_budgeted = True  # type: ignore[attr-defined]
            super().visit_For(node, frame)

        def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
            self.write("environment.steerlab_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

        def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
            self.write("(environment.steerlab_operand(")
            self.visit(node.expr, frame)
            self.write(")")
            for op in node.ops:
                self.write(f" {_COMPARE_OPS[op.op]} environment.steerlab_operand(")
                self.visit(op.expr, frame)
                self.write(")")
            self.write(")")

    class BudgetEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = BudgetCodeGenerator
        # Every binary operator runs through call_binop (and so is never folded at
        # compile time, where `10 ** 10 ** 10` would run outside any budget).
        intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])
        steerlab_iter = staticmethod(_budget_iter)
        steerlab_concat = staticmethod(_budget_concat)
        steerlab_operand = staticmethod(_budget_operand)
        steerlab_tick = staticmethod(_budget_tick)

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.filters = {k: _budgeted(k, f, "filter") for k, f in self.filters.items()}
            self.tests = {k: _budgeted(k, t, "test") for k, t in self.tests.items()}  # type: ignore[arg-type]
            self.globals["lipsum"] = _lipsum
            self.finalize = _finalize

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _binop_size(operator, left, right)
            out = super().call_binop(context, operator, left, right)
            if isinstance(out, int) and not isinstance(out, bool):
                _budget().int_bits(out.bit_length(), f"{operator!r}")
            return out

        def getitem(self, obj: Any, argument: Any) -> Any:
            out = super().getitem(obj, argument)
            if isinstance(argument, slice):
                return _check_result(out, "a slice")
            _budget().step()
            return out

        def getattr(self, obj: Any, attribute: str) -> Any:
            _budget().step()
            return super().getattr(obj, attribute)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            b = _budget()
            target = getattr(__obj, "__wrapped__", __obj)
            owner = getattr(target, "__self__", None)
            name = getattr(target, "__name__", "")
            if isinstance(owner, str):
                _check_str_method(owner, name, args, kwargs)
                if name == "join" and args and __self.is_safe_callable(__obj):
                    b.step(len(owner))
                    return _join(owner, args[0])
            b.step(_sized(owner))
            out = ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
            return _check_result(out, f"the result of {name or 'a call'}()")

    return BudgetEnvironment


_COMPARE_OPS = {
    "eq": "==",
    "ne": "!=",
    "gt": ">",
    "gteq": ">=",
    "lt": "<",
    "lteq": "<=",
    "in": "in",
    "notin": "not in",
}


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # As transformers does: jinja's own tojson escapes HTML characters.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    """Compile a chat template the way transformers' `apply_chat_template` does."""
    import jinja2

    env = _environment_class()(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _budgeted("tojson", _tojson, "filter")
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelFormatError(f"the chat template does not parse: {exc}") from None
    except RecursionError:
        raise ModelFormatError("the chat template is nested too deeply to parse") from None


def _path_name(path: tuple[Any, ...]) -> str:
    """``messages[0]['content']`` for the path ``(((None, 'messages'), 0), 'content')``."""
    keys = []
    while path[0] is not None:
        path, key = path
        keys.append(key)
    out = str(path[1])
    for key in reversed(keys):
        out += f"[{key!r:.40}]" if not isinstance(key, _SetItem) else " (an item of the set)"
    return out


class _SetItem:
    """A path step into a set (its items have no index)."""


def _measure(values: Mapping[str, Any]) -> tuple[int, int]:
    """Characters of the strings in `values` (the messages and the template's other
    variables, by name; nested containers walked) and the number of values, for the
    budget.

    Each container is walked once, however often it is referenced (a message used
    twice renders; the walk's work is linear in the size of the input), and its items
    are counted. Every string, key included, must be valid Unicode text.

    Raises:
        InvalidArgumentError: a container inside itself (``d["self"] = d``: it has no
            text, and walking it would never end) or a lone surrogate in a string.
    """
    chars = count = 0
    done: set[int] = set()
    on_path: dict[int, tuple[Any, ...]] = {}
    set_item = _SetItem()
    stack: list[Any] = [(v, (None, k)) for k, v in reversed(list(values.items()))]
    while stack:
        entry = stack.pop()
        if isinstance(entry, _Leave):
            done.add(entry.key)
            del on_path[entry.key]
            continue
        x, where = entry
        count += 1
        if isinstance(x, str):
            chars += len(x)
            if not x.isascii():
                _args.text(x, _path_name(where))
        elif isinstance(x, Mapping | list | tuple | set | frozenset):
            key = id(x)
            if key in on_path:
                raise InvalidArgumentError(
                    f"{_path_name(on_path[key])} contains a reference to itself "
                    f"({_path_name(where)} is {_path_name(on_path[key])}): the messages "
                    f"and template arguments cannot contain themselves; expected plain "
                    f"data (dicts, lists, strings, numbers) without cycles"
                )
            if key in done:
                continue
            on_path[key] = where
            stack.append(_Leave(key))
            if isinstance(x, Mapping):
                for k, v in x.items():
                    count += 1
                    if isinstance(k, str):
                        chars += len(k)
                        if not k.isascii():
                            _args.text(k, f"a key of {_path_name(where)}")
                    stack.append((v, (where, k)))
            elif isinstance(x, list | tuple):
                stack.extend((v, (where, i)) for i, v in enumerate(x))
            else:
                stack.extend((v, (where, set_item)) for v in x)
    return chars, count


def render_chat(
    source: str,
    *,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    **variables: Any,
) -> str:
    """Render `messages` with the chat template `source`, on a budget (module docstring).

    Raises:
        InvalidArgumentError: the template rejected the messages (``raise_exception``)
            or failed on them (an error inside the template's own code); a message or
            variable contains itself (``d["self"] = d``); a string in them, or the
            rendered text, holds a lone surrogate (``"\\ud800"``: not valid Unicode).
        ModelFormatError: the template does not parse.
        TemplateError: the template exceeded a limit of its budget.
    """
    import jinja2

    template = _compile_template(source)
    budget = _Budget(*_measure({"messages": messages, **variables}))
    token = _BUDGET.set(budget)
    try:
        parts = []
        size = 0
        for chunk in template.generate(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        ):
            size += len(chunk)
            budget.output(size)
            parts.append(chunk)
        text = "".join(parts)
    except TemplateError as exc:
        raise TemplateError(str(exc)) from None
    except jinja2.TemplateError as exc:
        raise InvalidArgumentError(f"the chat template rejected the messages: {exc}") from None
    except RecursionError:
        raise TemplateError(
            "the chat template recursed deeper than Python's recursion limit allows "
            "(a macro or recursive loop calling itself)"
        ) from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(
            f"the chat template failed on these messages: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        _BUDGET.reset(token)
    # The messages were checked above; a template can still write a lone surrogate of
    # its own (the literal "\ud800" or a filter's result), which no tokenizer takes.
    return _args.text(text, "the text the chat template rendered")
