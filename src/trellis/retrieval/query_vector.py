"""One vector for a search query of any length the embedder's window cannot hold at once.

A query of up to ``max_tokens`` word pieces is embedded as it is. A longer one (CISI-style
information needs run to ~380 MiniLM word pieces against a 256-piece window) is cut at
word boundaries into the fewest windows that fit, of balanced sizes, and the query's
vector is the mean of the windows' unit vectors weighted by their word pieces, normalised
again. Every word of the query counts once and equally; embedding only the first window
would drop the rest of the question, which is where a long query often states what it
is really after (measured in ``benchmarks/long_queries.py``). Nothing is truncated
silently, and queries that fit are embedded exactly as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from trellis.errors import InvalidRequestError
from trellis.retrieval.chunking import SpanCounter, TokenCounter

__all__ = ["MAX_QUERY_TOKENS", "QueryEmbedder", "embed_query", "query_windows"]

#: The longest query the vector side reads (about 1,500 English words): a bound on the
#: work one request can ask for, far beyond any real question (8 MiniLM windows).
MAX_QUERY_TOKENS = 2048
#: A word piece spans at least one character, so a longer text cannot fit: refused
#: before tokenizing it.
_MAX_QUERY_CHARS = MAX_QUERY_TOKENS * 64
_WORD = re.compile(r"\S+")
_SLACK = 16


class QueryEmbedder(TokenCounter, Protocol):
    """What query embedding needs: counting word pieces and embedding texts."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _too_long(pieces: int | None = None) -> InvalidRequestError:
    size = "" if pieces is None else f" ({pieces} word pieces)"
    return InvalidRequestError(
        f"query is too long{size} for vector search: at most {MAX_QUERY_TOKENS} word pieces "
        "are embedded; use mode=keyword to search with all of it",
        param="query",
        code="query_too_long",
    )


def _units(counter: TokenCounter, text: str, budget: int) -> list[tuple[int, int, int]]:
    """``(start, end, word pieces)`` of each whitespace-separated word of ``text``; a word
    longer than ``budget`` (a long URL, unspaced CJK text) is split between its pieces."""
    if isinstance(counter, SpanCounter):
        spans = counter.token_spans(text)
        words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        units: list[tuple[int, int, int]] = []
        index = 0
        for start, end in words:
            pieces: list[tuple[int, int]] = []
            while index < len(spans) and spans[index][0] < end:
                if spans[index][0] >= start:
                    pieces.append(spans[index])
                index += 1
            # Parts of a split word are cut inside it, where re-tokenizing the cut text
            # may yield a few more pieces: leave room for them.
            size = budget if len(pieces) <= budget else budget - _SLACK
            for first in range(0, len(pieces), size):
                part = pieces[first : first + size]
                units.append((part[0][0], part[-1][1], len(part)))
        return units
    units = []
    for match in _WORD.finditer(text):
        units.extend(_split_word(counter, text, match.start(), match.end(), budget))
    return units


def _split_word(
    counter: TokenCounter, text: str, start: int, end: int, budget: int
) -> list[tuple[int, int, int]]:
    pieces = counter.count_tokens(text[start:end]) - 2
    if pieces <= budget - _SLACK or end - start < 2:
        return [(start, end, pieces)]
    middle = (start + end) // 2
    return _split_word(counter, text, start, middle, budget) + _split_word(
        counter, text, middle, end, budget
    )


def query_windows(counter: TokenCounter, text: str) -> list[tuple[str, int]]:
    """``text`` as ``(window, word pieces)`` pairs that each fit ``counter.max_tokens``
    (``[CLS]``/``[SEP]`` included): one pair when it fits whole, else the fewest windows
    of balanced size, cut between words. 400 ``query_too_long`` past
    :data:`MAX_QUERY_TOKENS`."""
    if len(text) > _MAX_QUERY_CHARS:
        raise _too_long()
    total = counter.count_tokens(text)
    if total <= counter.max_tokens:
        return [(text, total)]
    if total > MAX_QUERY_TOKENS:
        raise _too_long(total)
    budget = counter.max_tokens - 2
    units = _units(counter, text, budget)
    content = sum(pieces for _, _, pieces in units)
    # Balanced: aim each window at an equal share, so no tiny tail window gets the same say.
    target = math.ceil(content / math.ceil(content / budget))
    result: list[tuple[str, int]] = []
    first = 0
    while first < len(units):
        last, size = first, 0
        while last < len(units) and (
            size == 0 or (size < target and size + units[last][2] <= budget)
        ):
            size += units[last][2]
            last += 1
        # Count the window as the model will read it; in the rare case a cut changes the
        # tokenization, words leave its end and open the next window instead.
        while True:
            window = text[units[first][0] : units[last - 1][1]]
            count = counter.count_tokens(window)
            if count <= counter.max_tokens or last - first == 1:
                break
            last -= 1
        result.append((window, count))
        first = last
    return result


def embed_query(embedder: QueryEmbedder, text: str) -> np.ndarray:
    """The query's unit vector (see the module docstring for queries longer than the window)."""
    windows = query_windows(embedder, text)
    vectors = np.asarray(embedder.embed([window for window, _ in windows]), dtype=np.float32)
    if len(windows) == 1:
        return vectors[0]
    weights = np.array([count for _, count in windows], dtype=np.float32)
    mean = weights @ vectors / weights.sum()
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
