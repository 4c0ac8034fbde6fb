"""The ``gate`` step kind and its checks: schema_valid, forbidden, grounded, judge."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from trellis.errors import ConfigurationError
from trellis.inference.gateway import Gateway
from trellis.inference.grounding import Passage
from trellis.inference.router import Router
from trellis.observe.tracing import Span
from trellis.orchestration import END, Context, Workflow
from trellis.orchestration.kinds.checks import (
    Verdict,
    content_words,
    forbidden,
    grounded,
    judge,
    schema_valid,
    support_score,
    text_of,
)
from trellis.orchestration.kinds.gate import gate
from trellis.settings import Deployment, ModelAlias, RetrySettings
from trellis.testing.fake_upstream import FakeUpstream

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Gustave Eiffel's company designed and built the tower; it is 330 metres tall.",
]


class Answer(BaseModel):
    text: str
    citations: list[int] = []


class State(BaseModel):
    question: str = "When was the Eiffel Tower completed?"
    passages: list[str] = PASSAGES
    answer: Answer | None = None
    raw: str | None = None
    verdict: Verdict | None = None
    tries: int = 0


def ctx(gateway: Gateway | None = None) -> Context:
    return Context(
        run_id="r",
        workflow="w",
        step="gate",
        seq=3,
        span=Span(name="gate", trace_id="t" * 32),
        services={"gateway": gateway} if gateway else {},
    )


async def run(check: Any, state: State, gateway: Gateway | None = None) -> Any:
    return await check.run(state, ctx(gateway).services)


# --- grounded ----------------------------------------------------------------------------


def test_content_words_drop_function_words_and_fold_plurals() -> None:
    assert content_words("The towers of Paris were built in 1889, it's said.") == {
        "tower",
        "pari",  # a light fold, the same on both sides of the comparison
        "built",
        "1889",
        "said",
    }


def test_support_score_separates_a_faithful_answer_from_one_about_something_else() -> None:
    faithful, missing = support_score(
        "The Eiffel Tower was completed in 1889, for the World's Fair.", PASSAGES
    )
    assert faithful == 1.0 and missing == []
    paraphrase, _ = support_score("Eiffel's company built the 330 metre tower in Paris.", PASSAGES)
    assert paraphrase >= 0.6
    off, missing = support_score(
        "Napoleon crowned himself emperor at Notre-Dame in 1804.", PASSAGES
    )
    assert off < 0.3
    assert "napoleon" in missing and "1804" in missing
    assert support_score("Yes.", PASSAGES) == (1.0, [])  # nothing claimed


async def test_grounded_passes_and_fails_on_the_threshold() -> None:
    good = State(answer=Answer(text="It was completed in 1889 [1].", citations=[1]))
    result = await run(grounded("answer", "passages"), good)
    assert result.passed and result.score == 1.0 and result.name == "grounded:answer"
    bad = State(answer=Answer(text="It opened in 1925 after the Art Deco exhibition."))
    result = await run(grounded("answer", "passages", min=0.6), bad)
    assert not result.passed and result.score < 0.6
    assert "unsupported:" in result.detail and "1925" in result.detail
    half = State(answer=Answer(text="Completed 1889, painted purple."))  # 2 of 4 words
    assert (await run(grounded("answer", "passages", min=0.5), half)).passed
    assert not (await run(grounded("answer", "passages", min=0.6), half)).passed


async def test_grounded_fails_without_answer_or_passages_and_reads_passage_objects() -> None:
    assert not (await run(grounded("answer", "passages"), State())).passed
    no_passages = State(passages=[], answer=Answer(text="completed in 1889"))
    result = await run(grounded("answer", "passages"), no_passages)
    assert not result.passed and result.detail == "no passages"

    class WithHits(BaseModel):
        answer: str
        hits: list[Any]

    passage = Passage(collection="c", chunk_id=1, document_id="d", text=PASSAGES[0], score=1.0)
    state = WithHits(answer="completed in 1889", hits=[passage, {"text": "tall tower"}])
    assert (await grounded("answer", "hits").run(state, {})).passed
    with pytest.raises(ConfigurationError):
        grounded("answer", "passages", min=1.5)


# --- forbidden ---------------------------------------------------------------------------


async def test_forbidden_terms_match_whole_words_in_any_case() -> None:
    check = forbidden("answer", terms=["guarantee", "legal advice"])
    state = State(answer=Answer(text="This is not LEGAL  advice; we Guarantee nothing."))
    result = await run(check, state)
    assert not result.passed and result.detail == "found: guarantee"  # the phrase needs 1 space
    assert (await run(check, State(answer=Answer(text="No guarantees here.")))).passed
    assert (await run(check, State(answer=Answer(text="legal advice")))).detail == (
        "found: legal advice"
    )


async def test_forbidden_patterns_are_regular_expressions() -> None:
    card = re.compile(r"\b(?:\d[ -]?){13,16}\b")
    check = forbidden("raw", patterns=[card, r"(?i)api[_-]?key"], name="leaks")
    result = await run(check, State(raw="card 4111 1111 1111 1111, and the API_KEY"))
    assert not result.passed and result.name == "leaks"
    assert result.detail.count("/") == 4  # both patterns named
    assert (await run(check, State(raw="call 555-1234"))).passed
    with pytest.raises(ConfigurationError):
        forbidden("raw")


def test_text_of_reads_the_prose_of_nested_values() -> None:
    assert text_of(Answer(text="hi", citations=[1, 2])) == "hi"
    assert text_of({"a": ["x", {"b": "y"}], "n": 3}) == "x\ny"
    assert text_of(None) == ""


# --- schema_valid ------------------------------------------------------------------------


async def test_schema_valid_checks_presence_and_the_given_schema() -> None:
    assert not (await run(schema_valid("answer"), State())).passed
    assert (await run(schema_valid("answer"), State(answer=Answer(text="x")))).passed
    assert (await run(schema_valid("raw", Answer), State(raw='{"text": "x"}'))).passed
    result = await run(schema_valid("raw", Answer), State(raw='{"txt": "x"}'))
    assert not result.passed and "text" in result.detail
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert (await run(schema_valid("raw", schema), State(raw='{"n": 2}'))).passed
    result = await run(schema_valid("raw", schema), State(raw='{"n": "two"}'))
    assert not result.passed and "not of type 'integer'" in result.detail
    assert not (await run(schema_valid("raw", schema), State(raw="{n: 2"))).passed


# --- judge -------------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai").start()
    yield server
    server.stop()


def make_gateway(upstream: FakeUpstream) -> Gateway:
    alias = ModelAlias(
        name="judge-m",
        deployments=[
            Deployment(provider="openai-compatible", model="gpt-j", base_url=upstream.base_url)
        ],
    )
    return Gateway(Router([alias], retry=RetrySettings(attempts=1)))


async def test_judge_asks_the_model_with_criteria_question_passages_and_answer(
    upstream: FakeUpstream,
) -> None:
    upstream.reply = '{"verdict": "fail", "reason": "The date is not in the passages."}'
    check = judge(
        "answer",
        "The answer states only facts found in the passages.",
        model="judge-m",
        question="question",
        passages="passages",
    )
    state = State(answer=Answer(text="It was completed in 1925."))
    result = await run(check, state, make_gateway(upstream))
    assert not result.passed and result.score == 0.0
    assert result.detail == "judge-m: The date is not in the passages."
    assert result._usage is not None and result._usage.total_tokens > 0
    body = upstream.requests[0].json
    assert body["temperature"] == 0.0
    assert body["response_format"]["json_schema"]["name"] == "JudgeAnswer"
    prompt = body["messages"][1]["content"]
    for part in ("CRITERIA:", "QUESTION:\nWhen was", "[1] The Eiffel", "[2] Gustave", "ANSWER:"):
        assert part in prompt
    assert prompt.endswith("It was completed in 1925.")


async def test_judge_output_is_repaired_and_needs_a_gateway(upstream: FakeUpstream) -> None:
    replies = iter(["PASS", '{"verdict": "pass", "reason": "ok"}'])
    upstream.reply = lambda body: next(replies)
    check = judge("answer", "Polite.", model="judge-m")
    result = await run(check, State(answer=Answer(text="Hello")), make_gateway(upstream))
    assert result.passed and len(upstream.requests) == 2
    with pytest.raises(ConfigurationError, match="gateway"):
        await run(check, State(answer=Answer(text="Hello")))


# --- the gate step -----------------------------------------------------------------------


async def test_the_gate_stops_at_the_first_failure_so_the_judge_is_not_called(
    upstream: FakeUpstream,
) -> None:
    step = gate(
        "check",
        [
            schema_valid("answer"),
            grounded("answer", "passages"),
            judge("answer", "Faithful.", model="judge-m"),
        ],
        into="verdict",
    )
    state = State(answer=Answer(text="Napoleon crowned himself at Notre-Dame."))
    context = ctx(make_gateway(upstream))
    outcome = await step.execute(context, state)
    verdict = outcome.update["verdict"]  # type: ignore[index]
    assert isinstance(verdict, Verdict) and not verdict.passed
    assert [c.name for c in verdict.checks] == ["schema_valid:answer", "grounded:answer"]
    assert verdict.failed == ["grounded:answer"]
    assert upstream.requests == []  # the judge never ran
    assert outcome.usage.input_tokens == 0 and outcome.route is None
    assert context.span is not None
    assert [e["name"] for e in context.span.events] == ["check", "check"]
    assert context.span.events[1]["attributes"]["check"] == "grounded:answer"
    assert context.span.attributes["trellis.gate.passed"] is False
    assert context.span.events[1]["attributes"]["score"] < 0.6
    json.dumps(outcome.output)  # the step record is JSON-able


async def test_run_all_runs_every_check_and_the_judge_usage_is_counted(
    upstream: FakeUpstream,
) -> None:
    upstream.reply = '{"verdict": "pass", "reason": "fine"}'
    step = gate(
        "check",
        [grounded("answer", "passages"), judge("answer", "Faithful.", model="judge-m")],
        run_all=True,
    )
    outcome = await step.execute(
        ctx(make_gateway(upstream)), State(answer=Answer(text="It opened in 1925."))
    )
    assert outcome.update is None  # no into: the verdict is only the step's output
    assert [c["passed"] for c in outcome.output["checks"]] == [False, True]
    assert outcome.output["passed"] is False
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0


def router(state: State, verdict: Verdict) -> str:
    assert state.verdict == verdict  # the router sees the state with the verdict in it
    if verdict.passed:
        return END
    if state.tries == 0:
        return "retry"
    return "refuse"


def support_flow() -> Workflow[State]:
    flow = Workflow("support", state=State)

    @flow.step
    def answer(s: State) -> dict[str, Any]:
        return {}

    flow.add(gate("check", [grounded("answer", "passages")], into="verdict", route=router))

    @flow.step(next="answer")
    def retry(s: State) -> dict[str, Any]:
        return {"tries": s.tries + 1}

    @flow.step(next=END)
    def refuse(s: State) -> dict[str, Any]:
        return {"answer": Answer(text="I can't answer that from the documents.")}

    flow.check()
    return flow


@pytest.mark.parametrize(
    ("text", "tries", "expected"),
    [
        ("Completed in 1889.", 0, END),
        ("It opened in 1925.", 0, "retry"),
        ("It opened in 1925.", 1, "refuse"),
    ],
)
async def test_the_workflow_routes_on_the_verdict(text: str, tries: int, expected: str) -> None:
    flow = support_flow()
    step = flow.get("check")
    state = State(answer=Answer(text=text), tries=tries)
    outcome = await step.execute(ctx(), state)
    assert outcome.route == expected
    after = state.model_copy(update=outcome.update)  # type: ignore[arg-type]
    assert flow.next_after(step, after, outcome) == expected


def test_gate_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        gate("g", [])
    with pytest.raises(ConfigurationError):
        gate("g", [grounded("a", "p"), grounded("a", "p")])
    with pytest.raises(ConfigurationError):
        gate("g", [grounded("a", "p")], route=router, next="x")
