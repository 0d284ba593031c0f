"""The process never hangs and never ignores the user: forked workers, Ctrl-C, and chat
templates that come from model files."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab.errors import InvalidArgumentError, ModelFormatError, TemplateError

# Seconds a forked worker gets for a call the parent did in well under one.
FORK_TIMEOUT = 120
# Seconds between SIGINT and KeyboardInterrupt that the interrupt tests accept (the engine
# looks for signals every 50 ms and stops within one decode step or decoder block).
INTERRUPT_LATENCY = 2.0

# ---------------------------------------------------------------------------- fork

# The model a forked worker uses: the child inherits this module's globals.
_FORKED: dict[str, Any] = {}


def _long_prompt(repeats: int = 6) -> str:
    # 6 repeats: long enough that the prefill's element-wise ops pass candle's 64K-value
    # threshold for its own worker pool (the pool a forked child used to wait on forever).
    return " ".join(["The quick brown fox jumps over the lazy dog."] * repeats)


def _work(prompts: list[str]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    m: sl.Model = _FORKED["model"]
    gen = m.generate(prompts, max_new_tokens=6, return_ids=True)
    cap = m.capture(prompts, layers=[3, -1], position="mean")
    logits = m.logits(prompts)
    return gen, cap, logits


def _in_forked_worker(prompts: list[str]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        # A hang fails here (TimeoutError) and leaving the block kills the worker.
        return pool.apply_async(_work, (prompts,)).get(timeout=FORK_TIMEOUT)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_worker_after_generate(model: sl.Model, prompts: list[str]) -> None:
    batch = [*prompts, _long_prompt()]
    _FORKED["model"] = model
    want = _work(batch)  # the parent uses the model (and every pool) first
    gen, cap, logits = _in_forked_worker(batch)
    assert gen == want[0]
    np.testing.assert_array_equal(cap, want[1])
    np.testing.assert_array_equal(logits, want[2])


# Run in a fresh interpreter, so that its process has used only capture() and logits()
# when it forks; its workers then use all three calls, and fork again.
_CAPTURE_THEN_FORK = """
import multiprocessing, sys
import numpy as np
import steerlab as sl

m = sl.Model.load()
batch = sys.argv[1:]


def reads(_=None):
    return m.capture(batch, layers=[0, -1], position="last"), m.logits(batch)


def generate(_=None):
    return m.generate(batch, max_new_tokens=4, return_ids=True)


def child(queue):
    m.logits(batch)  # this child uses the model, then forks again
    with ctx.Pool(1) as pool:
        queue.put(pool.apply_async(generate).get(timeout=TIMEOUT))


ctx = multiprocessing.get_context("fork")
cap, logits = reads()
with ctx.Pool(2) as pool:
    for got_cap, got_logits in [pool.apply_async(reads).get(timeout=TIMEOUT) for _ in range(2)]:
        np.testing.assert_array_equal(got_cap, cap)
        np.testing.assert_array_equal(got_logits, logits)
    ids = pool.apply_async(generate).get(timeout=TIMEOUT)
