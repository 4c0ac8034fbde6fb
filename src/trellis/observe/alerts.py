"""Alert rules over stored traces: evaluation, the pending → firing → resolved lifecycle,
and notification on every fire and resolve.

Rules come from settings (``alerts.rules``, kept in memory: the file is their source of
truth) and from the API (stored in ``alert_rules``). Each evaluation reads the same
numbers ``GET /v1/stats`` shows (:class:`~trellis.observe.stats.TraceStats`) or counts
flagged traces, per group, and compares them with the rule's bound.

Alerts live in the ``alerts`` table so their history survives restarts and is shared
by replicas. An alert is *open* (pending or firing) while its ``open_key`` (rule id +
group) is set; the column is unique, so when several replicas evaluate at once only
the one whose insert or update wins sends the notification — no duplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trellis.errors import InvalidRequestError, NotFoundError
from trellis.observe.notify import Notifier
from trellis.observe.query import parse_duration
from trellis.observe.stats import GROUP_COLUMNS, StatsQuery, TraceStats
from trellis.settings import AlertRule, AlertSettings
from trellis.store.db import Database
from trellis.store.tables import alert_rules, alerts, eval_schedule_runs

#: Writes the audit entry of a rule change on the change's connection (its transaction),
#: given the rule id: ``trellis.access.audit.record`` bound to an entry, passed by the API.
AuditHook = Callable[[AsyncConnection, str], Awaitable[None]]

__all__ = [
    "AlertManager",
    "Rule",
    "Reading",
    "ALERT_STATES",
    "evaluate_rule",
    "average_scores",
    "settings_rule_id",
]

logger = logging.getLogger("trellis.alerts")

ALERT_STATES = ("pending", "firing", "resolved")
_UNITS = {
    "latency": "ms (P95)",
    "cost": "USD",
    "error_rate": "error rate",
    "retrieval_failures": "traces with retrieval failures",
    "model_mismatch": "traces with a model mismatch",
    "guard_flags": "traces flagged by the prompt-injection guard",
    "score": "average score",
    "eval_regression": "regressed quantities",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule with its identity: ``source`` is ``settings`` (read-only) or ``api``."""

    id: str
    source: str
    spec: AlertRule
    created_at: float | None = None
    #: Why a stored rule is not evaluated: it was accepted before a check that now
    #: refuses it (a ``0s`` window, say). Listed so an admin can see and delete it.
    problem: str | None = None
    #: The project whose traces the rule watches; None (settings rules): every project's.
    project_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body = {
            "object": "alert_rule",
            "id": self.id,
            "source": self.source,
            "project": self.project_id,
            "created_at": self.created_at,
            **self.spec.model_dump(mode="json", warnings=False),
        }
        if self.problem is not None:
            body["problem"] = self.problem
        return body


@dataclass(frozen=True, slots=True)
class Reading:
    """One group's value over the window and the bound it crossed."""

    value: float
    bound: float
    #: A message of its own (else one is made from the rule, value and bound).
    message: str | None = None
    #: What the notification carries besides the alert (``eval``: the scheduled run).
    details: Mapping[str, Any] | None = None


def settings_rule_id(name: str) -> str:
    """Stable across restarts and replicas, so alerts of a settings rule stay attached."""
    return "cfg-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _window_ns(value: str, param: str) -> int:
    return int(parse_duration(value, param) * 1e9)


def _filters(spec: AlertRule, project_id: str | None) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (
        ("model", spec.model),
        ("key_id", spec.key_id),
        ("kind", spec.trace_kind),
        ("project_id", project_id),
    ):
        if value is not None:
            clauses.append(f"t.{column} = :{column}")
            params[column] = value
    return clauses, params


async def _stats(
    db: Database, spec: AlertRule, since_ns: int, until_ns: int, project_id: str | None
) -> dict[Any, Any]:
    query = StatsQuery(
        since_ns=since_ns,
        until_ns=until_ns,
        bucket_ns=until_ns - since_ns,
        group_by=spec.group_by,
        model=spec.model,
        key_id=spec.key_id,
        kind=spec.trace_kind,
        project_id=project_id,
    )
    return {entry["group"]: entry["totals"] for entry in await TraceStats(db).compute(query)}


