"""Scheduled eval runs against a fake upstream: the first run becomes the baseline, a worse
answer regresses and fires the eval_regression alert (the webhook gets the regressed
metrics), a passing run resolves it; replicas claim a due time once; a missed due time
runs once at start-up; bad settings fail with clear errors. Time is a moved clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from pydantic import ValidationError

from trellis.cron import CronSchedule
from trellis.errors import InvalidRequestError, NotFoundError
from trellis.evals.scheduler import EvalScheduler
from trellis.evals.service import EvalService
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.observe.alerts import AlertManager
from trellis.settings import (
    AlertRule,
    AlertSettings,
    Deployment,
    EvalSchedule,
    ModelAlias,
    RetrySettings,
    Settings,
)
from trellis.store import Database
from trellis.store.tables import eval_runs, eval_schedule_runs
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.sinks import ListSink
from trellis.testing.webhook_receiver import WebhookReceiver

CASES = 5
DAY = 86400.0
#: A 02:00 UTC due time of "0 2 * * *".
T0 = CronSchedule("0 2 * * *").next_after(1_796_000_000.0)


class Model:
    """The fake model's answers to "What is a+b?": right, or off by ``error``."""

    def __init__(self) -> None:
        self.error = 0

    def __call__(self, body: dict[str, Any]) -> str:
        text = str(body["messages"][-1]["content"])
        a, b = (int(x) for x in text.rsplit(" ", 1)[-1].rstrip("?").split("+"))
        return str(a + b + self.error)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def upstream(model: Model) -> Iterator[FakeUpstream]:
    server = FakeUpstream(vendor="openai", reply=model).start()
    yield server
    server.stop()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    (tmp_path / "sums.jsonl").write_text(
        "\n".join(
            f'{{"id": "c{i}", "input": "{i}+{i}", "expected": "{2 * i}"}}' for i in range(CASES)
        )
        + "\n"
    )
    path = tmp_path / "nightly.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sums",
                "dataset": "sums.jsonl",
                "candidates": [{"name": "prod", "model": "prod", "prompt": "What is {input}?"}],
                "metrics": ["exact", "chrf"],
                "concurrency": 2,
            }
        )
    )
    return path


def gateway(upstream: FakeUpstream) -> Gateway:
    alias = ModelAlias(
        name="prod",
        deployments=[
            Deployment(provider="openai-compatible", model="prod-model", base_url=upstream.base_url)
        ],
    )
    return Gateway(Router([alias], retry=RetrySettings(attempts=1)), sink=ListSink())


def schedule(suite: Path, **extra: Any) -> EvalSchedule:
    values: dict[str, Any] = {
        "name": "nightly",
        "suite": suite,
        "cron": "0 2 * * *",
        "fail_on": ["exact:-0.1"],
    }
    return EvalSchedule(**{**values, **extra})


def scheduler(
    db: Database,
    upstream: FakeUpstream,
    suite: Path,
    clock: Clock,
    alerts: AlertManager | None = None,
) -> EvalScheduler:
    service = EvalService(gateway(upstream), db)
    service.scheduler = EvalScheduler(service, [schedule(suite)], alerts=alerts, clock=clock)
    return service.scheduler


async def close(*schedulers: EvalScheduler) -> None:
    for each in schedulers:
        await each.service.aclose()
        await each.service.runner.gateway.aclose()


