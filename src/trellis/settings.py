"""One typed Settings model, merged from defaults, ``trellis.yaml`` and ``TRELLIS_*`` env vars.

Precedence (highest first): constructor arguments, environment variables
(``TRELLIS_PORT``, nested with ``__`` as in ``TRELLIS_CACHE__TTL_SECONDS``),
the YAML file (``TRELLIS_CONFIG`` or ``./trellis.yaml``), then defaults.
Secrets never live here: a deployment names the environment variable that
holds its key (``api_key_env``), read only when the provider is built.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from trellis.cron import check_cron, check_timezone
from trellis.durations import DURATION_PATTERN, duration_seconds
from trellis.errors import InvalidRequestError
from trellis.http_headers import check_header
from trellis.nesting import DEFAULT_MAX_DEPTH, MAX_DEPTH_CEILING
from trellis.thresholds import parse_threshold

__all__ = [
    "Settings",
    "ModelAlias",
    "Deployment",
    "Prices",
    "RetrySettings",
    "BreakerSettings",
    "CacheSettings",
    "SemanticCacheSettings",
    "TracingSettings",
    "LocalModelSettings",
    "MemorySettings",
    "AliasRetrieval",
    "PrivacyPolicy",
    "AliasGuard",
    "ProjectGuard",
    "OutputGuard",
    "UrlGuard",
    "PII_KINDS",
    "AlertRule",
    "AlertSettings",
    "LimitValues",
    "LimitSettings",
    "EvalSchedule",
    "EvalSettings",
    "LOCAL_CHAT_ALIAS",
    "LOCAL_EMBEDDING_ALIAS",
    "ADMIN_KEY_MIN_LENGTH",
    "ADMIN_KEY_MAX_LENGTH",
]

#: The YAML file ``Settings.load`` was asked to read, for the duration of that call.
_CONFIG_PATH: ContextVar[Path | None] = ContextVar("trellis_config_path", default=None)

LOCAL_CHAT_ALIAS = "local"
LOCAL_EMBEDDING_ALIAS = "local-embedding"
#: A configured admin key guards everything: shorter ones are guessable. Generated keys
#: have 46 characters (256 random bits). The maximum is what the key store verifies.
ADMIN_KEY_MIN_LENGTH = 20
ADMIN_KEY_MAX_LENGTH = 512


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prices(_Strict):
    """US dollars per million tokens."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)


#: The PII kinds ``trellis.guard.pii`` detects (a test keeps the two lists equal).
PiiKind = Literal[
    "private_key",
    "jwt",
    "github_token",
    "aws_key",
    "api_key",
    "secret",
    "email",
    "iban",
    "credit_card",
    "us_ssn",
    "uk_nino",
    "ip_address",
    "phone",
]
PII_KINDS: tuple[str, ...] = PiiKind.__args__  # type: ignore[attr-defined]


class PrivacyPolicy(_Strict):
    """What happens to PII in a request before it leaves for a deployment
    (docs/configuration.md)."""

    pii: Literal["allow", "redact", "block", "route"] = Field(
        default="allow",
        description="allow: send as is; redact: reversible placeholders, restored in the "
        "answer; block: 400 pii_detected; route: only in-house deployments may serve it",
    )
    detectors: list[PiiKind] | None = Field(
        default=None, description="The kinds that count; default: all of them"
    )


OutputAction = Literal["off", "flag", "redact", "block"]


class UrlGuard(_Strict):
    """Links in answers: only to these domains (and their subdomains)."""

    allow: list[str] = Field(default_factory=list)
    action: Literal["flag", "redact", "block"] = "redact"

    @field_validator("allow")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        return [d.strip().lower().lstrip(".") for d in domains if d.strip()]


