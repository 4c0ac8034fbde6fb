"""A small keep-alive HTTP/1.1 client for provider calls: asyncio streams parsed by httptools.

Every model call crosses it, so its cost is added to every request the gateway
serves; aiohttp's client spends several times its CPU per call (figures, and what
that does to a bare forwarder's added latency: README, Performance). The parsing
is httptools (llhttp, the parser uvicorn uses); this module only frames requests
and keeps a pool of connections.

What it does: one origin per client (the provider's base URL), HTTP and HTTPS,
optionally through an HTTP proxy (``CONNECT`` tunnels for HTTPS origins, absolute
request targets for HTTP ones), ``content-length`` request bodies, responses sized
by ``content-length``, chunked or delimited by the close of the connection,
gzip/deflate bodies, a cap on the size of an answer after decompression, an
idle-read timeout and an optional deadline for the whole exchange (one timer per
connection, kept armed across its exchanges), and a pool of kept-alive connections.

A request is written once and never sent again by this module: once any byte of it
may have reached the server, a failure is raised (the router retries it as an
attempt of its own, on the trace). Only a pooled connection already seen closed is
passed over before writing. Idle connections are retired before the usual server
keep-alive (uvicorn's 5 s) or the server's ``Keep-Alive: timeout=N``, so that race
is rare. Redirects are answers like any other (the provider refuses them); no
cookies: provider APIs use none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

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
    "ResponseTooLarge",
    "KEEPALIVE_SECONDS",
    "MAX_RESPONSE_BYTES",
    "MAX_HEAD_BYTES",
]

#: Connections open at once per client by default (aiohttp's default too); more
#: concurrent requests wait for one to be free.
MAX_CONNECTIONS = 1000
#: Idle connections kept per client; the others are closed after use.
MAX_IDLE = 256
#: A kept-alive connection idle this long (since its last byte arrived) is closed rather
#: than reused: uvicorn, hence vLLM, drops idle connections after 5 s (others after
#: 5-75 s), and a request written as the server drops the connection fails.
KEEPALIVE_SECONDS = 4.0
#: The largest answer body accepted, counted after decompression.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: The most bytes read before an answer's head is complete (status line and headers).
MAX_HEAD_BYTES = 1024 * 1024
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


class ResponseTooLarge(TransportError):
    """The answer's body, decompressed, is larger than the client's ``max_body_bytes``."""


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
        "received",
        "head_bytes",
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
        #: Body bytes delivered so far (decompressed), held to the connection's cap.
        self.received = 0
        #: Bytes read before the head was complete (bounded: the parser buffers them).
        self.head_bytes = 0

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

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float | None,
        max_body: int = MAX_RESPONSE_BYTES,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.max_body = max_body
        #: Seconds this connection may stay idle in the pool (lowered by ``Keep-Alive``).
        self.keepalive = keepalive
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
        if not exchange.status:  # still in the head, which the parser buffers unbounded
            exchange.head_bytes += len(data)
            if exchange.head_bytes > MAX_HEAD_BYTES:
                self._fail(ProtocolError(f"the answer's head is over {MAX_HEAD_BYTES} bytes"))
                self.close()
                return
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
        exchange.received += len(body)
        if exchange.received > self.max_body:
            self._too_large()
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
                exchange.received += len(rest)
                if exchange.received > self.max_body:
                    self._too_large()
                    return
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
        when the body is not what its ``content-encoding`` says. At most one byte past
        the cap is decoded, so a small compressed body cannot inflate to a huge one."""
        try:
            if data is None:
                return exchange.decoder.flush()  # type: ignore[no-any-return]
            room = self.max_body - exchange.received + 1
            return exchange.decoder.decompress(data, room)  # type: ignore[no-any-return]
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

    def _too_large(self) -> None:
        self._fail(
            ResponseTooLarge(
                f"the answer is larger than {self.max_body} bytes (after decompression)"
            )
        )
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

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        if self._inner is None:
            self._raw = not data or (data[0] & 0x0F) != 8
            self._inner = zlib.decompressobj(-zlib.MAX_WBITS if self._raw else zlib.MAX_WBITS)
        return self._inner.decompress(data, max_length)  # type: ignore[no-any-return]

    def flush(self) -> bytes:
        return self._inner.flush() if self._inner is not None else b""  # type: ignore[no-any-return]


