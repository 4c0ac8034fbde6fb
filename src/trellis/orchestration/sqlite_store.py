"""The run store for a SQLite file: the hot path on a direct ``sqlite3`` writer thread.

A checkpoint through SQLAlchemy and aiosqlite costs more than a millisecond, nearly all of
it driver plumbing. :class:`SqliteRunStore` sends what happens at every step (create,
checkpoint, finish, the effect journal, and the reads a run makes) to the database's
:class:`~trellis.store.sqlite_writer.SqliteWriter`, which group-commits concurrent runs'
checkpoints, each fenced on its own. Everything rare (claims, heartbeats, workers, cancel,
resume, listing) is inherited from :class:`SqlRunStore` unchanged.

Same tables, same column encodings: JSON columns hold the text the engine's serializer
writes (``json_dumps``), booleans 0/1, so either store reads what the other wrote.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

import orjson
from sqlalchemy import JSON, Boolean, Table

from trellis.orchestration.records import (
    Checkpoint,
    Effect,
    Lease,
    RunRecord,
    RunStatus,
    StepRecord,
)
from trellis.orchestration.store import Committed, SqlRunStore, _run_values
from trellis.store.db import Database, json_dumps
from trellis.store.sqlite_writer import Rollback, SqliteWriter, writer_for
from trellis.store.tables import workflow_effects, workflow_runs, workflow_steps

__all__ = ["SqliteRunStore", "default_store"]

_RUNNING = RunStatus.RUNNING.value


def _json_loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # What orjson refuses (integers past 64 bits, NaN) the engine's json.loads reads.
        return json.loads(text)


class _Codec:
    """Python values <-> SQLite values for one table's columns, as SQLAlchemy converts them."""

    def __init__(self, table: Table, fields: list[str]) -> None:
        self.table = table.name
        self.fields = fields
        self.json = frozenset(c.name for c in table.columns if isinstance(c.type, JSON))
        self.bools = frozenset(c.name for c in table.columns if isinstance(c.type, Boolean))
        self.columns = ", ".join(f'"{name}"' for name in fields)
        self.insert_sql = (
            f'INSERT INTO "{self.table}" ({self.columns}) VALUES ({", ".join("?" * len(fields))})'
        )

    def encode(self, name: str, value: Any) -> Any:
        # SQLAlchemy's JSON type writes None as the JSON text 'null' too (none_as_null=False).
        return json_dumps(value) if name in self.json else value

    def row(self, record: Any) -> list[Any]:
        return [self.encode(name, getattr(record, name)) for name in self.fields]

    def decode(self, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in zip(self.fields, row, strict=True):
            if value is not None:
                if name in self.json:
                    value = _json_loads(value)
                elif name in self.bools:
                    value = bool(value)
            values[name] = value
        return values


_RUNS = _Codec(workflow_runs, [f.name for f in dataclasses.fields(RunRecord)])
_STEPS = _Codec(workflow_steps, [f.name for f in dataclasses.fields(StepRecord)])
_EFFECTS = _Codec(workflow_effects, [f.name for f in dataclasses.fields(Effect)])

_FENCE = '"id" = ? AND "lease_owner" = ? AND "lease_epoch" = ? AND "status" = ?'


def _fence(lease: Lease) -> list[Any]:
    return [lease.run_id, lease.owner, lease.epoch, _RUNNING]


class SqliteRunStore(SqlRunStore):
    """:class:`SqlRunStore` with its per-step operations on the direct SQLite writer."""

    def __init__(self, db: Database) -> None:
        if db.sqlite_file is None:
            raise ValueError(
                "SqliteRunStore needs a SQLite file: an in-memory database cannot be shared "
                "with a second connection (use SqlRunStore)"
            )
        super().__init__(db)

    @property
    def writer(self) -> SqliteWriter:
        return writer_for(self.db)

    async def create(self, run: RunRecord) -> None:
        sql, params = _RUNS.insert_sql, _RUNS.row(run)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self.writer.write(write)

    async def checkpoint(self, lease: Lease, cp: Checkpoint, now: float) -> Committed | None:
        step = cp.step
        values = _run_values(cp, now)
        assignments = ", ".join(f'"{name}" = ?' for name in values)
        update = (
            f'UPDATE "workflow_runs" SET {assignments}, '
            '"input_tokens" = "input_tokens" + ?, "output_tokens" = "output_tokens" + ?, '
            f'"cost" = "cost" + ? WHERE {_FENCE} RETURNING "cancel_requested"'
        )
        params = [_RUNS.encode(name, value) for name, value in values.items()]
        params += [step.input_tokens or 0, step.output_tokens or 0, step.cost or 0.0]
        params += _fence(lease)
        insert, step_row = _STEPS.insert_sql, _STEPS.row(step)

        def write(conn: sqlite3.Connection) -> Committed:
            # The fence: the run changes only while this lease is the current one.
            row = conn.execute(update, params).fetchone()
            if row is None:
                raise Rollback(None)
            conn.execute(insert, step_row)
            return Committed(bool(row[0]))

        result: Committed | None = await self.writer.write(write)
        return result

    async def finish(
        self, lease: Lease, status: str, error: dict[str, Any] | None, now: float
    ) -> bool:
        sql = (
            'UPDATE "workflow_runs" SET "status" = ?, "error" = ?, "next_step" = NULL, '
            '"finished_at" = ?, "updated_at" = ?, "lease_owner" = NULL, "lease_until" = NULL '
            f"WHERE {_FENCE}"
        )
        params = [status, _RUNS.encode("error", error), now, now, *_fence(lease)]

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, params).rowcount == 1

        return await self.writer.write(write)

    async def get(self, run_id: str) -> RunRecord | None:
        sql = f'SELECT {_RUNS.columns} FROM "workflow_runs" WHERE "id" = ?'

        def read(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(sql, (run_id,)).fetchone()
            return RunRecord(**_RUNS.decode(row)) if row is not None else None

        return await self.writer.read(read)

    async def steps(self, run_id: str) -> list[StepRecord]:
        sql = f'SELECT {_STEPS.columns} FROM "workflow_steps" WHERE "run_id" = ? ORDER BY "seq"'

        def read(conn: sqlite3.Connection) -> list[StepRecord]:
            return [StepRecord(**_STEPS.decode(row)) for row in conn.execute(sql, (run_id,))]

        return await self.writer.read(read)

    async def effect(self, key: str) -> Effect | None:
        sql = f'SELECT {_EFFECTS.columns} FROM "workflow_effects" WHERE "key" = ?'

        def read(conn: sqlite3.Connection) -> Effect | None:
            row = conn.execute(sql, (key,)).fetchone()
            return Effect(**_EFFECTS.decode(row)) if row is not None else None

        return await self.writer.read(read)

    async def begin_effect(self, effect: Effect) -> None:
        update = (
            'UPDATE "workflow_effects" SET "status" = ?, "error" = ?, '
            '"attempts" = "attempts" + 1 WHERE "key" = ?'
        )
        params = ["started", _EFFECTS.encode("error", None), effect.key]
        insert, row = _EFFECTS.insert_sql, _EFFECTS.row(effect)

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute(update, params).rowcount == 0:
                conn.execute(insert, row)

        await self.writer.write(write)

    async def finish_effect(
        self, key: str, status: str, result: Any, error: dict[str, Any] | None, now: float
    ) -> None:
        sql = (
            'UPDATE "workflow_effects" SET "status" = ?, "result" = ?, "error" = ?, '
            '"finished_at" = ? WHERE "key" = ?'
        )
        params = [
            status,
            _EFFECTS.encode("result", result),
            _EFFECTS.encode("error", error),
            now,
            key,
        ]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self.writer.write(write)


def default_store(db: Database) -> SqlRunStore:
    """The store :class:`~trellis.orchestration.Workflows` uses on ``db``: the direct writer
    on a SQLite file; SQLAlchemy on Postgres and on in-memory SQLite (one shared connection,
    which a second one, the writer's, could not see)."""
    return SqliteRunStore(db) if db.sqlite_file is not None else SqlRunStore(db)
