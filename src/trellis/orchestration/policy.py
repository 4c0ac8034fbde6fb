"""Per-step failure policy: attempts, jittered backoff, per-attempt timeout, what to do after.

A policy only describes; the engine (``engine.py``) applies it. ``on_error`` is what happens
once attempts are exhausted (or the error is not retryable) and no ``fallback`` step is set.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trellis.errors import ConfigurationError, UpstreamError

if TYPE_CHECKING:
    from trellis.orchestration.context import Context
    from trellis.orchestration.steps import Outcome, Step

__all__ = ["Backoff", "Policy", "DEFAULT_RETRY_ON", "Attempted", "attempt_loop"]

#: Errors worth another attempt by default: the upstream's and time-outs, never a bad request.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (UpstreamError, TimeoutError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter.

    After attempt n: uniform(0, min(maximum, initial * multiplier^(n-1))) seconds.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        return random.uniform(0, ceiling) if self.jitter else ceiling


@dataclass(frozen=True, slots=True)
class Policy:
    """How a step is tried. ``on_error`` is ``"fail"``, ``"skip"`` or ``"goto:<step>"``."""

    attempts: int = 1
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    fallback: str | None = None
    on_error: str = "fail"

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError("Policy.attempts must be at least 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError("Policy.timeout must be positive")
        if self.on_error not in ("fail", "skip") and not (
            self.on_error.startswith("goto:") and len(self.on_error) > 5
        ):
            raise ConfigurationError(
                f"Policy.on_error must be 'fail', 'skip' or 'goto:<step>', not {self.on_error!r}"
            )

    @property
    def goto(self) -> str | None:
        """The step named by ``on_error="goto:<step>"``, else None."""
        return self.on_error[5:] if self.on_error.startswith("goto:") else None

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)


@dataclass(slots=True)
class Attempted:
    """The result of trying a step under its policy: an outcome, or the last error."""

    outcome: Outcome | None
    error: Exception | None
    attempts: int


async def attempt_loop(step: Step, ctx: Context, state: Any) -> Attempted:
    """Execute ``step`` until it succeeds, its error is not retryable, or attempts run out.

    Each attempt has the policy's timeout; failed attempts are events on ``ctx.span`` and
    wait a jittered backoff before the next. ``ctx.attempt`` is 1-based.
    """
    policy = step.policy
    attempt = 0
    while True:
        attempt += 1
        ctx.attempt = attempt
        try:
            async with asyncio.timeout(policy.timeout):
                outcome = await step.execute(ctx, state)
            return Attempted(outcome, None, attempt)
        except Exception as exc:
            if ctx.span is not None:
                ctx.span.add_event("attempt_failed", attempt=attempt, error=type(exc).__name__)
            if attempt < policy.attempts and policy.retryable(exc):
                await asyncio.sleep(policy.backoff.delay(attempt))
                continue
            return Attempted(None, exc, attempt)
