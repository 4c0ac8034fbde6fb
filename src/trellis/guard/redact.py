"""PII and secret redaction for stored traces: typed placeholders instead of the values.

Used by the trace writer when ``tracing.bodies`` is ``redacted``: prompts, responses
and error messages are kept (so traces stay readable and searchable) but emails,
phone numbers, card numbers, IBANs, SSNs, IP addresses, API keys (GitHub tokens too),
bearer tokens and JWTs, and private key blocks become ``[EMAIL]``, ``[PHONE]``,
``[CREDIT_CARD]``, ``[PRIVATE_KEY]``... Patterns with a checksum (cards:
Luhn, IBANs: mod 97) are validated, so order numbers and other digit runs survive.

Precision over recall where the two conflict on *structure* (only dashed SSNs,
phone numbers need separators or a ``+``), but version strings that look like IPv4
addresses are redacted: a false positive costs less than a leaked address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "redact",
    "redact_messages",
    "luhn_valid",
    "iban_valid",
    "PLACEHOLDERS",
]

#: Every placeholder this module writes, by kind.
PLACEHOLDERS = {
    "api_key": "[API_KEY]",
    "token": "[TOKEN]",
    "secret": "[SECRET]",
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "credit_card": "[CREDIT_CARD]",
    "ssn": "[SSN]",
    "ip": "[IP_ADDRESS]",
    "phone": "[PHONE]",
    "private_key": "[PRIVATE_KEY]",
}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers carry one)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97."""
    iban = iban.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


_Replacer = Callable[[re.Match[str]], str]


def _fixed(placeholder: str) -> _Replacer:
    return lambda _match: placeholder


def _valid_length(text: str, valid: Callable[[str], bool]) -> int:
    """Length of the whole ``text`` or of its longest prefix ending at a space that is
    ``valid``; 0 if none is.

    Greedy patterns may run on into the next word ("DE89 ... 00 2024", a card number
    followed by a year or by another card): the value is then a prefix of the match.
    """
    if valid(text):
        return len(text)
    cut = text.rfind(" ")
    while cut > 0:
        if valid(text[:cut]):
            return cut
        cut = text.rfind(" ", 0, cut)
    return 0


def _prefix_at_spaces(text: str, valid: Callable[[str], bool], placeholder: str) -> str:
    n = _valid_length(text, valid)
    return placeholder + text[n:] if n else text


