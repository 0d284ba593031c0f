"""A uvicorn server on a free loopback port, in a thread: the harness of the server tests
(tests/test_server.py, tests/test_newuser_issue14_server.py)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import openai
import uvicorn


class Running:
    """Serves `app` until `close()`; `openai` is a client for it, `client()` makes more."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._clients: list[Any] = []
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.openai = self.client()
        self.model_id = self.openai.models.list().data[0].id

    def client(self) -> Any:
        c = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=60)
        self._clients.append(c)
        return c

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def post(self, path: str, body: str | bytes) -> httpx.Response:
        """POST a raw body (malformed JSON included) as application/json."""
        return httpx.post(
            f"{self.url}{path}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()
        assert not self._thread.is_alive(), "the server did not shut down"
