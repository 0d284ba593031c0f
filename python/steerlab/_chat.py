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

__all__ = ["chat_prompt", "request_prompts"]


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


#: Stands in for a request while the template is rendered, to find what surrounds it.
_MARK = "\x00steerlab-request\x00"


def request_prompts(core: _core.Model, requests: Iterable[str], chat: Any = "auto") -> list[str]:
    """User requests as the prompts the model reads: one path for every place that turns a
    request into a prompt (caching activations to train a controller, its gate, refusal
    evaluation), so training and inference see the same text.

    Args:
        core: the extension model.
        requests: plain requests, or prompts already rendered by `Model.chat_prompt`.
        chat: ``"auto"`` renders each request as a single user turn with the model's chat
            template (``chat_prompt([{"role": "user", "content": r}])``) unless it already
            ends with the template's assistant header (an already rendered prompt is kept
            as it is), and keeps the texts as given on a model without a template; True
            always renders (a model without a template is then an error); False never.

    Raises:
        InvalidArgumentError: ``chat=True`` on a model without a chat template, or `chat`
            not one of True, False, "auto".
        InvalidTypeError: a request that is not a str.
    """
    if not (chat is True or chat is False or chat == "auto"):
        raise InvalidArgumentError(f"chat must be True, False or 'auto', got {_args.show(chat)}")
    items = list(requests)
    for i, r in enumerate(items):
        if not isinstance(r, str):
            raise InvalidTypeError(f"requests[{i}] must be a str, got {_args.show(r)}")
    if chat is False or (chat == "auto" and not core.chat_template):
        return items

    def render(text: str) -> str:
        return chat_prompt(core, [{"role": "user", "content": text}], True, None, {})

    tail = render(_MARK).split(_MARK)[-1]
    return [r if chat == "auto" and tail and r.endswith(tail) else render(r) for r in items]
