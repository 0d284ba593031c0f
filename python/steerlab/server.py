"""An OpenAI-compatible HTTP server with per-request steering (``steerlab serve``).

Endpoints (FastAPI + uvicorn; ``pip install 'steerlab[serve]'``):

- ``POST /v1/chat/completions``: a conversation rendered with the model's chat template
  (`Model.chat_prompt`);
- ``POST /v1/completions``: a raw prompt, used as given;
- both stream server-sent events in OpenAI's chunk format (``"stream": true``, ending
  with ``data: [DONE]``; ``"stream_options": {"include_usage": true}`` adds a last chunk
  with the usage) or answer one JSON object, with ``usage`` token counts and a
  ``finish_reason`` of ``"stop"`` (eos token or stop string) or ``"length"``
  (``max_tokens`` or the model's context reached);
- ``GET /v1/models`` (the served model), ``GET /v1/steering`` (the artifacts of
  ``--vectors DIR``), ``GET /health`` (queue depth).

Sampling fields: ``max_tokens`` (chat also ``max_completion_tokens``; default 16 for
completions, the rest of the context for chat), ``temperature`` (default 1; 0 is
greedy), ``top_p``, ``top_k`` (an extension), ``seed``, ``stop`` (a str or list of str),
``n`` (only 1). Chat roles: system, developer (rendered as system), user, assistant;
message content is a str or a list of text parts. Fields OpenAI defines that steerlab does not implement (``logprobs``,
``tools``, penalties...) are refused with 400 unless they hold their neutral value;
unknown fields are refused.

Steering: a ``steering`` field in the body (the openai client sends it with
``extra_body={"steering": ...}``); the schema is `steerlab._serving.resolve_steering`:
``{"name": strength}`` for artifacts of ``--vectors DIR`` (several add), or a list of
terms ``{"name", "strength"}``, ``{"vector", "layer", "strength", "positions"}`` (raw),
``{"hypersteer", "instruction", "strength"}``. Controllers are named like vectors.

Batching: concurrent requests run together, each row with its own steering, sampling
settings and seed, and each response equals the same request sent alone. A scheduler
thread takes up to ``max_batch`` waiting requests (waiting ``batch_window_ms`` for more
after the first); a request arriving while a batch runs waits for the next batch
(there is no continuous batching). When ``max_queue`` requests are waiting, new ones get
503 with ``Retry-After``. A streaming client that disconnects ends its row at once; the
other rows go on.

Errors follow OpenAI's format ``{"error": {"message", "type", "param", "code"}}``: 400
for a bad body, value or steering (and any `SteerlabError` the engine raises on the
input), 404 for another model name or path, 503 for a full queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab import _args, _core
from steerlab._extras import require
from steerlab._serving import (
    Event,
    Job,
    QueueFullError,
    Scheduler,
    SteeringLibrary,
    SteeringSpecError,
    resolve_steering,
)
from steerlab.errors import SteerlabError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request, Response

    from steerlab.model import Model
else:
    # FastAPI reads the routes' annotations from this module's globals.
    try:
        from starlette.requests import Request
    except ImportError:  # the serve extra is missing: create_app and run say so
        Request = Any

__all__ = ["create_app", "run"]

log = logging.getLogger("steerlab.server")

_COMMON = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "steering",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
)
_CHAT_FIELDS = (
    *_COMMON,
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
)
_COMPLETION_FIELDS = (*_COMMON, "prompt", "echo", "suffix", "best_of")
# Fields accepted only at their neutral value (steerlab does not implement them).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}
_MAX_STOP = 16


class _RequestError(Exception):
    """An HTTP error in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def _require() -> None:
    """Raises MissingExtraError (naming ``steerlab[serve]``) without fastapi or uvicorn."""
    for module in ("fastapi", "uvicorn"):
        require(module, "serve", "the steering server")


# --------------------------------------------------------------------- parsing bodies


def _bad(message: str, param: str | None = None) -> _RequestError:
    return _RequestError(400, message, param)