class OutputGuard(_Strict):
    """Checks on an alias's answers; each one off, or flag (trace), redact or block."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pii: OutputAction = "off"
    detectors: list[PiiKind] | None = Field(
        default=None, description="PII kinds the pii check looks for; default: all"
    )
    canary: OutputAction = Field(
        default="block", description="The request's canary token in the answer (guard.canary)"
    )
    harmful: OutputAction = Field(default="off", description="Phrases of the harmful-content list")
    harmful_phrases: Path | None = Field(
        default=None,
        description="A phrase list (`category: phrase` lines) instead of the bundled one",
    )
    urls: UrlGuard | None = None
    json_: Literal["off", "flag", "block"] = Field(
        default="off",
        alias="json",
        description="An answer to a response_format json request that does not parse",
    )
    hold_back: int = Field(
        default=64,
        ge=16,
        le=4096,
        description="Characters a stream holds back so a blocked span is never sent",
    )


class Deployment(_Strict):
    """One concrete place a model alias can be served from."""

    provider: str = Field(
        description="openai, openai-compatible, groq, together, vllm, ollama, llamacpp, anthropic, "
        "gemini, cohere, local, local-embedder, or a plugin's name"
    )
    model: str = Field(description="The model name the provider knows")
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key"
    )
    weight: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=60.0, gt=0, description="Seconds per attempt")
    connect_timeout: float = Field(default=5.0, gt=0)
    prices: Prices | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    name: str | None = Field(
        default=None, description="Label in traces; defaults to provider/model"
    )
    model_path: str | None = Field(
        default=None,
        description="provider local: the GGUF file this deployment serves (default: "
        "local.model_path, else the bundled SmolLM2)",
    )
    local: dict[str, Any] = Field(
        default_factory=dict,
        description="provider local: local.* settings overridden for this deployment "
        "(slots, n_ctx, temperature, system_prompt...)",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CAs trusted for this deployment's HTTPS, instead of "
        "the system's (a private CA, a TLS-inspecting proxy)",
    )
    client_cert: str | None = Field(
        default=None,
        description="PEM client certificate for mutual TLS (may hold the key as well)",
    )
    client_key: str | None = Field(
        default=None, description="PEM private key of client_cert when in a file of its own"
    )
    keepalive: float = Field(
        default=4.0,
        ge=0,
        description="Seconds an idle upstream connection is kept for reuse; keep it under the "
        "server's own keep-alive (uvicorn, hence vLLM: 5 s). 0: a connection per request",
    )
    in_house: bool | None = Field(
        default=None,
        description="Data sent here stays in-house; default: provider local or a "
        "loopback base_url (decides where privacy policies apply and where `route` goes)",
    )
    privacy: PrivacyPolicy | None = Field(
        default=None, description="Overrides the alias's privacy policy for this deployment"
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest upstream answer accepted, counted after decompression",
    )

    @field_validator("headers")
    @classmethod
    def _headers_are_single_lines(cls, headers: dict[str, str]) -> dict[str, str]:
        """A line break in a header would inject headers into every upstream request."""
        for name, value in headers.items():
            check_header(name, value)
        return headers

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Deployment:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs the client_cert it belongs to")
        if (self.model_path or self.local) and self.provider != "local":
            raise ValueError("model_path and local apply to provider local only")
        self.local_settings(LocalModelSettings())  # unknown or invalid keys fail at start-up
        return self

    def local_settings(self, base: LocalModelSettings) -> LocalModelSettings:
        """``base`` (the ``local.*`` settings) with this deployment's own model and overrides."""
        if not self.model_path and not self.local:
            return base
        merged = {**base.model_dump(exclude_unset=True), **self.local}
        if self.model_path:
            merged["model_path"] = self.model_path
        return LocalModelSettings.model_validate(merged)

    @property
    def label(self) -> str:
        return self.name or f"{self.provider}/{self.model}"

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class AliasRetrieval(_Strict):
    """Collections every chat request to an alias is grounded in (see docs/api.md)."""

    collections: list[str] = Field(min_length=1, max_length=16)
    top_k: int = Field(default=5, ge=1, le=50, description="Passages added to the prompt")


