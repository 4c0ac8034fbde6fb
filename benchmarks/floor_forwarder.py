"""Bare proxies: ASGI apps that forward the body upstream and do nothing else.

``app`` forwards with aiohttp. It is the benchmark's reference "floor": whatever it
adds over talking to the upstream directly is the cost of one more process hop,
uvicorn and aiohttp's client (what most Python gateways use) on this machine.

``trellis_client_app`` forwards with Trellis' own provider client
(``trellis.inference.providers.transport``), which costs less than aiohttp's. What
Trellis adds beyond this row is Trellis' own work: authentication, validation,
routing, tracing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from trellis.inference.providers.transport import HttpClient

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8000/v1")
_session: aiohttp.ClientSession | None = None
_client: HttpClient | None = None

Scope = dict[str, Any]
Forward = Callable[[bytes], Awaitable[tuple[int, bytes]]]


async def _serve(scope: Scope, receive: Any, send: Any, forward: Forward) -> None:
    """Lifespan, then: read the whole body, forward it, send back what came."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await _close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/healthz":
        status, out = 200, b'{"status":"ok"}'
    else:
        status, out = await forward(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": out})


async def _close() -> None:
    if _session is not None:
        await _session.close()
    if _client is not None:
        await _client.aclose()


async def _with_aiohttp(body: bytes) -> tuple[int, bytes]:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession()
    async with _session.post(
        UPSTREAM + "/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    ) as response:
        return response.status, await response.read()


async def _with_trellis_client(body: bytes) -> tuple[int, bytes]:
    global _client
    if _client is None:
        _client = HttpClient(UPSTREAM, headers={"content-type": "application/json"})
    status, _headers, out = await _client.request("POST", "/chat/completions", body)
    return status, out


async def app(scope: Scope, receive: Any, send: Any) -> None:
    await _serve(scope, receive, send, _with_aiohttp)


async def trellis_client_app(scope: Scope, receive: Any, send: Any) -> None:
    await _serve(scope, receive, send, _with_trellis_client)