async def test_baseline_regression_alert_and_resolution(
    db: Database, upstream: FakeUpstream, model: Model, suite_file: Path, hook: WebhookReceiver
) -> None:
    alerts = AlertManager(
        db,
        AlertSettings(
            rules=[AlertRule(name="nightly evals", kind="eval_regression", schedule="nightly")],
            webhook_url=hook.url,
            webhook_backoff=0.01,
        ),
    )
    clock = Clock(T0 - 30)
    nightly = scheduler(db, upstream, suite_file, clock, alerts)
    try:
        await nightly.start(background=False)
        assert await nightly.run_due() == []  # not due yet, and nothing was missed
        (listed,) = await nightly.describe()
        assert listed["next_due_at"] == T0 and listed["last"] is None

        # Due: the first run passes and becomes the baseline.
        clock.now = T0
        (claim,) = await nightly.run_due()
        assert claim.trigger == "cron" and claim.due_at == T0 and claim.status == "running"
        (first,) = await nightly.wait()
        assert first.status == "passed", first.reason
        assert first.baseline_run_id is None and "baseline" in (first.reason or "")
        run = await nightly.service.store.run(first.run_id or "")
        assert run.schedule == "nightly" and run.status == "succeeded" and run.done == CASES
        assert len(upstream.requests) == CASES
        assert await nightly.run_due() == []  # the same due time does not run twice

        # The next night the model is worse: exact match falls from 1.0 to 0.0.
        model.error = 1
        clock.now = T0 + DAY
        await nightly.run_due()
        (second,) = await nightly.wait()
        assert second.status == "regressed", second.reason
        assert second.baseline_run_id == first.run_id
        (regression,) = second.regressions or []
        assert regression["candidate"] == "prod" and regression["name"] == "exact"
        assert regression["baseline"] == 1.0 and regression["value"] == 0.0
        assert regression["fail_on"] == ["exact:-0.1"]
        assert second.comparison is not None and second.comparison["prod"]["failed"] is True

        fired = await asyncio.to_thread(hook.wait_for, lambda p: p["status"] == "firing")
        assert fired["rule"]["kind"] == "eval_regression" and fired["group"] == "nightly"
        assert fired["eval"]["outcome"] == "regressed"
        assert fired["eval"]["run_id"] == second.run_id
        assert fired["eval"]["baseline_run_id"] == first.run_id
        assert [r["name"] for r in fired["eval"]["regressions"]] == ["exact"]
        assert "exact" in fired["message"]
        (listed,) = await nightly.describe()
        assert listed["last"]["status"] == "regressed"
        assert listed["baseline_run_id"] == first.run_id  # a regressed run is no baseline

        # Fixed: the next run passes against the first (the last that passed) and resolves.
        model.error = 0
        clock.now = T0 + 2 * DAY
        await nightly.run_due()
        (third,) = await nightly.wait()
        assert third.status == "passed" and third.baseline_run_id == first.run_id
        resolved = await asyncio.to_thread(hook.wait_for, lambda p: p["status"] == "resolved")
        assert resolved["id"] == fired["id"]
        assert [a["status"] for a in await alerts.list_alerts()] == ["resolved"]
        assert [r.status for r in await nightly.history("nightly")] == [
            "passed",
            "regressed",
            "passed",
        ]
        assert len(hook.payloads) == 2  # one firing, one resolved
    finally:
        await close(nightly)
        await alerts.aclose()


