"""The output guard: checks on an answer before the caller gets it.

Checks (``guard.output`` of an alias): PII the model wrote (``pii``), the request's
canary token (``canary``), phrases of the harmful-content list (``harmful``), links to
domains off the allow-list (``urls``), and JSON that does not parse when the request
asked for ``response_format`` json (``json``). Each check is off, ``flag`` (counted on
the trace), ``redact`` (the span replaced by a typed marker) or ``block`` (the answer
is refused with ``output_blocked``).

On a stream (``StreamGuard``) the guard holds back the last ``hold_back`` characters,
and the word still being written, so a value is whole before any of it is sent: a
blocked answer ends with an error event, and what was sent before never holds the
blocked span. A JSON check that blocks holds the whole answer (validity is only known
at its end).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from trellis.errors import TrellisError
from trellis.guard.pii import detect, unterminated_private_key
from trellis.settings import OutputGuard

__all__ = [
    "OutputBlockedError",
    "Hit",
    "OutputCheck",
    "StreamGuard",
    "load_phrases",
    "wants_json",
]

#: A stream never holds more than this many characters waiting for whitespace (a
#: run without any is sent, less the hold-back, past it).
MAX_HOLD = 8192
#: The longest PII value with spaces inside (an IBAN of 34 characters in groups of four).
_SPACED_PII = 48
#: Characters of already-sent text a stream check looks back over (a keyword before
#: a secret, a word boundary).
_CONTEXT = 32


class OutputBlockedError(TrellisError):
    """The answer failed a blocking output check. 422, not 5xx: the request was
    understood and answered, the answer is what may not be delivered, and retrying the
    same request (which OpenAI's SDKs do on 5xx) would only cost another answer."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "output_blocked"


@dataclass(frozen=True, slots=True)
class Hit:
    """One span an output check found: ``check`` (pii, canary, harmful, url), its kind
    (the PII kind, the phrase category, the domain), the span and the action."""

    check: str
    kind: str
    start: int
    end: int
    action: str

    @property
    def marker(self) -> str:
        """What a redacted span becomes (square brackets: never a request placeholder)."""
        if self.check == "pii":
            return f"[{self.kind.upper()}]"
        if self.check == "url":
            return "[LINK REMOVED]"
        if self.check == "canary":
            return "[REDACTED]"
        return "[REMOVED]"


@lru_cache(maxsize=8)
def load_phrases(path: Path | None = None) -> tuple[re.Pattern[str], dict[str, str]]:
    """The phrase list as one pattern and the category of each phrase (lower-cased).

    Lines are ``category: phrase``; ``#`` starts a comment. The bundled list is
    ``trellis/guard/data/harmful.txt``."""
    if path is None:
        text = resources.files("trellis.guard").joinpath("data/harmful.txt").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    categories: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        category, sep, phrase = line.partition(":")
        if not sep or not phrase.strip() or not category.strip():
            raise ValueError(f"{path or 'harmful.txt'} line {number}: expected `category: phrase`")
        categories[" ".join(phrase.lower().split())] = category.strip()
    alternatives = sorted(categories, key=len, reverse=True)
    body = "|".join(r"\s+".join(re.escape(w) for w in p.split()) for p in alternatives)
    return re.compile(rf"(?i)(?<!\w)(?:{body})(?!\w)"), categories


_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`)\]}]+", re.IGNORECASE)


def wants_json(response_format: object) -> bool:
    """Whether a request's ``response_format`` asks for JSON."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    return kind in ("json_object", "json_schema")


class OutputCheck:
    """The output checks of one request (its alias's settings and its canary)."""

    def __init__(self, settings: OutputGuard, canary: str | None, want_json: bool) -> None:
        self.settings = settings
        self.canary = canary if settings.canary != "off" else None
        self.json = settings.json_ if want_json else "off"
        self._phrases = (
            load_phrases(settings.harmful_phrases) if settings.harmful != "off" else None
        )
        urls = settings.urls
        self._allow = tuple(urls.allow) if urls is not None else None
        #: What the checks found, ``check:kind`` → spans, and how often each action ran.
        self.hits: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()

    @property
    def active(self) -> bool:
        s = self.settings
        return bool(
            s.pii != "off"
            or self.canary
            or self._phrases is not None
            or self._allow is not None
            or self.json != "off"
        )

    def _allowed(self, url: str) -> bool:
        target = url if "://" in url else "http://" + url
        host = (urlsplit(target).hostname or "").lower()
        assert self._allow is not None
        return any(host == d or host.endswith("." + d) for d in self._allow)

    def scan(self, text: str) -> list[Hit]:
        """Every span a check that is on finds in ``text``, earlier checks first on
        overlap (canary, pii, harmful, url)."""
        found: list[Hit] = []
        s = self.settings
        if self.canary:
            start = text.find(self.canary)
            while start >= 0:
                found.append(Hit("canary", "canary", start, start + len(self.canary), s.canary))
                start = text.find(self.canary, start + 1)
        if s.pii != "off":
            found.extend(
                Hit("pii", f.kind, f.start, f.end, s.pii) for f in detect(text, s.detectors)
            )
        if self._phrases is not None:
            pattern, categories = self._phrases
            for match in pattern.finditer(text):
                category = categories.get(" ".join(match.group().lower().split()), "harmful")
                found.append(Hit("harmful", category, match.start(), match.end(), s.harmful))
        if self._allow is not None and s.urls is not None:
            for match in _URL.finditer(text):
                url = match.group().rstrip(".,;:!?")
                if not self._allowed(url):
                    host = urlsplit(url if "://" in url else "http://" + url).hostname or "?"
                    end = match.start() + len(url)
                    found.append(Hit("url", host, match.start(), end, s.urls.action))
        kept: list[Hit] = []
        for hit in found:
            if not any(hit.start < k.end and k.start < hit.end for k in kept):
                kept.append(hit)
        kept.sort(key=lambda h: h.start)
        return kept

    def _block(self, hits: list[Hit]) -> None:
        checks = sorted({f"{h.check} ({h.kind})" if h.check != "url" else "url" for h in hits})
        for hit in hits:
            self.hits[f"{hit.check}:{hit.kind}"] += 1
        self.actions["block"] += 1
        raise OutputBlockedError("The answer was blocked by the output guard: " + ", ".join(checks))

    def apply(self, text: str, hits: list[Hit], upto: int | None = None) -> str:
        """``text[:upto]`` with the redact hits that end by then replaced; flags counted.
        Raises ``OutputBlockedError`` on any blocking hit in ``text``."""
        blocking = [h for h in hits if h.action == "block"]
        if blocking:
            self._block(blocking)
        end = len(text) if upto is None else upto
        out: list[str] = []
        last = 0
        for hit in hits:
            if hit.end > end:
                break
            self.hits[f"{hit.check}:{hit.kind}"] += 1
            self.actions[hit.action] += 1
            if hit.action == "redact":
                out.append(text[last : hit.start])
                out.append(hit.marker)
                last = hit.end
        out.append(text[last:end])
        return "".join(out)

    def check_json(self, text: str) -> None:
        """The JSON check on a whole answer: flag or block one that does not parse."""
        if self.json == "off":
            return
        try:
            json.loads(text)
        except ValueError:
            self.hits["json:invalid"] += 1
            if self.json == "block":
                self.actions["block"] += 1
                raise OutputBlockedError(
                    "The answer was blocked by the output guard: json (not valid JSON)"
                ) from None
            self.actions["flag"] += 1

    def text(self, text: str) -> str:
        """A whole (non-streamed) answer, checked: redacted, or ``OutputBlockedError``."""
        guarded = self.apply(text, self.scan(text))
        self.check_json(guarded)
        return guarded

    def stream(self) -> StreamGuard:
        return StreamGuard(self)


class StreamGuard:
    """The output checks over one streamed choice: ``feed`` each piece, send what it
    returns; ``finish`` at the end returns the rest (or raises)."""

    def __init__(self, check: OutputCheck) -> None:
        self.check = check
        # Never less than the longest value with spaces inside (an IBAN in groups of
        # four), nor than the longest phrase: either could otherwise be cut and its
        # beginning sent before the rest arrives.
        floor = [check.settings.hold_back]
        if check.settings.pii != "off":
            floor.append(_SPACED_PII)
        if check._phrases is not None:
            floor.append(max((len(p) for p in check._phrases[1]), default=0) + 8)
        self.hold_back = max(floor)
        #: The whole answer is held when a blocking JSON check needs all of it.
        self.hold_all = check.json == "block"
        self._pending = ""
        self._context = ""
        self._sent: list[str] = []

    def _boundary(self, text: str) -> int:
        """How much of ``text`` may be sent now: not the last ``hold_back`` characters,
        not the word being written, not an unterminated private key block; cut after
        whitespace."""
        if self.hold_all:
            return 0
        limit = len(text) - self.hold_back
        key = unterminated_private_key(text)
        if key is not None:
            limit = min(limit, key)
        if limit <= 0:
            return 0
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit), text.rfind("\t", 0, limit))
        if cut >= 0:
            return cut + 1
        return limit if len(text) > MAX_HOLD else 0

    def _take(self, upto: int | None) -> str:
        context = self._context
        text = context + self._pending
        offset = len(context)
        hits = [
            Hit(h.check, h.kind, max(h.start, offset) - offset, h.end - offset, h.action)
            for h in self.check.scan(text)
            if h.end > offset
        ]
        pending = self._pending
        end = len(pending) if upto is None else upto
        for hit in hits:  # never cut through a span
            if hit.start < end < hit.end:
                end = hit.start
        out = self.check.apply(pending, hits, end)
        self._pending = pending[end:]
        self._context = (context + pending[:end])[-_CONTEXT:]
        self._sent.append(out)
        return out

    def feed(self, piece: str) -> str:
        self._pending += piece
        upto = self._boundary(self._pending)
        if upto <= 0:
            # Nothing to send yet; still refuse a blocking span as soon as it is whole.
            hits = self.check.scan(self._context + self._pending)
            if any(h.action == "block" and h.end > len(self._context) for h in hits):
                self._take(0)
            return ""
        return self._take(upto)

    def finish(self) -> str:
        out = self._take(None)
        self.check.check_json("".join(self._sent))
        return out
