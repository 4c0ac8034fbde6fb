"""Who a request acts as: the ``Caller`` of a verified key, in the project it acts in.

The ``/v1`` edge (a bearer key) and the web UI (a signed-in session) both build their
callers here, so a key has the same roles and sees the same project through either.
The key's own project, or for the built-in admin (project ``*``) the project it chose,
else every project.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from trellis.access.audit import Actor, AuditEntry
from trellis.access.keys import ApiKeyRecord
from trellis.access.projects import ProjectStore
from trellis.errors import NotFoundError, PermissionDeniedError
from trellis.inference.call import Caller

__all__ = [
    "audit_entry",
    "caller_for",
    "has_role",
    "not_found_outside",
    "project_filter",
    "require_role",
]


def has_role(record: ApiKeyRecord, roles: Iterable[str]) -> bool:
    """Whether the key holds any of ``roles`` (``admin`` holds them all)."""
    return any(record.has_scope(role) for role in roles)


def require_role(record: ApiKeyRecord, roles: str | tuple[str, ...]) -> None:
    """403 ``insufficient_scope`` naming the roles, unless the key holds one of them."""
    wanted = (roles,) if isinstance(roles, str) else roles
    if not has_role(record, wanted):
        needed = " or ".join(f"'{role}'" for role in wanted)
        raise PermissionDeniedError(
            f"This API key lacks the {needed} role needed here.", code="insufficient_scope"
        )


async def caller_for(
    record: ApiKeyRecord,
    projects: ProjectStore | None,
    *,
    chosen: str | None = None,
    named: str | None = None,
    started_ns: int | None = None,
    no_cache: bool = False,
    no_store: bool = False,
) -> Caller:
    """The caller of a verified key (roles checked by the caller of this function).

    ``chosen``: the project the built-in admin picked (404 ``project_not_found`` when it
    does not exist; none: every project, creating in ``default``). ``named``: the project
    any other key named; another than its own answers 404, as if it did not exist.
    """
    project_id, all_projects = record.project_id, False
    if record.spans_projects:
        project_id, all_projects = (chosen, False) if chosen else ("default", True)
        if chosen:
            assert projects is not None
            await projects.require(chosen)
    elif named not in (None, project_id):
        raise NotFoundError("No such project for this API key.", code="project_not_found")
    return Caller(
        key=record,
        auth_start_ns=started_ns,
        auth_end_ns=time.time_ns(),
        no_cache=no_cache,
        no_store=no_store,
        project_id=project_id,
        all_projects=all_projects,
    )


def project_filter(caller: Caller) -> str | None:
    """The project a read is limited to: None for the built-in admin with no project named."""
    return None if caller.all_projects else caller.project_id


def not_found_outside(caller: Caller, project_id: str | None, what: str) -> None:
    """404 (never 403) when a resource of ``project_id`` lies outside the caller's reach:
    another project's resources answer as if they did not exist."""
    if not caller.all_projects and project_id != caller.project_id:
        raise NotFoundError(f"No {what}.")


def audit_entry(
    request: Any,
    caller: Caller,
    action: str,
    detail: Mapping[str, Any] | None = None,
    *,
    project_id: str | None = None,
) -> AuditEntry:
    """The audit entry of an action the caller takes through ``request`` (a Starlette
    request, API route or UI page alike): who, from which address and agent."""
    key = caller.key
    client = request.client
    return AuditEntry(
        actor=Actor(
            key_id=getattr(key, "id", None),
            key_name=getattr(key, "name", None),
            client_ip=client.host if client is not None else None,
            user_agent=request.headers.get("user-agent"),
        ),
        action=action,
        project_id=project_id or caller.project_id,
        detail=dict(detail or {}),
    )
