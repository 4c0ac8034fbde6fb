"""Chunking: verbatim offsets, the model's limit as a guarantee, overlap and headings."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.errors import InvalidRequestError
from trellis.inference.local.embedder import MiniLMEmbedder
from trellis.retrieval.chunking import ChunkingConfig, chunk_text, sections


class PieceCounter:
    """A stand-in tokenizer: one piece per 3 characters of each word, plus [CLS] and [SEP].

    Not additive across a split word, like real WordPiece, so the limit check is exercised.
    """

    max_tokens = 24

    def count_tokens(self, text: str) -> int:
        return 2 + sum(-(-len(word) // 3) for word in re.findall(r"\w+|[^\w\s]", text))


words = st.text(alphabet="abcdefghij", min_size=1, max_size=40)
lines = st.one_of(
    st.lists(words, min_size=1, max_size=30).map(" ".join),
    st.builds(lambda level, title: "#" * level + " " + title, st.integers(1, 3), words),
    st.just(""),
    st.lists(words, min_size=1, max_size=6).map(lambda ws: ". ".join(ws) + "."),
)
documents = st.lists(lines, max_size=25).map("\n".join)


def _check(text: str, counter: PieceCounter, config: ChunkingConfig) -> None:
    chunks = chunk_text(text, counter, config)
    covered = [False] * len(text)
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip() and chunk.text
        assert chunk.token_count == counter.count_tokens(chunk.text) <= counter.max_tokens
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    missing = [text[i] for i, seen in enumerate(covered) if not seen and not text[i].isspace()]
    assert not missing, "every non-blank character belongs to a chunk"


@settings(max_examples=150, deadline=None)
@given(documents, st.integers(8, 24), st.integers(0, 5))
def test_chunks_are_verbatim_spans_within_the_limit(text: str, target: int, overlap: int) -> None:
    _check(text, PieceCounter(), ChunkingConfig(target_tokens=target, overlap_tokens=overlap))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_unicode_text(text: str) -> None:
    _check(text, PieceCounter(), ChunkingConfig(target_tokens=16, overlap_tokens=4))


def test_long_sections_overlap_and_keep_their_heading_path() -> None:
    body = " ".join(f"Sentence {n} is here." for n in range(40))
    text = f"# Guide\n\nIntro.\n\n## Install\n\n{body}\n\n## Use\n\nShort."
    chunks = chunk_text(text, PieceCounter(), ChunkingConfig(target_tokens=24, overlap_tokens=10))
    install = [c for c in chunks if c.headings == ("Guide", "Install")]
    assert len(install) > 2
    for before, after in zip(install, install[1:], strict=False):
        assert after.start < before.end, "consecutive chunks of a long section overlap"
    assert chunks[-1].headings == ("Guide", "Use")
    assert chunks[-1].text.startswith("## Use")


def test_small_sections_share_a_chunk_without_splitting_any() -> None:
    text = "# A\n\none.\n\n# B\n\ntwo.\n\n# C\n\nthree."
    chunks = chunk_text(text, PieceCounter(), ChunkingConfig(target_tokens=24, overlap_tokens=2))
    assert [c.text for c in chunks] == [text]


def test_sections_track_the_heading_path() -> None:
    text = "pre\n# A\nx\n## B\ny\n# C\nz"
    assert [h for _, _, h in sections(text)] == [(), ("A",), ("A", "B"), ("C",)]


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        chunk_text("x", PieceCounter(), ChunkingConfig(target_tokens=2))
    with pytest.raises(InvalidRequestError):
        chunk_text("x", PieceCounter(), ChunkingConfig(target_tokens=20, overlap_tokens=18))


def test_real_tokenizer_never_sees_more_than_256_word_pieces(embedder: MiniLMEmbedder) -> None:
    paragraph = " ".join(["Supersonic boundary-layer transition on swept wings (M=2.5)."] * 60)
    blob = "x" * 3000  # one "word" far longer than the window
    text = f"# Aerodynamics\n\n{paragraph}\n\n{blob}\n\n## Notes\n\n" + "日本語の文章。" * 300
    chunks = chunk_text(text, embedder)
    assert len(chunks) > 5
    for chunk in chunks:
        assert embedder.count_tokens(chunk.text) == chunk.token_count <= 256
        assert text[chunk.start : chunk.end] == chunk.text


class CountOnly:
    """The real tokenizer behind ``count_tokens`` alone: every span is tokenized by itself."""

    def __init__(self, embedder: MiniLMEmbedder) -> None:
        self.embedder = embedder
        self.max_tokens = embedder.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.embedder.count_tokens(text)


ODD_PIECES = [
    "Boundary-layer transition (M=2.5) on swept wings; see [3].",
    "naïve café résumé",
    "東京大学の研究。",
    "control\x1ccharacters\x0bjoin words",
    "non\u00a0breaking\u3000spaces",
    "end.Next sentence!Really?",
    "# A heading\n\nits paragraph",
    "x" * 150,
    "e-mail: someone@example.org",
]


@pytest.mark.parametrize("target, overlap", [(256, 32), (48, 12)])
def test_counting_from_document_offsets_gives_the_same_chunks(
    embedder: MiniLMEmbedder, target: int, overlap: int
) -> None:
    """The embedder's ``token_spans`` shortcut is exact: chunks equal those counted span by span."""
    rng = random.Random(7)
    texts = [
        " ".join(rng.choice(ODD_PIECES) for _ in range(rng.randint(3, 60))).replace(". ", ".\n\n")
        for _ in range(60)
    ]
    config = ChunkingConfig(target_tokens=target, overlap_tokens=overlap)
    for text in texts:
        fast = chunk_text(text, embedder, config)
        assert fast == chunk_text(text, CountOnly(embedder), config)
        for chunk in fast:
            assert embedder.count_tokens(chunk.text) == chunk.token_count <= 256


mixed_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("abcdefg xyz .,;!?-'\n\t\r\x0b\x0c\x1c\x85\u00a0\u2028\u3000#")),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=400,
)


@settings(max_examples=60, deadline=None)
@given(text=mixed_text)
def test_offset_counting_matches_span_tokenizing_on_any_text(
    embedder: MiniLMEmbedder, text: str
) -> None:
    config = ChunkingConfig(target_tokens=16, overlap_tokens=4)
    assert chunk_text(text, embedder, config) == chunk_text(text, CountOnly(embedder), config)
