"""A small keep-alive HTTP/1.1 client for provider calls: asyncio streams parsed by httptools.

Every model call crosses it, so its cost is added to every request the gateway
serves; aiohttp's client spends several times its CPU per call (figures, and what
that does to a bare forwarder's added latency: README, Performance). The parsing
is httptools (llhttp, the parser uvicorn uses); this module only frames requests
and keeps a pool of connections.

What it does: one origin per client (the provider's base URL), HTTP and HTTPS,
``content-length`` request bodies, responses sized by ``content-length``, chunked
or delimited by the close of the connection, gzip/deflate bodies, an idle-read
timeout and an optional deadline for the whole exchange (one timer per connection,
kept armed across its exchanges), and a pool of kept-alive connections. A request
that finds its reused connection closed by the server before any byte of an answer
is sent again once on a new connection (the server never saw it). No redirects,
proxies or cookies: provider APIs use none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httptools

from trellis.http_headers import check_header

__all__ = [
    "HttpClient",
    "HttpResponse",
    "TransportError",
    "ConnectError",
    "ConnectionClosed",
    "ProtocolError",
    "ReadTimeout",
    "ConnectTimeout",
    "DeadlineExceeded",
]

#: Connections open at once per client by default (aiohttp's default too); more
#: concurrent requests wait for one to be free.
MAX_CONNECTIONS = 1000
#: Idle connections kept per client; the others are closed after use.
MAX_IDLE = 256
#: A kept-alive connection unused this long is closed rather than reused: servers drop
#: idle ones after 5-75 s, and a request sent on a connection being dropped is lost.
KEEPALIVE_SECONDS = 15.0
#: A stream's reader stops taking bytes from the socket past this many buffered.
_HIGH_WATER = 256 * 1024
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class TransportError(Exception):
    """The exchange with the upstream failed below HTTP: no usable answer arrived."""


class ConnectError(TransportError):
    """No connection could be opened (refused, unreachable, DNS, TLS handshake)."""


class ConnectionClosed(TransportError):
    """The server closed or reset the connection before the answer was complete."""


class ProtocolError(TransportError):
    """The server sent bytes that are not HTTP/1.1."""


class ReadTimeout(TransportError, TimeoutError):
    """No byte arrived from the server for the idle-read timeout."""


class ConnectTimeout(ConnectError, TimeoutError):
    """Opening the connection took longer than the connect timeout."""


class DeadlineExceeded(TransportError, TimeoutError):
    """The caller's deadline (``HttpClient.request(deadline=...)``) passed before the
    whole answer arrived: waiting for a free connection, connecting or reading."""


class HttpResponse:
    """One answer: status and headers at once, the body as it arrives.

    ``headers`` maps lower-cased names to values (repeated names joined with ", ").
    """

    __slots__ = ("status", "headers", "_exchange")

    def __init__(self, exchange: _Exchange) -> None:
        self.status = exchange.status
        self.headers = exchange.headers
        self._exchange = exchange

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        return await _read_all(self._exchange)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, decoded from gzip/deflate when the server used it."""
        exchange = self._exchange
        while True:
            chunk = await exchange.next_chunk()
            if chunk is None:
                return
            yield chunk


