"""The provider contract and the HTTP plumbing every hosted provider shares.

A provider turns OpenAI-shaped requests into one vendor's API calls and back.
Subclasses implement the wire format only; connection, auth headers, timeouts,
server-sent-event parsing and error mapping live here once.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from trellis.errors import (
    InvalidRequestError,
    ProviderHTTPError,
    UnsupportedFeatureError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from trellis.http_proxies import proxy_for
from trellis.inference.contract import EmbeddingResult, Provider
from trellis.inference.providers.transport import (
    ConnectError,
    DeadlineExceeded,
    HttpClient,
    ResponseTooLarge,
    TransportError,
)
from trellis.schema import (
    ChatChunk,
    ChunkChoice,
    ChunkDelta,
    Usage,
    new_completion_id,
)
from trellis.settings import Deployment

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "Provider",
    "HttpProvider",
    "EmbeddingResult",
    "SSEEvent",
    "sse_events",
    "parse_retry_after",
    "ChunkBuilder",
    "content_text",
    "function_tools",
    "tool_arguments",
    "data_url",
]


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as JSON; one the encoder refuses (nested past its 254 levels, or a
    value that is not JSON) is the caller's error, a 400, never a deployment failure.

    The HTTP edge already refuses such bodies (``max_json_depth``); this covers library
    callers of the gateway, at no cost unless encoding fails.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(
            f"The request cannot be encoded as JSON: {exc}", code="invalid_request_body"
        ) from exc


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (delta-seconds or HTTP date).

    ``headers`` must look names up case-insensitively (aiohttp's and httpx's headers do).
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_SSE_NEWLINE = re.compile(rb"\r\n|\r|\n")


async def _sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines of an event stream, split on CRLF, LF or CR only, as the SSE spec says.

    Splitting like ``str.splitlines`` would also break on U+0085, U+2028 and
    U+2029: characters that appear raw inside JSON strings, so a model reply
    containing one would cut its event in half.
    """
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        # A trailing CR may be the first half of a CRLF split across chunks: keep it back.
        held = b"\r" if buffer.endswith(b"\r") else b""
        *lines, rest = _SSE_NEWLINE.split(buffer[: len(buffer) - len(held)])
        buffer = rest + held
        for line in lines:
            yield line.decode("utf-8", "replace")
    if buffer:
        *lines, rest = _SSE_NEWLINE.split(buffer)
        for line in [*lines, rest] if rest else lines:
            yield line.decode("utf-8", "replace")


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Server-sent events from raw body chunks, however the chunks cut the stream."""
    event: str | None = None
    data: list[str] = []
    async for line in _sse_lines(chunks):
        if line == "":
            if data:
                yield SSEEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield SSEEvent(event, "\n".join(data))


@functools.cache
def _tls_context(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """One TLS context per set of files, shared by the deployments that name them:
    building one loads a CA bundle (~50 ms). ``ca_file`` replaces the system's CAs."""
    context = ssl.create_default_context(cafile=ca_file)
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    return context


