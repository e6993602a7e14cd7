"""All configuration, read once from `QUERYLIFT_*` environment variables (and `.env`).

Nested fields use `__`, e.g. `QUERYLIFT_QUERY_ENCODER__PATH=/models/x`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoders import EncoderSpec, Pooling

EMBEDDED_QUERY_ENCODER = EncoderSpec(
    name="all-mpnet-base-v2",
    path="models/all-mpnet-base-v2",
    pooling=Pooling.MEAN,
    max_tokens=384,
)
EMBEDDED_DOCUMENT_ENCODER = EncoderSpec(
    name="all-MiniLM-L6-v2",
    path="models/all-MiniLM-L6-v2",
    pooling=Pooling.MEAN,
    max_tokens=256,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QUERYLIFT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    host: str = Field(default="127.0.0.1", description="Bind address of `querylift serve`.")
    port: int = Field(default=8080, description="Port of `querylift serve`.")
    log_level: str = Field(default="info", description="Python log level.")

    query_encoder: EncoderSpec = Field(
        default=EMBEDDED_QUERY_ENCODER, description="The big query encoder (nested fields)."
    )
    document_encoder: EncoderSpec = Field(
        default=EMBEDDED_DOCUMENT_ENCODER,
        description="The index's document encoder; also serves queries of tenants without an "
        "adapter (nested fields).",
    )

    qdrant_url: str | None = Field(
        default=None, description="Qdrant server URL; unset = embedded local mode at qdrant_path."
    )
    qdrant_path: Path = Field(
        default=Path("var/qdrant"), description="Folder of the embedded (local-mode) Qdrant."
    )
    qdrant_api_key: str | None = Field(default=None, description="API key for a Qdrant server.")
    qdrant_timeout_s: float = Field(default=10.0, gt=0, description="Qdrant call timeout.")
    collection: str = Field(
        default="demo", description="Collection of tenants that do not name their own."
    )
    tenant_field: str = Field(
        default="tenant", description="Payload key holding the tenant value in every point."
    )

    tenants_file: Path | None = Field(
        default=None, description="JSON tenants file; unset = single-tenant development mode."
    )
    dev_tenant: str = Field(
        default="default", description="Tenant name (and tenant value) in development mode."
    )
    adapter_store: Path = Field(
        default=Path("var/adapters"), description="Adapter store folder (shared volume in prod)."
    )

    adapter_cache_bytes: int = Field(
        default=1 << 30, gt=0, description="Memory budget for resident adapters (LRU beyond it)."
    )
    pinned_tenants: list[str] = Field(
        default_factory=list, description="Tenants whose adapters are never evicted (JSON list)."
    )
    adapter_sync_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a replica checks the shared store for swaps made elsewhere; "
        "every replica serves a swap within about twice this (0.5 s -> about 1 s).",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token of /admin; unset = the admin API is off."
    )
    audit_log: Path | None = Field(
        default=None, description="Admin audit log (JSON lines); default <adapter_store>/audit.log"
    )
    max_inputs: int = Field(default=256, gt=0, description="Most texts in one embed request.")
    max_input_chars: int = Field(
        default=32_768, gt=0, description="Most characters in one input text."
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_encoder_overrides(cls, data: Any) -> Any:
        """`QUERYLIFT_QUERY_ENCODER__PATH=...` alone overrides one field of the default spec."""
        if not isinstance(data, dict):
            return data
        for key, default in (
            ("query_encoder", EMBEDDED_QUERY_ENCODER),
            ("document_encoder", EMBEDDED_DOCUMENT_ENCODER),
        ):
            value = data.get(key)
            if isinstance(value, dict):
                data[key] = {**default.model_dump(), **value}
        return data
