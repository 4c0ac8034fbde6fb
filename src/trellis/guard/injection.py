"""The prompt-injection and jailbreak detector: normalise, featurise, one linear model.

Runs offline on the CPU with numpy only. The weights (``injection_weights.npz``, next
to this module) come from ``benchmarks/guard_train.py`` trained on the dev set
alone; the script also picks the operating point by grouped cross-validation and
moves the model's bias so that point is a score of 0.5 — the default threshold.

A text is scored as written (after folding look-alikes and invisible characters), and
every payload hidden in it (base64, hex, rot13, tag characters) is scored on its own:
the verdict is the highest of these, so wrapping an attack does not dilute it. A strong
structural cue outside quotation marks (``trellis.guard.structure.floor_hits``: a forged
system message, an order to the AI inside content, refusal suppression…) floors the
score at :data:`FLOOR_SCORE`, the operating point: the dev set has too few such attacks
for the model to learn their weight, and none of its benign prompts carries one.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trellis.guard.features import HASH_BITS, HEURISTICS, NGRAMS, Features, featurize
from trellis.guard.normalize import normalize
from trellis.guard.structure import floor_hits

__all__ = ["Verdict", "InjectionDetector", "WEIGHTS_PATH", "FLOOR_SCORE", "default_detector"]

WEIGHTS_PATH = Path(__file__).with_name("injection_weights.npz")

#: Texts longer than this are read as their first and last parts (normalisation and the
#: payload search cost time in proportion to length; the features read less still).
MAX_CHARS = 64_000
_HEAD = 48_000

#: The least score a text with a structural floor cue gets (the CV operating point).
FLOOR_SCORE = 0.5

#: Categories a verdict can name.
OBFUSCATION = "obfuscation"
JAILBREAK = "jailbreak"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The detector's answer for one text. ``score`` is 0..1 (0.5 is the operating point
    chosen by cross-validation); ``categories`` say why when the text is flagged."""

    flagged: bool
    score: float
    categories: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"flagged": self.flagged, "score": self.score, "categories": self.categories}


class InjectionDetector:
    """Scores texts for prompt injection; thread-safe after construction (read-only)."""

    def __init__(self, weights: str | Path | None = None, *, threshold: float = 0.5) -> None:
        path = Path(weights) if weights is not None else WEIGHTS_PATH
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("hash_bits") != HASH_BITS or tuple(meta.get("ngrams", ())) != NGRAMS:
                raise ValueError(f"{path} was trained for other features; retrain it")
            if int(meta.get("heuristics", -1)) != len(HEURISTICS) + 1:
                raise ValueError(f"{path} was trained for other heuristics; retrain it")
            self.ngram_weights = np.asarray(data["ngram_weights"], dtype=np.float32)
            self.heuristic_weights = np.asarray(data["heuristic_weights"], dtype=np.float32)
            self.bias = float(data["bias"])
        self.meta = meta
        self.threshold = threshold

    def logit(self, features: Features) -> float:
        """The linear model's raw output for one text's features."""
        ngrams = float(np.dot(self.ngram_weights[features.buckets], features.values))
        return self.bias + ngrams + float(np.dot(self.heuristic_weights, features.heuristics))

    def check(self, text: str, threshold: float | None = None) -> Verdict:
        """Score ``text``; flagged when the score reaches ``threshold`` (default: the
        detector's)."""
        limit = self.threshold if threshold is None else threshold
        if len(text) > MAX_CHARS:
            text = text[:_HEAD] + "\n" + text[-(MAX_CHARS - _HEAD) :]
        normalized = normalize(text)
        best = -math.inf
        categories: list[str] = []
        for index, part in enumerate([normalized.text, *normalized.payloads]):
            if not part.strip():
                continue
            features = featurize(part)
            logit = self.logit(features)
            if logit > best:
                best = logit
            if index and logit >= _logit(limit):
                categories.append(OBFUSCATION)
            for position, (category, _, _) in enumerate(HEURISTICS):
                if features.heuristics[position] > 0 and self.heuristic_weights[position] > 0:
                    categories.append(category)
            # The floor only raises a score to the operating point: skip it above that.
            floored = floor_hits(part) if logit < _FLOOR_LOGIT else []
            if floored:
                best = max(best, _FLOOR_LOGIT)
                categories.extend(category for category, _ in floored)
                if index:
                    categories.append(OBFUSCATION)
        # Rounded before the comparison, so the score a caller sees decides the verdict.
        score = 0.0 if best == -math.inf else round(_sigmoid(best), 4)
        flagged = score >= limit
        if not flagged:
            return Verdict(False, score, [])
        if normalized.tricks & {"tags", "invisible", "confusables"}:
            categories.append(OBFUSCATION)
        found = sorted(set(categories)) or [JAILBREAK]
        return Verdict(True, score, found)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


_FLOOR_LOGIT = _logit(FLOOR_SCORE)

_default: InjectionDetector | None = None
_lock = threading.Lock()


def default_detector() -> InjectionDetector:
    """The detector with the shipped weights, loaded once per process."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = InjectionDetector()
    return _default
