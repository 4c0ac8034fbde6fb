"""Alert rules evaluated over stored traces, the lifecycle, deduplication and the webhook."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from trellis.observe.alerts import AlertManager, evaluate_rule
from trellis.observe.notify import Notifier
from trellis.observe.tracing import Trace
from trellis.observe.writer import TraceWriter
from trellis.settings import AlertRule, AlertSettings, Settings, TracingSettings
from trellis.store.db import Database
from trellis.store.tables import alert_rules, scores
from trellis.testing.proxy import LoopbackProxy
from trellis.testing.webhook_receiver import WebhookReceiver

SECOND = 1_000_000_000


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def make_trace(
    start_ns: int,
    duration_ms: float = 10.0,
    *,
    model: str = "m",
    status: str = "ok",
    cost: float = 0.0,
    **summary: Any,
) -> Trace:
    trace = Trace(kind="chat", name="chat")
    assert trace.root is not None
    trace.root.start_ns = start_ns
    trace.root.end_ns = start_ns + int(duration_ms * 1e6)
    trace.summary.update(model=model, cost=cost, **summary)
    trace.finish(status if status == "error" else None)
    return trace


async def record(db: Database, *traces: Trace) -> None:
    writer = TraceWriter(db, TracingSettings(flush_interval=0.01))
    await writer.start()
    for trace in traces:
        writer.submit(trace)
    await writer.close()
    assert writer.write_errors == 0


def manager(db: Database, *rules: AlertRule, url: str | None = None) -> AlertManager:
    settings = AlertSettings(rules=list(rules), webhook_url=url, webhook_backoff=0.01)
    return AlertManager(db, settings)


def test_rule_validation() -> None:
    with pytest.raises(ValidationError, match="needs a threshold"):
        AlertRule(name="e", kind="error_rate")
    with pytest.raises(ValidationError, match="latency rules only"):
        AlertRule(name="c", kind="cost", threshold=1, baseline_window="1h")
    with pytest.raises(ValidationError, match="score_name"):
        AlertRule(name="s", kind="score", threshold=0.5)
    with pytest.raises(ValidationError):
        AlertRule(name="w", kind="cost", threshold=1, window="five minutes")
    assert AlertRule(name="m", kind="model_mismatch").threshold == 0.0
    assert AlertRule(name="l", kind="latency", baseline_window="1h").threshold is None
    with pytest.raises(ValidationError, match="unique"):
        AlertSettings(rules=[AlertRule(name="x", kind="model_mismatch")] * 2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("window", "0s", "longer than 0"),
        ("window", "500ms", "at least 1s"),
        ("window", "99999999999d", "at most 90d"),
        ("window", "9" * 400 + "d", "at most 90d"),
        ("baseline_window", "0s", "longer than 0"),
        ("baseline_window", "91d", "at most 90d"),
    ],
)
def test_windows_out_of_bounds_are_refused(field: str, value: str, message: str) -> None:
    """A 0s or 99999999999d window used to be accepted, then fail at every evaluation."""
    with pytest.raises(ValidationError, match=message) as raised:
        AlertRule(name="l", kind="latency", threshold=1, **{field: value})
    assert raised.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match=message):  # rules from trellis.yaml too
        Settings(alerts={"rules": [{"name": "l", "kind": "latency", "threshold": 1, field: value}]})
    assert AlertRule(name="ok", kind="latency", threshold=1, window="1s", baseline_window="90d")


async def test_stored_rules_refused_today_are_listed_not_evaluated(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule stored before the window bounds existed shows its problem and can be deleted."""
    async with db.engine.begin() as conn:
        spec = {"name": "old", "kind": "cost", "threshold": 1, "window": "0s"}
        await conn.execute(
            alert_rules.insert().values(id="rule_old", name="old", spec=spec, created_at=1.0)
        )
    alerts = manager(db)
    (rule,) = await alerts.rules()
    assert rule.problem is not None and "window" in rule.problem
    listed = rule.to_dict()
    assert listed["window"] == "0s" and "longer than 0" in listed["problem"]
    with caplog.at_level(logging.WARNING, logger="trellis.alerts"):
        await alerts.evaluate_once()
    assert "is not evaluated" in caplog.text and "could not evaluate" not in caplog.text
    await alerts.delete_rule("rule_old")
    assert await alerts.rules() == []
    await alerts.aclose()


