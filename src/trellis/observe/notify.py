"""Alert notifications: one log line per transition, and a JSON POST to a webhook with retries.

The log line is written first and always, so an operator without a webhook (or with a
webhook that is down) still sees every alert. Webhook delivery retries connection
errors, timeouts, 429 and 5xx with exponential backoff (``Retry-After`` is not worth
honouring for a handful of small POSTs); a 4xx other than 429 means the receiver
refuses this payload and retrying would not change its mind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson

from trellis.observe.outbound import request_options

__all__ = ["Notifier", "WebhookError"]

logger = logging.getLogger("trellis.alerts")

_RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookError(Exception):
    """The webhook did not accept a notification after every attempt."""


class Notifier:
    """Tells the log and (when configured) a webhook about alert transitions.

    Counters for tests and metrics: ``sent`` (payloads accepted by the webhook),
    ``failed`` (payloads given up on) and ``attempts`` (HTTP requests made).
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self.webhook_url = webhook_url
        self.max_attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self.attempts = 0
        self._session: aiohttp.ClientSession | None = None
        self._options = request_options(webhook_url or "", {"Content-Type": "application/json"})

    async def notify(self, payload: dict[str, Any]) -> bool:
        """Log ``payload`` and deliver it; True when the webhook took it (or there is none).

        Never raises for delivery failures: a webhook that is down must not stop the
        evaluation of other rules. The failure is logged and counted instead.
        """
        self._log(payload)
        if not self.webhook_url:
            return True
        try:
            await self._post(payload)
        except WebhookError as exc:
            self.failed += 1
            logger.error("alert webhook gave up on %s: %s", payload.get("id"), exc)
            return False
        self.sent += 1
        return True

    def _log(self, payload: dict[str, Any]) -> None:
        status = payload.get("status")
        level = logging.WARNING if status == "firing" else logging.INFO
        logger.log(
            level,
            "alert %s: %s [%s] %s",
            status,
            payload.get("rule", {}).get("name"),
            payload.get("group") or "all",
            payload.get("message"),
        )

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self.webhook_url is not None
        body = orjson.dumps(payload)
        delay = self.backoff
        problem = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            self.attempts += 1
            try:
                session = self._client()
                async with session.post(
                    self.webhook_url,
                    data=body,
                    **self._options,
                ) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
                    if response.status < 500 and response.status not in _RETRYABLE_STATUS:
                        raise WebhookError(f"{problem} (not retried)")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_attempts:
                logger.info(
                    "alert webhook attempt %d failed (%s); retrying in %.2fs",
                    attempt,
                    problem,
                    delay,
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise WebhookError(f"{self.max_attempts} attempts failed, last: {problem}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
