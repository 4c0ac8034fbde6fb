"""BM25 over in-memory postings: exact against a plain reference, under adds and removals."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.retrieval.keyword import BM25, Analyzer, KeywordIndex

WORDS = [
    "shock",
    "wave",
    "boundary",
    "layer",
    "flow",
    "heat",
    "transfer",
    "laminar",
    "turbulent",
    "pressure",
    "supersonic",
    "wing",
    "body",
    "drag",
    "lift",
    "nozzle",
    "jet",
    "plate",
    "cylinder",
    "cone",
    "mach",
    "number",
]
FILLER = ["the", "of", "and", "in", "a", "to", "is", "with", "for", "on"]


def _corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.randint(3, 40)
        texts.append(" ".join(rng.choice(WORDS + FILLER) for _ in range(length)))
    return texts


def _reference(
    analyzer: Analyzer, texts: dict[int, str], query: str, params: BM25
) -> dict[int, float]:
    """BM25 written out term by term over the live texts (Lucene idf)."""
    analysed = {row: analyzer.document_terms(body) for row, body in texts.items()}
    counts = {row: Counter(terms) for row, (terms, _) in analysed.items()}
    lengths = {row: length for row, (_, length) in analysed.items()}
    average = sum(lengths.values()) / len(lengths)
    scores: dict[int, float] = {}
    for term in analyzer.query_terms(query):
        having = [row for row in counts if counts[row][term]]
        if not having:
            continue
        idf = math.log(1 + (len(counts) - len(having) + 0.5) / (len(having) + 0.5))
        for row in having:
            tf = counts[row][term]
            norm = params.k1 * (1 - params.b + params.b * lengths[row] / average)
            scores[row] = scores.get(row, 0.0) + idf * tf * (params.k1 + 1) / (tf + norm)
    return scores


def _check(found: list[tuple[int, float]], expected: dict[int, float], limit: int) -> None:
    best = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:limit]
    assert [row for row, _ in found] == [row for row, _ in best]
    assert np.allclose([s for _, s in found], [s for _, s in best], rtol=1e-5)


QUERIES = ["shock wave", "heat transfer in laminar flow", "Mach numbers of jets", "drag"]


@pytest.mark.parametrize("params", [BM25(), BM25(k1=1.2, b=0.5)])
def test_scores_match_the_reference(params: BM25) -> None:
    analyzer = Analyzer()
    texts = _corpus(300, seed=1)
    index = KeywordIndex(analyzer, params)
    index.add(KeywordIndex.analyse(analyzer, texts))
    live = dict(enumerate(texts))
    for query in QUERIES:
        _check(index.search(query, 25, None), _reference(analyzer, live, query, params), 25)


def test_batches_and_removals_equal_a_fresh_index() -> None:
    analyzer = Analyzer()
    texts = _corpus(400, seed=2)
    index = KeywordIndex(analyzer)
    rng = random.Random(3)
    start = 0
    while start < len(texts):  # uneven batches exercise segment merging
        size = rng.choice([1, 2, 7, 30, 90])
        index.add(KeywordIndex.analyse(analyzer, texts[start : start + size]))
        start += size
    removed = rng.sample(range(len(texts)), 120)
    index.remove(np.array(removed[:60]))
    index.remove(np.array(removed[40:]))  # overlapping removals count once
    live = {row: body for row, body in enumerate(texts) if row not in set(removed)}
    assert index.live_rows == len(live)
    for query in QUERIES:
        _check(index.search(query, 50, None), _reference(analyzer, live, query, BM25()), 50)


def test_allowed_rows_and_limits() -> None:
    analyzer = Analyzer()
    texts = _corpus(100, seed=4)
    index = KeywordIndex(analyzer)
    index.add(KeywordIndex.analyse(analyzer, texts))
    allowed = np.zeros(100, bool)
    allowed[::3] = True
    found = index.search("shock wave", 1000, allowed)
    expected = _reference(analyzer, dict(enumerate(texts)), "shock wave", BM25())
    assert found and all(row % 3 == 0 for row, _ in found)
    assert {row for row, _ in found} == {row for row in expected if row % 3 == 0}
    assert index.search("shock", 0, None) == []
    assert index.search("nowhere to be seen", 10, None) == []


def test_analyzer_stems_folds_accents_and_keeps_stop_word_only_queries() -> None:
    analyzer = Analyzer()
    assert analyzer.query_terms("Flows flowing FLOW") == ["flow"]
    assert analyzer.query_terms("café naïve") == analyzer.query_terms("cafe naive")
    assert analyzer.query_terms("the flow of air") == ["flow", "air"]
    assert analyzer.query_terms("to be or not to be") == ["to", "be", "or", "not"]
    terms, length = analyzer.document_terms("The flow of the air")
    assert terms == ["the", "flow", "of", "the", "air"] and length == 2

    index = KeywordIndex(analyzer)
    index.add(KeywordIndex.analyse(analyzer, ["to be or not to be", "a flow of air"]))
    assert [row for row, _ in index.search("to be", 5, None)] == [0]
    assert [row for row, _ in index.search("flowing", 5, None)] == [1]


def test_empty_index_and_empty_batches() -> None:
    index = KeywordIndex(Analyzer())
    assert index.search("anything", 10, None) == []
    index.add(KeywordIndex.analyse(index.analyzer, []))
    index.add(KeywordIndex.analyse(index.analyzer, ["", "   "]))
    assert index.rows == 2 and index.search("anything", 10, None) == []


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=200))
def test_the_ascii_fast_path_splits_words_like_the_regex(text: str) -> None:
    assert Analyzer().words(text) == re.findall(r"\w+", text.lower())


def test_non_ascii_words_are_folded_then_split() -> None:
    assert Analyzer().words("Über-naïve Ångström_x 3.5µm") == [
        "uber",
        "naive",
        "angstrom_x",
        "3",
        "5μm",
    ]