class GuardStage(_Strict):
    """One place the prompt-injection guard screens: ``off``; ``flag`` (the trace says so
    and a ``guard_flags`` alert can count it); ``block`` (user input: refused with 400
    ``prompt_injection_detected``; untrusted content: withheld from the prompt)."""

    mode: Literal["off", "flag", "block"] = "off"
    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Score at which text is flagged (0.5: CV point)"
    )


class UntrustedGuard(_Strict):
    """Content that enters a prompt without the user writing it."""

    retrieved: GuardStage = Field(default_factory=GuardStage, description="Retrieved passages")
    tool_outputs: GuardStage = Field(
        default_factory=GuardStage, description="Tool results (request messages, agent steps)"
    )
    spotlight: Literal["off", "fence", "datamark"] = Field(
        default="datamark",
        description="Fence retrieved passages with a random boundary (and mark lines as data)",
    )
    spotlight_tool_outputs: Literal["off", "fence", "datamark"] = Field(
        default="off",
        description="The same for workflow agents' tool results (often small JSON: off)",
    )


class GuardSettings(_Strict):
    input: GuardStage = Field(default_factory=GuardStage, description="The request's user messages")
    untrusted: UntrustedGuard = Field(default_factory=UntrustedGuard)


class ProjectGuard(_Strict):
    """One project's overrides of the server-wide prompt-injection stages (stored on the
    project, set with ``PATCH /v1/projects/{id}``). What a model alias's ``guard`` sets
    wins over these; what neither sets comes from ``guard``."""

    input: GuardStage | None = None
    retrieved: GuardStage | None = None
    tool_outputs: GuardStage | None = None


class AliasGuard(_Strict):
    """Guards of one alias: overrides of the server-wide prompt-injection stages (what is
    set here replaces ``guard``'s), the canary token and the output checks."""

    input: GuardStage | None = None
    retrieved: GuardStage | None = None
    tool_outputs: GuardStage | None = None
    canary: bool = Field(
        default=False,
        description="Put a random canary token in the system prompt of every request",
    )
    output: OutputGuard | None = None


class ModelAlias(_Strict):
    """A name clients use, mapped to an ordered list of deployments."""

    name: str
    kind: Literal["chat", "embedding"] = "chat"
    deployments: list[Deployment] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list, description="Aliases tried after ours")
    context_window: int = Field(default=8192, gt=0)
    trim: bool = Field(default=False, description="Drop oldest turns instead of refusing")
    routing: Literal["ordered", "weighted", "latency"] = "weighted"
    cache: bool | None = Field(default=None, description="Cache even non-deterministic requests")
    retrieval: AliasRetrieval | None = Field(default=None, description="Ground answers in these")
    privacy: PrivacyPolicy | None = Field(
        default=None, description="PII in requests to its hosted deployments"
    )
    guard: AliasGuard | None = Field(
        default=None, description="Injection-guard overrides, canary token, output checks"
    )


class RetrySettings(_Strict):
    attempts: int = Field(default=3, ge=1, le=10, description="Attempts per deployment")
    backoff_initial: float = Field(default=0.25, ge=0)
    backoff_max: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(default=30.0, ge=0, description="Cap on honoured Retry-After")
    request_timeout: float = Field(default=300.0, gt=0, description="Seconds for the whole request")


class BreakerSettings(_Strict):
    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures to open")
    reset_after: float = Field(default=30.0, gt=0, description="Seconds open before a probe")


class SemanticCacheSettings(_Strict):
    """The semantic cache (``cache.semantic``): off by default because a near match can be
    a wrong answer — see docs/configuration.md for the measured false-hit rates."""

    enabled: bool = False
    threshold: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="Minimum cosine similarity of the user prompts for a hit "
        "(benchmarks/semantic_cache_eval.py)",
    )
    max_entries: int = Field(default=10_000, ge=1)
    ttl_seconds: float = Field(default=3600.0, gt=0)


class CacheSettings(_Strict):
    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_seconds: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    per_key: bool = Field(default=True, description="Scope entries to the API key that made them")
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)


