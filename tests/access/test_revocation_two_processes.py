"""Key changes made through one server reach another server process within a second.

Two real ``trellis serve`` processes share one database (a SQLite file, or Postgres); the
verification cache lives 10 s (``key_cache_seconds``), so only the access-version poll can
make these pass.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

ADMIN_KEY = "tr-two-process-admin-key-0123456789"
#: The promise: a change reaches every process within this long.
WITHIN = 1.0


class Server:
    """``trellis serve --port 0`` in a subprocess; its port is read from uvicorn's log."""

    def __init__(self, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trellis.cli", "serve", "--port", "0", "-c", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""
        self.log: list[str] = []
        found = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
                if match:
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.stop()
            pytest.fail("server did not start:\n" + "".join(self.log))

    def client(self, secret: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {secret}"}, timeout=10
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("new_postgres_database")()
    config = tmp_path / "trellis.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "database_url": url,
                "admin_key": ADMIN_KEY,
                "include_local_models": False,
                "key_cache_seconds": 10,
                "host": "127.0.0.1",
            }
        )
    )
    a = Server(config)
    try:
        b = Server(config)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def refused_within(call: Callable[[], httpx.Response], status: int, limit: float) -> float:
    """Seconds until ``call`` answers ``status`` (polled every 20 ms), failing past ``limit``."""
    started = time.monotonic()
    while True:
        response = call()
        elapsed = time.monotonic() - started
        if response.status_code == status:
            return elapsed
        assert elapsed < limit, f"still {response.status_code} after {elapsed:.2f}s"
        time.sleep(0.02)


def test_revocation_role_change_expiry_and_rotation_reach_the_other_process(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    root_a = a.client(ADMIN_KEY)

    def new_key(*roles: str) -> tuple[str, str]:
        made = root_a.post("/v1/keys", json={"name": "k", "scopes": list(roles)})
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["key"]

    # Revocation: B has the key cached (10 s), A revokes it.
    key_id, secret = new_key("observer")
    on_b = b.client(secret)
    assert on_b.get("/v1/traces").status_code == 200
    assert on_b.get("/v1/traces").status_code == 200  # now from B's cache
    assert root_a.delete(f"/v1/keys/{key_id}").status_code == 200
    revoked = refused_within(lambda: on_b.get("/v1/traces"), 401, WITHIN)

    # Role change: observer → inference; B stops serving traces to it.
    key_id, secret = new_key("observer")
    on_b = b.client(secret)
    assert on_b.get("/v1/traces").status_code == 200
    assert root_a.patch(f"/v1/keys/{key_id}", json={"scopes": ["inference"]}).status_code == 200
    demoted = refused_within(lambda: on_b.get("/v1/traces"), 403, WITHIN)

    # Expiry set on A: B learns the new expiry and refuses once it passes.
    key_id, secret = new_key("observer")
    on_b = b.client(secret)
    assert on_b.get("/v1/traces").status_code == 200
    assert root_a.patch(f"/v1/keys/{key_id}", json={"expires_in": "1s"}).status_code == 200
    expired = refused_within(lambda: on_b.get("/v1/traces"), 401, 1.0 + WITHIN)
    assert on_b.get("/v1/traces").json()["error"]["code"] == "key_expired"

    # Rotation without grace: the old secret stops on B, the new one works there.
    key_id, secret = new_key("observer")
    on_b = b.client(secret)
    assert on_b.get("/v1/traces").status_code == 200
    rotated = root_a.post(f"/v1/keys/{key_id}/rotate", json={})
    assert rotated.status_code == 200, rotated.text
    gone = refused_within(lambda: on_b.get("/v1/traces"), 401, WITHIN)
    assert b.client(rotated.json()["key"]).get("/v1/traces").status_code == 200
    print(
        f"B refused: revoked {revoked:.3f}s, demoted {demoted:.3f}s, "
        f"expired {expired:.3f}s (expiry 1 s), rotated-out {gone:.3f}s"
    )
