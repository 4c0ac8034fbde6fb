"""The shared HTTP plumbing: SSE parsing, Retry-After parsing, conversion helpers."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.errors import InvalidRequestError
from trellis.inference.providers.base import (
    SSEEvent,
    content_text,
    data_url,
    parse_retry_after,
    sse_events,
    tool_arguments,
)

# --- Retry-After ----------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": str(seconds)})) == seconds


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_retry_after_ms_wins(millis: float) -> None:
    headers = httpx.Headers({"retry-after-ms": repr(millis), "retry-after": "999"})
    assert parse_retry_after(headers) == pytest.approx(millis / 1000)


@given(st.integers(min_value=5, max_value=10**5))
def test_retry_after_http_date(seconds_ahead: int) -> None:
    when = email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)
    parsed = parse_retry_after(httpx.Headers({"retry-after": when}))
    assert parsed is not None
    assert seconds_ahead - 2 <= parsed <= seconds_ahead + 1


@given(st.text(max_size=30))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    try:
        headers = httpx.Headers({"retry-after": value})
    except (UnicodeEncodeError, ValueError):
        return  # not a legal header value; httpx refuses it before we see it
    parsed = parse_retry_after(headers)
    assert parsed is None or parsed >= 0


def test_retry_after_absent_or_negative() -> None:
    assert parse_retry_after(httpx.Headers()) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "-3"})) == 0.0


# --- server-sent events -----------------------------------------------------------------


_line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)
_events = st.lists(
    st.tuples(
        st.one_of(st.none(), st.from_regex(r"[a-z_\-]{1,12}", fullmatch=True)),
        st.lists(_line, min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=6,
)


def _encode(events: list[tuple[str | None, list[str]]], newline: str, comments: bool) -> bytes:
    out = []
    for name, lines in events:
        if comments:
            out.append(": keep-alive" + newline)
        if name is not None:
            out.append(f"event: {name}{newline}")
        out.extend(f"data: {line}{newline}" for line in lines)
        out.append(newline)
    return "".join(out).encode()


async def _parse(payload: bytes, cuts: list[int]) -> list[SSEEvent]:
    async def body() -> AsyncIterator[bytes]:
        start = 0
        for cut in sorted({min(c, len(payload)) for c in cuts}) + [len(payload)]:
            yield payload[start:cut]
            start = cut

    return [event async for event in sse_events(body())]


@settings(max_examples=60, deadline=None)
@given(
    events=_events,
    newline=st.sampled_from(["\n", "\r\n"]),
    comments=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_sse_events_survive_any_framing(
    events: list[tuple[str | None, list[str]]], newline: str, comments: bool, cuts: list[int]
) -> None:
    parsed = asyncio.run(_parse(_encode(events, newline, comments), cuts))
    assert [(event.event, event.data) for event in parsed] == [
        (name, "\n".join(lines)) for name, lines in events
    ]


async def test_sse_final_event_without_blank_line() -> None:
    parsed = await _parse(b"data: one\n\ndata: two", [])
    assert [event.data for event in parsed] == ["one", "two"]


# --- conversion helpers -------------------------------------------------------------------


def test_content_text() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "b"},
    ]
    assert content_text(parts) == "ab"
    assert content_text(None) == ""
    assert content_text("s") == "s"


def test_tool_arguments() -> None:
    assert tool_arguments('{"a": 1}') == {"a": 1}
    assert tool_arguments("  ") == {}
    with pytest.raises(InvalidRequestError):
        tool_arguments("{broken")
    with pytest.raises(InvalidRequestError):
        tool_arguments("[1, 2]")


def test_data_url() -> None:
    assert data_url("data:image/png;base64,AAA=") == ("image/png", "AAA=")
    assert data_url("https://example.com/x.png") is None
    with pytest.raises(InvalidRequestError):
        data_url("data:text/plain,hello")