class TracingSettings(_Strict):
    enabled: bool = True
    bodies: Literal["full", "redacted", "none"] = Field(
        default="full",
        description="Prompts/responses in stored traces: as sent, PII-redacted, or left out",
    )
    queue_size: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=500, ge=1)
    flush_interval: float = Field(default=0.5, gt=0)
    retention_days: float = Field(
        default=30, ge=0, description="Delete traces older than this; 0 keeps them forever"
    )
    max_traces: int = Field(
        default=1_000_000, ge=0, description="Keep at most this many traces; 0: no limit"
    )
    retention_interval: float = Field(
        default=600, ge=0, description="Seconds between retention runs; 0 disables the job"
    )
    retention_batch_size: int = Field(default=1000, ge=1)
    otlp_endpoint: str | None = Field(
        default=None,
        description="Also export spans over OTLP/HTTP protobuf here (e.g. "
        "http://collector:4318; /v1/traces is appended when no path is given)",
    )
    otlp_headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers for the OTLP export (auth tokens)"
    )
    otlp_timeout: float = Field(default=10.0, gt=0, description="Seconds per OTLP POST")
    otlp_service_name: str = "trellis"

    @model_validator(mode="before")
    @classmethod
    def _store_bodies_alias(cls, data: Any) -> Any:
        """Deprecated ``store_bodies: bool`` (before ``bodies``) still works: true=full, false=none.

        An explicit ``bodies`` wins, so a config can carry both while it migrates.
        """
        if isinstance(data, dict) and "store_bodies" in data:
            data = dict(data)
            legacy = data.pop("store_bodies")
            if "bodies" not in data:
                data["bodies"] = "full" if _truthy(legacy) else "none"
        return data

    @property
    def store_bodies(self) -> bool:
        """Whether bodies are recorded at all (the gateway skips building them otherwise)."""
        return self.bodies != "none"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


#: A duration as people type it: 500ms, 30s, 5m, 1h, 1d (see ``trellis.durations``).
_DURATION_PATTERN = DURATION_PATTERN
#: Bounds of an alert rule's ``window`` and ``baseline_window``: under a second there is
#: nothing to measure; beyond 90 days each evaluation would rescan months of traces.
ALERT_WINDOW_MIN_SECONDS = 1.0
ALERT_WINDOW_MAX_SECONDS = 90 * 86400.0


