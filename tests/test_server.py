"""The OpenAI-compatible steering server (`steerlab.server`), driven by the official
``openai`` client against real uvicorn servers started here on loopback.

Two servers share the default model: ``server`` (max_batch 8, a 300 ms batch window so
concurrent requests land in one batch) and ``tight`` (max_batch 1, max_queue 1) for the
503 test. The ``--vectors`` folder holds a vector trained here on contrast pairs, a
small controller and a small HyperSteer, saved the way users save them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from server_harness import Running  # noqa: E402
from steerlab import server as sl_server  # noqa: E402

MAX = 10  # new tokens per request: enough to tell steerings apart, quick on 2 cores
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy SmolLM2 keeps counting: long rows


@pytest.fixture(scope="module")
def vectors_dir(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vectors")
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:8])
    vec = sl.SteeringVector.train(
        model, pairs, layers=[12], reference_texts=["The weather is fine today."]
    )
    (vec / max(vec.norms().values()) * 16.0).save(folder / "joy.safetensors")
    # Steers position 40 only: the engine refuses it for a row that never reaches 40.
    vec.with_positions([40]).save(folder / "far.safetensors")
    # A small controller (random weights, gate biased open) saved like a trained one.
    rng = np.random.default_rng(0)
    d, read, layers, hidden = model.d_model, [26, 27, 28, 29], [10, 12], 8
    kd = len(read) * d
    directions = rng.standard_normal((len(layers), d)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ctrl = sl.SteeringController(
        {
            "mean": np.zeros(kd, np.float32),
            "scale": np.ones(kd, np.float32),
            "w1": (rng.standard_normal((kd, hidden)) * 0.01).astype(np.float32),
            "b1": np.zeros(hidden, np.float32),
            "w2": (rng.standard_normal((hidden, 1 + len(layers))) * 0.1).astype(np.float32),
            "b2": np.full(1 + len(layers), 3.0, np.float32),
            "directions": directions,
        },
        read_layers=read,
        layers=layers,
        hidden=hidden,
        strength=6.0,
        d_model=d,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
    )
    ctrl.save(folder / "guard.safetensors")
    hs = sl.HyperSteer.fit(
        model,
        ["Talk about the sea.", "Talk about food."],
        ["Describe your day.", "What is fun?"],
        targets=["The sea is deep and blue.", "Bread and soup are tasty."],
        variant="no_context",
        layer=12,
        n_blocks=1,
        batch_size=2,
        lr=1e-2,
        progress=False,
    )
    hs.save(folder / "hyper.safetensors")
    # Dynamic activation scalars (DynScalar): h * (1 + beta (w . h + b)) at mlp_out[10].
    w = (rng.standard_normal(d) * 0.01).astype(np.float32)
    sc = sl.ActivationScalars(
        "dynamic",
        {("mlp_out", 10): np.concatenate([w, [3.0]]).astype(np.float32)},
        d_model=d,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
    )
    sc.save(folder / "scale.safetensors")
    (folder / "notes.txt").write_text("not an artifact")
    return folder


@pytest.fixture(scope="module")
def server(model: Any, vectors_dir: Path) -> Iterator[Running]:
    app = sl_server.create_app(model, vectors_dir, max_batch=8, batch_window_ms=300)
    running = Running(app)
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server: Running) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def model_id(client: Any) -> str:
    (card,) = client.models.list().data
    return str(card.id)


def _call(client: Any, model_id: str, req: dict[str, Any]) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) of one non-streaming request."""
    req = dict(req)
    kind = req.pop("kind")
    steering = req.pop("steering", None)
    extra = {} if steering is None else {"extra_body": {"steering": steering}}
    if kind == "chat":
        r = client.chat.completions.create(model=model_id, **req, **extra)
        text = r.choices[0].message.content
    else:
        r = client.completions.create(model=model_id, **req, **extra)
        text = r.choices[0].text
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    return text, r.choices[0].finish_reason, r.usage.completion_tokens


