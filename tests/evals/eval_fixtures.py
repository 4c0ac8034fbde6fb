"""Shared by the runner tests and their child process: a gateway on a fake upstream with
prices, a small arithmetic dataset and a suite over it."""

from __future__ import annotations

from typing import Any

from trellis.evals import Dataset, Suite, parse_dataset, parse_suite
from trellis.inference.gateway import Gateway
from trellis.inference.router import Router
from trellis.settings import Deployment, ModelAlias, Prices, RetrySettings
from trellis.testing.sinks import ListSink

#: $ per million tokens of the fake deployments.
PRICES = Prices(input=2.0, output=8.0)


def answer(body: dict[str, Any]) -> str:
    """The fake model: ``good`` answers sums right, ``bad`` is off by one."""
    text = str(body["messages"][-1]["content"])
    a, b = (int(x) for x in text.rsplit(" ", 1)[-1].rstrip("?").split("+"))
    return str(a + b + (0 if body["model"] == "good-model" else 1))


def make_gateway(base_url: str, *, defer: bool = False, sink: ListSink | None = None) -> Gateway:
    aliases = [
        ModelAlias(
            name=name,
            deployments=[
                Deployment(
                    provider="openai-compatible",
                    model=f"{name}-model",
                    base_url=base_url,
                    prices=PRICES,
                )
            ],
        )
        for name in ("good", "bad")
    ]
    return Gateway(
        Router(aliases, retry=RetrySettings(attempts=1)),
        sink=sink or ListSink(),
        defer_bookkeeping=defer,
    )


def dataset_of(n: int) -> Dataset:
    lines = [
        f'{{"id": "c{i}", "input": "{i}+{i + 1}", "expected": "{2 * i + 1}"}}' for i in range(n)
    ]
    return parse_dataset("\n".join(lines), name="sums")


def suite_of(**extra: Any) -> Suite:
    return parse_suite(
        {
            "name": "sums",
            "dataset": "sums.jsonl",
            "candidates": [
                {"name": "good", "model": "good", "prompt": "What is {input}?"},
                {
                    "name": "bad",
                    "model": "bad",
                    "prompt": "What is {input}?",
                    "params": {"temperature": 0},
                },
            ],
            "metrics": ["exact", "chrf", {"name": "regex", "pattern": "^[0-9]+$"}],
            **extra,
        }
    )
