"""Projects over HTTP: the built-in admin creates, lists, updates and deletes them.

Only a key that spans projects (the configured admin key, the first admin key) may: a
project's own admin key manages its project's keys, rules and collections, not projects.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN
from trellis.access.projects import PROJECT_PATTERN, ProjectStore
from trellis.errors import InvalidRequestError, PermissionDeniedError
from trellis.inference.call import Caller
from trellis.server.edge import audit_entry, authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes
from trellis.settings import ProjectGuard

router = APIRouter(prefix="/v1/projects", tags=["projects"])

ProjectId = Path(min_length=1, max_length=64)


class CreateProject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=PROJECT_PATTERN, description="lower-case letters, digits, - and _")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    guard: ProjectGuard | None = Field(
        default=None,
        description="Prompt-injection guard overrides: a model alias's own guard wins",
    )


class UpdateProject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guard: ProjectGuard | None = Field(
        description="Prompt-injection guard overrides ({input, retrieved, tool_outputs}, "
        "each {mode, threshold}); null clears them"
    )


async def _global_admin(request: Request) -> Caller:
    caller = await authenticate(request, ADMIN)
    if not caller.key.spans_projects:
        raise PermissionDeniedError(
            "Only the built-in admin key (one that spans projects) manages projects.",
            code="insufficient_scope",
        )
    return caller


def _projects(request: Request) -> ProjectStore:
    projects = runtime(request).projects
    assert projects is not None
    return projects


@router.get("", **operation(scope=ADMIN))
async def list_projects(request: Request) -> JSONBytes:
    await _global_admin(request)
    found = await _projects(request).list()
    return JSONBytes({"object": "list", "data": [p.to_dict() for p in found]})


@router.post("", status_code=201, **operation(scope=ADMIN, body=CreateProject, errors=[400, 409]))
async def create_project(request: Request) -> JSONBytes:
    caller = await _global_admin(request)
    body = parse_body(CreateProject, await read_json(request))
    guard = body.guard.model_dump(mode="json", exclude_none=True) if body.guard else None
    project = await _projects(request).create(
        body.id,
        body.name,
        guard=body.guard,
        audit=audit_entry(
            request,
            caller,
            "project.create",
            {"name": body.name, "guard": guard},
            project_id=body.id,
        ),
    )
    return JSONBytes(project.to_dict(), status_code=201)


@router.patch("/{project_id}", **operation(scope=ADMIN, body=UpdateProject, errors=[400, 404]))
async def update_project(request: Request, project_id: str = ProjectId) -> JSONBytes:
    """Set the project's guard overrides (``null`` clears them): they apply to its keys'
    calls and its workflow runs, unless the model alias sets its own."""
    caller = await _global_admin(request)
    body = parse_body(UpdateProject, await read_json(request))
    if "guard" not in body.model_fields_set:
        raise InvalidRequestError("nothing to update: give `guard` (null clears it)", param="guard")
    guard = body.guard
    project = await _projects(request).set_guard(
        project_id,
        guard,
        audit=audit_entry(
            request,
            caller,
            "project.update",
            {"guard": guard.model_dump(mode="json", exclude_none=True) if guard else None},
            project_id=project_id,
        ),
    )
    return JSONBytes(project.to_dict())


@router.delete("/{project_id}", **operation(scope=ADMIN, errors=[400, 404, 409]))
async def delete_project(request: Request, project_id: str = ProjectId) -> JSONBytes:
    """Delete an empty project; 409 ``project_not_empty`` while it owns anything."""
    caller = await _global_admin(request)
    await _projects(request).delete(
        project_id, audit=audit_entry(request, caller, "project.delete", project_id=project_id)
    )
    return JSONBytes({"object": "project", "id": project_id, "deleted": True})
