"""A new user's checks of `steerlab serve` (issue 14, part 4), from the README alone.

One module-scoped server (uvicorn in a thread, like tests/test_server.py) on loopback with
a `--vectors` folder holding a vector trained here, its llama.cpp export and activation
scalars; a second tiny server (max_batch 1, max_queue 1) for the 503 check; the CLI is
run as a subprocess only for the Ctrl-C check.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
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

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vectors_dir(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nu_vectors")
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:6])
    vec = sl.SteeringVector.train(
        model, pairs, layers=[12], reference_texts=["The weather is fine today."]
    )
    vec = vec / max(vec.norms().values()) * 8.0
    vec.save(folder / "joy.safetensors")
    vec.to_gguf(folder / "joycv.gguf")
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(model.d_model) * 0.01).astype(np.float32)
    sl.ActivationScalars(
        "dynamic",
        {("mlp_out", 10): np.concatenate([w, [3.0]]).astype(np.float32)},
        d_model=model.d_model,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
    ).save(folder / "scale.safetensors")
    return folder


@pytest.fixture(scope="module")
def srv(model: Any, vectors_dir: Path) -> Iterator[Running]:
    running = Running(sl_server.create_app(model, vectors_dir, max_batch=8, batch_window_ms=300))
    yield running
    running.close()


def chat(srv: Running, content: str = "How was your week?", steering: Any = None, **kw: Any):
    extra = {} if steering is None else {"extra_body": {"steering": steering}}
    r = srv.openai.chat.completions.create(
        model=srv.model_id, messages=[{"role": "user", "content": content}], **kw, **extra
    )
    c = r.choices[0]
    return c.message.content, c.finish_reason, r.usage.completion_tokens, r.usage.prompt_tokens


def chat_stream(srv: Running, content: str = "How was your week?", steering: Any = None, **kw):
    extra = {} if steering is None else {"extra_body": {"steering": steering}}
    s = srv.openai.chat.completions.create(
        model=srv.model_id,
        messages=[{"role": "user", "content": content}],
        stream=True,
        stream_options={"include_usage": True},
        **kw,
        **extra,
    )
    text, reason, usage = "", None, None
    for ch in s:
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            reason = ch.choices[0].finish_reason or reason
        if ch.usage:
            usage = ch.usage
    assert usage is not None
    return text, reason, usage.completion_tokens, usage.prompt_tokens


# ------------------------------------------------------------------ what works


def test_steering_by_name_strength_and_names_add(srv: Running) -> None:
    plain = chat(srv, max_tokens=10, temperature=0)
    joy4 = chat(srv, steering={"joy": 4.0}, max_tokens=10, temperature=0)
    assert joy4 != plain
    # the llama.cpp export of the same vector, and two names adding, give the same text
    assert chat(srv, steering={"joycv": 4.0}, max_tokens=10, temperature=0) == joy4
    assert chat(srv, steering={"joy": 2.0, "joycv": 2.0}, max_tokens=10, temperature=0) == joy4
    assert (
        chat(srv, steering=[{"name": "joy", "strength": 4.0}], max_tokens=10, temperature=0) == joy4
    )
    # a zero raw vector changes nothing
    raw = [{"vector": [0.0] * 576, "layer": 12}]
    assert chat(srv, steering=raw, max_tokens=10, temperature=0) == plain


def test_stream_equals_non_stream_with_usage_and_finish_reason(srv: Running) -> None:
    for kw in (
        {"max_tokens": 8, "temperature": 0},
        {"max_tokens": 8, "seed": 5, "steering": {"joy": 3.0}},
        {"max_tokens": 30, "temperature": 0, "stop": ["."]},
        {"max_tokens": 6, "temperature": 0, "content": "🎉🔥 こんにちは 😀 \u0000"},
    ):
        a = chat(srv, **kw)
        assert a == chat_stream(srv, **kw)
        assert a[1] in ("stop", "length")
    text, reason, n, _ = chat(srv, max_tokens=30, temperature=0, stop=["."])
    assert reason == "stop" and "." not in text and n < 30


def test_same_seed_same_text(srv: Running) -> None:
    a = chat(srv, max_tokens=8, seed=7)
    assert a == chat(srv, max_tokens=8, seed=7)
    assert a != chat(srv, max_tokens=8, seed=8)


def test_concurrent_rows_equal_alone_with_scalars_in_a_batch_of_eight(srv: Running) -> None:
    """8 concurrent requests (one batch), one of them seeded with activation scalars."""
    reqs: list[dict[str, Any]] = [{"max_tokens": 8, "steering": {"scale": 1.0}, "seed": 2}]
    reqs += [{"max_tokens": 8, "temperature": 0}] * 7
    alone = [chat(srv, **r) for r in reqs]
    with ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda r: chat(srv, **r), reqs))
    assert together == alone


def test_streaming_client_disconnect_ends_its_row(srv: Running) -> None:
    before = srv.health()["cancelled"]
    s = srv.openai.completions.create(
        model=srv.model_id, prompt=COUNTING, max_tokens=2000, temperature=0, stream=True
    )
    for i, _ in enumerate(s):
        if i == 3:
            break
    s.close()
    deadline = time.monotonic() + 10
    while srv.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    h = srv.health()
    assert h["status"] == "ok" and h["running"] == 0 and h["cancelled"] == before + 1
    assert chat(srv, max_tokens=2, temperature=0)[2] == 2


def test_non_streaming_client_disconnect_ends_its_row(srv: Running) -> None:
    """A non-streaming client that times out must not leave its row generating."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{srv.url}/v1/completions",
            json={"model": srv.model_id, "prompt": COUNTING, "max_tokens": 3000, "temperature": 0},
            timeout=1.5,
        )
    deadline = time.monotonic() + 5
    while srv.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.health()["running"] == 0