class AlertRule(_Strict):
    """One alert rule; the same shape in ``trellis.yaml`` and in ``POST /v1/alerts/rules``.

    A rule fires for a group when its value over ``window`` exceeds the bound: ``threshold``
    (latency P95 in ms, cost in USD, error rate as a fraction, or a trace count), or for
    ``latency`` with a ``baseline_window``, the P95 of the window before it times ``factor``.
    A ``score`` rule fires the other way: when the average of ``score_name`` falls below.
    An ``eval_regression`` rule fires for a schedule (``evals.schedules``) while its latest
    finished run regressed or failed, and resolves when a later run passes (no threshold:
    the schedule's ``fail_on`` decides; ``window`` does not apply).
    """

    name: str = Field(min_length=1, max_length=200)
    kind: Literal[
        "latency",
        "cost",
        "error_rate",
        "retrieval_failures",
        "model_mismatch",
        "guard_flags",
        "score",
        "eval_regression",
    ]
    window: str = Field(default="5m", pattern=_DURATION_PATTERN)
    threshold: float | None = Field(default=None, ge=0)
    baseline_window: str | None = Field(default=None, pattern=_DURATION_PATTERN)
    factor: float = Field(default=2.0, gt=0, description="Baseline multiplier (latency)")
    min_requests: int = Field(
        default=1, ge=1, description="Requests a window (and a baseline) needs to be judged"
    )
    group_by: Literal["none", "model", "key", "kind"] = "none"
    model: str | None = None
    key_id: str | None = None
    trace_kind: str | None = Field(default=None, description="Only traces of this kind")
    score_name: str | None = Field(default=None, description="The score a score rule averages")
    schedule: str | None = Field(
        default=None,
        description="eval_regression: only this schedule (default: every schedule)",
    )
    for_seconds: float = Field(
        default=0.0, ge=0, description="How long the condition must hold before firing"
    )
    enabled: bool = True

    @field_validator("window", "baseline_window")
    @classmethod
    def _window_in_bounds(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(
                value, minimum=ALERT_WINDOW_MIN_SECONDS, maximum=ALERT_WINDOW_MAX_SECONDS
            )
        return value

    @model_validator(mode="after")
    def _bound_given(self) -> AlertRule:
        if self.schedule is not None and self.kind != "eval_regression":
            raise ValueError("schedule applies to eval_regression rules only")
        if self.kind == "eval_regression":
            if self.threshold is not None or self.baseline_window is not None:
                raise ValueError(
                    "an eval_regression rule takes no threshold or baseline_window: the "
                    "schedule's fail_on decides what a regression is"
                )
            return self
        if self.kind in ("retrieval_failures", "model_mismatch", "guard_flags"):
            if self.threshold is None:
                self.threshold = 0.0  # any occurrence
            return self
        if self.kind == "latency" and self.baseline_window is not None:
            return self
        if self.baseline_window is not None:
            raise ValueError("baseline_window applies to latency rules only")
        if self.kind == "score" and not self.score_name:
            raise ValueError("a score rule needs a score_name")
        if self.threshold is None:
            raise ValueError(f"a {self.kind} rule needs a threshold")
        return self


class AlertSettings(_Strict):
    enabled: bool = Field(default=True, description="Run the periodic rule evaluation")
    rules: list[AlertRule] = Field(default_factory=list)
    webhook_url: str | None = Field(default=None, description="POST alert JSON here")
    interval_seconds: float = Field(default=60.0, gt=0)
    webhook_attempts: int = Field(default=4, ge=1, le=10)
    webhook_backoff: float = Field(default=0.5, ge=0, description="First retry delay, doubling")
    webhook_timeout: float = Field(default=10.0, gt=0)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise ValueError("alert rule names must be unique")
        return rules


#: The largest count a limit takes: exact in the Redis scripts' numbers (doubles) and in
#: the database's 64-bit integers.
MAX_LIMIT_COUNT = 2**53
#: The largest budget (USD): spend is counted in micro-USD, which must stay exact as well.
MAX_BUDGET_USD = 1e9


class LimitValues(_Strict):
    """The limits of one subject (an API key or a project); a field left out (None) is
    no limit of that kind. The same shape in settings (defaults) and in
    ``PUT /v1/limits/{subject}``."""

    rpm: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT_COUNT, description="Requests per minute"
    )
    tpm: int | None = Field(
        default=None,
        ge=1,
        le=MAX_LIMIT_COUNT,
        description="Tokens per minute (prompt + completion)",
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT_COUNT, description="Requests in flight"
    )
    daily_usd: float | None = Field(
        default=None, ge=0, le=MAX_BUDGET_USD, description="Spend per UTC day (USD)"
    )
    monthly_usd: float | None = Field(
        default=None, ge=0, le=MAX_BUDGET_USD, description="Spend per UTC calendar month (USD)"
    )
    alert_thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 1.0],
        max_length=10,
        description="Fractions of a budget whose crossing sends one alert per period",
    )

    @field_validator("alert_thresholds")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in values):
            raise ValueError("alert thresholds are fractions of a budget, above 0 and at most 1")
        return sorted(set(values))

    @property
    def empty(self) -> bool:
        """No limit of any kind: admission has nothing to check."""
        return all(
            v is None
            for v in (self.rpm, self.tpm, self.max_concurrent, self.daily_usd, self.monthly_usd)
        )


class LimitSettings(_Strict):
    """Rate limits and budgets per API key and per project (``limits``)."""

    enabled: bool = Field(default=True, description="Enforce the stored and default limits")
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: this process only; redis: exact across every replica",
    )
    redis_url: str | None = Field(default=None, description="Defaults to cache.redis_url")
    key_prefix: str = Field(default="trellis:limits:", min_length=1)
    default_key: LimitValues | None = Field(
        default=None, description="Limits of every key without its own stored limits"
    )
    default_project: LimitValues | None = Field(
        default=None, description="Limits of every project without its own stored limits"
    )
    cache_seconds: float = Field(
        default=5.0, ge=0, description="How long stored limits are trusted without a DB read"
    )
    lease_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A concurrency slot a replica never released (it crashed) frees after this",
    )
    output_tokens_estimate: int = Field(
        default=256,
        ge=0,
        description="Completion tokens assumed at admission when a request sets no max_tokens",
    )


