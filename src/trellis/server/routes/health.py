"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from trellis.server.edge import runtime
from trellis.server.responses import JSONBytes

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONBytes:
    """The process is up and serving HTTP."""
    return JSONBytes({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONBytes:
    """Ready for traffic: the database answers and the trace writer is running."""
    trellis = runtime(request)
    checks: dict[str, str] = {}
    try:
        assert trellis.db is not None
        async with trellis.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except (SQLAlchemyError, OSError) as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if trellis.writer is not None:
        checks["trace_writer"] = "ok" if trellis.writer.running else "stopped"
    ready = all(value == "ok" for value in checks.values())
    return JSONBytes(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
