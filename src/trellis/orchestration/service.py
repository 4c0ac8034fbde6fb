"""Workflows: the service every surface calls (Python API, HTTP routes and CLI).

It registers workflows, starts runs (already leased to this process, so they start without
polling), waits for them, resumes waiting runs with input, cancels, lists, and recovers runs
orphaned by a crash: expired leases, or leases of dead processes on this host.

One process drives at most ``max_concurrent_runs`` runs at once. A run started beyond that
is stored ``queued`` (unleased) and claimed, oldest first, when a slot frees: by this
process at once, or by any replica's recovery. A run that keeps crashing its process is
failed (``too_many_recoveries``) after ``max_recoveries`` recoveries instead of claimed
again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from trellis.errors import (
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    UnsupportedFeatureError,
)
from trellis.inference.conversation import SessionStore
from trellis.observe.tracing import NullSink, TraceSink, new_span_id, new_trace_id
from trellis.orchestration.engine import Engine, LeaseLost, merge_state, run_trace
from trellis.orchestration.human import HumanStep
from trellis.orchestration.privacy import BodiesMode
from trellis.orchestration.records import (
    FINISHED,
    Checkpoint,
    Lease,
    RunRecord,
    RunStatus,
    StepRecord,
)
from trellis.orchestration.sqlite_store import default_store
from trellis.orchestration.steps import END
from trellis.orchestration.store import MemoryRunStore, RunStore, Worker
from trellis.orchestration.turns import record_turn
from trellis.orchestration.workflow import Workflow
from trellis.store.db import Database

__all__ = ["Workflows"]

log = logging.getLogger("trellis.orchestration")

#: How often one query checks whether runs waited for here, queued or driven elsewhere,
#: finished on another replica (a claim by this process wakes its waiters at once).
WATCH_SECONDS = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: A session id as chat completions accept it (``trellis.session_id``).
SESSION_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")


def _json(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class Workflows:
    """Runs workflows durably in ``db`` (or in memory without one).

    ``async with Workflows(db) as workflows: run = await workflows.run(flow, {...})``.
    """

    def __init__(
        self,
        db: Database | None = None,
        *,
        store: RunStore | None = None,
        sink: TraceSink | None = None,
        flows: Iterable[Workflow[Any]] = (),
        lease_seconds: float = 15.0,
        heartbeat_seconds: float = 5.0,
        services: dict[str, Any] | None = None,
        keep_step_states: bool = True,
        bodies: BodiesMode = "full",
        max_concurrent_runs: int = 256,
        max_queued_runs: int = 0,
        max_recoveries: int | None = 5,
    ) -> None:
        if store is None:
            # A SQLite file gets the direct writer thread; Postgres and :memory: SQLAlchemy.
            store = default_store(db) if db is not None else MemoryRunStore()
        self.store = store
        self.sink: TraceSink = sink or NullSink()
        self.engine = Engine(
            store, services=services, keep_step_states=keep_step_states, bodies=bodies
        )
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.worker_id = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self._flows: dict[str, Workflow[Any]] = {}
        self._tasks: dict[str, asyncio.Task[RunRecord]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._registered = False
        self._registering: asyncio.Future[None] | None = None
        self._closing = False
        #: 0: no limit. Runs driven here count (started, resumed, recovered).
        self.max_concurrent_runs = max_concurrent_runs
        #: 0: no bound; else a start that would queue beyond it is refused (429).
        self.max_queued_runs = max_queued_runs
        #: None: recover a crashed run however often it crashed.
        self.max_recoveries = max_recoveries
        #: Slots promised to runs being created or claimed (not yet in ``_tasks``).
        self._reserved = 0
        #: Claims in flight: a run may be leased to us already but not spawned yet.
        self._claiming = 0
        #: Queued runs may wait for a slot here: new runs queue behind them.
        self._backlog = False
        self._filler: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._refill = False
        #: Waiters of queued runs, woken when this process spawns the run.
        self._ready: dict[str, asyncio.Event] = {}
        for flow in flows:
            self.register(flow)

    # --- registry ------------------------------------------------------------------------

    def register(self, flow: Workflow[Any]) -> Workflow[Any]:
        """Make ``flow`` runnable (and recoverable) by name; checks its routes first."""
        known = self._flows.get(flow.name)
        if known is not None and known is not flow:
            raise ConfigurationError(f"another workflow named {flow.name!r} is registered")
        flow.check()
        self._flows[flow.name] = flow
        return flow

    def workflow(self, name: str) -> Workflow[Any]:
        try:
            return self._flows[name]
        except KeyError:
            raise NotFoundError(f"no workflow named {name!r}") from None

    @property
    def names(self) -> list[str]:
        return list(self._flows)

    def _resolve(self, flow: Workflow[Any] | str) -> Workflow[Any]:
        return self.workflow(flow) if isinstance(flow, str) else self.register(flow)

    # --- lifecycle -----------------------------------------------------------------------

    async def _ensure_worker(self) -> None:
        if self._registered:
            return
        # One registration, however many runs start at once before it is done.
        if self._registering is None or self._registering.done():
            self._registering = asyncio.ensure_future(self._register())
        await asyncio.shield(self._registering)

    async def _register(self) -> None:
        now = time.time()
        await self.store.register_worker(
            Worker(self.worker_id, self.hostname, os.getpid(), now, now)
        )
        self._registered = True
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="workflow-heartbeat")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            now = time.time()
            try:
                await self.store.heartbeat(self.worker_id, now, now + self.lease_seconds)
            except Exception:  # a database hiccup must not end the loop
                log.exception("workflow lease renewal failed")

    def start_recovery(self) -> None:
        """Continue orphaned runs now and then once per lease period: those of this host's
        dead processes at once (a server restarted after ``kill -9``), and other replicas'
        when their leases expire. A server calls this; a CLI or a script runs only what it
        started, unless it calls ``recover()`` itself."""
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recovery_loop(), name="workflow-recovery")

    async def _recovery_loop(self) -> None:
        while True:
            try:
                recovered = await self.recover()
                if recovered:
                    log.info("continuing %d orphaned workflow run(s)", len(recovered))
            except Exception:  # a database hiccup must not end the loop
                log.exception("workflow recovery failed")
            await asyncio.sleep(self.lease_seconds)

    async def aclose(self) -> None:
        """Stop driving runs: their leases are released so another worker continues them
        (and queued runs stay queued for whoever claims them next)."""
        self._closing = True
        for event in self._ready.values():
            event.set()
        for helper in (self._filler, self._watcher):
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        self._filler = self._watcher = None
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._registered:
            self._registered = False
            try:
                await self.store.remove_workers([self.worker_id])
            except Exception:  # the database may be gone already; the row is harmless
                log.warning("could not unregister workflow worker %s", self.worker_id)

    async def __aenter__(self) -> Workflows:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- running -------------------------------------------------------------------------

    async def start(
        self,
        flow: Workflow[Any] | str,
        input: dict[str, Any] | BaseModel,
        *,
        key_id: str | None = None,
        session_id: str | None = None,
        project_id: str = "default",
    ) -> str:
        """Create a run leased to this process and start it, or, at ``max_concurrent_runs``,
        store it ``queued`` (refused with :class:`OverloadedError` when ``max_queued_runs``
        are queued already); returns the run id at once.

        ``key_id`` is the API key the run's model calls go out as; ``session_id`` makes the
        run a turn of that conversation (``orchestration.turns``)."""
        flow = self._resolve(flow)
        if session_id is not None:
            if not SESSION_ID.fullmatch(session_id):
                raise InvalidRequestError(
                    "session_id must be 1-200 characters of letters, digits and . _ : @ -",
                    param="session_id",
                )
            if self.sessions is None:
                raise UnsupportedFeatureError(
                    "sessions are not available to these workflows", param="session_id"
                )
        try:
            state = flow.state.model_validate(_json(input))
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid input for workflow {flow.name!r}: {exc}") from None
        await self._ensure_worker()
        direct = self._take_slot()
        if not direct:
            await self._check_queue_room()
        now = time.time()
        run_id = uuid.uuid4().hex
        record = RunRecord(
            id=run_id,
            workflow=flow.name,
            workflow_version=flow.version,
            status=RunStatus.RUNNING.value if direct else RunStatus.QUEUED.value,
            input=_json(input),
            state=state.model_dump(mode="json"),
            trace_id=new_trace_id(),
            created_at=now,
            updated_at=now,
            next_step=flow.first,
            key_id=key_id,
            session_id=session_id,
            project_id=project_id,
        )
        if direct:
            record.lease_owner, record.lease_epoch = self.worker_id, 1
            record.lease_until = now + self.lease_seconds
        try:
            await self.store.create(record)
        finally:
            if direct:
                self._reserved -= 1
        if direct:
            self._spawn(flow, Lease(run_id, self.worker_id, 1))
        else:
            self._backlog = True
            self._kick()
        return run_id

    # --- the concurrency limit ------------------------------------------------------------

    @property
    def driving(self) -> int:
        """How many runs this process drives now."""
        return len(self._tasks)

    def _free(self) -> int:
        """Slots free for more runs (a large number without a limit)."""
        if not self.max_concurrent_runs:
            return 1_000_000
        return self.max_concurrent_runs - len(self._tasks) - self._reserved

    def _take_slot(self) -> bool:
        """Reserve a slot for a new run, unless full or older queued runs come first."""
        if self._free() <= 0 or (self._backlog and self.max_concurrent_runs):
            return False
        self._reserved += 1
        return True

    async def _check_queue_room(self) -> None:
        if not self.max_queued_runs:
            return
        queued = await self.store.count_runs(RunStatus.QUEUED.value)
        if queued >= self.max_queued_runs:
            raise OverloadedError(
                f"Too many workflow runs are queued ({queued}, at most "
                f"{self.max_queued_runs}); retry later.",
                retry_after=1.0,
                code="too_many_runs",
            )

    def _kick(self) -> None:
        """Fill free slots with queued runs (one filler at a time; a kick while it works
        makes it look again)."""
        if self._closing or not self._registered:
            return
        if self._filler is not None and not self._filler.done():
            self._refill = True
            return
        self._filler = asyncio.create_task(self._fill(), name="workflow-queue")

    async def _fill(self) -> None:
        while True:
            self._refill = False
            free = self._free()
            if free > 0:
                try:
                    leases = await self._claim(min(free, 1000))
                except Exception:  # a database hiccup: the recovery loop claims them later
                    log.exception("could not claim queued workflow runs")
                    return
                self._backlog = len(leases) >= free
            if not self._refill:
                return

    async def _claim(
        self, limit: int, *, run_id: str | None = None, dead_owners: Sequence[str] = ()
    ) -> builtins.list[Lease]:
        """Claim up to ``limit`` runs (their slots reserved meanwhile) and drive them."""
        now = time.time()
        self._reserved += limit
        self._claiming += 1
        try:
            leases = await self.store.claim(
                self.worker_id,
                now,
                now + self.lease_seconds,
                limit=limit,
                run_id=run_id,
                dead_owners=dead_owners,
                workflows=list(self._flows),
                max_recoveries=self.max_recoveries,
            )
            runs = [await self.store.get(lease.run_id) for lease in leases]
        finally:
            # Still no await between here and the spawns: the slots pass to the tasks.
            self._reserved -= limit
            self._claiming -= 1
        for lease, run in zip(leases, runs, strict=True):
            if run is not None:
                self._spawn(self._flows[run.workflow], lease)
        return leases

    def _spawn(self, flow: Workflow[Any], lease: Lease) -> None:
        task = asyncio.create_task(self._drive(flow, lease), name=f"workflow-run-{lease.run_id}")
        self._tasks[lease.run_id] = task
        task.add_done_callback(lambda _t: self._done(lease.run_id))
        ready = self._ready.pop(lease.run_id, None)
        if ready is not None:
            ready.set()

    def _done(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        if self._backlog:
            self._kick()

    async def _drive(self, flow: Workflow[Any], lease: Lease) -> RunRecord:
        try:
            run = await self.engine.run_segment(flow, lease)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return await self.get(lease.run_id)
        except Exception:
            # A bug or a database failure: the lease runs out and a worker takes the run over.
            log.exception("workflow run %s stopped", lease.run_id)
            raise
        if run.status in FINISHED:
            await self._finished(flow, run)
        return run

    @property
    def sessions(self) -> SessionStore | None:
        """Where runs with a ``session_id`` record their turn: the ``sessions`` service,
        else the gateway's (the store its session stage reads)."""
        services = self.engine.services
        sessions = services.get("sessions")
        if sessions is None:
            sessions = getattr(services.get("gateway"), "sessions", None)
        return sessions  # type: ignore[no-any-return]

    async def _finished(self, flow: Workflow[Any], run: RunRecord) -> None:
        """What follows a run's end: its trace, and its turn in its session."""
        await self._record_trace(run)
        if run.session_id is not None:
            await record_turn(self.sessions, flow, run)

    async def _record_trace(self, run: RunRecord) -> None:
        try:
            self.sink.submit(run_trace(run, await self.store.steps(run.id)))
        except Exception:
            log.exception("could not record the trace of workflow run %s", run.id)

    async def wait(self, run_id: str) -> RunRecord:
        """The run once this process stops driving it (finished, waiting, or taken over).
        A queued run is waited for until it finishes (or waits), whoever claims it."""
        was_queued = False
        while True:
            # Taken before looking, so a spawn between the look and the sleep wakes us.
            ready = self._ready.setdefault(run_id, asyncio.Event())
            try:
                task = self._tasks.get(run_id)
                if task is not None:
                    try:
                        return await asyncio.shield(task)
                    except asyncio.CancelledError:
                        if not task.cancelled():  # this waiter was cancelled, not the run
                            raise
                        # cancel() (another request) or aclose() stopped the run: as it is.
                        return await self.get(run_id)
                run = await self.get(run_id)
                was_queued = was_queued or run.status == RunStatus.QUEUED
                claimed_here = run.lease_owner == self.worker_id and self._claiming > 0
                pending = run.status == RunStatus.QUEUED or (
                    run.status == RunStatus.RUNNING and (was_queued or claimed_here)
                )
                if not pending or self._closing:
                    return run
                self._watch()
                # Woken by a spawn here or by the watcher; the timeout is only a backstop.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), 30 * WATCH_SECONDS)
            finally:
                if self._ready.get(run_id) is ready and not ready.is_set():
                    del self._ready[run_id]

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_loop(), name="workflow-watch")

    async def _watch_loop(self) -> None:
        """While runs are waited for but not driven here, wake the waiters of those that
        left ``queued``/``running`` (finished, waiting or cancelled, wherever): one query a
        period for all of them, however many."""
        while self._ready and not self._closing:
            await asyncio.sleep(WATCH_SECONDS)
            ids = [run_id for run_id in self._ready if run_id not in self._tasks]
            try:
                found = await self.store.statuses(ids) if ids else {}
            except Exception:  # a database hiccup: look again next period
                log.exception("could not read the status of waited-for workflow runs")
                continue
            for run_id in ids:
                status = found.get(run_id)
                if status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                    event = self._ready.pop(run_id, None)
                    if event is not None:
                        event.set()

    async def run(
        self,
        flow: Workflow[Any] | str,
        input: dict[str, Any] | BaseModel,
        *,
        key_id: str | None = None,
        session_id: str | None = None,
        project_id: str = "default",
    ) -> RunRecord:
        """Start a run and wait until it finishes or waits for input."""
        return await self.wait(
            await self.start(
                flow, input, key_id=key_id, session_id=session_id, project_id=project_id
            )
        )

    async def resume(self, run_id: str, input: Any) -> RunRecord:
        """Give a waiting run its input and continue it (waits as :meth:`run` does)."""
        run = await self.get(run_id)
        if run.status != RunStatus.WAITING or run.waiting_for is None:
            raise ConflictError(f"run {run_id} is {run.status}, not waiting for input")
        flow = self.workflow(run.workflow)
        step = flow.get(run.waiting_for["step"])
        if not isinstance(step, HumanStep):
            raise ConflictError(f"run {run_id} waits at {step.name!r}, which takes no input")
        try:
            value = step.validate_input(_json(input))
            state = merge_state(flow, flow.state.model_validate(run.state), {step.into: value})
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid input for step {step.name!r}: {exc}") from None
        target = flow.next_after(step, state)
        now = time.time()
        dumped = state.model_dump(mode="json")
        record = StepRecord(
            run_id=run_id,
            seq=run.seq + 1,
            step=step.name,
            kind=step.kind,
            status="ok",
            attempts=1,
            span_id=new_span_id(),
            start_ns=int(run.updated_at * 1e9),
            end_ns=time.time_ns(),
            output=_json(value),
            state=dumped if self.engine.keep_step_states else None,
            next_step=target,
        )
        self.engine.privacy.apply(record)
        done = target == END
        cp = Checkpoint(
            step=record,
            state=self.engine.privacy.final_state(dumped) if done else dumped,
            status=RunStatus.SUCCEEDED.value if done else RunStatus.QUEUED.value,
            next_step=None if done else target,
            output=(_json(flow.output(state)) if flow.output else dumped) if done else None,
            finished=done,
        )
        if not await self.store.apply_input(run_id, run.seq, cp, now):
            raise ConflictError(f"run {run_id} was resumed already")
        if done:
            finished = await self.get(run_id)
            await self._finished(flow, finished)
            return finished
        await self._ensure_worker()
        if self._free() > 0:
            await self._claim(1, run_id=run_id)
        else:  # queued (in creation order, so ahead of younger runs) until a slot frees
            self._backlog = True
            self._kick()
        return await self.wait(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run: at once when nobody drives it or this process does, else at the
        owner's next step boundary."""
        if not await self.store.request_cancel(run_id, time.time()):
            raise NotFoundError(f"no run {run_id}")
        task = self._tasks.get(run_id)
        if task is not None:
            self.engine.cancelling.add(run_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                return await task
        run = await self.get(run_id)
        if run.status == RunStatus.CANCELLED:
            await self._record_trace(run)
        return run

    def _dead(self, worker: Worker, now: float) -> bool:
        """A worker on this host whose process is gone. Our own pid under another worker id
        is a previous life of this process (a container restarted as pid 1) once it stopped
        heartbeating; while it heartbeats it is another service in this same process."""
        if worker.pid == os.getpid():
            return worker.heartbeat_at < now - 2 * self.heartbeat_seconds
        return not _alive(worker.pid)

    async def recover(self) -> list[str]:
        """Claim (up to 1,000, within the concurrency limit) orphaned and queued runs of the
        registered workflows and continue each from its last completed step; returns their
        ids (``wait`` gives their results). Runs recovered ``max_recoveries`` times already
        are failed instead (``too_many_recoveries``)."""
        await self._ensure_worker()
        now = time.time()
        dead = [
            worker.id
            for worker in await self.store.workers(self.hostname)
            if worker.id != self.worker_id and self._dead(worker, now)
        ]
        if self.max_recoveries is not None:
            await self._abandon(now, dead)
        free = self._free()
        if free <= 0:
            return []
        limit = min(free, 1000)
        leases = await self._claim(limit, dead_owners=dead)
        if len(leases) >= limit:  # more may be queued: each slot that frees claims one
            self._backlog = True
        return [lease.run_id for lease in leases]

    async def _abandon(self, now: float, dead: builtins.list[str]) -> None:
        assert self.max_recoveries is not None
        error = {
            "type": "too_many_recoveries",
            "message": f"the run was recovered {self.max_recoveries} times after its "
            "process stopped, and stopped it again; it is not continued any more",
        }
        failed = await self.store.abandon(
            now,
            error,
            max_recoveries=self.max_recoveries,
            dead_owners=dead,
            workflows=list(self._flows),
            limit=1000,
        )
        for run_id in failed:
            log.warning("workflow run %s failed: too many recoveries", run_id)
            await self._record_trace(await self.get(run_id))

    # --- reading -------------------------------------------------------------------------

    async def get(self, run_id: str) -> RunRecord:
        run = await self.store.get(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        return run

    async def steps(self, run_id: str) -> list[StepRecord]:
        """The run's checkpoint log, in order."""
        await self.get(run_id)
        return await self.store.steps(run_id)

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        project_id: str | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first; ``key_id`` keeps those one API key started, ``project_id``
        those of one project."""
        return await self.store.list_runs(
            workflow=workflow, status=status, key_id=key_id, limit=limit, project_id=project_id
        )

    @property
    def flows(self) -> builtins.list[Workflow[Any]]:
        """The registered workflows, in registration order."""
        return list(self._flows.values())
