"""The prompt-injection guard: dev-set cross-validation, the probe set, and latency.

    python benchmarks/guard.py [--json benchmarks/results/guard.json]

Quality is measured by grouped 5-fold cross-validation on ``../shared/data/guard/dev.jsonl``
(the only data the guard is trained on; benchmarks/guard_train.py), per category, plus a
leave-one-category-out figure: each attack family is left out of training and recall
measured on it. These are dev-set figures, not a held-out measurement. The shipped
detector is then run on the probe set (``benchmarks/data/guard_probe.jsonl``, written by
hand for this project and never trained on; benchmarks/guard_probe.py): recall per attack
family and false-positive rate per benign category, next to the figures the detector
had before the structural cues (``benchmarks/guard_probe_before.json``). Latency is the
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

import guard_probe  # noqa: E402
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
    probe = guard_probe.evaluate(detector)
    before_path = ROOT / "benchmarks" / "guard_probe_before.json"
    before = json.loads(before_path.read_text()) if before_path.is_file() else None
    result = {
        "what": "prompt-injection guard: grouped 5-fold CV on the dev set (not held-out), "
        "and the shipped detector on the hand-written probe set (evaluation only)",
        "command": "python benchmarks/guard.py",
        "quality": trained["report"],
        "shipped_model_cv_note": "threshold 0.5 of the shipped weights = the CV operating point",
        "probe": {"after": probe, "before": before},
        "latency": {
            "1000_chars": latency(detector, thousand, 20),
            "10000_chars": latency(detector, [corpus[:10_000]], 30),
            "100000_chars": latency(detector, [corpus[:100_000]], 5),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    summary: dict[str, object] = {
        "dev_cv": result["quality"]["cv"],
        "dev_leave_one_category_out": {
            k: v for k, v in result["quality"]["leave_one_category_out"].items() if "recall" in v
        },
    }
    for name, figures in (("probe_before", before), ("probe_after", probe)):
        if figures is None:
            continue
        summary[name] = {
            "recall": figures["recall"],
            "fpr": figures["fpr"],
            "recall_per_family": {k: v["recall"] for k, v in figures["recall_per_family"].items()},
            "fpr_per_category": {k: v["fpr"] for k, v in figures["fpr_per_category"].items()},
        }
    summary["latency"] = result["latency"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
