"""HTTP routes. They validate, resolve the tenant, and hand work to the Runtime off the loop."""

from __future__ import annotations

import asyncio
import base64
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from anyio import to_thread
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from qdrant_client import models

from service.bindings.tenants import Tenant
from service.engine.batcher import Batcher
from service.engine.embedding import EmbedItem, EmbedOutcome
from service.engine.errors import ServiceError
from service.http.deps import BatcherDep, RuntimeDep, TenantDep
from service.http.errors import APIError
from service.http.schemas import (
    AdapterRef,
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from service.ops.query_log import QueryLog
from service.runtime import Runtime

router = APIRouter()


def _check_limits(runtime: Runtime, texts: list[str]) -> None:
    s = runtime.settings
    if len(texts) > s.max_inputs:
        raise APIError(
            413,
            "too_many_inputs",
            f"{len(texts)} inputs; at most {s.max_inputs} per request",
            {"count": len(texts), "max_inputs": s.max_inputs},
        )
    for i, t in enumerate(texts):
        if len(t) > s.max_input_chars:
            raise APIError(
                413,
                "input_too_long",
                f"input {i} has {len(t)} characters; the limit is {s.max_input_chars}",
                {"index": i, "chars": len(t), "max_chars": s.max_input_chars},
            )


def _dumps(payload: Any) -> bytes:
    """orjson, vectors straight from their float32 arrays: each number in its shortest
    float32 form (exact, and ~40% fewer bytes than float64 reprs)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_response(body: bytes, out: EmbedOutcome, timings: dict[str, float]) -> Response:
    """A JSON body with TEI-style timing headers: Server-Timing (queue, tokenize, encode,
    adapt, search) and whether the query vectors came from the cache or the fallback."""
    headers = {}
    parts = [f"{k};dur={v:.2f}" for k, v in timings.items()]
    if out.cache != "off":
        parts.append(f'cache;desc="{out.cache}"')
        headers["X-Query-Cache"] = out.cache
    headers["Server-Timing"] = ", ".join(parts)
    if out.degraded:
        headers["X-Querylift-Degraded"] = f"document-encoder-fallback; reason={out.degraded}"
    return Response(body, media_type="application/json", headers=headers)


def _vectors(out: EmbedOutcome) -> np.ndarray:
    """The outcome's vectors as C-ordered float32 rows; a non-finite value is a fault
    (orjson would write it as null), not something to hand a client."""
    v = np.ascontiguousarray(out.vectors, dtype=np.float32)
    if not np.isfinite(v).all():
        raise RuntimeError(f"the {out.model} encoder returned non-finite values")
    return v


def _usage(out: EmbedOutcome) -> dict[str, Any]:
    """OpenAI's usage shape (`Usage`), plus `truncated` only when something was cut."""
    tokens = sum(out.token_counts)
    usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
    if out.truncated:
        usage["truncated"] = [
            {"index": c.index, "tokens": c.tokens, "kept": c.kept} for c in out.truncated
        ]
    return usage


def _adapter_ref(outcome: EmbedOutcome) -> AdapterRef | None:
    a = outcome.adapter
    return AdapterRef(id=a.adapter.id, version=a.version) if a else None


# Admission (tokenising) runs on the event loop when the texts are this short: cheaper than
# a thread hop; longer requests tokenise in a worker thread so the loop never stalls.
_INLINE_CHARS = 4096
_BODY_TIMINGS = ("encode", "adapt", "search")


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so `receive` only has
    the disconnect left to say)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _embed(
    request: Request,
    runtime: Runtime,
    batcher: Batcher,
    tenant: Tenant,
    texts: list[str],
    kind: str,
    instruction: str | None,
    truncate: bool,
    endpoint: str,
) -> EmbedOutcome:
    _check_limits(runtime, texts)
    runtime.metrics.tenant_requests.labels(tenant.name, endpoint).inc()
    item = EmbedItem(tenant.name, texts, kind, instruction, truncate)  # type: ignore[arg-type]
    if sum(len(t) for t in texts) <= _INLINE_CHARS:
        item = await runtime.resolve_adapter(item)  # an evicted adapter loads off the loop
        prep = runtime.prepare(item)  # cheap; cache hits are answered even when overloaded
    else:
        batcher.check_admission()  # overloaded: a fast 429 before tokenising much text
        prep = await to_thread.run_sync(runtime.prepare, item)
    if prep.misses == 0:  # every row from the cache: adapt and answer, no batch
        ((_, out),) = runtime.finish([prep])
        return out
    # merged with concurrent requests into one encoder batch; the outcome's timings carry
    # the queue wait (`queue` in Server-Timing). A client that disconnects while queued has
    # its rows dropped before its batch starts.
    # One watcher task per request (not two tasks and an asyncio.wait: this is the hot path):
    # when the client goes away while the request waits, it cancels this task, and so the
    # queued future, which the batcher then skips.
    me = asyncio.current_task()
    waiting = True

    def on_gone(t: asyncio.Task[None]) -> None:
        if waiting and not t.cancelled() and me is not None:
            me.cancel()

    gone = asyncio.ensure_future(_until_disconnect(request))
    gone.add_done_callback(on_gone)
    try:
        return await batcher.submit(prep, runtime.settings.request_timeout_s)
    except asyncio.CancelledError:
        if me is None or not gone.done() or gone.cancelled():
            raise  # cancelled from elsewhere (shutdown): not a disconnect
        me.uncancel()
        runtime.metrics.rejected.labels("disconnected").inc()
        raise APIError(499, "client_closed_request", "the client closed the connection") from None
    finally:
        waiting = False
        gone.cancel()


