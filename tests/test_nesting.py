"""The nesting limit's shortcut: counting brackets never lets a deep value through."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from trellis.nesting import exceeds_depth, shallow_by_count

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet='ab{[]}"\\ '),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=40,
)


@given(json_values, st.integers(min_value=0, max_value=12))
def test_a_value_the_count_passes_is_within_the_limit(value: Any, limit: int) -> None:
    if shallow_by_count(orjson.dumps(value), limit):
        assert not exceeds_depth(value, limit)


def test_the_count_stops_at_the_limit_and_long_bodies_are_walked() -> None:
    deep: Any = 1
    for _ in range(5):
        deep = [deep]
    assert shallow_by_count(orjson.dumps(deep), 5)
    assert not shallow_by_count(orjson.dumps(deep), 4)
    assert not shallow_by_count(b'{"a": "' + b"x" * 20_000 + b'"}', 64)
