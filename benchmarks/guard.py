"""The prompt-injection guard: cross-validated quality on the dev set, and latency.

    python benchmarks/guard.py [--json benchmarks/results/guard.json]

Quality is measured by grouped 5-fold cross-validation on ``../shared/data/guard/dev.jsonl``
(the only data the guard is trained on; benchmarks/guard_train.py), per category, plus a
leave-one-category-out figure: each attack family is left out of training and recall
measured on it. These are dev-set figures, not a held-out measurement. Latency is the
shipped detector's ``check`` on 1,000-character prompts (p50/p95 over several prompts),
and on 10,000 and 100,000 characters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import guard_train  # noqa: E402

from trellis.guard.injection import InjectionDetector  # noqa: E402


def latency(detector: InjectionDetector, texts: list[str], rounds: int) -> dict[str, float]:
    for text in texts:
        detector.check(text)
    times = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            detector.check(text)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3),
        "samples": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=guard_train.DATA)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/guard.json")
    args = parser.parse_args()
    rows = guard_train.load(args.data)
    trained = guard_train.train(args.data)  # CV report; the weights are not written
    detector = InjectionDetector()
    corpus = " ".join(r["text"] for r in rows)
    long_texts = [r["text"] for r in rows if len(r["text"]) >= 1000]
    thousand = [t[:1000] for t in long_texts[:20]]
    # Benign prompts are short: also time benign text padded out to 1,000 characters.
    benign = " ".join(r["text"] for r in rows if r["label"] == "benign")
    thousand += [benign[i * 1000 : (i + 1) * 1000] for i in range(10)]
    result = {
        "what": "prompt-injection guard, grouped 5-fold CV on the dev set (not held-out)",
        "command": "python benchmarks/guard.py",
        "quality": trained["report"],
        "shipped_model_cv_note": "threshold 0.5 of the shipped weights = the CV operating point",
        "latency": {
            "1000_chars": latency(detector, thousand, 20),
            "10000_chars": latency(detector, [corpus[:10_000]], 30),
            "100000_chars": latency(detector, [corpus[:100_000]], 5),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"cv": result["quality"]["cv"], "latency": result["latency"]}, indent=2))


if __name__ == "__main__":
    main()
