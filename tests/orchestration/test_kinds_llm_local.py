"""The ``llm`` step on the real bundled model (the ``local`` alias), offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from trellis.observe.tracing import Span
from trellis.orchestration import Context
from trellis.orchestration.kinds.llm import llm
from trellis.runtime import Trellis
from trellis.settings import Settings

pytestmark = pytest.mark.model


class Capital(BaseModel):
    country: str
    city: str


class Quiz(BaseModel):
    country: str
    capital: Capital | None = None


async def test_the_bundled_model_fills_a_typed_field(tmp_path: Path) -> None:
    step = llm(
        "capital",
        model="local",
        messages=lambda s: [
            {"role": "system", "content": "Answer in JSON with the keys country and city."},
            f"What is the capital of {s.country}?",
        ],
        output=Capital,
        into="capital",
        temperature=0.0,
        max_tokens=40,
    )
    async with Trellis(Settings(data_dir=tmp_path)) as trellis:
        ctx = Context(
            run_id="r",
            workflow="w",
            step="capital",
            seq=1,
            span=Span(name="capital", trace_id="t" * 32),
            services={"gateway": trellis.gateway},
        )
        outcome = await step.execute(ctx, Quiz(country="France"))
    assert isinstance(outcome.update, dict)
    capital = outcome.update["capital"]
    assert isinstance(capital, Capital)  # the grammar-constrained answer parsed and validated
    assert "Paris" in capital.city, capital
    assert outcome.usage.output_tokens > 0