def _flag_condition(db: Database, kind: str) -> str:
    """SQL true for a trace flagged by a counting rule (dialect-specific JSON access)."""
    if kind == "model_mismatch":
        if db.is_sqlite:
            return "json_extract(t.attributes, '$.model_mismatch') = 1"
        return "(t.attributes ->> 'model_mismatch') = 'true'"
    if kind == "guard_flags":
        if db.is_sqlite:
            return "json_extract(t.attributes, '$.guard_flagged') = 1"
        return "(t.attributes ->> 'guard_flagged') = 'true'"
    # Retrieval failures: a span event named retrieval_failure, or a retrieval with no hits.
    if db.is_sqlite:
        hits = "json_extract(t.attributes, '$.retrieval_hits') = 0"
    else:
        hits = "(t.attributes ->> 'retrieval_hits') = '0'"
    event = (
        "EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.id "
        "AND CAST(s.events AS TEXT) LIKE '%\"retrieval_failure\"%')"
    )
    return f"({hits} OR {event})"


async def _count_flagged(
    db: Database, spec: AlertRule, since_ns: int, until_ns: int, project_id: str | None
) -> dict[Any, float]:
    group = GROUP_COLUMNS[spec.group_by]
    group = "CAST(NULL AS TEXT)" if group == "NULL" else f"t.{group}"
    clauses, params = _filters(spec, project_id)
    clauses += ["t.start_ns >= :since", "t.start_ns < :until", _flag_condition(db, spec.kind)]
    params.update(since=since_ns, until=until_ns)
    sql = f"SELECT {group} AS g, count(*) FROM traces t WHERE {' AND '.join(clauses)} GROUP BY g"
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return {g: float(n) for g, n in rows}


async def average_scores(
    db: Database, spec: AlertRule, since_ns: int, until_ns: int, project_id: str | None = None
) -> dict[Any, tuple[float, int]]:
    """(average, count) of the scores named ``spec.score_name`` given within the window, per
    group of the scored traces; the window is on the score's time, when the judgement came."""
    group = GROUP_COLUMNS[spec.group_by]
    group = "CAST(NULL AS TEXT)" if group == "NULL" else f"t.{group}"
    clauses, params = _filters(spec, project_id)
    clauses += ["sc.name = :score_name", "sc.created_at >= :since", "sc.created_at < :until"]
    params.update(score_name=spec.score_name, since=since_ns / 1e9, until=until_ns / 1e9)
    sql = (
        f"SELECT {group} AS g, avg(sc.value), count(*) FROM scores sc "
        f"JOIN traces t ON t.id = sc.trace_id WHERE {' AND '.join(clauses)} GROUP BY g"
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), params)).all()
    return {g: (float(avg), int(n)) for g, avg, n in rows}


