"""Fusion math: reciprocal rank fusion and min-max weighted fusion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.errors import InvalidRequestError
from trellis.retrieval.fusion import (
    FusionConfig,
    fuse,
    reciprocal_rank_fusion,
    weighted_fusion,
)

rankings = st.lists(st.integers(0, 40), unique=True, max_size=30)
scored = st.dictionaries(st.integers(0, 40), st.floats(-1e6, 1e6, allow_nan=False), max_size=30)


@given(rankings, rankings, st.floats(0, 200))
def test_rrf_is_the_sum_of_reciprocal_ranks(a: list[int], b: list[int], k: float) -> None:
    fused = reciprocal_rank_fusion([a, b], k=k)
    assert set(fused) == set(a) | set(b)
    for item, score in fused.items():
        expected = sum(1 / (k + r.index(item) + 1) for r in (a, b) if item in r)
        assert math.isclose(score, expected, rel_tol=1e-12)


@given(rankings, rankings)
def test_rrf_does_not_depend_on_list_order(a: list[int], b: list[int]) -> None:
    assert reciprocal_rank_fusion([a, b]) == pytest.approx(reciprocal_rank_fusion([b, a]))


@given(rankings)
def test_rrf_of_one_list_keeps_its_order(a: list[int]) -> None:
    fused = reciprocal_rank_fusion([a])
    assert sorted(fused, key=fused.__getitem__, reverse=True) == a


@given(rankings, rankings)
def test_an_item_first_in_both_lists_wins(a: list[int], b: list[int]) -> None:
    a, b = [99, *a], [99, *b]
    result = fuse([(x, 0.0) for x in a], [(x, 0.0) for x in b], FusionConfig())
    assert result[0][0] == 99


@given(scored, scored, st.floats(0, 5), st.floats(0, 5))
def test_weighted_fusion_is_bounded_by_the_weights(
    a: dict[int, float], b: dict[int, float], wa: float, wb: float
) -> None:
    fused = weighted_fusion([a, b], [wa, wb])
    assert set(fused) == set(a) | set(b)
    for score in fused.values():
        assert -1e-9 <= score <= wa + wb + 1e-9


@given(scored)
def test_weighted_fusion_preserves_the_order_of_a_single_list(a: dict[int, float]) -> None:
    fused = weighted_fusion([a], [1.0])
    for x in a:
        for y in a:
            if a[x] < a[y]:
                assert fused[x] <= fused[y]


def test_weighted_fusion_normalises_each_list() -> None:
    fused = weighted_fusion([{1: 10.0, 2: 0.0}, {2: 0.9, 3: 0.1}], [0.5, 0.5])
    assert fused == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})


def test_bad_fusion_settings_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        FusionConfig(k=-1)
    with pytest.raises(InvalidRequestError):
        FusionConfig(weights=(0.0, 0.0))
    with pytest.raises(InvalidRequestError):
        FusionConfig(method="max")  # type: ignore[arg-type]
