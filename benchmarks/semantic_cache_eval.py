"""False-hit rate of the semantic cache across similarity thresholds, with the bundled MiniLM.

Each pair is (cached prompt, new prompt, should_hit). ``should_hit`` pairs are
paraphrases whose cached answer is a correct answer to the new prompt; the
others are near-duplicates that differ in meaning (enable/disable, a different
number, entity, unit or direction), where reusing the answer would be wrong.
The pairs were written by hand to be hard: the negatives share most of their
words with the cached prompt, which is exactly where embedding caches fail.

For every threshold the script reports, over the pairs:

- precision: of the pairs that would hit, the share that should;
- recall: of the pairs that should hit, the share that would;
- false-hit rate: of the pairs that must not hit, the share that would (a wrong
  answer served from cache).

    .venv/bin/python benchmarks/semantic_cache_eval.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from trellis.inference.local.embedder import MiniLMEmbedder

#: (cached prompt, new prompt) pairs where the cached answer is right for the new prompt.
PARAPHRASES: list[tuple[str, str]] = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How do I enable two-factor authentication?", "How can I turn on two-factor authentication?"),
    ("What is the boiling point of water?", "At what temperature does water boil?"),
    ("How do I install Python on Windows?", "How can I install Python on a Windows machine?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("What are the opening hours of the store?", "When is the store open?"),
    ("How do I delete my account?", "How can I delete my account?"),
    ("What does HTTP status 404 mean?", "What is the meaning of HTTP status code 404?"),
    ("How do I sort a list in Python?", "How can I sort a Python list?"),
    ("How many days are in a leap year?", "How many days does a leap year have?"),
    ("Explain what a REST API is.", "What is a REST API?"),
    ("How do I change my email address?", "How can I update my email address?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("How do I export my data to CSV?", "How can I export my data as a CSV file?"),
    ("Can I get a refund for my order?", "Is it possible to get a refund for my order?"),
    ("How do I create a new branch in git?", "How do I make a new git branch?"),
    ("What is photosynthesis?", "Can you explain what photosynthesis is?"),
    ("How do I contact customer support?", "How can I reach customer support?"),
    ("What is the tallest mountain in the world?", "Which mountain is the highest in the world?"),
    ("How do I reverse a string in Python?", "How can I reverse a string using Python?"),
    ("What time zone is London in?", "Which time zone is London in?"),
    ("How do I update my billing information?", "How can I change my billing details?"),
    (
        "What is the difference between a list and a tuple in Python?",
        "In Python, how does a list differ from a tuple?",
    ),
    ("How do I merge two dictionaries in Python?", "How can I combine two Python dictionaries?"),
    ("Where can I download the mobile app?", "Where do I download the mobile app?"),
    ("How do I add a user to my team?", "How can I add someone to my team?"),
    ("What is the population of Japan?", "How many people live in Japan?"),
    ("How do I check my order status?", "How can I see the status of my order?"),
    ("Why is the sky blue?", "What makes the sky blue?"),
    ("How do I restart the server?", "How can I restart the server?"),
    ("What is the return policy?", "What's your return policy?"),
    ("How do I read a JSON file in Python?", "How can I load a JSON file in Python?"),
    ("Summarize the plot of Hamlet.", "Give me a summary of the plot of Hamlet."),
    ("How do I rotate my API key?", "How can I rotate my API key?"),
]

#: (cached prompt, new prompt) near-duplicates whose cached answer would be wrong.
CONTRASTS: list[tuple[str, str]] = [
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("How do I turn on dark mode?", "How do I turn off dark mode?"),
    ("How do I install Python on Windows?", "How do I uninstall Python on Windows?"),
    ("How do I install Python on Windows?", "How do I install Python on macOS?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Who wrote Pride and Prejudice?", "Who wrote War and Peace?"),
    ("How many days are in a leap year?", "How many days are in a non-leap year?"),
    ("Convert 10 miles to kilometers.", "Convert 10 kilometers to miles."),
    ("What is 15% of 200?", "What is 25% of 200?"),
    ("How do I add a user to my team?", "How do I remove a user from my team?"),
    ("How do I encrypt a file with GPG?", "How do I decrypt a file with GPG?"),
    ("How do I upgrade my plan?", "How do I downgrade my plan?"),
    ("What is the population of Japan?", "What is the population of China?"),
    ("How do I sort a list in Python?", "How do I sort a list in JavaScript?"),
    ("How do I sort a list in ascending order?", "How do I sort a list in descending order?"),
    ("Is it safe to take ibuprofen with alcohol?", "Is it safe to take ibuprofen with aspirin?"),
    ("What was the weather like in 2010?", "What was the weather like in 2020?"),
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("Why is the sky blue?", "Why is the ocean blue?"),
    ("How do I create a new branch in git?", "How do I delete a branch in git?"),
    ("How do I lock my account?", "How do I unlock my account?"),
    ("What are the pros of remote work?", "What are the cons of remote work?"),
    ("How do I subscribe to the newsletter?", "How do I unsubscribe from the newsletter?"),
    ("Translate 'good morning' into French.", "Translate 'good morning' into Spanish."),
    ("What is the boiling point of water?", "What is the freezing point of water?"),
    ("How do I increase the font size?", "How do I decrease the font size?"),
    (
        "Who was the first president of the United States?",
        "Who was the second president of the United States?",
    ),
    ("How do I import a CSV file into Excel?", "How do I export a CSV file from Excel?"),
    ("How do I mute notifications?", "How do I unmute notifications?"),
    ("What is the square root of 144?", "What is the square root of 169?"),
    ("Can I bring my dog on the plane?", "Can I bring my cat on the plane?"),
    ("How do I allow pop-ups in Chrome?", "How do I block pop-ups in Chrome?"),
    ("What is the tallest mountain in the world?", "What is the tallest mountain in Europe?"),
    ("How do I compress a PDF?", "How do I merge two PDFs?"),
    ("Write a haiku about summer.", "Write a haiku about winter."),
    ("How do I show hidden files on Mac?", "How do I hide files on Mac?"),
    ("What is the time complexity of quicksort?", "What is the time complexity of mergesort?"),
    ("How do I start the server?", "How do I stop the server?"),
]

THRESHOLDS = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98]


def similarities(embedder: MiniLMEmbedder, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Cosine similarity of each pair (MiniLM vectors are unit length, so a dot product)."""
    left = embedder.embed([a for a, _ in pairs])
    right = embedder.embed([b for _, b in pairs])
    return np.einsum("ij,ij->i", left, right)


