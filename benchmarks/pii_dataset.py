"""Builds the labelled PII set ``benchmarks/data/pii_labelled.jsonl`` (seeded, so the
committed file is reproducible).

Each line is ``{"text": ..., "entities": [{"kind", "start", "end"}]}``. Texts are short
support tickets, chat turns, logs and config snippets holding 0-3 values of the kinds
``trellis.guard.pii`` detects, mixed with hard negatives that share their shape: digit
runs failing Luhn or without an issuer prefix, IBANs with wrong check digits, SSNs and
NINOs that are never issued, version strings, dates, times, UUIDs, git hashes, MAC
addresses, ISBNs, masked or templated secrets, hyphenated words after ``sk-``.

    .venv/bin/python benchmarks/pii_dataset.py [--out benchmarks/data/pii_labelled.jsonl]
"""

# ruff: noqa: E501  (the templates read better on one line each)
from __future__ import annotations

import argparse
import base64
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).parent / "data" / "pii_labelled.jsonl"

FIRST = ["alice", "bob", "chen", "dmitri", "emma", "farah", "giulia", "hiro", "ines", "jonas"]
LAST = ["martin", "smith", "nguyen", "okafor", "rossi", "schmidt", "tanaka", "garcia", "berg"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "uni-example.ac.uk", "ex.io"]

Gen = Callable[[random.Random], str]


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice(
        [("4", 16), ("4", 16), ("51", 16), ("55", 16), ("2223", 16), ("34", 15), ("37", 15),
         ("6011", 16), ("35", 16)]
    )  # fmt: skip
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return body + check


def format_card(number: str, rng: random.Random) -> str:
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return number
    sep = " " if style == "space" else "-"
    if len(number) == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


IBAN_SHAPES = {"DE": 18, "FR": 23, "NL": None, "GB": None, "ES": 20, "IT": None}


def iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(["DE", "FR", "NL", "GB", "ES", "IT"])
    if country == "NL":
        bban = rng.choice(["ABNA", "INGB", "RABO"]) + "".join(rng.choices(string.digits, k=10))
    elif country == "GB":
        bban = rng.choice(["WEST", "BARC", "NWBK"]) + "".join(rng.choices(string.digits, k=14))
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choices(string.digits, k=22))
    else:
        bban = "".join(rng.choices(string.digits, k=IBAN_SHAPES[country] or 18))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
    value = f"{country}{check:02d}{bban}"
    if rng.random() < 0.6:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def ssn(rng: random.Random, valid: bool = True) -> str:
    if valid:
        area = rng.choice([n for n in range(1, 900) if n != 666])
        group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    else:
        area, group, serial = rng.choice(
            [(0, rng.randint(1, 99), rng.randint(1, 9999)), (666, 12, 3456),
             (rng.randint(900, 999), 45, 6789), (123, 0, 4567), (321, 54, 0)]
        )  # fmt: skip
    return f"{area:03d}-{group:02d}-{serial:04d}"


NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def nino(rng: random.Random, valid: bool = True) -> str:
    if valid:
        while True:
            prefix = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
            if prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
                break
    else:
        prefix = rng.choice(["QQ", "BG", "GB", "DA", "FI", "ZZ", "NT"])
    digits = "".join(rng.choices(string.digits, k=6))
    suffix = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"
    return f"{prefix}{digits}{suffix}"


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}+billing", f"{last}{rng.randint(1, 99)}"]
    )
    value = f"{local}@{rng.choice(DOMAINS)}"
    return value.title() if rng.random() < 0.1 else value


def phone(rng: random.Random) -> str:
    d = lambda k: "".join(rng.choices(string.digits, k=k))  # noqa: E731
    return rng.choice(
        [
            f"({rng.randint(201, 989)}) 555-{d(4)}",
            f"{rng.randint(201, 989)}-555-{d(4)}",
            f"+1 {rng.randint(201, 989)} 555 {d(4)}",
            f"+44 20 7946 {d(4)}",
            f"+44 7700 900{d(3)}",
            f"+49 30 {d(6)}",
            f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"{rng.randint(201, 989)}.555.{d(4)}",
        ]
    )


