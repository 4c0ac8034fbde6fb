"""``tracing.bodies``: full, redacted or no prompts/responses in the stored traces."""

from __future__ import annotations

import pytest

from trellis.observe.store import TraceStore
from trellis.observe.tracing import GenAI, Trace
from trellis.observe.writer import TraceWriter, score_rows, trace_rows
from trellis.settings import Settings, TracingSettings
from trellis.store import Database

PROMPT = "My card is 4111 1111 1111 1111 and mail is ann@example.com"


def private_trace() -> Trace:
    trace = Trace(kind="chat", name="chat.completions")
    root = trace.root
    assert root is not None
    root.set(GenAI.INPUT_MESSAGES, [{"role": "user", "content": PROMPT}])
    root.set(
        GenAI.OUTPUT_MESSAGES,
        [{"role": "assistant", "content": [{"type": "text", "text": "Call +1 415-555-0132"}]}],
    )
    with pytest.raises(ValueError), trace.span("provider") as span:
        span.add_event("retry", error="refused for 10.1.2.3")
        raise ValueError("upstream rejected key sk-abcdefghijklmnopqrstuvwx")
    root.record_error(ValueError("user ann@example.com is over budget"))
    trace.scores.append({"name": "thumbs", "value": 0.0, "comment": "ann@example.com hated it"})
    trace.finish()
    return trace


def test_settings_modes_and_the_deprecated_alias() -> None:
    assert TracingSettings().bodies == "full"
    assert TracingSettings(store_bodies=False).bodies == "none"  # type: ignore[call-arg]
    assert TracingSettings.model_validate({"store_bodies": "true"}).bodies == "full"
    assert TracingSettings.model_validate({"store_bodies": False, "bodies": "redacted"}).bodies == (
        "redacted"
    )
    assert TracingSettings(bodies="redacted").store_bodies is True
    assert TracingSettings(bodies="none").store_bodies is False
    assert Settings(tracing={"retention_days": 7}).tracing.max_traces == 1_000_000


def test_rows_per_mode() -> None:
    trace = private_trace()
    _, full = trace_rows(trace, bodies="full")
    assert full[0]["attributes"][GenAI.INPUT_MESSAGES][0]["content"] == PROMPT

    _, none = trace_rows(trace, bodies="none")
    assert GenAI.INPUT_MESSAGES not in none[0]["attributes"]
    assert score_rows(trace, bodies="none")[0]["comment"] is None

    _, rows = trace_rows(trace, bodies="redacted")
    root, provider = rows
    assert root["attributes"][GenAI.INPUT_MESSAGES][0]["content"] == (
        "My card is [CREDIT_CARD] and mail is [EMAIL]"
    )
    output = root["attributes"][GenAI.OUTPUT_MESSAGES][0]["content"][0]
    assert output == {"type": "text", "text": "Call [PHONE]"}
    assert root["attributes"]["error.message"] == "user [EMAIL] is over budget"
    assert provider["attributes"]["error.message"] == "upstream rejected key [API_KEY]"
    assert provider["events"][0]["attributes"] == {"error": "refused for [IP_ADDRESS]"}
    assert score_rows(trace, bodies="redacted")[0]["comment"] == "[EMAIL] hated it"
    # The in-memory trace (still visible to metrics and exporters) is left untouched.
    assert trace.root is not None
    assert trace.root.attributes[GenAI.INPUT_MESSAGES][0]["content"] == PROMPT


def test_the_retrieval_query_is_a_body_too() -> None:
    trace = Trace(kind="chat", name="chat m")
    trace.start_span("retrieve", attributes={"trellis.retrieval.query": "is ann@example.com in?"})
    trace.finish()
    _, full = trace_rows(trace, bodies="full")
    _, redacted = trace_rows(trace, bodies="redacted")
    _, none = trace_rows(trace, bodies="none")
    assert full[1]["attributes"]["trellis.retrieval.query"] == "is ann@example.com in?"
    assert redacted[1]["attributes"]["trellis.retrieval.query"] == "is [EMAIL] in?"
    assert "trellis.retrieval.query" not in (none[1]["attributes"] or {})


async def test_redacted_traces_are_stored_and_searched_redacted(db: Database) -> None:
    writer = TraceWriter(db, TracingSettings(bodies="redacted", flush_interval=0.01))
    await writer.start()
    trace = private_trace()
    writer.submit(trace)
    await writer.close()
    assert writer.written_scores == 1
    store = TraceStore(db)
    assert await store.list(text="ann@example.com") == []
    assert await store.list(text="4111") == []
    assert [r["id"] for r in await store.list(text="[CREDIT_CARD]")] == [trace.trace_id]
    stored = await store.get(trace.trace_id)
    assert stored is not None
    assert "ann@example.com" not in str(stored) and "sk-abc" not in str(stored)
    assert stored["scores"][0]["comment"] == "[EMAIL] hated it"
