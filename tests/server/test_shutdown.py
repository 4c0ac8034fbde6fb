"""A clean stop loses nothing: every request's trace is in the database afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from trellis.server.app import create_app
from trellis.settings import Settings
from trellis.store.db import Database
from trellis.store.tables import spans, traces
from trellis.testing.server import ServerThread


def test_traces_are_flushed_on_shutdown(
    make_settings: Callable[..., Settings], admin_key: str
) -> None:
    # A long flush interval: nothing is written before the stop, so the stop must write it all.
    settings = make_settings(tracing={"flush_interval": 60, "batch_size": 10_000})
    server = ServerThread(create_app(settings)).start()
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}
        ) as c:
            for i in range(40):
                body = {"model": "gpt-test", "messages": [{"role": "user", "content": f"q{i}"}]}
                assert c.post("/v1/chat/completions", json=body).status_code == 200
    finally:
        server.stop()

    async def count() -> tuple[int, int]:
        db = Database(settings.resolved_database_url)
        await db.connect()
        try:
            async with db.engine.connect() as conn:
                n_traces = (await conn.execute(select(func.count()).select_from(traces))).scalar()
                n_spans = (await conn.execute(select(func.count()).select_from(spans))).scalar()
        finally:
            await db.close()
        return int(n_traces or 0), int(n_spans or 0)

    n_traces, n_spans = asyncio.run(count())
    assert n_traces == 40
    assert n_spans >= 40 * 6  # root, authenticate, authorize, context_fit, route, attempt