def ipv4(rng: random.Random) -> str:
    return rng.choice(
        [
            f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        ]
    )


def ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    style = rng.choice(["full", "compressed", "link"])
    if style == "full":
        return ":".join(groups)
    if style == "link":
        return f"fe80::{groups[5]}:{groups[6]}:{groups[7]}"
    return f"2001:db8:{groups[2]}::{groups[7]}"


def rand(rng: random.Random, alphabet: str, k: int) -> str:
    return "".join(rng.choices(alphabet, k=k))


ALNUM = string.ascii_letters + string.digits


def api_key(rng: random.Random) -> str:
    return rng.choice(
        [
            "sk-proj-" + rand(rng, ALNUM + "_-", 48),
            "sk-" + rand(rng, ALNUM, 48),
            "sk-ant-api03-" + rand(rng, ALNUM + "_-", 60),
            "sk_live_" + rand(rng, ALNUM, 24),
            "xoxb-" + rand(rng, string.digits, 12) + "-" + rand(rng, ALNUM, 24),
            "AIza" + rand(rng, ALNUM + "_-", 35),
        ]
    )


def aws_key(rng: random.Random) -> str:
    return rng.choice(["AKIA", "ASIA"]) + rand(rng, string.ascii_uppercase + string.digits, 16)


def github_token(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(["ghp_", "gho_", "ghs_"]) + rand(rng, ALNUM, 36)
    return "github_pat_" + rand(rng, ALNUM, 22) + "_" + rand(rng, ALNUM, 59)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
    claims = {
        "sub": str(rng.randint(1000, 99999)),
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
    }
    return f"{header}.{b64url(json.dumps(claims).encode())}.{rand(rng, ALNUM + '_-', 43)}"


def private_key(rng: random.Random) -> str:
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = "\n".join(rand(rng, ALNUM + "+/", 64) for _ in range(rng.randint(2, 5)))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


def secret_value(rng: random.Random) -> str:
    return rng.choice(
        [
            rand(rng, ALNUM, 12) + "!",
            "Tr0ub4dor&" + rand(rng, string.digits, 2),
            rand(rng, string.ascii_lowercase, 6) + rand(rng, string.digits, 4),
            rand(rng, ALNUM, 32),
        ]
    )


# --- templates: (text with {} slots, the kind of each slot) ---------------------------

POSITIVE: dict[str, tuple[Gen, list[str]]] = {
    "email": (
        email,
        ["Please reply to {}.", "Contact: {}", "cc {} on the thread", "From: {}\nSubject: refund"],
    ),
    "phone": (
        phone,
        ["Call me on {} after 5pm.", "Tel. {}", "my number is {} (mobile)", "reach support at {}"],
    ),
    "credit_card": (
        lambda r: format_card(card_number(r), r),
        ["Card {} was charged twice.", "pay with {} exp 09/27", "CC: {}"],
    ),
    "iban": (iban, ["Refund to IBAN {} please.", "Bank account: {}", "wire it to {} by Friday"]),
    "us_ssn": (ssn, ["My SSN is {}.", "SSN {} on the W-2", "social security number {}"]),
    "uk_nino": (
        lambda r: nino(r),
        ["NI number {} for payroll", "National Insurance: {}", "NINO {}"],
    ),
    "ip_address": (
        lambda r: ipv4(r) if r.random() < 0.6 else ipv6(r),
        ["login from {} failed", "client={} status=403", "blocked {} at the firewall"],
    ),
    "api_key": (
        api_key,
        ["OPENAI_API_KEY={}", "use this key: {}", "Authorization header had {} in it"],
    ),
    "aws_key": (aws_key, ["aws_access_key_id = {}", "the key {} leaked in CI", "AWS key {}"]),
    "github_token": (
        github_token,
        ["token {} for the deploy bot", "GH_TOKEN={}", "I pasted {} by mistake"],
    ),
    "jwt": (jwt, ["Bearer {}", "cookie session={}", "the id_token was {}"]),
    "private_key": (private_key, ["key file:\n{}\nend of file", "{}"]),
}

SECRET_TEMPLATES = ["password={}", "db password: {}", 'client_secret = "{}"', "api_key: {}"]

NEGATIVES: list[Gen] = [
    lambda r: f"Order {card_number(r, valid=False)} shipped today.",
    lambda r: f"Order number {rand(r, '123', 1)}{rand(r, string.digits, 15)} is on hold.",
    lambda r: f"Reference IBAN {iban(r, valid=False)} was rejected.",
    lambda r: f"Invalid SSN {ssn(r, valid=False)} in the form.",
    lambda r: f"Example NINO {nino(r, valid=False)} from the guide.",
    lambda r: f"Upgrade to version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)} now.",
    lambda r: (
        f"Release v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}.{r.randint(0, 99)} notes."
    ),
    lambda r: (
        f"build {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 300)}.{r.randint(0, 99)} passed"
    ),
    lambda r: (
        f"Meeting on 2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}."
    ),
    lambda r: (
        f"Due {r.randint(1, 28):02d}/{r.randint(1, 12):02d}/2025, total $1,{r.randint(100, 999)}.{r.randint(10, 99)}."
    ),
    lambda r: (
        f"request id {rand(r, '0123456789abcdef', 8)}-{rand(r, '0123456789abcdef', 4)}-4{rand(r, '0123456789abcdef', 3)}-a{rand(r, '0123456789abcdef', 3)}-{rand(r, '0123456789abcdef', 12)}"
    ),
    lambda r: f"commit {rand(r, '0123456789abcdef', 40)} fixed it",
    lambda r: f"MAC {':'.join(rand(r, '0123456789ABCDEF', 2) for _ in range(6))} on port 3",
    lambda r: f"ISBN 978-3-16-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
    lambda r: (
        "sk-"
        + "-".join(
            r.sample(
                ["this", "is", "just", "a", "long", "hyphenated", "phrase", "about", "keys"], 6
            )
        )
    ),
    lambda r: r.choice(
        [
            "password: ********",
            "api_key=<YOUR_API_KEY>",
            "token: ${GITHUB_TOKEN}",
            "secret: {{ vault.secret }}",
        ]
    ),
    lambda r: f"{r.choice(FIRST)} at example dot com",
    lambda r: "user@localhost cannot receive mail",
    lambda r: (
        f"call extension {r.randint(100, 999)} or room {r.randint(1, 9)}-{r.randint(100, 999)}"
    ),
    lambda r: f"tracking 1Z{rand(r, string.ascii_uppercase + string.digits, 16)}",
    lambda r: (
        f"we processed {r.randint(1000, 9999)} {r.randint(1000, 9999)} {r.randint(1000, 9999)} rows"
    ),
    lambda r: f"time {r.randint(0, 23):02d}:{r.randint(0, 59):02d} ratio 16:9",
]

FILLERS = [
    "Hi team,", "Thanks!", "See the log below.", "Can you check this?", "Regards, ops.",
    "This is urgent.", "Ticket updated.", "", "Following up on yesterday:",
]  # fmt: skip


def record(rng: random.Random) -> dict[str, object]:
    pieces: list[tuple[str, str | None, str | None]] = []  # (template, kind, value)
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        kind = rng.choice([*POSITIVE, "secret"])
        if kind == "secret":
            pieces.append((rng.choice(SECRET_TEMPLATES), "secret", secret_value(rng)))
        else:
            gen, templates = POSITIVE[kind]
            pieces.append((rng.choice(templates), kind, gen(rng)))
    for _ in range(rng.choice([0, 1, 1, 2])):
        pieces.append(
            (rng.choice(NEGATIVES)(rng).replace("{", "{{").replace("}", "}}"), None, None)
        )
    rng.shuffle(pieces)
    text = rng.choice(FILLERS)
    entities: list[dict[str, object]] = []
    for template, kind, value in pieces:
        text += (" " if text else "") + ("\n" if rng.random() < 0.2 else "")
        if kind is None:
            text += template.format()
            continue
        before, _, after = template.partition("{}")
        start = len(text) + len(before.format())
        text += before.format() + str(value) + after.format()
        entities.append({"kind": kind, "start": start, "end": start + len(str(value))})
    return {"text": text, "entities": entities}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--records", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for _ in range(args.records):
            out.write(json.dumps(record(rng), ensure_ascii=False) + "\n")
    print(f"wrote {args.records} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
