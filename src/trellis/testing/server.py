"""Run a Trellis server on a free loopback port in a background thread (tests, notebooks)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

__all__ = ["ServerThread", "wait_for_trace"]


class ServerThread:
    """``with ServerThread(create_app(settings)) as server: server.base_url`` — stops cleanly,
    running the app's shutdown (so traces are flushed) on exit."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
        )
        self.app = app
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="trellis-server", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return self.url + "/v1"

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_trace(client: httpx.Client, trace_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The stored trace, once the background writer has written it (it batches, so a
    trace appears up to ``tracing.flush_interval`` after its response)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/traces/{trace_id}")
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"trace {trace_id} was not recorded within {timeout:g}s")
