"""BulkInsert stores exactly what SQLAlchemy's own insert stores, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from trellis.store import Database
from trellis.store.bulk import BulkInsert
from trellis.store.tables import traces


def row(trace_id: str, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": trace_id,
        "kind": "chat",
        "name": "chat m",
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": None,
        "duration_ms": 1.5,
        "status": "ok",
        "model": "m",
        "response_model": None,
        "provider": None,
        "key_id": None,
        "input_tokens": 3,
        "output_tokens": None,
        "cost": None,
        "ttft_ms": None,
        "attributes": {"nested": [1, "ü", None], "flag": True},
    }
    values.update(overrides)
    return values


async def stored(db: Database, trace_id: str) -> tuple[object, ...]:
    query = (
        "SELECT kind, start_ns, end_ns, duration_ms, cache_hit, input_tokens, "
        "CAST(attributes AS TEXT) FROM traces WHERE id = :id"
    )
    async with db.engine.connect() as conn:
        return tuple((await conn.execute(text(query), {"id": trace_id})).one())


@pytest.mark.parametrize("attributes", [{"nested": [1, "ü", None], "flag": True}, None])
async def test_bulk_rows_match_sqlalchemy_rows(db: Database, attributes: object) -> None:
    bulk = BulkInsert(traces, db.engine.dialect)
    async with db.engine.begin() as conn:
        await conn.execute(traces.insert(), [row("a" * 32, attributes=attributes)])
        await bulk.run(conn, [row("b" * 32, attributes=attributes), row("c" * 32)])
        await bulk.run(conn, [])
    assert await stored(db, "a" * 32) == await stored(db, "b" * 32)
    # cache_hit was left out of the rows: the column's default (False) applies.
    assert not (await stored(db, "c" * 32))[4]


async def test_a_failed_batch_inserts_nothing(db: Database) -> None:
    bulk = BulkInsert(traces, db.engine.dialect)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        async with db.engine.begin() as conn:
            await bulk.run(conn, [row("d" * 32), row("d" * 32)])
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM traces"))).scalar_one() == 0
