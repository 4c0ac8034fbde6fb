"""The one grammar for durations people type (``500ms``, ``30s``, ``5m``, ``1h``, ``7d``, ``2w``)
and the range of times Trellis can store.

Settings (alert windows), the trace/stats queries and the CLI all read durations with
it. Times are stored as signed 64-bit nanoseconds since the Unix epoch, so every
duration and time is checked against that range here: an unchecked ``99999999999d``
or year 9999 used to overflow in the database and answer 500.
"""

from __future__ import annotations

import re

__all__ = [
    "DURATION_PATTERN",
    "MAX_DURATION_SECONDS",
    "MAX_TIME_NS",
    "duration_seconds",
    "is_duration",
]

#: A duration as people type it; the unit is required (``5`` alone is ambiguous).
DURATION_PATTERN = r"^\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

#: The longest duration accepted anywhere (100 years): more than any trace store holds,
#: and far enough inside the 64-bit nanosecond range that ``now - duration`` stays in it.
MAX_DURATION_SECONDS = 36500 * 86400.0
#: The latest storable time, 2262-04-11T23:47:16Z (``2**63 - 1`` nanoseconds).
MAX_TIME_NS = 2**63 - 1


def is_duration(text: str) -> bool:
    """Whether ``text`` is spelled as a duration (it may still be out of range)."""
    return _DURATION.match(text or "") is not None


def duration_seconds(
    text: str, *, minimum: float = 0.0, maximum: float = MAX_DURATION_SECONDS
) -> float:
    """Seconds in ``text``, or ``ValueError`` with a message for people (the caller adds the
    parameter's name): not a duration, not longer than 0, under ``minimum`` or over
    ``maximum``."""
    match = _DURATION.match(text or "")
    if match is None:
        raise ValueError(f"must be a duration such as 30s, 5m, 1h or 7d, not {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be longer than 0")
    if seconds < minimum:
        raise ValueError(f"must be at least {_spell(minimum)}, not {text.strip()}")
    if not seconds <= maximum:  # also refuses inf, from hundreds of digits
        raise ValueError(f"must be at most {_spell(maximum)}, not {text.strip()}")
    return seconds


def _spell(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it evenly (``90d``, ``1s``, ``500ms``)."""
    for unit in ("w", "d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds * 1000:g}ms"
