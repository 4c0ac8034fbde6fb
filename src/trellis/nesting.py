"""One nesting limit for the JSON values that come in: request bodies and stored values.

Every JSON encoder and decoder on a value's way has its own depth limit: orjson
encodes at most 254 levels (the cache key, every response), the standard library's
``json`` stops near Python's 1000-frame recursion limit (stored metadata), and a
provider may recurse once per level (llama.cpp's schema-to-grammar conversion). A
value deeper than the smallest of them is accepted by one layer and breaks the next:
a 500, or a stored value no listing can encode again. Checking one limit where values
enter (``Settings.max_json_depth``: the HTTP edge, and the library calls that store
values) keeps every later step inside all of them.

Depth counts objects and arrays: ``1`` and ``"a"`` have depth 0, ``{}`` and ``[]``
depth 1, ``{"a": [1]}`` depth 2.
"""

from __future__ import annotations

from typing import Any

from trellis.errors import InvalidRequestError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_DEPTH_CEILING",
    "exceeds_depth",
    "check_depth",
    "check_body",
    "shallow_by_count",
    "too_deep",
]

#: The default of ``Settings.max_json_depth``: far deeper than any real request
#: (a tool's JSON schema nested 25 properties deep is about 55 levels of body).
DEFAULT_MAX_DEPTH = 64

#: The highest limit the setting accepts: what is stored or answered gets wrapped in a
#: few more levels (a listing, a cache key, a trace) and must stay under orjson's 254.
MAX_DEPTH_CEILING = 128

_CONTAINERS = (dict, list, tuple)
#: The exact types of JSON's scalars: a long array holding only these is skipped by one
#: C-level pass instead of a Python-level look at each item.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def exceeds_depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep.

    Iterative, so a value far deeper than Python's recursion limit is measured too;
    it stops at the first container past the limit. Its cost follows the number of
    items, not bytes: about a microsecond for a chat request.
    """
    if not isinstance(value, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        items = node.values() if isinstance(node, dict) else node
        if len(items) > 8 and _SCALARS.issuperset(map(type, items)):
            continue
        for child in items:
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


#: Bodies up to this size are first checked by counting brackets (see ``shallow_by_count``).
_COUNT_MAX = 16_384


def shallow_by_count(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` provably nests at most ``limit`` levels because it has
    no more opening brackets than that (brackets inside strings count too, so this
    errs towards walking). Two C-level counts over a typical chat body cost less than
    walking its parsed value; longer bodies skip the count and are walked."""
    return len(raw) <= _COUNT_MAX and raw.count(b"{") + raw.count(b"[") <= limit


def check_depth(value: Any, limit: int, *, what: str, param: str | None = None) -> None:
    """Raise a 400 (``nesting_too_deep``) when ``value`` nests deeper than ``limit``."""
    if exceeds_depth(value, limit):
        raise too_deep(what, limit, param)


def check_body(data: Any, limit: int) -> None:
    """``check_depth`` for a parsed request body, naming the top-level field too deep.

    Walks the parsed value rather than scanning the bytes: ``bytes.count`` runs at
    about a nanosecond per byte (microseconds for a long prompt), while the walk
    looks at each object and array once (about a microsecond for a chat request).
    """
    if not exceeds_depth(data, limit):
        return
    param = None
    if isinstance(data, dict):
        param = next((str(k) for k, v in data.items() if exceeds_depth(v, limit - 1)), None)
    raise too_deep("The request body", limit, param)


def too_deep(what: str, limit: int, param: str | None = None) -> InvalidRequestError:
    """The 400 for ``what`` nesting past ``limit`` (``nesting_too_deep``)."""
    return InvalidRequestError(
        f"{what} nests objects and arrays more than {limit} levels deep; "
        f"at most {limit} levels are accepted (setting max_json_depth).",
        code="nesting_too_deep",
        param=param,
    )
