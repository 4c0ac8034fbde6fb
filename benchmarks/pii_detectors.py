"""Precision and recall of every PII detector (``trellis.guard.pii``) on a labelled set.

Two sets: ``benchmarks/data/pii_labelled.jsonl`` (1,200 texts built by
``benchmarks/pii_dataset.py``: synthetic but realistic tickets, logs and snippets with
labelled values and hard negatives of the same shape) and
``benchmarks/data/pii_handwritten.jsonl`` (50 lines written by hand, kept out of the
generator's templates; the detectors were tuned on the generated set, and the
hand-written set measured them afterwards, see docs/configuration.md).

A detection counts as a true positive when its kind and its exact span match a label;
a detection of the right span under another kind counts against both kinds. Also
reported: the texts with a leak (a labelled value not wholly inside some detection,
whatever its kind: what a redacting policy cares about) and the detection time.

    .venv/bin/python benchmarks/pii_detectors.py [--json benchmarks/results/pii_detectors.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from trellis.guard.pii import KINDS, detect

DATA = {
    "generated": Path(__file__).parent / "data" / "pii_labelled.jsonl",
    "handwritten": Path(__file__).parent / "data" / "pii_handwritten.jsonl",
}
RESULT = Path(__file__).parent / "results" / "pii_detectors.json"


def evaluate(records: list[dict]) -> dict[str, object]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    leaks = 0
    examples: dict[str, list[str]] = {"false_positives": [], "false_negatives": []}
    started = time.perf_counter()
    found_all = [detect(r["text"]) for r in records]
    seconds = time.perf_counter() - started
    for record, found in zip(records, found_all, strict=True):
        text = record["text"]
        gold = {(e["kind"], e["start"], e["end"]) for e in record["entities"]}
        predicted = {(f.kind, f.start, f.end) for f in found}
        for kind, start, end in predicted - gold:
            fp[kind] += 1
            if len(examples["false_positives"]) < 15:
                examples["false_positives"].append(f"{kind}: {text[start:end]!r}")
        for kind, start, end in gold - predicted:
            fn[kind] += 1
            if len(examples["false_negatives"]) < 15:
                examples["false_negatives"].append(f"{kind}: {text[start:end]!r}")
        for kind, _, _ in gold & predicted:
            tp[kind] += 1
        covered = [(f.start, f.end) for f in found]
        if any(
            not any(s <= e["start"] and e["end"] <= t for s, t in covered)
            for e in record["entities"]
        ):
            leaks += 1
    detectors = {}
    for kind in KINDS:
        p_den, r_den = tp[kind] + fp[kind], tp[kind] + fn[kind]
        detectors[kind] = {
            "labelled": r_den,
            "true_positives": tp[kind],
            "false_positives": fp[kind],
            "false_negatives": fn[kind],
            "precision": round(tp[kind] / p_den, 4) if p_den else None,
            "recall": round(tp[kind] / r_den, 4) if r_den else None,
        }
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    chars = sum(len(r["text"]) for r in records)
    return {
        "records": len(records),
        "labelled_values": total_tp + total_fn,
        "texts_without_values": sum(1 for r in records if not r["entities"]),
        "micro_precision": round(total_tp / (total_tp + total_fp), 4),
        "micro_recall": round(total_tp / (total_tp + total_fn), 4),
        "texts_with_a_leaked_value": leaks,
        "detectors": detectors,
        "throughput_chars_per_s": round(chars / seconds),
        "mean_us_per_text": round(seconds / len(records) * 1e6, 1),
        "examples": examples,
    }


def report(name: str, result: dict) -> None:
    print(f"{name}: {result['records']} texts, {result['labelled_values']} labelled values")
    print(f"{'detector':<14}{'labelled':>9}{'precision':>11}{'recall':>8}{'FP':>5}{'FN':>5}")
    for kind, row in result["detectors"].items():
        p = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        r = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        print(
            f"{kind:<14}{row['labelled']:>9}{p:>11}{r:>8}"
            f"{row['false_positives']:>5}{row['false_negatives']:>5}"
        )
    print(
        f"micro precision {result['micro_precision']:.3f}, recall {result['micro_recall']:.3f}; "
        f"{result['texts_with_a_leaked_value']} of {result['records']} texts leak a value; "
        f"{result['mean_us_per_text']} us per text\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="a labelled JSONL set")
    parser.add_argument("--json", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    sets = {path.stem: path for path in args.data} if args.data else DATA
    results = {}
    for name, path in sets.items():
        records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        results[name] = evaluate(records)
        report(name, results[name])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