async def test_a_failed_run_fires_too_and_is_no_baseline(
    db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    alerts = AlertManager(db, AlertSettings(rules=[AlertRule(name="e", kind="eval_regression")]))
    clock = Clock(T0 - 30)
    nightly = scheduler(db, upstream, suite_file, clock, alerts)
    try:
        await nightly.start(background=False)
        upstream.stop()  # every call fails: nothing is scored
        clock.now = T0
        await nightly.run_due()
        (failed,) = await nightly.wait()
        assert failed.status == "failed" and "every case failed" in (failed.reason or "")
        (alert,) = await alerts.list_alerts(state="firing")
        assert alert["group"] == "nightly" and "failed" in alert["message"]
        (listed,) = await nightly.describe()
        assert listed["baseline_run_id"] is None
    finally:
        await close(nightly)
        await alerts.aclose()


async def test_two_replicas_run_a_due_schedule_once(
    db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    other_db = Database(db.url)
    await other_db.connect()
    clock = Clock(T0 - 30)
    replicas = [
        scheduler(db, upstream, suite_file, clock),
        scheduler(other_db, upstream, suite_file, clock),
    ]
    try:
        for replica in replicas:
            await replica.start(background=False)
        clock.now = T0
        claims = await asyncio.gather(*(replica.run_due() for replica in replicas))
        assert sorted(len(won) for won in claims) == [0, 1]
        outcomes = [o for replica in replicas for o in await replica.wait()]
        assert [o.status for o in outcomes] == ["passed"]
        async with db.engine.connect() as conn:
            runs = (await conn.execute(sa.select(sa.func.count()).select_from(eval_runs))).scalar()
            rows = (
                await conn.execute(sa.select(sa.func.count()).select_from(eval_schedule_runs))
            ).scalar()
        assert runs == 1 and rows == 1 and len(upstream.requests) == CASES
    finally:
        await close(*replicas)
        await other_db.close()


async def test_a_missed_due_time_runs_once_at_start(
    db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    clock = Clock(T0 - 30)
    first = scheduler(db, upstream, suite_file, clock)
    await first.start(background=False)
    assert await first.wait() == []  # never ran: nothing counts as missed
    clock.now = T0
    await first.run_due()
    await first.wait()
    await close(first)

    # Down for three nights: one run at start-up, for the latest due time only.
    clock.now = T0 + 3 * DAY + 3600
    restarted = scheduler(db, upstream, suite_file, clock)
    await restarted.start(background=False)
    (missed,) = await restarted.wait()
    assert missed.trigger == "missed" and missed.due_at == T0 + 3 * DAY
    assert missed.status == "passed"
    await close(restarted)

    again = scheduler(db, upstream, suite_file, clock)  # another replica starting now
    await again.start(background=False)
    assert await again.wait() == []
    assert len(await again.history("nightly")) == 2
    await close(again)


async def test_run_now_and_unknown_names(
    db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    clock = Clock(T0 + 3600)
    nightly = scheduler(db, upstream, suite_file, clock)
    try:
        outcome = await nightly.run_now("nightly", wait=True)
        assert outcome.trigger == "manual" and outcome.status == "passed"
        with pytest.raises(NotFoundError, match="no eval schedule named 'weekly'"):
            await nightly.run_now("weekly")
        with pytest.raises(NotFoundError):
            await nightly.history("weekly")
    finally:
        await close(nightly)


async def test_fail_on_must_name_what_the_suite_measures(
    sqlite_db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    service = EvalService(gateway(upstream), sqlite_db)
    bad = EvalScheduler(service, [schedule(suite_file, fail_on=["rougeL:-0.02"])])
    with pytest.raises(InvalidRequestError, match="names 'rougeL', which suite"):
        await bad.start(background=False)
    await close(bad)


def test_bad_schedules_are_settings_errors(suite_file: Path, tmp_path: Path) -> None:
    def settings(**entry: Any) -> Settings:
        base = {"name": "nightly", "suite": str(suite_file), "cron": "0 2 * * *"}
        return Settings(data_dir=tmp_path, evals={"schedules": [{**base, **entry}]})

    with pytest.raises(ValidationError, match="cron '0 2 \\* \\*' has 4 field"):
        settings(cron="0 2 * *")
    with pytest.raises(ValidationError, match="out of range or malformed"):
        settings(cron="0 25 * * *")
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        settings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="does not exist"):
        settings(suite=str(tmp_path / "missing.yaml"))
    with pytest.raises(ValidationError, match="bad threshold 'rougeL<0.02'"):
        settings(fail_on=["rougeL<0.02"])
    with pytest.raises(ValidationError, match="name"):
        settings(name="has space")
    with pytest.raises(ValidationError, match="two eval schedules are named 'a'"):
        Settings(
            data_dir=tmp_path,
            evals={
                "schedules": [
                    {"name": "a", "suite": str(suite_file), "cron": "@daily"},
                    {"name": "a", "suite": str(suite_file), "cron": "@hourly"},
                ]
            },
        )
    ok = settings(timezone="Europe/Berlin", fail_on=["exact:-0.1", "latency_p95:+20%"])
    assert ok.evals.schedules[0].timezone == "Europe/Berlin"
    with pytest.raises(ValidationError, match="no threshold"):
        AlertRule(name="r", kind="eval_regression", threshold=1)
    with pytest.raises(ValidationError, match="eval_regression rules only"):
        AlertRule(name="r", kind="error_rate", threshold=0.1, schedule="nightly")


def test_cron_times_in_a_zone() -> None:
    berlin = CronSchedule("0 2 * * *", "Europe/Berlin")
    due = berlin.next_after(T0)  # 02:00 in Berlin is 01:00 UTC in December
    assert due == T0 + DAY - 3600
    assert berlin.last_at_or_before(due) == due and berlin.last_at_or_before(due - 1) == due - DAY


async def test_the_background_loop_runs_a_due_schedule(
    sqlite_db: Database, upstream: FakeUpstream, suite_file: Path
) -> None:
    clock = Clock(T0 - 30)
    service = EvalService(gateway(upstream), sqlite_db)
    nightly = EvalScheduler(service, [schedule(suite_file)], clock=clock, poll_seconds=0.05)
    service.scheduler = nightly
    try:
        await nightly.start()
        await asyncio.sleep(0.2)
        assert await nightly.history("nightly") == []  # not due yet
        clock.now = T0 + 5
        for _ in range(200):
            runs = await nightly.history("nightly")
            if runs and runs[0].status != "running":
                break
            await asyncio.sleep(0.05)
        (run,) = runs
        assert run.due_at == T0 and run.trigger == "cron" and run.status == "passed"
    finally:
        await close(nightly)


async def test_a_claim_left_running_is_judged_at_the_next_start(
    db: Database, upstream: FakeUpstream, model: Model, suite_file: Path
) -> None:
    """The process stopped after its eval run ended but before the outcome was recorded."""
    clock = Clock(T0)
    first = scheduler(db, upstream, suite_file, clock)
    baseline = await first.run_now("nightly", wait=True)
    model.error = 1
    clock.now = T0 + 60
    regressed = await first.run_now("nightly", wait=True)
    assert regressed.status == "regressed"
    await close(first)
    async with db.write() as conn:  # as if the outcome had never been written
        await conn.execute(
            sa.update(eval_schedule_runs)
            .where(eval_schedule_runs.c.id == regressed.id)
            .values(status="running", regressions=None, finished_at=None)
        )
    restarted = scheduler(db, upstream, suite_file, clock)
    await restarted.start(background=False)
    (judged,) = await restarted.wait()
    assert judged.id == regressed.id and judged.status == "regressed"
    assert judged.baseline_run_id == baseline.run_id and judged.regressions
    assert len(upstream.requests) == 2 * CASES  # judged from the stored run: nothing re-run
    await close(restarted)