def test_queue_full_is_503_with_retry_after(model: Any) -> None:
    tight = Running(sl_server.create_app(model, None, max_batch=1, max_queue=1))
    try:
        body = {"model": tight.model_id, "prompt": COUNTING, "max_tokens": 30, "temperature": 0}

        def go(_: int) -> httpx.Response:
            return httpx.post(f"{tight.url}/v1/completions", json=body, timeout=60)

        with ThreadPoolExecutor(5) as ex:
            got = list(ex.map(go, range(5)))
        codes = sorted(r.status_code for r in got)
        assert codes.count(200) >= 2 and 503 in codes, codes
        full = next(r for r in got if r.status_code == 503)
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        assert tight.health()["waiting"] == 0
    finally:
        tight.close()


# ------------------------------------------------------------------ bad requests: 4xx, never 500

M = "SmolLM2-135M-Instruct.Q4_1"
MSG = '"messages":[{"role":"user","content":"hi"}]'
ZEROS = ",0" * 575
BAD: list[tuple[str, str, str, str]] = [
    # (id, path, body, words the message must contain)
    ("invalid_json", "/v1/chat/completions", "{not json", "not valid JSON"),
    ("not_object", "/v1/chat/completions", "[1,2]", "must be a JSON object"),
    (
        "neg_temperature",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"temperature":-1}}',
        "temperature",
    ),
    (
        "nan_temperature",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"temperature":NaN}}',
        "temperature",
    ),
    (
        "inf_strength",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":{{"joy":Infinity}}}}',
        "finite",
    ),
    (
        "nan_strength",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":{{"joy":NaN}}}}',
        "finite",
    ),
    (
        "huge_int_strength",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":{{"joy":{"9" * 400}}}}}',
        "steering",
    ),
    (
        "huge_int_temperature",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"temperature":{"9" * 400}}}',
        "temperature",
    ),
    (
        "huge_int_top_p",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"top_p":{"9" * 400}}}',
        "top_p",
    ),
    (
        "zero_max_tokens",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"max_tokens":0}}',
        "max_tokens",
    ),
    ("empty_messages", "/v1/chat/completions", f'{{"model":"{M}","messages":[]}}', "messages"),
    (
        "message_without_content",
        "/v1/chat/completions",
        f'{{"model":"{M}","messages":[{{"role":"user"}}],"max_tokens":2}}',
        "content",
    ),
    (
        "unknown_name",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":{{"nope":1}}}}',
        "nope",
    ),
    (
        "wrong_width",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":[{{"vector":[0{ZEROS[2:]}],"layer":3}}]}}',
        "d_model",
    ),
    (
        "layer_out_of_range",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":[{{"vector":[0{ZEROS}],"layer":30}}]}}',
        "outside",
    ),
    (
        "nan_in_vector",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":[{{"vector":[NaN{ZEROS}],"layer":3}}]}}',
        "NaN",
    ),
    (
        "huge_int_in_vector",
        "/v1/chat/completions",
        f'{{"model":"{M}",{MSG},"steering":[{{"vector":[{"9" * 400}{ZEROS}],"layer":3}}]}}',
        "vector",
    ),
    ("unknown_field", "/v1/chat/completions", f'{{"model":"{M}",{MSG},"foo":1}}', "foo"),
    (
        "lone_surrogate_prompt",
        "/v1/completions",
        f'{{"model":"{M}","prompt":"a\\ud800b","max_tokens":2}}',
        "surrogate",
    ),
    (
        "lone_surrogate_stop",
        "/v1/completions",
        f'{{"model":"{M}","prompt":"ab","stop":"\\ud800","max_tokens":2}}',
        "stop",
    ),
    (
        "deeply_nested_json",
        "/v1/completions",
        f'{{"model":"{M}","prompt":"hi","x":{"[" * 5000}1{"]" * 5000}}}',
        "JSON",
    ),
    (
        "prompt_past_context",
        "/v1/completions",
        json.dumps({"model": M, "prompt": "word " * 9000, "max_tokens": 2}),
        "context",
    ),
]


