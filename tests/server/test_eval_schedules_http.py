"""Scheduled eval runs through a real server: list the schedules, run one by hand (admin),
read its runs; a regression fires the eval_regression alert at the webhook."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from trellis.server.routes.evals import ScheduleList, ScheduleRunList, ScheduleRunReply
from trellis.settings import Settings
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread
from trellis.testing.webhook_receiver import WebhookReceiver

from .conftest import ADMIN_KEY, gateway_settings

ANSWER = "Hello from the fake upstream"


def suite_file(tmp_path: Path) -> Path:
    (tmp_path / "hello.jsonl").write_text(
        "\n".join(
            f'{{"id": "c{i}", "input": "case {i}", "expected": "{ANSWER}"}}' for i in range(4)
        )
    )
    path = tmp_path / "nightly.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "hello",
                "dataset": "hello.jsonl",
                "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
                "metrics": ["exact"],
            }
        )
    )
    return path


def finished(http: httpx.Client, name: str, claim_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = http.get(f"/v1/evals/schedules/{name}/runs")
        assert response.status_code == 200, response.text
        runs = ScheduleRunList.model_validate(response.json()).data
        (run,) = [r for r in runs if r.id == claim_id]
        if run.status != "running":
            return run.model_dump()
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def key(http: httpx.Client, server: ServerThread, *scopes: str) -> httpx.Client:
    created = http.post("/v1/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert created.status_code == 201, created.text
    token = created.json()["key"]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})


def test_schedules_over_http(
    make_server: Callable[[Settings], ServerThread], tmp_path: Path, upstream: FakeUpstream
) -> None:
    with WebhookReceiver() as hook:
        settings = gateway_settings(
            tmp_path,
            upstream,
            evals={
                "schedules": [
                    {
                        "name": "nightly",
                        "suite": str(suite_file(tmp_path)),
                        "cron": "0 2 * * *",
                        "timezone": "Europe/Berlin",
                        "fail_on": ["exact:-0.1"],
                    }
                ]
            },
            alerts={
                "rules": [{"name": "evals", "kind": "eval_regression"}],
                "webhook_url": hook.url,
                "webhook_backoff": 0.01,
            },
        )
        server = make_server(settings)
        admin = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )
        listed = admin.get("/v1/evals/schedules")
        assert listed.status_code == 200, listed.text
        (schedule,) = ScheduleList.model_validate(listed.json()).data
        assert schedule.name == "nightly" and schedule.timezone == "Europe/Berlin"
        assert schedule.next_due_at is not None and schedule.next_due_at > time.time()
        assert schedule.last is None and schedule.baseline_run_id is None

        observer = key(admin, server, "observer")
        assert observer.get("/v1/evals/schedules").status_code == 200
        assert observer.post("/v1/evals/schedules/nightly/run").status_code == 403
        assert key(admin, server, "inference").get("/v1/evals/schedules").status_code == 403
        missing = admin.post("/v1/evals/schedules/weekly/run")
        assert missing.status_code == 404 and "weekly" in missing.json()["error"]["message"]
        assert admin.get("/v1/evals/schedules/weekly/runs").status_code == 404

        started = admin.post("/v1/evals/schedules/nightly/run")
        assert started.status_code == 200, started.text
        claim = ScheduleRunReply.model_validate(started.json())
        assert claim.status == "running" and claim.trigger == "manual"
        first = finished(admin, "nightly", claim.id)
        assert first["status"] == "passed" and first["run_id"]
        run = admin.get(f"/v1/evals/runs/{first['run_id']}").json()
        assert run["schedule"] == "nightly" and run["status"] == "succeeded"

        upstream.reply = "something else"
        second = finished(
            admin, "nightly", admin.post("/v1/evals/schedules/nightly/run").json()["id"]
        )
        assert second["status"] == "regressed" and second["baseline_run_id"] == first["run_id"]
        assert second["regressions"][0]["name"] == "exact"
        fired = hook.wait_for(lambda p: p["status"] == "firing")
        assert fired["eval"]["regressions"][0]["fail_on"] == ["exact:-0.1"]
        firing = admin.get("/v1/alerts", params={"state": "firing"}).json()["data"]
        assert [a["rule"]["kind"] for a in firing] == ["eval_regression"]
        (schedule,) = ScheduleList.model_validate(admin.get("/v1/evals/schedules").json()).data
        assert schedule.last is not None and schedule.last.status == "regressed"
        assert schedule.baseline_run_id == first["run_id"]