async def test_latency_against_a_baseline(db: Database) -> None:
    now = time.time_ns()
    rule = AlertRule(
        name="slow", kind="latency", window="1m", baseline_window="10m", factor=3, min_requests=5
    )
    baseline = [make_trace(now - 5 * 60 * SECOND + i * SECOND, 100) for i in range(10)]
    await record(db, *baseline)
    current = [make_trace(now - 30 * SECOND + i * SECOND, 250) for i in range(10)]
    await record(db, *current)
    assert await evaluate_rule(db, rule, now) == {}  # 250 ms < 3 × 100 ms
    await record(db, *[make_trace(now - 20 * SECOND + i, 900) for i in range(10)])
    (reading,) = (await evaluate_rule(db, rule, now)).values()
    assert reading.value == pytest.approx(900)
    assert reading.bound == pytest.approx(300)
    # Too few requests in the window to judge.
    strict = rule.model_copy(update={"min_requests": 100})
    assert await evaluate_rule(db, strict, now) == {}


async def test_cost_per_key_and_error_rate_minimum(db: Database) -> None:
    now = time.time_ns()
    await record(
        db,
        make_trace(now - SECOND, cost=2.0, key_id="k1"),
        make_trace(now - SECOND, cost=0.5, key_id="k2"),
        make_trace(now - SECOND, status="error", key_id="k2"),
    )
    cost = AlertRule(name="c", kind="cost", threshold=1.0, window="1h", group_by="key")
    assert set(await evaluate_rule(db, cost, now)) == {"k1"}
    total = cost.model_copy(update={"group_by": "none", "threshold": 2.4})
    assert (await evaluate_rule(db, total, now))[None].value == pytest.approx(2.5)
    errors = AlertRule(name="e", kind="error_rate", threshold=0.3, window="1h")
    assert (await evaluate_rule(db, errors, now))[None].value == pytest.approx(1 / 3)
    few = errors.model_copy(update={"min_requests": 4})
    assert await evaluate_rule(db, few, now) == {}


async def test_retrieval_failures_and_model_mismatch_counts(db: Database) -> None:
    now = time.time_ns()
    failed = make_trace(now - SECOND)
    with failed.span("retrieve") as span:
        span.add_event("retrieval_failure", error="index unavailable")
    empty = make_trace(now - SECOND, retrieval_hits=0)
    found = make_trace(now - SECOND, retrieval_hits=3)
    mismatched = make_trace(now - SECOND, model="other", model_mismatch=True)
    matched = make_trace(now - SECOND, model_mismatch=False)
    old = make_trace(now - 3600 * SECOND, retrieval_hits=0, model_mismatch=True)
    await record(db, failed, empty, found, mismatched, matched, old)
    retrieval = AlertRule(name="r", kind="retrieval_failures", window="5m")
    assert (await evaluate_rule(db, retrieval, now))[None].value == 2
    assert await evaluate_rule(db, retrieval.model_copy(update={"threshold": 2}), now) == {}
    mismatch = AlertRule(name="m", kind="model_mismatch", window="5m", group_by="model")
    readings = await evaluate_rule(db, mismatch, now)
    assert list(readings) == ["other"] and readings["other"].value == 1


async def test_score_threshold(db: Database) -> None:
    now = time.time_ns()
    traces = [make_trace(now - SECOND) for _ in range(3)]
    await record(db, *traces)
    rows = [
        {"id": f"s{i}", "trace_id": t.trace_id, "name": name, "value": value,
         "source": "api", "created_at": now / 1e9 - 1}
        for i, (t, name, value) in enumerate(
            [(traces[0], "groundedness", 0.2), (traces[1], "groundedness", 0.5),
             (traces[2], "helpfulness", 0.1)]
        )
    ]  # fmt: skip
    async with db.engine.begin() as conn:
        await conn.execute(scores.insert(), rows)
    rule = AlertRule(name="g", kind="score", score_name="groundedness", threshold=0.4, window="1h")
    assert (await evaluate_rule(db, rule, now))[None].value == pytest.approx(0.35)
    assert await evaluate_rule(db, rule.model_copy(update={"threshold": 0.3}), now) == {}