def _card_valid(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _card(match: re.Match[str]) -> str:
    text = match.group()
    if _card_valid(text):
        return PLACEHOLDERS["credit_card"]
    return _prefix_at_spaces(text, _card_valid, PLACEHOLDERS["credit_card"])


def _iban(match: re.Match[str]) -> str:
    text = match.group()
    if iban_valid(text):
        return PLACEHOLDERS["iban"]
    return _prefix_at_spaces(text, iban_valid, PLACEHOLDERS["iban"])


def _ipv6(match: re.Match[str]) -> str:
    text = match.group()
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return PLACEHOLDERS["ip"]


def _digit_count(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _phone_sized(text: str) -> bool:
    return 7 <= _digit_count(text) <= 15


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    if _phone_sized(text):
        return PLACEHOLDERS["phone"]
    return _prefix_at_spaces(text, _phone_sized, PLACEHOLDERS["phone"])


# Order matters: secrets before emails (a token may contain '@'), checksummed numbers
# before SSNs and phones (a card number also looks like several phone numbers).
_RULE_SOURCES: tuple[tuple[str, _Replacer], ...] = (
    (r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}", _fixed("Bearer [TOKEN]")),
    (r"(?<![A-Za-z0-9])(?:sk|tr|pk|rk)-[A-Za-z0-9_-]{16,}", _fixed(PLACEHOLDERS["api_key"])),
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", _fixed(PLACEHOLDERS["api_key"])),
    (
        r"\b(?P<kw>(?i:(?:api[_-]?)?key|token|secret|password|access[_-]?token))"
        r"(?P<sep>\s*[=:]\s*[\"']?)[A-Za-z0-9+/_.=-]{16,}",
        lambda m: f"{m.group('kw')}{m.group('sep')}{PLACEHOLDERS['secret']}",
    ),
    (
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        _fixed(PLACEHOLDERS["email"]),
    ),
    (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", _iban),
    # Contiguous, groups of four with one consistent separator, or Amex' 4-6-5; not any
    # digits with stray separators (a phone number next to a date can pass Luhn by chance).
    (
        r"(?<![\d-])(?:\d{13,19}|\d{4}(?P<cs>[ -])\d{4}(?:(?P=cs)\d{4}){1,2}(?:(?P=cs)\d{1,4})?"
        r"|\d{4}[ -]\d{6}[ -]\d{5})(?![\d-])",
        _card,
    ),
    (r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b", _fixed(PLACEHOLDERS["ssn"])),
    (
        r"(?<![\w:.])(?=[0-9A-Fa-f:]*[0-9A-Fa-f])(?:[0-9A-Fa-f]{0,4}:){2,7}"
        r"[0-9A-Fa-f]{0,4}(?![\w:])",
        _ipv6,
    ),
    (
        r"(?<!\d)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)",
        _fixed(PLACEHOLDERS["ip"]),
    ),
    (
        r"(?:(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,4}){1,4}"
        r"|(?<![\w(])(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4})\b",
        _phone,
    ),
)
_RULES: tuple[tuple[re.Pattern[str], _Replacer], ...] = tuple(
    (re.compile(source), replace) for source, replace in _RULE_SOURCES
)

#: Rules 0-3 (keys, tokens, secrets) can be all letters: they run on the whole text, but
#: only when one of these (lower-cased) hints occurs in it.
_SECRET_HINTS: tuple[str, ...] = (
    "bearer", "sk-", "tr-", "pk-", "rk-", "akia", "asia", "key", "token", "secret", "password",
)  # fmt: skip
_EMAIL, _IBAN, _CARD, _SSN, _IPV6, _IPV4, _PHONE = range(4, 11)
#: Everything a number-shaped match (IBAN, card, SSN, IPv4, phone) can consist of.
_NUMERISH = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .()+-")
_NUMERISH_RUN = re.compile(r"[0-9A-Z .()+-]*")
_DIGIT_RUN = re.compile(r"\d+")


def _combined(indices: tuple[int, ...]) -> re.Pattern[str]:
    """Several rules as one alternation: one scan finds the first rule to match."""
    return re.compile("|".join(f"(?P<r{i}>{_RULE_SOURCES[i][0]})" for i in indices))


_SECRETS = _combined((0, 1, 2, 3))


def _whole(text: str) -> bool:
    return True


#: The number-shaped rules as (pattern, validator, placeholder): validated on the matched
#: text or a prefix of it, so that what follows a shorter valid prefix is searched again.
_NUMBER_RULES: tuple[tuple[re.Pattern[str], Callable[[str], bool], str], ...] = (
    (_RULES[_IBAN][0], iban_valid, PLACEHOLDERS["iban"]),
    (_RULES[_CARD][0], _card_valid, PLACEHOLDERS["credit_card"]),
    (_RULES[_SSN][0], _whole, PLACEHOLDERS["ssn"]),
    (_RULES[_IPV4][0], _whole, PLACEHOLDERS["ip"]),
    (_RULES[_PHONE][0], _phone_sized, PLACEHOLDERS["phone"]),
)


def _sub_valid(
    pattern: re.Pattern[str], valid: Callable[[str], bool], placeholder: str, text: str
) -> str:
    """Like ``pattern.sub`` but replacing only the valid part of each match and searching
    again right after it (a second card right after the first is not skipped)."""
    out: list[str] = []
    last = position = 0
    while (match := pattern.search(text, position)) is not None:
        n = _valid_length(match.group(), valid)
        if n:
            out.append(text[last : match.start()])
            out.append(placeholder)
            last = position = match.start() + n
        else:
            position = max(match.end(), match.start() + 1)
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _apply_rules(text: str, first: int) -> str:
    """The rules from ``first`` on, one pass each (the rare path, on a rejected match)."""
    for pattern, replace in _RULES[first:]:
        text = pattern.sub(replace, text)
    return text


def _dispatch(match: re.Match[str]) -> str:
    name = match.lastgroup
    assert name is not None
    index = int(name[1:])
    replaced = _RULE_SOURCES[index][1](match)
    if replaced == match.group():
        # A candidate that failed its checksum (a digit run that is not a card) may still
        # hold something a later rule catches, such as a phone number.
        return _apply_rules(replaced, index + 1)
    return replaced


def _word_bounds(text: str, i: int) -> tuple[int, int]:
    """The whitespace-delimited word around position ``i``."""
    start = max(text.rfind(" ", 0, i), text.rfind("\n", 0, i), text.rfind("\t", 0, i)) + 1
    ends = [j for j in (text.find(" ", i), text.find("\n", i), text.find("\t", i)) if j >= 0]
    return start, min(ends) if ends else len(text)


def _in_words(text: str, anchor: str, rule: int, min_anchors: int = 1) -> str:
    """Apply ``rule`` to each word holding ``anchor`` (emails and IPv6 have no spaces)."""
    if anchor not in text:
        return text
    pattern, replace = _RULES[rule]
    out: list[str] = []
    position = 0
    i = text.find(anchor)
    while i >= 0:
        start, end = _word_bounds(text, i)
        word = text[start:end]
        out.append(text[position:start])
        out.append(pattern.sub(replace, word) if word.count(anchor) >= min_anchors else word)
        position = end
        i = text.find(anchor, end)
    out.append(text[position:])
    return "".join(out)


def _numbers(text: str) -> str:
    """Number-shaped rules, run only over the runs of number-ish characters around digits.

    Inside a run the rules apply one after the other, as over the whole text: a candidate
    one rule rejects (a digit run failing the Luhn check) stays available to the next.
    """
    out: list[str] = []
    position = 0
    for digits in _DIGIT_RUN.finditer(text):
        if digits.start() < position:
            continue
        start = digits.start()
        while start > position and text[start - 1] in _NUMERISH:
            start -= 1
        run_end = _NUMERISH_RUN.match(text, digits.end())
        assert run_end is not None
        # One character past the run, so end-of-match lookaheads see the real next character.
        end = min(len(text), run_end.end() + 1)
        window = text[start:end]
        for pattern, valid, placeholder in _NUMBER_RULES:
            window = _sub_valid(pattern, valid, placeholder, window)
        out.append(text[position:start])
        out.append(window)
        position = end
    if not out:
        return text
    out.append(text[position:])
    return "".join(out)


#: Values with an unmistakable opening, each run only when its hint occurs in the text:
#: private key blocks (their base64 body would otherwise survive), JWTs and GitHub tokens.
_MARKED: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = (
    (
        ("PRIVATE KEY",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"
        ),
        PLACEHOLDERS["private_key"],
    ),
    (
        ("eyJ",),
        re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        PLACEHOLDERS["token"],
    ),
    (
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
        PLACEHOLDERS["api_key"],
    ),
)


def redact(text: str) -> str:
    """``text`` with every recognised PII value or secret replaced by its placeholder.

    Each rule group runs only where it can match: secrets when a hint word occurs, emails
    in words with '@', IPv6 in words with two ':', numbers around digit runs. Python's re
    costs time per character and pattern (README, Performance), so eleven full passes
    made redaction far slower on ordinary prose.
    """
    if not text:
        return text
    for hints, pattern, placeholder in _MARKED:
        if any(hint in text for hint in hints):
            text = pattern.sub(placeholder, text)
    lowered = text.lower()
    if any(hint in lowered for hint in _SECRET_HINTS):
        text = _SECRETS.sub(_dispatch, text)
    text = _in_words(text, "@", _EMAIL)
    text = _in_words(text, ":", _IPV6, min_anchors=2)
    return _numbers(text)


def _redact_content(content: Any) -> Any:
    if isinstance(content, str):
        return redact(content)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part = {**part, "text": redact(part["text"])}
            parts.append(part)
        return parts
    return content


def redact_messages(messages: Any) -> Any:
    """Chat messages (OpenAI shape) with contents, text parts and tool arguments redacted.

    Returns new objects (the trace may still be read elsewhere); anything not shaped
    like a message list is returned as is, except a bare string, which is redacted.
    """
    if isinstance(messages, str):
        return redact(messages)
    if not isinstance(messages, list):
        return messages
    out: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(redact(message) if isinstance(message, str) else message)
            continue
        message = dict(message)
        if "content" in message:
            message["content"] = _redact_content(message["content"])
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message["tool_calls"] = [_redact_tool_call(call) for call in calls]
        out.append(message)
    return out


def _redact_tool_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = call["function"]
    if isinstance(function.get("arguments"), str):
        function = {**function, "arguments": redact(function["arguments"])}
    return {**call, "function": function}