queue = ctx.Queue()
process = ctx.Process(target=child, args=(queue,))
process.start()
deeper = queue.get(timeout=2 * TIMEOUT)
process.join(TIMEOUT)
assert ids == deeper == generate(), (ids, deeper)
print("forked workers ok")
""".replace("TIMEOUT", str(FORK_TIMEOUT))


def test_forked_workers_of_a_process_that_used_capture_and_logits(prompts: list[str]) -> None:
    batch = [*prompts, _long_prompt()]
    done = subprocess.run(
        [sys.executable, "-c", _CAPTURE_THEN_FORK, *batch],
        capture_output=True,
        text=True,
        timeout=4 * FORK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "forked workers ok"


# ---------------------------------------------------------------------------- Ctrl-C


@contextlib.contextmanager
def _sigint_after(delay: float) -> Iterator[dict[str, float]]:
    """Send this process SIGINT after `delay` seconds (as Ctrl-C or a Jupyter interrupt
    does); yields a dict where the time it was sent appears as ``"sent"``."""
    times: dict[str, float] = {}

    def fire() -> None:
        times["sent"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(delay, fire)
    timer.start()
    try:
        yield times
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)


def _assert_interrupted(call: Any, delay: float = 0.5) -> None:
    with _sigint_after(delay) as times:
        with pytest.raises(KeyboardInterrupt):
            call()
        stopped = time.monotonic()
    assert "sent" in times, "the call ended before the interrupt was sent; make it longer"
    latency = stopped - times["sent"]
    assert latency < INTERRUPT_LATENCY, f"KeyboardInterrupt came {latency:.2f} s after SIGINT"


def test_ctrl_c_stops_generate(model: sl.Model) -> None:
    prompt = "Once upon a time"
    before = model.generate(prompt, max_new_tokens=8, return_ids=True)
    _assert_interrupted(
        lambda: model.generate(prompt, max_new_tokens=4000, ignore_eos=True, return_ids=True)
    )
    assert model.generate(prompt, max_new_tokens=8, return_ids=True) == before


def _many_texts(n: int) -> list[str]:
    return [f"Text number {i}: " + _long_prompt(10) for i in range(n)]


def test_ctrl_c_stops_capture_within_a_batch(model: sl.Model) -> None:
    texts = _many_texts(24)
    before = model.capture(texts[:2], layers=[4], position="mean")
    # One batch of 24 texts of ~110 tokens: seconds of prefill inside one engine call.
    _assert_interrupted(
        lambda: model.capture(texts, layers=[4], position="mean", batch_size=24, progress=False)
    )
    np.testing.assert_array_equal(model.capture(texts[:2], layers=[4], position="mean"), before)


def test_ctrl_c_stops_logits_and_token_logprobs(model: sl.Model) -> None:
    texts = _many_texts(24)
    before = model.logits(texts[:2])
    _assert_interrupted(lambda: model.logits(texts, batch_size=24, progress=False))
    np.testing.assert_array_equal(model.logits(texts[:2]), before)
    lp = model.token_logprobs(texts[:1])
    _assert_interrupted(lambda: model.token_logprobs(texts, batch_size=24, progress=False))
    np.testing.assert_array_equal(model.token_logprobs(texts[:1])[0], lp[0])


# ---------------------------------------------------------------------------- templates

_MESSAGES = [{"role": "user", "content": "Hi there"}]
_LIMIT = r"above the limit of 4194\d{3} characters \(4194304 plus 4 per character"


def _render(model: sl.Model, template: str) -> str:
    return model.chat_prompt(_MESSAGES, chat_template=template)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        (
            "{{ 'x' * 8000000000 }}",
            rf"would build str \* 8000000000 of 8000000000 characters or items, {_LIMIT}",
        ),
        (
            "{{ [0] * 8000000000 }}",
            rf"would build list \* 8000000000 of 8000000000 characters or items, {_LIMIT}",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            rf"would build a ~ concatenation of 8388608 characters or items, {_LIMIT}",
        ),
        (
            "{{ 'x'|center(8000000000) }}",
            rf"would build center\(8000000000\) of 8000000000 characters or items, {_LIMIT}",
        ),
        (
            "{{ '%0999999999d' % 1 }}",
            rf"would build a formatted field of 999999999 characters or items, {_LIMIT}",
        ),
        (
            "{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}",
            rf"would build a replaced string of 1000000000000 characters or items, {_LIMIT}",
        ),
        (
            "{{ range(100000)|join('x' * 100000) }}",
            rf"would build a joined string of \d+ characters or items, {_LIMIT}",
        ),
        (
            "{% set l = ['x' * 4000000] * 4000000 %}{{ l|tojson }}",
            r"would build the text of a value given to the tojson filter of at least \d+ "
            rf"characters or items, {_LIMIT}",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            r"output exceeds the limit of 4194\d{3} characters",
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            r"ran more than its limit of 1000[0-9]{3} steps \(loop iterations, calls and "
            r"operators\)",
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) if false %}{% endfor %}"
            "{% endfor %}",
            r"ran more than its limit of 1000[0-9]{3} steps",
        ),
        (
            "{% set s = 'x' * 4000000 %}{% for i in range(100000) %}"
            "{% if 'y' in s %}{% endif %}{% endfor %}",
            r"processed more than its limit of \d+ characters or items in total",
        ),
        (
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
            "{% endmacro %}{{ f(60) }}",
            r"ran more than its limit of 1000[0-9]{3} steps",
        ),
        (
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            r"recursed deeper than Python's recursion limit allows \(a macro or recursive "
            r"loop calling itself\)",
        ),
        (
            "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
            r"recursed deeper than Python's recursion limit",
        ),
        ("{{ 2 ** 10000000 }}", r"2 \*\* 10000000, an integer of about 20000000 bits"),
        ("{{ lipsum(1000000000) }}", r"lipsum\(1000000000, max=100\) of \d+ characters"),
        ("{{ messages|tojson(indent=100000) }}", r"tojson indent=100000 is above the limit of 64"),
    ],
)
def test_template_limits(model: sl.Model, template: str, match: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError, match=match):
        _render(model, template)
    assert time.monotonic() - start < 30


def test_template_error_is_a_steerlab_value_error() -> None:
    assert TemplateError is sl.TemplateError
    assert issubclass(TemplateError, sl.SteerlabError)
    assert issubclass(TemplateError, ValueError)


def test_template_limit_grows_with_the_input(model: sl.Model) -> None:
    # A long conversation may render to more than the base limit.
    big = "y" * 5_000_000
    text = model.chat_prompt(
        [{"role": "user", "content": big}], chat_template="{{ messages[0].content }}!"
    )
    assert text == big + "!"
    with pytest.raises(
        TemplateError,
        match=r"would build str \* 5 of 25000000 characters or items, above the limit of "
        r"24194\d{3} characters \(4194304 plus 4 per character of the messages and arguments, "
        r"which have 5000\d{3}\)",
    ):
        model.chat_prompt(
            [{"role": "user", "content": big}],
            chat_template="{{ messages[0].content * 5 }}",
        )


def test_template_errors_of_its_own_code(model: sl.Model) -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"the chat template failed on these messages: ZeroDivisionError: division by zero",
    ):
        _render(model, "{{ 1 / 0 }}")
    with pytest.raises(ModelFormatError, match="the chat template is nested too deeply to parse"):
        _render(model, "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")


# A template exercising what real chat templates use (Llama 3, Qwen 2.5, Mistral,
# SmolLM2, Gemma styles): it renders exactly as jinja's own sandbox renders it.
_REALISTIC = """
{%- macro render(m) -%}<|{{ m['role'] }}|>{{ m['content'] | trim }}{%- endmacro -%}
{%- set ns = namespace(system='', found=false, n=0) -%}
{%- if messages[0]['role'] == 'system' -%}
    {%- set ns.system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}
{{ bos_token }}{% if tools is defined and tools %}{{ tools | tojson(indent=4) }}
{% for t in tools %}{{ "- " ~ t.name ~ ": " ~ t.description }}
{% endfor %}{% endif %}
{%- if ns.system %}[SYS]{{ ns.system.strip() }}[/SYS]{% endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('roles must alternate user/assistant') -}}
    {%- endif -%}
    {%- set ns.n = ns.n + 1 -%}
    {{ render(message) }}{{ '\\n' if not loop.last else '' }}
    {%- if 'secret' in message['content'] %}[redacted]{% endif -%}
{%- endfor -%}
{{ ' ' ~ ns.n ~ ' turns; ' ~ (messages | map(attribute='role') | unique | list | join(',')) }}
{{ '%s/%d' % ('x', 3) }} {{ '{}-{:>4}'.format('a', 7) }} {{ 'a,b'.split(',') | length }}
{{ (messages | selectattr('role', 'equalto', 'user') | list | length) * 2 }}
{{- range(3) | sum }}{{ 'ab' * 2 }}{{ [1, 2] + [3] }}{{ 2 ** 10 }}{{ 7 // 2 }}{{ -3 % 5 }}
{%- for x in [[1, [2, 3]], 4] recursive %}{{ x if x is number else loop(x) }}{% endfor %}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""


def test_realistic_template_renders_as_the_plain_sandbox(model: sl.Model) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from steerlab.templates import _raise_exception, _tojson

    messages = [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "Hi <there> & é"},
        {"role": "assistant", "content": "Hello, a secret."},
        {"role": "user", "content": "Bye"},
    ]
    tools = [{"name": "search", "description": "find things", "parameters": {"q": "str"}}]
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    want = env.from_string(_REALISTIC).render(
        messages=messages, add_generation_prompt=True, bos_token="<s>", tools=tools
    )
    got = model.chat_prompt(messages, chat_template=_REALISTIC, bos_token="<s>", tools=tools)
    assert got == want
    assert "<|assistant|>" in got and "[redacted]" in got
    with pytest.raises(InvalidArgumentError, match="roles must alternate user/assistant"):
        model.chat_prompt(messages[1:2] * 2, chat_template=_REALISTIC)


# ---------------------------------------------------- circular or invalid template input

_CYCLE = (
    r"^{} contains a reference to itself \({} is {}\): the messages and template arguments "
    r"cannot contain themselves; expected plain data \(dicts, lists, strings, numbers\) "
    r"without cycles$"
)


def test_a_message_that_contains_itself_is_refused_fast(model: sl.Model) -> None:
    d: dict[str, Any] = {"role": "user", "content": "hi"}
    d["self"] = d
    d2: dict[str, Any] = {"role": "user"}
    d2["content"] = [d2]
    loop: list[Any] = []
    loop.append(loop)
    m0 = r"messages\[0\]"
    # (template, messages, kwargs, match from render_chat, match from chat_prompt, which
    # renders a copy of each message: there the cycle starts one step further in.)
    cases: list[tuple[str, list[Any], dict[str, Any], str, str]] = [
        (
            "{{ messages[0].content }}",
            [d],
            {},
            _CYCLE.format(m0, rf"{m0}\['self'\]", m0),
            _CYCLE.format(rf"{m0}\['self'\]", rf"{m0}\['self'\]\['self'\]", rf"{m0}\['self'\]"),
        ),
        (
            "{{ messages|tojson }}",
            [d2],
            {},
            _CYCLE.format(m0, rf"{m0}\['content'\]\[0\]", m0),
            _CYCLE.format(
                rf"{m0}\['content'\]",
                rf"{m0}\['content'\]\[0\]\['content'\]",
                rf"{m0}\['content'\]",
            ),
        ),
        (
            "{{ tools }}",
            [{"role": "user", "content": "hi"}],
            {"tools": {"a": (loop,)}},
            _CYCLE.format(r"tools\['a'\]\[0\]", r"tools\['a'\]\[0\]\[0\]", r"tools\['a'\]\[0\]"),
            _CYCLE.format(r"tools\['a'\]\[0\]", r"tools\['a'\]\[0\]\[0\]", r"tools\['a'\]\[0\]"),
        ),
    ]
    for template, messages, kwargs, match, via_copy in cases:
        start = time.monotonic()
        with pytest.raises(InvalidArgumentError, match=match) as info:
            sl.templates.render_chat(
                template, messages=messages, add_generation_prompt=False, **kwargs
            )
        assert type(info.value) is InvalidArgumentError
        assert time.monotonic() - start < 2, template
        start = time.monotonic()
        with pytest.raises(InvalidArgumentError, match=via_copy) as info:
            model.chat_prompt(messages, chat_template=template, **kwargs)
        assert type(info.value) is InvalidArgumentError
        assert time.monotonic() - start < 2, template


def test_shared_but_acyclic_messages_render(model: sl.Model) -> None:
    m = {"role": "user", "content": "hi"}
    assert (
        model.chat_prompt([m, m], chat_template="{{ messages|tojson }}")
        == '[{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]'
    )
    inner = ["x"]
    assert (
        model.chat_prompt(
            [{"role": "user", "content": [inner, inner]}],
            chat_template="{{ messages[0].content|tojson }}",
        )
        == '[["x"], ["x"]]'
    )
    # 2**60 paths to the same message, held in 60 small lists: measuring the input walks
    # each list once, and writing it as text stops at the size limit.
    deep: list[Any] = [m]
    for _ in range(60):
        deep = [deep, deep]
    start = time.monotonic()
    assert model.chat_prompt([m], chat_template="{{ tools|length }}", tools=deep) == "2"
    with pytest.raises(
        TemplateError,
        match=r"would build the text of a value given to the tojson filter of at least",
    ):
        model.chat_prompt([m], chat_template="{{ tools|tojson }}", tools=deep)
    assert time.monotonic() - start < 5


_SURROGATE = (
    r"^{} contains a lone surrogate '\\ud800' at index {}, which is not valid Unicode text; "
    r"expected a str that encodes to UTF-8 \(clean it with s\.encode\('utf-8', "
    r"'replace'\)\.decode\(\)\)$"
)


def test_a_lone_surrogate_in_the_messages_or_the_output_is_refused(model: sl.Model) -> None:
    cases: list[tuple[str, list[Any], dict[str, Any], str]] = [
        (
            "{{ messages[0].content }}",
            [{"role": "user", "content": "ok"}, {"role": "user", "content": "ab\ud800"}],
            {},
            _SURROGATE.format(r"messages\[1\]\['content'\]", 2),
        ),
        (
            "{{ messages|tojson }}",
            [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}],
            {},
            _SURROGATE.format(r"messages\[0\]\['content'\]\[0\]\['text'\]", 0),
        ),
        (
            "x",
            [{"role": "user", "content": "hi", "\ud800": 1}],
            {},
            _SURROGATE.format(r"a key of messages\[0\]", 0),
        ),
        (
            "x",
            [{"role": "user", "content": "hi"}],
            {"tools": [{"description": "\ud800"}]},
            _SURROGATE.format(r"tools\[0\]\['description'\]", 0),
        ),
        # The template's own string literal (its source is plain ASCII).
        (
            '{{ "\\ud800" }}',
            [{"role": "user", "content": "hi"}],
            {},
            _SURROGATE.format("the text the chat template rendered", 0),
        ),
    ]
    for template, messages, kwargs, match in cases:
        with pytest.raises(InvalidArgumentError, match=match) as info:
            model.chat_prompt(messages, chat_template=template, **kwargs)
        assert type(info.value) is InvalidArgumentError
    # Valid non-ASCII text passes.
    assert (
        model.chat_prompt(
            [{"role": "user", "content": "é😀"}], chat_template="{{ messages[0].content }}"
        )
        == "é😀"
    )