async def eval_regressions(db: Database, spec: AlertRule) -> dict[Any, Reading]:
    """Schedules (the groups) whose latest finished scheduled eval run regressed or failed.

    Reads ``eval_schedule_runs``, which ``trellis.evals.scheduler`` writes; the reading's
    value is the number of quantities past a ``fail_on`` threshold (0 for a failed run).
    """
    finished = ("passed", "regressed", "failed")
    latest = (
        select(
            eval_schedule_runs.c.schedule.label("schedule"),
            func.max(eval_schedule_runs.c.finished_at).label("finished_at"),
        )
        .where(eval_schedule_runs.c.status.in_(finished))
        .group_by(eval_schedule_runs.c.schedule)
    )
    if spec.schedule is not None:
        latest = latest.where(eval_schedule_runs.c.schedule == spec.schedule)
    sub = latest.subquery()
    query = select(eval_schedule_runs).join(
        sub,
        (eval_schedule_runs.c.schedule == sub.c.schedule)
        & (eval_schedule_runs.c.finished_at == sub.c.finished_at),
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    breaching: dict[Any, Reading] = {}
    for row in rows:
        if row["status"] == "passed":
            continue
        regressions = list(row["regressions"] or [])
        message = (
            f"eval_regression: schedule {row['schedule']} regressed against baseline run "
            f"{row['baseline_run_id']}: {row['reason']}"
            if row["status"] == "regressed"
            else f"eval_regression: schedule {row['schedule']} failed: {row['reason']}"
        )
        details = {
            "schedule": row["schedule"],
            "outcome": row["status"],
            "run_id": row["run_id"],
            "baseline_run_id": row["baseline_run_id"],
            "due_at": row["due_at"],
            "finished_at": row["finished_at"],
            "reason": row["reason"],
            "regressions": regressions,
        }
        breaching[row["schedule"]] = Reading(float(len(regressions)), 0.0, message, details)
    return breaching


async def evaluate_rule(
    db: Database, spec: AlertRule, now_ns: int, project_id: str | None = None
) -> dict[Any, Reading]:
    """The groups (None when ungrouped) that breach ``spec`` over the window ending at now,
    over ``project_id``'s traces (None: every project's)."""
    if spec.kind == "eval_regression":
        # Scheduled runs are the operator's (settings), kept in the default project.
        if project_id not in (None, "default"):
            return {}
        return await eval_regressions(db, spec)
    window = _window_ns(spec.window, "window")
    since = now_ns - window
    breaching: dict[Any, Reading] = {}
    if spec.kind in ("model_mismatch", "retrieval_failures", "guard_flags"):
        bound = spec.threshold or 0.0
        for group, count in (await _count_flagged(db, spec, since, now_ns, project_id)).items():
            if count > bound:
                breaching[group] = Reading(count, bound)
        return breaching
    if spec.kind == "score":
        bound = spec.threshold or 0.0
        for group, (average, count) in (
            await average_scores(db, spec, since, now_ns, project_id)
        ).items():
            if count >= spec.min_requests and average < bound:
                breaching[group] = Reading(average, bound)
        return breaching
    current = await _stats(db, spec, since, now_ns, project_id)
    baseline: dict[Any, Any] = {}
    if spec.kind == "latency" and spec.baseline_window is not None:
        base_since = since - _window_ns(spec.baseline_window, "baseline_window")
        baseline = await _stats(db, spec, base_since, since, project_id)
    for group, totals in current.items():
        if totals["count"] < spec.min_requests:
            continue
        if spec.kind == "latency":
            value = totals["latency_ms"]["p95"]
            limit = _latency_bound(spec, baseline.get(group))
            if value is None or limit is None:
                continue
        elif spec.kind == "cost":
            value, limit = totals["cost"], spec.threshold
        else:
            value, limit = totals["error_rate"], spec.threshold
        assert limit is not None
        if value > limit:
            breaching[group] = Reading(float(value), float(limit))
    return breaching


def _latency_bound(spec: AlertRule, baseline: Mapping[str, Any] | None) -> float | None:
    """Baseline P95 × factor (``threshold``, when also set, is a floor under it so a near-zero
    baseline does not page on noise); just ``threshold`` without a baseline rule."""
    if spec.baseline_window is None:
        return spec.threshold
    if baseline is None or baseline["count"] < spec.min_requests:
        return None  # nothing to compare with yet
    p95 = baseline["latency_ms"]["p95"]
    if p95 is None:
        return None
    bound = float(p95) * spec.factor
    return max(bound, spec.threshold) if spec.threshold is not None else bound


def _stored_rule(row: Mapping[Any, Any]) -> Rule:
    """A rule from ``alert_rules``; one that today's checks refuse is kept, with its problem."""
    try:
        spec = AlertRule.model_validate(row["spec"])
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'rule'}: {error['msg']}"
            for error in exc.errors(include_input=False)
        )
        spec = AlertRule.model_construct(**row["spec"])
        return Rule(row["id"], "api", spec, row["created_at"], problem, row["project_id"])
    return Rule(row["id"], "api", spec, row["created_at"], project_id=row["project_id"])


