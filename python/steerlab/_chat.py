"""The checks and variables around `Model.chat_prompt`: which template, whether the
messages are a list of role mappings, and the special tokens templates expect; the
rendering itself (a sandboxed jinja environment on a budget) is `steerlab.templates`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from steerlab import _args, _core
from steerlab.errors import InvalidArgumentError, InvalidTypeError
from steerlab.templates import render_chat

__all__ = ["chat_prompt"]


def chat_prompt(
    core: _core.Model,
    messages: Any,
    add_generation_prompt: Any,
    chat_template: Any,
    template_kwargs: dict[str, Any],
) -> str:
    """`Model.chat_prompt` for the extension model `core` (arguments and errors as there)."""
    add_generation_prompt = _args.flag(add_generation_prompt, "add_generation_prompt")
    if chat_template is not None:
        _args.text(chat_template, "chat_template")
    source = chat_template if chat_template is not None else core.chat_template
    if not source:
        raise InvalidArgumentError(
            f"the model at {core.path} has no chat template; pass chat_template= or "
            f"write the prompt text yourself"
        )
    if isinstance(messages, str | Mapping) or not isinstance(messages, Iterable):
        raise InvalidTypeError(
            "messages must be a list of {'role': ..., 'content': ...}, got "
            f"{type(messages).__name__}"
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InvalidTypeError(
                f"messages[{i}] must be a mapping with 'role' and 'content', got "
                f"{_args.show(message)}"
            )
        checked.append(dict(message))
    variables: dict[str, Any] = {}
    for key in ("bos_token", "eos_token"):
        value = getattr(core, key)
        if value is not None:
            variables[key] = value
    variables.update(template_kwargs)
    return render_chat(
        source, messages=checked, add_generation_prompt=add_generation_prompt, **variables
    )
