"""A bare proxy: an ASGI app that forwards the body with aiohttp, and does nothing else.

It is the benchmark's reference "floor": whatever it adds over talking to the
upstream directly is the cost of one more process hop, uvicorn and aiohttp's
client (what most Python gateways use) on this machine. Trellis calls providers
through its own leaner client (``trellis.inference.providers.transport``), so part
of what Trellis adds can fall below this floor.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8000/v1")
_session: aiohttp.ClientSession | None = None

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                if _session is not None:
                    await _session.close()
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
        if _session is None:
            _session = aiohttp.ClientSession()
        async with _session.post(
            UPSTREAM + "/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        ) as response:
            status, out = response.status, await response.read()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": out})
