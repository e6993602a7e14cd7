"""GET /info: what this service serves, so a client need not read the docs to find out.

TEI answers `GET /info`, vLLM `GET /v1/models`; querylift's version also names, for the
caller's tenant, the collection it searches and the adapter it is served through. Nothing
secret goes in: no keys, no Qdrant URL (it may carry credentials), no file paths.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from adapters.manifest import AdapterKind
from encoders import Encoder
from service.bindings.tenants import Tenant
from service.http.deps import runtime_of, tenant_of
from service.http.errors import APIError
from service.runtime import Runtime

router = APIRouter()


def package_version() -> str:
    try:
        return version("querylift")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


class EncoderInfo(BaseModel):
    name: str
    dim: int
    max_tokens: int = Field(description="Longer inputs are refused, or cut with truncate=true.")
    pooling: str
    normalize: bool
    backend: str
    engine: str = Field(description="The engine build, e.g. `vllm==0.33.0`.")
    query_template: str
    document_template: str
    default_instruction: str
    fingerprint: str = Field(description="Changes whenever the vectors would change.")


class AdapterInfo(BaseModel):
    id: str
    version: int = Field(description="The tenant's binding version (rises on every swap).")
    kind: str
    in_dim: int
    out_dim: int
    name: str | None
    created_at: str


class TenantInfo(BaseModel):
    name: str
    collection: str
    vector: str | None = Field(description="The named vector searched; null = unnamed.")
    scope: Literal["field", "collection"]
    dim: int = Field(description="Size of the vectors this tenant is served.")
    served_by: Literal["adapter", "document_encoder"]
    adapter: AdapterInfo | None


class Limits(BaseModel):
    max_inputs: int
    max_input_chars: int
    max_body_bytes: int


class InfoResponse(BaseModel):
    version: str
    profile: str
    query_encoder: EncoderInfo
    document_encoder: EncoderInfo
    adapter_kinds: list[str]
    limits: Limits
    tenant: TenantInfo | None = Field(
        description="The caller's tenant (its API key); null without a key."
    )


def encoder_info(encoder: Encoder) -> EncoderInfo:
    spec = encoder.spec
    return EncoderInfo(
        name=encoder.name,
        dim=encoder.dim,
        max_tokens=encoder.max_tokens,
        pooling=str(spec.pooling),
        normalize=spec.normalize,
        backend=spec.backend,
        engine=encoder.engine,
        query_template=spec.query_template,
        document_template=spec.document_template,
        default_instruction=spec.default_instruction,
        fingerprint=spec.fingerprint(),
    )


def tenant_info(runtime: Runtime, tenant: Tenant) -> TenantInfo:
    target = runtime.target_for(tenant)
    active = runtime.active_adapter(tenant.name)
    adapter = None
    if active is not None:
        m = active.adapter.manifest
        adapter = AdapterInfo(
            id=active.adapter.id,
            version=active.version,
            kind=str(m.kind),
            in_dim=m.in_dim,
            out_dim=m.out_dim,
            name=m.name,
            created_at=m.created_at,
        )
    return TenantInfo(
        name=tenant.name,
        collection=target.collection,
        vector=target.vector,
        scope=target.scope,
        dim=runtime.served_dim(tenant.name),
        served_by="adapter" if adapter is not None else "document_encoder",
        adapter=adapter,
    )


def info(runtime: Runtime, tenant: Tenant | None) -> InfoResponse:
    s = runtime.settings
    return InfoResponse(
        version=package_version(),
        profile=s.profile,
        query_encoder=encoder_info(runtime.query_encoder),
        document_encoder=encoder_info(runtime.document_encoder),
        adapter_kinds=[str(k) for k in AdapterKind],
        limits=Limits(
            max_inputs=s.max_inputs,
            max_input_chars=s.max_input_chars,
            max_body_bytes=s.max_body_bytes,
        ),
        tenant=tenant_info(runtime, tenant) if tenant is not None else None,
    )


@router.get("/info", response_model=InfoResponse)
async def get_info(request: Request) -> InfoResponse:
    """Open without a key (the server part); with a key, also that tenant's part. A key that
    names no tenant is 401, as on every other route."""
    runtime = runtime_of(request)
    tenant = tenant_of(request, runtime)
    if tenant is None and request.headers.get("authorization") and not runtime.tenants.dev_mode:
        raise APIError(
            401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    # the tenant's adapter is read in a thread: an evicted one reloads from the store, never on
    # the event loop
    return await to_thread.run_sync(info, runtime, tenant)
