"""The providers' HTTP client against scripted loopback servers: framing, pooling, faults."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from trellis.inference.providers.transport import (
    KEEPALIVE_SECONDS,
    MAX_HEAD_BYTES,
    ConnectError,
    ConnectionClosed,
    DeadlineExceeded,
    HttpClient,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
)
from trellis.testing.fake_upstream import FakeUpstream

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback HTTP/1.1 server whose answers a test scripts, one function per request.

    ``requests`` holds every request received (head and body), ``connections`` the
    number of TCP connections accepted.
    """

    def __init__(self, *replies: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.tls = tls
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not writer.is_closing():
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
                await reply(request, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(body: bytes = b'{"ok":true}', status: int = 200, headers: str = "") -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode() + body
        )
        await writer.drain()

    return reply


async def test_keeps_the_connection_alive_and_frames_the_request() -> None:
    async with Server(answer()) as server:
        client = HttpClient(
            server.url + "/v1", headers={"Authorization": "Bearer k", "X-Extra": "1"}
        )
        for _ in range(3):
            status, headers, body = await client.request(
                "POST", "/chat/completions", b'{"a":1}', params={"alt": "sse x"}
            )
            assert (status, headers["content-length"], body) == (200, "11", b'{"ok":true}')
        await client.aclose()
    assert server.connections == 1
    head = server.requests[0].decode()
    port = server.url.rsplit(":", 1)[1]
    assert head.startswith("POST /v1/chat/completions?alt=sse+x HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n" in head
    assert "Authorization: Bearer k\r\n".lower() in head.lower()
    assert "content-length: 7\r\n" in head and head.endswith('\r\n\r\n{"a":1}')


async def test_path_is_percent_encoded() -> None:
    async with Server(answer()) as server:
        client = HttpClient(server.url)
        await client.request("GET", "/models/my model:generate")
        await client.aclose()
    assert server.requests[0].startswith(b"GET /models/my%20model:generate HTTP/1.1\r\n")


async def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"hello ", b"chunked ", b"world"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async def until_close(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nread me to the end")
        await writer.drain()
        writer.close()

    async with Server(chunked, until_close, answer(b"again")) as server:
        client = HttpClient(server.url)
        assert (await client.request("GET", "/"))[2] == b"hello chunked world"
        assert (await client.request("GET", "/"))[2] == b"read me to the end"
        assert (await client.request("GET", "/"))[2] == b"again"
        await client.aclose()
    assert server.connections == 2  # the close-delimited answer used up its connection


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
    ],
)
async def test_compressed_bodies_are_decoded(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    text = b'{"data":"' + b"embedding " * 2000 + b'"}'
    async with Server(answer(encode(text), headers=f"content-encoding: {encoding}\r\n")) as server:
        client = HttpClient(server.url)
        assert (await client.request("GET", "/"))[2] == text
        await client.aclose()
    assert b"accept-encoding: gzip, deflate\r\n" in server.requests[0]


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
async def test_answers_are_capped_after_decompression(encoding: str) -> None:
    """A small compressed body must not inflate into memory past the cap."""
    cap = 64 * 1024
    big = b"0" * (4 * 1024 * 1024)
    encode = {"identity": bytes, "gzip": gzip.compress, "deflate": zlib.compress}[encoding]
    headers = f"content-encoding: {encoding}\r\n"
    async with Server(
        answer(encode(b"1" * cap), headers=headers), answer(encode(big), headers=headers)
    ) as server:
        client = HttpClient(server.url, max_body_bytes=cap)
        assert (await client.request("GET", "/"))[2] == b"1" * cap  # exactly the cap: fine
        with pytest.raises(ResponseTooLarge, match=f"larger than {cap} bytes"):
            await client.request("GET", "/")
        async with client.stream("GET", "/") as response:
            received = 0
            with pytest.raises(ResponseTooLarge):
                async for piece in response.iter_chunks():
                    received += len(piece)
            assert received <= cap
        await client.aclose()


async def test_an_endless_head_is_cut_off() -> None:
    """The parser buffers a header line whole: a server that never ends one must not
    grow it without bound (bytes that keep coming defeat the idle timeout)."""

    async def endless(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nx-filler: ")
        for _ in range(2 * MAX_HEAD_BYTES // 65536 + 2):
            writer.write(b"a" * 65536)
            await writer.drain()

    async with Server(endless) as server:
        client = HttpClient(server.url)
        with pytest.raises(ProtocolError, match="head is over"):
            await client.request("GET", "/")
        await client.aclose()


async def test_unknown_content_encoding_is_a_protocol_error() -> None:
    async with Server(answer(b"??", headers="content-encoding: br\r\n")) as server:
        client = HttpClient(server.url)
        with pytest.raises(ProtocolError, match="br"):
            await client.request("GET", "/")
        await client.aclose()


async def test_a_pooled_connection_seen_closed_is_passed_over_before_writing() -> None:
    async def answer_then_drop(request: bytes, writer: asyncio.StreamWriter) -> None:
        await answer()(request, writer)
        await asyncio.sleep(0.05)
        writer.transport.abort()  # like a server closing an idle keep-alive connection

    async with Server(answer_then_drop) as server:
        client = HttpClient(server.url)
        await client.request("POST", "/", b"first")
        await asyncio.sleep(0.2)
        status, _, _ = await client.request("POST", "/", b"second")
        await client.aclose()
    assert status == 200
    assert [r.rsplit(b"\r\n", 1)[-1] for r in server.requests] == [b"first", b"second"]
    assert server.connections == 2


async def test_a_request_the_server_may_have_read_is_never_sent_again() -> None:
    """A reused connection reset after the request was written: the server may have
    read it and acted on it (a completion made and billed), so the client raises
    instead of quietly sending it again on a new connection."""

    async def read_then_reset(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with Server(answer(), read_then_reset, answer()) as server:
        client = HttpClient(server.url)
        await client.request("POST", "/", b"first")
        with pytest.raises(ConnectionClosed, match="not sent again"):
            await client.request("POST", "/", b"second")
        assert (await client.request("POST", "/", b"third"))[0] == 200
        await client.aclose()
    assert [r.rsplit(b"\r\n", 1)[-1] for r in server.requests] == [b"first", b"second", b"third"]


async def test_idle_connections_retire_before_the_usual_server_keepalive() -> None:
    """uvicorn (hence vLLM) drops connections idle for 5 s: ours go sooner."""
    assert KEEPALIVE_SECONDS < 5
    async with Server(answer()) as server:
        client = HttpClient(server.url, keepalive=0.3)
        await client.request("GET", "/")
        await client.request("GET", "/")
        assert server.connections == 1
        await asyncio.sleep(0.45)
        await client.request("GET", "/")
        assert server.connections == 2
        await client.aclose()


@pytest.mark.parametrize(
    ("header", "reused_after_0_2s", "reused_after_0_7s"),
    [
        ("keep-alive: timeout=1, max=100\r\n", True, False),  # kept for 0.5 s
        ("Keep-Alive: max=5, TIMEOUT=0\r\n", False, False),  # not kept at all
        ("keep-alive: max=5\r\n", True, True),  # no timeout named: ours applies
    ],
)
async def test_a_keep_alive_header_shortens_the_idle_time(
    header: str, reused_after_0_2s: bool, reused_after_0_7s: bool
) -> None:
    async with Server(answer(headers=header)) as server:
        client = HttpClient(server.url)
        await client.request("GET", "/")
        await asyncio.sleep(0.2)
        await client.request("GET", "/")
        assert server.connections == (1 if reused_after_0_2s else 2)
        before = server.connections
        await asyncio.sleep(0.7)
        await client.request("GET", "/")
        assert server.connections == (before if reused_after_0_7s else before + 1)
        await client.aclose()


async def test_a_connection_cut_mid_answer_fails_and_is_not_retried() -> None:
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async with Server(cut, answer()) as server:
        client = HttpClient(server.url)
        with pytest.raises(ConnectionClosed):
            await client.request("POST", "/", b"x")
        assert (await client.request("POST", "/", b"y"))[0] == 200
        await client.aclose()
    assert len(server.requests) == 2 and server.connections == 2


async def test_read_timeout_is_an_idle_timeout() -> None:
    async def stall(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    async def trickle(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
        for byte in b"abcdef":  # 0.6 s in all, never 0.3 s without a byte
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()

    async with Server(stall) as server:
        client = HttpClient(server.url, read_timeout=0.3)
        with pytest.raises(ReadTimeout):
            await client.request("GET", "/")
        assert isinstance(ReadTimeout("x"), TimeoutError)
        await client.aclose()
    async with Server(trickle) as server:
        client = HttpClient(server.url, read_timeout=0.3)
        assert (await client.request("GET", "/"))[2] == b"abcdef"
        await client.aclose()


async def trickle_six_bytes(request: bytes, writer: asyncio.StreamWriter) -> None:
    """An answer whose body comes a byte every 0.1 s: 0.6 s in all."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
    for byte in b"abcdef":
        await asyncio.sleep(0.1)
        writer.write(bytes([byte]))
        await writer.drain()


async def test_a_deadline_bounds_the_whole_exchange() -> None:
    """Bytes that keep coming satisfy the idle timeout but not a deadline; the wait
    for a free connection counts against it too."""
    async with Server(trickle_six_bytes) as server:
        client = HttpClient(server.url, read_timeout=0.3, max_connections=1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="whole answer"):
            await client.request("GET", "/", deadline=started + 0.25)
        assert 0.2 <= loop.time() - started < 0.5
        assert client.connections == 0  # a half-read answer: the connection is dropped
        assert isinstance(DeadlineExceeded("x"), TimeoutError)

        busy = asyncio.create_task(client.request("GET", "/"))  # takes the only slot
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(DeadlineExceeded, match="free connection"):
            await client.request("GET", "/", deadline=started + 0.1)
        assert loop.time() - started < 0.4
        assert (await busy)[2] == b"abcdef"
        assert (await client.request("GET", "/", deadline=loop.time() + 5))[2] == b"abcdef"
        await client.aclose()


async def test_a_kept_alive_connection_keeps_one_timer_across_exchanges() -> None:
    """The timer one exchange armed serves the next ones (re-armed only when it fires
    early), yet a later exchange that stalls still times out on time, not early."""

    async def stall(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    loop = asyncio.get_running_loop()
    async with Server(answer(), answer(), answer(), answer(), stall) as server:
        client = HttpClient(server.url, read_timeout=0.4)
        await client.request("GET", "/", deadline=loop.time() + 10)
        (connection,) = client._idle
        timer = connection._timer
        assert timer is not None
        for _ in range(2):
            await client.request("GET", "/", deadline=loop.time() + 10)
        assert connection._timer is timer and server.connections == 1
        await client.request("GET", "/", deadline=loop.time() + 0.2)  # due sooner: re-armed
        assert connection._timer is not timer and connection._timer is not None
        assert timer.cancelled()
        started = loop.time()  # the new timer fires 0.2 s into this exchange, which is not due
        with pytest.raises(ReadTimeout):
            await client.request("GET", "/")
        assert 0.35 <= loop.time() - started < 1.0
        await client.aclose()


async def test_connection_refused_is_a_connect_error() -> None:
    async with Server(answer()) as server:
        url = server.url
    await asyncio.sleep(0.05)
    client = HttpClient(url)
    with pytest.raises(ConnectError):
        await client.request("GET", "/")


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async with Server(garbage) as server:
        client = HttpClient(server.url)
        with pytest.raises(ProtocolError):
            await client.request("GET", "/")
        await client.aclose()


async def test_interim_answers_are_skipped() -> None:
    async def continue_first(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await answer(b"final")(request, writer)

    async with Server(continue_first) as server:
        client = HttpClient(server.url)
        assert await client.request("POST", "/", b"x") == (200, {"content-length": "5"}, b"final")
        await client.aclose()


async def test_streamed_bodies_arrive_in_pieces_and_large_ones_whole() -> None:
    released = asyncio.Event()
    big = bytes(range(256)) * 8192  # 2 MiB: past the reader's high-water mark

    async def slow_stream(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await released.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")

    async with Server(slow_stream, answer(big)) as server:
        client = HttpClient(server.url)
        async with client.stream("POST", "/", b"{}") as response:
            assert response.status == 200
            pieces = response.iter_chunks()
            assert await anext(pieces) == b"first"
            released.set()
            assert [piece async for piece in pieces] == [b"last"]
        async with client.stream("GET", "/") as response:
            received = bytearray()
            async for piece in response.iter_chunks():
                received += piece
                await asyncio.sleep(0)  # a slow reader: the socket is paused meanwhile
        assert bytes(received) == big
        await client.aclose()
    assert server.connections == 1


async def test_abandoning_an_answer_discards_its_connection() -> None:
    async def never(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with Server(never, answer()) as server:
        client = HttpClient(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.request("GET", "/")
        assert client.connections == 0
        assert (await client.request("GET", "/"))[0] == 200
        await client.aclose()
        assert client.connections == 0
    assert server.connections == 2


def test_bad_urls_and_headers_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpClient("ftp://example.test")
    with pytest.raises(ValueError, match="line break"):
        HttpClient("http://127.0.0.1", headers={"x-key": "a\r\nx-injected: 1"})
    with pytest.raises(ValueError, match="header name"):
        HttpClient("http://127.0.0.1", headers={"bad name": "1"})


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client
    context that trusts it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_https(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls_pair
    async with Server(answer(b"secret"), tls=server_tls) as server:
        client = HttpClient(server.url, ssl_context=client_tls)
        assert (await client.request("GET", "/"))[2] == b"secret"
        assert (await client.request("GET", "/"))[2] == b"secret"
        await client.aclose()
        untrusting = HttpClient(server.url)  # the system's CAs do not know this certificate
        with pytest.raises(ConnectError, match="CERTIFICATE"):
            await untrusting.request("GET", "/")
    assert server.connections == 1  # the refused handshake never reached the server's handler


async def test_bytes_past_the_answer_retire_the_connection() -> None:
    async def too_long(request: bytes, writer: asyncio.StreamWriter) -> None:
        body = b"12345"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body + b"HTTP/1.1 200 OK\r\n"
        )
        await writer.drain()

    async with Server(too_long, answer(b"next")) as server:
        client = HttpClient(server.url)
        status, headers, body = await client.request("GET", "/")
        assert (status, headers, body) == (200, {"content-length": "5"}, b"12345")
        assert (await client.request("GET", "/"))[2] == b"next"
        await client.aclose()
    assert server.connections == 2


async def test_connections_are_capped_and_callers_wait_their_turn() -> None:
    in_flight, peak = 0, 0

    async def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        await answer()(request, writer)

    async with Server(slow) as server:
        client = HttpClient(server.url, max_connections=2)
        results = await asyncio.gather(*(client.request("GET", "/") for _ in range(6)))
        assert [status for status, _, _ in results] == [200] * 6
        refused = HttpClient("http://127.0.0.1:1", max_connections=1)
        for _ in range(2):  # a failed connect gives its slot back: the second does not hang
            with pytest.raises(ConnectError):
                async with asyncio.timeout(2):
                    await refused.request("GET", "/")
        await client.aclose()
    assert peak == 2 and server.connections == 2


def test_a_client_outlives_the_event_loop_that_pooled_its_connections() -> None:
    """``asyncio.run`` twice with one client (a CLI command, a test): the second loop
    must not be handed a socket only the first, now closed, loop listens to."""
    with FakeUpstream("openai") as upstream:  # serves from its own thread, across both loops
        client = HttpClient(upstream.base_url)

        async def call() -> int:
            async with asyncio.timeout(2):
                return (await client.request("GET", "/models"))[0]

        assert asyncio.run(call()) == 200
        assert asyncio.run(call()) == 200
