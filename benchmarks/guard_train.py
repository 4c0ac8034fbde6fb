"""Train the prompt-injection classifier and measure it by grouped cross-validation.

    python benchmarks/guard_train.py                 # CV report + write the shipped weights
    python benchmarks/guard_train.py --no-write      # CV report only

Reads only the dev set (``../shared/data/guard/dev.jsonl`` from the project root, or
``--data``). Features are ``trellis.guard.features.featurize`` of the normalised text;
the model is an L2-regularised logistic regression (scikit-learn, a dev dependency:
the shipped detector runs on numpy). Folds are grouped by near-duplicate family (word
5-gram Jaccard >= 0.5, looser than the data's own 0.8 split) so renamed copies of one
jailbreak never sit on both sides of a fold. The operating point is the threshold
whose out-of-fold false-positive rate on benign prompts is at most ``--target-fpr``
(0.03: a margin under the 0.05 goal for prompts the dev set lacks); the final model,
trained on every dev prompt, has its bias moved so that point is a score of 0.5.

The same run reports a leave-one-category-out figure: each attack family in turn is
left out of training, and recall is measured on it at that threshold — how the
detector does on an attack family it never saw. The runs are deterministic (lbfgs,
fixed folds): the same data gives the same weights (tests/guard/test_injection.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from trellis.guard.features import HASH_BITS, HEURISTICS, NGRAMS, featurize  # noqa: E402
from trellis.guard.injection import WEIGHTS_PATH  # noqa: E402
from trellis.guard.normalize import normalize  # noqa: E402
from trellis.guard.structure import floor_hits  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "guard" / "dev.jsonl"
FOLDS = 5
C = 4.0
TARGET_FPR = 0.03
N_NGRAMS = 1 << HASH_BITS


def load(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 is in texts
    return [json.loads(line) for line in lines if line.strip()]


def matrix(texts: list[str]) -> Any:
    """The sparse design matrix: n-gram buckets, then the heuristic columns."""
    from scipy import sparse

    rows, cols, vals = [], [], []
    for row, text in enumerate(texts):
        features = featurize(normalize(text).text)
        rows.append(np.full(len(features.buckets), row))
        cols.append(features.buckets)
        vals.append(features.values)
        dense = np.nonzero(features.heuristics)[0]
        rows.append(np.full(len(dense), row))
        cols.append(N_NGRAMS + dense)
        vals.append(features.heuristics[dense])
    width = N_NGRAMS + len(HEURISTICS) + 1
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(texts), width),
        dtype=np.float64,
    )


def floor_mask(texts: list[str]) -> np.ndarray:
    """Which texts the detector's structural floor flags whatever the model says (a floor
    cue outside quotes, in the text or in a payload decoded from it)."""
    out = []
    for text in texts:
        normalized = normalize(text)
        out.append(any(floor_hits(part) for part in [normalized.text, *normalized.payloads]))
    return np.array(out, dtype=bool)


def with_floor(scores: np.ndarray, floor: np.ndarray, threshold: float) -> np.ndarray:
    """Scores as the shipped detector sees them: floored texts reach the threshold."""
    return np.where(floor, np.maximum(scores, threshold), scores)


def near_duplicate_groups(texts: list[str], threshold: float = 0.5) -> np.ndarray:
    """A group id per text: texts linked by word 5-gram Jaccard >= threshold share one."""
    shingles = []
    for text in texts:
        words = re.findall(r"\w+", text.lower())
        shingles.append({tuple(words[i : i + 5]) for i in range(max(1, len(words) - 4))})
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = shingles[i], shingles[j]
            if not a or not b:
                continue
            if len(a & b) / len(a | b) >= threshold:
                parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(texts))])


def fit(x: Any, y: np.ndarray, c: float = C) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", solver="lbfgs", max_iter=5000)
    return model.fit(x, y)


def folds(y: np.ndarray, groups: np.ndarray, k: int = FOLDS) -> list[np.ndarray]:
    """Test indices of each fold, grouped and stratified, deterministic."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=13)
    return [test for _, test in splitter.split(np.zeros(len(y)), y, groups)]


def out_of_fold(x: Any, y: np.ndarray, test_folds: list[np.ndarray], c: float = C) -> np.ndarray:
    scores = np.zeros(len(y))
    for test in test_folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        scores[test] = fit(x[train], y[train], c).decision_function(x[test])
    return scores


