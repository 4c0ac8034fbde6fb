"""A loopback HTTP server that imitates the OpenAI, Anthropic, Gemini and Cohere APIs.

Tests (and users) point a real provider adapter at it instead of patching
code, so the whole path - HTTP, SSE framing, error bodies - is exercised.
Faults are injected per request (error statuses, delays, resets, malformed
JSON, streams cut short or ended early) to prove retries, timeouts and error mapping.

It runs its own event loop in a daemon thread, so it serves both synchronous
and asyncio tests, and it is plain asyncio (uvloop when installed) so a
benchmark can drive thousands of requests a second through it::

    with FakeUpstream(vendor="anthropic") as up:
        up.faults.push(Fault.status(529))
        deployment = Deployment(provider="anthropic", model="m", base_url=up.base_url, ...)

Run it as its own process with ``python -m trellis.testing.fake_upstream``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from trellis.testing._fake_vendors import VENDORS, Answer, Frame, Vendor, count_words, dumps
from trellis.testing._fake_vendors import split_pieces as _split_pieces

__all__ = ["FakeUpstream", "Fault", "FaultQueue", "ReceivedRequest", "ToolCallReply", "main"]

_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure. Build them with the class methods, not the constructor."""

    kind: str
    code: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0
    message: str = "injected fault"
    fields: tuple[str, ...] = ()
    location: str = ""

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | None = None, message: str | None = None
    ) -> Fault:
        """Answer with HTTP ``code`` and the vendor's error body (and ``Retry-After`` if given)."""
        return cls("status", code=code, retry_after=retry_after, message=message or f"fake {code}")

    @classmethod
    def redirect(cls, location: str, code: int = 307) -> Fault:
        """Answer ``code`` (a 3xx) with ``Location: location`` and a short HTML body, as a
        server or load balancer does when the base URL moved (http -> https, a new path)."""
        return cls("redirect", code=code, location=location)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` longer than usual, then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection without answering."""
        return cls("reset")

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 with a body (or, when streaming, an event) that is not valid JSON."""
        return cls("malformed")

    @classmethod
    def without(cls, *fields: str) -> Fault:
        """Answer 200 normally, but leave these top-level fields out of the JSON body (as
        some OpenAI-compatible servers leave out ``usage`` or ``id``)."""
        return cls("without", fields=fields)

    @classmethod
    def cut_stream(cls, after_chunks: int = 2) -> Fault:
        """Send ``after_chunks`` content chunks, then drop the connection mid-body."""
        return cls("cut", after_chunks=after_chunks)

    @classmethod
    def end_stream(cls, after_chunks: int = 2) -> Fault:
        """Send ``after_chunks`` content chunks, then close the connection as if the answer
        were complete: the body is delimited by the close (no length, not chunked), so
        only the missing end of the vendor's stream (OpenAI's finish_reason and
        ``[DONE]``, Anthropic's ``message_stop``...) tells it was cut short."""
        return cls("end", after_chunks=after_chunks)

    @classmethod
    def without_done(cls) -> Fault:
        """Stream the whole answer, finish_reason included, but leave out OpenAI's closing
        ``data: [DONE]``, as some llama.cpp servers do (other vendors send none anyway)."""
        return cls("without_done")

    @classmethod
    def stream_error(cls, after_chunks: int = 1, message: str = "overloaded") -> Fault:
        """Send ``after_chunks`` content chunks, then the vendor's in-stream error event."""
        return cls("stream_error", after_chunks=after_chunks, message=message)


class FaultQueue:
    """Faults consumed one per request, first in first out; ``always`` repeats one forever.

    Requests the fake refuses on its own (unknown route, missing key or required
    field) do not consume a fault.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._always: Fault | None = None

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._queue.extend(faults)

    def always(self, fault: Fault) -> None:
        with self._lock:
            self._always = fault

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._always = None

    def next(self) -> Fault | None:
        """The fault for the request being served, if any."""
        if not self._queue and self._always is None:  # fast path, no lock
            return None
        with self._lock:
            return self._queue.popleft() if self._queue else self._always

    def __len__(self) -> int:
        return len(self._queue)


@dataclass(frozen=True, slots=True)
class ToolCallReply:
    """A tool call the fake model answers with, when ``reply`` returns a list of them.

    ``arguments`` is an object, or the exact arguments text (to script invalid JSON)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


#: What ``FakeUpstream.reply`` may be: fixed text, or a function of the request body giving
#: text or the tool calls of the answer (several make parallel calls in one message).
Reply = str | Callable[[dict[str, Any]], "str | list[ToolCallReply]"]


@dataclass(slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Plan:
    """What to send back for one request, decided when it arrives."""

    delay: float
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    frames: list[Frame] | None = None  # an SSE stream instead of a body
    tail: bytes = b""  # bytes after the frames (OpenAI's [DONE])
    cut_after: int | None = None  # drop the connection after this many content frames
    reset: bool = False
    close_delimited: bool = False  # a stream body ended by closing the connection


class FakeUpstream:
    """A fake provider API on ``127.0.0.1``; see the module docstring."""

    def __init__(
        self,
        vendor: str = "openai",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: Reply = "Hello from fake",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}; choose from {sorted(VENDORS)}")
        self.vendor = vendor
        self.host = host
        self.port = port
        #: Serve HTTPS with this server context (its certificate, any client-cert demand).
        self.tls = tls
        self.reply: Reply = reply
        self.tool_call: dict[str, Any] | None = None
        self.served_model: str | None = None
        self.delay = 0.0
        self.chunk_delay = 0.0  # seconds between stream frames
        #: Stream text in slices of this many characters instead of word by word (a
        #: value split across chunks, as real tokenizers split them).
        self.piece_chars: int | None = None
        self.require_auth = VENDORS[vendor].default_auth
        self.record = True  # keep ReceivedRequests (a long benchmark may turn this off)
        self.faults = FaultQueue()
        self.requests: list[ReceivedRequest] = []
        self._shape: Vendor = VENDORS[vendor]()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._start_error: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What a ``Deployment.base_url`` pointing here should be."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self._shape.base_path}"

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"fake-{self.vendor}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(self), self.host, self.port, backlog=4096, ssl=self.tls
                )
            )
        except OSError as exc:
            self._start_error = exc
            loop.close()
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- deciding the answer ----------------------------------------------------

    def _plan(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Plan:
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query)) if split.query else {}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._error(400, "request body is not valid JSON", self.delay)
        if self.record:
            self.requests.append(ReceivedRequest(method, path, headers, body, query))
        shape = self._shape
        route = shape.route(method, path)
        if route is None:
            return self._error(404, f"no route for {method} {path}", self.delay)
        if self.require_auth and (problem := shape.auth_problem(headers, query)):
            return self._error(401, problem, self.delay)
        if problem := shape.protocol_problem(headers, body, route):
            return self._error(400, problem, self.delay)

        fault = self.faults.next()
        delay = self.delay + (fault.seconds if fault and fault.kind == "delay" else 0.0)
        if fault is not None and fault.kind == "reset":
            return _Plan(delay, reset=True)
        if fault is not None and fault.kind == "redirect":
            html = f'<html><body><a href="{fault.location}">moved</a></body></html>'.encode()
            moved = (("content-type", "text/html"), ("location", fault.location))
            return _Plan(delay, status=fault.code, headers=moved, body=html)
        if fault is not None and fault.kind == "status":
            extra: tuple[tuple[str, str], ...] = ()
            if fault.retry_after is not None:
                extra = (("retry-after", f"{fault.retry_after:g}"),)
            return self._error(fault.code, fault.message, delay, extra)
        if not isinstance(body, dict):  # only body-less GETs get this far
            body = {}
        model = self.served_model or shape.request_model(body, route)
        kind = fault.kind if fault is not None else None
        if route.op == "models":
            payload = shape.models_body(model)
        elif route.op in ("embed", "batch_embed"):
            payload = shape.embed_body(body, route, model)
        else:
            answer = self._answer(body, model)
            if shape.wants_stream(body, route, query):
                return self._stream(answer, body, fault, delay)
            payload = shape.chat_payload(answer, body, route)
        if kind == "malformed":
            return _Plan(delay, headers=_JSON, body=b'{"id": "fake", "choices": [')
        if kind == "without" and fault is not None:
            payload = {k: v for k, v in payload.items() if k not in fault.fields}
        plan = self._json(payload, delay)
        if kind == "cut":  # promise more body than we send, then hang up
            plan.cut_after = 0
        return plan

    def _stream(
        self, answer: Answer, body: dict[str, Any], fault: Fault | None, delay: float
    ) -> _Plan:
        shape = self._shape
        frames = shape.stream_frames(answer, body)
        plan = _Plan(delay, headers=_SSE, frames=frames, tail=shape.stream_end())
        if fault is None:
            return plan
        if fault.kind == "malformed":
            frames.insert(1, (shape.malformed_frame(), False))
        elif fault.kind == "without_done":
            plan.tail = b""
        elif fault.kind == "end":
            plan.frames = _first_content(frames, fault.after_chunks)
            plan.tail = b""
            plan.close_delimited = True
        elif fault.kind in ("cut", "stream_error"):
            plan.frames = _first_content(frames, fault.after_chunks)
            if fault.kind == "cut":
                plan.cut_after = fault.after_chunks
            else:
                plan.frames.append((shape.stream_error_frame(fault.message), False))
                plan.tail = b""
        return plan

    def _answer(self, body: dict[str, Any], model: str) -> Answer:
        shape = self._shape
        limit = shape.output_limit(body)
        prompt_tokens = count_words(shape.prompt_text(body))
        answer_id = f"{shape.id_prefix}{next(self._ids)}"
        if self.tool_call is not None:
            name = str(self.tool_call["name"])
            args = dict(self.tool_call.get("arguments") or {})
            arguments = json.dumps(args)
            third = max(1, len(arguments) // 3)
            pieces = [arguments[i : i + third] for i in range(0, len(arguments), third)]
            tokens = count_words(name) + count_words(arguments)
            return Answer(answer_id, model, None, name, args, pieces, prompt_tokens, tokens, False)
        reply = self.reply(body) if callable(self.reply) else self.reply
        if isinstance(reply, list):
            return self._tool_answer(answer_id, model, prompt_tokens, reply)
        text = reply
        n = self.piece_chars
        pieces = [text[i : i + n] for i in range(0, len(text), n)] if n else _split_pieces(text)
        truncated = limit is not None and len(pieces) > limit
        if truncated:
            pieces = pieces[:limit]
            text = "".join(pieces)
        tokens = len(pieces)
        return Answer(answer_id, model, text, None, None, pieces, prompt_tokens, tokens, truncated)

    @staticmethod
    def _tool_answer(
        answer_id: str, model: str, prompt_tokens: int, calls: list[ToolCallReply]
    ) -> Answer:
        if not calls:
            raise ValueError("a scripted tool-call answer needs at least one ToolCallReply")
        first = calls[0]
        try:
            args = json.loads(first.text)
        except ValueError:
            args = {}
        pieces = [first.text[i : i + 16] for i in range(0, len(first.text), 16)] or [""]
        tokens = sum(count_words(c.name) + count_words(c.text) for c in calls)
        return Answer(
            answer_id,
            model,
            None,
            first.name,
            args if isinstance(args, dict) else {},
            pieces,
            prompt_tokens,
            tokens,
            False,
            calls=[(c.name, c.text) for c in calls],
        )

    def _json(self, payload: Any, delay: float, status: int = 200) -> _Plan:
        return _Plan(delay, status=status, headers=_JSON, body=dumps(payload))

    def _error(
        self, status: int, message: str, delay: float, extra: tuple[tuple[str, str], ...] = ()
    ) -> _Plan:
        body = dumps(self._shape.error_body(status, message))
        return _Plan(delay, status=status, headers=_JSON + extra, body=body)


_JSON = (("content-type", "application/json"),)
_SSE = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


def _first_content(frames: list[Frame], count: int) -> list[Frame]:
    """The frames up to and including the ``count``-th content frame (or before the first)."""
    kept: list[Frame] = []
    seen = 0
    for frame in frames:
        if frame[1]:
            if seen == count:
                break
            seen += 1
        kept.append(frame)
    return kept


def _head(
    status: int,
    headers: Iterable[tuple[str, str]],
    length: int | None,
    close: bool,
    *,
    delimited_by_close: bool = False,
) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Error"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if delimited_by_close:
        close = True  # the body ends where the connection does
    elif length is None:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {length}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests on it are answered in order."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.upstream._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.upstream._connections.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self.busy and self.transport is not None:
            request = self._parse()
            if request is None:
                return
            method, target, headers, body, keep_alive = request
            plan = self.upstream._plan(method, target, headers, body)
            if plan.delay <= 0 and not (plan.frames and self.upstream.chunk_delay > 0):
                self._send(plan, keep_alive)
            else:
                self.busy = True
                task = asyncio.ensure_future(self._send_later(plan, keep_alive))
                self.upstream._tasks.add(task)  # the loop holds tasks only weakly
                task.add_done_callback(self.upstream._tasks.discard)

    def _parse(self) -> tuple[str, str, dict[str, str], bytes, bool] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self._refuse(431)
            return None
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._refuse(400)
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._refuse(411)  # request bodies must carry Content-Length
            return None
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            self._refuse(400)
            return None
        total = end + 4 + length
        if len(self.buffer) < total:
            return None
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return method, target, headers, body, keep_alive

    def _refuse(self, status: int) -> None:
        if self.transport is not None:
            self.transport.write(_head(status, (), 0, True))
        self._hang_up()

    def _hang_up(self, *, abort: bool = False) -> None:
        """Close (flushing what was written) or abort; serve nothing more on this connection."""
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.transport = None
        self.buffer.clear()

    def _send(self, plan: _Plan, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if plan.reset:
            self._hang_up(abort=True)
            return
        if plan.frames is None:
            if plan.cut_after is not None:
                half = plan.body[: len(plan.body) // 2]
                transport.write(_head(plan.status, plan.headers, len(plan.body), False) + half)
                self._hang_up()
                return
            head = _head(plan.status, plan.headers, len(plan.body), not keep_alive)
            transport.write(head + plan.body)
        elif plan.close_delimited:
            head = _head(plan.status, plan.headers, None, True, delimited_by_close=True)
            transport.write(head + b"".join(frame for frame, _ in plan.frames))
            self._hang_up()  # the end of the connection is the end of the body
            return
        else:
            parts = [_head(plan.status, plan.headers, None, not keep_alive)]
            parts.extend(_chunk(frame) for frame, _ in plan.frames)
            if plan.cut_after is not None:
                transport.write(b"".join(parts))
                self._hang_up()  # flushes what we wrote, then FIN mid-body
                return
            if plan.tail:
                parts.append(_chunk(plan.tail))
            parts.append(b"0\r\n\r\n")
            transport.write(b"".join(parts))
        if not keep_alive:
            self._hang_up()

    async def _send_later(self, plan: _Plan, keep_alive: bool) -> None:
        try:
            if plan.delay > 0:
                await asyncio.sleep(plan.delay)
            gap = self.upstream.chunk_delay
            if plan.frames and gap > 0 and not plan.reset and self.transport is not None:
                await self._send_paced(plan, keep_alive, gap)
            else:
                self._send(plan, keep_alive)
        finally:
            self.busy = False
        if self.transport is not None and self.buffer:
            self._serve_buffered()

    async def _send_paced(self, plan: _Plan, keep_alive: bool, gap: float) -> None:
        assert plan.frames is not None
        transport = self.transport
        if transport is None:
            return
        delimited = plan.close_delimited
        close = delimited or not keep_alive
        transport.write(_head(plan.status, plan.headers, None, close, delimited_by_close=delimited))
        for index, (frame, _) in enumerate(plan.frames):
            if index:
                await asyncio.sleep(gap)
            if transport.is_closing():
                return
            transport.write(frame if delimited else _chunk(frame))
        if plan.cut_after is not None or delimited:
            self._hang_up()
            return
        transport.write((_chunk(plan.tail) if plan.tail else b"") + b"0\r\n\r\n")
        if not keep_alive:
            self._hang_up()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    """Serve one fake vendor until SIGTERM/SIGINT; print the base URL on the first line."""
    parser = argparse.ArgumentParser(prog="python -m trellis.testing.fake_upstream")
    parser.add_argument("--vendor", default="openai", choices=sorted(VENDORS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every response")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds between stream events"
    )
    parser.add_argument("--reply", default="Hello from fake")
    parser.add_argument("--record", action="store_true", help="keep received requests in memory")
    args = parser.parse_args(argv)

    upstream = FakeUpstream(args.vendor, host=args.host, port=args.port, reply=args.reply)
    upstream.delay = args.delay
    upstream.chunk_delay = args.chunk_delay
    upstream.record = args.record
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    upstream.start()
    print(upstream.base_url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        with contextlib.suppress(TimeoutError):
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
