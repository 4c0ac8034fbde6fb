"""The composition root: builds every component from Settings, once, in dependency order.

Both the HTTP server and library users start here::

    async with Trellis(Settings()) as trellis:
        result = await trellis.gateway.chat(ChatRequest(model="local", messages=[...]))
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from trellis.access.audit import AuditLog
from trellis.access.keys import KeyStore
from trellis.access.limits import Limiter, build_limiter
from trellis.access.projects import ProjectStore
from trellis.inference.cache import build_cache
from trellis.inference.gateway import Gateway
from trellis.inference.grounding import CollectionRetriever
from trellis.inference.pricing import PriceBook
from trellis.inference.providers import Provider, build_provider
from trellis.inference.router import Router
from trellis.inference.semantic_cache import build_semantic_cache
from trellis.memory.extraction import Extractor
from trellis.memory.longterm import LongTermMemory
from trellis.memory.sessions import GatewaySummarizer, SessionMemory
from trellis.observe import api as observe_api
from trellis.observe.alerts import AlertManager
from trellis.observe.metrics import GatewayMetrics
from trellis.observe.otlp import OtlpExporter, TeeSink
from trellis.observe.retention import RetentionJob
from trellis.observe.store import TraceStore
from trellis.observe.tracing import NullSink, TraceSink
from trellis.observe.writer import TraceWriter
from trellis.orchestration.registry import load_workflows
from trellis.orchestration.service import Workflows
from trellis.retrieval import Retrieval, index_for
from trellis.retrieval.index import stored_name
from trellis.settings import Deployment, Settings
from trellis.store.db import Database
from trellis.store.retention import DataRetentionJob
from trellis.store.tables import collections

if TYPE_CHECKING:
    from trellis.inference.local.embedder import MiniLMEmbedder

__all__ = ["Trellis"]

log = logging.getLogger("trellis")


class Trellis:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.db: Database | None = None
        self.keys: KeyStore | None = None
        #: Rate limits and budgets per key and project (``limits``), shared with the gateway.
        self.limiter: Limiter | None = None
        self.projects: ProjectStore | None = None
        self.audit: AuditLog | None = None
        self.writer: TraceWriter | None = None
        self.retention: RetentionJob | None = None
        #: Retention of finished runs, idle sessions and old memories (by their settings).
        self.data_retention: DataRetentionJob | None = None
        #: The sink start() attached to ``trellis.observe.api``; aclose() detaches it.
        self._api_sink: TraceSink | None = None
        self.traces: TraceStore | None = None
        self.gateway: Gateway | None = None
        self.metrics: GatewayMetrics | None = None
        self.alerts: AlertManager | None = None
        self.exporter: OtlpExporter | None = None
        self._workflows: Workflows | None = None
        #: The admin key created at this start, shown once to the operator (else None).
        self.new_admin_key: str | None = None
        self._retrieval: Retrieval | None = None
        #: The bundled embedder, shared by retrieval and the semantic cache (built lazily).
        self._minilm: MiniLMEmbedder | None = None
        #: Stored conversations (``trellis.session_id``), in the runtime's database.
        self.sessions: SessionMemory | None = None
        #: Long-term memories per user (``/v1/memories``; recalled for ``trellis.user_id``).
        self.memories: LongTermMemory | None = None
        #: Extracts memories from chat turns in the background (``memory.extract``).
        self.extractor: Extractor | None = None

    @property
    def retrieval(self) -> Retrieval:
        """Collections and search over the runtime's database with the bundled MiniLM.

        Built on first access, and MiniLM itself loads on its first embedding, so a
        server that never touches retrieval never pays for the ONNX model.
        """
        if self._retrieval is None:
            if self.db is None:
                raise RuntimeError("start() the runtime before using retrieval")
            # SQLiteIndex on SQLite, PgIndex (pgvector + full-text search) on Postgres.
            # MiniLM declares name/dimension as ClassVars; the protocol wants attributes.
            index = index_for(
                self.db, postgres_keyword_rank=self.settings.retrieval.postgres_keyword_rank
            )
            self._retrieval = Retrieval(
                index,
                self.minilm,  # type: ignore[arg-type]
                max_json_depth=self.settings.max_json_depth,
            )
        return self._retrieval

    @property
    def workflows(self) -> Workflows:
        """Durable workflow runs in the runtime's database, traced into its trace store::

        run = await trellis.workflows.run(flow, {"question": "..."})
        """
        if self._workflows is None:
            raise RuntimeError("start() the runtime before running workflows")
        return self._workflows

    @property
    def minilm(self) -> MiniLMEmbedder:
        """The bundled embedder, one instance per runtime (its ONNX model loads on first use)."""
        if self._minilm is None:
            from trellis.inference.local.embedder import MiniLMEmbedder

            # The int8 rebuild of the bundled graph is kept in the data directory.
            self._minilm = MiniLMEmbedder(cache_dir=self.settings.data_dir / "models")
        return self._minilm

    def _gateway(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the runtime is closed")
        return self.gateway

    def _provider(self, deployment: Deployment) -> Provider:
        return build_provider(deployment, self.settings.local)

    async def start(self) -> Trellis:
        settings = self.settings
        # Workflows named in the settings load first: a wrong path fails before anything opens.
        flows = load_workflows(settings.workflows)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url)
        await self.db.connect()
        self.keys = KeyStore(
            self.db,
            cache_seconds=settings.key_cache_seconds,
            poll_seconds=settings.key_poll_seconds,
        )
        self.new_admin_key = await self.keys.ensure_admin(settings.admin_key)
        self.projects = ProjectStore(self.db)
        # Revocations, expiry and role changes made by any process reach this one in a
        # poll; so do projects' guard overrides (loaded by the first poll).
        self.keys.on_change.append(self.projects.load_guards)
        await self.keys.start_watch()
        self.audit = AuditLog(self.db)
        self.traces = TraceStore(self.db)
        sink: TraceSink = NullSink()
        if settings.tracing.enabled:
            self.writer = TraceWriter(self.db, settings.tracing)
            await self.writer.start()
            sink = self.writer
            self.retention = RetentionJob(self.db, settings.tracing)
            await self.retention.start()
        self.data_retention = DataRetentionJob(
            self.db,
            settings.orchestration,
            settings.memory,
            interval=settings.tracing.retention_interval,
            batch_size=settings.tracing.retention_batch_size,
        )
        await self.data_retention.start()
        if settings.tracing.enabled and settings.tracing.otlp_endpoint:
            self.exporter = OtlpExporter(settings.tracing)
            await self.exporter.start()
            sink = TeeSink(sink, self.exporter)
        # Application code using trellis.trace()/span() records into the same store.
        observe_api._attach(sink)
        self._api_sink = sink
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
            defer_bookkeeping=True,
            # Built (and MiniLM created) only when enabled: a disabled cache never embeds.
            semantic_cache=(
                build_semantic_cache(
                    settings.cache.semantic, self.minilm, per_key=settings.cache.per_key
                )
                if settings.cache.semantic.enabled
                else None
            ),
            guard=settings.guard,
        )
        self.gateway.project_guard = self.projects.guard_of
        self.alerts = AlertManager(self.db, settings.alerts)
        # Budget thresholds alert through the alert manager's webhook path.
        self.limiter = build_limiter(
            self.db, settings.limits, redis_url=settings.cache.redis_url, alert=self.alerts.send
        )
        self.gateway.limiter = self.limiter
        jobs = [job for job in (self.retention, self.exporter) if job is not None]
        self.metrics = GatewayMetrics(
            router=router, writer=self.writer, background=[*jobs, self.alerts.notifier]
        )
        self.gateway.on_trace.append(self.metrics.observe)
        # Grounded chat (``trellis.collections``) searches lazily: no model load at start-up.
        self.gateway.retriever = CollectionRetriever(lambda: self.retrieval)
        self.gateway.has_collection = self._has_collection
        # Sessions compress old turns with a summary written by the session's own model.
        self.sessions = SessionMemory(self.db, GatewaySummarizer(lambda: self._gateway()))
        self.gateway.sessions = self.sessions
        # Memories share the bundled embedder, which loads on the first memory written.
        memory = settings.memory
        self.memories = LongTermMemory(
            self.db,
            lambda: self.minilm,  # type: ignore[arg-type,return-value]
            top_k=memory.top_k,
            min_score=memory.min_score,
            dedupe_threshold=memory.dedupe_threshold,
        )
        self.gateway.memories = self.memories
        # Extraction calls go through the gateway as the requesting key, after the answer.
        self.extractor = Extractor(
            self.memories,
            self._gateway,
            model=memory.extract_model,
            queue_size=memory.extract_queue_size,
            workers=memory.extract_workers,
            candidates=memory.extract_candidates,
            max_tokens=memory.extract_max_tokens,
        )
        self.gateway.extractor = self.extractor
        self.gateway.extract = memory.extract
        # Step kinds reach the gateway (LLM steps) and retrieval through these handles.
        self._workflows = Workflows(
            self.db,
            sink=sink,
            lease_seconds=settings.orchestration.lease_seconds,
            heartbeat_seconds=settings.orchestration.heartbeat_seconds,
            keep_step_states=settings.orchestration.keep_step_states,
            max_concurrent_runs=settings.orchestration.max_concurrent_runs,
            max_queued_runs=settings.orchestration.max_queued_runs,
            max_recoveries=settings.orchestration.max_recoveries,
            # Step records keep what traces keep of bodies: as is, redacted, or nothing.
            bodies=settings.tracing.bodies,
            # A run's model calls go out as the key that started it (looked up by id), and
            # a run with a session_id records its turn in the sessions store.
            services={
                "gateway": self.gateway,
                "retriever": self.gateway.retriever,
                "keys": self.keys,
                "sessions": self.sessions,
                "memories": self.memories,
                "extractor": self.extractor,
            },
            flows=flows,
        )
        if settings.alerts.enabled:
            self.alerts.start()
        return self

    async def _has_collection(self, project_id: str, name: str) -> bool:
        """Whether ``project_id`` has a collection ``name``."""
        assert self.db is not None
        stored = stored_name(project_id, name)
        async with self.db.engine.connect() as conn:
            found = await conn.execute(select(collections.c.id).where(collections.c.name == stored))
            return found.first() is not None

    async def aclose(self) -> None:
        """Flush traces, then close providers and the database (in reverse build order)."""
        if self.alerts is not None:
            await self.alerts.aclose()
        if self._workflows is not None:
            # Runs still in flight give their leases up: another worker continues them.
            await self._workflows.aclose()
            self._workflows = None
        if self.extractor is not None:
            # Queued extractions finish (for a while) while the gateway still runs.
            await self.extractor.aclose()
        if self.gateway is not None:
            await self.gateway.aclose()
        if self._api_sink is not None:
            observe_api._detach(self._api_sink)
            self._api_sink = None
        if self.retention is not None:
            await self.retention.close()
        if self.data_retention is not None:
            await self.data_retention.close()
            self.data_retention = None
        if self.exporter is not None:
            await self.exporter.close()
        if self.writer is not None:
            await self.writer.close()
        if self.keys is not None:
            await self.keys.aclose()
        if self.db is not None:
            await self.db.close()

    async def __aenter__(self) -> Trellis:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