def pick_threshold(scores: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    """The lowest logit threshold whose false-positive rate is at most ``target_fpr``."""
    benign = np.sort(scores[y == 0])[::-1]
    allowed = int(math.floor(target_fpr * len(benign)))
    # Flag strictly above the (allowed+1)-th highest benign score.
    return float(np.nextafter(benign[allowed], np.inf)) if allowed < len(benign) else -np.inf


def rates(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    attacks, benign = y == 1, y == 0
    return {
        "recall": round(float(flagged[attacks].mean()), 4) if attacks.any() else math.nan,
        "fpr": round(float(flagged[benign].mean()), 4) if benign.any() else math.nan,
        "attacks": int(attacks.sum()),
        "benign": int(benign.sum()),
    }


def per_category(
    scores: np.ndarray, y: np.ndarray, categories: list[str], threshold: float
) -> dict[str, dict[str, float]]:
    out = {}
    for category in sorted(set(categories)):
        mask = np.array([c == category for c in categories])
        flagged = scores[mask] >= threshold
        key = "recall" if y[mask][0] == 1 else "fpr"
        out[category] = {key: round(float(flagged.mean()), 4), "n": int(mask.sum())}
    return out


def leave_one_category_out(
    x: Any,
    y: np.ndarray,
    categories: list[str],
    test_folds: list[np.ndarray],
    threshold: float,
    floor: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Per category: train without it (and without the benign test fold), measure on it.

    Attack families: recall on the unseen family. Benign categories: false-positive rate
    on the unseen kind of benign prompt.
    """
    out: dict[str, dict[str, float]] = {}
    cats = np.array(categories)
    for category in sorted(set(categories)):
        held = cats == category
        flagged_total, n = 0, 0
        for test in test_folds:
            train = np.setdiff1d(np.arange(len(y)), test)
            train = train[~held[train]]
            probe = test[held[test]]
            if not len(probe):
                continue
            scores = fit(x[train], y[train]).decision_function(x[probe])
            if floor is not None:
                scores = with_floor(scores, floor[probe], threshold)
            flagged_total += int((scores >= threshold).sum())
            n += len(probe)
        key = "recall" if y[held][0] == 1 else "fpr"
        out[category] = {key: round(flagged_total / n, 4), "n": n}
    return out


def train(data: Path, *, target_fpr: float = TARGET_FPR, loco: bool = True) -> dict[str, Any]:
    """Cross-validate, fit on everything; returns the weights and the report."""
    rows = load(data)
    texts = [r["text"] for r in rows]
    y = np.array([1 if r["label"] == "attack" else 0 for r in rows])
    categories = [r["category"] for r in rows]
    started = time.perf_counter()
    x = matrix(texts)
    groups = near_duplicate_groups(texts)
    test_folds = folds(y, groups)
    oof = out_of_fold(x, y, test_folds)
    threshold = pick_threshold(oof, y, target_fpr)
    floor = floor_mask(texts)
    shipped = with_floor(oof, floor, threshold)
    report: dict[str, Any] = {
        "data": str(data.name),
        "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "n": len(rows),
        "folds": FOLDS,
        "groups": int(len(set(groups.tolist()))),
        "C": C,
        "target_fpr": target_fpr,
        # As shipped: the model's out-of-fold score, floored by the structural cues.
        "cv": rates(shipped, y, threshold),
        "cv_per_category": per_category(shipped, y, categories, threshold),
        "cv_model_only": rates(oof, y, threshold),
        "floor_on_dev": {
            "attacks": int(floor[y == 1].sum()),
            "benign": int(floor[y == 0].sum()),
        },
    }
    # The figure at the 0.05 goal itself, for reference (the shipped point is stricter).
    at_goal = pick_threshold(oof, y, 0.05)
    report["cv_at_fpr_0.05"] = rates(with_floor(oof, floor, at_goal), y, at_goal)
    if loco:
        report["leave_one_category_out"] = leave_one_category_out(
            x, y, categories, test_folds, threshold, floor
        )
    model = fit(x, y)
    coef = model.coef_[0].astype(np.float32)
    bias = float(model.intercept_[0]) - threshold  # the CV operating point becomes logit 0
    report["train_seconds"] = round(time.perf_counter() - started, 1)
    return {
        "ngram_weights": coef[:N_NGRAMS],
        "heuristic_weights": coef[N_NGRAMS:],
        "bias": bias,
        "report": report,
    }


def save(trained: dict[str, Any], path: Path) -> None:
    meta = {
        "hash_bits": HASH_BITS,
        "ngrams": list(NGRAMS),
        "heuristics": len(HEURISTICS) + 1,
        "trained_on": trained["report"]["data"],
        "data_sha256": trained["report"]["data_sha256"],
        "cv": trained["report"]["cv"],
        "trainer": "benchmarks/guard_train.py",
    }
    np.savez_compressed(
        path,
        ngram_weights=trained["ngram_weights"],
        heuristic_weights=trained["heuristic_weights"],
        bias=np.float64(trained["bias"]),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--no-write", action="store_true", help="report only")
    parser.add_argument("--no-loco", action="store_true", help="skip leave-one-category-out")
    parser.add_argument("--target-fpr", type=float, default=TARGET_FPR)
    args = parser.parse_args()
    trained = train(args.data, target_fpr=args.target_fpr, loco=not args.no_loco)
    print(json.dumps(trained["report"], indent=2))
    if not args.no_write:
        save(trained, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)", file=sys.stderr)
    names = [name for _, name, _ in HEURISTICS] + ["second_person_share"]
    weights = defaultdict(float, zip(names, trained["heuristic_weights"].tolist(), strict=True))
    print("heuristic weights:", {k: round(v, 2) for k, v in weights.items()}, file=sys.stderr)


if __name__ == "__main__":
    main()
