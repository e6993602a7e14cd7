"""Who and what a request works with: the app's runtime and batcher, the caller's tenant.

One place decides whether the app can take a request (`serving`): the FastAPI dependencies
answer 503 where it cannot, and the fast path hands the request to them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.bindings.tenants import Tenant
from service.engine.batcher import Batcher
from service.http.errors import APIError
from service.http.ratelimit import admit
from service.runtime import Runtime


def serving(state: Any) -> tuple[Runtime, Batcher] | None:
    """The app's runtime and batcher when it takes work: started and not draining."""
    runtime: Runtime | None = getattr(state, "runtime", None)
    batcher: Batcher | None = getattr(state, "batcher", None)
    drain = getattr(state, "drain", None)
    if runtime is None or batcher is None or (drain is not None and drain.active):
        return None
    return runtime, batcher


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise APIError(503, "not_ready", "the service is still starting")
    return runtime


# The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its
# thread pool, and three thread hops per request cost more than the work they do.
async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


def tenant_of(request: Request, runtime: Runtime) -> Tenant | None:
    """The tenant the request's bearer key names (None: no key, or not a known one)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    tenant = runtime.tenants.resolve(key.strip() if scheme.lower() == "bearer" else None)
    if tenant is not None:
        request.state.tenant = tenant.name
    return tenant


async def get_tenant(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]) -> Tenant:
    tenant = tenant_of(request, runtime)
    if tenant is None:
        raise APIError(
            401,
            "unauthorized",
            "missing or unknown API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    admit(request, tenant)  # log context + per-tenant rate limit (429 rate_limited)
    return tenant


async def get_batcher(request: Request) -> Batcher:
    batcher: Batcher | None = getattr(request.app.state, "batcher", None)
    if batcher is None:
        raise APIError(503, "not_ready", "the service is still starting")
    return batcher


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
TenantDep = Annotated[Tenant, Depends(get_tenant)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
