"""Gateway overhead: latency Trellis adds over a fixed-delay upstream, and its throughput.

One run starts a fake OpenAI-compatible upstream (``trellis.testing.fake_upstream``)
with a fixed delay, then, each as its own process on loopback: two bare forwarders
under uvicorn (``floor_forwarder.py``: one on aiohttp, the reference floor, one on
Trellis' own provider client, so what Trellis adds beyond it is its own work),
Trellis with tracing on, Trellis with tracing off, and LiteLLM's proxy (from
``benchmarks/.venv-litellm``, made by ``benchmarks/setup_litellm.sh``; its row is
skipped when that is absent).

* Latency: requests one at a time on a kept-alive connection, interleaved across the
  targets in rounds so drift on the machine hits every target alike; "added" is a
  target's percentile minus the direct-to-upstream percentile of the same run.
* Throughput: a fixed number of connections each sending back to back for a bounded
  time, at rising concurrency; the best level without errors is "max rps".

The load generator is a small raw HTTP/1.1 client on uvloop, so the client is not
what limits the numbers (httpx costs several times more CPU per request); its CPU
use is reported so a reader can check. Usage::

    .venv/bin/python benchmarks/gateway_overhead.py            # ~2-3 minutes
    .venv/bin/python benchmarks/gateway_overhead.py --quick    # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "gateway_overhead.json"
DEFAULT_LITELLM = HERE / ".venv-litellm" / "bin" / "litellm"
ADMIN_KEY = "tr-bench-" + "k" * 32  # a fixed key for a throwaway data dir, never a real secret
UPSTREAM_MODEL = "gpt-bench"
ALIAS = "bench"
SKIP_LITELLM = "litellm: skipped (run benchmarks/setup_litellm.sh)"


# --- configuration and results ------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """Budget of one run; the defaults keep a full run under about three minutes."""

    delay: float = 0.020  # seconds the fake upstream waits before each answer
    warmup: int = 50  # sequential requests per target before measuring
    requests: int = 400  # measured sequential requests per target
    rounds: int = 5  # the sequential requests are interleaved across targets in this many rounds
    concurrency: tuple[int, ...] = (16, 64, 256)
    duration: float = 5.0  # measured seconds per throughput level
    ramp: float = 1.0  # unmeasured seconds before each throughput level
    request_timeout: float = 10.0
    litellm: bool = True
    litellm_bin: Path = DEFAULT_LITELLM
    tracing_off_row: bool = True
    json_path: Path | None = DEFAULT_JSON
    startup_timeout: float = 120.0
    keep_logs: bool = False
    # Another checkout's src/ served as one more Trellis row, for a same-run A/B of two versions.
    baseline_src: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A ~30 s smoke run: fewer samples, one concurrency level, short windows."""
        base: dict[str, Any] = {
            "warmup": 20,
            "requests": 90,
            "rounds": 3,
            "concurrency": (32,),
            "duration": 2.0,
            "ramp": 0.3,
        }
        base.update(overrides)
        return cls(**base)


@dataclass
class LevelResult:
    """One throughput window at a fixed concurrency."""

    concurrency: int
    ok: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float  # the target process tree, 100 = one core
    client_cpu_pct: float
    server_cpu_us_per_req: float


@dataclass
class TargetResult:
    name: str
    url: str
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    latency_errors: int = 0
    levels: list[LevelResult] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def mean_ms(self) -> float:
        return sum(self.latencies_ms) / len(self.latencies_ms) if self.latencies_ms else math.nan

    @property
    def errors(self) -> int:
        return self.latency_errors + sum(level.errors for level in self.levels)

    @property
    def best(self) -> LevelResult | None:
        """The fastest level whose error rate stayed under 1%: "sustained" means not failing."""
        clean = [lv for lv in self.levels if lv.errors <= 0.01 * max(1, lv.ok + lv.errors)]
        return max(clean or self.levels, key=lambda lv: lv.rps, default=None)


