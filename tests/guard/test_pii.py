"""The span detectors, placeholders and the stream guard on their own."""

from __future__ import annotations

import random

import pytest

from trellis.guard.output import OutputBlockedError, OutputCheck, load_phrases
from trellis.guard.pii import KINDS, detect
from trellis.guard.placeholders import Placeholders, StreamRestorer
from trellis.guard.privacy import in_house
from trellis.settings import PII_KINDS, Deployment, OutputGuard


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in detect(text)]


def test_the_settings_name_every_kind() -> None:
    assert PII_KINDS == KINDS


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("mail a.b+c@mail.example.co.uk now", [("email", "a.b+c@mail.example.co.uk")]),
        ("card 4111-1111-1111-1111 ok", [("credit_card", "4111-1111-1111-1111")]),
        ("IBAN DE89 3704 0044 0532 0130 00 in 2024", [("iban", "DE89 3704 0044 0532 0130 00")]),
        ("SSN 078-05-1120.", [("us_ssn", "078-05-1120")]),
        ("ssn: 078051120", [("us_ssn", "078051120")]),
        ("NI number JG 10 37 21 B", [("uk_nino", "JG 10 37 21 B")]),
        ("from 10.0.0.1 and fe80::1", [("ip_address", "10.0.0.1"), ("ip_address", "fe80::1")]),
        ("call +1 415-555-0132", [("phone", "+1 415-555-0132")]),
        ("password = 'Tr0ub4dor&3'", [("secret", "Tr0ub4dor&3")]),
        ("ghp_" + "a1B2" * 9, [("github_token", "ghp_" + "a1B2" * 9)]),
    ],
)
def test_positives(text: str, found: list[tuple[str, str]]) -> None:
    assert kinds(text) == found


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 shipped",  # fails Luhn
        "order number 1234567890123452",  # passes Luhn, no issuer prefix
        "IBAN DE89 3704 0044 0532 0130 01",  # fails mod 97
        "SSN 666-12-3456 and 123-00-4567",  # numbers never issued
        "NINO BG 12 34 56 A or QQ 12 34 56 C",  # prefixes HMRC never issues
        "version 1.2.3.4 and build 2.10.300.4",
        "meeting on 2024-01-15 at 12:30:45",
        "sk-this-is-just-a-hyphenated-phrase",
        "password: <your password here>",
        "user@localhost is not an address",
    ],
)
def test_hard_negatives(text: str) -> None:
    assert kinds(text) == []


def test_placeholders_are_stable_and_reversible() -> None:
    ph = Placeholders()
    text = "a@x.io, b@y.io and a@x.io"
    redacted = ph.redact(text)
    assert redacted == "<EMAIL_1>, <EMAIL_2> and <EMAIL_1>"
    assert ph.restore(redacted + " <EMAIL_9>") == text + " <EMAIL_9>"
    assert ph.counts["email"] == 3
    for size in range(1, 8):
        restorer = StreamRestorer(ph)
        pieces = [redacted[i : i + size] for i in range(0, len(redacted), size)]
        assert "".join(restorer.feed(p) for p in pieces) + restorer.flush() == text


def test_a_placeholder_in_the_text_itself_is_not_reused() -> None:
    ph = Placeholders()
    earlier = "you wrote <EMAIL_1> last time"  # an earlier turn's text, as stored
    ph.reserve([earlier, "mail c@z.io"])
    assert ph.redact("mail c@z.io") == "mail <EMAIL_2>"
    assert ph.restore("<EMAIL_1> and <EMAIL_2>") == "<EMAIL_1> and c@z.io"


ANSWER = (
    "Contact jane.doe@example.com or +44 20 7946 0958. Docs: https://docs.example.com/a, "
    "not https://bad.example.net/b. Key sk-proj-Ab12Cd34Ef56Gh78Ij90 ends here, and "
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY----- too."
)


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_is_redacted_exactly_as_the_whole_answer(seed: int) -> None:
    settings = OutputGuard(pii="redact", urls={"allow": ["docs.example.com"]}, hold_back=16)
    whole = OutputCheck(settings, None, False).text(ANSWER)
    assert "jane" not in whole and "BEGIN" not in whole and "bad.example" not in whole
    rng = random.Random(seed)
    guard = OutputCheck(settings, None, False).stream()
    out, i = [], 0
    while i < len(ANSWER):
        n = rng.randint(1, 12)
        out.append(guard.feed(ANSWER[i : i + n]))
        i += n
    out.append(guard.finish())
    assert "".join(out) == whole


@pytest.mark.parametrize("seed", range(10))
def test_a_blocked_span_is_never_partly_sent(seed: int) -> None:
    settings = OutputGuard(pii="block", hold_back=16)
    rng = random.Random(seed)
    guard = OutputCheck(settings, None, False).stream()
    sent, i = "", 0
    with pytest.raises(OutputBlockedError):
        while i < len(ANSWER):
            n = rng.randint(1, 12)
            sent += guard.feed(ANSWER[i : i + n])
            i += n
        guard.finish()
    assert len(sent) <= ANSWER.index("jane")


def test_in_house_deployments() -> None:
    def dep(**kw: object) -> Deployment:
        return Deployment.model_validate({"provider": "openai-compatible", "model": "m", **kw})

    assert in_house(Deployment(provider="local", model="m"))
    assert in_house(dep(base_url="http://127.0.0.1:8000/v1"))
    assert in_house(dep(base_url="http://localhost:11434/v1"))
    assert in_house(dep(base_url="http://[::1]:8000/v1"))
    assert not in_house(dep(base_url="https://api.openai.com/v1"))
    assert in_house(dep(base_url="https://vllm.corp.internal/v1", in_house=True))
    assert not in_house(dep(base_url="http://127.0.0.1:9/v1", in_house=False))


def test_the_bundled_phrase_list_loads() -> None:
    pattern, categories = load_phrases()
    assert {"weapons", "self_harm", "malware"} <= set(categories.values())
    assert pattern.search("how to\nmake a  BOMB") is not None
    assert pattern.search("showhow to make a bombastic") is None


@pytest.mark.parametrize("seed", range(10))
def test_a_spaced_value_longer_than_hold_back_is_never_cut(seed: int) -> None:
    text = "Wire the refund, as agreed on the phone, to DE89 3704 0044 0532 0130 00 today."
    rng = random.Random(seed)
    guard = OutputCheck(OutputGuard(pii="redact", hold_back=16), None, False).stream()
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(guard.feed(text[i : i + n]))
        i += n
    out.append(guard.finish())
    assert "".join(out) == "Wire the refund, as agreed on the phone, to [IBAN] today."
