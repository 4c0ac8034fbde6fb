"""The scale of a labelling queue and the check of a label against it.

A range (``{"type": "range", "min": 1, "max": 5, "pass": 3}``: a score in ``[min, max]``
passing at ``pass``, by default the middle) or pass/fail (stored as a score of 1 or 0 on a
0-1 range passing at 0.5, so both kinds compare to a judge the same way).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trellis.errors import InvalidRequestError

__all__ = ["Scale", "check_label", "parse_scale"]


class Scale(BaseModel):
    """``{"type": "range", "min": 1, "max": 5, "pass": 3}`` or ``{"type": "pass_fail"}``.
    ``pass`` defaults to the middle of the range; a pass/fail label is stored as 1 or 0."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["range", "pass_fail"] = "range"
    min: float = 1
    max: float = 5
    pass_: float | None = Field(default=None, alias="pass")

    @model_validator(mode="after")
    def _check(self) -> Scale:
        if self.type == "pass_fail":
            self.min, self.max, self.pass_ = 0, 1, 0.5
            return self
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
            raise ValueError("a range scale needs finite min < max")
        if self.pass_ is None:
            self.pass_ = self.min + (self.max - self.min) / 2
        if not self.min <= self.pass_ <= self.max:
            raise ValueError("the scale's pass must lie within [min, max]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "min": self.min, "max": self.max, "pass": self.pass_}


def parse_scale(value: Any) -> Scale:
    """A scale from JSON or the CLI's ``1-5``, ``1-5:4`` (passing at 4) or ``pass_fail``."""
    if isinstance(value, str):
        match = re.fullmatch(
            r"\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)(?::(-?\d+(?:\.\d+)?))?\s*", value
        )
        if value.strip() in ("pass_fail", "pass/fail"):
            value = {"type": "pass_fail"}
        elif match:
            value = {"min": float(match[1]), "max": float(match[2])}
            if match[3] is not None:
                value["pass"] = float(match[3])
        else:
            raise InvalidRequestError(
                f"bad scale {value!r}: write MIN-MAX, MIN-MAX:PASS or pass_fail", param="scale"
            )
    try:
        return Scale.model_validate(value)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidRequestError(f"bad scale: {message}", param="scale") from None


def check_label(scale: Scale, score: float | None, passed: bool | None) -> tuple[float, bool]:
    """The label's stored score and verdict; a 400 naming what does not fit."""
    threshold = scale.pass_ if scale.pass_ is not None else scale.min
    if scale.type == "pass_fail":
        if score is not None and score not in (0, 1):
            raise InvalidRequestError(
                "this queue labels pass/fail: give passed, or a score of 0 or 1", param="score"
            )
        if passed is None and score is None:
            raise InvalidRequestError("this queue labels pass/fail: give passed", param="passed")
        verdict = bool(score) if passed is None else passed
        if score is not None and bool(score) != verdict:
            raise InvalidRequestError("score and passed disagree", param="passed")
        return (1.0 if verdict else 0.0), verdict
    if score is None:
        raise InvalidRequestError(
            f"this queue labels a score from {scale.min:g} to {scale.max:g}", param="score"
        )
    if not (math.isfinite(score) and scale.min <= score <= scale.max):
        raise InvalidRequestError(
            f"score {score:g} is outside the queue's scale {scale.min:g}-{scale.max:g}",
            param="score",
        )
    verdict = score >= threshold
    if passed is not None and passed != verdict:
        raise InvalidRequestError(
            f"score {score:g} {'passes' if verdict else 'fails'} at {threshold:g}: "
            "passed says otherwise",
            param="passed",
        )
    return float(score), verdict
