"""Privacy policies: what happens to PII in a request, decided per deployment.

A deployment's own ``privacy`` wins; otherwise the alias's applies, to hosted
deployments only: data sent to an in-house one (provider ``local``, a loopback
``base_url``, or ``in_house: true``) does not leave. For one request the strictest
action among the deployments it could be sent to wins: ``block`` fails it,
``route`` takes the deployments that would need it out of the plan, ``redact`` puts
placeholders in the request sent to every deployment left (one request for the whole
plan: an in-house fallback gets placeholders too, and the answer is restored all the
same).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from trellis.errors import RequestError
from trellis.guard.pii import detect
from trellis.guard.placeholders import Placeholders
from trellis.schema import ChatMessage, ResponseMessage
from trellis.settings import Deployment, ModelAlias, PrivacyPolicy

__all__ = [
    "PiiDetectedError",
    "Decision",
    "decide",
    "in_house",
    "policy_for",
    "message_texts",
    "redact_messages",
]

M = TypeVar("M", ChatMessage, ResponseMessage)

_LOCAL_PROVIDERS = frozenset({"local", "local-embedder"})


class PiiDetectedError(RequestError):
    """The request holds PII its policy does not let leave; the message names the kinds,
    never the values."""

    status_code = 400
    code = "pii_detected"


def in_house(deployment: Deployment) -> bool:
    """Whether data sent to ``deployment`` stays in-house: declared, or provider local,
    or a base_url on a loopback address."""
    if deployment.in_house is not None:
        return deployment.in_house
    if deployment.provider in _LOCAL_PROVIDERS:
        return True
    if not deployment.base_url:
        return False
    host = urlsplit(deployment.base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def policy_for(alias: ModelAlias, deployment: Deployment) -> PrivacyPolicy | None:
    """The policy requests to ``deployment`` follow (None: no check)."""
    if deployment.privacy is not None:
        return deployment.privacy
    if alias.privacy is None or in_house(deployment):
        return None
    return alias.privacy


def message_texts(messages: Iterable[ChatMessage]) -> Iterable[str]:
    """Every text a request sends: contents, text parts, tool call arguments."""
    for message in messages:
        content = message.content
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]
        for call in message.tool_calls or ():
            arguments = getattr(call.function, "arguments", None)
            if isinstance(arguments, str):
                yield arguments


def redact_messages(messages: Sequence[M], placeholders: Placeholders) -> list[M]:
    """Copies of ``messages`` (request or answer messages) with placeholders for the
    values; the originals stay as they are (the session store keeps the caller's words)."""
    out: list[M] = []
    for message in messages:
        update: dict[str, object] = {}
        if message.content is not None:
            redacted = placeholders.redact_content(message.content)
            if redacted != message.content:
                update["content"] = redacted
        if message.tool_calls:
            calls = []
            changed = False
            for call in message.tool_calls:
                arguments = call.function.arguments
                new = placeholders.redact(arguments) if isinstance(arguments, str) else arguments
                if new != arguments:
                    changed = True
                    call = call.model_copy(
                        update={"function": call.function.model_copy(update={"arguments": new})}
                    )
                calls.append(call)
            if changed:
                update["tool_calls"] = calls
        out.append(message.model_copy(update=update) if update else message)
    return out


@dataclass(slots=True)
class Decision:
    """What the privacy stage does to one request."""

    #: allow (nothing to do), redact, route or block.
    action: str
    #: Occurrences of each kind found (over every policy's detectors).
    found: Counter[str] = field(default_factory=Counter)
    #: Indexes of the plan's targets that may be tried (route removes some).
    keep: list[int] = field(default_factory=list)
    #: The kinds to put placeholders for (redact).
    redact_kinds: set[str] | None = None


def decide(
    messages: Sequence[ChatMessage],
    plan: Sequence[tuple[ModelAlias, Deployment]],
) -> Decision:
    """The action for a request whose plan tries these (alias, deployment) pairs."""
    policies = [policy_for(alias, deployment) for alias, deployment in plan]
    active = [p for p in policies if p is not None and p.pii != "allow"]
    everyone = list(range(len(plan)))
    if not active:
        return Decision("allow", keep=everyone)
    kinds: set[str] | None = set()
    for policy in active:
        if policy.detectors is None:
            kinds = None
            break
        assert kinds is not None
        kinds.update(policy.detectors)
    found: Counter[str] = Counter()
    for text in message_texts(messages):
        found.update(f.kind for f in detect(text, kinds))
    if not found:
        return Decision("allow", keep=everyone)
    actions: list[str] = []
    for each in policies:
        if each is None or each.pii == "allow":
            actions.append("allow")
            continue
        wanted = found.keys() if each.detectors is None else found.keys() & set(each.detectors)
        actions.append(each.pii if wanted else "allow")
    if "block" in actions:
        return Decision("block", found=found)
    keep = [i for i, action in enumerate(actions) if action != "route"]
    if len(keep) < len(actions):
        if not keep:
            return Decision("route", found=found)
        redacting = [i for i in keep if actions[i] == "redact"]
        if not redacting:
            return Decision("route", found=found, keep=keep)
    if any(actions[i] == "redact" for i in keep):
        redact_kinds: set[str] | None = set()
        for i in keep:
            chosen = policies[i]
            if actions[i] != "redact" or chosen is None:
                continue
            if chosen.detectors is None:
                redact_kinds = None
                break
            assert redact_kinds is not None
            redact_kinds.update(chosen.detectors)
        return Decision("redact", found=found, keep=keep, redact_kinds=redact_kinds)
    return Decision("allow", found=found, keep=keep)
