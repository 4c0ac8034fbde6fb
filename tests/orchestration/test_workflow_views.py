"""Workflow.mermaid() and the schemas GET /v1/workflows shows, on workflows built here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from trellis.orchestration import END, Policy, Workflow


class S(BaseModel):
    n: int = 0


def build(output: Any = None) -> Workflow[S]:
    flow = Workflow("graph", state=S, output=output)

    @flow.step(next=lambda s: "b" if s.n else END)  # a router without annotation
    async def a(s: S) -> None: ...

    @flow.step(policy=Policy(fallback="c"))
    async def b(s: S) -> None: ...

    @flow.step(next="a", policy=Policy(on_error="goto:b"))
    async def c(s: S) -> None: ...

    return flow


def test_mermaid_draws_fixed_code_and_error_routes() -> None:
    lines = build().mermaid().splitlines()
    assert lines[0] == "flowchart TD"
    assert '    s0["a<br/><i>function</i>"]' in lines
    assert "    start_ --> s0" in lines
    assert '    s0 -.-> s0_routes{{"routed in code"}}' in lines
    assert "    s1 --> s2" in lines  # b falls through to the step added after it
    assert "    s1 -. fallback .-> s2" in lines
    assert "    s2 --> s0" in lines
    assert "    s2 -. on error .-> s1" in lines


class Out(BaseModel):
    total: int


def test_output_schema_follows_the_output_function() -> None:
    def typed(s: S) -> Out:
        return Out(total=s.n)

    assert build().output_schema() == S.model_json_schema()
    assert build(typed).output_schema() == Out.model_json_schema()
    assert build(lambda s: s.n).output_schema() is None
    assert build().input_schema()["properties"] == {
        "n": {"default": 0, "title": "N", "type": "integer"}
    }
