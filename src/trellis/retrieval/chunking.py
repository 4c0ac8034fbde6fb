"""Split document text into chunks the embedder can read whole.

Sizes are measured with the embedder's own tokenizer (``count_tokens``, which
counts ``[CLS]``/``[SEP]`` too), so "fits" means exactly what the model means by
it: no chunk is ever over ``max_tokens``, and nothing is truncated downstream.
An embedder that also offers ``token_spans`` (word-piece offsets, see
:class:`SpanCounter`) has each document tokenized once; spans between whitespace
are then counted from those offsets, which is exact for a tokenizer that splits
words at whitespace first (BERT's WordPiece does).

The text is cut along its structure, coarsest first: Markdown heading sections,
then paragraphs and sentences, then words, then characters for pathological
"words". Short neighbouring sections share a chunk; a long section is packed
sentence by sentence with ``overlap_tokens`` of trailing context repeated at the
start of the next chunk. Every chunk is a verbatim span ``text[start:end]``.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from trellis.errors import InvalidRequestError
from trellis.retrieval.models import Chunk

__all__ = ["TokenCounter", "SpanCounter", "ChunkingConfig", "chunk_text", "sections"]


class TokenCounter(Protocol):
    """What the chunker needs from an embedder (``MiniLMEmbedder`` is one)."""

    max_tokens: int

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class SpanCounter(TokenCounter, Protocol):
    """A counter whose tokenizer splits at whitespace before anything else.

    ``token_spans`` gives ``(start, end)`` character offsets of the word pieces of
    ``text``, ``[CLS]``/``[SEP]`` excluded, in order. For such a tokenizer the pieces
    of a span that begins and ends at whitespace are exactly those inside it.
    """

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """``target_tokens`` is the size aimed for; ``max_tokens`` (default: the model's) is a hard cap.

    Both count ``[CLS]``/``[SEP]``, like ``count_tokens``.
    """

    target_tokens: int = 256
    overlap_tokens: int = 32
    max_tokens: int | None = None

    def limits(self, counter: TokenCounter) -> tuple[int, int]:
        """``(budget, hard)``: content word pieces to aim for, and the model's full limit."""
        hard = min(self.max_tokens or counter.max_tokens, counter.max_tokens)
        budget = min(self.target_tokens, hard) - 2
        if budget < 1:
            raise InvalidRequestError("chunk size must leave room for at least one word piece")
        if self.overlap_tokens < 0 or self.overlap_tokens >= budget:
            raise InvalidRequestError("overlap_tokens must be >= 0 and smaller than the chunk size")
        return budget, hard


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class _Unit:
    start: int
    end: int
    tokens: int  # content word pieces, [CLS]/[SEP] excluded


def sections(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(start, end, heading path)`` of each Markdown heading section, in order."""
    bounds: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    path: list[tuple[int, str]] = []
    for match in _HEADING.finditer(text):
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level] + [
            (level, match.group(2).strip())
        ]
        bounds.append((match.start(), tuple(title for _, title in path)))
    spans = []
    for index, (start, headings) in enumerate(bounds):
        end = bounds[index + 1][0] if index + 1 < len(bounds) else len(text)
        if text[start:end].strip():
            spans.append((start, end, headings))
    return spans


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    offset = start + (len(piece) - len(piece.lstrip()))
    return offset, offset + len(stripped)


def _split(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Trimmed, non-empty spans of ``text[start:end]`` between matches of ``pattern``."""
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in pattern.finditer(text, start, end):
        span = _trimmed(text, cursor, match.start())
        if span:
            spans.append(span)
        cursor = match.end()
    span = _trimmed(text, cursor, end)
    if span:
        spans.append(span)
    return spans


def _at_break(text: str, index: int) -> bool:
    """Whether ``text[index]`` (or the text's edge) separates words for a WordPiece tokenizer:
    ASCII blanks and Unicode space separators; other control characters are dropped, not split at.
    """
    if index < 0 or index >= len(text):
        return True
    char = text[index]
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


class _Chunker:
    def __init__(self, text: str, counter: TokenCounter, budget: int, overlap: int, hard: int):
        self.text = text
        self.counter = counter
        self.budget = budget
        self.overlap = overlap
        self.hard = hard
        # Full counts by span: a chunk that is one whole unit (a short document, say)
        # is not tokenized a second time when it is verified.
        self._counted: dict[tuple[int, int], int] = {}
        self._starts: list[int] = []
        self._ends: list[int] = []
        if isinstance(counter, SpanCounter):
            spans = counter.token_spans(text)
            self._starts = [start for start, _ in spans]
            self._ends = [end for _, end in spans]

    def full_count(self, start: int, end: int) -> int:
        """Word pieces of ``text[start:end]`` with ``[CLS]``/``[SEP]``, exactly."""
        key = (start, end)
        if key not in self._counted:
            counted = self._count_from_spans(start, end)
            if counted is None:
                counted = self.counter.count_tokens(self.text[start:end])
            self._counted[key] = counted
        return self._counted[key]

    def _count_from_spans(self, start: int, end: int) -> int | None:
        """The count from the document's word-piece offsets, or None where it may differ:
        without offsets, at a boundary that is not whitespace, or where a piece straddles it."""
        if not self._starts or not (_at_break(self.text, start - 1) and _at_break(self.text, end)):
            return None
        first = bisect.bisect_left(self._starts, start)
        after = bisect.bisect_right(self._ends, end)
        if (first > 0 and self._ends[first - 1] > start) or (
            after < len(self._starts) and self._starts[after] < end
        ):
            return None
        return max(0, after - first) + 2

    def count(self, start: int, end: int) -> int:
        return max(0, self.full_count(start, end) - 2)

    def units(self, start: int, end: int) -> list[_Unit]:
        """Spans of at most ``budget`` word pieces: sentences, else words, else characters."""
        units: list[_Unit] = []
        for p_start, p_end in _split(self.text, start, end, _PARAGRAPH_BREAK):
            for s_start, s_end in _split(self.text, p_start, p_end, _SENTENCE_END):
                tokens = self.count(s_start, s_end)
                if tokens <= self.budget:
                    units.append(_Unit(s_start, s_end, tokens))
                    continue
                for match in _WORD.finditer(self.text, s_start, s_end):
                    units.extend(self._word(match.start(), match.end()))
        return units

    def _word(self, start: int, end: int) -> list[_Unit]:
        tokens = self.count(start, end)
        if tokens <= self.budget or end - start == 1:
            return [_Unit(start, end, tokens)]
        middle = (start + end) // 2
        return self._word(start, middle) + self._word(middle, end)

    def pack(self, units: list[_Unit], overlap: bool) -> list[tuple[int, int]]:
        """Greedy packing of units into spans of at most ``budget`` word pieces."""
        spans: list[tuple[int, int]] = []
        first = 0
        while first < len(units):
            last, total = first, 0
            while last < len(units) and (
                last == first or total + units[last].tokens <= self.budget
            ):
                total += units[last].tokens
                last += 1
            spans.append((units[first].start, units[last - 1].end))
            if last == len(units):
                break
            next_first, carried = last, 0
            while (
                overlap
                and next_first - 1 > first
                and carried + units[next_first - 1].tokens <= self.overlap
            ):
                next_first -= 1
                carried += units[next_first].tokens
            first = next_first
        return spans

    def verified(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """The span with its full token count, split in two until it fits the model.

        Counts of pieces only add up exactly at whitespace; this check makes the limit a
        guarantee rather than an estimate.
        """
        full = self.full_count(start, end)
        if full <= self.hard or end - start <= 1:
            return [(start, end, full)]
        cut = self.text.rfind(" ", start + 1, (start + end) // 2 + 1)
        cut = cut if cut > start else (start + end) // 2
        pieces = [_trimmed(self.text, start, cut), _trimmed(self.text, cut, end)]
        return [part for piece in pieces if piece for part in self.verified(*piece)]


def chunk_text(
    text: str, counter: TokenCounter, config: ChunkingConfig | None = None
) -> list[Chunk]:
    """Chunks covering every non-blank character of ``text``, each within the model's limit."""
    config = config or ChunkingConfig()
    budget, hard = config.limits(counter)
    chunker = _Chunker(text, counter, budget, config.overlap_tokens, hard)
    planned: list[tuple[int, int, tuple[str, ...]]] = []
    # Whole sections that fit are packed together; larger ones are packed sentence by sentence.
    pending: list[tuple[_Unit, tuple[str, ...]]] = []

    def flush() -> None:
        units = [unit for unit, _ in pending]
        for start, end in chunker.pack(units, overlap=False):
            headings = next(h for unit, h in pending if unit.start == start)
            planned.append((start, end, headings))
        pending.clear()

    for s_start, s_end, headings in sections(text):
        span = _trimmed(text, s_start, s_end)
        if span is None:
            continue
        tokens = chunker.count(*span)
        if tokens <= budget:
            pending.append((_Unit(span[0], span[1], tokens), headings))
            continue
        flush()
        for start, end in chunker.pack(chunker.units(*span), overlap=True):
            planned.append((start, end, headings))
    flush()

    chunks: list[Chunk] = []
    for start, end, headings in planned:
        for v_start, v_end, tokens in chunker.verified(start, end):
            chunks.append(
                Chunk(
                    ordinal=len(chunks),
                    start=v_start,
                    end=v_end,
                    text=text[v_start:v_end],
                    token_count=tokens,
                    headings=headings,
                )
            )
    return chunks
