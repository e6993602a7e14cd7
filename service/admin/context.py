"""The admin API: adapter uploads, per-tenant activation, rollback, audit; this module holds
its auth, per-app state and the helpers the admin routes share.

Every route sits behind the admin token (`Authorization: Bearer <QUERYLIFT_ADMIN_TOKEN>`,
compared in constant time); tenant API keys never work here. With no admin token configured
the whole API is off and answers 404. The optional `X-Querylift-Actor` header names the person
for the audit log.

Activation validates before it swaps: the checkpoint is re-read from the store (format, hash,
finite values), then checked against what this deployment serves and what the tenant's
collection holds (`Runtime.validate_for_tenant`). A refused activation answers 422 with every
reason and changes nothing. An accepted one is written to the store (which other replicas
poll) and applied to this replica at once by `Runtime.sync` (a pointer swap).

The quality gate (service/evaluation/gate.py, adapters/gate.py): when the tenant has a
validation set (`PUT /admin/tenants/{tenant}/validation`, or one inline in the activation
body), activation also scores the candidate, the current adapter and the document model alone
on it and refuses (422 `quality_gate_failed`, the numbers in `details.gate`) a candidate that
is materially and significantly worse than either. Without a validation set, the label-free gate
(service/evaluation/label_free.py) applies the same rule to agreement with the query encoder on
unlabelled queries (an uploaded query set, or the held-out share of the tenant's query log).
`force=true` activates anyway and says so in the audit log.
Rollback is not gated: it is the way back, and it restores a version that was accepted before.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from adapters import Manifest
from adapters.names import is_safe_name
from adapters.store import BindingEvent, TenantBinding
from service.admin.audit import Action, AuditLog
from service.bindings.tenants import Tenant
from service.engine.background import BackgroundLane
from service.evaluation.teacher_cache import TeacherCache
from service.http.deps import runtime_of
from service.http.errors import APIError
from service.ops.query_log import QueryLog
from service.ops.settings import Settings
from service.runtime import Runtime

log = logging.getLogger(__name__)

_MAX_ACTOR_CHARS = 128


def audit_path(settings: Settings) -> Path:
    return settings.audit_log or settings.beside_store("audit.log")


# -- auth and per-app state --------------------------------------------------------------------
@dataclass
class AdminState:
    audit: AuditLog
    lock: threading.Lock  # one admin change at a time in this process: validate, write, swap
    query_log: QueryLog | None = None  # the app's query logs (export, clear, label-free gate)
    teacher_cache: TeacherCache | None = None  # the label-free gate's teacher vectors
    lane: BackgroundLane | None = None  # the gates' way to the encoders, behind live traffic


def admin_state(
    settings: Settings, query_log: QueryLog | None = None, lane: BackgroundLane | None = None
) -> AdminState:
    """Built once per app, in its lifespan (service/app.py), like the rest of its state."""
    return AdminState(
        AuditLog(audit_path(settings)),
        threading.Lock(),
        query_log,
        TeacherCache(
            settings.gate_teacher_cache_entries,
            settings.gate_teacher_cache_dir or settings.beside_store("teacher-cache"),
        ),
        lane,
    )


@dataclass
class Admin:
    """What an authenticated admin call works with."""

    runtime: Runtime
    actor: str
    audit: AuditLog
    lock: threading.Lock
    query_log: QueryLog | None = None
    teacher_cache: TeacherCache | None = None
    lane: BackgroundLane | None = None

    def record(self, action: Action, **fields: Any) -> None:
        self.audit.record(actor=self.actor, action=action, **fields)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _actor(header: str | None) -> str:
    cleaned = "".join(c for c in (header or "") if c.isprintable()).strip()
    return cleaned[:_MAX_ACTOR_CHARS] or "admin"


def require_admin(request: Request) -> Admin:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    token = settings.admin_token if settings is not None else None
    secret = token.get_secret_value() if token is not None else ""
    if not secret:
        raise APIError(
            404,
            "not_found",
            "the admin API is off: set QUERYLIFT_ADMIN_TOKEN to turn it on",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare fixed-length digests: the time taken says nothing about the token or its length
    ok = hmac.compare_digest(_digest(given.strip()), _digest(secret))
    if scheme.lower() != "bearer" or not given.strip() or not ok:
        log.warning(
            "admin: refused %s %s from %s (missing or wrong admin token)",
            request.method,
            request.url.path,
            request.client.host if request.client else "?",
        )
        raise APIError(
            401,
            "unauthorized",
            "missing or wrong admin token (tenant API keys do not work on /admin)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    runtime = runtime_of(request)
    state: AdminState = request.app.state.admin
    actor = _actor(request.headers.get("x-querylift-actor"))
    return Admin(
        runtime, actor, state.audit, state.lock, state.query_log, state.teacher_cache, state.lane
    )


AdminDep = Annotated[Admin, Depends(require_admin)]


# -- helpers -----------------------------------------------------------------------------------
def binding_ref(adapter_id: str | None, version: int) -> dict[str, Any]:
    return {"adapter_id": adapter_id, "version": version}


def event_json(e: BindingEvent) -> dict[str, Any]:
    return e.model_dump(mode="json")


def previous_binding(binding: TenantBinding, tenant: Tenant) -> dict[str, Any] | None:
    """What the tenant had before a change: its store binding, else its default adapter."""
    if binding.active is not None:
        return binding_ref(binding.active.adapter_id, binding.active.version)
    if tenant.default_adapter is not None:
        return binding_ref(tenant.default_adapter, 0)
    return None


def served_binding(runtime: Runtime, tenant: str) -> dict[str, Any] | None:
    bound = runtime.binding(tenant)
    return binding_ref(bound.adapter_id, bound.version) if bound is not None else None


def valid_name(name: str) -> bool:
    return is_safe_name(name)


def adapter_exists(runtime: Runtime, adapter_id: str) -> bool:
    return valid_name(adapter_id) and runtime.store.has(adapter_id)


def adapter_users(runtime: Runtime) -> dict[str, list[str]]:
    """adapter id -> tenants using it: bound in the store, or served here (default adapters)."""
    users = {k: set(v) for k, v in runtime.store.bound().items()}
    for name in runtime.tenants.tenants:
        bound = runtime.binding(name)
        if bound is not None and bound.adapter_id is not None:
            users.setdefault(bound.adapter_id, set()).add(name)
    return {k: sorted(v) for k, v in users.items()}


def read_manifest(runtime: Runtime, adapter_id: str) -> Manifest:
    """The stored manifest only (no tensors: cheap). KeyError when absent."""
    if not valid_name(adapter_id):
        raise KeyError(adapter_id)
    return Manifest.model_validate_json(runtime.store.manifest_bytes(adapter_id))


def adapter_not_found(adapter_id: str) -> APIError:
    return APIError(
        404, "adapter_not_found", f"no adapter {adapter_id!r} in the store", {"id": adapter_id}
    )


def known_tenant(runtime: Runtime, name: str) -> Tenant:
    """The tenant called `name`; 404 `tenant_not_found` (for reads: nothing to audit)."""
    tenant = runtime.tenants.tenants.get(name)
    if tenant is None:
        raise APIError(
            404, "tenant_not_found", f"unknown tenant {name[:128]!r}", {"tenant": name[:128]}
        )
    return tenant


def tenant_or_404(admin: Admin, name: str, action: Action) -> Tenant:
    """`known_tenant` for a change: a refusal is in the audit log too."""
    try:
        return known_tenant(admin.runtime, name)
    except APIError as e:
        admin.record(action, tenant=name[:128], outcome="refused", reasons=[e.message])
        raise


def too_large(what: str, limit: int) -> APIError:
    return APIError(413, "payload_too_large", f"{what} is over {limit} bytes", {"max_bytes": limit})


@contextmanager
def store_write(admin: Admin, action: Action, **fields: Any) -> Iterator[None]:
    """A store write the disk refused: 507 `storage_full` (ENOSPC, EDQUOT), else 503
    `storage_unavailable`, instead of a 500. Store writes are atomic: the old state stays."""
    try:
        yield
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "the disk is full" if full else (e.strerror or type(e).__name__)
        reason = f"cannot write the adapter store: {what}; the previous state is kept"
        admin.record(action, outcome="refused", reasons=[reason], **fields)
        log.error("admin %s: %s refused: %s (%r)", admin.actor, action, reason, e)
        raise APIError(
            507 if full else 503,
            "storage_full" if full else "storage_unavailable",
            reason,
            {"errno": errno.errorcode.get(e.errno or 0), "reasons": [reason]},
            headers={"Retry-After": "30"},
        ) from None
