"""Deployments inside a corporate network: the standard proxy variables (through a real
loopback proxy, CONNECT tunnels and absolute-URL forwarding), a private CA (``ca_file``)
and client certificates (``client_cert``/``client_key``)."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from trellis.errors import UpstreamConnectionError, UpstreamError, UpstreamProtocolError
from trellis.http_proxies import proxy_for
from trellis.inference.providers import build_provider
from trellis.inference.providers.base import HttpProvider, Provider
from trellis.schema import ChatRequest
from trellis.settings import Deployment
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.proxy import LoopbackProxy


@pytest.fixture(autouse=True)
def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the machine's own proxy settings must not leak in."""
    for name in ("https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# --- which origins go through a proxy ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://api.openai.com/v1", {}, None),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ("https://api.openai.com/v1", {"HTTP_PROXY": "http://p:3128"}, None),
        ("http://vllm.internal/v1", {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        ("http://vllm.internal/v1", {"ALL_PROXY": "http://a:1"}, "http://a:1"),
        # lower case wins, as in curl and urllib
        (
            "https://x.com",
            {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"},
            "http://low:1",
        ),
        ("https://x.com", {"HTTPS_PROXY": "  "}, None),
        # loopback always goes direct (as in Go): local vLLM/Ollama keep working
        ("http://127.0.0.1:8000/v1", {"HTTP_PROXY": "http://p:1"}, None),
        ("http://localhost:11434/v1", {"HTTP_PROXY": "http://p:1"}, None),
        ("http://[::1]:8080/v1", {"HTTP_PROXY": "http://p:1"}, None),
        # NO_PROXY: names cover their subdomains, with or without a leading dot or *.
        ("https://api.openai.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"}, None),
        ("https://openai.com", {"HTTPS_PROXY": "http://p:1", "no_proxy": ".openai.com"}, None),
        ("https://a.b.openai.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*.openai.com"}, None),
        (
            "https://notopenai.com",
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"},
            "http://p:1",
        ),
        ("https://x.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.com, *"}, None),
        ("http://10.1.2.3:8000", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, None),
        (
            "http://11.1.2.3:8000",
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
            "http://p:1",
        ),
        ("http://10.1.2.3:8000", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.1.2.3"}, None),
        ("http://[fd00::5]:80", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "fd00::/8"}, None),
        # with a port, only that port goes direct
        (
            "http://vllm.internal:8000",
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "vllm.internal:8000"},
            None,
        ),
        (
            "http://vllm.internal:9000",
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "vllm.internal:8000"},
            "http://p:1",
        ),
        ("https://x.com", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x.com:443"}, None),
    ],
)
def test_proxy_for_follows_the_standard_variables(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(url, env) == expected


# --- a private CA and client certificates -----------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_combined: Path  # certificate and key in one file

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for ``upstream.test`` and 127.0.0.1 and a
    client certificate, both signed by it (the ``openssl`` command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    root = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=root)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-days", "2", "-subj", "/CN=Trellis Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name, usage, alt in (
        ("server", "serverAuth", "subjectAltName=DNS:upstream.test,IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ):
        (root / f"{name}.ext").write_text(
            f"{alt}basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        run("req", *ec, "-subj", f"/CN=trellis-{name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")  # fmt: skip
    combined = root / "client-combined.pem"
    combined.write_text((root / "client.pem").read_text() + (root / "client.key").read_text())
    return Pki(
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        combined,
    )


@pytest.fixture
def tls_upstream(pki: Pki) -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", tls=pki.server_context()) as upstream:
        yield upstream


@pytest.fixture
async def providers() -> AsyncIterator[list[Provider]]:
    built: list[Provider] = []
    yield built
    for provider in built:
        await provider.aclose()


def build(built: list[Provider], base_url: str, **settings: object) -> Provider:
    deployment = Deployment(
        provider="openai-compatible", model="m", base_url=base_url, timeout=5, **settings
    )
    provider = build_provider(deployment)
    built.append(provider)
    return provider


def hello() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])  # type: ignore[list-item]


async def reply(provider: Provider) -> str | None:
    return (await provider.chat(hello())).choices[0].message.content


async def test_a_private_ca_is_trusted_only_where_configured(
    pki: Pki, tls_upstream: FakeUpstream, providers: list[Provider]
) -> None:
    trusting = build(providers, tls_upstream.base_url, ca_file=str(pki.ca))
    assert await reply(trusting) == "Hello from fake"
    default = build(providers, tls_upstream.base_url)  # the system's CAs only
    with pytest.raises(UpstreamConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await default.chat(hello())


@pytest.mark.parametrize("combined", [False, True])
async def test_a_client_certificate_the_server_requires(
    pki: Pki, providers: list[Provider], combined: bool
) -> None:
    context = pki.server_context(require_client_cert=True)
    with FakeUpstream("openai", tls=context) as upstream:
        files = (
            {"client_cert": str(pki.client_combined)}
            if combined
            else {"client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
        )
        with_cert = build(providers, upstream.base_url, ca_file=str(pki.ca), **files)
        assert await reply(with_cert) == "Hello from fake"
        without = build(providers, upstream.base_url, ca_file=str(pki.ca))
        with pytest.raises(UpstreamConnectionError):
            await without.chat(hello())
        assert len(upstream.requests) == 1


def test_tls_settings_are_checked_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="client_key needs"):
        Deployment(provider="openai", model="m", client_key="key.pem")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(UpstreamError, match="cannot load its TLS files") as caught:
        build_provider(
            Deployment(provider="openai", model="m", base_url="https://x.test", ca_file=missing)
        )
    assert not caught.value.retryable


# --- a real proxy on the loopback ---------------------------------------------------


async def test_https_through_a_connect_proxy(
    pki: Pki,
    tls_upstream: FakeUpstream,
    providers: list[Provider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with LoopbackProxy(credentials="team:p@ss word") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("//", "//team:p%40ss%20word@"))
        origin = f"https://upstream.test:{tls_upstream.port}/v1"
        provider = build(providers, origin, ca_file=str(pki.ca))
        assert await reply(provider) == "Hello from fake"
        assert await reply(provider) == "Hello from fake"  # the tunnel is kept alive
        assert proxy.request_lines == [f"CONNECT upstream.test:{tls_upstream.port} HTTP/1.1"]
        assert proxy.authorizations[0] == "Basic " + base64.b64encode(b"team:p@ss word").decode()
        # the proxy's credentials go to the proxy only, never through the tunnel
        assert all("proxy-authorization" not in r.headers for r in tls_upstream.requests)
        assert tls_upstream.requests[0].headers["host"] == f"upstream.test:{tls_upstream.port}"

        untrusting = build(providers, origin)  # TLS is still checked inside the tunnel
        with pytest.raises(UpstreamConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.chat(hello())


async def test_a_proxy_refusing_the_tunnel_is_a_connection_error(
    tls_upstream: FakeUpstream, providers: list[Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LoopbackProxy(credentials="team:secret") as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)  # no credentials
        provider = build(providers, f"https://upstream.test:{tls_upstream.port}/v1")
        with pytest.raises(UpstreamConnectionError, match="refused CONNECT.*407"):
            await provider.chat(hello())


async def test_http_through_a_forward_proxy(
    providers: list[Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeUpstream("openai") as upstream:
        async with LoopbackProxy(credentials="team:secret") as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("//", "//team:secret@"))
            origin = f"http://upstream.test:{upstream.port}/v1"
            provider = build(providers, origin)
            assert await reply(provider) == "Hello from fake"
            assert await reply(provider) == "Hello from fake"
            target = f"POST http://upstream.test:{upstream.port}/v1/chat/completions HTTP/1.1"
            assert proxy.request_lines == [target, target]
            assert proxy.authorizations[0] == "Basic " + base64.b64encode(b"team:secret").decode()
            assert upstream.requests[0].headers["host"] == f"upstream.test:{upstream.port}"


async def test_loopback_and_no_proxy_origins_go_direct(
    providers: list[Provider], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeUpstream("openai") as upstream:
        async with LoopbackProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            assert await reply(build(providers, upstream.base_url)) == "Hello from fake"
            assert proxy.request_lines == []


def test_an_unsupported_proxy_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:hunter2@proxy:1080")
    with pytest.raises(UpstreamError, match="socks5") as caught:
        build_provider(Deployment(provider="openai", model="m"))
    assert "hunter2" not in caught.value.message


async def test_keepalive_and_answer_cap_come_from_the_deployment(
    providers: list[Provider],
) -> None:
    with FakeUpstream("openai", reply="word " * 1000) as upstream:
        provider = build(providers, upstream.base_url, keepalive=0.2, max_response_bytes=2048)
        assert isinstance(provider, HttpProvider)
        assert (provider.client.keepalive, provider.client.max_body_bytes) == (0.2, 2048)
        with pytest.raises(UpstreamProtocolError, match="too large.*2048 bytes") as caught:
            await provider.chat(hello())
        assert not caught.value.retryable
        assert caught.value.code == "upstream_response_too_large"
