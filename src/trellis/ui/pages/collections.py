"""Collections: list and create, upload files (with a progress bar), documents, search.

Roles and projects as over ``/v1/collections``: reading and searching need inference or
ingest, uploading documents ingest, creating and deleting a collection admin (audited).
A viewer sees its project's collections; another project's answers 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tempfile
from pathlib import Path, PurePath

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from trellis.access.audit import record
from trellis.errors import InvalidRequestError, PayloadTooLargeError
from trellis.retrieval.loaders import LoaderError, load_path
from trellis.retrieval.models import CollectionInfo, Document, IngestReport
from trellis.retrieval.service import MAX_TOP_K
from trellis.ui.web import SECURITY_HEADERS, UiRoute, Viewer, is_htmx, render, runtime, viewer

router = APIRouter(route_class=UiRoute)

MODES = ("hybrid", "keyword", "vector")
PAGE = 50
#: One upload form post at most (the files are read into a temporary folder first).
UPLOAD_LIMIT = 64 * 1024 * 1024


@router.get("/ui/collections")
async def list_collections(request: Request) -> Response:
    me = await viewer(request, "collections")
    # As GET /v1/collections: the built-in admin over every project lists them all (only
    # those of the project it acts in open by name; the others say which project to pick).
    found = await runtime(request).retrieval.list_collections(me.project)
    return render(
        request, "collections/index.html", {"title": "Collections", "collections": found}, me=me
    )


@router.post("/ui/collections")
async def create_collection(request: Request) -> Response:
    me = await viewer(request, "collections.write")
    form = await request.form()
    name = str(form.get("name") or "").strip()
    if not 1 <= len(name) <= 64:
        raise InvalidRequestError("A collection needs a name of 1 to 64 characters.", param="name")
    info = await runtime(request).retrieval.create_collection(name, {}, me.project_id)
    await _audit(request, me, "collection.create", info)
    headers = {"hx-redirect": f"/ui/collections/{info.name}"} if is_htmx(request) else None
    return render(
        request,
        "collections/detail.html",
        await _detail_context(request, info.name, 0, me.project_id),
        me=me,
        status=201,
        headers=headers,
    )


async def _audit(request: Request, me: Viewer, action: str, info: CollectionInfo) -> None:
    """The audit entry of a collection change (its own transaction, after the change, as
    the API writes it)."""
    db = runtime(request).db
    assert db is not None
    entry = me.audit(request, action, project_id=info.project_id)
    async with db.write() as conn:
        await record(conn, entry.with_target(info.name))


async def _collection(request: Request, me: Viewer, name: str) -> CollectionInfo:
    """The named collection of the viewer's project (else 404, as if unknown)."""
    return await runtime(request).retrieval.get_collection(name, me.project_id)


async def _detail_context(
    request: Request, name: str, offset: int, project_id: str
) -> dict[str, object]:
    retrieval = runtime(request).retrieval
    info = await retrieval.get_collection(name, project_id)
    rows = await retrieval.list_documents(
        name, limit=PAGE + 1, offset=offset, project_id=project_id
    )
    return {
        "title": f"Collection {name}",
        "collection": info,
        "documents": rows[:PAGE],
        "offset": offset,
        "next_offset": offset + PAGE if len(rows) > PAGE else None,
        "modes": MODES,
        "max_top_k": MAX_TOP_K,
    }


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset", "0")
    if not raw.isdigit() or int(raw) > 2**63 - 1:
        raise InvalidRequestError("offset must be a whole number of 0 or more", param="offset")
    return int(raw)


@router.get("/ui/collections/{name}")
async def collection(name: str, request: Request) -> Response:
    me = await viewer(request, "collections")
    context = await _detail_context(request, name, _offset(request), me.project_id)
    if is_htmx(request):
        return render(request, "collections/_documents.html", context, me=me)
    return render(request, "collections/detail.html", context, me=me)