@dataclass
class BenchResult:
    config: BenchConfig
    targets: list[TargetResult]
    skipped: dict[str, str]
    started_at: float
    seconds: float
    environment: dict[str, Any]

    def target(self, name: str) -> TargetResult | None:
        return next((t for t in self.targets if t.name == name), None)

    def summary(self) -> dict[str, Any]:
        """The comparisons the issue asks for, computed from the rows."""
        direct = self.target("direct")
        on, off = self.target("trellis"), self.target("trellis (tracing off)")
        litellm = self.target("litellm")
        out: dict[str, Any] = {}
        if direct and on:
            out["trellis_added_p50_ms"] = on.p50_ms - direct.p50_ms
            out["trellis_added_p99_ms"] = on.p99_ms - direct.p99_ms
            out["target_added_p50_under_1ms"] = out["trellis_added_p50_ms"] < 1.0
        if on and litellm and on.best and litellm.best and litellm.best.rps > 0:
            out["trellis_over_litellm_rps"] = on.best.rps / litellm.best.rps
            out["target_3x_litellm_rps"] = out["trellis_over_litellm_rps"] >= 3.0
        floor = self.target(FLOOR)
        if direct and floor:
            out["floor_added_p50_ms"] = floor.p50_ms - direct.p50_ms
            if on:
                out["trellis_over_floor_p50_ms"] = on.p50_ms - floor.p50_ms
        client_floor = self.target(CLIENT_FLOOR)
        if direct and client_floor:
            out["client_floor_added_p50_ms"] = client_floor.p50_ms - direct.p50_ms
            if on:
                # What Trellis adds beyond forwarding with the same client: its own work.
                out["trellis_own_work_p50_ms"] = on.p50_ms - client_floor.p50_ms
        if on and off:
            out["tracing_added_p50_us"] = (on.p50_ms - off.p50_ms) * 1000
            out["tracing_added_mean_us"] = (on.mean_ms - off.mean_ms) * 1000
            if on.best and off.best:
                out["tracing_cpu_us_per_req"] = (
                    on.best.server_cpu_us_per_req - off.best.server_cpu_us_per_req
                )
        return out

    def to_json(self) -> dict[str, Any]:
        direct = self.target("direct")
        rows = []
        for t in self.targets:
            best = t.best
            rows.append(
                {
                    "target": t.name,
                    "url": t.url,
                    "requests": len(t.latencies_ms),
                    "p50_ms": t.p50_ms,
                    "p99_ms": t.p99_ms,
                    "mean_ms": t.mean_ms,
                    "added_p50_ms": t.p50_ms - direct.p50_ms if direct else None,
                    "added_p99_ms": t.p99_ms - direct.p99_ms if direct else None,
                    "max_rps": best.rps if best else None,
                    "max_rps_concurrency": best.concurrency if best else None,
                    "errors": t.errors,
                    "throughput": [dataclasses.asdict(level) for level in t.levels],
                }
            )
        config = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(self.config).items()
        }
        return {
            "benchmark": "gateway_overhead",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "seconds": round(self.seconds, 1),
            "config": config,
            "environment": self.environment,
            "rows": rows,
            "skipped": self.skipped,
            "summary": self.summary(),
        }


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- a minimal HTTP/1.1 client --------------------------------------------------


