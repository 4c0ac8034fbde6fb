"""kill -9 of a *server* mid-run: the restarted server continues the run from its last
completed step by itself; no completed step runs again and no recorded effect repeats."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"
ADMIN_KEY = "tr-server-crash-admin-key-0123456789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env.update(TRELLIS_ADMIN_KEY=ADMIN_KEY, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
    command = [sys.executable, "-m", "trellis.cli", "serve", "--port", str(port), "-c", str(config)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"the server did not start:\n{log.read_text()}")


def test_a_server_killed_mid_run_continues_it_after_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "trellis.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "include_local_models": False,
                "workflows": ["orch_flows:crash"],
                "orchestration": {"lease_seconds": 30},  # recovery must not wait for it
            }
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "block").touch()
    log = tmp_path / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    server = _serve(config, port, log)
    try:

        def start_run() -> None:  # waits for a result that never comes: the server dies
            with contextlib.suppress(httpx.TransportError):
                httpx.post(
                    f"{url}/workflows/crash/runs",
                    json={"input": {"dir": str(work)}},
                    headers=headers,
                    timeout=60,
                )

        caller = threading.Thread(target=start_run, daemon=True)
        caller.start()
        deadline = time.monotonic() + 60
        while "three" not in _lines(work / "ran"):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run never reached step three"
            time.sleep(0.02)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert _lines(work / "ran") == ["one", "two", "three"]

    (work / "block").unlink()  # the step in flight may now finish when run again
    server = _serve(config, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            runs = httpx.get(f"{url}/runs", params={"workflow": "crash"}, headers=headers)
            assert runs.status_code == 200, runs.text
            (run,) = runs.json()["data"]
            if run["status"] == "succeeded":
                break
            assert time.monotonic() < deadline, run
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    # Steps one and two ran once; three, in flight at the kill, ran again; its recorded
    # charge was not repeated.
    assert _lines(work / "ran") == ["one", "two", "three", "three", "four"]
    assert _lines(work / "charges") == ["5"]