def _stream(client: Any, model_id: str, req: dict[str, Any]) -> tuple[str, str, int]:
    req = dict(req)
    kind = req.pop("kind")
    steering = req.pop("steering", None)
    extra = {"extra_body": {"steering": steering}} if steering is not None else {}
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    if kind == "chat":
        req["messages"] = req.pop("messages")
    stream = create(
        model=model_id, stream=True, stream_options={"include_usage": True}, **req, **extra
    )
    pieces, reason, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            piece = c.delta.content if kind == "chat" else c.text
            pieces.append(piece or "")
            reason = c.finish_reason or reason
    assert usage is not None
    return "".join(pieces), str(reason), usage.completion_tokens


def _requests(model: Any) -> list[dict[str, Any]]:
    raw = np.random.default_rng(1).standard_normal(model.d_model)
    raw = (raw / np.linalg.norm(raw) * 12.0).tolist()
    chat = [{"role": "user", "content": "Tell me about your weekend."}]
    prompt = "My favourite thing about the city is"
    return [
        {"kind": "chat", "messages": chat, "max_tokens": MAX, "temperature": 0},
        {"kind": "chat", "messages": chat, "max_tokens": MAX, "temperature": 0,
         "steering": {"joy": 1.0}},
        {"kind": "chat", "messages": chat, "max_tokens": MAX, "temperature": 0,
         "steering": {"joy": -1.0}},
        {"kind": "completion", "prompt": prompt, "max_tokens": MAX, "temperature": 0,
         "steering": [{"vector": raw, "layer": 8, "strength": 1.0}]},
        {"kind": "completion", "prompt": prompt, "max_tokens": MAX, "temperature": 0,
         "steering": {"guard": 1.0}},
        {"kind": "chat", "messages": chat, "max_tokens": MAX, "temperature": 0,
         "steering": [{"hypersteer": "hyper", "instruction": "Talk about the sea.",
                       "strength": 4.0}]},
        {"kind": "completion", "prompt": prompt, "max_tokens": MAX, "temperature": 0.9,
         "seed": 7, "steering": {"joy": 0.5}},
        {"kind": "chat", "messages": chat, "max_tokens": MAX, "temperature": 1.0,
         "top_p": 0.9, "seed": 3, "stop": [" "]},
        {"kind": "completion", "prompt": prompt, "max_tokens": MAX, "temperature": 0,
         "steering": [{"name": "scale", "strength": 0.5}, {"name": "joy", "strength": 0.5}]},
    ]  # fmt: skip


def test_models_and_steering_listing(server: Running, client: Any, model_id: str) -> None:
    assert model_id == "SmolLM2-135M-Instruct.Q4_1"
    listed = httpx.get(f"{server.url}/v1/steering").json()
    kinds = {a["name"]: a["kind"] for a in listed["data"]}
    assert kinds == {
        "joy": "vector",
        "far": "vector",
        "guard": "controller",
        "hyper": "hypersteer",
        "scale": "scalars",
    }
    assert client.models.retrieve(model_id).id == model_id


def test_concurrent_requests_equal_each_request_alone(
    server: Running, client: Any, model: Any, model_id: str, vectors_dir: Path
) -> None:
    reqs = _requests(model)
    alone = [_call(client, model_id, r) for r in reqs]
    before = server.health()["batches"]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(lambda r: _call(client, model_id, r), reqs))
    batches = server.health()["batches"] - before
    assert batches <= 2, f"{len(reqs)} concurrent requests ran in {batches} batches"
    assert together == alone
    # Steering took effect, each its own way.
    texts = [t for t, _, _ in alone]
    assert len({texts[0], texts[1], texts[2], texts[5]}) == 4, texts
    assert texts[3] != texts[4]
    # The server's rows equal the library's own generation.
    vec = sl.SteeringVector.load(vectors_dir / "joy.safetensors", model)
    prompt = model.chat_prompt(reqs[1]["messages"])
    assert model.generate(prompt, steering=vec, max_new_tokens=MAX) == texts[1]
    sc = sl.ActivationScalars.load(vectors_dir / "scale.safetensors", model)
    both = (sc * 0.5).to_steering() + (vec * 0.5).to_steering()
    plain = reqs[8]["prompt"]
    assert model.generate(plain, steering=both, max_new_tokens=MAX) == texts[8]
    assert model.generate(plain, max_new_tokens=MAX) != texts[8]
    assert all(reason in ("stop", "length") for _, reason, _ in alone)
    assert alone[0][1:] == ("length", MAX)
    assert alone[7][1] == "stop" and " " not in alone[7][0]