class HttpError(Exception):
    """The connection failed or answered something that is not an HTTP response."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection, one request at a time; parses just enough HTTP/1.1."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(HttpError(f"connection lost: {exc!r}" if exc else "connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._parse()

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            self._fail(HttpError(f"not an HTTP response: {bytes(buf[:40])!r}"))
            self.abort()
            return
        start = end + 4
        length_at = head.find(b"\r\ncontent-length:")
        if length_at >= 0:
            line_end = head.find(b"\r\n", length_at + 2)
            value = head[length_at + 17 : line_end if line_end >= 0 else len(head)]
            total = start + int(value)
            if len(buf) < total:
                return
            body = bytes(buf[start:total])
            del buf[:total]
        elif b"transfer-encoding: chunked" in head:
            parts: list[bytes] = []
            pos = start
            while True:
                size_end = buf.find(b"\r\n", pos)
                if size_end < 0:
                    return
                size = int(bytes(buf[pos:size_end]).split(b";")[0], 16)
                if len(buf) < size_end + 2 + size + 2:
                    return
                parts.append(bytes(buf[size_end + 2 : size_end + 2 + size]))
                pos = size_end + 2 + size + 2
                if size == 0:
                    break
            body = b"".join(parts)
            del buf[:pos]
        else:  # no framing: the body runs until the server closes; we never expect that
            self._fail(HttpError("response without content-length or chunked encoding"))
            self.abort()
            return
        if b"\r\nconnection: close" in head:
            self.closing = True
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        waiter.set_result((status, body))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Client:
    """A reconnecting wrapper around one ``_Connection`` to ``host:port``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: _Connection | None = None

    async def _connected(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.transport is None or conn.closing:
            if conn is not None:
                conn.abort()
            loop = asyncio.get_running_loop()
            _, fresh = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), self.timeout
            )
            self._conn = conn = fresh
        return conn

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send ``payload`` (a whole HTTP request) and return (status, body)."""
        conn = await self._connected()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(payload)
        timer = loop.call_later(self.timeout, _expire, conn, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def connect(self) -> None:
        await self._connected()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None


def _expire(conn: _Connection, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpError("timed out"))
        conn.abort()


def chat_request(host: str, port: int, path: str, model: str, key: str) -> bytes:
    """A small non-streaming chat completion, pre-encoded once per target."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello in three words."}],
            "max_tokens": 16,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _answered(status: int, body: bytes) -> bool:
    return status == 200 and b'"choices"' in body


# --- targets: processes under test ------------------------------------------------


@dataclass
class Target:
    """A running endpoint and the process whose CPU time is its cost."""

    name: str
    host: str
    port: int
    path: str  # the chat completions path
    model: str
    key: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def payload(self) -> bytes:
        return chat_request(self.host, self.port, self.path, self.model, self.key)


