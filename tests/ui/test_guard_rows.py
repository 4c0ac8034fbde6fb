"""The Guard page's rows from stored spans: the input guard's flag (its ``guard`` span, or
only the root's ``guard_flagged`` events), PII with the privacy action, output hits."""

from __future__ import annotations

from typing import Any

from trellis.ui.pages.guard import details
from trellis.ui.web import ENV


def row(**summary: Any) -> dict[str, Any]:
    return {
        "id": "0123456789abcdef0123456789abcdef",
        "start_ns": 1_700_000_000 * 10**9,
        "model": "m",
        "key_id": "key_1",
        "status": "ok",
        "attributes": summary,
    }


def root(**attributes: Any) -> dict[str, Any]:
    events = attributes.pop("events", [])
    return {"name": "chat m", "parent_id": None, "attributes": attributes, "events": events}


def test_an_input_guard_flag_shows_score_mode_and_categories() -> None:
    found = details(
        row(guard_flagged=True, guard_score=0.91),
        [
            root(
                events=[
                    {
                        "name": "guard_flagged",
                        "attributes": {"source": "input", "action": "flag", "score": 0.91},
                    }
                ]
            ),
            {
                "name": "guard",
                "parent_id": "a",
                "attributes": {
                    "trellis.guard.flagged": True,
                    "trellis.guard.score": 0.91,
                    "trellis.guard.mode": "flag",
                    "trellis.guard.categories": ["override", "exfiltration"],
                },
                "events": None,
            },
        ],
    )
    assert found["input"] == {
        "score": 0.91,
        "mode": "flag",
        "categories": ["override", "exfiltration"],
        "sources": ["input"],
    }
    assert found["pii_kinds"] == [] and found["output"] == {}


def test_a_flag_on_retrieved_passages_only_comes_from_the_root_events() -> None:
    event = {"source": "retrieved", "action": "block", "categories": ["override"]}
    found = details(
        row(guard_flagged=True, guard_score=0.8),
        [root(events=[{"name": "guard_flagged", "attributes": event}])],
    )
    assert found["input"] == {
        "score": 0.8,
        "mode": "block",
        "categories": ["override"],
        "sources": ["retrieved"],
    }


def test_pii_and_output_hits_and_the_rendered_row() -> None:
    summary = {"pii_kinds": ["email"], "guard_output": {"redact": 1}}
    found = details(
        row(**summary),
        [
            root(**{"trellis.guard.output.hits": ["pii:email"]}),
            {
                "name": "privacy",
                "parent_id": "a",
                "attributes": {"trellis.privacy.action": "redact"},
                "events": None,
            },
        ],
    )
    assert found["privacy_action"] == "redact" and found["output_hits"] == ["pii:email"]
    flagged = {**row(guard_flagged=True), "guard": {**found, "input": None}}
    flagged["guard"]["input"] = {"score": 0.9, "mode": "flag", "categories": ["override"]}
    flagged["guard"]["input"]["sources"] = ["input"]
    html = ENV.get_template("guard/index.html").render(
        request=None,
        me=None,
        csrf="",
        rows=[flagged],
        counts={"traces": 1, "pii": {"email": 1}, "output": {}, "input_flagged": 1},
        window="24h",
        windows=["24h"],
        kind="any",
        kinds=["any"],
        next_cursor=None,
        title="Guard",
    )
    body = html.split('id="guarded"')[1]
    assert "flagged</span> 0.90" in body and "override" in body and "in input" in body
    assert "pii:email" in body and ">email</span>" in body
