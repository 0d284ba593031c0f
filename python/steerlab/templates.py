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

The budget and its checks are `steerlab._template_budget`; this module builds the
environment on them, measures the inputs and renders.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from steerlab import _args
from steerlab._template_budget import (
    _BUDGET,
    BASE_CHARS,
    BASE_STEPS,
    CHARS_PER_INPUT,
    MAX_INT_BITS,
    MAX_JSON_INDENT,
    STEPS_PER_INPUT,
    VOLUME_PER_CHAR,
    _binop_size,
    _Budget,
    _budget,
    _budget_concat,
    _budget_iter,
    _budget_operand,
    _budget_tick,
    _budgeted,
    _check_result,
    _check_str_method,
    _finalize,
    _join,
    _Leave,
    _lipsum,
    _sized,
)
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
