"""Long-term memory recall: a synthetic benchmark of users, facts across sessions, questions.

A seeded generator makes users, each with facts of varied kinds (home city, job, pet,
allergy, favourite food, partner, sport, language being learnt, car, birthday month...)
stated across several sessions among distractor turns (small talk, questions about other
topics, facts about *other* people), with some facts changed in a later session (moved
city, new job). Then one question per fact. Statements come from several paraphrase
templates and questions use other words than statements, so the figures are not tuned
to the retriever.

Measured, in one run:

(a) ``api``: memories written through the memory API from the fact-bearing turns (a
    changed fact updates its memory, as an ideal writer would): recall@1/@5 of the right
    memory for each question (isolates retrieval).
(b) ``extraction``: memories from automatic extraction over *all* turns (distractors
    included) with the bundled local model, for a few users: recall@5 (a recalled memory
    contains the true value), the stale-memory rate (a changed fact whose old value is
    still remembered), and the memories extracted per user.
(c) ``answers``: the bundled model answers each question through the normal chat path
    with ``user`` set (recalled memories in its prompt), against the same model without
    memory; scored by a normalized contains-match against the true value.

    .venv/bin/python benchmarks/memory_recall.py [--users 100] [--extract-users 1]
        [--answer-users 4] [--seed 7] [--json benchmarks/results/memory_recall.json]

The defaults take about 5 minutes on 2 cores, most of it the bundled model: (b) costs
~6 s per turn (about 21 turns per user) and (c) ~1.5 s per answer (16 per user). Raise
--extract-users and --answer-users for tighter figures when there is time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trellis.inference.conversation import ExtractionJob
from trellis.runtime import Trellis
from trellis.schema import ChatMessage, ChatRequest, TrellisOptions
from trellis.settings import Settings

#: The recall thresholds (cosine) part (a) also scores.
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "memory_recall.json"


@dataclass(frozen=True)
class Kind:
    """One kind of fact: its values, how users state it, how it changes, how it is asked."""

    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    changes: tuple[str, ...] = ()
    #: How a distractor mentions the same kind of fact about someone else.
    others: tuple[str, ...] = ()


KINDS: tuple[Kind, ...] = (
    Kind(
        "city",
        (
            "Berlin",
            "Lisbon",
            "Toronto",
            "Osaka",
            "Nairobi",
            "Melbourne",
            "Krakow",
            "Denver",
            "Seville",
            "Helsinki",
            "Montreal",
            "Porto",
        ),
        (
            "I live in {v}.",
            "These days I'm based in {v}, it's a lovely place.",
            "My home is in {v}, been there a few years now.",
            "I rent a small flat in {v}.",
        ),
        (
            "Which city is my home?",
            "Remind me where I'm living these days?",
            "What town do I call home right now?",
        ),
        (
            "Big news: I just moved to {v}!",
            "We relocated to {v} last month, still unpacking.",
            "I don't live in the old place any more, I'm in {v} now.",
        ),
        ("My sister lives in {v}.", "A friend of mine just got back from {v}."),
    ),
    Kind(
        "job",
        (
            "nurse",
            "software engineer",
            "carpenter",
            "teacher",
            "accountant",
            "pilot",
            "pharmacist",
            "architect",
            "chef",
            "librarian",
        ),
        ("I work as a {v}.", "I'm a {v} by profession.", "By day I'm a {v}, it pays the bills."),
        ("What do I do for a living?", "What's my profession?", "Which occupation do I have?"),
        ("I quit my old job and started as a {v} this week.", "New job: I'm now a {v}!"),
        ("My neighbour is a {v}.",),
    ),
    Kind(
        "pet",
        ("Biscuit", "Luna", "Pepper", "Mochi", "Rex", "Ziggy", "Olive", "Noodle"),
        (
            "I have a dog named {v}.",
            "My cat {v} keeps me company at home.",
            "Our rabbit is called {v}.",
        ),
        ("What's the name of my pet?", "What do I call my animal at home?"),
        (),
        ("My cousin's dog is called {v}.",),
    ),
    Kind(
        "allergy",
        ("peanuts", "shellfish", "penicillin", "cats", "pollen", "gluten", "sesame"),
        (
            "I'm allergic to {v}.",
            "I get a bad reaction from {v}, so I avoid it.",
            "Doctor confirmed my allergy: {v}.",
        ),
        (
            "Is there something I have to stay away from for health reasons?",
            "What gives me an allergic reaction?",
        ),
    ),
    Kind(
        "food",
        ("ramen", "lasagne", "tacos", "paella", "sushi", "curry", "pancakes", "falafel"),
        (
            "My favourite food is {v}.",
            "I could eat {v} every single day.",
            "Nothing beats a plate of {v} for me.",
        ),
        ("Which dish do I love most?", "If you cooked for me, what should it be?"),
        ("My tastes changed: these days my favourite food is {v}.",),
        ("My boss is obsessed with {v}.",),
    ),
    Kind(
        "partner",
        ("Maria", "Jonas", "Aiko", "Priya", "Tomasz", "Chloe", "Samuel", "Fatima"),
        (
            "My partner's name is {v}.",
            "I'm married to {v}.",
            "{v} and I have been together for ten years.",
        ),
        ("Who is my spouse?", "What is my other half called?"),
    ),
    Kind(
        "sport",
        ("tennis", "rock climbing", "swimming", "cycling", "badminton", "rowing", "yoga"),
        ("I play {v} on weekends.", "My way to relax is {v}.", "I've been doing {v} since school."),
        ("Which sport do I do?", "How do I keep fit?"),
        ("I gave up my old sport, now I do {v} instead.",),
    ),
    Kind(
        "language",
        ("Japanese", "Portuguese", "Korean", "Italian", "Swahili", "Dutch", "Greek"),
        ("I'm learning {v} at the moment.", "Lately I take evening classes in {v}."),
        ("Which language am I studying?", "What foreign tongue am I picking up?"),
        ("I switched courses and now study {v}.",),
    ),
    Kind(
        "car",
        ("Volvo", "Toyota", "Fiat", "Subaru", "Tesla", "Skoda", "Mazda"),
        ("I drive a {v}.", "My car is an old {v}.", "I get around in my {v}."),
        ("What vehicle do I own?", "Which make is my car?"),
        ("I sold my old car and bought a {v}.",),
    ),
    Kind(
        "birthday",
        ("January", "March", "October", "July", "September", "November", "February"),
        ("My birthday is in {v}.", "I was born in {v}."),
        ("When do I celebrate getting older?", "In which month is my birthday?"),
    ),
)

DISTRACTORS = (
    "How do I boil an egg so the yolk stays soft?",
    "Can you recommend a good science fiction novel?",
    "Thanks, that's really helpful!",
    "What's the difference between a virus and a bacterium?",
    "Tell me a short joke.",
    "How many moons does Jupiter have?",
    "What's a polite way to decline a meeting?",
    "Ok, good to know.",
    "Explain compound interest in one paragraph.",
    "What is the capital of Australia?",
    "Any tips for sleeping better?",
    "Write a haiku about autumn.",
)


@dataclass
class Fact:
    kind: str
    value: str
    statement: str
    question: str
    #: The earlier value and statement, when the fact changed in a later session.
    old_value: str | None = None
    old_statement: str | None = None


@dataclass
class User:
    id: str
    facts: list[Fact]
    #: Sessions of user turns, in order (fact statements, changes and distractors).
    sessions: list[list[str]] = field(default_factory=list)


def generate(
    users: int, seed: int, *, facts_per_user: int = 8, sessions: int = 3, distractors: int = 3
) -> list[User]:
    """Seeded users: facts stated across sessions among distractors, some changed later."""
    rng = random.Random(seed)
    out: list[User] = []
    for n in range(users):
        kinds = rng.sample(KINDS, min(facts_per_user, len(KINDS)))
        facts: list[Fact] = []
        turns: list[list[str]] = [[] for _ in range(sessions)]
        for kind in kinds:
            value = rng.choice(kind.values)
            statement = rng.choice(kind.statements).format(v=value)
            fact = Fact(kind.name, value, statement, rng.choice(kind.questions))
            turns[rng.randrange(sessions - 1)].append(statement)
            if kind.changes and rng.random() < 0.3:
                new = rng.choice([v for v in kind.values if v != value])
                change = rng.choice(kind.changes).format(v=new)
                fact = Fact(kind.name, new, change, fact.question, value, statement)
                turns[-1].append(change)
            if kind.others and rng.random() < 0.5:
                other = rng.choice([v for v in kind.values if v != fact.value])
                turns[rng.randrange(sessions)].append(rng.choice(kind.others).format(v=other))
            facts.append(fact)
        for session in turns:
            session.extend(rng.sample(DISTRACTORS, distractors))
            rng.shuffle(session)
        out.append(User(f"user-{seed}-{n:04d}", facts, turns))
    return out


def normalized(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", " ", text).strip()


def contains(text: str, value: str) -> bool:
    return f" {normalized(value)} " in f" {normalized(text)} "


# --- (a) retrieval over API-written memories ------------------------------------------------


async def api_recall(trellis: Trellis, users: list[User]) -> dict[str, Any]:
    memories = trellis.memories
    assert memories is not None
    hits1 = hits5 = total = 0
    reciprocal = 0.0
    threshold = memories.min_score
    sweep = {t: {"hits": 0, "wrong_in_top_3": 0} for t in THRESHOLDS}
    for user in users:
        ids: dict[str, str] = {}
        for fact in user.facts:  # the first sessions: every original statement
            written, _ = await memories.add("", user.id, fact.old_statement or fact.statement)
            ids[fact.kind] = written.id
        for fact in user.facts:  # the later session: changed facts update their memory
            if fact.old_statement is not None:
                await memories.update("", ids[fact.kind], fact.statement)
        for fact in user.facts:
            found = [m.id for m in await memories.recall("", user.id, fact.question, top_k=5)]
            total += 1
            if ids[fact.kind] in found:
                rank = found.index(ids[fact.kind]) + 1
                hits5 += 1
                hits1 += rank == 1
                reciprocal += 1 / rank
            memories.min_score = -1.0  # the ranking alone, scored against each threshold
            try:
                ranked = await memories.recall("", user.id, fact.question, top_k=5)
            finally:
                memories.min_score = threshold
            for t, row in sweep.items():
                kept = [m for m in ranked if m.score >= t]
                row["hits"] += ids[fact.kind] in [m.id for m in kept]
                row["wrong_in_top_3"] += sum(m.id != ids[fact.kind] for m in kept[:3])
    return {
        "users": len(users),
        "questions": total,
        "min_score": threshold,
        "recall_at_1": round(hits1 / total, 4),
        "recall_at_5": round(hits5 / total, 4),
        "mrr_at_5": round(reciprocal / total, 4),
        # Recall@5 and the other memories a top-3 prompt would carry, per min_score.
        "by_min_score": {
            str(t): {
                "recall_at_5": round(row["hits"] / total, 4),
                "wrong_memories_in_top_3": round(row["wrong_in_top_3"] / total, 3),
            }
            for t, row in sweep.items()
        },
    }


# --- (b) automatic extraction with the bundled model ------------------------------------------


async def extraction_recall(trellis: Trellis, users: list[User], model: str) -> dict[str, Any]:
    extractor, memories = trellis.extractor, trellis.memories
    assert extractor is not None and memories is not None
    hits5 = total = changed = stale = updated = failures = turns = extracted = 0
    stored = 0
    examples: list[dict[str, Any]] = []
    started = time.perf_counter()
    for user in users:
        owner = "extracted"
        for session in user.sessions:
            for text in session:
                turns += 1
                job = ExtractionJob(
                    owner, user.id, (ChatMessage(role="user", content=text),), model
                )
                report = await extractor.extract(job)
                failures += report.error is not None
        kept = await memories.list_memories(owner, user.id)
        stored += len(kept)
        if not examples:  # what the model made of one user, to read next to the figures
            examples.append(
                {
                    "user": user.id,
                    "facts": [f.statement for f in user.facts],
                    "memories": [m.text for m in kept],
                }
            )
        for fact in user.facts:
            found = await memories.recall(owner, user.id, fact.question, top_k=5)
            total += 1
            hits5 += any(contains(m.text, fact.value) for m in found)
            # Whether the value was extracted at all (any memory of the user has it).
            extracted += any(contains(m.text, fact.value) for m in kept)
            if fact.old_value is not None:
                changed += 1
                old = any(contains(m.text, fact.old_value) for m in kept)
                new = any(contains(m.text, fact.value) for m in kept)
                stale += old
                updated += new and not old
    seconds = time.perf_counter() - started
    return {
        "users": len(users),
        "turns": turns,
        "questions": total,
        "recall_at_5": round(hits5 / total, 4) if total else None,
        "facts_in_any_memory": round(extracted / total, 4) if total else None,
        "changed_facts": changed,
        "stale_memory_rate": round(stale / changed, 4) if changed else None,
        "updated_rate": round(updated / changed, 4) if changed else None,
        "memories_per_user": round(stored / len(users), 2) if users else None,
        "facts_per_user": round(total / len(users), 2) if users else None,
        "failed_extractions": failures,
        "seconds_per_turn": round(seconds / turns, 3) if turns else None,
        "example": examples[0] if examples else None,
    }


# --- (c) answers with and without memory --------------------------------------------------------


async def answer_accuracy(trellis: Trellis, users: list[User], model: str) -> dict[str, Any]:
    gateway = trellis.gateway
    assert gateway is not None
    right = {"memory": 0, "no_memory": 0}
    total = 0
    for user in users:
        for fact in user.facts:
            total += 1
            for condition in right:
                request = ChatRequest(
                    model=model,
                    messages=[ChatMessage(role="user", content=fact.question)],
                    max_tokens=24,
                    temperature=0.0,
                    user=user.id if condition == "memory" else None,
                    trellis=TrellisOptions(cache=False),
                )
                result = await gateway.chat(request)
                text = result.response.choices[0].message.content or ""
                right[condition] += contains(text, fact.value)
    return {
        "users": len(users),
        "questions": total,
        "accuracy_with_memory": round(right["memory"] / total, 4) if total else None,
        "accuracy_without_memory": round(right["no_memory"] / total, 4) if total else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    users = generate(args.users, args.seed, facts_per_user=args.facts, distractors=args.distractors)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            tracing={"enabled": False},
            cache={"enabled": False},
            memory={"extract_max_tokens": args.extract_max_tokens},
        )
        async with Trellis(settings) as trellis:
            started = time.perf_counter()
            api = await api_recall(trellis, users)
            api["seconds"] = round(time.perf_counter() - started, 2)
            print(f"(a) api-written memories: {api}", flush=True)
            started = time.perf_counter()
            extraction = await extraction_recall(trellis, users[: args.extract_users], args.model)
            extraction["seconds"] = round(time.perf_counter() - started, 2)
            print(f"(b) extraction: {extraction}", flush=True)
            started = time.perf_counter()
            answers = await answer_accuracy(trellis, users[: args.answer_users], args.model)
            answers["seconds"] = round(time.perf_counter() - started, 2)
            print(f"(c) answers: {answers}", flush=True)
    facts = [f for u in users for f in u.facts]
    return {
        "benchmark": "memory_recall",
        "seed": args.seed,
        "model": args.model,
        "extract_max_tokens": args.extract_max_tokens,
        "users": args.users,
        "facts_per_user": args.facts,
        "distractors_per_session": args.distractors,
        "facts": len(facts),
        "changed_facts": sum(f.old_value is not None for f in facts),
        "turns": sum(len(s) for u in users for s in u.sessions),
        "api": api,
        "extraction": extraction,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100, help="Users for (a)")
    parser.add_argument("--extract-users", type=int, default=1, help="Users for (b)")
    parser.add_argument("--answer-users", type=int, default=4, help="Users for (c)")
    parser.add_argument(
        "--extract-max-tokens", type=int, default=128, help="Output cap of one extraction"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--facts", type=int, default=8, help="Facts per user (1-10)")
    parser.add_argument("--distractors", type=int, default=3, help="Distractor turns per session")
    parser.add_argument("--model", default="local", help="Alias that extracts and answers")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write results")
    args = parser.parse_args(argv)
    if args.users < 1 or args.extract_users < 0 or args.answer_users < 0:
        parser.error("--users must be >= 1, the others >= 0")
    if not 1 <= args.facts <= len(KINDS) or not 0 <= args.distractors <= len(DISTRACTORS):
        parser.error(f"--facts must be in 1..{len(KINDS)}, --distractors in 0..{len(DISTRACTORS)}")
    args.extract_users = min(args.extract_users, args.users)
    args.answer_users = min(args.answer_users, args.users)
    result = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
