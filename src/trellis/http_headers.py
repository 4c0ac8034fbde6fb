"""The one rule for HTTP header names and values Trellis sends upstream.

Settings check deployment headers with it when they are read; the provider client
checks every header it is built with (API keys from the environment included, which
settings never see). A line break or NUL would let a value inject headers into every
request.
"""

from __future__ import annotations

__all__ = ["check_header"]


def check_header(name: str, value: str) -> None:
    """Raise ``ValueError`` unless ``name: value`` is one well-formed header line."""
    for part in (name, value):
        if "\r" in part or "\n" in part or "\0" in part:
            raise ValueError(f"header {name!r} contains a line break or NUL")
    if not name or any(c in name for c in " \t:"):
        raise ValueError(f"invalid header name {name!r}")
