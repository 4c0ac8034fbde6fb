"""Combine ranked lists from keyword and vector search into one ranking.

Reciprocal rank fusion needs no score calibration (BM25 and cosine live on
different scales), which is why it is the default. Weighted fusion min-max
normalises each list to [0, 1] first, so its weights mean the same thing for
every query.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from trellis.errors import InvalidRequestError

__all__ = ["FusionConfig", "reciprocal_rank_fusion", "weighted_fusion", "fuse"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class FusionConfig:
    """How hybrid search fuses ``(keyword, vector)`` results."""

    method: Literal["rrf", "weighted"] = "rrf"
    k: float = 60.0
    weights: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "weighted"):
            raise InvalidRequestError(f"unknown fusion method {self.method!r}")
        if self.k < 0:
            raise InvalidRequestError("the RRF constant k must be >= 0")
        if len(self.weights) != 2 or any(w < 0 for w in self.weights) or sum(self.weights) == 0:
            raise InvalidRequestError("fusion weights must be two non-negative numbers, not both 0")


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[K]], k: float = 60.0, weights: Sequence[float] | None = None
) -> dict[K, float]:
    """``sum(w / (k + rank))`` over the lists an item appears in (ranks start at 1)."""
    weights = weights if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    fused: dict[K, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return fused


def _min_max(scores: Mapping[K, float]) -> dict[K, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return {item: 1.0 for item in scores}
    return {item: (value - low) / (high - low) for item, value in scores.items()}


def weighted_fusion(
    score_lists: Sequence[Mapping[K, float]], weights: Sequence[float]
) -> dict[K, float]:
    """``sum(w * minmax(score))``; an item missing from a list scores 0 there."""
    if len(weights) != len(score_lists):
        raise ValueError("one weight per score list")
    fused: dict[K, float] = {}
    for scores, weight in zip(score_lists, weights, strict=True):
        for item, value in _min_max(scores).items():
            fused[item] = fused.get(item, 0.0) + weight * value
    return fused


def fuse(
    keyword: Sequence[tuple[K, float]], vector: Sequence[tuple[K, float]], config: FusionConfig
) -> list[tuple[K, float]]:
    """Best-first ``(item, fused score)`` from two best-first ``(item, score)`` lists."""
    if config.method == "rrf":
        fused = reciprocal_rank_fusion(
            [[item for item, _ in keyword], [item for item, _ in vector]],
            k=config.k,
            weights=config.weights,
        )
    else:
        fused = weighted_fusion([dict(keyword), dict(vector)], config.weights)
    return sorted(fused.items(), key=lambda pair: pair[1], reverse=True)
