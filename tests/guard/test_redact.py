"""PII and secret redaction: a table of examples, and properties checked with hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.guard.redact import iban_valid, luhn_valid, redact, redact_messages

EXAMPLES = [
    # (text, expected)
    ("write to bob.smith+tag@example.co.uk today", "write to [EMAIL] today"),
    ("call +1 415-555-0132 now", "call [PHONE] now"),
    ("call (415) 555-0132 now", "call [PHONE] now"),
    ("ring +44 20 7946 0958", "ring [PHONE]"),
    ("card 4111 1111 1111 1111 exp 12/29", "card [CREDIT_CARD] exp 12/29"),
    ("card 5555-5555-5555-4444", "card [CREDIT_CARD]"),
    ("amex 378282246310005.", "amex [CREDIT_CARD]."),
    ("order 4111111111111112 shipped", "order 4111111111111112 shipped"),  # Luhn fails
    ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]"),
    ("iban GB82WEST12345698765432", "iban [IBAN]"),
    ("not an iban DE89370400440532013001", "not an iban DE89370400440532013001"),
    ("ssn 123-45-6789", "ssn [SSN]"),
    ("not ssn 000-12-3456", "not ssn 000-12-3456"),
    ("from 192.168.1.20:8080", "from [IP_ADDRESS]:8080"),
    ("v6 2001:db8:85a3::8a2e:370:7334 and ::1", "v6 [IP_ADDRESS] and [IP_ADDRESS]"),
    ("at 12:30:45 use std::vector", "at 12:30:45 use std::vector"),
    ("not an ip 999.1.1.1", "not an ip 999.1.1.1"),
    ("key sk-proj-abcdefghijklmnop1234", "key [API_KEY]"),
    ("letters only sk-abcdefghijklmnopqrstuvwx", "letters only [API_KEY]"),
    ("token=abcdefghijklmnopqrstuvwxyzABCDEF", "token=[SECRET]"),
    ("trellis tr-0123456789abcdef0123", "trellis [API_KEY]"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]"),
    ("Authorization: Bearer eyJhbGciOi.abc.def", "Authorization: Bearer [TOKEN]"),
    ("url ?token=0123456789abcdef0123456789abcdef&x=1", "url ?token=[SECRET]&x=1"),
    ('api_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQ="', 'api_key: "[SECRET]"'),
    ("on 2024-01-15 at 10:30, version 3.11, 42 items", None),  # unchanged
    ("task-12345 costs 1,299.00 USD", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_examples(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


def _with_luhn_digit(body: str) -> str:
    """``body`` plus the check digit that makes it Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


card_bodies = st.text(alphabet="0123456789", min_size=12, max_size=18).filter(lambda s: s[0] != "0")


@settings(max_examples=300)
@given(card_bodies, st.sampled_from(["", " ", "-"]))
def test_luhn_valid_card_numbers_are_redacted(body: str, separator: str) -> None:
    number = _with_luhn_digit(body)
    grouped = separator.join(number[i : i + 4] for i in range(0, len(number), 4))
    assert redact(f"pay with {grouped} please") == "pay with [CREDIT_CARD] please"


@settings(max_examples=300)
@given(st.text(alphabet="0123456789", min_size=13, max_size=19))
def test_luhn_invalid_digit_runs_are_left_alone(digits: str) -> None:
    if luhn_valid(digits):
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    assert redact(f"ref {digits} end") == f"ref {digits} end"


@settings(max_examples=200)
@given(
    st.from_regex(r"[a-z][a-z0-9._]{0,15}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(com|org|io|de)", fullmatch=True),
)
def test_emails_are_redacted(user: str, domain: str) -> None:
    assert redact(f"mail {user}@{domain} now") == "mail [EMAIL] now"


@settings(max_examples=200)
@given(st.integers(0, 2**32 - 1))
def test_ipv4_addresses_are_redacted(n: int) -> None:
    address = ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))
    assert redact(f"client {address} connected") == "client [IP_ADDRESS] connected"


@settings(max_examples=200)
@given(st.integers(0, 2**128 - 1), st.booleans())
def test_ipv6_addresses_are_redacted(n: int, compressed: bool) -> None:
    import ipaddress

    address = ipaddress.IPv6Address(n)
    text = address.compressed if compressed else address.exploded
    if "." in text or address.is_unspecified:  # IPv4-mapped forms; "::" identifies nobody
        return
    assert redact(f"client {text} connected") == "client [IP_ADDRESS] connected"


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_redaction_is_idempotent_and_total(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.!?", max_size=200))
def test_text_without_digits_or_markers_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89370400440532013001")


def test_messages_are_redacted_without_touching_the_original() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "I am ann@example.com"},
        {"role": "user", "content": [{"type": "text", "text": "ip 10.0.0.1"}, {"type": "image"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": '{"ssn": "123-45-6789"}'}}],
        },
    ]
    out = redact_messages(messages)
    assert out[0] == {"role": "user", "content": "I am [EMAIL]"}
    assert out[1]["content"] == [{"type": "text", "text": "ip [IP_ADDRESS]"}, {"type": "image"}]
    assert out[2]["tool_calls"][0]["function"]["arguments"] == '{"ssn": "[SSN]"}'
    assert messages[0]["content"] == "I am ann@example.com"


SECRET_PIECES = {
    "ann@example.com": "[EMAIL]",
    "4111 1111 1111 1111": "[CREDIT_CARD]",
    "5555555555554444": "[CREDIT_CARD]",
    "+1 415-555-0132": "[PHONE]",
    "(415) 555-0132": "[PHONE]",
    "DE89 3704 0044 0532 0130 00": "[IBAN]",
    "123-45-6789": "[SSN]",
    "192.168.1.20": "[IP_ADDRESS]",
    "2001:db8::1": "[IP_ADDRESS]",
    "sk-abcdefghijklmnopqrstuv": "[API_KEY]",
    "AKIAIOSFODNN7EXAMPLE": "[API_KEY]",
}
HARMLESS = ["hello", "World", "order 12", "2024-01-15", "at 10:30", "v3.11", "Ann"]


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from(sorted(SECRET_PIECES) + HARMLESS), min_size=1, max_size=8),
    st.sampled_from([" ", ", ", "\n", ". ", "; "]),
)
def test_every_value_in_mixed_text_is_replaced(pieces: list[str], separator: str) -> None:
    expected = separator.join(SECRET_PIECES.get(p, p) for p in pieces)
    assert redact(separator.join(pieces)) == expected


def test_private_keys_jwts_and_github_tokens() -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"
    token = "ghp_" + "a1B2" * 9
    text = f"key {block} and {jwt}, then {token}."
    assert redact(text) == "key [PRIVATE_KEY] and [TOKEN], then [API_KEY]."
    # A block cut off before its END line is redacted to the end of the text.
    assert redact("cut: -----BEGIN PRIVATE KEY-----\nMIIEvQ") == "cut: [PRIVATE_KEY]"