#: A schedule's name: it appears in URLs (``/v1/evals/schedules/{name}``) and alert groups.
SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class EvalSchedule(_Strict):
    """A suite run by the server on a cron schedule and compared with its last passing run
    (see ``trellis.evals.scheduler``)."""

    name: str = Field(pattern=SCHEDULE_NAME_PATTERN)
    suite: Path = Field(
        description="The suite's YAML file (relative paths: from the working directory); "
        "its dataset may be a file beside it or a stored name@version"
    )
    cron: str = Field(description="Five cron fields, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = Field(default="UTC", description="IANA zone the cron times are read in")
    fail_on: list[str] = Field(
        default_factory=list,
        description="Regression thresholds, as `trellis eval compare --fail-on` "
        "(rougeL:-0.02, latency_p95:+20%)",
    )
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("fail_on")
    @classmethod
    def _valid_thresholds(cls, values: list[str]) -> list[str]:
        for text in values:
            try:
                parse_threshold(text)
            except InvalidRequestError as exc:
                raise ValueError(exc.message) from None
        return values

    @field_validator("suite")
    @classmethod
    def _suite_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"suite file {str(path)!r} does not exist")
        return path


class EvalSettings(_Strict):
    schedules: list[EvalSchedule] = Field(default_factory=list)
    scheduler: bool = Field(
        default=True,
        description="Run due schedules in this server (false: only `run` by hand or API)",
    )
    poll_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest sleep of the scheduler between looks at the clock",
    )

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, schedules: list[EvalSchedule]) -> list[EvalSchedule]:
        names = [schedule.name for schedule in schedules]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"two eval schedules are named {duplicate!r}")
        return schedules


class RetrievalSettings(_Strict):
    postgres_keyword_rank: Literal["bm25", "ts_rank", "ts_rank_cd"] = Field(
        default="bm25",
        description="Keyword ranking on Postgres: BM25 over in-process postings (as on "
        "SQLite), or Postgres full-text ranking (no memory per process, lower quality)",
    )


class OrchestrationSettings(_Strict):
    lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a run stays owned without renewal; a crashed replica's runs "
        "are taken over after this (a dead process on the same host: at once)",
    )
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="How often the owner renews its runs' leases"
    )
    keep_step_states: bool = Field(
        default=True, description="Store the full state after every step (for inspection)"
    )
    retention_days: float = Field(
        default=0,
        ge=0,
        description="Delete finished runs (succeeded, failed, cancelled), with their steps "
        "and effect records, this many days after they finished; 0 keeps them. Queued, "
        "running and waiting runs are never deleted",
    )
    max_concurrent_runs: int = Field(
        default=256,
        ge=0,
        description="Runs one process drives at once (started, resumed and recovered ones); "
        "more are stored `queued` and start, oldest first, as slots free. 0: no limit",
    )
    max_queued_runs: int = Field(
        default=0,
        ge=0,
        description="Refuse a start with 429 (Retry-After) while this many runs are queued "
        "(across replicas). 0: no bound",
    )
    max_recoveries: int = Field(
        default=5,
        ge=0,
        description="A run whose process stopped (crash, kill) more often than this is "
        "failed with `too_many_recoveries` instead of continued again",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> OrchestrationSettings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("orchestration.heartbeat_seconds must be below lease_seconds")
        return self


class MemorySettings(_Strict):
    session_retention_days: float = Field(
        default=0,
        ge=0,
        description="Delete sessions (with their turns and summary) idle for this many "
        "days; 0 keeps them",
    )
    memory_retention_days: float = Field(
        default=0,
        ge=0,
        description="Delete long-term memories not written for this many days; 0 keeps them",
    )
    top_k: int = Field(default=3, ge=1, le=50, description="Memories recalled into a prompt")
    min_score: float = Field(
        default=0.3, ge=-1, le=1, description="Least cosine for a memory to be recalled"
    )
    dedupe_threshold: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="A new memory this close (cosine) to an existing one updates it instead",
    )
    extract: Literal["off", "request", "always"] = Field(
        default="request",
        description="Extract facts from chat turns naming a user: 'request' when the "
        "request asks (trellis.memories.extract), 'always' unless it refuses, 'off' never",
    )
    extract_model: str | None = Field(
        default=None, description="Model alias of the extraction call (default: the request's)"
    )
    extract_queue_size: int = Field(
        default=256, ge=1, description="Extractions waiting; more are dropped (and traced)"
    )
    extract_workers: int = Field(default=1, ge=1, le=16, description="Extractions at a time")
    extract_candidates: int = Field(
        default=8,
        ge=0,
        le=50,
        description="Existing memories (most relevant) shown to the extractor to update",
    )
    extract_max_tokens: int = Field(default=256, ge=16, description="Output cap of one extraction")