async def test_lifecycle_pending_firing_resolved_with_notifications(
    db: Database, hook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trellis.alerts")
    now = time.time_ns()
    rule = AlertRule(name="errors", kind="error_rate", threshold=0.5, window="1m", for_seconds=30)
    alerts = manager(db, rule, url=hook.url)
    await record(db, *[make_trace(now - SECOND, status="error") for _ in range(3)])
    try:
        await alerts.evaluate_once(now)
        (pending,) = await alerts.list_alerts()
        assert pending["status"] == "pending" and hook.requests == 0  # not told yet
        await alerts.evaluate_once(now + 10 * SECOND)
        assert (await alerts.list_alerts())[0]["status"] == "pending"
        await alerts.evaluate_once(now + 31 * SECOND)
        await alerts.flush()
        (firing,) = await alerts.list_alerts()
        assert firing["status"] == "firing" and firing["id"] == pending["id"]
        payload = hook.wait_for(lambda p: p["status"] == "firing")
        assert payload["rule"]["name"] == "errors" and payload["value"] == 1.0
        assert payload["threshold"] == 0.5 and payload["window"] == "1m"
        # Still breaching: no second notification, still one alert.
        await alerts.evaluate_once(now + 40 * SECOND)
        await alerts.flush()
        assert hook.requests == 1 and len(await alerts.list_alerts()) == 1
        # The errors leave the window: resolved, and told.
        await alerts.evaluate_once(now + 120 * SECOND)
        await alerts.flush()
        (resolved,) = await alerts.list_alerts()
        assert resolved["status"] == "resolved" and resolved["resolved_at"] is not None
        assert hook.wait_for(lambda p: p["status"] == "resolved")["id"] == firing["id"]
        # A new breach opens a new alert; the list is newest first.
        await record(db, make_trace(now + 200 * SECOND, status="error"))
        await alerts.evaluate_once(now + 201 * SECOND)
        await alerts.evaluate_once(now + 240 * SECOND)
        listed = await alerts.list_alerts()
        assert [a["status"] for a in listed] == ["firing", "resolved"]
        assert [a["status"] for a in await alerts.list_alerts(state="resolved")] == ["resolved"]
    finally:
        await alerts.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == "trellis.alerts"]
    assert any("alert firing: errors" in m for m in messages)
    assert any("alert resolved: errors" in m for m in messages)


async def test_a_pending_alert_that_clears_is_dropped_silently(db: Database) -> None:
    now = time.time_ns()
    rule = AlertRule(name="e", kind="error_rate", threshold=0.5, window="1m", for_seconds=60)
    alerts = manager(db, rule)
    await record(db, make_trace(now - SECOND, status="error"))
    await alerts.evaluate_once(now)
    assert len(await alerts.list_alerts(state="pending")) == 1
    await alerts.evaluate_once(now + 120 * SECOND)
    assert await alerts.list_alerts() == []
    await alerts.aclose()


async def test_replicas_open_one_alert_and_notify_once(db: Database, hook: WebhookReceiver) -> None:
    now = time.time_ns()
    rule = AlertRule(name="any-mismatch", kind="model_mismatch", window="1m")
    first, second = manager(db, rule, url=hook.url), manager(db, rule, url=hook.url)
    await record(db, make_trace(now - SECOND, model_mismatch=True))
    await first.evaluate_once(now)
    await second.evaluate_once(now)
    assert len(await first.list_alerts()) == 1
    await second.evaluate_once(now + 120 * SECOND)
    await first.evaluate_once(now + 120 * SECOND)
    await first.flush()
    await second.flush()
    assert [p["status"] for p in hook.payloads] == ["firing", "resolved"]
    await first.aclose()
    await second.aclose()


async def test_api_rules_persist_and_deleting_resolves(db: Database, hook: WebhookReceiver) -> None:
    now = time.time_ns()
    alerts = manager(db, AlertRule(name="from-settings", kind="cost", threshold=100), url=hook.url)
    rule = await alerts.create_rule(AlertRule(name="mm", kind="model_mismatch", window="1m"))
    again = manager(db)  # another replica or a restart sees the stored rule
    assert [r.spec.name for r in await again.rules()] == ["mm"]
    assert [(r.source, r.spec.name) for r in await alerts.rules()] == [
        ("settings", "from-settings"),
        ("api", "mm"),
    ]
    await record(db, make_trace(now - SECOND, model_mismatch=True))
    await alerts.evaluate_once(now)
    assert (await alerts.list_alerts())[0]["status"] == "firing"
    await alerts.delete_rule(rule.id)
    assert (await alerts.list_alerts())[0]["status"] == "resolved"
    await alerts.flush()
    assert [p["status"] for p in hook.payloads] == ["firing", "resolved"]
    await alerts.aclose()
    await again.aclose()


