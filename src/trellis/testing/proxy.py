"""A real HTTP proxy on the loopback, for tests of what goes through corporate proxies."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import urlsplit

__all__ = ["LoopbackProxy"]


class LoopbackProxy:
    """An HTTP proxy on 127.0.0.1: ``CONNECT`` tunnels, and absolute-URL requests
    forwarded one per connection. Every host name resolves to 127.0.0.1, so an
    origin can be a name only this proxy knows (loopback origins never use a proxy).
    ``credentials`` ("user:password") makes it demand Basic proxy authentication."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.request_lines: list[str] = []
        self.authorizations: list[str | None] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> LoopbackProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        self.request_lines.append(lines[0])
        self.authorizations.append(headers.get("proxy-authorization"))
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if headers.get("proxy-authorization") != expected:
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b"proxy-authenticate: Basic\r\ncontent-length: 5\r\n\r\ndenied"
                )
                writer.close()
                return
        if method == "CONNECT":
            port = int(target.rpartition(":")[2])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            self._writers.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        url = urlsplit(target)  # the absolute form a forward proxy is sent
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", url.port or 80)
        self._writers.append(up_writer)
        kept = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if name not in ("proxy-authorization", "connection")
        )
        path = url.path + (f"?{url.query}" if url.query else "")
        up_writer.write(
            f"{method} {path} HTTP/1.1\r\n{kept}connection: close\r\n\r\n".encode("latin-1") + body
        )
        await _pipe(up_reader, writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
