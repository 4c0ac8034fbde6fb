"""Many-row inserts straight through the driver, for the trace writer's batches.

``conn.execute(table.insert(), rows)`` compiles the statement and runs SQLAlchemy's
per-row parameter processing on every call; for the writer, which inserts a batch of
traces and their spans several times a second, that was about a third of its CPU
(and it holds the GIL the request path needs). :class:`BulkInsert` compiles the
statement and looks up each column's bind processor once per dialect, then hands the
driver plain tuples to ``executemany``: the same stored values, without the per-row
machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["BulkInsert"]


class BulkInsert:
    """An INSERT of every column of ``table``, compiled for one dialect."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = table.insert().compile(dialect=dialect)
        if not compiled.positional or compiled.positiontup is None:
            raise ValueError(f"{dialect.name}: BulkInsert needs a positional paramstyle")
        self.sql = str(compiled)
        #: Per bound column, in statement order: its name, bind processor and scalar default.
        self._plan: list[tuple[str, Callable[[Any], Any] | None, Any]] = []
        for name in compiled.positiontup:
            column = table.c[name]
            default = column.default
            scalar = default is not None and default.is_scalar
            self._plan.append(
                (
                    name,
                    column.type._cached_bind_processor(dialect),
                    getattr(default, "arg", None) if scalar else None,
                )
            )

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Driver-ready tuples; a key missing from a row takes the column's scalar default."""
        out = []
        for row in rows:
            values = []
            for name, process, default in self._plan:
                value = row.get(name, default)
                values.append(process(value) if process is not None else value)
            out.append(tuple(values))
        return out

    async def run(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            await conn.exec_driver_sql(self.sql, self.parameters(rows))
