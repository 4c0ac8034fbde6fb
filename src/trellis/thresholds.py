"""The one ``--fail-on`` grammar: ``NAME:+X`` or ``NAME:-X`` (``X`` absolute, or ``X%`` of
the baseline's value), shared by ``trellis eval compare``, ``POST /v1/evals/compare`` and
the ``fail_on`` of scheduled runs in settings (checked when the settings load).

``rougeL:-0.02`` fails on a drop of more than 0.02, ``latency_p95:+20%`` on a rise of more
than 20%.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trellis.errors import InvalidRequestError

__all__ = ["Threshold", "parse_threshold"]

_THRESHOLD = re.compile(
    r"^(?P<name>[A-Za-z0-9_]+):(?P<sign>[+-])(?P<value>\d+(?:\.\d+)?)(?P<pct>%?)$"
)


@dataclass(frozen=True, slots=True)
class Threshold:
    name: str
    #: +1: fail when the delta rises past ``value``; -1: when it falls past it.
    direction: int
    value: float
    relative: bool

    def __str__(self) -> str:
        sign = "+" if self.direction > 0 else "-"
        return f"{self.name}:{sign}{self.value:g}{'%' if self.relative else ''}"

    def breached(self, baseline: float, delta: float) -> bool:
        if self.relative:
            if baseline == 0:  # any change of a zero baseline is an infinite percentage
                return delta * self.direction > 0
            change = delta / abs(baseline) * 100
        else:
            change = delta
        return change * self.direction > self.value


def parse_threshold(text: str) -> Threshold:
    """``rougeL:-0.02``, ``latency_p95:+20%``, ``cost:+10%``."""
    match = _THRESHOLD.match(text.strip())
    if match is None:
        raise InvalidRequestError(
            f"bad threshold {text!r}: write NAME:+X or NAME:-X, X a number or a percentage "
            "(rougeL:-0.02, latency_p95:+20%)",
            param="fail_on",
        )
    return Threshold(
        name=match["name"],
        direction=1 if match["sign"] == "+" else -1,
        value=float(match["value"]),
        relative=bool(match["pct"]),
    )