def _open_key(rule_id: str, group: Any) -> str:
    return f"{rule_id}\x1f{'' if group is None else group}"


def _alert_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "object": "alert",
        "id": row["id"],
        "status": row["state"],
        "rule": {"id": row["rule_id"], "name": row["rule_name"], "kind": row["kind"]},
        "group": row["group_key"],
        "value": row["value"],
        "threshold": row["threshold"],
        "message": row["message"],
        "started_at": row["started_at"],
        "fired_at": row["fired_at"],
        "resolved_at": row["resolved_at"],
        "updated_at": row["updated_at"],
    }


class AlertManager:
    """Owns the rules, evaluates them (periodically, or once via :meth:`evaluate_once`),
    moves alerts through their lifecycle and notifies on fire and resolve."""

    def __init__(
        self, db: Database, settings: AlertSettings, notifier: Notifier | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.notifier = notifier or Notifier(
            settings.webhook_url,
            attempts=settings.webhook_attempts,
            backoff=settings.webhook_backoff,
            timeout=settings.webhook_timeout,
        )
        self._settings_rules = {
            settings_rule_id(spec.name): Rule(settings_rule_id(spec.name), "settings", spec)
            for spec in settings.rules
        }
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Notifications wait here for one delivery task, in transition order: a webhook that
        # is down (retries, timeouts) then delays other notifications, never evaluation or
        # an API call that resolves alerts.
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._courier: asyncio.Task[None] | None = None

    # --- rules ------------------------------------------------------------------

    async def rules(self, project_id: str | None = None) -> list[Rule]:
        """Settings rules first, then API rules oldest first; with ``project_id``, only
        that project's API rules. Settings rules watch every project's traces (they are
        the deployment's) and are listed, with their alerts, in the default project."""
        query = select(alert_rules).order_by(alert_rules.c.created_at)
        if project_id is not None:
            query = query.where(alert_rules.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            stored = [_stored_rule(row) for row in (await conn.execute(query)).mappings()]
        if project_id not in (None, "default"):
            return stored
        return [*self._settings_rules.values(), *stored]

    async def create_rule(
        self, spec: AlertRule, project_id: str = "default", audit: AuditHook | None = None
    ) -> Rule:
        if any(rule.spec.name == spec.name for rule in self._settings_rules.values()):
            raise InvalidRequestError(
                f"A rule named {spec.name!r} is defined in settings.",
                param="name",
                code="duplicate_name",
            )
        rule = Rule("rule_" + os.urandom(12).hex(), "api", spec, time.time(), project_id=project_id)
        values = {
            "id": rule.id,
            "name": spec.name,
            "spec": spec.model_dump(mode="json"),
            "created_at": rule.created_at,
            "project_id": project_id,
        }
        try:
            async with self.db.write() as conn:
                await conn.execute(alert_rules.insert().values(**values))
                if audit is not None:
                    await audit(conn, rule.id)
        except IntegrityError:
            raise InvalidRequestError(
                f"A rule named {spec.name!r} already exists.", param="name", code="duplicate_name"
            ) from None
        return rule

    async def delete_rule(
        self, rule_id: str, project_id: str | None = None, audit: AuditHook | None = None
    ) -> None:
        """Delete an API rule (of ``project_id`` when given, else 404); its open alerts are
        resolved (and notified) at once."""
        if rule_id in self._settings_rules and project_id in (None, "default"):
            raise InvalidRequestError(
                "This rule is defined in settings; remove it from the configuration instead.",
                code="read_only_rule",
            )
        condition = alert_rules.c.id == rule_id
        if project_id is not None:
            condition = condition & (alert_rules.c.project_id == project_id)
        async with self.db.write() as conn:
            deleted = await conn.execute(delete(alert_rules).where(condition))
            if deleted.rowcount and audit is not None:
                await audit(conn, rule_id)
        if deleted.rowcount == 0:
            raise NotFoundError(f"No alert rule with id `{rule_id}`.")
        async with self._lock:
            await self._resolve_orphans({r.id for r in await self.rules()})

    # --- alerts -----------------------------------------------------------------

    async def list_alerts(
        self, state: str | None = None, limit: int = 100, project_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first (``project_id``: only the alerts of that project's rules)."""
        if state is not None and state not in ALERT_STATES:
            raise InvalidRequestError(
                f"state must be one of {', '.join(ALERT_STATES)}, not {state!r}",
                param="state",
                code="invalid_value",
            )
        query = select(alerts).order_by(alerts.c.started_at.desc(), alerts.c.id.desc())
        if state is not None:
            query = query.where(alerts.c.state == state)
        if project_id is not None:
            query = query.where(alerts.c.project_id == project_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [_alert_dict(dict(row)) for row in rows]

    # --- evaluation ---------------------------------------------------------------

    async def evaluate_once(self, now_ns: int | None = None) -> None:
        """Evaluate every enabled rule once and apply the transitions.

        One rule failing (a bad query, a database hiccup) is logged and does not stop the
        others; the next evaluation tries again.
        """
        async with self._lock:
            now_ns = time.time_ns() if now_ns is None else now_ns
            rules = await self.rules()
            for rule in rules:
                if rule.problem is not None:
                    logger.warning(
                        "alert rule %r is not evaluated: %s; delete it and create it again",
                        rule.spec.name,
                        rule.problem,
                    )
                    continue
                try:
                    breaching = (
                        await evaluate_rule(self.db, rule.spec, now_ns, rule.project_id)
                        if rule.spec.enabled
                        else {}
                    )
                    await self._apply(rule, breaching, now_ns / 1e9)
                except Exception:  # logged: one bad rule must not silence the others
                    logger.exception("could not evaluate alert rule %r", rule.spec.name)
            await self._resolve_orphans({rule.id for rule in rules})

    async def _apply(self, rule: Rule, breaching: dict[Any, Reading], now: float) -> None:
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(alerts).where(
                        alerts.c.rule_id == rule.id, alerts.c.open_key.is_not(None)
                    )
                )
            ).mappings()
            open_alerts = {row["group_key"]: dict(row) for row in rows}
        for group, reading in breaching.items():
            group_key = None if group is None else str(group)
            row = open_alerts.pop(group_key, None)
            if row is None:
                await self._open(rule, group_key, reading, now)
            elif row["state"] == "pending" and now - row["started_at"] >= rule.spec.for_seconds:
                await self._transition(row, "pending", "firing", reading, now, rule.spec)
            else:
                await self._touch(row["id"], reading, now)
        for row in open_alerts.values():
            await self._close(row, now, rule.spec)

    def _message(self, spec: AlertRule, reading: Reading) -> str:
        if reading.message is not None:
            return reading.message
        verb = "is below" if spec.kind == "score" else "exceeds"
        what = f"{spec.score_name} " if spec.kind == "score" else ""
        return (
            f"{spec.kind}: {what}{reading.value:.4g} {_UNITS[spec.kind]} over {spec.window} "
            f"{verb} {reading.bound:.4g}"
        )

    async def _open(self, rule: Rule, group: str | None, reading: Reading, now: float) -> None:
        state = "firing" if rule.spec.for_seconds == 0 else "pending"
        values = {
            "id": "alert_" + os.urandom(12).hex(),
            "rule_id": rule.id,
            "rule_name": rule.spec.name,
            "kind": rule.spec.kind,
            "group_key": group,
            "state": state,
            "value": reading.value,
            "threshold": reading.bound,
            "message": self._message(rule.spec, reading),
            "started_at": now,
            "fired_at": now if state == "firing" else None,
            "resolved_at": None,
            "updated_at": now,
            "open_key": _open_key(rule.id, group),
            # Settings rules (every project's traces) keep their alerts in the default one.
            "project_id": rule.project_id or "default",
        }
        try:
            async with self.db.write() as conn:
                await conn.execute(alerts.insert().values(**values))
        except IntegrityError:
            return  # another replica opened it first and notifies
        if state == "firing":
            self._notify(self._payload(values, rule.spec, reading))

    async def _transition(
        self,
        row: dict[str, Any],
        old: str,
        new: str,
        reading: Reading | None,
        now: float,
        spec: AlertRule | None = None,
    ) -> None:
        changes: dict[str, Any] = {"state": new, "updated_at": now}
        if reading is not None:
            changes.update(value=reading.value, threshold=reading.bound)
        if new == "firing":
            changes["fired_at"] = now
        if new == "resolved":
            changes.update(resolved_at=now, open_key=None)
        async with self.db.write() as conn:
            result = await conn.execute(
                update(alerts)
                .where(alerts.c.id == row["id"], alerts.c.state == old)
                .values(**changes)
            )
        if result.rowcount == 1:  # the replica that made the change notifies
            self._notify(self._payload({**row, **changes}, spec, reading))

    async def _touch(self, alert_id: str, reading: Reading, now: float) -> None:
        changes: dict[str, Any] = {
            "value": reading.value,
            "threshold": reading.bound,
            "updated_at": now,
        }
        if reading.message is not None:  # a later regressed run: its own description
            changes["message"] = reading.message
        async with self.db.write() as conn:
            await conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.open_key.is_not(None))
                .values(**changes)
            )

    async def _close(self, row: dict[str, Any], now: float, spec: AlertRule | None = None) -> None:
        if row["state"] == "pending":
            # Never fired, so nobody was told: it just goes away.
            async with self.db.write() as conn:
                await conn.execute(
                    delete(alerts).where(alerts.c.id == row["id"], alerts.c.state == "pending")
                )
            return
        await self._transition(row, "firing", "resolved", None, now, spec)

    async def _resolve_orphans(self, rule_ids: set[str]) -> None:
        """Close open alerts whose rule is gone (deleted, or removed from settings)."""
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(select(alerts).where(alerts.c.open_key.is_not(None)))
            ).mappings()
            orphans = [dict(row) for row in rows if row["rule_id"] not in rule_ids]
        now = time.time()
        for row in orphans:
            await self._close(row, now)

    def _payload(
        self, row: Mapping[str, Any], spec: AlertRule | None, reading: Reading | None = None
    ) -> dict[str, Any]:
        payload = _alert_dict(row)
        if spec is not None and spec.kind != "eval_regression":
            payload["window"] = spec.window
        if reading is not None and reading.details is not None:
            payload["eval"] = dict(reading.details)
        return payload

    # --- notification delivery ------------------------------------------------------

    def send(self, payload: dict[str, Any]) -> None:
        """Deliver an alert raised outside the rules (a budget threshold, by the limiter)
        through the same log line and webhook, in order with the rules' notifications."""
        self._notify(payload)

    def _notify(self, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait(payload)
        if self._courier is None or self._courier.done():
            self._courier = asyncio.create_task(self._deliver(), name="trellis-alert-notify")

    async def _deliver(self) -> None:
        while True:
            payload = await self._outbox.get()
            try:
                await self.notifier.notify(payload)
            except Exception:  # logged: one broken notification must not stop the rest
                logger.exception("could not deliver alert notification %s", payload.get("id"))
            finally:
                self._outbox.task_done()

    async def flush(self) -> None:
        """Wait until every notification so far has been delivered (or given up on)."""
        await self._outbox.join()

    # --- background task ----------------------------------------------------------

    def start(self) -> None:
        """Evaluate every ``interval_seconds`` in the background until :meth:`aclose`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trellis-alerts")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_seconds)
            try:
                await self.evaluate_once()
            except Exception:  # logged: the evaluator must outlive a database outage
                logger.exception("alert evaluation failed")

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop evaluating, then deliver pending notifications for up to ``timeout`` seconds."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._courier is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except TimeoutError:
                logger.error(
                    "%d alert notification(s) undelivered at shutdown", self._outbox.qsize()
                )
            self._courier.cancel()
            await asyncio.wait([self._courier])
            self._courier = None
        await self.notifier.aclose()
