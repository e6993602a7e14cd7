"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from encoders import Encoder

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_TOKEN_BUCKETS = (8, 32, 128, 512, 2048, 8192, 32768, 131072)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "querylift_requests",
            "HTTP requests by endpoint and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "querylift_request_duration_seconds",
            "HTTP request latency by endpoint and status.",
            ["endpoint", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tenant_requests = Counter(
            "querylift_tenant_requests",
            "Requests by tenant and endpoint.",
            ["tenant", "endpoint"],
            registry=r,
        )
        self.rate_limited = Counter(
            "querylift_rate_limited",
            "Requests refused by the per-tenant rate limit (429 rate_limited).",
            ["tenant"],
            registry=r,
        )
        self.encoder_batch_size = Histogram(
            "querylift_encoder_batch_size",
            "Texts per encoder call.",
            ["encoder", "kind"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.encoder_batch_tokens = Histogram(
            "querylift_encoder_batch_tokens",
            "Tokens per encoder call.",
            ["encoder", "kind"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.encoder_tokens = Counter(
            "querylift_encoder_tokens",
            "Tokens encoded.",
            ["encoder", "kind"],
            registry=r,
        )
        self.encoder_latency = Histogram(
            "querylift_encoder_duration_seconds",
            "Encoder call latency.",
            ["encoder", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_failures = Counter(
            "querylift_encoder_failures",
            "Encoder batches that failed (engine or upstream down).",
            ["encoder"],
            registry=r,
        )
        self.adapter_latency = Histogram(
            "querylift_adapter_apply_duration_seconds",
            "Adapter apply time per call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.qdrant_latency = Histogram(
            "querylift_qdrant_request_duration_seconds",
            "Qdrant call latency by operation.",
            ["operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_active = Gauge(
            "querylift_adapter_active_info",
            "1 for the adapter version active per tenant.",
            ["tenant", "adapter_id", "version"],
            registry=r,
        )
        self.adapter_swaps = Counter(
            "querylift_adapter_swaps",
            "Adapter activations and rollbacks applied, by tenant.",
            ["tenant"],
            registry=r,
        )
        self.adapter_validation_failures = Counter(
            "querylift_adapter_validation_failures",
            "Adapters refused at upload or activation.",
            ["stage"],
            registry=r,
        )
        self.gate_refusals = Counter(
            "querylift_gate_refusals",
            "Activations the quality gate refused, by tenant (outcome: blocked, or forced "
            "through with force=true).",
            ["tenant", "outcome"],
            registry=r,
        )
        self.adapter_cache_bytes = Gauge(
            "querylift_adapter_cache_bytes", "Bytes of adapter tensors resident.", registry=r
        )
        self.adapter_cache_entries = Gauge(
            "querylift_adapter_cache_entries", "Adapters resident in memory.", registry=r
        )
        self.adapter_cache_evictions = Counter(
            "querylift_adapter_cache_evictions", "Adapters evicted from memory (LRU).", registry=r
        )
        self.adapter_sync_failures = Counter(
            "querylift_adapter_sync_failures",
            "Background adapter-store syncs that failed (the previous bindings were kept).",
            registry=r,
        )
        self.adapter_sync_staleness = Gauge(
            "querylift_adapter_sync_staleness_seconds",
            "Seconds since this replica's tenant bindings were last confirmed current against "
            "the adapter store (the start of its last successful sync); it grows while the "
            "store is down or slow, and the last good bindings keep serving meanwhile.",
            registry=r,
        )
        self.adapter_load_failures = Counter(
            "querylift_adapter_load_failures",
            "Active adapters that failed to load and were not served.",
            ["tenant"],
            registry=r,
        )
        self.queue_depth = Gauge("querylift_queue_depth", "Texts waiting for a batch.", registry=r)
        self.event_loop_lag = Histogram(
            "querylift_event_loop_lag_seconds",
            "How late the event loop woke a 50 ms sleep: the stall every request and probe saw.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.background_waiting = Gauge(
            "querylift_background_waiting",
            "Background chunks (gates, shadow, warm-up) waiting for an idle batcher worker.",
            registry=r,
        )
        self.background_chunk = Histogram(
            "querylift_background_chunk_seconds",
            "Worker time of one background chunk: the most a live request waits behind admin work.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "querylift_batch_size",
            "Texts per batch run by the batcher.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "querylift_batch_requests",
            "Requests merged into one batch.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "querylift_queue_wait_seconds",
            "Time a request waited in the queue before its batch started.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "querylift_rejected",
            "Requests refused by the batcher (overloaded: queue full; timeout: deadline).",
            ["reason"],
            registry=r,
        )
        self.fast_path = Counter(
            "querylift_fast_path",
            "Requests to /embed, /v1/embeddings and /search by who answered them: the fast path "
            "(service/http/fastpath.py) or the full app (bad input, unknown key, draining, CORS).",
            ["outcome"],
            registry=r,
        )
        self.batch_tokens = Histogram(
            "querylift_batch_tokens",
            "Tokens (encoder counts, after any cut) per batch run by the batcher.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.query_cache_hits = Counter(
            "querylift_query_cache_hits",
            "Query texts answered from the raw query-vector cache.",
            ["encoder"],
            registry=r,
        )
        self.query_cache_misses = Counter(
            "querylift_query_cache_misses",
            "Query texts not in the raw query-vector cache (encoded).",
            ["encoder"],
            registry=r,
        )
        self.query_cache_entries = Gauge(
            "querylift_query_cache_entries", "Raw query vectors held in the cache.", registry=r
        )
        self.query_cache_evictions = Counter(
            "querylift_query_cache_evictions",
            "Raw query vectors evicted from the cache (LRU).",
            registry=r,
        )
        self.fallbacks = Counter(
            "querylift_fallback",
            "Requests answered by the document encoder because the query encoder failed.",
            ["tenant", "reason"],
            registry=r,
        )
        self.shadow_compared = Counter(
            "querylift_shadow_compared",
            "Shadow comparisons done (a candidate adapter's top-10 vs the served one), by tenant.",
            ["tenant"],
            registry=r,
        )
        self.shadow_overlap = Histogram(
            "querylift_shadow_overlap",
            "overlap@10 between the served and the candidate adapter's results, by tenant.",
            ["tenant"],
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.shadow_skipped = Counter(
            "querylift_shadow_skipped",
            "Sampled queries not compared (reason: dropped under load, or error), by tenant.",
            ["tenant", "reason"],
            registry=r,
        )
        self.build_info = Gauge(
            "querylift_build_info",
            "What this process serves (1): the version, profile and encoders of GET /info.",
            ["version", "profile", "query_encoder", "query_dim", "document_encoder",
             "document_dim"],
            registry=r,
        )  # fmt: skip
        self.engine_info = Gauge(
            "querylift_engine_info",
            "The engine build behind each encoder (1): adapters are trained on one engine's "
            "exact outputs, so a build change is visible here.",
            ["encoder", "role", "backend", "build"],
            registry=r,
        )
        self.engine_step_requests = Histogram(
            "querylift_engine_step_requests",
            "Requests an in-process engine (vLLM) finished in one step: above 1, concurrent "
            "requests shared a forward pass inside the engine.",
            ["encoder"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.engine_step_tokens = Histogram(
            "querylift_engine_step_tokens",
            "Prompt tokens an in-process engine (vLLM) computed in one step.",
            ["encoder"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )

    def watch_encoder(self, role: str, encoder: Encoder) -> None:
        """Export the encoder's engine build, and its engine steps where it reports them."""
        name = encoder.name
        self.engine_info.labels(name, role, encoder.spec.backend, encoder.engine).set(1)
        requests, tokens = self.engine_step_requests, self.engine_step_tokens

        def observe(finished: int, prompt_tokens: int, running: int) -> None:
            if finished:
                requests.labels(name).observe(finished)
            if prompt_tokens:
                tokens.labels(name).observe(prompt_tokens)

        # series only for an encoder with engine steps (a forward pass has none): they show,
        # at zero, from start-up on
        if encoder.add_step_observer(observe):
            requests.labels(name)
            tokens.labels(name)
