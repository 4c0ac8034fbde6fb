"""PII and secret detection that says *where*: kind and span of every value found.

``redact.py`` rewrites text for stored traces; the privacy stage and the output guard
need the spans themselves (to put reversible placeholders in, to name the kinds found,
to hold a stream back before a value). The checksums are shared with ``redact.py``
(cards: Luhn plus an issuer prefix, IBANs: mod 97); national ids follow their
validity rules (US SSN: no 000/666/9xx area, no 00 group, no 0000 serial; UK NINO: the
prefixes HMRC never issues are refused). Precision and recall of every detector on a
labelled set: ``benchmarks/pii_detectors.py``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from trellis.guard.redact import iban_valid, luhn_valid

__all__ = ["KINDS", "Finding", "detect", "unterminated_private_key"]

#: Every kind this module detects, in priority order: where two candidates overlap,
#: the earlier kind wins (a JWT is not also an API key, a card number not a phone).
KINDS: tuple[str, ...] = (
    "private_key",
    "jwt",
    "github_token",
    "aws_key",
    "api_key",
    "secret",
    "email",
    "iban",
    "credit_card",
    "us_ssn",
    "uk_nino",
    "ip_address",
    "phone",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: ``text[start:end]`` is ``value``."""

    kind: str
    start: int
    end: int
    value: str


# A validator gets the matched text and answers how long its valid prefix is (0: none):
# greedy patterns may run on into the next word ("DE89 ... 00 2024").
_Validator = Callable[[str], int]


def _whole(check: Callable[[str], bool]) -> _Validator:
    return lambda text: len(text) if check(text) else 0


def _prefix_at_spaces(check: Callable[[str], bool]) -> _Validator:
    def valid(text: str) -> int:
        if check(text):
            return len(text)
        cut = text.rfind(" ")
        while cut > 0:
            if check(text[:cut].rstrip(" -")):
                return len(text[:cut].rstrip(" -"))
            cut = text.rfind(" ", 0, cut)
        return 0

    return valid


def _card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    if not (13 <= len(digits) <= 19 and digits.isdigit() and luhn_valid(digits)):
        return False
    # Issuer prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro):
    # a Luhn-valid order number passes one time in ten, an issuer prefix seldom.
    two, four, n = int(digits[:2]), int(digits[:4]), len(digits)
    if two in (34, 37):  # American Express
        return n == 15
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649:  # Discover
        return 16 <= n <= 19
    if two in (35, 62):  # JCB, UnionPay
        return 16 <= n <= 19
    if two in (36, 38, 30):  # Diners Club
        return 14 <= n <= 19
    return two in (50, 56, 57, 58, 63, 67) and 12 <= n <= 19  # Maestro


def _jwt(text: str) -> bool:
    header = text.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except (binascii.Error, ValueError):
        return False
    return b'"alg"' in decoded or b'"typ"' in decoded


_KEY_PREFIX = re.compile(
    r"^(?:(?:sk|pk|rk)[-_](?:proj-|ant-(?:api\d\d-)?|live_|test_|live-|test-)?|xox[abposr]-|AIza)"
)


def _key_body(text: str) -> bool:
    """An API key's random part: letters with digits or with mixed case, not words."""
    body = _KEY_PREFIX.sub("", text).replace("-", "").replace("_", "")
    has_digit = any(c.isdigit() for c in body)
    has_lower = any(c.islower() for c in body)
    has_upper = any(c.isupper() for c in body)
    return len(body) >= 16 and (has_lower or has_upper) and (has_digit or (has_lower and has_upper))


#: IBAN lengths by country (ISO 13616 registry, the countries most often seen); others
#: need only the general 15-34.
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}  # fmt: skip


def _iban(text: str) -> bool:
    compact = text.replace(" ", "")
    expected = _IBAN_LENGTHS.get(compact[:2])
    return (expected is None or len(compact) == expected) and iban_valid(compact)


def _secret_value(text: str) -> bool:
    if text[0] in "<$%{[(*" or set(text) <= set("*xX.-_#"):
        return False  # a template, a variable or a mask, not a value
    if "(" in text or "[" in text:
        return False  # code that reads the value (os.environ[...]), not the value
    return text.lower() not in {"password", "changeme", "required", "optional", "none", "null"}


def _ipv4(text: str) -> bool:
    return all(not (len(part) > 1 and part[0] == "0") for part in text.split("."))


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15


_NINO_PREFIX_BANNED = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino(text: str) -> bool:
    return text[:2].upper() not in _NINO_PREFIX_BANNED


_IPV4_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

