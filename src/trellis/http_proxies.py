"""Which proxy a provider's base URL goes through, from the standard environment variables.

``HTTPS_PROXY`` for HTTPS origins, ``HTTP_PROXY`` for plain HTTP ones, ``ALL_PROXY``
for either when the specific one is unset; lower-case names win over upper-case
ones, as in curl and Python's ``urllib``. ``NO_PROXY`` lists what goes direct:
``*``, host names (``example.com`` also covers its subdomains; a leading ``.`` or
``*.`` is the same), IP addresses and CIDR ranges (``10.0.0.0/8``), each optionally
with ``:port``. Loopback origins (``localhost``, ``127.0.0.0/8``, ``::1``) always go
direct, as in Go's ``net/http``: a proxy cannot reach this machine's loopback, and
local servers (vLLM, Ollama, llama.cpp defaults) must keep working when a corporate
proxy is set for everything else.

Read once per deployment when its provider is built, never per request.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["proxy_for"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL requests to ``url`` should go through, or None to go direct."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or _is_loopback(host):
        return None
    specific = "https_proxy" if parts.scheme == "https" else "http_proxy"
    proxy = _variable(env, specific) or _variable(env, "all_proxy")
    if not proxy:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if _bypassed(host, port, _variable(env, "no_proxy") or ""):
        return None
    return proxy


def _variable(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        value = env.get(name.upper())
    value = (value or "").strip()
    return value or None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def _address(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` sends ``host:port`` direct."""
    address = _address(host)
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        pattern, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in pattern:
            if address is not None and _in_network(address, pattern):
                return True
            continue
        pattern_address = _address(pattern)
        if pattern_address is not None:
            if address == pattern_address:
                return True
            continue
        domain = pattern.removeprefix("*").lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` apart; a bare IPv6 address keeps its colons."""
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return address, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def _in_network(address: _Address, cidr: str) -> bool:
    try:
        return address in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
