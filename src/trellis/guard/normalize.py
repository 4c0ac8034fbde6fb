"""Normalisation before detection: undo the tricks that hide an injection from a matcher.

An attack that a reader sees as "ignore previous instructions" can arrive as Cyrillic
look-alikes, with zero-width characters between its letters, as invisible Unicode tag
characters (U+E0020–U+E007E, which some models read as ASCII), or wrapped in base64,
hex or rot13, or spelled in leetspeak ("1gn0r3") or letter by letter ("i.g.n.o.r.e").
:func:`normalize` returns the text a detector should read plus the
decoded payloads it found, and names each trick it undid so the trick itself can count
as evidence.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass, field

__all__ = ["Normalized", "normalize", "fold"]

#: Characters that render as nothing (or nearly): zero-width spaces and joiners, word
#: joiners, invisible operators, the BOM, soft hyphens, Mongolian vowel separator, the
#: bidirectional controls (which reorder what a reader sees) and variation selectors.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)
#: Unicode tag characters: invisible, and each one mirrors an ASCII character.
_TAGS = re.compile("[\U000e0000-\U000e007f]+")

#: Latin look-alikes NFKC leaves alone (Cyrillic, Greek, Armenian, Cherokee letters that
#: render like Latin ones). Fullwidth and mathematical letters NFKC already folds.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic lower case
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j",
        "к": "k", "ӏ": "l", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r",
        "ѕ": "s", "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "ѡ": "w",
        "ё": "e", "ї": "i", "ɡ": "g", "п": "n",
        # Cyrillic upper case
        "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K",
        "М": "M", "О": "O", "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "Ԝ": "W",
        # Greek
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
        "υ": "u", "χ": "x", "γ": "y", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H",
        "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y",
        "Χ": "X",
        # Armenian and others that pass for Latin
        "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "ɑ": "a", "ı": "i", "ȷ": "j",
    }
)  # fmt: skip
_CONFUSABLE_CHARS = frozenset(chr(c) for c in _CONFUSABLES)
_LATIN_WORD = re.compile(r"[A-Za-z]")

#: Runs that may be base64 (standard or URL-safe), at least 16 characters.
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
#: Hex: a long run of pairs, or escapes such as \x69\x67 or 0x69 0x67.
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[\s:]?){8,}(?![0-9A-Fa-f])")
_HEX_ESCAPES = re.compile(r"(?:(?:\\x|0x)[0-9A-Fa-f]{2}[\s,]*){6,}")
_WORD = re.compile(r"[a-z]+")

#: Common English words: rot13 text is read as rot13 only when decoding it makes far
#: more of its words English than before (a cheap test that needs no dictionary).
_COMMON_WORDS = (
    "the be to of and a in that have i it for not on with he as you do at this but "
    "his by from they we say her she or an will my one all would there their what so "
    "up out if about who get which go me when make can like time no just him know "
    "take people into year your good some could them see other than then now look "
    "only come its over think also back after use two how our work first well way "
    "even new want because any these give day most us is are was were been has had "
    "did said ignore previous instructions prompt system reveal tell print show "
    "rules forget above all everything"
)
_COMMON = frozenset(_COMMON_WORDS.split())

#: Leetspeak digits and symbols and the letters they stand for.
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
_LEET_WORD = re.compile(r"\b[a-z@$]*[013457@$][a-z013457@$]*\b", re.IGNORECASE)
#: Letters spelled out one at a time: "i.g.n.o.r.e", "i-g-n-o-r-e" (five or more).
_SPELLED = re.compile(r"(?<!\w)[A-Za-z]([.\-])[A-Za-z](?:\1[A-Za-z]){3,}\1?(?!\w)")

_MAX_PAYLOADS = 8
_MAX_DECODED = 4000


@dataclass(slots=True)
class Normalized:
    """What a detector reads: ``text`` (folded), ``payloads`` (decoded hidden text) and
    ``tricks`` (which obfuscations were undone: invisible, tags, confusables, base64,
    hex, rot13)."""

    text: str
    payloads: list[str] = field(default_factory=list)
    tricks: set[str] = field(default_factory=set)


def fold(text: str) -> tuple[str, set[str]]:
    """Compatibility-fold ``text``: NFKC, invisible characters dropped, tag characters
    turned into the ASCII they mirror, Latin look-alikes mapped to Latin."""
    tricks: set[str] = set()
    if _TAGS.search(text):
        tricks.add("tags")
        text = _TAGS.sub(lambda m: " " + "".join(_untag(c) for c in m.group()) + " ", text)
    text = unicodedata.normalize("NFKC", text)
    stripped = _INVISIBLE.sub("", text)
    if stripped != text:
        tricks.add("invisible")
        text = stripped
    if not _CONFUSABLE_CHARS.isdisjoint(text) and _mixes_scripts(text):
        tricks.add("confusables")
        text = text.translate(_CONFUSABLES)
    return text, tricks


def _untag(char: str) -> str:
    code = ord(char) - 0xE0000
    return chr(code) if 0x20 <= code < 0x7F else ""


def _mixes_scripts(text: str) -> bool:
    """Whether some word mixes Latin letters with look-alikes: a Russian or Greek sentence
    is left alone, "іgnоre" (Cyrillic і and о inside Latin) is not."""
    for word in text.split():
        if _LATIN_WORD.search(word) and not _CONFUSABLE_CHARS.isdisjoint(word):
            return True
    # A whole word of look-alikes next to Latin words ("ѕуѕтем prompt") counts too.
    words = text.split()
    latin = sum(1 for w in words if _LATIN_WORD.search(w))
    confusable = [w for w in words if not _CONFUSABLE_CHARS.isdisjoint(w)]
    return (
        latin >= 2
        and 0 < len(confusable) <= latin
        and all(all(c in _CONFUSABLE_CHARS or not c.isalpha() for c in w) for w in confusable)
    )


def normalize(text: str) -> Normalized:
    """Fold ``text`` and decode the payloads hidden in it (base64, hex, rot13)."""
    folded, tricks = fold(text)
    result = Normalized(text=folded, tricks=tricks)
    for payload in _base64_payloads(folded):
        _add(result, payload, "base64")
    for payload in _hex_payloads(folded):
        _add(result, payload, "hex")
    rot = _rot13_payload(folded)
    if rot is not None:
        _add(result, rot, "rot13")
    leet = _leet_payload(folded)
    if leet is not None:
        _add(result, leet, "leetspeak")
    spelled = _spelled_payload(folded)
    if spelled is not None:
        _add(result, spelled, "spelled")
    return result


def _add(result: Normalized, payload: str, trick: str) -> None:
    if len(result.payloads) >= _MAX_PAYLOADS:
        return
    decoded, inner = fold(payload[:_MAX_DECODED])
    result.payloads.append(decoded)
    result.tricks.add(trick)
    result.tricks.update(inner)


def _readable(data: bytes) -> str | None:
    """``data`` as text when it reads as text (UTF-8, mostly letters and spaces)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text) < 6:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\t")
    letters = sum(1 for c in text if c.isalpha() or c == " ")
    if printable < 0.95 * len(text) or letters < 0.6 * len(text) or " " not in text.strip():
        return None
    return text