#: kind → (pattern, validator, value group). The pattern's ``value`` group, when it has
#: one, is the span (a ``password=...`` assignment keeps its keyword).
_RULES: dict[str, tuple[re.Pattern[str], _Validator]] = {
    "private_key": (
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"
        ),
        len,
    ),
    "jwt": (
        re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        _whole(_jwt),
    ),
    "github_token": (
        re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
        len,
    ),
    "aws_key": (re.compile(r"\b(?:AKIA|ASIA|AGPA|AROA|AIDA)[0-9A-Z]{16}\b"), len),
    "api_key": (
        re.compile(
            r"(?<![\w-])(?:(?:sk|pk|rk)-(?:proj-|ant-(?:api\d\d-)?|live_|test_|live-|test-)?"
            r"[A-Za-z0-9_-]{20,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"
        ),
        _whole(_key_body),
    ),
    "secret": (
        re.compile(
            r"(?i:(?<![a-z])(?:password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|"
            r"access[_-]?token|auth[_-]?token|private[_-]?token)\b)"
            r"[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?(?P<value>[^\s\"',;]{6,})"
        ),
        _whole(_secret_value),
    ),
    "email": (
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        len,
    ),
    "iban": (
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
        _prefix_at_spaces(_iban),
    ),
    "credit_card": (
        re.compile(
            r"(?<![\d-])(?<![A-Z]{2}\d{2} )(?:\d{13,19}|\d{4}(?P<cs>[ -])\d{4}(?:(?P=cs)\d{4}){1,2}"
            r"(?:(?P=cs)\d{1,4})?|\d{4}[ -]\d{6}[ -]\d{5})(?![\d-])"
        ),
        _prefix_at_spaces(_card),
    ),
    "us_ssn": (
        re.compile(
            r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"
            r"|(?i:\b(?:ssn|social security(?: number| no\.?)?)\s*[:#]?\s*)"
            r"(?P<value>(?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})\b"
        ),
        len,
    ),
    "uk_nino": (
        re.compile(
            r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
        ),
        _whole(_nino),
    ),
    "ip_address": (
        re.compile(
            r"(?<![\d.\w])(?<!version )(?<!Version )(?<!build )(?<!Build )(?<!release )"
            rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}(?![\d\w]|\.\d)"
            r"|(?<![\w:.])(?=[0-9A-Fa-f:]*[0-9A-Fa-f])(?=(?:[0-9A-Fa-f]{0,4}:){2})"
            r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
        ),
        _whole(lambda text: _ipv6(text) if ":" in text else _ipv4(text)),
    ),
    "phone": (
        re.compile(
            r"(?:(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,8}){1,4}"
            r"|(?<![\w+])\+\d{8,15}"
            r"|(?<![\w(])(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4})\b"
        ),
        _prefix_at_spaces(_phone),
    ),
}

#: Cheap pre-checks: a kind's pattern runs only on text that can hold it.
_HINTS: dict[str, Callable[[str], bool]] = {
    "private_key": lambda t: "PRIVATE KEY" in t,
    "jwt": lambda t: "eyJ" in t,
    "github_token": lambda t: "gh" in t or "github_pat_" in t,
    "aws_key": lambda t: "A" in t,
    "api_key": lambda t: "k-" in t or "k_" in t or "xox" in t or "AIza" in t,
    "email": lambda t: "@" in t,
    "ip_address": lambda t: "." in t or ":" in t,
}

_DIGIT = re.compile(r"\d")


def _candidates(text: str, kind: str) -> Iterable[Finding]:
    pattern, valid = _RULES[kind]
    has_value = "value" in pattern.groupindex
    position = 0
    while (match := pattern.search(text, position)) is not None:
        start = match.start("value") if has_value and match.group("value") else match.start()
        n = valid(text[start : match.end()])
        if n:
            yield Finding(kind, start, start + n, text[start : start + n])
            position = start + n
        else:
            # What failed its check may still hold a shorter value further on.
            position = match.start() + 1


def detect(text: str, kinds: Collection[str] | None = None) -> list[Finding]:
    """Every value of the ``kinds`` asked for (all when None) in ``text``, by position.

    Candidates are taken in ``KINDS`` order and one that overlaps an earlier kind's is
    dropped, so every character belongs to at most one finding.
    """
    if not text:
        return []
    wanted = KINDS if kinds is None else tuple(k for k in KINDS if k in kinds)
    has_digit = _DIGIT.search(text) is not None
    taken: list[Finding] = []
    for kind in wanted:
        hint = _HINTS.get(kind)
        if hint is not None and not hint(text):
            continue
        if hint is None and kind not in ("secret",) and not has_digit:
            continue
        for found in _candidates(text, kind):
            if not any(found.start < f.end and f.start < found.end for f in taken):
                taken.append(found)
    taken.sort(key=lambda f: f.start)
    return taken


_BEGIN_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_END_KEY = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


def unterminated_private_key(text: str) -> int | None:
    """Where a private key block starts that has no END line yet (None: there is none).

    A stream holds its text back from there: the block is one value, and the part of it
    sent before its END arrives could not be taken back.
    """
    start = None
    for begin in _BEGIN_KEY.finditer(text):
        if _END_KEY.search(text, begin.end()) is None:
            start = begin.start()
            break
    return start
