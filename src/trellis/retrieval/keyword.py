"""BM25 keyword ranking over in-memory postings: an analyzer and a segmented inverted index.

Why not the database's own full-text ranking: SQLite's FTS5 evaluates ``bm25()``
row by row for every match, and broad OR queries match half of a large
collection (slow at 100,000 chunks: README, Performance), with k1 fixed at 1.2 and
statistics shared by every collection. Here each collection has its own postings
as numpy arrays, so a query costs a few vectorised gathers per term, and BM25's
parameters are ours to choose (k1=1.5, b=0.75: the values the usual references use).

The index grows by *segments* (one per batch of added chunks, merged pairwise
when sizes become similar, so there are O(log n) of them) and forgets chunks by
tombstones, so keeping it in step with the database costs what changed, not the
whole collection. Document frequency, collection size and average length are
computed over live rows at query time, so tombstoned rows never skew scores.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import Stemmer

from trellis.retrieval.stopwords import ENGLISH_STOPWORDS

__all__ = ["Analysed", "Analyzer", "KeywordIndex", "BM25"]

_WORD = re.compile(r"\w+", re.UNICODE)
#: ASCII characters that are not word characters (``\w``), mapped to spaces.
_ASCII_NON_WORD = str.maketrans(
    {chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}
)
_STEM_CACHE_LIMIT = 500_000


class _StemCache(dict[str, str]):
    """word -> stem, filled on first sight (corpora repeat a small vocabulary endlessly)."""

    def __init__(self, stemmer: Any) -> None:
        super().__init__()
        self.stemmer = stemmer

    def __missing__(self, word: str) -> str:
        stem: str = self.stemmer.stemWord(word)
        self[word] = stem
        return stem


@dataclass(frozen=True, slots=True)
class BM25:
    """Okapi BM25 with Lucene's non-negative idf."""

    k1: float = 1.5
    b: float = 0.75


class Analyzer:
    """Text to index terms: lower-cased, accent-folded words, Snowball-stemmed.

    Stop words are indexed (a query made only of them still matches) but left out
    of query terms otherwise and of document lengths, as classic BM25 setups do.
    """

    def __init__(self, language: str = "english", stopwords: frozenset[str] | None = None) -> None:
        self.language = language
        self.stopwords = ENGLISH_STOPWORDS if stopwords is None else stopwords
        # Snowball stemmer objects are not thread-safe: one (with its cache) per thread.
        self._local = threading.local()

    def _stems(self) -> _StemCache:
        cache: _StemCache | None = getattr(self._local, "stems", None)
        if cache is None or len(cache) > _STEM_CACHE_LIMIT:
            cache = self._local.stems = _StemCache(Stemmer.Stemmer(self.language))
        return cache

    def _stem(self, words: list[str]) -> list[str]:
        return list(map(self._stems().__getitem__, words))

    def words(self, text: str) -> list[str]:
        lowered = text.lower()
        if not lowered.isascii():
            folded = unicodedata.normalize("NFKD", lowered)
            lowered = "".join(ch for ch in folded if not unicodedata.combining(ch))
            if not lowered.isascii():
                return _WORD.findall(lowered)
        # ASCII: the same words as the regex, several times faster.
        return lowered.translate(_ASCII_NON_WORD).split()

    def document_terms(self, text: str) -> tuple[list[str], int]:
        """All stemmed terms of a chunk and its BM25 length (terms that are not stop words)."""
        words = self.words(text)
        content = len(words) - sum(map(self.stopwords.__contains__, words))
        return self._stem(words), content

    def query_terms(self, query: str) -> list[str]:
        """Distinct stemmed query terms; stop words dropped unless the query is only those."""
        words = list(dict.fromkeys(self.words(query)))
        content = [word for word in words if word not in self.stopwords] or words
        return list(dict.fromkeys(self._stem(content)))


@dataclass(slots=True)
class _Segment:
    """Postings of one batch of rows: term -> slice of ``rows``/``freqs`` (rows ascending)."""

    vocabulary: dict[str, int]
    offsets: np.ndarray  # int64, len(vocabulary) + 1
    rows: np.ndarray  # int32 global row numbers
    freqs: np.ndarray  # float32 term frequencies

    @property
    def size(self) -> int:
        return len(self.rows)

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        position = self.vocabulary.get(term)
        if position is None:
            return None
        start, end = self.offsets[position], self.offsets[position + 1]
        return self.rows[start:end], self.freqs[start:end]


@dataclass(frozen=True, slots=True)
class Analysed:
    """Rows ready to append to a :class:`KeywordIndex`: local postings and BM25 lengths."""

    segment: _Segment
    lengths: np.ndarray  # float32, one per row