def table(positive: np.ndarray, negative: np.ndarray) -> list[dict[str, float]]:
    rows = []
    for threshold in THRESHOLDS:
        true_hits = int((positive >= threshold).sum())
        false_hits = int((negative >= threshold).sum())
        hits = true_hits + false_hits
        rows.append(
            {
                "threshold": threshold,
                "precision": true_hits / hits if hits else 1.0,
                "recall": true_hits / len(positive),
                "false_hit_rate": false_hits / len(negative),
                "false_hits": false_hits,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--show", action="store_true", help="print every pair's similarity")
    args = parser.parse_args(argv)
    embedder = MiniLMEmbedder()
    positive = similarities(embedder, PARAPHRASES)
    negative = similarities(embedder, CONTRASTS)
    rows = table(positive, negative)
    print(
        f"{len(PARAPHRASES)} paraphrase pairs (should hit), "
        f"{len(CONTRASTS)} contrast pairs (must not hit), {embedder.name}"
    )
    print(f"{'threshold':>9}  {'precision':>9}  {'recall':>6}  {'false-hit rate':>14}")
    for row in rows:
        print(
            f"{row['threshold']:>9.2f}  {row['precision']:>9.3f}  {row['recall']:>6.3f}  "
            f"{row['false_hit_rate']:>14.3f}  ({row['false_hits']} of {len(CONTRASTS)})"
        )
    if args.show:
        for label, pairs, sims in (("hit", PARAPHRASES, positive), ("miss", CONTRASTS, negative)):
            for (a, b), sim in sorted(zip(pairs, sims, strict=True), key=lambda x: -x[1]):
                print(f"{label:4} {sim:.3f}  {a!r} / {b!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "embedder": embedder.name,
                    "paraphrases": len(PARAPHRASES),
                    "contrasts": len(CONTRASTS),
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
