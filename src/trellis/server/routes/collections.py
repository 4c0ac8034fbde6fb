"""Retrieval collections over HTTP: manage collections and documents, and search them.

Collections belong to a project: another project's collection answers 404. Reading and
searching need ``inference`` or ``ingest`` (a chat request with retrieval reads the same
data); adding and deleting documents need ``ingest``; creating, re-indexing and deleting
collections need ``admin`` (of the project), and are written to the audit log.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.audit import record
from trellis.access.keys import ADMIN, INGEST
from trellis.access.policy import COLLECTIONS_READ
from trellis.inference.call import Caller
from trellis.retrieval import FusionConfig
from trellis.retrieval.loaders import record_to_document
from trellis.retrieval.models import CollectionInfo
from trellis.retrieval.service import DEFAULT_FUSION, MAX_TOP_K
from trellis.server.edge import (
    audit_entry,
    authenticate,
    not_found_outside,
    parse_body,
    project_filter,
    read_json,
    runtime,
)
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/collections", tags=["collections"])

#: Read and search: the policy the web UI shares.
READ = COLLECTIONS_READ

FilterValue = str | int | float | bool


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=512)
    text: str = Field(min_length=1)
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=10_000)


class Fusion(BaseModel):
    """Overrides of the service's hybrid default; omitted fields keep its values."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rrf", "weighted"] = DEFAULT_FUSION.method
    k: float = Field(default=DEFAULT_FUSION.k, ge=0)
    weights: tuple[float, float] = DEFAULT_FUSION.weights


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    mode: Literal["keyword", "vector", "hybrid"] = "hybrid"
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    filters: dict[str, FilterValue] | None = None
    min_score: float | None = None
    fusion: Fusion | None = None


def collection_json(info: Any) -> dict[str, Any]:
    return {"object": "collection", **info.to_dict()}


def default_document_id(doc: DocumentIn) -> str:
    """A content-derived id, so posting the same document twice stays a no-op."""
    digest = hashlib.sha256(f"{doc.title or ''}\x00{doc.text}".encode()).hexdigest()
    return f"doc-{digest[:16]}"


async def _collection(request: Request, name: str, caller: Caller) -> CollectionInfo:
    """The caller's project's collection ``name`` (names are a project's own; the built-in
    admin spanning projects names the default project's)."""
    info = await runtime(request).retrieval.get_collection(name, caller.project_id)
    not_found_outside(caller, info.project_id, f"collection named {name!r}")
    return info


async def _audit(request: Request, caller: Caller, action: str, info: CollectionInfo) -> None:
    """The audit entry of a collection change (its own transaction, after the change: the
    index backends own the change's)."""
    db = runtime(request).db
    assert db is not None
    entry = audit_entry(request, caller, action, project_id=info.project_id)
    async with db.write() as conn:
        await record(conn, entry.with_target(info.name))


@router.get("", **operation(scope=READ))
async def list_collections(request: Request) -> JSONBytes:
    caller = await authenticate(request, READ)
    found = await runtime(request).retrieval.list_collections(project_filter(caller))
    return JSONBytes({"object": "list", "data": [collection_json(c) for c in found]})


@router.post("", status_code=201, **operation(scope=ADMIN, body=CreateCollection, errors=[400]))
async def create_collection(request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    body = parse_body(CreateCollection, await read_json(request))
    info = await runtime(request).retrieval.create_collection(
        body.name, body.metadata, project_id=caller.project_id
    )
    await _audit(request, caller, "collection.create", info)
    return JSONBytes(collection_json(info), status_code=201)


@router.get("/{name}", **operation(scope=READ, errors=[404]))
async def get_collection(name: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, READ)
    return JSONBytes(collection_json(await _collection(request, name, caller)))


@router.delete("/{name}", **operation(scope=ADMIN, errors=[404]))
async def delete_collection(name: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, ADMIN)
    info = await _collection(request, name, caller)
    await runtime(request).retrieval.delete_collection(name, info.project_id)
    await _audit(request, caller, "collection.delete", info)
    return JSONBytes({"object": "collection", "name": name, "deleted": True})


@router.post("/{name}/reindex", **operation(scope=ADMIN, errors=[400, 404, 409]))
async def reindex_collection(name: str, request: Request) -> JSONBytes:
    """Re-chunk and re-embed with the server's embedder; answers when the swap is done."""
    caller = await authenticate(request, ADMIN)
    info = await _collection(request, name, caller)
    retrieval = runtime(request).retrieval
    report = await retrieval.reindex(name, project_id=info.project_id)
    info = await retrieval.get_collection(name, info.project_id)
    return JSONBytes({**collection_json(info), "reindexed": report.to_dict()})


@router.get("/{name}/documents", **operation(scope=READ, errors=[404]))
async def list_documents(
    name: str,
    request: Request,
    limit: int = Query(default=100, ge=1, le=1000),
    # The databases' OFFSET is a signed 64-bit integer: past it is a 400, not a 500.
    offset: int = Query(default=0, ge=0, le=2**63 - 1),
) -> JSONBytes:
    caller = await authenticate(request, READ)
    info = await _collection(request, name, caller)
    # One extra row tells whether another page exists without a count query.
    rows = await runtime(request).retrieval.list_documents(
        name, limit=limit + 1, offset=offset, project_id=info.project_id
    )
    has_more = len(rows) > limit
    return JSONBytes(
        {
            "object": "list",
            "data": [{"object": "document", **row.to_dict()} for row in rows[:limit]],
            "has_more": has_more,
            "next_offset": offset + limit if has_more else None,
        }
    )


@router.post("/{name}/documents", **operation(scope=INGEST, body=AddDocuments, errors=[404]))
async def add_documents(name: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INGEST)
    info = await _collection(request, name, caller)
    body = parse_body(AddDocuments, await read_json(request))
    docs = [
        record_to_document(
            {
                "id": doc.id or default_document_id(doc),
                "text": doc.text,
                "title": doc.title,
                "metadata": doc.metadata,
            },
            f"documents[{n}]",
            source=doc.source,
        )
        for n, doc in enumerate(body.documents)
    ]
    report = await runtime(request).retrieval.add_documents(name, docs, project_id=info.project_id)
    return JSONBytes({"object": "ingest_report", "collection": name, **report.to_dict()})


@router.delete("/{name}/documents/{doc_id:path}", **operation(scope=INGEST, errors=[404]))
async def delete_document(name: str, doc_id: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, INGEST)
    info = await _collection(request, name, caller)
    await runtime(request).retrieval.delete_document(name, doc_id, info.project_id)
    return JSONBytes({"object": "document", "id": doc_id, "deleted": True})


@router.post("/{name}/search", **operation(scope=READ, body=SearchBody, errors=[404]))
async def search(name: str, request: Request) -> JSONBytes:
    caller = await authenticate(request, READ)
    info = await _collection(request, name, caller)
    body = parse_body(SearchBody, await read_json(request))
    fusion = (
        FusionConfig(method=body.fusion.method, k=body.fusion.k, weights=body.fusion.weights)
        if body.fusion
        else None
    )
    hits = await runtime(request).retrieval.search(
        name,
        body.query,
        mode=body.mode,
        top_k=body.top_k,
        filters=body.filters,
        min_score=body.min_score,
        fusion=fusion,
        project_id=info.project_id,
    )
    return JSONBytes(
        {
            "object": "list",
            "collection": name,
            "mode": body.mode,
            "data": [{"object": "search_hit", **hit.to_dict()} for hit in hits],
        }
    )
