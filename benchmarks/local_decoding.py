"""Default decoding for the bundled SmolLM2-135M: a small measured comparison.

Runs every prompt of ``benchmarks/data/local_decoding_prompts.jsonl`` (short
factual questions and one-line instructions, each with the words a right answer
contains) through :class:`LocalEngineProvider` (the shipped engine) under a few
decoding configurations (the ``local.*`` settings), with fixed seeds and
``max_tokens`` 64, and reports per configuration:

- loops: share of answers with a repeated n-gram loop (some word 4-gram three
  times or more: "la Femme, la Femme, la Femme");
- right: share of answers that contain the expected fact or follow the instruction
  (all ``expect_all`` words, any ``expect`` word, at most ``max_words`` words);
- stopped: share of answers that ended by themselves before ``max_tokens``;
- tokens: mean completion tokens.

The configurations are well-known settings, not a search over the prompt set:
llama-cpp-python's chat defaults, greedy, the SmolLM2 model card's sampling
(temperature 0.2, top-p 0.9), llama.cpp's classic repeat penalty 1.1, and a short
generic system prompt in place of the chat template's "You are a helpful AI
assistant named SmolLM, trained by Hugging Face".

    .venv/bin/python benchmarks/local_decoding.py --seeds 1 2 3 4 5 \\
        --json benchmarks/results/local_decoding.json

About 15 minutes on one core (``--threads``). Figures: docs/configuration.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trellis.inference.local.provider import LocalEngineProvider
from trellis.schema import ChatRequest
from trellis.settings import Deployment, LocalModelSettings

PROMPTS = Path(__file__).parent / "data" / "local_decoding_prompts.jsonl"
SYSTEM = "You are a helpful assistant. Answer the question directly and briefly."
LLAMA_CPP = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05}

#: name -> LocalModelSettings fields. "system_prompt": None keeps the template's own.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-cpp defaults": {**LLAMA_CPP, "repeat_penalty": 1.0, "system_prompt": None},
    "greedy": {"temperature": 0.0, "repeat_penalty": 1.0, "system_prompt": None},
    "model card (t 0.2, top-p 0.9)": {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 50,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "system_prompt": None,
    },
    "llama-cpp + repeat 1.1": {**LLAMA_CPP, "repeat_penalty": 1.1, "system_prompt": None},
    "llama-cpp + system": {**LLAMA_CPP, "repeat_penalty": 1.0, "system_prompt": SYSTEM},
    "llama-cpp + repeat 1.1 + system": {
        **LLAMA_CPP,
        "repeat_penalty": 1.1,
        "system_prompt": SYSTEM,
    },
    "greedy + repeat 1.1 + system": {
        "temperature": 0.0,
        "repeat_penalty": 1.1,
        "system_prompt": SYSTEM,
    },
}

_WORD = re.compile(r"[\w']+")


def has_loop(text: str, n: int = 4, times: int = 3) -> bool:
    """True when some word n-gram occurs ``times`` times or more (a degenerate loop)."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(count >= times for count in grams.values())


def is_right(text: str, case: dict[str, Any]) -> bool:
    """Does the answer contain the expected fact / follow the instruction?"""
    sensitive = case.get("case_sensitive", False)
    haystack = text if sensitive else text.lower()

    def found(word: str) -> bool:
        needle = word if sensitive else word.lower()
        return re.search(rf"(?<![\w]){re.escape(needle)}(?![\w])", haystack) is not None

    if "max_words" in case and len(_WORD.findall(text)) > case["max_words"]:
        return False
    if any(not found(word) for word in case.get("expect_all", [])):
        return False
    expect = case.get("expect")
    return not expect or any(found(word) for word in expect)


@dataclass
class Tally:
    answers: int = 0
    loops: int = 0
    right: int = 0
    stopped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = max(self.answers, 1)
        return {
            "answers": self.answers,
            "loop_rate": round(self.loops / n, 3),
            "right_rate": round(self.right / n, 3),
            "stopped_rate": round(self.stopped / n, 3),
            "mean_tokens": round(self.tokens / n, 1),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
        }


async def run_config(
    settings: LocalModelSettings, cases: list[dict[str, Any]], seeds: list[int], max_tokens: int
) -> Tally:
    provider = LocalEngineProvider(Deployment(provider="local", model="smollm2"), settings)
    tally = Tally()
    try:
        await provider.load()
        for seed in seeds:
            for case in cases:
                request = ChatRequest(
                    model="local",
                    messages=[{"role": "user", "content": case["prompt"]}],
                    max_tokens=max_tokens,
                    seed=seed,
                )
                started = time.perf_counter()
                response = await provider.chat(request)
                tally.seconds += time.perf_counter() - started
                text = response.choices[0].message.content or ""
                loop, right = has_loop(text), is_right(text, case)
                stopped = response.choices[0].finish_reason == "stop"
                tally.answers += 1
                tally.loops += loop
                tally.right += right
                tally.stopped += stopped
                tally.tokens += response.usage.completion_tokens if response.usage else 0
                tally.samples.append(
                    {"id": case["id"], "seed": seed, "right": right, "loop": loop, "text": text}
                )
    finally:
        await provider.aclose()
    return tally


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cases = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    results: dict[str, Any] = {}
    for name, fields in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        settings = LocalModelSettings(n_threads=args.threads, **fields)
        # Greedy decoding ignores the seed: one pass is enough.
        seeds = args.seeds[:1] if settings.temperature == 0 else args.seeds
        tally = await run_config(settings, cases, seeds, args.max_tokens)
        results[name] = {
            "settings": fields,
            "default": shipped(fields),
            **tally.summary(),
            "samples": tally.samples,
        }
        row = results[name]
        print(
            f"{name:34} loops {row['loop_rate']:5.0%}  right {row['right_rate']:5.0%}  "
            f"stopped {row['stopped_rate']:5.0%}  tokens {row['mean_tokens']:5.1f}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "prompts": len(cases),
        "seeds": args.seeds,
        "max_tokens": args.max_tokens,
        "configs": results,
    }


def shipped(fields: dict[str, Any]) -> bool:
    """Is this configuration what ``LocalModelSettings()`` ships? (Unset fields run as shipped.)"""
    defaults = LocalModelSettings()
    return all(getattr(defaults, name) == value for name, value in fields.items())


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['prompts']} prompts, seeds {report['seeds']}, max_tokens {report['max_tokens']}"
    )
    print("| configuration | loops | right | stopped | mean tokens |")
    print("|---|---:|---:|---:|---:|")
    for name, row in report["configs"].items():
        if row.get("default"):
            name += " (the default)"
        print(
            f"| {name} | {row['loop_rate']:.0%} | {row['right_rate']:.0%} | "
            f"{row['stopped_rate']:.0%} | {row['mean_tokens']:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="configuration names to run")
    parser.add_argument("--json", type=Path, help="also write the results (with answers) here")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
