"""The composition root: builds every component from Settings, once, in dependency order.

Both the HTTP server and library users start here::

    async with Trellis(Settings()) as trellis:
        result = await trellis.gateway.chat(ChatRequest(model="local", messages=[...]))
"""

from __future__ import annotations

import logging
from typing import Any

from trellis.access.keys import KeyStore
from trellis.inference.cache import build_cache
from trellis.inference.gateway import Gateway
from trellis.inference.pricing import PriceBook
from trellis.inference.providers import Provider, provider_class
from trellis.inference.router import Router
from trellis.observe.metrics import GatewayMetrics
from trellis.observe.store import TraceStore
from trellis.observe.tracing import NullSink, TraceSink
from trellis.observe.writer import TraceWriter
from trellis.settings import Deployment, Settings
from trellis.store.db import Database

__all__ = ["Trellis"]

log = logging.getLogger("trellis")


class Trellis:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.db: Database | None = None
        self.keys: KeyStore | None = None
        self.writer: TraceWriter | None = None
        self.traces: TraceStore | None = None
        self.gateway: Gateway | None = None
        self.metrics: GatewayMetrics | None = None
        #: The admin key created at this start, shown once to the operator (else None).
        self.new_admin_key: str | None = None

    def _provider(self, deployment: Deployment) -> Provider:
        cls: Any = provider_class(deployment.provider)
        if deployment.provider == "local":
            return cls(deployment, self.settings.local)  # type: ignore[no-any-return]
        return cls(deployment)  # type: ignore[no-any-return]

    async def start(self) -> Trellis:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        await self.db.connect()
        self.keys = KeyStore(self.db, cache_seconds=settings.key_cache_seconds)
        self.new_admin_key = await self.keys.ensure_admin(settings.admin_key)
        self.traces = TraceStore(self.db)
        sink: TraceSink = NullSink()
        if settings.tracing.enabled:
            self.writer = TraceWriter(self.db, settings.tracing)
            await self.writer.start()
            sink = self.writer
        router = Router(
            settings.all_models(),
            retry=settings.retry,
            breaker=settings.breaker,
            provider_factory=self._provider,
        )
        self.gateway = Gateway(
            router,
            cache=build_cache(settings.cache),
            prices=PriceBook(settings.prices),
            sink=sink,
            store_bodies=settings.tracing.store_bodies,
        )
        self.metrics = GatewayMetrics(router=router, writer=self.writer)
        self.gateway.on_trace.append(self.metrics.observe)
        return self

    async def aclose(self) -> None:
        """Flush traces, then close providers and the database (in reverse build order)."""
        if self.gateway is not None:
            await self.gateway.aclose()
        if self.writer is not None:
            await self.writer.close()
        if self.db is not None:
            await self.db.close()

    async def __aenter__(self) -> Trellis:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
