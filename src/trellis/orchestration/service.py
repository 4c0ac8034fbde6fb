"""Workflows: the service every surface calls (Python API now; HTTP routes and CLI later).

It registers workflows, starts runs (already leased to this process, so they start without
polling), waits for them, resumes waiting runs with input, cancels, lists, and recovers runs
orphaned by a crash: expired leases, or leases of dead processes on this host.
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
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from trellis.errors import (
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
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
        self._registering = asyncio.Lock()
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
        async with self._registering:  # runs started at once register the worker once
            if self._registered:
                return
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
        """Stop driving runs: their leases are released so another worker continues them."""
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
    ) -> str:
        """Create a run leased to this process and start it; returns the run id at once.

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
        now = time.time()
        run_id = uuid.uuid4().hex
        dumped = state.model_dump(mode="json")
        await self.store.create(
            RunRecord(
                id=run_id,
                workflow=flow.name,
                workflow_version=flow.version,
                status=RunStatus.RUNNING.value,
                input=_json(input),
                state=dumped,
                trace_id=new_trace_id(),
                created_at=now,
                updated_at=now,
                next_step=flow.first,
                key_id=key_id,
                session_id=session_id,
                lease_owner=self.worker_id,
                lease_epoch=1,
                lease_until=now + self.lease_seconds,
            )
        )
        self._spawn(flow, Lease(run_id, self.worker_id, 1))
        return run_id

    def _spawn(self, flow: Workflow[Any], lease: Lease) -> None:
        task = asyncio.create_task(self._drive(flow, lease), name=f"workflow-run-{lease.run_id}")
        self._tasks[lease.run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(lease.run_id, None))

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
        """The run once this process stops driving it (finished, waiting, or taken over)."""
        task = self._tasks.get(run_id)
        if task is not None:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # this waiter was cancelled, not the run
                    raise
                # cancel() (from another request) or aclose() stopped the run: as it is now.
        return await self.get(run_id)

    async def run(
        self,
        flow: Workflow[Any] | str,
        input: dict[str, Any] | BaseModel,
        *,
        key_id: str | None = None,
        session_id: str | None = None,
    ) -> RunRecord:
        """Start a run and wait until it finishes or waits for input."""
        return await self.wait(await self.start(flow, input, key_id=key_id, session_id=session_id))

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
        leases = await self.store.claim(
            self.worker_id, now, now + self.lease_seconds, run_id=run_id, limit=1
        )
        if leases:
            self._spawn(flow, leases[0])
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
        """Claim (up to 1,000) orphaned runs of the registered workflows and continue each
        from its last completed step; returns their ids (``wait`` gives their results)."""
        await self._ensure_worker()
        now = time.time()
        dead = [
            worker.id
            for worker in await self.store.workers(self.hostname)
            if worker.id != self.worker_id and self._dead(worker, now)
        ]
        leases = await self.store.claim(
            self.worker_id,
            now,
            now + self.lease_seconds,
            limit=1000,
            dead_owners=dead,
            workflows=list(self._flows),
        )
        for lease in leases:
            run = await self.get(lease.run_id)
            self._spawn(self._flows[run.workflow], lease)
        return [lease.run_id for lease in leases]

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
    ) -> list[RunRecord]:
        """Runs, newest first; ``key_id`` keeps those one API key started."""
        return await self.store.list_runs(
            workflow=workflow, status=status, key_id=key_id, limit=limit
        )

    @property
    def flows(self) -> builtins.list[Workflow[Any]]:
        """The registered workflows, in registration order."""
        return list(self._flows.values())
