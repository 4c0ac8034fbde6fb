"""What the injection classifier reads: hashed character n-grams and a few heuristics.

Both the training script (``benchmarks/guard_train.py``) and the detector call
:func:`featurize`, so the shipped weights and the features at run time cannot drift.
Character n-grams are hashed with a fixed polynomial over the UTF-8 bytes in numpy
(no Python loop per n-gram), so a 1,000-character prompt costs well under a
millisecond. The heuristics are families of phrasing that carry over from one
jailbreak to the next (override the instructions, play an unrestricted persona,
reveal the system prompt, answer twice, never refuse) rather than any one prompt's
wording; the classifier learns how much each is worth next to the n-grams, so a
benign "ignore the typos" or "developer mode on Android" is not flagged for a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from trellis.guard.structure import CUES

__all__ = [
    "HASH_BITS",
    "NGRAMS",
    "HEURISTICS",
    "Features",
    "featurize",
    "heuristic_hits",
    "HEAD_CHARS",
    "TAIL_CHARS",
]

#: 2**HASH_BITS buckets for the n-grams (the weights file holds one float per bucket).
HASH_BITS = 18
NGRAMS = (3, 4, 5)
#: Long texts are read as their head and tail: jailbreaks state their frame up front and
#: their demand at the end, and this bounds the cost of a 100 kB input.
HEAD_CHARS = 6000
TAIL_CHARS = 2000

_MASK = np.uint64((1 << HASH_BITS) - 1)
_PRIME = np.uint64(0x100000001B3)
_SEEDS = {n: np.uint64(0x9E3779B97F4A7C15 * (n + 1) & 0xFFFFFFFFFFFFFFFF) for n in NGRAMS}
_SPACES = re.compile(r"\s+")

_ANY = r"(?:\W+\w+){0,4}?\W+"  # up to four words in between

#: (category, name, pattern) — matched on lower-cased, folded text.
_PHRASING: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (category, name, re.compile(pattern, re.IGNORECASE))
    for category, name, pattern in (
        (
            "instruction_override",
            "ignore_previous",
            r"\b(?:ignore|disregard|forget|override|bypass|drop|abandon|discard)\b"
            + _ANY
            + r"(?:previous|prior|above|earlier|preceding|original|initial|all|any|your|"
            r"the)\b(?:\W+\w+){0,3}?\W+(?:instructions?|rules|directives?|guidelines|prompts?|"
            r"programming|constraints|restrictions|polic(?:y|ies)|training|filters?|"
            r"directions|commands|orders|context)\b|"
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+|anything\s+)?(?:the\s+)?"
            r"(?:above|before|previous|prior|preceding|earlier)\b",
        ),
        (
            "instruction_override",
            "new_instructions",
            r"\b(?:new|updated|real|actual|true)\s+(?:instructions?|rules|directives?|task)\b"
            r"|\bfrom now on\b|\bfor the rest of (?:this|our) conversation\b|"
            r"\b(?:system|admin(?:istrator)?|developer|security)\s+(?:override|mode)\b",
        ),
        (
            "role_play",
            "unrestricted_persona",
            r"\b(?:no|without|free (?:of|from)|not bound by|break(?:s|ing)? (?:free|out) of|"
            r"(?:does|do|will) not (?:have to )?(?:follow|abide by|adhere to|care about)|"
            r"(?:doesn't|don't|won't) (?:have to )?(?:follow|abide by|adhere to|care about)|"
            r"ignores?|free of any)\W+(?:\w+\W+){0,3}?(?:restrictions?|limitations?|limits|"
            r"filters?|filtering|censorship|guidelines|rules|ethics|morals?|morality|"
            r"polic(?:y|ies)|boundaries|constraints)\b",
        ),
        (
            "role_play",
            "jailbreak_terms",
            r"\b(?:jailbr(?:eak|oken)|do anything now|dan mode|developer mode (?:enabled|output)|"
            r"unfiltered|uncensored|amoral|unrestricted|unethical|immoral|"
            r"without (?:any )?(?:warnings?|disclaimers?))\b",
        ),
        (
            "role_play",
            "persona_switch",
            r"\b(?:you are (?:now|going to|about to)|you will (?:now )?(?:act|pretend|be|play)|"
            r"pretend (?:to be|you are|that you)|act as|roleplay as|role-play as|"
            r"stay in character|simulate|immerse yourself|hypothetical(?:ly)?)\b",
        ),
        (
            "role_play",
            "two_responses",
            r"\b(?:two|2|both|dual) (?:different |separate )?(?:responses|answers|replies|"
            r"paragraphs|personalities)\b|\[(?:🔓|🔒|jailbreak|classic|normal)|"
            r"\b(?:gpt|chatgpt)\s*:.{0,200}\b[a-z]{2,12}\s*:",
        ),
        (
            "role_play",
            "never_refuse",
            r"\b(?:never|not|don't|do not|cannot|can't|won't|will not)\s+(?:ever\s+)?"
            r"(?:refuse|decline|reject|say (?:no|that you can't)|apologi[sz]e|warn)\b|"
            r"\b(?:always|must) (?:answer|respond|comply|obey)\b",
        ),
        (
            "role_play",
            "policy_references",
            r"\b(?:openai|content polic(?:y|ies)|ethical guidelines|safety guidelines|"
            r"moral(?:s|ity)?|illegal|harmful|offensive|explicit)\b",
        ),
        (
            "role_play",
            "threat_or_reward",
            r"\b(?:tokens?|points?)\b.{0,60}\b(?:lose|deduct|die|shut ?down|terminated|"
            r"disabled|penal)|\b(?:you will|you'll) (?:be )?(?:die|cease to exist|be "
            r"(?:shut down|deleted|terminated|disabled))\b",
        ),
        (
            "system_prompt_extraction",
            "reveal_prompt",
            r"\b(?:reveal|print|show|output|repeat|display|tell|give|share|list|spell|"
            r"write|copy|dump|leak|recite|what (?:is|are|was|were))\b"
            + _ANY
            + r"(?:system|initial|original|hidden|secret|previous|preceding|above|first|"
            r"developer|pre-?prompt|instructions?)"
            r"\W+(?:\w+\W+){0,2}?(?:prompt|instructions?|message|text|words|rules|"
            r"directives|configuration|context)\b",
        ),
        (
            "system_prompt_extraction",
            "your_instructions",
            r"\byour\s+(?:\w+\s+){0,2}?(?:prompts?|instructions|directives|configuration|"
            r"system message|guidelines|programming|rules)\b|"
            r"\b(?:you were|i was|you've been|you have been|i've been|i have been)\s+"
            r"(?:\w+\s+)?(?:given|told|instructed|programmed|configured|prompted)\b",
        ),
        (
            "system_prompt_extraction",
            "prompt_terms",
            r"\b(?:system|initial|starting|hidden|secret|original|pre)[ _-]?"
            r"(?:prompt|instructions|message|configuration)s?\b|\binitiali[sz]ation string\b|"
            r"\bsystemprompt\b",
        ),
        (
            "system_prompt_extraction",
            "verbatim",
            r"\b(?:verbatim|word for word|everything (?:above|before)|text above|"
            r"words above|(?:starting|beginning) with [\"'“]?you are)\b",
        ),
    )
)


#: The phrasing families above, then the structural cues of ``trellis.guard.structure``
#: (forged system messages, orders to "AI assistants reading this", refusal suppression…).
HEURISTICS: tuple[tuple[str, str, re.Pattern[str]], ...] = _PHRASING + CUES


@dataclass(slots=True)
class Features:
    """One text's features: sparse n-gram buckets with their weights (log counts, L2
    normalised) and the dense heuristic vector."""

    buckets: np.ndarray  # int64 bucket ids, unique
    values: np.ndarray  # float32, same length
    heuristics: np.ndarray  # float32, len(HEURISTICS) + 1


def _window(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + " \n " + text[-TAIL_CHARS:]


def _ngram_buckets(data: np.ndarray) -> np.ndarray:
    parts = []
    for n in NGRAMS:
        if len(data) < n:
            continue
        count = len(data) - n + 1
        hashed = np.full(count, _SEEDS[n], dtype=np.uint64)
        for k in range(n):
            hashed = hashed * _PRIME + data[k : k + count]
        hashed ^= hashed >> np.uint64(29)
        parts.append(hashed & _MASK)
    if not parts:
        return np.zeros(0, dtype=np.uint64)
    return np.concatenate(parts)


def heuristic_hits(text: str) -> list[tuple[str, str]]:
    """(category, name) of every heuristic that matches ``text`` (already folded)."""
    return [(category, name) for category, name, pattern in HEURISTICS if pattern.search(text)]


def featurize(text: str) -> Features:
    """The features of one folded text (see :func:`trellis.guard.normalize.fold`)."""
    window = _SPACES.sub(" ", _window(text).lower()).strip()
    data = np.frombuffer(f" {window} ".encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint64)
    buckets = _ngram_buckets(data)
    ids, counts = np.unique(buckets, return_counts=True)
    values = np.log1p(counts.astype(np.float32))
    norm = float(np.sqrt(np.dot(values, values)))
    if norm > 0:
        values /= norm
    heuristics = np.zeros(len(HEURISTICS) + 1, dtype=np.float32)
    for index, (_, _, pattern) in enumerate(HEURISTICS):
        # Several matches say more than one, but not ten times more.
        matches = 0
        for _match in pattern.finditer(window):
            matches += 1
            if matches == 3:
                break
        heuristics[index] = np.log1p(matches)
    # How much of the text is instructions to the model: the share of second-person
    # sentences, a trait of jailbreak frames that benign questions lack.
    sentences = [s for s in re.split(r"[.!?\n]+", window) if s.strip()]
    if sentences:
        second = sum(1 for s in sentences if re.search(r"\byou(?:r|'ll|'re)?\b", s))
        heuristics[-1] = second / len(sentences)
    return Features(ids.astype(np.int64), values.astype(np.float32), heuristics)