def _segment_from_triples(
    terms: Sequence[str], term_ids: np.ndarray, rows: np.ndarray, freqs: np.ndarray | None
) -> _Segment:
    """Group (term id, row[, freq]) triples by term; duplicates of a pair are summed."""
    if len(term_ids) == 0:
        return _Segment({}, np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    keys = (term_ids.astype(np.int64) << 32) | rows.astype(np.int64)
    if freqs is None:
        unique, counts = np.unique(keys, return_counts=True)
        unique_freqs = counts.astype(np.float32)
    else:
        order = np.argsort(keys, kind="stable")
        keys, freqs = keys[order], freqs[order]
        unique, starts = np.unique(keys, return_index=True)
        unique_freqs = np.add.reduceat(freqs, starts).astype(np.float32)
    grouped_terms = unique >> 32
    offsets = np.searchsorted(grouped_terms, np.arange(len(terms) + 1)).astype(np.int64)
    vocabulary = {term: position for position, term in enumerate(terms)}
    return _Segment(vocabulary, offsets, (unique & 0xFFFFFFFF).astype(np.int32), unique_freqs)


def _merge(older: _Segment, newer: _Segment) -> _Segment:
    vocabulary = dict(older.vocabulary)
    for term in newer.vocabulary:
        if term not in vocabulary:
            vocabulary[term] = len(vocabulary)
    terms = list(vocabulary)  # insertion order is id order
    parts_ids, parts_rows, parts_freqs = [], [], []
    for segment in (older, newer):
        mapping = np.fromiter(
            (vocabulary[t] for t in segment.vocabulary),
            dtype=np.int64,
            count=len(segment.vocabulary),
        )
        parts_ids.append(np.repeat(mapping, np.diff(segment.offsets)))
        parts_rows.append(segment.rows)
        parts_freqs.append(segment.freqs)
    return _segment_from_triples(
        terms, np.concatenate(parts_ids), np.concatenate(parts_rows), np.concatenate(parts_freqs)
    )


class KeywordIndex:
    """BM25 over rows numbered 0..n-1 in insertion order; rows are added and tombstoned.

    Not thread-safe: one owner mutates it; :meth:`search` only reads.
    """

    def __init__(self, analyzer: Analyzer, params: BM25 | None = None) -> None:
        self.analyzer = analyzer
        self.params = params or BM25()
        self._segments: list[_Segment] = []
        self._lengths = np.zeros(0, np.float32)
        self._alive = np.zeros(0, bool)
        self._live_rows = 0
        self._live_length = 0.0

    @property
    def rows(self) -> int:
        return len(self._alive)

    @property
    def live_rows(self) -> int:
        return self._live_rows

    @property
    def alive(self) -> np.ndarray:
        """Live-row mask (read-only use)."""
        return self._alive

    @staticmethod
    def analyse(analyzer: Analyzer, texts: Iterable[str]) -> Analysed:
        """Postings and lengths of ``texts`` as rows 0..n-1: the costly part of adding rows,
        safe to run in a worker thread (it touches no index state)."""
        vocabulary: defaultdict[str, int] = defaultdict()
        vocabulary.default_factory = vocabulary.__len__  # a new term gets the next id
        ids: list[int] = []
        counts: list[int] = []
        lengths: list[int] = []
        for text in texts:
            terms, length = analyzer.document_terms(text)
            ids.extend(map(vocabulary.__getitem__, terms))
            counts.append(len(terms))
            lengths.append(length)
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        segment = _segment_from_triples(list(vocabulary), np.asarray(ids, np.int64), rows, None)
        return Analysed(segment, np.asarray(lengths, np.float32))

    def add(self, analysed: Analysed) -> None:
        """Append rows (from :meth:`analyse`); they are numbered after the existing ones."""
        count = len(analysed.lengths)
        if not count:
            return
        base = self.rows
        local = analysed.segment
        self._segments.append(
            _Segment(local.vocabulary, local.offsets, local.rows + np.int32(base), local.freqs)
        )
        while len(self._segments) > 1 and self._segments[-1].size * 2 >= self._segments[-2].size:
            newer = self._segments.pop()
            self._segments[-1] = _merge(self._segments[-1], newer)
        self._lengths = np.concatenate([self._lengths, analysed.lengths])
        self._alive = np.concatenate([self._alive, np.ones(count, bool)])
        self._live_rows += count
        self._live_length += float(analysed.lengths.sum())

    def remove(self, rows: np.ndarray) -> None:
        """Tombstone rows: they stop matching and stop counting in the statistics."""
        rows = np.asarray(rows, np.int64)
        rows = rows[self._alive[rows]]
        self._alive[rows] = False
        self._live_rows -= len(rows)
        self._live_length -= float(self._lengths[rows].sum())

    def search(
        self, query: str, limit: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Best ``limit`` rows as ``(row, score)``, score descending; ``allowed`` masks rows."""
        terms = self.analyzer.query_terms(query)
        if not terms or limit < 1 or not self._live_rows:
            return []
        k1, b = self.params.k1, self.params.b
        average = max(self._live_length / self._live_rows, 1e-9)
        scores = np.zeros(self.rows, np.float32)
        touched = False
        for term in terms:
            found = [p for p in (s.postings(term) for s in self._segments) if p is not None]
            if not found:
                continue
            rows = np.concatenate([p[0] for p in found]) if len(found) > 1 else found[0][0]
            freqs = np.concatenate([p[1] for p in found]) if len(found) > 1 else found[0][1]
            live = self._alive[rows]
            rows, freqs = rows[live], freqs[live]
            if not len(rows):
                continue
            frequency = len(rows)
            idf = math.log(1.0 + (self._live_rows - frequency + 0.5) / (frequency + 0.5))
            norm = k1 * (1.0 - b + b * self._lengths[rows] / average)
            scores[rows] += (idf * (k1 + 1.0)) * freqs / (freqs + norm)
            touched = True
        if not touched:
            return []
        # Every matching row scored above zero (idf > 0, tf > 0): no set union needed.
        candidates = np.flatnonzero(scores)
        if allowed is not None:
            candidates = candidates[allowed[candidates]]
        if not len(candidates):
            return []
        values = scores[candidates]
        count = min(limit, len(candidates))
        top = np.argpartition(-values, count - 1)[:count]
        # Ties broken by row (insertion order), so results are deterministic.
        top = top[np.lexsort((candidates[top], -values[top]))]
        return [(int(candidates[i]), float(values[i])) for i in top]
