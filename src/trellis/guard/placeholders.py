"""Reversible placeholders: PII out of a request, back into its answer.

Each detected value becomes ``<KIND_n>`` (``<EMAIL_1>``, ``<CREDIT_CARD_2>``); the same
value gets the same placeholder everywhere in one request, so the model can still
refer to "the same address". The mapping lives only in memory for the request's
lifetime: the provider, the cache and the trace see placeholders, the caller gets the
values back. ``StreamRestorer`` does the restoring on a stream, where a placeholder
can be split across chunks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any

from trellis.guard.pii import detect

__all__ = ["Placeholders", "StreamRestorer", "PLACEHOLDER"]

#: A placeholder as written into requests.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*_\d+)>")
#: A tail that may be the start of a placeholder still to come.
_PARTIAL = re.compile(r"<[A-Z_0-9]{0,40}$")


class Placeholders:
    """The value ↔ placeholder mapping of one request."""

    def __init__(self, kinds: Collection[str] | None = None) -> None:
        self.kinds = kinds
        self._by_value: dict[str, str] = {}
        self._by_token: dict[str, str] = {}
        self._numbers: Counter[str] = Counter()
        #: Placeholder-shaped text the request itself holds: never handed out, never restored.
        self._reserved: set[str] = set()
        #: How many values of each kind were replaced (occurrences, not distinct values).
        self.counts: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self._by_token)

    def _token(self, kind: str, value: str) -> str:
        token = self._by_value.get(value)
        if token is None:
            label = kind.upper()
            while True:  # never reuse a placeholder the text itself already holds
                self._numbers[label] += 1
                token = f"<{label}_{self._numbers[label]}>"
                if token not in self._by_token and token not in self._reserved:
                    break
            self._by_value[value] = token
            self._by_token[token] = value
        return token

    def reserve(self, texts: Iterable[str]) -> None:
        """Keep the placeholder-shaped strings of ``texts`` (an earlier turn that held
        ``<EMAIL_1>`` as text) out of this request's mapping."""
        for text in texts:
            if "<" in text:
                self._reserved.update(m.group() for m in PLACEHOLDER.finditer(text))

    def redact(self, text: str) -> str:
        """``text`` with every detected value replaced by its placeholder."""
        findings = detect(text, self.kinds)
        if not findings:
            return text
        out: list[str] = []
        last = 0
        for found in findings:
            out.append(text[last : found.start])
            out.append(self._token(found.kind, found.value))
            self.counts[found.kind] += 1
            last = found.end
        out.append(text[last:])
        return "".join(out)

    def redact_content(self, content: Any) -> Any:
        """A message's content (a string or OpenAI content parts) with its text redacted."""
        if isinstance(content, str):
            return self.redact(content)
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": self.redact(part["text"])}
                parts.append(part)
            return parts
        return content

    def restore(self, text: str) -> str:
        """``text`` with this request's placeholders replaced by their values; unknown
        placeholders (a model's invention) stay as written."""
        if not self._by_token or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._by_token.get(m.group(), m.group()), text)


class StreamRestorer:
    """Restores placeholders in a stream of text pieces, holding back a tail that may be
    the beginning of a placeholder (``"<EMA"`` then ``"IL_1> ..."``)."""

    def __init__(self, placeholders: Placeholders) -> None:
        self.placeholders = placeholders
        self._tail = ""

    def feed(self, piece: str) -> str:
        text = self._tail + piece
        partial = _PARTIAL.search(text)
        if partial is not None:
            self._tail = text[partial.start() :]
            text = text[: partial.start()]
        else:
            self._tail = ""
        return self.placeholders.restore(text)

    def flush(self) -> str:
        text, self._tail = self._tail, ""
        return self.placeholders.restore(text)
