"""Scheduled eval runs: the server runs each ``evals.schedules`` suite at its cron times and
compares the run with the schedule's last passing run, so a regression raises an alert
(the ``eval_regression`` rule kind of ``trellis.observe.alerts``).

One scheduled run:

1. **claim** the (schedule, due time) in ``eval_schedule_runs``: the pair is unique, so
   of several replicas only the one whose insert wins runs it;
2. **run** the suite (read from its file at that moment, the dataset beside it or stored)
   through :class:`~trellis.evals.service.EvalService`: an ordinary eval run, tagged
   with the schedule's name, kept like any other;
3. **compare** every candidate with the same candidate of the baseline run, the last run
   of this schedule that passed, with the schedule's ``fail_on`` thresholds (the
   ``trellis eval compare --fail-on`` grammar). Without a baseline the run passes and
   becomes it;
4. **record** the outcome (``passed``, ``regressed`` with the breached quantities, or
   ``failed`` with the reason), then evaluate the alert rules at once.

A due time missed while no server ran is run once at start-up when the schedule has run
before and its latest run is older than that due time: one run, not one per missed day.
Time comes from ``clock`` (POSIX seconds), so tests move it instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from trellis.cron import CronSchedule
from trellis.errors import ConflictError, InvalidRequestError, NotFoundError, TrellisError
from trellis.evals.compare import RUN_STATISTICS, compare_reports
from trellis.evals.runner import resolve_dataset
from trellis.evals.schedule_store import ScheduleRun, ScheduleStore
from trellis.evals.suite import load_suite
from trellis.settings import EvalSchedule
from trellis.thresholds import parse_threshold

if TYPE_CHECKING:
    from trellis.evals.service import EvalService
    from trellis.observe.alerts import AlertManager

__all__ = ["Clock", "EvalScheduler", "describe_schedules"]

log = logging.getLogger("trellis.evals.scheduler")

#: POSIX seconds now.
Clock = Callable[[], float]

#: A claim without an eval run this long after it was made was left by a process that
#: stopped while loading the suite (starting a run takes well under a second).
_START_GRACE_SECONDS = 600.0


class EvalScheduler:
    """Runs the enabled schedules when due (:meth:`start`), or one at once (:meth:`run_now`)."""

    def __init__(
        self,
        service: EvalService,
        schedules: Sequence[EvalSchedule],
        *,
        alerts: AlertManager | None = None,
        clock: Clock = time.time,
        poll_seconds: float = 30.0,
    ) -> None:
        self.service = service
        self.store = ScheduleStore(service.store.db)
        self.schedules = {schedule.name: schedule for schedule in schedules}
        self.crons = {s.name: CronSchedule(s.cron, s.timezone) for s in schedules}
        self.alerts = alerts
        self.clock = clock
        self.poll_seconds = poll_seconds
        #: The next due time each enabled schedule waits for (set by :meth:`start`).
        self._next: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        #: Scheduled runs in flight in this process, by claim id.
        self._tasks: dict[str, asyncio.Task[ScheduleRun]] = {}

    # --- schedules ----------------------------------------------------------------

    def schedule(self, name: str) -> EvalSchedule:
        try:
            return self.schedules[name]
        except KeyError:
            known = ", ".join(sorted(self.schedules)) or "none are configured"
            raise NotFoundError(
                f"no eval schedule named {name!r} (schedules: {known})", param="name"
            ) from None

    def check(self) -> None:
        """Load every schedule's suite now and check its ``fail_on`` names against the
        suite's metrics, so a broken schedule fails the start instead of a night's run."""
        for schedule in self.schedules.values():
            suite, _ = load_suite(schedule.suite)
            names = {metric.name for metric in self.service.runner.metrics(suite)}
            names.update(RUN_STATISTICS)
            for text in schedule.fail_on:
                threshold = parse_threshold(text)
                if threshold.name not in names:
                    raise InvalidRequestError(
                        f"eval schedule {schedule.name!r}: fail_on {text!r} names "
                        f"{threshold.name!r}, which suite {str(schedule.suite)!r} does not "
                        f"measure (choose from {', '.join(sorted(names))})",
                        param="evals.schedules",
                    )

    async def describe(self) -> list[dict[str, Any]]:
        """Each schedule: its settings, next due time, last outcome and baseline run."""
        return await describe_schedules(self.store, self.schedules.values(), self.clock())

    async def history(self, name: str, limit: int = 50) -> list[ScheduleRun]:
        """The schedule's runs, latest first."""
        self.schedule(name)
        return await self.store.history(name, limit=limit)

    # --- running ------------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        """Finish what a previous life left, run a missed due time once, then (unless
        ``background`` is false) look at the clock until :meth:`aclose`."""
        self.check()
        now = self.clock()
        await self._adopt_unfinished()
        for name, schedule in self.schedules.items():
            if not schedule.enabled:
                continue
            cron = self.crons[name]
            self._next[name] = cron.next_after(now)
            last_due = cron.last_at_or_before(now)
            latest = await self.store.latest_due(name)
            if latest is not None and latest < last_due:
                log.info("eval schedule %s missed its run due at %s: running it", name, last_due)
                await self._claim_and_spawn(name, last_due, "missed")
        if background and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="trellis-eval-schedules")

    async def run_due(self, now: float | None = None) -> list[ScheduleRun]:
        """Claim and start every schedule due by ``now``; the claims this process won.

        A schedule overdue by several due times (the process was busy or asleep) runs
        once, for the latest of them.
        """
        now = self.clock() if now is None else now
        started = []
        for name, due in list(self._next.items()):
            if due > now:
                continue
            cron = self.crons[name]
            self._next[name] = cron.next_after(now)
            claim = await self._claim_and_spawn(name, cron.last_at_or_before(now), "cron")
            if claim is not None:
                started.append(claim)
        return started

    async def run_now(self, name: str, *, wait: bool = False) -> ScheduleRun:
        """Run a schedule at once (enabled or not), as at a due time; with ``wait``, its
        outcome, else its ``running`` claim."""
        self.schedule(name)
        claim = await self._claim_and_spawn(name, self.clock(), "manual")
        if claim is None:  # two runs by hand in the same instant
            raise ConflictError(
                f"eval schedule {name!r} was started at this very moment already; try again",
                param="name",
            )
        if wait:
            return await self._tasks[claim.id] if claim.id in self._tasks else claim
        return await self.store.get(claim.id)

    async def wait(self) -> list[ScheduleRun]:
        """Until the scheduled runs in flight in this process are finished; their outcomes."""
        tasks = list(self._tasks.values())
        return list(await asyncio.gather(*tasks)) if tasks else []

    async def _claim_and_spawn(self, name: str, due: float, trigger: str) -> ScheduleRun | None:
        claim = await self.store.claim(name, due, trigger)
        if claim is None:
            log.info("eval schedule %s due at %s: claimed by another process", name, due)
            return None
        self._spawn(claim, self._execute(claim))
        return claim

    def _spawn(self, claim: ScheduleRun, work: Any) -> None:
        task: asyncio.Task[ScheduleRun] = asyncio.create_task(
            work, name=f"eval-schedule-{claim.schedule}"
        )
        self._tasks[claim.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(claim.id, None))

    async def _execute(self, claim: ScheduleRun) -> ScheduleRun:
        schedule = self.schedule(claim.schedule)
        try:
            suite, base = load_suite(schedule.suite)
            dataset = await resolve_dataset(suite.dataset, base, self.service.store)
            run_id = await self.service.start_suite(suite, dataset, schedule=schedule.name)
        except (TrellisError, OSError, ValueError) as exc:
            return await self._finished(claim, "failed", reason=f"could not start: {_why(exc)}")
        except Exception as exc:  # recorded on the claim: a broken night must show
            log.exception("eval schedule %s could not start", schedule.name)
            return await self._finished(claim, "failed", reason=f"could not start: {_why(exc)}")
        await self.store.set_run(claim.id, run_id)
        return await self._conclude(claim, run_id)

    async def _conclude(self, claim: ScheduleRun, run_id: str) -> ScheduleRun:
        """Wait for the eval run, compare it with the baseline and record the outcome."""
        schedule = self.schedule(claim.schedule)
        try:
            await self.service.wait(run_id)
            record = await self.service.store.run(run_id)
            if record.status != "succeeded":
                reason = f"eval run {run_id} {record.status}: {record.error or 'no error recorded'}"
                return await self._finished(claim, "failed", reason=reason)
            report = await self.service.report(run_id)
            unscored = _unscored(report)
            if unscored is not None:
                return await self._finished(claim, "failed", reason=unscored)
            baseline = await self.store.baseline(schedule.name)
            base_report = None
            if baseline is not None and baseline.run_id is not None:
                try:
                    base_report = await self.service.report(baseline.run_id)
                except NotFoundError:
                    base_report = None
            if baseline is None or base_report is None:
                why = (
                    "first passing run: it is the baseline"
                    if baseline is None
                    else f"the baseline run {baseline.run_id} is gone: this run is the baseline"
                )
                return await self._finished(claim, "passed", reason=why)
            return await self._compare(claim, schedule, base_report, report, baseline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("eval schedule %s: run %s could not be judged", schedule.name, run_id)
            return await self._finished(claim, "failed", reason=_why(exc))

    async def _compare(
        self,
        claim: ScheduleRun,
        schedule: EvalSchedule,
        base_report: dict[str, Any],
        report: dict[str, Any],
        baseline: ScheduleRun,
    ) -> ScheduleRun:
        thresholds = [parse_threshold(text) for text in schedule.fail_on]
        names = [name for name in report["candidates"] if name in base_report["candidates"]]
        if not names:
            return await self._finished(
                claim,
                "failed",
                reason="no candidate of the suite is in the baseline run: nothing to compare",
                baseline_run_id=baseline.run_id,
            )
        comparison: dict[str, Any] = {}
        regressions: list[dict[str, Any]] = []
        for name in names:
            try:
                result = compare_reports(
                    base_report,
                    report,
                    thresholds=thresholds,
                    baseline_candidate=name,
                    candidate_candidate=name,
                )
            except InvalidRequestError as exc:
                return await self._finished(
                    claim,
                    "failed",
                    reason=f"candidate {name!r}: {exc.message}",
                    baseline_run_id=baseline.run_id,
                )
            comparison[name] = result.to_dict()
            regressions += [
                {
                    "candidate": name,
                    "name": delta.name,
                    "baseline": delta.baseline,
                    "value": delta.candidate,
                    "delta": delta.delta,
                    "ci95": [delta.low, delta.high],
                    "fail_on": delta.failed,
                }
                for delta in result.deltas
                if delta.failed
            ]
        if regressions:
            reason = "; ".join(
                f"{r['candidate']}: {r['name']} {r['baseline']:.4g} -> {r['value']:.4g} "
                f"({', '.join(r['fail_on'])})"
                for r in regressions
            )
            status = "regressed"
        else:
            reason, status = "no fail_on threshold passed", "passed"
        return await self._finished(
            claim,
            status,
            reason=reason,
            baseline_run_id=baseline.run_id,
            comparison=comparison,
            regressions=regressions,
        )

    async def _finished(self, claim: ScheduleRun, status: str, **outcome: Any) -> ScheduleRun:
        record = await self.store.finish(claim.id, status, **outcome)
        log.log(
            logging.INFO if status == "passed" else logging.WARNING,
            "eval schedule %s (run %s): %s: %s",
            claim.schedule,
            record.run_id,
            status,
            record.reason,
        )
        if self.alerts is not None:
            try:  # the eval_regression rules see the outcome now, not a minute later
                await self.alerts.evaluate_once()
            except Exception:  # logged: the periodic evaluation will try again
                log.exception("alert evaluation after eval schedule %s failed", claim.schedule)
        return record

    async def _adopt_unfinished(self) -> None:
        """Claims left ``running`` whose eval run this process is running (resumed at
        start-up or by hand) or that has ended: judged when it ends (an outcome is recorded
        once, should another replica judge it at the same time). Claims whose eval run is
        running elsewhere are that replica's."""
        for claim in await self.store.unfinished():
            if claim.schedule not in self.schedules or claim.id in self._tasks:
                continue
            if claim.run_id is None:
                if time.time() - claim.claimed_at > _START_GRACE_SECONDS:
                    await self._finished(
                        claim, "failed", reason="the server stopped before the run started"
                    )
                continue
            try:
                record = await self.service.store.run(claim.run_id)
            except NotFoundError:
                await self._finished(claim, "failed", reason=f"eval run {claim.run_id} is gone")
                continue
            if self.service.running(claim.run_id) or record.status != "running":
                self._spawn(claim, self._conclude(claim, claim.run_id))

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
                # A claim whose eval run was resumed here meanwhile (POST .../resume after
                # a replica died) is judged when that run ends.
                await self._adopt_unfinished()
            except Exception:  # logged: the scheduler must outlive a database outage
                log.exception("eval scheduler: looking for due schedules failed")
            now = self.clock()
            soonest = min(self._next.values(), default=now + self.poll_seconds)
            await asyncio.sleep(min(max(soonest - now, 0.05), self.poll_seconds))

    async def aclose(self) -> None:
        """Stop looking at the clock and stop the runs in flight (their eval runs stay
        ``running`` and resume with the server; the claims are judged then)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def describe_schedules(
    store: ScheduleStore, schedules: Iterable[EvalSchedule], now: float
) -> list[dict[str, Any]]:
    """Each schedule's settings, next due time after ``now``, last outcome and baseline run
    (what ``GET /v1/evals/schedules`` and ``trellis eval schedules`` show)."""
    described = []
    for schedule in schedules:
        last = await store.last_finished(schedule.name)
        baseline = await store.baseline(schedule.name)
        cron = CronSchedule(schedule.cron, schedule.timezone)
        described.append(
            {
                "object": "eval.schedule",
                "name": schedule.name,
                "suite": str(schedule.suite),
                "cron": schedule.cron,
                "timezone": schedule.timezone,
                "fail_on": list(schedule.fail_on),
                "enabled": schedule.enabled,
                "next_due_at": cron.next_after(now) if schedule.enabled else None,
                "last": None if last is None else last.to_dict(),
                "baseline_run_id": None if baseline is None else baseline.run_id,
            }
        )
    return described


def _why(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, TrellisError) else str(exc)
    return f"{type(exc).__name__}: {message}"


def _unscored(report: dict[str, Any]) -> str | None:
    """Why a finished run cannot be judged: no case of any candidate was scored."""
    rows = report.get("cases", [])
    if not rows:
        return "the run has no results"
    if all(row.get("error") for row in rows):
        return f"every case failed ({len(rows)}); the first: {rows[0]['error']}"
    return None
