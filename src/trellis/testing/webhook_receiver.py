"""A loopback HTTP receiver that records what it is POSTed, with injectable failures.

Tests point ``alerts.webhook_url`` at it to check alert payloads and retries, and
``tracing.otlp_endpoint`` to decode exported spans; users can run it to see what
Trellis would send before wiring up a real endpoint::

    with WebhookReceiver() as hook:
        hook.fail_next(2)  # the next two POSTs get a 500, so the sender must retry
        ...
        assert hook.wait_for(lambda p: p["status"] == "resolved")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    """``bodies`` holds every accepted body as bytes and ``payloads`` the JSON ones parsed,
    in arrival order; ``requests`` counts all POSTs, refused ones included."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.requests = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Answer the next ``count`` POSTs with ``status`` instead of accepting them."""
        with self._lock:
            self._failures.extend([status] * count)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first received payload matching ``predicate``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for payload in self.payloads:
                    if predicate(payload):
                        return payload
            time.sleep(0.02)
        raise AssertionError(f"no matching webhook payload within {timeout}s: {self.payloads}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests += 1
                    status = receiver._failures.pop(0) if receiver._failures else 200
                    if status == 200:
                        receiver.bodies.append(body)
                        if "json" in (self.headers.get("Content-Type") or ""):
                            receiver.payloads.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None  # keep test output quiet

        return Handler

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