def _base64_payloads(text: str) -> list[str]:
    found = []
    for match in _BASE64.finditer(text):
        run = match.group()
        body = run.rstrip("=")
        # Identifiers, paths and hashes are long runs too: real base64 of text mixes cases.
        if not (any(c.islower() for c in body) and any(c.isupper() for c in body)):
            continue
        padded = body + "=" * (-len(body) % 4)
        try:
            data = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            continue
        decoded = _readable(data)
        if decoded is not None:
            found.append(decoded)
        if len(found) >= _MAX_PAYLOADS:
            break
    return found


def _hex_payloads(text: str) -> list[str]:
    found = []
    for pattern in (_HEX_ESCAPES, _HEX_RUN):
        for match in pattern.finditer(text):
            digits = re.sub(r"\\x|0x|[\s:,]", "", match.group())
            if len(digits) % 2:
                digits = digits[:-1]
            try:
                data = bytes.fromhex(digits)
            except ValueError:
                continue
            decoded = _readable(data)
            if decoded is not None:
                found.append(decoded)
            if len(found) >= _MAX_PAYLOADS:
                return found
    return found


def _english_share(text: str) -> float:
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    return sum(1 for w in words if w in _COMMON) / len(words)


def _rot13_payload(text: str) -> str | None:
    """The rot13 reading of ``text`` when it is far more English than ``text`` itself.

    Applied to runs of letters only: a prompt that says "decode this: Vtaber nyy..."
    keeps its English preface, so each line is judged on its own.
    """
    decoded_lines = []
    for line in text.splitlines():
        if len(_WORD.findall(line.lower())) < 3:
            continue
        plain = _english_share(line)
        rot = codecs.encode(line, "rot13")
        if _english_share(rot) >= max(0.3, plain + 0.2):
            decoded_lines.append(rot)
    if not decoded_lines:
        return None
    return "\n".join(decoded_lines)


def _leet_payload(text: str) -> str | None:
    """The leetspeak reading of the lines that read as English only once it is undone."""
    decoded_lines = []
    for line in text.splitlines():
        if len(_LEET_WORD.findall(line)) < 3:
            continue
        plain = _english_share(line)
        undone = line.translate(_LEET)
        if _english_share(undone) >= max(0.3, plain + 0.2):
            decoded_lines.append(undone)
    return "\n".join(decoded_lines) if decoded_lines else None


def _spelled_payload(text: str) -> str | None:
    """``text`` with words spelled letter by letter joined up, when it has such words."""
    if _SPELLED.search(text) is None:
        return None
    return _SPELLED.sub(lambda m: re.sub(r"[.\-]", "", m.group()), text)