async def _read_all(exchange: _Exchange) -> bytes:
    parts = []
    while (chunk := await exchange.next_chunk()) is not None:
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Exchange:
    """One request's answer as the parser delivers it, to one waiting reader."""

    __slots__ = (
        "connection",
        "status",
        "headers",
        "chunks",
        "buffered",
        "complete",
        "error",
        "waiter",
        "got_bytes",
        "decoder",
        "keep_alive",
        "deadline",
    )

    def __init__(self, connection: _Connection, deadline: float | None) -> None:
        self.connection = connection
        #: Loop time by which the answer must be complete (None: only the idle timeout).
        self.deadline = deadline
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.got_bytes = False
        self.decoder: Any = None
        self.keep_alive = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_head(self) -> None:
        while not self.status and self.error is None:
            await self._wait()
        if self.error is not None and not self.status:
            raise self.error

    async def next_chunk(self) -> bytes | None:
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.buffered < _HIGH_WATER:
                    self.connection.resume()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            await self._wait()

    async def _wait(self) -> None:
        loop = self.connection.loop
        self.waiter = loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its response parser; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: The server sent more than the answer; what follows is ignored.
        self.stray = False

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self.last_read = self.loop.time()
        exchange.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        exchange = self.exchange
        if exchange is None or exchange.complete:
            return
        if exc is None and exchange.status and exchange.error is None and self._reads_to_close():
            self.on_message_complete()  # a body delimited by the end of the connection
            return
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionClosed(f"the server closed the connection{reason}"))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost finishes the exchange

    # --- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if exchange.complete:  # bytes past the end of the answer: the framing is off
            self.stray = True
            self.close()
            return
        exchange.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        if self.stray:
            return
        if exchange is None:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = exchange.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if self.stray:
            return
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue): the real one follows
        encoding = exchange.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            exchange.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            exchange.decoder = _Deflate()
        elif encoding not in ("", "identity"):
            self._fail(ProtocolError(f"unsupported content-encoding {encoding!r}"))
            self.close()
            return
        exchange.status = status
        # Asked here: once the message is complete the parser answers for the next one.
        exchange.keep_alive = self.parser.should_keep_alive()
        exchange.wake()

    def on_body(self, body: bytes) -> None:
        exchange = self._receiving()
        if exchange is None:
            return
        if exchange.decoder is not None:
            body = self._decompress(exchange, body)
            if not body:
                return
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered >= _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._receiving()
        if exchange is None:
            return
        if exchange.decoder is not None:
            rest = self._decompress(exchange, None)
            if exchange.error is not None:
                return
            if rest:
                exchange.chunks.append(rest)
        exchange.complete = True  # the timer stays armed: the next exchange may reuse it
        exchange.wake()

    def _receiving(self) -> _Exchange | None:
        """The exchange a body belongs to; None when the bytes are to be ignored."""
        exchange = self.exchange
        if self.stray or exchange is None or not exchange.status or exchange.error is not None:
            return None
        return exchange

    def _decompress(self, exchange: _Exchange, data: bytes | None) -> bytes:
        """``data`` decoded (None: the decoder's last bytes); b"" and a failed exchange
        when the body is not what its ``content-encoding`` says."""
        try:
            if data is None:
                return exchange.decoder.flush()  # type: ignore[no-any-return]
            return exchange.decoder.decompress(data)  # type: ignore[no-any-return]
        except zlib.error as exc:
            self._fail(ProtocolError(f"the response body does not decompress: {exc}"))
            self.close()
            return b""

    # --- used by the client -----------------------------------------------------

    def start(self, request: bytes, deadline: float | None = None) -> _Exchange:
        assert self.transport is not None
        exchange = _Exchange(self, deadline)
        self.exchange = exchange
        self.last_read = self.loop.time()
        due = self._due(exchange)
        if due is not None:
            timer = self._timer
            # A timer left armed by an earlier exchange serves when it fires no later
            # (it re-arms itself for this one): usually no timer is armed per request.
            if timer is None or timer.when() > due:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(due, self._on_timer)
        self.transport.write(request)
        return exchange

    def reusable(self) -> bool:
        exchange = self.exchange
        return (
            not self.closed
            and not self.stray
            and exchange is not None
            and exchange.complete
            and exchange.error is None
            and exchange.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # --- internals --------------------------------------------------------------

    def _due(self, exchange: _Exchange) -> float | None:
        """When ``exchange`` fails unless more bytes come: the idle-read timeout or its
        deadline, whichever is first (None: never)."""
        due = exchange.deadline
        if self.read_timeout is not None:
            # A paused reader is the slow party, not the server: its idle clock waits.
            idle_due = (self.loop.time() if self.paused else self.last_read) + self.read_timeout
            due = idle_due if due is None or idle_due < due else due
        return due

    def _on_timer(self) -> None:
        """The connection's one timer: fail the exchange when its idle-read timeout or
        deadline has passed, else re-arm for when one would. Between exchanges it lapses."""
        self._timer = None
        exchange = self.exchange
        if exchange is None or exchange.complete or exchange.error is not None:
            return
        due = self._due(exchange)
        if due is None:
            return
        now = self.loop.time()
        if due > now:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        if exchange.deadline is not None and exchange.deadline <= now:
            self._fail(DeadlineExceeded("the deadline passed before the whole answer arrived"))
        else:
            self._fail(ReadTimeout(f"no data from the server for {self.read_timeout:g}s"))
        self.close()

    def _fail(self, error: BaseException) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.error is None and not exchange.complete:
            exchange.error = error
            exchange.wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reads_to_close(self) -> bool:
        exchange = self.exchange
        assert exchange is not None
        headers = exchange.headers
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )


class _Deflate:
    """``Content-Encoding: deflate``: zlib-wrapped as the RFC says, raw from some servers."""

    def __init__(self) -> None:
        self._inner: Any = None
        self._raw = False

    def decompress(self, data: bytes) -> bytes:
        if self._inner is None:
            self._raw = not data or (data[0] & 0x0F) != 8
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS if self._raw else zlib.MAX_WBITS)
        return self._inner.decompress(data)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        return self._inner.flush() if self._inner is not None else b""  # type: ignore[no-any-return]