def _upload_name(upload: UploadFile) -> str:
    """The file's own name, without any folder a browser sent."""
    name = PurePath((upload.filename or "").replace("\\", "/")).name
    name = re.sub(r"[^\w.\- ]", "_", name).strip(" .")
    if not name:
        raise InvalidRequestError("An uploaded file has no usable name.", param="files")
    return name


def _loaded(path: Path, name: str) -> list[Document]:
    """The file's documents under the uploaded name (not the temporary path it was read from)."""
    docs = load_path(path)
    renamed = []
    for doc in docs:
        doc_id = name if doc.id == str(path) else doc.id
        source = name if doc.source == str(path) else doc.source
        renamed.append(dataclasses.replace(doc, id=doc_id, source=source))
    return renamed


@router.post("/ui/collections/{name}/upload")
async def upload(name: str, request: Request) -> Response:
    """Files from a multipart form, loaded as ``trellis ingest`` loads them, added in one go."""
    me = await viewer(request, "collections.documents")
    rt = runtime(request)
    await _collection(request, me, name)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > UPLOAD_LIMIT:
        raise PayloadTooLargeError(f"The upload is larger than the {UPLOAD_LIMIT} byte limit.")
    form = await request.form()
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
    if not files:
        raise InvalidRequestError("Choose at least one file to upload.", param="files")
    report = IngestReport()
    docs: list[Document] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="trellis-upload-") as folder:
        for upload_file in files:
            filename = _upload_name(upload_file)
            path = Path(folder) / filename
            content = await upload_file.read()
            total += len(content)
            if total > UPLOAD_LIMIT:  # a body sent without a Content-Length
                raise PayloadTooLargeError(
                    f"The upload is larger than the {UPLOAD_LIMIT} byte limit."
                )
            path.write_bytes(content)
            try:
                docs.extend(await asyncio.to_thread(_loaded, path, filename))
            except LoaderError as exc:
                report.failed[filename] = exc.reason
    if docs:
        added = await rt.retrieval.add_documents(name, docs, project_id=me.project_id)
        added.failed.update(report.failed)
        report = added
    context = {**await _detail_context(request, name, 0, me.project_id), "report": report}
    template = "collections/_upload_result.html" if is_htmx(request) else "collections/detail.html"
    return render(request, template, context, me=me)


@router.post("/ui/collections/{name}/search")
async def search(name: str, request: Request) -> Response:
    """What ``POST /v1/collections/{name}/search`` answers, as a table with every score."""
    me = await viewer(request, "collections")
    form = await request.form()
    query = str(form.get("query") or "").strip()
    if not query:
        raise InvalidRequestError("Type something to search for.", param="query")
    mode = str(form.get("mode") or "hybrid")
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}", param="mode")
    raw_k = str(form.get("top_k") or "10")
    if not raw_k.isdigit() or not 1 <= int(raw_k) <= MAX_TOP_K:
        raise InvalidRequestError(f"top_k must be 1 to {MAX_TOP_K}", param="top_k")
    hits = await runtime(request).retrieval.search(
        name,
        query,
        mode=mode,  # type: ignore[arg-type]
        top_k=int(raw_k),
        project_id=me.project_id,
    )
    context = {"hits": hits, "mode": mode, "query": query, "collection_name": name}
    if is_htmx(request):
        return render(request, "collections/_hits.html", context, me=me)
    return render(
        request,
        "collections/detail.html",
        {**await _detail_context(request, name, 0, me.project_id), **context},
        me=me,
    )


@router.post("/ui/collections/{name}/delete")
async def delete_collection(name: str, request: Request) -> Response:
    """Delete a collection of the viewer's project (admin), as ``DELETE /v1/collections``."""
    me = await viewer(request, "collections.write")
    info = await _collection(request, me, name)
    await runtime(request).retrieval.delete_collection(name, me.project_id)
    await _audit(request, me, "collection.delete", info)
    return RedirectResponse("/ui/collections", status_code=303, headers=SECURITY_HEADERS)