def test_streaming_equals_non_streaming(client: Any, model: Any, model_id: str) -> None:
    reqs = _requests(model)
    for r in (reqs[1], reqs[3], reqs[6], reqs[7]):
        assert _stream(client, model_id, r) == _call(client, model_id, r)


def test_cancelled_stream_ends_its_row(server: Running, client: Any, model_id: str) -> None:
    reqs = _requests(sl.Model.load())[:3]
    alone = [_call(client, model_id, r) for r in reqs]
    cancelled = server.health()["cancelled"]
    stream = client.completions.create(
        model=model_id, prompt=COUNTING, max_tokens=3000, temperature=0, stream=True
    )
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_call, client, model_id, r) for r in reqs]
        got = []
        for chunk in stream:
            got.append(chunk.choices[0].text)
            if len(got) >= 3:
                break
        stream.close()
        together = [f.result() for f in futures]
    assert together == alone
    assert any(ch.isdigit() for ch in "".join(got)), got
    deadline = time.monotonic() + 10
    while (h := server.health())["running"] or h["waiting"]:
        assert time.monotonic() < deadline, f"the cancelled row kept running: {h}"
        time.sleep(0.05)
    assert h["cancelled"] == cancelled + 1
    assert _call(client, model_id, reqs[0]) == alone[0]


def test_a_request_that_fails_in_the_engine_fails_alone(
    client: Any, model: Any, model_id: str
) -> None:
    reqs = _requests(model)[:2]
    alone = [_call(client, model_id, r) for r in reqs]
    bad = {"kind": "completion", "prompt": "Hi", "max_tokens": 1, "temperature": 0,
           "steering": {"far": 1.0}}  # fmt: skip
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_call, client, model_id, r) for r in [*reqs, bad]]
        with pytest.raises(openai.BadRequestError, match="steering position 40 is outside"):
            futures[2].result()
        assert [f.result() for f in futures[:2]] == alone


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"steering": {"nope": 1.0}}, r"no steering named 'nope'; the names served are: far, guard, hyper, joy, scale"),
        ({"steering": {"joy": "lots"}}, r"steering\['joy'\] must be a number"),
        ({"steering": {"hyper": 1.0}}, r"'hyper' is a HyperSteer.*instruction"),
        ({"steering": [{"vector": [1.0, 2.0], "layer": 3}]}, r"has 2 values; the model's d_model is 576"),
        ({"steering": [{"vector": [0.0] * 576, "layer": 99}]}, r"layer 99 is outside the model's 30 layers"),
        ({"steering": [{"name": "joy", "vector": [1.0]}]}, r"exactly one of 'name', 'vector', 'hypersteer'"),
        ({"steering": [{"hypersteer": "joy", "instruction": "x"}]}, r"'joy' is a vector, not a HyperSteer"),
        ({"steering": [{"hypersteer": "hyper"}]}, r"instruction must be a non-empty str"),
        ({"steering": {"guard": 1.0, "joy": 1.0}, "n": 2}, r"n=2 is not supported"),
        ({"steering": "joy"}, r"steering must be an object \{name: strength\} or a list"),
        ({"temperature": -1}, r"temperature must be in \[0, 2\], got -1"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"max_tokens": 0}, r"max_tokens must be in 1\.\."),
        ({"seed": -3}, r"seed must be in 0\.\."),
        ({"stop": [""]}, r"stop strings must not be empty"),
        ({"logprobs": 2}, r"logprobs=2 is not supported"),
        ({"frobnicate": 1}, r"unknown field\(s\) 'frobnicate'"),
    ],
)  # fmt: skip
def test_bad_requests_get_400_with_a_clear_message(
    client: Any, model_id: str, body: dict[str, Any], match: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=match) as info:
        client.completions.create(
            model=model_id, prompt="Hello", max_tokens=MAX, temperature=0, extra_body=body
        )
    assert info.value.status_code == 400
    err = info.value.body
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"


def test_other_bad_requests(server: Running, client: Any, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        client.chat.completions.create(model=model_id, messages=[])
    with pytest.raises(openai.BadRequestError, match=r"role 'tool' is not supported"):
        client.chat.completions.create(
            model=model_id, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]
        )
    with pytest.raises(openai.BadRequestError, match="steering"):  # also before streaming
        client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_body={"steering": {"nope": 1}},
        )
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/completions", json=[1, 2], timeout=10)
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert server.health()["status"] == "ok"