@pytest.mark.parametrize(("path", "body", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_400_in_openai_format(
    srv: Running, path: str, body: str, words: str
) -> None:
    r = srv.post(path, body)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words in err["message"], err["message"]
    assert srv.health()["status"] == "ok"


def test_other_model_name_is_404(srv: Running) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        srv.openai.completions.create(model="gpt-4", prompt="hi", max_tokens=2)


# ------------------------------------------------------------------ startup errors


def test_vector_made_for_another_model_stops_startup(model: Any, tmp_path: Path) -> None:
    (tmp_path / "v.safetensors").write_bytes(b"")  # placeholder replaced below
    gemma = sl.Model.load(sl.catalog.gemma3_270m_path())
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:2])
    vec = sl.SteeringVector.train(gemma, pairs, layers=[5], reference_texts=["Fine."])
    vec.save(tmp_path / "v.safetensors")
    with pytest.raises(sl.SteerlabError, match=r"v\.safetensors.*another model"):
        sl_server.create_app(model, tmp_path)
    (tmp_path / "v.safetensors").unlink()
    vec.to_gguf(tmp_path / "cv.gguf")
    with pytest.raises(sl.SteerlabError, match=r"cv\.gguf.*another model"):
        sl_server.create_app(model, tmp_path)


def test_corrupt_file_stops_startup_naming_it(model: Any, tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(os.urandom(3000))
    with pytest.raises(sl.SteerlabError, match=r"x\.safetensors.*not a safetensors file"):
        sl_server.create_app(model, tmp_path)


def test_ctrl_c_stops_serve_with_the_documented_exit_code() -> None:
    """`steerlab serve --help` lists exit code 130 for Ctrl-C."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from steerlab.cli import main; sys.exit(main())",
            "serve",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in out
    assert proc.returncode == 130, out[-500:]
