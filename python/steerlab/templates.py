"""Chat templates: compile and render the jinja source that model files carry.

Rendering follows transformers' ``apply_chat_template`` (sandboxed jinja, ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception``, ``strftime_now``
and a ``tojson`` that does not escape HTML).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from steerlab.errors import InvalidArgumentError, ModelFormatError

if TYPE_CHECKING:
    import jinja2

__all__ = ["render_chat"]


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
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelFormatError(f"the chat template does not parse: {exc}") from None


def render_chat(
    source: str,
    *,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    **variables: Any,
) -> str:
    """Render `messages` with the chat template `source`.

    Raises:
        InvalidArgumentError: the template rejected the messages.
        ModelFormatError: the template does not parse.
    """
    import jinja2

    template = _compile_template(source)
    try:
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.TemplateError as exc:
        raise InvalidArgumentError(f"the chat template rejected the messages: {exc}") from None