class LocalModelSettings(_Strict):
    engine: Literal["llama-server", "llama-cpp-python"] = Field(
        default="llama-server",
        description="llama.cpp's server engine in process (xllamacpp, prebuilt; batches "
        "concurrent requests) or llama-cpp-python (compiled separately; one request at a "
        "time, kept for comparison)",
    )
    n_ctx: int = Field(default=2048, ge=256, description="Context tokens per request (slot)")
    n_threads: int | None = Field(
        default=None, ge=1, description="Generation threads; default: every core available"
    )
    slots: int = Field(
        default=4, ge=1, le=64, description="Requests generated together (continuous batching)"
    )
    queue_size: int = Field(
        default=16,
        ge=0,
        description="Requests waiting for a slot; beyond it a request gets 503 + Retry-After",
    )
    max_tokens_default: int = Field(default=256, ge=1)
    model_path: str | None = Field(
        default=None, description="GGUF file; defaults to the bundled SmolLM2"
    )
    # Default decoding, used where a request leaves the field unset (request values
    # win). Chosen by benchmarks/local_decoding.py; figures in docs/configuration.md.
    temperature: float = Field(default=0.2, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0, description="0: off")
    min_p: float = Field(default=0.05, ge=0, le=1, description="0: off")
    repeat_penalty: float = Field(default=1.1, gt=0, description="1.0: off")
    system_prompt: str | None = Field(
        default="You are a helpful assistant. Answer the question directly and briefly.",
        description="System message added when a request has none; null or empty keeps "
        "the chat template's own",
    )
    schema_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Generations tried for a json_schema answer the grammar cannot fully "
        "enforce (e.g. minimum/maximum) before the request is refused",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRELLIS_",
        env_nested_delimiter="__",
        extra="forbid",
        # Errors name the field and the problem but never echo the value: a rejected
        # admin key would otherwise be printed to the terminal and the logs.
        hide_input_in_errors=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path(".trellis")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; defaults to SQLite in data_dir"
    )
    admin_key: str | None = Field(
        default=None,
        description=f"Admin API key to install at start ({ADMIN_KEY_MIN_LENGTH} to "
        f"{ADMIN_KEY_MAX_LENGTH} characters; it cannot be revoked through the API)",
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(
        default=DEFAULT_MAX_DEPTH,
        ge=8,
        le=MAX_DEPTH_CEILING,
        description="Deepest nesting of objects and arrays accepted in a JSON body or a "
        "stored value (collection and document metadata); deeper gets 400",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to receive a request body once its headers arrived; a "
        "slower body gets 408 and the connection is closed",
    )
    default_model: str = LOCAL_CHAT_ALIAS
    include_local_models: bool = Field(
        default=True, description="Offer the bundled chat and embedding models"
    )
    models: list[ModelAlias] = Field(default_factory=list)
    prices: dict[str, Prices] = Field(
        default_factory=dict, description="Price overrides by upstream model name"
    )
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    evals: EvalSettings = Field(default_factory=EvalSettings)
    workflows: list[str] = Field(
        default_factory=list,
        description="Workflows to serve, by import path ('package.module:name' of a "
        "trellis Workflow), loaded at start",
    )
    key_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long a verified API key is trusted without a DB read"
    )
    key_poll_seconds: float = Field(
        default=0.25,
        gt=0,
        le=5,
        description="How often each process reads the access version (one row) to learn of "
        "revoked, expired, rotated or changed keys made by other processes",
    )
    metrics_require_key: bool = Field(
        default=False, description="Require an observer or admin key to scrape /metrics"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_path = _CONFIG_PATH.get() or Path(os.environ.get("TRELLIS_CONFIG", "trellis.yaml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_path.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_path))
        sources.append(file_secret_settings)
        return tuple(sources)

    @field_validator("workflows")
    @classmethod
    def _workflow_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            module, sep, attribute = path.partition(":")
            if not (sep and module.strip() and attribute.strip()):
                raise ValueError(f"{path!r} is not an import path like 'package.module:name'")
        return paths

    @field_validator("admin_key")
    @classmethod
    def _admin_key_length(cls, key: str | None) -> str | None:
        if key is not None and not ADMIN_KEY_MIN_LENGTH <= len(key) <= ADMIN_KEY_MAX_LENGTH:
            raise ValueError(
                f"the admin key must be {ADMIN_KEY_MIN_LENGTH} to {ADMIN_KEY_MAX_LENGTH} "
                f"characters (it has {len(key)}); generate one with "
                "`python -c 'import secrets; print(\"tr-\" + secrets.token_urlsafe(32))'`"
            )
        return key

    @field_validator("models")
    @classmethod
    def _unique_aliases(cls, models: list[ModelAlias]) -> list[ModelAlias]:
        seen: set[str] = set()
        for alias in models:
            if alias.name in seen:
                raise ValueError(f"model alias {alias.name!r} is defined twice")
            seen.add(alias.name)
        return models

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> Settings:
        names = {alias.name for alias in self.all_models()}
        for alias in self.models:
            for fallback in alias.fallbacks:
                if fallback not in names:
                    raise ValueError(
                        f"model {alias.name!r} falls back to unknown model {fallback!r}"
                    )
        return self

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings read from an explicit YAML file instead of ``TRELLIS_CONFIG``."""
        if config is None:
            return cls(**overrides)
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        token = _CONFIG_PATH.set(path)
        try:
            return cls(**overrides)
        finally:
            _CONFIG_PATH.reset(token)

    def all_models(self) -> list[ModelAlias]:
        """Configured aliases plus the bundled local ones (unless disabled or overridden)."""
        aliases = list(self.models)
        if self.include_local_models:
            names = {alias.name for alias in aliases}
            for builtin in _builtin_aliases(self.local):
                if builtin.name not in names:
                    aliases.append(builtin)
        return aliases

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'trellis.db').resolve()}"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show: the admin key and OTLP headers (often tokens) are masked."""
        data = self.model_dump(mode="json")
        if data.get("admin_key"):
            data["admin_key"] = "***"
        tracing = data.get("tracing") or {}
        if tracing.get("otlp_headers"):
            tracing["otlp_headers"] = {name: "***" for name in tracing["otlp_headers"]}
        return data


def _builtin_aliases(local: LocalModelSettings) -> list[ModelAlias]:
    return [
        ModelAlias(
            name=LOCAL_CHAT_ALIAS,
            kind="chat",
            context_window=local.n_ctx,
            deployments=[Deployment(provider="local", model="smollm2-135m-instruct", timeout=300)],
        ),
        ModelAlias(
            name=LOCAL_EMBEDDING_ALIAS,
            kind="embedding",
            context_window=256,
            deployments=[
                Deployment(provider="local-embedder", model="all-minilm-l6-v2", timeout=120)
            ],
        ),
    ]