def test_full_queue_answers_503(model: Any, vectors_dir: Path) -> None:
    tight = Running(sl_server.create_app(model, None, max_batch=1, max_queue=1))
    try:
        client = tight.client()
        model_id = client.models.list().data[0].id
        long = client.completions.create(
            model=model_id, prompt=COUNTING, max_tokens=3000, temperature=0, stream=True
        )
        next(iter(long))  # running now
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(
                _call, client, model_id,
                {"kind": "completion", "prompt": "Hello", "max_tokens": 4, "temperature": 0},
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while tight.health()["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = httpx.post(
                f"{tight.url}/v1/completions",
                json={"model": model_id, "prompt": "Hi", "max_tokens": 2},
                timeout=10,
            )
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "1 requests are already waiting (max_queue)" in r.json()["error"]["message"]
            with pytest.raises(openai.InternalServerError, match="max_queue"):
                client.completions.create(model=model_id, prompt="Hi", max_tokens=2)
            long.close()
            _, reason, n = queued.result(timeout=60)
            assert n >= 1 and reason in ("stop", "length")
    finally:
        tight.close()


def test_startup_errors_name_the_file(model: Any, tmp_path: Path, vectors_dir: Path) -> None:
    with pytest.raises(sl.ModelNotFoundError, match="no such folder"):
        sl_server.create_app(model, tmp_path / "missing")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(sl.ModelFormatError, match=r"broken\.safetensors: not a safetensors"):
        sl_server.create_app(model, tmp_path)
    (tmp_path / "broken.safetensors").unlink()
    vec = sl.SteeringVector({3: np.ones(model.d_model, np.float32)})
    info = sl.vectors.VectorInfo(d_model=model.d_model, fingerprint="0" * 16)
    sl.SteeringVector(vec.vectors, info).save(tmp_path / "other.safetensors")
    with pytest.raises(sl.InvalidArgumentError, match=r"other\.safetensors"):
        sl_server.create_app(model, tmp_path)
    with pytest.raises(sl.InvalidArgumentError, match="max_batch must be >= 1"):
        sl_server.create_app(model, None, max_batch=0)


def test_missing_extra_and_bad_run_arguments(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from steerlab._serving import SteeringLibrary, SteeringSpecError, resolve_steering

    with pytest.raises(sl.InvalidArgumentError, match="port must be <= 65535, got 70000"):
        sl_server.run(port=70000)
    empty = SteeringLibrary(None, model)
    with pytest.raises(SteeringSpecError, match="none: the server was started without --vectors"):
        resolve_steering({"joy": 1.0}, empty, model, "Hi")
    assert resolve_steering({}, empty, model, "Hi") == []
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(sl.MissingExtraError, match=r"pip install 'steerlab\[serve\]'"):
        sl_server.create_app(model)
    with pytest.raises(sl.MissingExtraError, match=r"pip install 'steerlab\[serve\]'"):
        sl_server.run()


def test_sse_wire_format(server: Running, model_id: str) -> None:
    body = {"model": model_id, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_row_text_pieces_follow_stream_rules(model: Any) -> None:
    from steerlab._sampling import RowText

    prompt = "La crème brûlée est un dessert français. Voici la recette:"
    ids = model.generate(prompt, max_new_tokens=24, return_ids=True)
    full = model.decode(ids, skip_special_tokens=True)
    stop = "brûlée est"
    assert full.count(stop) == 1 and "\ufffd" not in full, full
    row = RowText(model._core, [stop])
    pieces = []
    for t in ids:
        pieces.append(row.push(t))
        assert "\ufffd" not in pieces[-1]
        if row.stopped:
            break
    pieces.append(row.flush())
    assert row.stopped and "".join(pieces) == full[: full.index(stop)] == row.text
    assert model.generate(prompt, max_new_tokens=24, stop=stop) == "".join(pieces)
    assert "".join(model.generate_stream(prompt, max_new_tokens=24, stop=stop)) == row.text


def test_import_steerlab_does_not_import_the_server_stack() -> None:
    import subprocess

    code = (
        "import sys, steerlab; "
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
