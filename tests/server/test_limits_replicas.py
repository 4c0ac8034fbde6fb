"""Two real ``trellis serve`` processes sharing one database and one Redis: a limit of N
requests per minute admits exactly N across both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from trellis.testing.fake_upstream import FakeUpstream

ADMIN_KEY = "tr-replica-admin-key-0123456789"
REDIS_URL = os.environ.get("TRELLIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            raise
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    prefix = f"trellis:test:replicas:{uuid.uuid4().hex}:"
    yield prefix
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)
    client.close()


def _serve(config: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    command = [
        sys.executable,
        "-m",
        "trellis.cli",
        "serve",
        "--port",
        str(port),
        "-c",
        str(config),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_healthy(process: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("server did not start")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_two_replicas_admit_exactly_n_per_minute(tmp_path: Path, redis_prefix: str) -> None:
    limit = 7
    with FakeUpstream(vendor="openai") as upstream:
        upstream.reply = "hello from both replicas"
        config = tmp_path / "trellis.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(tmp_path / "data"),
                    "admin_key": ADMIN_KEY,
                    "include_local_models": False,
                    "default_model": "fake",
                    "retry": {"attempts": 1},
                    "cache": {"enabled": False},
                    "limits": {
                        "backend": "redis",
                        "redis_url": REDIS_URL,
                        "key_prefix": redis_prefix,
                    },
                    "models": [
                        {
                            "name": "fake",
                            "deployments": [
                                {
                                    "provider": "openai-compatible",
                                    "model": "gpt-4o-mini",
                                    "base_url": upstream.base_url,
                                }
                            ],
                        }
                    ],
                }
            )
        )
        ports = [_free_port(), _free_port()]
        processes: list[subprocess.Popen[str]] = []
        try:
            for port in ports:  # one after the other: the first one migrates the database
                processes.append(_serve(config, port))
                _wait_healthy(processes[-1], port)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            created = httpx.post(
                f"http://127.0.0.1:{ports[0]}/v1/keys",
                headers=admin,
                json={"name": "shared", "limits": {"rpm": limit}},
            )
            assert created.status_code == 201, created.text
            secret = created.json()["key"]
            key_id = created.json()["id"]

            def call(index: int) -> httpx.Response:
                port = ports[index % 2]
                return httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {secret}"},
                    json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
                    timeout=60,
                )

            with ThreadPoolExecutor(max_workers=24) as pool:
                replies = list(pool.map(call, range(3 * limit + 3)))
            admitted = [r for r in replies if r.status_code == 200]
            refused = [r for r in replies if r.status_code == 429]
            assert len(admitted) == limit, [r.status_code for r in replies]
            assert len(refused) == len(replies) - limit
            # Both replicas admitted some and refused some: the limit is shared, not per process.
            by_port = {
                port: [r.status_code for i, r in enumerate(replies) if ports[i % 2] == port]
                for port in ports
            }
            assert all(429 in codes for codes in by_port.values()), by_port
            for reply in refused:
                assert reply.json()["error"]["code"] == "rate_limit_exceeded"
                assert int(reply.headers["retry-after"]) >= 1
                assert reply.headers["x-ratelimit-limit-requests"] == str(limit)
                assert reply.headers["x-ratelimit-remaining-requests"] == "0"
                assert reply.headers["x-ratelimit-reset-requests"]
            for reply in admitted:
                assert reply.headers["x-ratelimit-limit-requests"] == str(limit)
            remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted)
            assert remaining == list(range(limit))  # each admission saw its own place
            # Either replica reports the shared usage.
            usage = httpx.get(
                f"http://127.0.0.1:{ports[1]}/v1/usage/key:{key_id}", headers=admin
            ).json()
            assert usage["backend"] == "redis" and usage["requests"]["remaining"] == 0
        finally:
            for process in processes:
                _stop(process)
