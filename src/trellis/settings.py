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

__all__ = [
    "Settings",
    "ModelAlias",
    "Deployment",
    "Prices",
    "RetrySettings",
    "BreakerSettings",
    "CacheSettings",
    "TracingSettings",
    "LocalModelSettings",
    "LOCAL_CHAT_ALIAS",
    "LOCAL_EMBEDDING_ALIAS",
]

#: The YAML file ``Settings.load`` was asked to read, for the duration of that call.
_CONFIG_PATH: ContextVar[Path | None] = ContextVar("trellis_config_path", default=None)

LOCAL_CHAT_ALIAS = "local"
LOCAL_EMBEDDING_ALIAS = "local-embedding"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prices(_Strict):
    """US dollars per million tokens."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)


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

    @property
    def label(self) -> str:
        return self.name or f"{self.provider}/{self.model}"

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


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


class RetrySettings(_Strict):
    attempts: int = Field(default=3, ge=1, le=10, description="Attempts per deployment")
    backoff_initial: float = Field(default=0.25, ge=0)
    backoff_max: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(default=30.0, ge=0, description="Cap on honoured Retry-After")
    request_timeout: float = Field(default=300.0, gt=0, description="Seconds for the whole request")


class BreakerSettings(_Strict):
    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures to open")
    reset_after: float = Field(default=30.0, gt=0, description="Seconds open before a probe")


class CacheSettings(_Strict):
    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_seconds: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    per_key: bool = Field(default=True, description="Scope entries to the API key that made them")


class TracingSettings(_Strict):
    enabled: bool = True
    store_bodies: bool = True
    queue_size: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=500, ge=1)
    flush_interval: float = Field(default=0.5, gt=0)


class LocalModelSettings(_Strict):
    n_ctx: int = Field(default=2048, ge=256)
    n_threads: int | None = None
    max_tokens_default: int = Field(default=256, ge=1)
    model_path: str | None = Field(
        default=None, description="GGUF file; defaults to the bundled SmolLM2"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRELLIS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path(".trellis")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; defaults to SQLite in data_dir"
    )
    admin_key: str | None = Field(default=None, description="Admin API key to install at start")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
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
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    key_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long a verified API key is trusted without a DB read"
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
        """Settings safe to show: the admin key is masked."""
        data = self.model_dump(mode="json")
        if data.get("admin_key"):
            data["admin_key"] = "***"
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