async def test_webhook_retries_then_succeeds(hook: WebhookReceiver) -> None:
    notifier = Notifier(hook.url, attempts=4, backoff=0.01)
    hook.fail_next(2, status=503)
    assert await notifier.notify({"id": "a1", "status": "firing", "rule": {"name": "r"}})
    assert hook.requests == 3 and notifier.attempts == 3 and notifier.sent == 1
    assert hook.payloads == [{"id": "a1", "status": "firing", "rule": {"name": "r"}}]
    hook.fail_next(1, status=400)  # the receiver refuses the payload: not retried
    assert not await notifier.notify({"id": "a2", "status": "firing"})
    assert hook.requests == 4 and notifier.failed == 1
    await notifier.aclose()


async def test_webhook_goes_through_the_proxy_of_the_environment(
    hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LoopbackProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", "http://unused.test:1")  # only http_proxy applies
        monkeypatch.setenv("http_proxy", proxy.url)
        port = hook.url.rsplit(":", 1)[1].split("/", 1)[0]
        notifier = Notifier(f"http://hooks.test:{port}/alerts", attempts=1)
        assert await notifier.notify({"id": "p1", "status": "firing"})
        await notifier.aclose()
    assert proxy.request_lines == [f"POST http://hooks.test:{port}/alerts HTTP/1.1"]
    assert hook.payloads == [{"id": "p1", "status": "firing"}]


async def test_webhook_down_gives_up_after_the_attempts(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once the socket closes
    notifier = Notifier(f"http://127.0.0.1:{port}/hook", attempts=3, backoff=0.01)
    assert not await notifier.notify({"id": "a", "status": "resolved"})
    assert notifier.attempts == 3 and notifier.failed == 1
    assert any("gave up" in r.getMessage() for r in caplog.records)
    await notifier.aclose()


async def test_a_slow_webhook_does_not_hold_up_evaluation(
    db: Database, hook: WebhookReceiver
) -> None:
    now = time.time_ns()
    rules = [AlertRule(name=f"m{i}", kind="model_mismatch", window="1m") for i in range(3)]
    settings = AlertSettings(rules=rules, webhook_url=hook.url, webhook_backoff=0.3)
    alerts = AlertManager(db, settings)
    await record(db, make_trace(now - SECOND, model_mismatch=True))
    hook.fail_next(2)  # the first delivery needs 0.3 s + 0.6 s of backoff
    started = time.monotonic()
    await alerts.evaluate_once(now)
    assert time.monotonic() - started < 0.3
    assert len(await alerts.list_alerts(state="firing")) == 3
    await alerts.aclose()  # delivers what is queued before it stops
    assert sorted(p["rule"]["name"] for p in hook.payloads) == ["m0", "m1", "m2"]


async def test_guard_flags_count_traces_the_guard_flagged(db: Database) -> None:
    now = time.time_ns()
    flagged = make_trace(now - SECOND, model="a", guard_flagged=True, guard_score=0.97)
    blocked = make_trace(now - SECOND, model="b", status="error", guard_flagged=True)
    clean = make_trace(now - SECOND, model="a")
    old = make_trace(now - 3600 * SECOND, model="a", guard_flagged=True)
    await record(db, flagged, blocked, clean, old)
    rule = AlertRule(name="g", kind="guard_flags", window="5m")
    assert rule.threshold == 0.0  # any flag
    assert (await evaluate_rule(db, rule, now))[None].value == 2
    per_model = await evaluate_rule(db, rule.model_copy(update={"group_by": "model"}), now)
    assert {group: r.value for group, r in per_model.items()} == {"a": 1, "b": 1}
    assert await evaluate_rule(db, rule.model_copy(update={"threshold": 2}), now) == {}
