"""One thread with its own ``sqlite3`` connection, writing for many coroutines at once.

Small, frequent transactions (a workflow checkpoint per step) spend most of their time in
the async driver's plumbing, not in SQLite. This writer skips it: callers hand it plain
functions of a ``sqlite3.Connection``; the thread runs them and answers through the
caller's event loop. Writes that queue up while a transaction is open are committed
together (group commit), each inside its own SAVEPOINT, so one that fails or asks to be
rolled back (:class:`Rollback`, a lost lease) undoes only its own changes. Reads run
outside any transaction, after the batch they arrived with has committed.

It shares the database file with the SQLAlchemy engine (trace writer, claims): it takes the
write lock with ``BEGIN IMMEDIATE`` and waits out other writers with the same busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from trellis.store.db import SQLITE_BUSY_TIMEOUT_MS, Database

__all__ = ["SqliteWriter", "Rollback", "writer_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most writes committed in one transaction (bounds how long a batch holds the lock).
MAX_BATCH = 256


class Rollback(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a write function: undo its changes, and answer the caller with ``value``."""

    def __init__(self, value: Any = None) -> None:
        super().__init__()
        self.value = value


@dataclasses.dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any] | None  # None: stop the thread
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


@dataclasses.dataclass(slots=True)
class WriterStats:
    """Counts for tests and benchmarks: how much group commit happened."""

    batches: int = 0
    writes: int = 0
    largest_batch: int = 0


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # we issue BEGIN / COMMIT ourselves
        check_same_thread=False,  # opened by the thread that uses it; closed after it stops
        uri=path.startswith("file:"),
        cached_statements=256,
    )
    conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _deliver(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SqliteWriter:
    """The writer thread of one SQLite file (WAL mode, set by :class:`Database`)."""

    def __init__(self, path: str, *, max_batch: int = MAX_BATCH) -> None:
        self.path = path
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name=f"trellis-sqlite-writer {self.path}", daemon=True
                    )
                    thread.start()
                    self._thread = thread

    def _submit(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the SQLite writer is closed (its database was closed)")
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, write, loop, future))
        return future

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction; its result once the transaction committed."""
        return await self._submit(fn, True)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside any transaction (it sees every committed write)."""
        return await self._submit(fn, False)

    async def close(self) -> None:
        """Finish the queued work, close the connection and end the thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Job(None, False, loop, done))
        await done
        await asyncio.to_thread(thread.join)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < self.max_batch and batch[-1].fn is not None:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = batch[-1] if batch[-1].fn is None else None
                jobs = batch[:-1] if stop is not None else batch
                outcomes: list[tuple[_Job, bool, Any]] = []
                if jobs:
                    if conn is None:
                        try:
                            conn = _connect(self.path)
                        except sqlite3.Error as exc:  # tried again with the next batch
                            outcomes = [(job, False, exc) for job in jobs]
                    if conn is not None:
                        try:
                            outcomes = self._process(conn, jobs)
                        except Exception as exc:
                            # A bug or a broken connection: this batch's callers hear of
                            # it, and the thread lives on for the next batch.
                            log.exception("SQLite writer batch failed")
                            with contextlib.suppress(sqlite3.Error):
                                if conn.in_transaction:
                                    conn.execute("ROLLBACK")
                            outcomes = [(job, False, exc) for job in jobs]
                if stop is not None:
                    if conn is not None:
                        conn.close()
                        conn = None
                    outcomes.append((stop, True, None))
                self._answer(outcomes)
                if stop is not None:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _process(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        writes = [job for job in jobs if job.write]
        outcomes = self._commit(conn, writes) if writes else []
        for job in jobs:
            if not job.write:
                assert job.fn is not None
                try:
                    outcomes.append((job, True, job.fn(conn)))
                except Exception as exc:
                    outcomes.append((job, False, exc))
        return outcomes

    def _commit(self, conn: sqlite3.Connection, writes: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        """One transaction for the whole batch; each write in a savepoint of its own."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(job, False, exc) for job in writes]
        alone = len(writes) == 1  # no savepoint needed: a failure rolls the transaction back
        outcomes: list[tuple[_Job, bool, Any]] = []
        for job in writes:
            assert job.fn is not None
            if not alone:
                conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite gave the whole transaction up (disk full, I/O error): nothing of
                    # this batch is written, so nothing of it may report success.
                    return [(j, False, exc) for j in writes]
                if alone:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                if isinstance(exc, Rollback):
                    outcomes.append((job, True, exc.value))
                else:
                    outcomes.append((job, False, exc))
                if alone:
                    return outcomes
                continue
            if not alone:
                conn.execute("RELEASE job")
            outcomes.append((job, True, value))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(job, False, exc) for job in writes]
        stats = self.stats
        stats.batches += 1
        stats.writes += len(writes)
        stats.largest_batch = max(stats.largest_batch, len(writes))
        return outcomes

    @staticmethod
    def _answer(outcomes: list[tuple[_Job, bool, Any]]) -> None:
        """Hand results back on each caller's loop: one wake-up per loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting
                log.debug("dropped %d SQLite writer result(s) for a closed loop", len(items))


_WRITERS: weakref.WeakKeyDictionary[Database, SqliteWriter] = weakref.WeakKeyDictionary()


def writer_for(db: Database) -> SqliteWriter:
    """The writer of ``db`` (a SQLite file), started on first use and closed with ``db``."""
    path = db.sqlite_file
    if path is None:
        raise ValueError("the SQLite writer needs a SQLite file (not Postgres or :memory:)")
    db.engine  # noqa: B018 - raises unless the database is connected, as every store call does
    writer = _WRITERS.get(db)
    if writer is None or writer.closed:
        writer = SqliteWriter(path)
        _WRITERS[db] = writer
        db.on_close(writer.close)
    return writer