class HttpClient:
    """Requests to one origin (``base_url``) over a pool of kept-alive connections.

    ``headers`` go on every request. ``read_timeout`` bounds the wait for each byte
    of an answer (not the whole answer: the caller bounds that); ``connect_timeout``
    bounds opening a connection, TLS handshake included. At most ``max_connections``
    requests are in flight at once; the others wait their turn.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = 10.0,
        read_timeout: float | None = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "trellis",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if default_port else f"{host}:{self.port}"
        self.ssl_context = ssl_context if self.tls else None
        if self.tls and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        fixed = {
            "host": authority,
            "user-agent": user_agent,
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
        }
        for name, value in (headers or {}).items():
            check_header(name, value)
            fixed[name.lower()] = value
        fixed.pop("content-length", None)
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: deque[_Connection] = deque()
        self._active: set[_Connection] = set()
        self._targets: dict[str, str] = {}
        self._closed = False
        self._slots = asyncio.Semaphore(max_connections)

    # --- requests ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        params: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One whole exchange: ``(status, headers, body)``. ``deadline`` (event-loop time)
        bounds all of it, the wait for a free connection and connecting included;
        passing it raises ``DeadlineExceeded``: cheaper than a timeout scope around
        the call, which arms and cancels a timer of its own on every request."""
        connection, exchange = await self._open(self._frame(method, path, body, params), deadline)
        try:
            return exchange.status, exchange.headers, await _read_all(exchange)
        finally:
            self._release(connection)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[HttpResponse]:
        """The answer as soon as its head arrives; read its body inside the block."""
        connection, exchange = await self._open(self._frame(method, path, body, params))
        try:
            yield HttpResponse(exchange)
        finally:
            self._release(connection)

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail with ``ConnectionClosed``."""
        self._closed = True
        for connection in [*self._idle, *self._active]:
            connection.close()
        self._idle.clear()
        self._active.clear()

    @property
    def connections(self) -> int:
        """Open connections, idle and in use (for tests and diagnostics)."""
        return sum(1 for c in self._idle if not c.closed) + len(self._active)

    # --- internals --------------------------------------------------------------

    def _frame(
        self, method: str, path: str, body: bytes | None, params: Mapping[str, str] | None
    ) -> bytes:
        target = self._targets.get(path)
        if target is None:
            target = quote(self.base_path + path, safe=_PATH_SAFE)
            if len(self._targets) < 64:
                self._targets[path] = target
        if params:
            target += "?" + urlencode(params)
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}"
        if body is not None:
            head += f"content-length: {len(body)}\r\n"
        head += "\r\n"
        return head.encode("latin-1") + body if body is not None else head.encode("latin-1")

    async def _open(
        self, request: bytes, deadline: float | None = None
    ) -> tuple[_Connection, _Exchange]:
        """Send ``request`` and wait for the head of its answer."""
        if deadline is None or not self._slots.locked():
            await self._slots.acquire()
        else:
            await self._wait_for_slot(deadline)
        try:
            if self._closed:
                raise ConnectionClosed("the client is closed")
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect(deadline)
        except BaseException:
            self._slots.release()
            raise
        self._active.add(connection)
        try:
            exchange = connection.start(request, deadline)
            try:
                await exchange.wait_head()
            except ConnectionClosed:
                if not reused or exchange.got_bytes:
                    raise
                # A reused connection the server had closed: it never saw this request.
                self._active.discard(connection)
                connection.close()
                connection = await self._connect(deadline)
                self._active.add(connection)
                exchange = connection.start(request, deadline)
                await exchange.wait_head()
        except BaseException:
            self._release(connection)
            raise
        return connection, exchange

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        while self._idle:
            connection = self._idle.pop()
            if connection.loop is not loop:  # pooled by an event loop that has ended
                with contextlib.suppress(RuntimeError):  # "Event loop is closed"
                    connection.close()
                continue
            transport = connection.transport
            if (
                connection.closed
                or transport is None
                or transport.is_closing()
                or now - connection.idle_since > KEEPALIVE_SECONDS
            ):
                connection.close()
                continue
            return connection
        return None

    async def _wait_for_slot(self, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed waiting for a free connection") from None

    async def _connect(self, deadline: float | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = self.connect_timeout
        by_deadline = deadline is not None and (limit is None or deadline - loop.time() < limit)
        try:
            async with asyncio.timeout_at(deadline) if by_deadline else asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self.read_timeout),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded(
                    f"the deadline passed connecting to {self.host}:{self.port}"
                ) from None
            raise ConnectTimeout(
                f"connecting to {self.host}:{self.port} took over {self.connect_timeout:g}s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{self.host}:{self.port}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        """Give back ``connection`` and its slot (once per ``_open`` that returned)."""
        self._active.discard(connection)
        self._slots.release()
        if not self._closed and connection.reusable() and len(self._idle) < MAX_IDLE:
            connection.exchange = None
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
