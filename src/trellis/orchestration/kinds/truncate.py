"""The ``truncate`` step kind: fit a state field to a token budget before a model sees it.

Three shapes of field, each cut the way that keeps it useful:

- **messages** (``ChatMessage`` objects or dicts with a ``role``): the gateway's own
  context fitting (``inference.context.ContextFitter``): system/developer messages and
  the last message stay, the oldest other turns go first, a tool-calling assistant turn
  goes together with its tool results. If even that does not fit, the step fails with
  ``context_length_exceeded``;
- **passages** or any other list (``Passage`` objects, dicts with ``text``, strings): the
  leading items (best first, as retrieval orders them) that fit together are kept;
- **a string**: its head is kept, cut at a word boundary.

Tokens are counted with the gateway's counter (the bundled tokenizer, see
``inference.tokens``). When anything is dropped the step's span gets a ``truncation``
event with what was dropped and the token counts before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trellis.errors import ConfigurationError
from trellis.inference.context import ContextFitter
from trellis.inference.gateway import TokenCounter
from trellis.orchestration.context import Context
from trellis.orchestration.kinds.checks import text_of
from trellis.orchestration.policy import Policy
from trellis.orchestration.steps import Next, Outcome, Step
from trellis.schema import ChatMessage, ChatRequest

__all__ = ["TruncateStep", "truncate", "Fitted", "fit_messages", "fit_items", "fit_text"]


class Fitted:
    """What a fit kept: the value, how many items (or characters) went, tokens before/after."""

    __slots__ = ("value", "dropped", "tokens_before", "tokens_after")

    def __init__(self, value: Any, dropped: int, tokens_before: int, tokens_after: int) -> None:
        self.value = value
        self.dropped = dropped
        self.tokens_before = tokens_before
        self.tokens_after = tokens_after


def _is_message(item: Any) -> bool:
    return isinstance(item, ChatMessage) or (isinstance(item, Mapping) and "role" in item)


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        return str(item["text"])
    text = getattr(item, "text", None)
    return text if isinstance(text, str) else text_of(item)


def fit_messages(messages: Sequence[Any], budget: int, counter: TokenCounter) -> Fitted:
    """The conversation trimmed to ``budget`` tokens as the gateway trims a request."""
    parsed = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]
    before = counter.messages(parsed)
    if before <= budget:
        return Fitted(list(messages), 0, before, before)
    fitter = ContextFitter(counter.messages)
    result = fitter.fit(ChatRequest(model="truncate", messages=parsed), budget, trim=True)
    kept_ids = {id(m) for m in result.messages}
    kept = [original for original, m in zip(messages, parsed, strict=True) if id(m) in kept_ids]
    after = result.prompt_tokens or counter.messages(result.messages)
    return Fitted(kept, len(messages) - len(kept), before, after)


def fit_items(items: Sequence[Any], budget: int, counter: TokenCounter) -> Fitted:
    """The leading items whose texts fit in ``budget`` tokens together."""
    costs = [counter.text(_item_text(item)) for item in items]
    used = kept = 0
    for cost in costs:
        if used + cost > budget:
            break
        used += cost
        kept += 1
    return Fitted(list(items[:kept]), len(items) - kept, sum(costs), used)


def fit_text(text: str, budget: int, counter: TokenCounter) -> Fitted:
    """The longest head of ``text`` (cut at whitespace when there is some) within budget."""
    before = counter.text(text)
    if before <= budget:
        return Fitted(text, 0, before, before)
    low, high = 0, len(text)  # the longest prefix length that fits: binary search
    while low < high:
        middle = (low + high + 1) // 2
        if counter.text(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    head = text[:low]
    if low < len(text) and not text[low].isspace() and any(c.isspace() for c in head):
        head = head[: max(i for i, c in enumerate(head) if c.isspace())]
    head = head.rstrip()
    return Fitted(head, len(text) - len(head), before, counter.text(head))


class TruncateStep(Step):
    kind = "truncate"

    def __init__(
        self,
        name: str,
        *,
        field: str,
        budget: int | Callable[[Any], int],
        next: Next | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(name, next=next, policy=policy)
        if not field:
            raise ConfigurationError(f"step {name!r}: truncate needs field=<state field>")
        if isinstance(budget, int) and budget < 1:
            raise ConfigurationError(f"step {name!r}: the budget must be at least 1 token")
        self.field = field
        self.budget = budget

    async def execute(self, ctx: Context, state: Any) -> Outcome:
        budget = self.budget(state) if callable(self.budget) else self.budget
        if budget < 1:
            raise ConfigurationError(f"step {self.name!r}: the budget must be at least 1 token")
        counter = _counter(ctx)
        value = state.get(self.field) if isinstance(state, Mapping) else getattr(state, self.field)
        if value is None:
            return Outcome()
        if isinstance(value, str):
            shape, fitted = "text", fit_text(value, budget, counter)
        elif isinstance(value, Sequence) and value and all(_is_message(v) for v in value):
            shape, fitted = "messages", fit_messages(value, budget, counter)
        elif isinstance(value, Sequence):
            shape, fitted = "items", fit_items(value, budget, counter)
        else:
            raise ConfigurationError(
                f"step {self.name!r}: cannot truncate a {type(value).__name__} "
                "(messages, a list or a string)"
            )
        span = ctx.span
        if span is not None:
            span.update({"trellis.truncate.field": self.field, "trellis.truncate.budget": budget})
        output = {
            "shape": shape,
            "dropped": fitted.dropped,
            "tokens_before": fitted.tokens_before,
            "tokens_after": fitted.tokens_after,
        }
        if not fitted.dropped:
            return Outcome(output=output)
        if span is not None:
            span.add_event("truncation", field=self.field, budget=budget, **output)
        return Outcome(update={self.field: fitted.value}, output=output)


def _counter(ctx: Context) -> TokenCounter:
    counter = ctx.services.get("counter")
    if counter is None:
        gateway = ctx.services.get("gateway")
        counter = getattr(gateway, "counter", None) or TokenCounter()
    return counter  # type: ignore[no-any-return]


def truncate(
    name: str,
    *,
    field: str,
    budget: int | Callable[[Any], int],
    next: Next | None = None,
    policy: Policy | None = None,
) -> TruncateStep:
    """A truncate step: fit the state field ``field`` (messages, a list of passages, or a
    string) to ``budget`` tokens (an int or a function of the state); a ``truncation``
    span event records what was dropped."""
    return TruncateStep(name, field=field, budget=budget, next=next, policy=policy)
