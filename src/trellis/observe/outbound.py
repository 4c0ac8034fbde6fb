"""Proxy options for the aiohttp clients that leave the request path (alert webhooks, OTLP).

They follow the same proxy variables as the providers' client (``trellis.http_proxies``),
read once per destination, so a corporate proxy set for model calls also carries
alerts and exported traces.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from yarl import URL

from trellis.http_proxies import proxy_for

__all__ = ["request_options"]


def request_options(url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of an aiohttp request to ``url``: ``headers``, and the proxy.

    A proxy's credentials go to the proxy only: in the ``CONNECT`` of an HTTPS
    destination, or in the request an HTTP destination's forward proxy reads.
    """
    options: dict[str, Any] = {"headers": dict(headers or {})}
    proxy = proxy_for(url)
    if proxy is None:
        return options
    parsed = URL(proxy)
    options["proxy"] = str(parsed.with_user(None)) if parsed.user is not None else proxy
    if parsed.user is not None:
        credentials = f"{parsed.user}:{parsed.password or ''}".encode()
        authorization = {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()}
        if URL(url).scheme == "https":
            options["proxy_headers"] = authorization
        else:
            options["headers"].update(authorization)
    return options