def _log_queries(request: Request, tenant: Tenant, texts: list[str], endpoint: str) -> None:
    """An answered request's query texts into the tenant's opt-in query log
    (service/ops/query_log.py): a buffer append, no I/O on this path."""
    query_log: QueryLog | None = getattr(request.app.state, "query_log", None)
    if query_log is not None:
        query_log.record(tenant.name, texts, endpoint)


async def embed_response(
    request: Request, runtime: Runtime, batcher: Batcher, tenant: Tenant, body: EmbedRequest
) -> Response:
    """POST /embed once the request is known good (the route and service/http/fastpath.py)."""
    texts = body.texts()
    out = await _embed(
        request,
        runtime,
        batcher,
        tenant,
        texts,
        body.input_type,
        body.instruction,
        body.truncate,
        "/embed",
    )
    a = out.adapter
    payload = {
        "data": [{"index": i, "embedding": v} for i, v in enumerate(_vectors(out))],
        "model": out.model,
        "adapter": {"id": a.adapter.id, "version": a.version} if a else None,
        "usage": _usage(out),
    }
    body_bytes = _dumps(payload)
    if body.input_type == "query":
        _log_queries(request, tenant, texts, "/embed")
    return _json_response(body_bytes, out, out.timings_ms)


async def openai_response(
    request: Request,
    runtime: Runtime,
    batcher: Batcher,
    tenant: Tenant,
    body: OpenAIEmbeddingsRequest,
) -> Response:
    """POST /v1/embeddings once the request is known good (the route and the fast path)."""
    raw = body.input
    if isinstance(raw, list) and raw and not isinstance(raw[0], str):
        raise APIError(
            400,
            "unsupported_input",
            "token-id arrays are not supported: send text (the query and document "
            "encoders use different tokenizers)",
        )
    # A model name ending in `-document` selects the document path: OpenAI clients (LangChain's
    # OpenAIEmbeddings included) cannot send `input_type` per call, but they can use a second
    # client with another model name for indexing.
    input_type = body.input_type
    if (body.model or "").lower().endswith(DOCUMENT_MODEL_SUFFIX):
        if "input_type" in body.model_fields_set and body.input_type != "document":
            raise APIError(
                400,
                "conflicting_input_type",
                f"model {body.model!r} selects the document path (it ends in "
                f"{DOCUMENT_MODEL_SUFFIX!r}) but input_type is {body.input_type!r}; "
                "drop one of them",
                {"model": body.model, "input_type": body.input_type},
            )
        input_type = "document"
    texts = [raw] if isinstance(raw, str) else list(raw)  # type: ignore[arg-type]
    try:
        EmbedRequest(input=texts)
    except ValidationError as e:
        raise APIError(422, "invalid_request", e.errors()[0]["msg"]) from None
    out = await _embed(
        request,
        runtime,
        batcher,
        tenant,
        texts,
        input_type,
        body.instruction,
        False,
        "/v1/embeddings",
    )
    vectors = _vectors(out)
    dim = vectors.shape[1]  # the tenant's served size: its collection's (prefix) size
    if body.dimensions is not None and body.dimensions != dim:
        raise APIError(
            400,
            "unsupported_dimensions",
            f"this tenant's collection takes {dim}-d vectors (the size it was indexed at); "
            f"`dimensions` must be {dim} or omitted",
            {"dimensions": dim, "requested": body.dimensions},
        )
    data: list[dict[str, Any]]
    if body.encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(v).decode()}
            for i, v in enumerate(little)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    payload = {
        "object": "list",
        "data": data,
        "model": body.model or out.model,
        "usage": _usage(out),
    }
    body_bytes = _dumps(payload)
    if input_type == "query":
        _log_queries(request, tenant, texts, "/v1/embeddings")
    return _json_response(body_bytes, out, out.timings_ms)


