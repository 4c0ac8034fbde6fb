"""Prices per model and the cost of one call, from the usage the provider reported.

Lookup order: the deployment's own ``prices``, then ``Settings.prices`` by
upstream model name, then the built-in table (exact name, then the longest
prefix, so a dated snapshot such as ``gpt-4o-mini-2024-07-18`` finds
``gpt-4o-mini``). Unknown models cost 0 and are reported as unpriced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from trellis.schema import Usage
from trellis.settings import Deployment, Prices

__all__ = ["PriceBook", "Cost", "BUILTIN_PRICES"]

#: US dollars per million tokens: (input, output, cached input). Public list prices.
BUILTIN_PRICES: dict[str, tuple[float, float, float | None]] = {
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "o3-mini": (1.10, 4.40, 0.55),
    "o4-mini": (1.10, 4.40, 0.275),
    "gpt-3.5-turbo": (0.50, 1.50, None),
    "text-embedding-3-small": (0.02, 0.0, None),
    "text-embedding-3-large": (0.13, 0.0, None),
    "claude-3-5-haiku": (0.80, 4.00, 0.08),
    "claude-3-5-sonnet": (3.00, 15.00, 0.30),
    "claude-3-7-sonnet": (3.00, 15.00, 0.30),
    "claude-sonnet-4": (3.00, 15.00, 0.30),
    "claude-opus-4": (15.00, 75.00, 1.50),
    "claude-3-haiku": (0.25, 1.25, 0.03),
    "gemini-1.5-flash": (0.075, 0.30, 0.01875),
    "gemini-1.5-pro": (1.25, 5.00, 0.3125),
    "gemini-2.0-flash": (0.10, 0.40, 0.025),
    "gemini-2.5-flash": (0.30, 2.50, 0.075),
    "gemini-2.5-pro": (1.25, 10.00, 0.31),
    "command-r": (0.15, 0.60, None),
    "command-r-plus": (2.50, 10.00, None),
    "command-a": (2.50, 10.00, None),
    "llama-3.1-8b-instant": (0.05, 0.08, None),
    "llama-3.3-70b-versatile": (0.59, 0.79, None),
    "smollm2-135m-instruct": (0.0, 0.0, None),
    "all-minilm-l6-v2": (0.0, 0.0, None),
}


@dataclass(slots=True, frozen=True)
class Cost:
    total: float
    priced: bool


class PriceBook:
    def __init__(self, overrides: dict[str, Prices] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._prefixes = sorted(BUILTIN_PRICES, key=len, reverse=True)

    def prices_for(self, deployment: Deployment, served_model: str | None = None) -> Prices | None:
        if deployment.prices is not None:
            return deployment.prices
        for name in (deployment.model, served_model):
            if not name:
                continue
            if name in self._overrides:
                return self._overrides[name]
            builtin = self._builtin(name)
            if builtin is not None:
                return builtin
        return None

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one PriceBook per runtime; bounded
    def _builtin(self, model: str) -> Prices | None:
        bare = model.rsplit("/", 1)[-1]  # "models/gemini-1.5-flash", "openai/gpt-4o"
        for prefix in self._prefixes:
            if bare == prefix or bare.startswith(prefix + "-") or bare.startswith(prefix + "@"):
                price_in, price_out, cached = BUILTIN_PRICES[prefix]
                return Prices(input=price_in, output=price_out, cached_input=cached)
        return None

    def cost(
        self, deployment: Deployment, usage: Usage | None, served_model: str | None = None
    ) -> Cost:
        prices = self.prices_for(deployment, served_model)
        if prices is None or usage is None:
            return Cost(0.0, priced=prices is not None)
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = prices.cached_input if prices.cached_input is not None else prices.input
        total = (
            (usage.prompt_tokens - cached) * prices.input
            + cached * cached_price
            + usage.completion_tokens * prices.output
        ) / 1_000_000
        return Cost(round(total, 10), priced=True)
