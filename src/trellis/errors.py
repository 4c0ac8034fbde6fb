"""One error tree for all of Trellis.

Two branches: :class:`RequestError` is the caller's mistake (4xx, never
retried), :class:`UpstreamError` is a runtime failure of a provider (mapped to
502/503/504 at the HTTP edge, retried by the router when ``retryable``).
Every error renders as an OpenAI-style body ``{"error": {message, type, code}}``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TrellisError",
    "RequestError",
    "InvalidRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "ContextLengthExceededError",
    "UnsupportedFeatureError",
    "ModelNotInstalledError",
    "OverloadedError",
    "UpstreamError",
    "ProviderHTTPError",
    "UpstreamTimeoutError",
    "UpstreamConnectionError",
    "UpstreamProtocolError",
    "NoDeploymentAvailableError",
    "ConfigurationError",
]


class TrellisError(Exception):
    """Base of every error Trellis raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigurationError(TrellisError):
    """Settings that cannot work (raised at start-up, not per request)."""

    error_type = "configuration_error"


# --- the caller's mistakes -------------------------------------------------


class RequestError(TrellisError):
    """The request cannot be served as sent; retrying it unchanged will not help."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequestError(RequestError):
    status_code = 400


class AuthenticationError(RequestError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFoundError(RequestError):
    status_code = 404
    code = "not_found"


class ConflictError(RequestError):
    """The target changed under the request (a concurrent write); running it again may work."""

    status_code = 409
    code = "conflict"


class PayloadTooLargeError(RequestError):
    status_code = 413
    code = "request_too_large"


class RequestTimeoutError(RequestError):
    """The request body did not arrive in time (a slow or stalled client). The rest of
    the body may still come, so the connection cannot serve another request: closed."""

    status_code = 408
    code = "request_timeout"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"connection": "close"})
        super().__init__(message, **kwargs)


class ContextLengthExceededError(RequestError):
    status_code = 400
    code = "context_length_exceeded"


class UnsupportedFeatureError(RequestError):
    """The chosen model or provider cannot do what the request asks (tools, embeddings...)."""

    status_code = 400
    code = "unsupported_feature"


class ModelNotInstalledError(RequestError):
    """The model is configured but this installation cannot run it (an optional extra
    is missing). Nothing changes until someone installs it, so, like the caller's
    mistakes, it is not retried and no circuit breaker counts it; 503, because the
    server, not the request, lacks something."""

    status_code = 503
    error_type = "server_error"
    code = "model_not_installed"


class OverloadedError(TrellisError):
    """Trellis itself has no room for the request now (a full queue): 429 with
    ``Retry-After``; the same request later may well go through."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(
            message, code=code, headers={"retry-after": str(max(1, round(retry_after)))}
        )
        self.retry_after = retry_after


# --- runtime failures of upstream providers --------------------------------


class UpstreamError(TrellisError):
    """A provider failed. ``retryable`` tells the router whether another attempt may help;
    ``deployment_fault`` whether the failure says the deployment is unhealthy, so it
    counts toward its circuit breaker.

    A failure the request itself caused must never count: five bad requests from one
    caller would open the breaker and refuse everyone. So a plain ``UpstreamError``
    counts only when retryable (the provider may answer the next attempt: it is the
    provider that failed); a non-retryable one (the provider could not serve this
    request, or a fixed configuration problem that fails fast anyway) does not.
    Timeouts, unreachable deployments and malformed answers always count;
    ``ProviderHTTPError`` decides by status.
    """

    status_code = 502
    error_type = "upstream_error"
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        body: Any = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        deployment_fault: bool | None = None,
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.provider = provider
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.body = body
        self._deployment_fault = deployment_fault

    @property
    def deployment_fault(self) -> bool:
        """Whether this failure counts toward the deployment's circuit breaker."""
        if self._deployment_fault is not None:
            return self._deployment_fault
        return self._default_deployment_fault()

    def _default_deployment_fault(self) -> bool:
        return self.retryable


class ProviderHTTPError(UpstreamError):
    """The provider answered with an HTTP error status.

    429 and 5xx are retryable; other 4xx mean the request itself was refused
    upstream, so they keep their status (400/401/403/404/422) at our edge.
    Only what says the deployment is unhealthy counts toward its breaker: 5xx, 408,
    429 (rate limited: routing around it for a while is what the breaker is for) and
    401/403 (our credentials are refused, for every caller). Any other 4xx is the
    upstream refusing this one request, and never counts; nor does a redirect (not
    retried either: the deployment's ``base_url`` needs fixing, its health is fine).
    """

    def __init__(self, message: str, *, upstream_status: int, **kwargs: Any) -> None:
        retryable = upstream_status == 429 or upstream_status >= 500 or upstream_status == 408
        kwargs.setdefault("retryable", retryable)
        super().__init__(message, upstream_status=upstream_status, **kwargs)
        if upstream_status == 429:
            self.status_code = 429
            self.error_type = "rate_limit_error"
            self.code = self.code or "rate_limit_exceeded"
        elif upstream_status >= 500:
            self.status_code = 502
        elif upstream_status in (400, 404, 409, 413, 422):
            # The upstream judged the request invalid: surface it as the caller's error.
            self.status_code = 400
            self.error_type = "invalid_request_error"
        elif upstream_status in (401, 403):
            # Our credentials for the provider are wrong: an operator problem, not the caller's.
            self.status_code = 502
            self.code = self.code or "upstream_auth_failed"
        else:
            self.status_code = 502

    def _default_deployment_fault(self) -> bool:
        status = self.upstream_status or 0
        return status >= 500 or status in (401, 403, 408, 429)


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"

    def _default_deployment_fault(self) -> bool:
        return True


class UpstreamConnectionError(UpstreamError):
    status_code = 503
    code = "upstream_unreachable"

    def _default_deployment_fault(self) -> bool:
        return True


class UpstreamProtocolError(UpstreamError):
    """The provider answered, but not in the shape its API documents (malformed JSON...)."""

    status_code = 502
    code = "bad_upstream_response"

    def _default_deployment_fault(self) -> bool:
        return True


class NoDeploymentAvailableError(UpstreamError):
    """Every deployment of the model and its fallbacks is failing or has an open breaker."""

    status_code = 503
    code = "no_deployment_available"