# The routes document the API (request and response models in OpenAPI) and serve whatever
# the fast path (service/http/fastpath.py) hands over; both answer through the *_response functions.
DOCUMENT_MODEL_SUFFIX = "-document"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "querylift"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models", response_model=ModelList)
async def openai_models(runtime: RuntimeDep, tenant: TenantDep) -> ModelList:
    """OpenAI's model list, so clients that list or check models find the two paths of
    /v1/embeddings: the query encoder's name (queries, through the tenant's adapter) and the
    document encoder's name + `-document` (documents). Same tenant auth as /v1/embeddings."""
    return ModelList(
        data=[
            ModelCard(id=runtime.query_encoder.name),
            ModelCard(id=runtime.document_encoder.name + DOCUMENT_MODEL_SUFFIX),
        ]
    )


async def search_response(
    request: Request, runtime: Runtime, batcher: Batcher, tenant: Tenant, body: SearchRequest
) -> Response:
    """POST /search once the request is known good (the route and the fast path)."""
    client_filter = None
    if body.filter is not None:
        try:
            client_filter = models.Filter.model_validate(body.filter)
        except ValidationError as e:
            raise APIError(
                422,
                "invalid_filter",
                "filter is not a valid Qdrant filter",
                [{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors()[:10]],
            ) from None
    out = await _embed(
        request,
        runtime,
        batcher,
        tenant,
        [body.query],
        "query",
        body.instruction,
        False,
        "/search",
    )
    t0 = time.perf_counter()
    try:
        warnings: list[str] = []
        hits = await to_thread.run_sync(
            lambda: runtime.search(
                tenant,
                out.vectors[0],
                client_filter,
                body.top_k,
                body.with_payload,
                warnings,
                offset=body.offset,
                score_threshold=body.score_threshold,
                with_vectors=body.with_vectors,
            )
        )
    except ServiceError:
        raise
    except Exception as e:  # Qdrant down, timeouts, transport errors
        raise APIError(
            503,
            "search_unavailable",
            f"vector search failed: {type(e).__name__}",
            headers={"Retry-After": "1"},
        ) from e
    timings = {**out.timings_ms, "search": (time.perf_counter() - t0) * 1e3}
    shadow = getattr(request.app.state, "shadow", None)
    # the shadow compares first pages: a later page or a cut-off list is not one
    if shadow is not None and body.offset == 0 and body.score_threshold is None:
        shadow.observe(  # service/evaluation/shadow.py
            runtime, tenant, body.query, body.instruction, body.top_k, client_filter, out, hits
        )
    result = SearchResponse(
        results=[
            SearchResult(id=h.id, score=h.score, payload=h.payload, vector=h.vector) for h in hits
        ],
        adapter=_adapter_ref(out),
        model=out.model,
        # the body keeps its documented keys; queue and tokenize are in Server-Timing only
        timings_ms={k: round(v, 3) for k, v in timings.items() if k in _BODY_TIMINGS},
        warnings=warnings or None,
    )
    exclude: dict[str, Any] = {}
    if not warnings:
        exclude["warnings"] = True
    if not body.with_vectors:  # the key appears only when asked for
        exclude["results"] = {"__all__": {"vector"}}
    dump = result.model_dump_json(exclude=exclude or None)
    _log_queries(request, tenant, [body.query], "/search")
    return _json_response(dump.encode(), out, timings)


# -- the hot routes: one table for FastAPI and the fast path ------------------------------------
Handler = Callable[[Request, Runtime, Batcher, Tenant, Any], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """A POST route both paths serve: FastAPI (documented in OpenAPI, every check) and the fast
    path (service/http/fastpath.py), through the same handler."""

    request: type[BaseModel]
    response: type[BaseModel]
    handler: Handler


HOT_ROUTES: dict[str, HotRoute] = {
    "/embed": HotRoute(EmbedRequest, EmbedResponse, embed_response),
    "/v1/embeddings": HotRoute(OpenAIEmbeddingsRequest, OpenAIEmbeddingsResponse, openai_response),
    "/search": HotRoute(SearchRequest, SearchResponse, search_response),
}


def _endpoint(route: HotRoute) -> Callable[..., Awaitable[Response]]:
    """The FastAPI endpoint of a hot route, its signature built with the real types (so
    OpenAPI documents the body and the dependencies run)."""

    async def endpoint(
        request: Request, body: Any, runtime: Runtime, batcher: Batcher, tenant: Tenant
    ) -> Response:
        return await route.handler(request, runtime, batcher, tenant, body)

    P = inspect.Parameter
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            P("request", P.POSITIONAL_OR_KEYWORD, annotation=Request),
            P("body", P.POSITIONAL_OR_KEYWORD, annotation=route.request),
            P("runtime", P.POSITIONAL_OR_KEYWORD, annotation=RuntimeDep),
            P("batcher", P.POSITIONAL_OR_KEYWORD, annotation=BatcherDep),
            P("tenant", P.POSITIONAL_OR_KEYWORD, annotation=TenantDep),
        ],
        return_annotation=Response,
    )
    return endpoint


for _path, _route in HOT_ROUTES.items():
    router.add_api_route(
        _path,
        _endpoint(_route),
        methods=["POST"],
        response_model=_route.response,
        name=_route.handler.__name__.removesuffix("_response"),
    )
