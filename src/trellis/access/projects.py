"""Projects: the tenants that own keys, collections, traces, rules, evals and runs.

A key belongs to one project and sees only that project's resources; another project's
resource answers as if it did not exist (404). Keys of the special project ``*``
(:data:`ALL_PROJECTS`: the configured admin key and the first admin key) span projects.
Every row that existed before projects belongs to :data:`DEFAULT_PROJECT`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from trellis.access.audit import AuditEntry, record
from trellis.access.version import bump_access_version
from trellis.errors import ConflictError, InvalidRequestError, NotFoundError
from trellis.settings import ProjectGuard
from trellis.store.db import Database
from trellis.store.tables import (
    alert_rules,
    api_keys,
    collections,
    eval_datasets,
    eval_queues,
    eval_runs,
    limits,
    projects,
    traces,
    workflow_runs,
)

__all__ = [
    "ALL_PROJECTS",
    "DEFAULT_PROJECT",
    "PROJECT_PATTERN",
    "Project",
    "ProjectStore",
    "parse_guard",
    "validate_project_id",
]

DEFAULT_PROJECT = "default"
#: The project of keys that span every project (never a row of ``projects``).
ALL_PROJECTS = "*"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_PROJECT = re.compile(PROJECT_PATTERN)

#: Tables whose rows keep a project from being deleted (a key revoked still counts:
#: its traces and audit entries name it; a key's limits go with the key). The project's
#: own limits (``project:<id>``) are its settings, not its content: they go with it.
_OWNED = (
    api_keys,
    collections,
    traces,
    alert_rules,
    eval_datasets,
    eval_runs,
    eval_queues,
    workflow_runs,
)


def validate_project_id(project_id: str, param: str = "project") -> str:
    """A project id as stored: lower-case letters, digits, ``-`` and ``_``, 1 to 64."""
    if not isinstance(project_id, str) or not _PROJECT.match(project_id):
        raise InvalidRequestError(
            "a project id is 1 to 64 lower-case letters, digits, '-' or '_', starting with "
            f"a letter or digit, not {project_id!r}",
            param=param,
        )
    return project_id


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    created_at: float
    #: Prompt-injection guard overrides (``ProjectGuard`` as JSON); None: the server's.
    guard: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "project",
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "guard": self.guard,
        }


def parse_guard(value: Any, param: str = "guard") -> ProjectGuard | None:
    """A project's guard overrides as given (None clears them), or 400 naming the field."""
    if value is None or isinstance(value, ProjectGuard):
        return value
    try:
        return ProjectGuard.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (param, *first["loc"]))
        raise InvalidRequestError(f"{where}: {first['msg']}", param=where) from None


def _stored(guard: ProjectGuard | None) -> dict[str, Any] | None:
    return None if guard is None else guard.model_dump(mode="json", exclude_none=True)


def _project(row: Any) -> Project:
    return Project(row["id"], row["name"], row["created_at"], row["guard"])


class ProjectStore:
    """Creates, lists, updates and deletes projects (global admins only, checked by the
    routes), and keeps every project's guard overrides in memory for the gateway: reloaded
    after a change made here, and when the access version moves (a change made by
    another process, seen within the key store's poll)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._guards: dict[str, ProjectGuard] = {}

    def guard_of(self, project_id: str) -> ProjectGuard | None:
        """The project's guard overrides as last loaded (no database read)."""
        return self._guards.get(project_id)

    async def load_guards(self) -> None:
        """Read every project's guard overrides (one small query)."""
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(projects.c.id, projects.c.guard).where(projects.c.guard.is_not(None))
                )
            ).all()
        self._guards = {row.id: ProjectGuard.model_validate(row.guard) for row in rows if row.guard}

    async def create(
        self,
        project_id: str,
        name: str | None = None,
        *,
        guard: ProjectGuard | None = None,
        audit: AuditEntry | None = None,
    ) -> Project:
        validate_project_id(project_id, "id")
        name = (name or project_id).strip()
        if not name or len(name) > 200:
            raise InvalidRequestError("a project name is 1 to 200 characters", param="name")
        project = Project(project_id, name, time.time(), _stored(guard))
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    projects.insert().values(
                        id=project.id,
                        name=name,
                        created_at=project.created_at,
                        guard=project.guard,
                    )
                )
                if project.guard is not None:
                    await bump_access_version(conn)
                if audit is not None:
                    await record(conn, audit.with_target(project_id))
        except IntegrityError:
            raise ConflictError(
                f"project `{project_id}` already exists", code="project_exists"
            ) from None
        if project.guard is not None:
            await self.load_guards()
        return project

    async def set_guard(
        self, project_id: str, guard: ProjectGuard | None, *, audit: AuditEntry | None = None
    ) -> Project:
        """Replace the project's guard overrides (None clears them); 404 when unknown.
        Other processes follow within the access-version poll."""
        async with self.db.write() as conn:
            done = await conn.execute(
                update(projects).where(projects.c.id == project_id).values(guard=_stored(guard))
            )
            if not done.rowcount:
                raise NotFoundError(f"No project `{project_id}`.", code="project_not_found")
            await bump_access_version(conn)
            if audit is not None:
                await record(conn, audit.with_target(project_id))
        await self.load_guards()
        return await self.require(project_id)

    async def get(self, project_id: str) -> Project | None:
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(projects).where(projects.c.id == project_id)))
                .mappings()
                .first()
            )
        return None if row is None else _project(row)

    async def require(self, project_id: str) -> Project:
        """The project, or 404 ``project_not_found``."""
        found = await self.get(project_id)
        if found is None:
            raise NotFoundError(
                f"No project `{project_id}`.", code="project_not_found", param="project"
            )
        return found

    async def list(self) -> list[Project]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(projects).order_by(projects.c.id))).mappings().all()
        return [_project(r) for r in rows]

    async def delete(self, project_id: str, *, audit: AuditEntry | None = None) -> None:
        """Delete an empty project, with its own limits (``project:<id>``): 404 when
        unknown, 409 ``project_not_empty`` while it owns anything (keys, collections,
        traces, eval queues...), and the default project never."""
        if project_id == DEFAULT_PROJECT:
            raise ConflictError("the default project cannot be deleted", code="default_project")
        async with self.db.write() as conn:
            if (
                await conn.execute(select(projects.c.id).where(projects.c.id == project_id))
            ).first() is None:
                raise NotFoundError(f"No project `{project_id}`.", code="project_not_found")
            owned = {}
            for table in _OWNED:
                count = (
                    await conn.execute(
                        select(func.count())
                        .select_from(table)
                        .where(table.c.project_id == project_id)
                    )
                ).scalar_one()
                if count:
                    owned[table.name] = int(count)
            if owned:
                listed = ", ".join(f"{n} {t}" for t, n in owned.items())
                raise ConflictError(
                    f"project `{project_id}` still owns {listed}; delete them first",
                    code="project_not_empty",
                )
            await conn.execute(delete(limits).where(limits.c.subject == f"project:{project_id}"))
            await conn.execute(delete(projects).where(projects.c.id == project_id))
            if audit is not None:
                await record(conn, audit.with_target(project_id))