class Children:
    """Child processes, each in its own session so one signal reaches its whole tree.

    ``close`` (also run on Ctrl-C, SIGTERM and errors) stops every one by its id.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{_slug(name)}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{_slug(name)}.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # stragglers left in its session
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without TRELLIS_* settings (a stray one would skew a target)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env.update(extra)
    return env


def start_upstream(children: Children, delay: float, timeout: float) -> str:
    """Start the fake upstream and return its base URL (the first line it prints)."""
    argv = [
        sys.executable,
        "-m",
        "trellis.testing.fake_upstream",
        "--vendor",
        "openai",
        "--port",
        "0",
        "--delay",
        repr(delay),
    ]
    proc = children.start("upstream", argv, _clean_env(), stdout_pipe=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http"):
        raise RuntimeError(
            f"the fake upstream did not start: {line!r}\n{children.log_tail('upstream')}"
        )
    return line


def _trellis_argv() -> list[str]:
    script = Path(sys.executable).with_name("trellis")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "trellis.cli"]


def start_trellis(
    children: Children,
    name: str,
    upstream_url: str,
    *,
    tracing: bool,
    source: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """One worker, cache off, one alias pointing at the upstream, a throwaway data dir;
    ``source`` serves another checkout's ``src/`` instead of the installed package."""
    home = children.workdir / _slug(name)
    home.mkdir()
    config = home / "trellis.yaml"
    config.write_text(
        "include_local_models: false\n"
        f"default_model: {ALIAS}\n"
        "models:\n"
        f"  - name: {ALIAS}\n"
        "    deployments:\n"
        "      - provider: openai-compatible\n"
        f"        model: {UPSTREAM_MODEL}\n"
        f"        base_url: {upstream_url}\n"
        "        api_key_env: BENCH_UPSTREAM_KEY\n"
        "cache:\n  enabled: false\n"
        f"tracing:\n  enabled: {'true' if tracing else 'false'}\n"
    )
    port = free_port()
    env = _clean_env(
        TRELLIS_CONFIG=str(config),
        TRELLIS_ADMIN_KEY=ADMIN_KEY,
        TRELLIS_DATA_DIR=str(home / "data"),
        TRELLIS_TRACING__ENABLED="true" if tracing else "false",
        BENCH_UPSTREAM_KEY="sk-bench-upstream",
    )
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
    argv = [
        *_trellis_argv(),
        "serve",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    return children.start(name, argv, env), port


_QUIET_UVICORN: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING"},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


FLOOR = "bare forwarder (floor)"
BASELINE = "trellis (baseline checkout)"
CLIENT_FLOOR = "bare forwarder on Trellis' client"
#: floor_forwarder.py's app for each bare-forwarder row.
FORWARDERS = {FLOOR: "floor_forwarder:app", CLIENT_FLOOR: "floor_forwarder:trellis_client_app"}


def start_floor(
    children: Children, upstream_url: str, name: str = FLOOR
) -> tuple[subprocess.Popen[bytes], int]:
    """A bare ASGI forwarder under the same uvicorn (floor_forwarder.py): on aiohttp (the
    reference floor) or on Trellis' own provider client."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        FORWARDERS[name],
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return children.start(name, argv, _clean_env(FLOOR_UPSTREAM=upstream_url)), port


def start_litellm(
    children: Children, litellm_bin: Path, upstream_url: str
) -> tuple[subprocess.Popen[bytes], int]:
    """LiteLLM's proxy, one worker, no database, quiet logs, no network look-ups at start."""
    home = children.workdir / "litellm"
    home.mkdir()
    config = home / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {ALIAS}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {upstream_url}\n"
        "      api_key: sk-bench-upstream\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  num_retries: 0\n"
        "  set_verbose: false\n"
    )
    log_config = home / "logging.json"  # uvicorn's access log off, as Trellis runs it
    log_config.write_text(json.dumps(_QUIET_UVICORN))
    port = free_port()
    env = {k: v for k, v in _clean_env().items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # else it fetches prices from the internet
        LITELLM_LOG="ERROR",
        DISABLE_ADMIN_UI="True",
        LITELLM_TELEMETRY="False",
        HOME=str(home),
    )
    argv = [
        str(litellm_bin),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
        "--log_config",
        str(log_config),
    ]
    return children.start("litellm", argv, env), port


