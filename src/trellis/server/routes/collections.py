"""Retrieval collections over HTTP: manage collections and documents, and search them.

Reading and searching need the ``inference`` scope (a chat request with retrieval
reads the same data); creating, ingesting and deleting need ``admin``, because
they change what every caller's answers are grounded on.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from trellis.access.keys import ADMIN, INFERENCE
from trellis.retrieval import FusionConfig
from trellis.retrieval.loaders import record_to_document
from trellis.retrieval.service import DEFAULT_FUSION, MAX_TOP_K
from trellis.server.edge import authenticate, parse_body, read_json, runtime
from trellis.server.openapi import operation
from trellis.server.responses import JSONBytes

router = APIRouter(prefix="/v1/collections", tags=["collections"])

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


@router.get("", **operation(scope=INFERENCE))
async def list_collections(request: Request) -> JSONBytes:
    await authenticate(request, INFERENCE)
    found = await runtime(request).retrieval.list_collections()
    return JSONBytes({"object": "list", "data": [collection_json(c) for c in found]})


@router.post("", status_code=201, **operation(scope=ADMIN, body=CreateCollection))
async def create_collection(request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    body = parse_body(CreateCollection, await read_json(request))
    info = await runtime(request).retrieval.create_collection(body.name, body.metadata)
    return JSONBytes(collection_json(info), status_code=201)


@router.get("/{name}", **operation(scope=INFERENCE, errors=[404]))
async def get_collection(name: str, request: Request) -> JSONBytes:
    await authenticate(request, INFERENCE)
    return JSONBytes(collection_json(await runtime(request).retrieval.get_collection(name)))


@router.delete("/{name}", **operation(scope=ADMIN, errors=[404]))
async def delete_collection(name: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    await runtime(request).retrieval.delete_collection(name)
    return JSONBytes({"object": "collection", "name": name, "deleted": True})


@router.post("/{name}/reindex", **operation(scope=ADMIN, errors=[400, 404, 409]))
async def reindex_collection(name: str, request: Request) -> JSONBytes:
    """Re-chunk and re-embed with the server's embedder; answers when the swap is done."""
    await authenticate(request, ADMIN)
    retrieval = runtime(request).retrieval
    report = await retrieval.reindex(name)
    info = await retrieval.get_collection(name)
    return JSONBytes({**collection_json(info), "reindexed": report.to_dict()})


@router.get("/{name}/documents", **operation(scope=INFERENCE, errors=[404]))
async def list_documents(
    name: str,
    request: Request,
    limit: int = Query(default=100, ge=1, le=1000),
    # The databases' OFFSET is a signed 64-bit integer: past it is a 400, not a 500.
    offset: int = Query(default=0, ge=0, le=2**63 - 1),
) -> JSONBytes:
    await authenticate(request, INFERENCE)
    # One extra row tells whether another page exists without a count query.
    rows = await runtime(request).retrieval.list_documents(name, limit=limit + 1, offset=offset)
    has_more = len(rows) > limit
    return JSONBytes(
        {
            "object": "list",
            "data": [{"object": "document", **row.to_dict()} for row in rows[:limit]],
            "has_more": has_more,
            "next_offset": offset + limit if has_more else None,
        }
    )


@router.post("/{name}/documents", **operation(scope=ADMIN, body=AddDocuments, errors=[404]))
async def add_documents(name: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
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
    report = await runtime(request).retrieval.add_documents(name, docs)
    return JSONBytes({"object": "ingest_report", "collection": name, **report.to_dict()})


@router.delete("/{name}/documents/{doc_id:path}", **operation(scope=ADMIN, errors=[404]))
async def delete_document(name: str, doc_id: str, request: Request) -> JSONBytes:
    await authenticate(request, ADMIN)
    await runtime(request).retrieval.delete_document(name, doc_id)
    return JSONBytes({"object": "document", "id": doc_id, "deleted": True})


@router.post("/{name}/search", **operation(scope=INFERENCE, body=SearchBody, errors=[404]))
async def search(name: str, request: Request) -> JSONBytes:
    await authenticate(request, INFERENCE)
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
    )
    return JSONBytes(
        {
            "object": "list",
            "collection": name,
            "mode": body.mode,
            "data": [{"object": "search_hit", **hit.to_dict()} for hit in hits],
        }
    )
