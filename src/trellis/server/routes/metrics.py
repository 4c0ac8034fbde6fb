"""``GET /metrics``: Prometheus text exposition.

Open by default, as Prometheus scrapers expect (no credentials in a default scrape
config; the series carry model aliases and deployment labels, never prompts, keys or
key ids). ``metrics_require_key: true`` demands an observer or admin key, which
Prometheus sends with ``authorization: {credentials_file: ...}`` in its scrape config.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from trellis.access.keys import OBSERVER
from trellis.observe.metrics import CONTENT_TYPE
from trellis.server.edge import authenticate, runtime
from trellis.server.openapi import operation

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    **operation(scope=OBSERVER, open_when=lambda settings: not settings.metrics_require_key),
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the gateway's metrics."""
    rt = runtime(request)
    if rt.settings.metrics_require_key:
        await authenticate(request, OBSERVER)
    assert rt.metrics is not None
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE)