class _Proxy:
    """An HTTP proxy from a URL such as ``http://user:password@proxy:3128``."""

    __slots__ = ("host", "port", "authorization")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            # Not the URL itself in the message: it may carry a password.
            raise ValueError(
                f"expected an http://host:port proxy URL, got scheme {parts.scheme!r} "
                f"(proxies reached over HTTPS or SOCKS are not supported)"
            )
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authorization: str | None = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Tunnel(asyncio.Protocol):
    """A proxy's answer to ``CONNECT``, read before TLS takes the connection over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buffer += data
        while True:  # an interim (1xx) answer may come first
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_TUNNEL_HEAD:
                    self._refuse("the proxy's answer to CONNECT is too long")
                return
            status_line = self._buffer[: self._buffer.find(b"\r\n")].decode("latin-1")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/") or not code.isdigit():
                self._refuse(f"the proxy did not answer CONNECT in HTTP: {status_line[:80]!r}")
                return
            self._buffer = self._buffer[end + 4 :]
            status = int(code)
            if 100 <= status < 200:
                continue
            if 200 <= status < 300 and self._buffer:
                self._refuse("the proxy sent bytes before the tunnel's TLS handshake")
                return
            self.answer.set_result((status, reason))
            return

    def connection_lost(self, exc: Exception | None) -> None:
        self._refuse(f"the proxy closed the connection before answering CONNECT{_reason(exc)}")

    def _refuse(self, message: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectError(message))


#: The longest answer to ``CONNECT`` read (its head; a refusal's body is not read).
_MAX_TUNNEL_HEAD = 64 * 1024


def _reason(exc: BaseException | None) -> str:
    return f": {exc}" if exc else ""


def _keepalive_hint(value: str) -> float | None:
    """Seconds a connection may idle by the server's ``Keep-Alive: timeout=N``: a margin
    under N, since the server drops it at N (None: the header names no timeout)."""
    for part in value.split(","):
        name, _, number = part.partition("=")
        if name.strip().lower() == "timeout":
            try:
                seconds = int(number.strip().strip('"'))
            except ValueError:
                return None
            return max(seconds - 1.0, seconds / 2) if seconds > 0 else 0.0
    return None


class HttpClient:
    """Requests to one origin (``base_url``) over a pool of kept-alive connections.

    ``headers`` go on every request. ``read_timeout`` bounds the wait for each byte
    of an answer (not the whole answer: the caller bounds that); ``connect_timeout``
    bounds opening a connection, proxy tunnel and TLS handshake included. At most
    ``max_connections`` requests are in flight at once; the others wait their turn.
    ``keepalive`` is how long an idle connection is kept for reuse (less when the
    server's ``Keep-Alive: timeout=N`` says so); ``max_body_bytes`` caps an answer's
    body, decompressed. ``proxy`` (``http://[user:password@]host:port``) carries every
    request: through a ``CONNECT`` tunnel to an HTTPS origin, or with the absolute URL
    as request target to an HTTP one.
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
        keepalive: float = KEEPALIVE_SECONDS,
        max_body_bytes: int = MAX_RESPONSE_BYTES,
        proxy: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {base_url!r}")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
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
        self.keepalive = keepalive
        self.max_body_bytes = max_body_bytes
        self.proxy = _Proxy(proxy) if proxy else None
        self._tunnel_target = f"{host}:{self.port}"
        self._where = self._tunnel_target + (f" via proxy {self.proxy}" if self.proxy else "")
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
        #: Prefix of request targets: a forward proxy reads the origin from an absolute URL.
        self._origin = ""
        if self.proxy is not None and not self.tls:
            self._origin = f"http://{authority}"
            if self.proxy.authorization is not None:
                fixed["proxy-authorization"] = self.proxy.authorization
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
            target = self._origin + quote(self.base_path + path, safe=_PATH_SAFE)
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
            except ConnectionClosed as exc:
                if not reused or exchange.got_bytes:
                    raise
                # Written, so possibly read and acted on (a completion made and billed):
                # never sent again here. A retry is the caller's, as an attempt of its own.
                raise ConnectionClosed(
                    "the server closed a reused connection without answering; the request "
                    f"may have reached it, so it is not sent again ({exc})"
                ) from exc
        except BaseException:
            self._release(connection)
            raise
        return connection, exchange

    def _take_idle(self) -> _Connection | None:
        """A pooled connection still fit to carry a request: open as far as the event
        loop has seen, and idle for less than its keep-alive time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
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
                or now - connection.idle_since > connection.keepalive
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
                if self.proxy is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(
                            loop, self.read_timeout, self.max_body_bytes, self.keepalive
                        ),
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=self.host if self.tls else None,
                    )
                else:
                    connection = await self._connect_through(self.proxy, loop)
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded(f"the deadline passed connecting to {self._where}") from None
            raise ConnectTimeout(
                f"connecting to {self._where} took over {self.connect_timeout:g}s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{self._where}: {exc}") from exc
        return connection

    async def _connect_through(self, proxy: _Proxy, loop: asyncio.AbstractEventLoop) -> _Connection:
        """A connection to the origin through ``proxy``: to the proxy itself for an HTTP
        origin (requests then name the origin), a ``CONNECT`` tunnel with TLS inside it
        for an HTTPS one."""
        connection = _Connection(loop, self.read_timeout, self.max_body_bytes, self.keepalive)
        if not self.tls:
            await loop.create_connection(lambda: connection, proxy.host, proxy.port)
            return connection
        transport, tunnel = await loop.create_connection(
            lambda: _Tunnel(loop), proxy.host, proxy.port
        )
        try:
            head = f"CONNECT {self._tunnel_target} HTTP/1.1\r\nhost: {self._tunnel_target}\r\n"
            if proxy.authorization is not None:
                head += f"proxy-authorization: {proxy.authorization}\r\n"
            transport.write(f"{head}\r\n".encode("latin-1"))
            status, reason = await tunnel.answer
            if not 200 <= status < 300:
                raise ConnectError(
                    f"the proxy {proxy} refused CONNECT {self._tunnel_target}: {status} {reason}"
                )
            assert self.ssl_context is not None
            tls = await loop.start_tls(
                transport, connection, self.ssl_context, server_hostname=self.host
            )
        except BaseException:
            transport.abort()
            raise
        if tls is None:
            raise ConnectError(f"{self._where}: the TLS handshake did not complete")
        connection.connection_made(tls)  # start_tls does not announce its transport
        return connection

    def _release(self, connection: _Connection) -> None:
        """Give back ``connection`` and its slot (once per ``_open`` that returned)."""
        self._active.discard(connection)
        self._slots.release()
        if not self._closed and connection.reusable() and len(self._idle) < MAX_IDLE:
            exchange = connection.exchange
            assert exchange is not None
            hint = exchange.headers.get("keep-alive")
            if hint is not None and (seconds := _keepalive_hint(hint)) is not None:
                connection.keepalive = min(connection.keepalive, seconds)
            connection.exchange = None
            # Idle since its last byte arrived: the server's clock started no later.
            connection.idle_since = connection.last_read
            if connection.keepalive > 0:
                self._idle.append(connection)
                return
        connection.close()
