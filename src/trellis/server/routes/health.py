"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from trellis.server.edge import runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``checks``: ``database`` and ``trace_writer``, each ``ok`` or what failed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


@router.get("/healthz", **operation(scope=None, reply=Health))
async def healthz() -> JSONBytes:
    """The process is up and serving HTTP."""
    return JSONBytes({"status": "ok"})


@router.get("/readyz", **operation(scope=None, reply=Readiness, reply_also=[503]))
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
