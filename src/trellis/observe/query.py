"""Parsing of the values people type into trace and stats queries: durations, times, cursors.

Shared by the HTTP routes and the CLI so both accept the same spellings, and every
bad value becomes an :class:`~trellis.errors.InvalidRequestError` (HTTP 400) naming
the parameter, never a server error.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from trellis.durations import MAX_DURATION_SECONDS, MAX_TIME_NS, duration_seconds, is_duration
from trellis.errors import InvalidRequestError

__all__ = [
    "TraceQuery",
    "TRACE_STATUSES",
    "GUARD_FILTERS",
    "check_time_ns",
    "parse_duration",
    "parse_time",
    "encode_cursor",
    "decode_cursor",
]

#: Statuses a trace can have (the root span's status).
TRACE_STATUSES = frozenset({"ok", "error"})
#: What a guard did to a request -> the trace summary attribute that records it: PII found
#: (the privacy policy), the output checks' hits, the input guard's prompt-injection flag.
GUARD_FILTERS: dict[str, tuple[str, ...]] = {
    "pii": ("pii_kinds",),
    "output": ("guard_output",),
    "input": ("guard_flagged",),
    "any": ("pii_kinds", "guard_output", "guard_flagged"),
}

_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_MAX_TEXT = 500
#: Stands for a time no query may use (see :func:`check_time_ns`).
_OUT_OF_RANGE = -1


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """Filters over stored traces; every field is optional and they combine with AND."""

    since_ns: int | None = None
    until_ns: int | None = None
    model: str | None = None
    key_id: str | None = None
    status: str | None = None
    kind: str | None = None
    min_latency_ms: float | None = None
    #: True: the trace or any of its spans failed (a retried attempt counts); False: none did.
    has_error: bool | None = None
    #: Case-insensitive text searched in the root span's attributes (prompt, response, error).
    text: str | None = None
    #: Only this project's traces (None: every project's).
    project_id: str | None = None
    #: Only traces a guard acted on (see ``GUARD_FILTERS``): ``pii``, ``output``, ``input``
    #: or ``any``.
    guard: str | None = None

    def __post_init__(self) -> None:
        if self.guard is not None and self.guard not in GUARD_FILTERS:
            raise InvalidRequestError(
                f"guard must be one of {', '.join(GUARD_FILTERS)}, not {self.guard!r}",
                param="guard",
                code="invalid_value",
            )
        check_time_ns(self.since_ns, "since")
        check_time_ns(self.until_ns, "until")
        if self.status is not None and self.status not in TRACE_STATUSES:
            raise InvalidRequestError(
                f"status must be one of {', '.join(sorted(TRACE_STATUSES))}, not {self.status!r}",
                param="status",
                code="invalid_value",
            )
        if self.min_latency_ms is not None and not self.min_latency_ms >= 0:
            raise InvalidRequestError(
                "min_latency_ms must be a number >= 0", param="min_latency_ms", code="invalid_value"
            )
        if self.text is not None and not 0 < len(self.text) <= _MAX_TEXT:
            raise InvalidRequestError(
                f"q must be 1 to {_MAX_TEXT} characters", param="q", code="invalid_value"
            )
        if (
            self.since_ns is not None
            and self.until_ns is not None
            and self.since_ns >= self.until_ns
        ):
            raise InvalidRequestError(
                "since must be earlier than until", param="since", code="invalid_value"
            )


def check_time_ns(value: int | None, param: str) -> None:
    """400 unless ``value`` (epoch nanoseconds) is None or a storable time (1970 to 2262)."""
    if value is not None and not 0 <= value <= MAX_TIME_NS:
        raise InvalidRequestError(
            f"{param} must be a time between 1970-01-01 and 2262-04-11 (UTC)",
            param=param,
            code="invalid_value",
        )


def parse_duration(value: str, param: str) -> float:
    """Seconds in ``value`` such as ``90s``, ``5m``, ``1h``, ``7d`` (also ``ms`` and ``w``),
    longer than 0 and at most 100 years (:data:`trellis.durations.MAX_DURATION_SECONDS`)."""
    try:
        return duration_seconds(value, maximum=MAX_DURATION_SECONDS)
    except ValueError as exc:
        raise InvalidRequestError(f"{param} {exc}", param=param, code="invalid_value") from None


def parse_time(value: str, param: str, now: float | None = None) -> int:
    """Epoch nanoseconds from a relative duration (``1h`` = one hour ago), Unix seconds
    (``1718000000``) or ISO 8601 (``2024-06-10T08:00:00Z``; no zone means UTC).

    Absolute times must lie between 1970 and 2262 (what 64-bit nanoseconds hold); a
    duration reaching back before 1970 means "from the beginning" (epoch 0).
    """
    now = time.time() if now is None else now
    text = (value or "").strip()
    if is_duration(text):
        return max(0, int((now - parse_duration(text, param)) * 1e9))
    if _NUMBER.match(text):
        seconds = float(text)  # inf for hundreds of digits: refused below, never int()ed
        ns = int(seconds * 1e9) if math.isfinite(seconds) else _OUT_OF_RANGE
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequestError(
                f"{param} must be a duration ago (1h), Unix seconds or an ISO 8601 time, "
                f"not {value!r}",
                param=param,
                code="invalid_value",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            ns = int(moment.timestamp() * 1e9)
        except (OverflowError, ValueError):  # year 1 with a positive offset, and the like
            ns = _OUT_OF_RANGE
    check_time_ns(ns, param)
    return ns


def encode_cursor(start_ns: int, trace_id: str) -> str:
    """An opaque token for the page after the trace ``(start_ns, trace_id)``."""
    return base64.urlsafe_b64encode(f"{start_ns}:{trace_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(start_ns, trace_id)`` from :func:`encode_cursor`; 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        start, _, trace_id = raw.partition(":")
        start_ns = int(start)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        start_ns, trace_id = -1, ""
    if not 0 <= start_ns <= MAX_TIME_NS or not _ID.match(trace_id):
        raise InvalidRequestError(
            "cursor is not valid; pass the next_cursor of a previous page",
            param="cursor",
            code="invalid_cursor",
        )
    return start_ns, trace_id