def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{key} must be an integer, got {_args.show(v)}", key)
    if not lo <= v <= hi:
        raise _bad(f"{key} must be in {lo}..{hi}, got {_args.show(v)}", key)
    return v


def _float(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(f"{key} must be a number, got {_args.show(v)}", key)
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise _bad(f"{key} must be a finite number, got {_args.show(v)}", key)
    if not lo <= v <= hi:
        raise _bad(f"{key} must be in [{lo:g}, {hi:g}], got {_args.show(v)}", key)
    return float(v)


def _stop(body: dict[str, Any]) -> list[str] | None:
    v = body.get("stop")
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad(f"stop must be a str or a list of str, got {_args.show(v)}", "stop")
    if len(items) > _MAX_STOP:
        raise _bad(f"stop has {len(items)} strings; at most {_MAX_STOP} are accepted", "stop")
    if any(s == "" for s in items):
        raise _bad("stop strings must not be empty", "stop")
    for s in items:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(
                f"stop string {_args.show(s)} is not valid Unicode text (a lone surrogate)",
                "stop",
            ) from None
    return items or None


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if not (
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            ):
                raise _bad(
                    f"{where}[{i}] must be a text part {{'type': 'text', 'text': str}} "
                    f"(this model reads text only), got {_args.show(p)}",
                    "messages",
                )
            parts.append(p["text"])
        return "".join(parts)
    raise _bad(
        f"{where} must be a str or a list of text parts, got {_args.show(content)}", "messages"
    )


class _Parsed:
    """A checked request: its prompt, token ids, steering row and settings."""

    def __init__(
        self,
        prompt: str,
        ids: list[int],
        row: Any,
        config: _core.GenConfig,
        max_tokens: int,
        stop: list[str] | None,
        stream: bool,
        include_usage: bool,
    ) -> None:
        self.prompt = prompt
        self.ids = ids
        self.row = row
        self.config = config
        self.max_tokens = max_tokens
        self.stop = stop
        self.stream = stream
        self.include_usage = include_usage


class _Server:
    """The state behind one app: model, library, scheduler."""

    def __init__(
        self,
        model: Model,
        library: SteeringLibrary,
        scheduler: Scheduler,
    ) -> None:
        self.model = model
        self.library = library
        self.scheduler = scheduler
        path = Path(model.path)
        self.model_id = path.stem if path.suffix == ".gguf" else path.name
        self.created = int(time.time())

    # -- request checks (run in a worker thread: templates, tokenizer, HyperSteer) ----

    def parse(self, body: Any, chat: bool) -> _Parsed:
        if not isinstance(body, dict):
            raise _bad(f"the request body must be a JSON object, got {_args.show(body)}")
        allowed = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise _bad(
                f"unknown field(s) {', '.join(map(repr, unknown))}; this endpoint takes "
                f"{', '.join(sorted(allowed))}",
                unknown[0],
            )
        for key, neutral in _NEUTRAL.items():
            v = body.get(key)
            if v is not None and not any(v == x and type(v) is type(x) for x in neutral):
                shown = " / ".join(json.dumps(x) for x in neutral)
                raise _bad(
                    f"{key}={_args.show(v)} is not supported by this server (only {shown})", key
                )
        name = body.get("model")
        if not isinstance(name, str):
            raise _bad(f"model must be a str (the served model is {self.model_id!r})", "model")
        if name != self.model_id:
            raise _RequestError(
                404,
                f"the model {name!r} is not served here; this server serves {self.model_id!r}",
                "model",
                code="model_not_found",
            )
        n = _int(body, "n", 1, 1, 2**31)
        if n != 1:
            raise _bad(
                f"n={n} is not supported: this server returns one choice per request (n=1)", "n"
            )
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _bad(f"stream must be true or false, got {_args.show(stream)}", "stream")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise _bad("stream_options is only allowed with stream=true", "stream_options")
            if not isinstance(options, dict) or set(options) - {"include_usage"}:
                raise _bad(
                    f"stream_options must be {{'include_usage': bool}}, got {_args.show(options)}",
                    "stream_options",
                )
            include_usage = options.get("include_usage", False)
            if not isinstance(include_usage, bool):
                raise _bad("stream_options.include_usage must be true or false", "stream_options")

        if chat:
            prompt = self._chat_prompt(body.get("messages"))
        else:
            prompt = self._completion_prompt(body.get("prompt"))
        try:
            ids = self.model.encode(prompt)
        except SteerlabError as exc:
            raise _bad(str(exc), "messages" if chat else "prompt") from None
        if not ids:
            raise _bad("the prompt is empty after tokenization", "messages" if chat else "prompt")
        context = self.model.max_context
        if len(ids) >= context:
            raise _bad(
                f"the prompt is {len(ids)} tokens long but the model's context is {context} "
                f"tokens (at least one must be left to generate)",
                "messages" if chat else "prompt",
            )
        room = context - len(ids)
        if chat and body.get("max_completion_tokens") is not None:
            if body.get("max_tokens") is not None:
                raise _bad("give max_tokens or max_completion_tokens, not both", "max_tokens")
            limit = _int(body, "max_completion_tokens", room, 1, _args.I64_MAX)
        else:
            limit = _int(body, "max_tokens", room if chat else 16, 1, _args.I64_MAX)
        max_tokens = room if limit is None else limit
        temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _float(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise _bad("top_p must be in (0, 1], got 0", "top_p")
        top_k = _int(body, "top_k", None, 1, _args.I64_MAX)
        seed = _int(body, "seed", None, 0, _args.U64_MAX)
        stop = _stop(body)
        try:
            row = resolve_steering(body.get("steering"), self.library, self.model, prompt)
        except SteeringSpecError as exc:
            raise _bad(str(exc), "steering") from None
        try:
            config = _core.GenConfig(
                min(max_tokens, room),
                temperature,
                top_k,
                None if top_p == 1.0 else top_p,
                seed,
                stop,
                False,
            )
        except SteerlabError as exc:
            raise _bad(str(exc)) from None
        return _Parsed(prompt, ids, row, config, max_tokens, stop, stream, include_usage)

    def _chat_prompt(self, messages: Any) -> str:
        if not isinstance(messages, list) or not messages:
            raise _bad(
                f"messages must be a non-empty list of {{'role', 'content'}}, got "
                f"{_args.show(messages)}",
                "messages",
            )
        checked = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad(f"messages[{i}] must be an object with a 'role' str", "messages")
            if m["role"] not in ("system", "developer", "user", "assistant"):
                raise _bad(
                    f"messages[{i}].role {m['role']!r} is not supported; expected system, "
                    f"developer, user or assistant",
                    "messages",
                )
            role = "system" if m["role"] == "developer" else m["role"]
            extra = sorted(set(m) - {"role", "content", "name"})
            if extra:
                raise _bad(f"messages[{i}] has unsupported field(s) {extra}", "messages")
            if m.get("content") is None and m["role"] != "assistant":
                raise _bad(
                    f"messages[{i}] ({m['role']}) needs 'content': a str or a list of text parts",
                    "messages",
                )
            message = {
                "role": role,
                "content": _text_content(m.get("content"), f"messages[{i}].content"),
            }
            if m.get("name") is not None:  # handed to the template, which may use it
                if not isinstance(m["name"], str):
                    raise _bad(f"messages[{i}].name must be a str", "messages")
                message["name"] = m["name"]
            checked.append(message)
        try:
            return self.model.chat_prompt(checked)
        except SteerlabError as exc:
            raise _bad(f"the chat template failed on these messages: {exc}", "messages") from None

    @staticmethod
    def _completion_prompt(prompt: Any) -> str:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _bad(
                f"prompt must be a str (or a list of one str), got {_args.show(prompt)}",
                "prompt",
            )
        if not prompt:
            raise _bad("prompt must not be empty", "prompt")
        return prompt


# ------------------------------------------------------------------------- responses


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _engine_error(exc: BaseException) -> _RequestError:
    if isinstance(exc, QueueFullError):
        return _RequestError(503, str(exc), kind="server_error", code="server_shutting_down")
    if isinstance(exc, SteerlabError):
        return _bad(str(exc))
    return _RequestError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")


def create_app(
    model: Model,
    vectors: str | os.PathLike[str] | None = None,
    *,
    max_batch: int = 8,
    max_queue: int = 64,
    batch_window_ms: float = 5.0,
) -> FastAPI:
    """The FastAPI app of the steering server (see the module docstring).

    The ``--vectors`` folder is read now: every ``*.safetensors`` / ``*.gguf`` file in it
    is loaded for `model` and served under its file name without the suffix. The
    scheduler thread starts and stops with the app's lifespan (uvicorn runs it).

    Args:
        model: the loaded `steerlab.Model`.
        vectors: a folder of saved `SteeringVector`, `ActivationScalars`,
            `SteeringController` and `HyperSteer` files, or llama.cpp control vectors;
            None: only raw vectors can steer.
        max_batch: most requests generated together (>= 1).
        max_queue: most requests waiting for a batch (>= 1); more get 503.
        batch_window_ms: how long the scheduler waits for more requests after the first
            of a batch, in milliseconds (>= 0).

    Returns:
        The app (serve it with ``uvicorn.run(app)``).

    Raises:
        SteerlabError: fastapi or uvicorn are not installed.
        InvalidTypeError, InvalidArgumentError: a bad model or setting.
        ModelNotFoundError, ModelFormatError, ShapeError, OutOfRangeError: a missing
            folder or a file in it that cannot be loaded for `model` (named).
    """
    _require()
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from steerlab.errors import InvalidTypeError
    from steerlab.model import Model

    if not isinstance(model, Model):
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    max_batch = _args.integer(max_batch, "max_batch", minimum=1, maximum=4096)
    max_queue = _args.integer(max_queue, "max_queue", minimum=1, maximum=2**20)
    window = _args.real(batch_window_ms, "batch_window_ms", minimum=0.0, maximum=60_000.0)
    library = SteeringLibrary(vectors, model)
    scheduler = Scheduler(
        model._core, max_batch=max_batch, max_queue=max_queue, batch_window=window / 1000
    )
    state = _Server(model, library, scheduler)
    if library.skipped:
        log.warning(
            "--vectors %s: not artifacts (only *.safetensors and *.gguf are): %s",
            library.folder,
            ", ".join(library.skipped),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="steerlab", lifespan=lifespan)
    app.state.steerlab = state

    def error_response(err: _RequestError) -> Response:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(_RequestError)
    async def _on_request_error(request: Request, exc: _RequestError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(
            _RequestError(
                exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind
            )
        )

    async def read_body(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"the request body is not valid JSON ({exc})") from None
        except RecursionError:
            raise _bad("the request body is not valid JSON here: it nests too deeply") from None

    def submit(parsed: _Parsed) -> tuple[Job, asyncio.Queue[Event]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            # RuntimeError: the loop has closed, nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(parsed.ids, parsed.row, parsed.config, parsed.max_tokens, parsed.stop, emit)
        try:
            scheduler.submit(job)
        except QueueFullError as exc:
            raise _RequestError(
                503,
                str(exc),
                kind="server_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        return job, events

    async def complete(request: Request, chat: bool) -> Response:
        body = await read_body(request)
        parsed = await run_in_threadpool(state.parse, body, chat)
        job, events = submit(parsed)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(
                sse(job, events, parsed, rid, created, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        pieces = []
        checked = time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except TimeoutError:
                    event = None
                # Check for a gone client every 0.5 s even while tokens keep arriving (a
                # long row's events never leave the queue empty for the timeout).
                if event is None or time.monotonic() - checked >= 0.5:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        job.cancelled.set()
                        raise _bad("the client disconnected") from None
                if event is None:
                    continue
                if event[0] == "text":
                    pieces.append(event[1])
                elif event[0] == "end":
                    reason, n_new = event[1], event[2]
                    break
                else:
                    raise _engine_error(event[1])
        finally:
            job.cancelled.set()  # a no-op once the row has ended
        text = "".join(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": state.model_id,
                "choices": [choice],
                "usage": _usage(len(parsed.ids), n_new),
            }
        )

    async def sse(
        job: Job,
        events: asyncio.Queue[Event],
        parsed: _Parsed,
        rid: str,
        created: int,
        chat: bool,
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(content: str | None, reason: str | None, first: bool = False) -> str:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None}
            if chat:
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if content is not None:
                    delta["content"] = content
                choice["delta"] = delta
            else:
                choice["text"] = content or ""
            out = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": state.model_id,
                "choices": [choice],
            }
            return f"data: {json.dumps(out)}\n\n"

        try:
            if chat:
                yield chunk("", None, first=True)
            while True:
                event = await events.get()
                if event[0] == "text":
                    yield chunk(event[1], None)
                elif event[0] == "end":
                    yield chunk(None if chat else "", event[1])
                    if parsed.include_usage:
                        usage = {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": state.model_id,
                            "choices": [],
                            "usage": _usage(len(parsed.ids), event[2]),
                        }
                        yield f"data: {json.dumps(usage)}\n\n"
                    break
                else:
                    yield f"data: {json.dumps(_engine_error(event[1]).body())}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            # Normal end, or the client went away (the task is cancelled): end the row.
            job.cancelled.set()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    def model_card() -> dict[str, Any]:
        return {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "steerlab",
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str) -> dict[str, Any]:
        if model_id != state.model_id:
            raise _RequestError(
                404,
                f"the model {model_id!r} is not served here; this server serves {state.model_id!r}",
                "model",
                code="model_not_found",
            )
        return model_card()

    @app.get("/v1/steering")
    async def steering() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [a.describe() for a in library.items.values()],
            "d_model": model.d_model,
            "n_layers": model.n_layers,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": state.model_id,
            "waiting": scheduler.waiting,
            "running": scheduler.running,
            "batches": scheduler.batches,
            "cancelled": scheduler.cancelled,
            "max_batch": scheduler.max_batch,
            "max_queue": scheduler.max_queue,
        }

    return app


def run(
    model: str | None = None,
    *,
    vectors: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "auto",
    max_batch: int = 8,
    max_queue: int = 64,
    batch_window_ms: float = 5.0,
) -> None:
    """Load a model and serve it until interrupted (``steerlab serve MODEL --vectors DIR``).

    Args:
        model: a GGUF file or Hugging Face folder; None: the embedded default model.
        vectors: the folder of steering artifacts (see `create_app`).
        host: the address to listen on (``"0.0.0.0"`` for every interface).
        port: the TCP port (1..65535).
        dtype: as in `steerlab.Model.load`.
        max_batch, max_queue, batch_window_ms: as in `create_app`.

    Raises:
        SteerlabError: fastapi or uvicorn are not installed.
        InvalidArgumentError: a port outside 1..65535.
        KeyboardInterrupt: after a graceful shutdown on Ctrl-C (SIGINT).
        and whatever `Model.load` and `create_app` raise.
    """
    _require()
    import uvicorn

    from steerlab.model import Model

    host = _args.text(host, "host")
    port = _args.integer(port, "port", minimum=1, maximum=65535)
    loaded = Model.load(model, dtype=dtype)
    app = create_app(
        loaded, vectors, max_batch=max_batch, max_queue=max_queue, batch_window_ms=batch_window_ms
    )
    import signal

    class _Server(uvicorn.Server):
        interrupted = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig == signal.SIGINT:
                self.interrupted = True
            super().handle_exit(sig, frame)

    # A streaming request holds its connection: give in-flight ones 10 s on Ctrl-C.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10
    )
    server = _Server(config)
    server.run()
    if server.interrupted:
        # uvicorn shut down gracefully; report Ctrl-C as the CLI documents (exit 130).
        # (uvicorn re-raises the signal inside its event loop, where asyncio may drop it.)
        raise KeyboardInterrupt