class HttpProvider(Provider):
    """A provider reached over HTTP with JSON bodies and SSE streams.

    The client is ``transport.HttpClient``, one keep-alive pool per deployment: on the
    gateway's hot path it costs about a fifth of the CPU of aiohttp's client, which
    itself costs about a fifth of httpx's (docs/architecture.md).
    """

    default_base_url: ClassVar[str] = ""
    #: Every call goes through ``_send`` (or ``post_sse``, which the router bounds itself).
    honours_deadline: ClassVar[bool] = True

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        base_url = (deployment.base_url or self.default_base_url).rstrip("/")
        if not base_url:
            raise UpstreamError(f"{deployment.label} needs a base_url", retryable=False)
        self.base_url = base_url
        api_key = deployment.api_key()
        self.headers = {
            "content-type": "application/json",
            # A key read from a file or .env often ends in a newline; no key has spaces.
            **self.auth_headers(api_key.strip() if api_key else api_key),
            **deployment.headers,
        }
        self._client: HttpClient | None = None
        self._client = self.client  # a bad base URL or header fails at startup, not per call

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            deployment = self.deployment
            try:
                self._client = HttpClient(
                    self.base_url,
                    headers=self.headers,
                    connect_timeout=deployment.connect_timeout,
                    read_timeout=deployment.timeout,
                    ssl_context=self._tls() if self.base_url.startswith("https:") else None,
                    keepalive=deployment.keepalive,
                    max_body_bytes=deployment.max_response_bytes,
                    proxy=proxy_for(self.base_url),
                )
            except ValueError as exc:
                raise UpstreamError(f"{deployment.label}: {exc}", retryable=False) from None
        return self._client

    def _tls(self) -> ssl.SSLContext:
        deployment = self.deployment
        try:
            return _tls_context(deployment.ca_file, deployment.client_cert, deployment.client_key)
        except (OSError, ssl.SSLError) as exc:  # a missing file, or not PEM
            raise UpstreamError(
                f"{deployment.label}: cannot load its TLS files (ca_file, client_cert, "
                f"client_key): {exc}",
                retryable=False,
            ) from None

    # --- vendor hooks -------------------------------------------------------

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def error_message(self, body: Any, status: int) -> str:
        """The human message inside a vendor's error body."""
        if isinstance(body, dict):
            error = body.get("error", body)
            if isinstance(error, dict):
                message = error.get("message") or error.get("msg")
                if message:
                    return str(message)
            elif isinstance(error, str):
                return error
            if body.get("message"):
                return str(body["message"])
        if isinstance(body, str) and body.strip():
            return body.strip()[:500]
        return f"HTTP {status}"

    # --- shared plumbing ----------------------------------------------------

    async def post_json(
        self,
        path: str,
        body: dict[str, Any],
        *,
        params: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> Any:
        return self._decode(await self._send("POST", path, encode_body(body), params, deadline))

    async def post_bytes(
        self, path: str, body: dict[str, Any], *, deadline: float | None = None
    ) -> bytes:
        """POST ``body``; the answer's bytes, failures raised as ``UpstreamError``."""
        return await self._send("POST", path, encode_body(body), None, deadline)

    async def get_json(self, path: str) -> Any:
        return self._decode(await self._send("GET", path, None, None))

    def parse_model(self, content: bytes, model: type[M], what: str) -> M:
        """``content`` validated into ``model``; malformed JSON or a wrong shape raise
        ``UpstreamProtocolError``."""
        try:  # not ``expecting``: a context manager costs more than the validation saves
            return model.model_validate_json(content)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                raise self._malformed(content) from exc
            raise self.unexpected(what, exc) from exc

    async def _send(
        self,
        method: str,
        path: str,
        data: bytes | None,
        params: dict[str, str] | None,
        deadline: float | None = None,
    ) -> bytes:
        """The body of a successful answer; failures raised as ``UpstreamError``, except
        a passed ``deadline``: that is the caller's ``TimeoutError`` to judge."""
        try:
            status, headers, content = await self.client.request(
                method, path, data, params=params, deadline=deadline
            )
        except DeadlineExceeded:
            raise
        except (TransportError, OSError) as exc:  # TimeoutError is an OSError
            raise self._map_transport_error(exc) from exc
        if status >= 300:
            self._raise_for_status(status, headers, content)
        return content

    async def post_sse(
        self, path: str, body: dict[str, Any], *, params: dict[str, str] | None = None
    ) -> AsyncIterator[SSEEvent]:
        """POST and yield server-sent events; errors before the first event raise as usual."""
        try:
            async with self.client.stream(
                "POST", path, encode_body(body), params=params
            ) as response:
                if response.status >= 300:
                    self._raise_for_status(response.status, response.headers, await response.read())
                async for event in sse_events(response.iter_chunks()):
                    yield event
        except (TransportError, OSError) as exc:
            raise self._map_transport_error(exc) from exc

    def decode_event(self, data: str) -> Any:
        return self._decode(data.encode())

    def _decode(self, content: bytes) -> Any:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise self._malformed(content) from exc

    def _malformed(self, content: bytes) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"{self.deployment.label} returned malformed JSON: {content[:200]!r}",
            provider=self.system,
        )

    def _raise_for_status(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        if status < 400:
            self._raise_redirect(status, headers)
        try:
            body: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = content.decode("utf-8", "replace")
        message = self.error_message(body, status)
        raise ProviderHTTPError(
            f"{self.system} error {status}: {message}",
            upstream_status=status,
            provider=self.system,
            retry_after=parse_retry_after(headers),
            body=body,
        )

    def _raise_redirect(self, status: int, headers: Mapping[str, str]) -> None:
        """A 3xx: provider APIs never redirect a correct base URL, and following one would
        re-send a prompt (and its key) elsewhere. Not retried, and not the deployment's
        health (the breaker does not count it): its ``base_url`` needs fixing."""
        location = headers.get("location")
        where = f" to {location}" if location else " without a Location"
        raise ProviderHTTPError(
            f"{self.deployment.label} answered HTTP {status}, a redirect{where}; Trellis does "
            "not follow redirects: set the deployment's base_url to the address that answers",
            upstream_status=status,
            provider=self.system,
            retryable=False,
            code="upstream_redirect",
        )

    def _map_transport_error(self, exc: BaseException) -> UpstreamError:
        label = self.deployment.label
        if isinstance(exc, ResponseTooLarge):
            return UpstreamProtocolError(
                f"{label} sent too large an answer: {exc} (the deployment's max_response_bytes)",
                provider=self.system,
                retryable=False,
                code="upstream_response_too_large",
            )
        if isinstance(exc, TimeoutError):
            return UpstreamTimeoutError(
                f"{label} timed out ({type(exc).__name__}: {exc})", provider=self.system
            )
        if isinstance(exc, ConnectError):
            return UpstreamConnectionError(
                f"cannot connect to {label} ({exc})", provider=self.system
            )
        return UpstreamConnectionError(
            f"connection to {label} failed: {type(exc).__name__}: {exc}", provider=self.system
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --- conversion helpers shared by the non-OpenAI adapters -----------------------


class ChunkBuilder:
    """Makes the OpenAI chunks of one stream: one id and model throughout, and
    ``delta.role = "assistant"`` on each choice's first chunk, as OpenAI sends them."""

    def __init__(self, model: str, chunk_id: str | None = None) -> None:
        self.model = model
        self.id = chunk_id or new_completion_id()
        self._started: set[int] = set()

    def delta(
        self,
        *,
        content: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
        index: int = 0,
    ) -> ChatChunk:
        delta = ChunkDelta(content=content, tool_calls=tool_calls)
        if index not in self._started:
            self._started.add(index)
            delta.role = "assistant"
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)
        return ChatChunk(id=self.id, model=self.model, choices=[choice])

    def usage(self, usage: Usage) -> ChatChunk:
        """The closing chunk: no choices, only usage (OpenAI's ``include_usage`` shape)."""
        return ChatChunk(id=self.id, model=self.model, choices=[], usage=usage)


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of an OpenAI message content (string or parts); non-text parts add nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The ``function`` objects (name, description, parameters) of OpenAI tool definitions."""
    functions = []
    for tool in tools or []:
        if tool.get("type", "function") != "function" or "function" not in tool:
            raise UnsupportedFeatureError(f"tool type {tool.get('type')!r} is not supported")
        functions.append(tool["function"])
    return functions


def tool_arguments(arguments: str) -> dict[str, Any]:
    """Parse the JSON-string arguments of an OpenAI tool call for vendors that want an object."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise InvalidRequestError(
            f"tool call arguments are not valid JSON: {arguments[:100]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("tool call arguments must be a JSON object")
    return value


def data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64_data)`` of a ``data:`` URL, or None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, _, payload = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64":
        raise InvalidRequestError("image data URLs must be base64-encoded")
    return media_type or "application/octet-stream", payload
