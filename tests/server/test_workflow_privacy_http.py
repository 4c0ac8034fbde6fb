"""``tracing.bodies`` over HTTP: the streamed step events and ``GET /v1/runs/{id}`` show
step outputs redacted (``redacted``) or left out (``none``); the run's output is kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

from .conftest import ADMIN_KEY

FLOWS = Path(__file__).resolve().parent.parent / "flows"
EMAIL = "ada@example.com"


def streamed_steps(client: httpx.Client) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    body = {"input": {"question": "Who?"}, "stream": True}
    with client.stream("POST", "/v1/workflows/chat/runs", json=body) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    steps = [e["step"] for e in events if e["type"] == "step"]
    (run,) = [e["run"] for e in events if e["type"] == "run"]
    return steps, run


@pytest.mark.parametrize("bodies", ["redacted", "none"])
def test_step_events_and_records_follow_the_bodies_setting(
    bodies: str,
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    upstream: FakeUpstream,
) -> None:
    monkeypatch.syspath_prepend(str(FLOWS))
    upstream.reply = f"Write to {EMAIL}."
    settings = make_settings(
        workflows=["session_flows:chat"], tracing={"bodies": bodies, "flush_interval": 0.05}
    )
    server = make_server(settings)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        (step,), run = streamed_steps(client)
        shown = client.get(f"/v1/runs/{run['id']}").json()
    assert run["output"] == {"answer": f"Write to {EMAIL}."}  # the caller's answer
    expected = {"answer": "Write to [EMAIL]."} if bodies == "redacted" else None
    assert step["output"] == expected
    assert shown["steps"][0]["output"] == expected
    assert EMAIL not in json.dumps(shown["steps"]) and EMAIL not in json.dumps(shown["state"])
