"""Tests cannot reach the internet by accident: only loopback connections are allowed."""

import socket

import httpx
import pytest


def test_non_loopback_connections_are_refused() -> None:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="loopback"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed


async def test_async_clients_are_refused_too() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get("http://192.0.2.1:80/")
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    assert any("loopback" in text for text in chain), chain