def wait_ready(
    children: Children, name: str, proc: subprocess.Popen[bytes], url: str, deadline: float
) -> None:
    """Poll ``url`` until it answers 200, the process dies, or the deadline passes."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} during start-up:\n{children.log_tail(name)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} was not ready at {url} in time:\n{children.log_tail(name)}")


# --- CPU accounting -----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _descendants(pid: int) -> list[int]:
    found, todo = [pid], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in task.read_text().split()]
                found.extend(kids)
                todo.extend(kids)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (Linux /proc)."""
    total = 0
    for each in _descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, all cores together (Linux /proc/stat)."""
    with contextlib.suppress(OSError, ValueError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = fields[3] + fields[4]  # idle, iowait
        return (sum(fields) - idle) / _TICK
    return math.nan


class LoadMeter:
    """CPU that processes other than ours burn during the run: a busy machine skews numbers."""

    def __init__(self, children: Children) -> None:
        self.children = children
        self.started = (time.monotonic(), machine_busy_seconds(), self._ours())

    def _ours(self) -> float:
        return time.process_time() + sum(
            tree_cpu_seconds(proc.pid) for proc in self.children.procs.values()
        )

    def other_pct(self) -> float:
        """Foreign CPU since start, in % of one core (200 = both cores of a 2-core machine)."""
        wall, busy, ours = self.started
        elapsed = time.monotonic() - wall
        foreign = (machine_busy_seconds() - busy) - (self._ours() - ours)
        return max(0.0, 100 * foreign / elapsed) if elapsed > 0 else math.nan


# --- measurement ---------------------------------------------------------------------


async def _sequential(client: Client, payload: bytes, count: int, into: list[float] | None) -> int:
    """``count`` requests one after another; latencies (ms) go to ``into``; returns errors."""
    errors = 0
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        try:
            status, body = await client.request(payload)
        except (HttpError, OSError, TimeoutError):
            errors += 1
            client.close()
            continue
        elapsed = clock() - started
        if not _answered(status, body):
            errors += 1
        elif into is not None:
            into.append(elapsed / 1e6)
    return errors


async def measure_latency(
    targets: list[Target], results: dict[str, TargetResult], config: BenchConfig
) -> None:
    """Warm up each target, then interleave sequential batches across targets in rounds."""
    clients = {t.name: Client(t.host, t.port, config.request_timeout) for t in targets}
    payloads = {t.name: t.payload() for t in targets}
    try:
        for t in targets:
            results[t.name].latency_errors += await _sequential(
                clients[t.name], payloads[t.name], config.warmup, None
            )
        rounds = max(1, config.rounds)
        per_round = [
            config.requests // rounds + (i < config.requests % rounds) for i in range(rounds)
        ]
        for index, count in enumerate(per_round):
            shift = index % len(targets)  # rotate the order so no target always goes first
            for t in targets[shift:] + targets[:shift]:
                results[t.name].latency_errors += await _sequential(
                    clients[t.name], payloads[t.name], count, results[t.name].latencies_ms
                )
    finally:
        for client in clients.values():
            client.close()


async def measure_level(target: Target, concurrency: int, config: BenchConfig) -> LevelResult:
    """``concurrency`` connections send back to back; completions inside the window count."""
    payload = target.payload()
    clients = [Client(target.host, target.port, config.request_timeout) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in clients))
    clock = time.perf_counter
    start = clock()
    window_start = start + config.ramp
    window_end = window_start + config.duration
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    marks: list[tuple[float, float]] = []  # (server, client) CPU seconds at window edges

    def mark() -> None:
        marks.append((tree_cpu_seconds(target.pid), time.process_time()))

    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + config.ramp, mark)
    loop.call_at(loop.time() + config.ramp + config.duration, mark)

    async def worker(client: Client) -> None:
        while (began := clock()) < window_end:
            try:
                status, body = await client.request(payload)
                good = _answered(status, body)
            except (HttpError, OSError, TimeoutError):
                good = False
                client.close()
            done = clock()
            if window_start <= done <= window_end:
                if good:
                    counts["ok"] += 1
                    latencies.append((done - began) * 1000)
                else:
                    counts["errors"] += 1
            elif not good and done > window_end:
                counts["errors"] += 1  # a failure after the window still is a failure

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            c.close()
    if len(marks) < 2:  # every worker ended early (the target went away)
        mark()
    (server_start, client_start), (server_end, client_end) = marks[0], marks[-1]
    server_cpu, client_cpu = server_end - server_start, client_end - client_start
    window = config.duration
    ok = counts["ok"]
    return LevelResult(
        concurrency=concurrency,
        ok=ok,
        errors=counts["errors"],
        seconds=window,
        rps=ok / window,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        server_cpu_pct=100 * server_cpu / window,
        client_cpu_pct=100 * client_cpu / window,
        server_cpu_us_per_req=1e6 * server_cpu / ok if ok else math.nan,
    )


async def measure_throughput(target: Target, result: TargetResult, config: BenchConfig) -> None:
    """Rising concurrency; stop early once a level gains under 5% (the target is saturated)."""
    for concurrency in config.concurrency:
        level = await measure_level(target, concurrency, config)
        result.levels.append(level)
        previous = result.levels[-2] if len(result.levels) > 1 else None
        if previous is not None and level.rps < 1.05 * previous.rps:
            break


async def _measure(
    targets: list[Target], results: dict[str, TargetResult], config: BenchConfig
) -> None:
    gc.collect()
    gc.freeze()  # keep collector pauses of the client out of the latencies
    gc.disable()
    try:
        await measure_latency(targets, results, config)
        for t in targets:
            await measure_throughput(t, results[t.name], config)
    finally:
        gc.enable()
        gc.unfreeze()


def _run_loop(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def _probe(target: Target, timeout: float) -> None:
    """One chat completion must succeed before we time anything."""

    async def once() -> tuple[int, bytes]:
        client = Client(target.host, target.port, timeout)
        try:
            return await client.request(target.payload())
        finally:
            client.close()

    status, body = asyncio.run(once())
    if not _answered(status, body):
        raise RuntimeError(f"{target.name}: probe answered {status}: {body[:300]!r}")


def _environment(litellm_bin: Path | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    if litellm_bin is not None:
        python = litellm_bin.with_name("python")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            env["litellm"] = out.stdout.strip() or None
    return env


def run(config: BenchConfig, *, log: Any = print, load_before: float | None = None) -> BenchResult:
    """Start everything, measure, stop everything; the core of the benchmark."""
    started_at = time.time()
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="trellis-bench-"))
    children = Children(workdir)
    skipped: dict[str, str] = {}
    targets: list[Target] = []
    results: dict[str, TargetResult] = {}
    other_load = math.nan
    use_litellm = config.litellm and config.litellm_bin.exists()
    if config.litellm and not use_litellm:
        skipped["litellm"] = SKIP_LITELLM
        log(SKIP_LITELLM)
    try:
        upstream_url = start_upstream(children, config.delay, 30)
        up = upstream_url.split("//", 1)[1]
        up_host, _, rest = up.partition(":")
        up_port, _, up_base = rest.partition("/")
        upstream_pid = children.procs["upstream"].pid
        targets.append(
            Target(
                "direct",
                up_host,
                int(up_port),
                f"/{up_base}/chat/completions",
                UPSTREAM_MODEL,
                "sk-bench-upstream",
                upstream_pid,
            )
        )

        pending: list[tuple[str, subprocess.Popen[bytes], int, str]] = []
        for name in FORWARDERS:
            proc, port = start_floor(children, upstream_url, name)
            pending.append((name, proc, port, "/healthz"))
        proc, port = start_trellis(children, "trellis", upstream_url, tracing=True)
        pending.append(("trellis", proc, port, "/healthz"))
        if config.tracing_off_row:
            proc, port = start_trellis(
                children, "trellis (tracing off)", upstream_url, tracing=False
            )
            pending.append(("trellis (tracing off)", proc, port, "/healthz"))
        if config.baseline_src is not None:
            proc, port = start_trellis(
                children, BASELINE, upstream_url, tracing=True, source=config.baseline_src
            )
            pending.append((BASELINE, proc, port, "/healthz"))
        if use_litellm:
            proc, port = start_litellm(children, config.litellm_bin, upstream_url)
            pending.append(("litellm", proc, port, "/health/liveliness"))

        deadline = time.monotonic() + config.startup_timeout
        for name, proc, port, ready_path in pending:
            key = ADMIN_KEY if name.startswith("trellis") else "sk-bench-client"
            model = UPSTREAM_MODEL if name in FORWARDERS else ALIAS
            target = Target(name, "127.0.0.1", port, "/v1/chat/completions", model, key, proc.pid)
            try:
                wait_ready(children, name, proc, f"http://127.0.0.1:{port}{ready_path}", deadline)
                _probe(target, config.request_timeout)
            except RuntimeError as exc:
                if name != "litellm":
                    raise
                skipped["litellm"] = f"litellm: failed to start ({exc})"
                log(skipped["litellm"])
                children.stop(name)
                continue
            targets.append(target)
        log(f"ready in {time.monotonic() - began:.1f}s: " + ", ".join(t.name for t in targets))

        results = {t.name: TargetResult(t.name, t.url) for t in targets}
        meter = LoadMeter(children)
        _run_loop(_measure(targets, results, config))
        other_load = meter.other_pct()
    finally:
        children.close()
        if config.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result = BenchResult(
        config=config,
        targets=[results[t.name] for t in targets],
        skipped=skipped,
        started_at=started_at,
        seconds=time.monotonic() - began,
        environment=_environment(config.litellm_bin if use_litellm else None),
    )
    result.environment["other_load_pct"] = round(other_load, 1)
    if load_before is not None:
        result.environment["load_before_pct"] = round(load_before, 1)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        data = _json_safe(result.to_json())
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return result


def _json_safe(value: Any) -> Any:
    """NaN (an empty sample) becomes null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- report ----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render(result: BenchResult) -> str:
    """The markdown table and the comparisons the issue asks for."""
    direct = result.target("direct")
    lines = [
        f"Gateway overhead: upstream delay {result.config.delay * 1000:g} ms, "
        f"{len(direct.latencies_ms) if direct else 0} sequential requests per target, "
        f"throughput at concurrency {', '.join(map(str, result.config.concurrency))} "
        f"for {result.config.duration:g} s each; {result.environment.get('cpus')} CPUs.",
        "",
        "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | max rps | errors "
        "| at conc. | gateway CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in result.targets:
        best = t.best
        is_direct = t.name == "direct"
        added50 = None if is_direct or not direct else t.p50_ms - direct.p50_ms
        added99 = None if is_direct or not direct else t.p99_ms - direct.p99_ms
        lines.append(
            f"| {t.name} | {_fmt(t.p50_ms)} | {_fmt(t.p99_ms)} | {_fmt(added50, 3, True)} "
            f"| {_fmt(added99, 3, True)} | {_fmt(best.rps if best else None, 0)} | {t.errors} "
            f"| {best.concurrency if best else '-'} "
            f"| {_fmt(best.server_cpu_us_per_req if best else None, 0)} |"
        )
    for message in result.skipped.values():
        lines.append(f"| {message} |||||||||")
    summary = result.summary()
    lines.append("")
    if "trellis_added_p50_ms" in summary:
        verdict = "met" if summary["target_added_p50_under_1ms"] else "MISSED"
        lines.append(
            f"Trellis adds {summary['trellis_added_p50_ms'] * 1000:.0f} µs at p50, "
            f"{summary['trellis_added_p99_ms'] * 1000:.0f} µs at p99 "
            f"(target < 1000 µs at p50: {verdict})."
        )
    if "floor_added_p50_ms" in summary:
        over = summary.get("trellis_over_floor_p50_ms", float("nan")) * 1000
        lines.append(
            f"A bare ASGI forwarder on aiohttp adds {summary['floor_added_p50_ms'] * 1000:.0f} µs "
            "at p50 (one more hop, uvicorn and the usual Python HTTP client); Trellis adds "
            + (f"{over:.0f} µs on top of it." if over >= 0 else f"{-over:.0f} µs less than it.")
        )
    if "client_floor_added_p50_ms" in summary:
        own = summary.get("trellis_own_work_p50_ms", float("nan")) * 1000
        lines.append(
            "The same forwarder on Trellis' own provider client adds "
            f"{summary['client_floor_added_p50_ms'] * 1000:.0f} µs at p50; the {own:.0f} µs "
            "Trellis adds beyond it is its own work (auth, validation, routing, tracing)."
        )
    if "trellis_over_litellm_rps" in summary:
        verdict = "met" if summary["target_3x_litellm_rps"] else "MISSED"
        lines.append(
            f"Throughput Trellis / LiteLLM: {summary['trellis_over_litellm_rps']:.2f}x "
            f"(target >= 3x: {verdict})."
        )
    elif "litellm" in result.skipped:
        lines.append("Throughput Trellis / LiteLLM: - (no LiteLLM row)")
    if "tracing_added_p50_us" in summary:
        cpu = summary.get("tracing_cpu_us_per_req")
        lines.append(
            f"Tracing on vs off: {summary['tracing_added_p50_us']:+.0f} µs at p50, "
            f"{summary['tracing_added_mean_us']:+.0f} µs mean per request"
            + (f", {cpu:+.0f} µs gateway CPU per request under load." if cpu is not None else ".")
        )
    client_peak = max((lv.client_cpu_pct for t in result.targets for lv in t.levels), default=0.0)
    lines.append(
        f"Load generator peak CPU {client_peak:.0f}% of one core "
        "(near 100% would mean the client, not the target, set the pace)."
    )
    other = max(
        result.environment.get("other_load_pct") or 0.0,
        result.environment.get("load_before_pct") or 0.0,
    )
    if other > 10:
        lines.append(
            f"WARNING: other processes used up to {other:.0f}% of a core around the run; "
            "the numbers are skewed by a busy machine."
        )
    lines.append("")
    lines.append("Throughput levels (rps / p50 ms under load / target CPU %):")
    for t in result.targets:
        levels = "; ".join(
            f"c={lv.concurrency}: {lv.rps:.0f} / {_fmt(lv.p50_ms)} / {lv.server_cpu_pct:.0f}%"
            + (f" ({lv.errors} errors)" if lv.errors else "")
            for lv in t.levels
        )
        lines.append(f"- {t.name}: {levels}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--delay", type=float, help="upstream delay in seconds (default 0.02)")
    parser.add_argument("--requests", type=int, help="measured sequential requests per target")
    parser.add_argument("--warmup", type=int, help="unmeasured sequential requests per target")
    parser.add_argument(
        "--concurrency",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="throughput levels, e.g. 16,64,256",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per throughput level")
    parser.add_argument("--no-litellm", action="store_true", help="leave out the LiteLLM row")
    parser.add_argument("--litellm-bin", type=Path, help=f"default {DEFAULT_LITELLM}")
    parser.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's src/ directory, served as one more Trellis row (same-run A/B)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target (< 1 ms added p50, >= 3x LiteLLM) is missed",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for name in (
        "delay",
        "requests",
        "warmup",
        "concurrency",
        "duration",
        "litellm_bin",
        "baseline_src",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.json is not None:
        overrides["json_path"] = args.json
    if args.no_litellm:
        overrides["litellm"] = False
    if args.keep_logs:
        overrides["keep_logs"] = True
    config = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    return config, args.check


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGINT unwind the stack, so ``run``'s clean-up stops the children.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    """

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def machine_load_now(seconds: float = 1.0) -> float:
    """How busy the machine is before we start, in % of one core."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - before) / seconds


def main(argv: Sequence[str] | None = None) -> int:
    config, check = parse_args(argv)
    with _signals_unwind():
        try:
            load = machine_load_now()
            if load > 20:
                print(
                    f"note: the machine is already {load:.0f}% busy (% of one core) before "
                    "the run; the figures will be noisy",
                    file=sys.stderr,
                )
            result = run(
                config, log=lambda m: print(m, file=sys.stderr, flush=True), load_before=load
            )
        except KeyboardInterrupt:
            print("interrupted; servers stopped", file=sys.stderr)
            return 130
    print(render(result), flush=True)
    if config.json_path is not None:
        print(f"\nJSON: {config.json_path}", file=sys.stderr)
    summary = result.summary()
    missed = [
        k
        for k in ("target_added_p50_under_1ms", "target_3x_litellm_rps")
        if summary.get(k) is False
    ]
    return 1 if check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
