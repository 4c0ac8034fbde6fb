"""Every failure leaves the server as an OpenAI-style error body with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from trellis.errors import InvalidRequestError, TrellisError
from trellis.server.responses import JSONBytes

__all__ = ["install_error_handlers", "error_response", "validation_error", "allowed_methods"]

log = logging.getLogger("trellis.server")

_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(exc: TrellisError) -> JSONBytes:
    return JSONBytes(exc.to_body(), status_code=exc.status_code, headers=exc.headers or None)


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first problem, named by its field path, as OpenAI phrases it."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    code = "invalid_value"
    if first.get("type") == "extra_forbidden" and param:
        text, code = f"Unrecognized request argument supplied: '{param}'", "unknown_parameter"
    else:
        text = f"Invalid value for '{param}': {message}" if param else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequestError(text, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TrellisError)
    async def _trellis(_: Request, exc: TrellisError) -> JSONBytes:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONBytes:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONBytes:
        body = {
            "error": {
                "message": str(exc.detail),
                "type": _STATUS_TYPES.get(exc.status_code, "invalid_request_error"),
                "param": None,
                "code": None,
            }
        }
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return JSONBytes(body, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONBytes:
        log.exception("unexpected error", exc_info=exc)
        body = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        # Starlette re-raises the error after this answer and the server then drops the
        # connection: ``Connection: close`` tells the client not to send another request
        # on it (a kept-alive client would get a reset instead of an answer).
        return JSONBytes(body, status_code=500, headers={"connection": "close"})


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves on this request's path, for a 405's ``Allow``.

    Starlette names only the methods of the first route whose path matched, while
    ``GET`` and ``POST /v1/keys`` (say) are two routes. Each method is asked of the
    router as a request would (only on a 405, so the cost does not matter).
    """
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
