"""The admin API (DESIGN.md 2a): adapter uploads, per-tenant activation, rollback, audit.

Every route sits behind the admin token (`Authorization: Bearer <QUERYLIFT_ADMIN_TOKEN>`,
compared in constant time); tenant API keys never work here. With no admin token configured
the whole API is off and answers 404. The optional `X-Querylift-Actor` header names the person
for the audit log.

Activation validates before it swaps: the checkpoint is re-read from the store (format, hash,
finite values), then checked against what this deployment serves and what the tenant's
collection holds (`Runtime.validate_for_tenant`). A refused activation answers 422 with every
reason and changes nothing. An accepted one is written to the store (which other replicas
poll) and applied to this replica at once by `Runtime.sync` (a pointer swap).

The quality gate (service/admin/gate.py, adapters/gate.py): when the tenant has a validation set
(`PUT /admin/tenants/{tenant}/validation`, or one inline in the activation body), activation
also scores the candidate, the current adapter and the document model alone on it and refuses
(422 `quality_gate_failed`, the numbers in `details.gate`) a candidate that is materially and
significantly worse than either. `force=true` activates anyway and says so in the audit log.
Rollback is not gated: it is the way back, and it restores a version that was accepted before.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from adapters import Adapter, CheckpointError, Manifest
from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE
from adapters.compat import compatibility_problems
from adapters.gate import GateReport
from adapters.store import BindingEvent, TenantBinding
from service.admin.audit import Action, AuditLog
from service.admin.gate import (
    MAX_VALIDATION_BYTES,
    GateRecord,
    GateUnavailable,
    ValidationSet,
    gate_files,
    known_ids,
    new_validation_set,
    parse_validation,
)
from service.admin.gate import evaluate as evaluate_gate
from service.bindings.tenants import Tenant
from service.http.errors import APIError
from service.http.routes import runtime_of
from service.ops.settings import Settings
from service.runtime import Runtime

log = logging.getLogger(__name__)

MAX_TENSOR_BYTES = 512 << 20  # adapter.safetensors
MAX_MANIFEST_BYTES = 1 << 20  # manifest.json
_MULTIPART_OVERHEAD = 64 << 10  # boundaries and part headers
_MAX_ACTOR_CHARS = 128
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def audit_path(settings: Settings) -> Path:
    return settings.audit_log or Path(settings.adapter_store) / "audit.log"


# -- auth and per-app state --------------------------------------------------------------------
@dataclass
class _AdminState:
    audit: AuditLog
    lock: threading.Lock  # one admin change at a time in this process: validate, write, swap


_STATE_LOCK = threading.Lock()


def _state(app: FastAPI, settings: Settings) -> _AdminState:
    state: _AdminState | None = getattr(app.state, "querylift_admin", None)
    if state is None:
        with _STATE_LOCK:
            state = getattr(app.state, "querylift_admin", None)
            if state is None:
                state = _AdminState(AuditLog(audit_path(settings)), threading.Lock())
                app.state.querylift_admin = state
    return state


@dataclass
class Admin:
    """What an authenticated admin call works with."""

    runtime: Runtime
    actor: str
    audit: AuditLog
    lock: threading.Lock

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
    state = _state(request.app, runtime.settings)
    return Admin(runtime, _actor(request.headers.get("x-querylift-actor")), state.audit, state.lock)


AdminDep = Annotated[Admin, Depends(require_admin)]
router = APIRouter(prefix="/admin", tags=["admin"])


# -- helpers -----------------------------------------------------------------------------------
def _ref(adapter_id: str | None, version: int) -> dict[str, Any]:
    return {"adapter_id": adapter_id, "version": version}


def _event(e: BindingEvent) -> dict[str, Any]:
    return e.model_dump(mode="json")


def _previous(binding: TenantBinding, tenant: Tenant) -> dict[str, Any] | None:
    """What the tenant had before a change: its store binding, else its default adapter."""
    if binding.active is not None:
        return _ref(binding.active.adapter_id, binding.active.version)
    if tenant.default_adapter is not None:
        return _ref(tenant.default_adapter, 0)
    return None


def _served(runtime: Runtime, tenant: str) -> dict[str, Any] | None:
    bound = runtime.binding(tenant)
    return _ref(bound.adapter_id, bound.version) if bound is not None else None


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 128 and name[0].isalnum() and set(name) <= _NAME_CHARS


def _adapter_exists(runtime: Runtime, adapter_id: str) -> bool:
    return _valid_name(adapter_id) and (runtime.store.root / "adapters" / adapter_id).is_dir()


def _users(runtime: Runtime) -> dict[str, list[str]]:
    """adapter id -> tenants using it: bound in the store, or served here (default adapters)."""
    users = {k: set(v) for k, v in runtime.store.bound().items()}
    for name in runtime.tenants.tenants:
        bound = runtime.binding(name)
        if bound is not None and bound.adapter_id is not None:
            users.setdefault(bound.adapter_id, set()).add(name)
    return {k: sorted(v) for k, v in users.items()}


def _read_manifest(runtime: Runtime, adapter_id: str) -> Manifest:
    """The stored manifest only (no tensors: cheap). KeyError when absent."""
    if not _adapter_exists(runtime, adapter_id):
        raise KeyError(adapter_id)
    path = runtime.store.root / "adapters" / adapter_id / MANIFEST_FILE
    return Manifest.model_validate_json(path.read_bytes())


def _not_found(adapter_id: str) -> APIError:
    return APIError(
        404, "adapter_not_found", f"no adapter {adapter_id!r} in the store", {"id": adapter_id}
    )


def _tenant(admin: Admin, name: str, action: Action) -> Tenant:
    tenant = admin.runtime.tenants.tenants.get(name)
    if tenant is None:
        reason = f"unknown tenant {name!r}"
        admin.record(action, tenant=name[:128], outcome="refused", reasons=[reason])
        raise APIError(404, "tenant_not_found", reason, {"tenant": name[:128]})
    return tenant


# -- upload ------------------------------------------------------------------------------------
_UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [TENSORS_FILE, MANIFEST_FILE],
                    "properties": {
                        TENSORS_FILE: {"type": "string", "format": "binary"},
                        MANIFEST_FILE: {"type": "string", "format": "binary"},
                    },
                }
            }
        },
    }
}


def _too_large(what: str, limit: int) -> APIError:
    return APIError(413, "payload_too_large", f"{what} is over {limit} bytes", {"max_bytes": limit})


async def _read_upload(request: Request) -> tuple[bytes, bytes]:
    """The two parts of a multipart upload, read only after auth and under size caps."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the parts {TENSORS_FILE!r} and {MANIFEST_FILE!r}",
        )
    cap = MAX_TENSOR_BYTES + MAX_MANIFEST_BYTES + _MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large("the upload", cap)

    async def limited() -> AsyncIterator[bytes]:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > cap:
                raise _too_large("the upload", cap)
            yield chunk

    parser = MultiPartParser(
        request.headers, limited(), max_files=2, max_fields=2, max_part_size=MAX_MANIFEST_BYTES
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "maximum size" in e.message:
            raise _too_large("a form field", MAX_MANIFEST_BYTES) from None
        raise APIError(400, "invalid_multipart", f"cannot parse the upload: {e.message}") from None
    try:
        parts: dict[str, bytes] = {}
        for name, limit in ((TENSORS_FILE, MAX_TENSOR_BYTES), (MANIFEST_FILE, MAX_MANIFEST_BYTES)):
            value = form.get(name)
            if value is None:
                continue
            if isinstance(value, UploadFile):
                if value.size is not None and value.size > limit:
                    raise _too_large(name, limit)
                data = await value.read(limit + 1)
            else:
                data = value.encode()
            if len(data) > limit:
                raise _too_large(name, limit)
            parts[name] = data
    finally:
        await form.close()
    missing = [n for n in (TENSORS_FILE, MANIFEST_FILE) if n not in parts]
    if missing:
        raise APIError(
            422,
            "invalid_request",
            f"missing multipart part(s) {missing}; send {TENSORS_FILE!r} and {MANIFEST_FILE!r}",
            {"missing": missing},
        )
    return parts[TENSORS_FILE], parts[MANIFEST_FILE]


@contextmanager
def _store_write(admin: Admin, action: Action, **fields: Any) -> Iterator[None]:
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


def _upload(admin: Admin, tensor_bytes: bytes, manifest_bytes: bytes) -> dict[str, Any]:
    store = admin.runtime.store
    before = set(store.ids())
    try:
        with _store_write(admin, "upload"):
            adapter = store.put(tensor_bytes, manifest_bytes)
    except CheckpointError as e:
        admin.runtime.metrics.adapter_validation_failures.labels("upload").inc()
        admin.record("upload", outcome="refused", reasons=e.reasons)
        raise APIError(
            422,
            "invalid_checkpoint",
            f"the checkpoint was refused: {'; '.join(e.reasons)}",
            {"reasons": e.reasons},
        ) from None
    created = adapter.id not in before
    admin.record(
        "upload",
        adapter_id=adapter.id,
        before=None if created else {"adapter_id": adapter.id},
        after={"adapter_id": adapter.id},
    )
    log.info("admin %s uploaded adapter %s (created=%s)", admin.actor, adapter.id, created)
    return {
        "id": adapter.id,
        "manifest": adapter.manifest.model_dump(mode="json"),
        "created": created,
    }


@router.post("/adapters", status_code=201, openapi_extra=_UPLOAD_OPENAPI)
async def upload_adapter(request: Request, response: Response, admin: AdminDep) -> dict[str, Any]:
    """Store a checkpoint (`adapter.safetensors` + `manifest.json`); idempotent by content."""
    tensor_bytes, manifest_bytes = await _read_upload(request)
    out = await to_thread.run_sync(lambda: _upload(admin, tensor_bytes, manifest_bytes))
    if not out["created"]:
        response.status_code = 200
    return out


# -- adapters ----------------------------------------------------------------------------------
def _list(runtime: Runtime) -> dict[str, Any]:
    users = _users(runtime)
    rows = []
    for adapter_id in runtime.store.ids():
        row: dict[str, Any] = {"id": adapter_id, "active_for": users.get(adapter_id, [])}
        try:
            m = _read_manifest(runtime, adapter_id)
        except (OSError, KeyError, ValidationError) as e:
            row["error"] = f"manifest unreadable: {type(e).__name__}"
        else:
            row |= {
                "name": m.name,
                "kind": m.kind.value,
                "in_dim": m.in_dim,
                "out_dim": m.out_dim,
                "query_model": m.query_model.name,
                "document_model": m.document_model.name,
                "created_at": m.created_at,
            }
        rows.append(row)
    return {"adapters": rows}


@router.get("/adapters")
async def list_adapters(admin: AdminDep) -> dict[str, Any]:
    """Every stored adapter version, with the tenants it is active for."""
    return await to_thread.run_sync(lambda: _list(admin.runtime))


def _get(runtime: Runtime, adapter_id: str) -> dict[str, Any]:
    try:
        manifest = _read_manifest(runtime, adapter_id)
    except KeyError:
        raise _not_found(adapter_id) from None
    except (OSError, ValidationError) as e:
        raise APIError(
            409, "adapter_damaged", f"adapter {adapter_id!r}: manifest unreadable ({e})"
        ) from None
    gates = gate_files(runtime).gates_for_adapter(adapter_id)
    return {
        "id": adapter_id,
        "manifest": manifest.model_dump(mode="json"),
        "active_for": _users(runtime).get(adapter_id, []),
        "gates": {t: r.model_dump(mode="json") for t, r in gates.items()},
    }


@router.get("/adapters/{adapter_id}")
async def get_adapter(adapter_id: str, admin: AdminDep) -> dict[str, Any]:
    """One adapter's manifest and the tenants it is active for."""
    return await to_thread.run_sync(lambda: _get(admin.runtime, adapter_id))


def _delete(admin: Admin, adapter_id: str) -> None:
    runtime = admin.runtime

    def in_use(users: list[str]) -> APIError:
        reason = f"adapter {adapter_id} is active for tenant(s) {users}"
        admin.record("delete", adapter_id=adapter_id, outcome="refused", reasons=[reason])
        return APIError(
            409,
            "adapter_in_use",
            f"{reason}; activate another adapter (or none) for them first",
            {"active_for": users},
        )

    with admin.lock:
        if not _adapter_exists(runtime, adapter_id):
            reason = f"no adapter {adapter_id!r} in the store"
            admin.record("delete", adapter_id=adapter_id[:128], outcome="refused", reasons=[reason])
            raise _not_found(adapter_id)
        users = _users(runtime).get(adapter_id, [])
        if users:  # bound in the store, or served here as a tenant's default adapter
            raise in_use(users)
        try:
            runtime.store.delete(adapter_id)
        except KeyError:
            raise _not_found(adapter_id) from None
        except ValueError:  # bound by another replica's admin call meanwhile
            raise in_use(runtime.store.bound().get(adapter_id, [])) from None
        runtime.adapters.discard(adapter_id)
        gate_files(runtime).drop_adapter(adapter_id)
        admin.record("delete", adapter_id=adapter_id, before={"adapter_id": adapter_id})
    log.info("admin %s deleted adapter %s", admin.actor, adapter_id)


@router.delete("/adapters/{adapter_id}", status_code=204)
async def delete_adapter(adapter_id: str, admin: AdminDep) -> Response:
    """Remove an adapter version (409 while a tenant has it active)."""
    await to_thread.run_sync(lambda: _delete(admin, adapter_id))
    return Response(status_code=204)


# -- tenants -----------------------------------------------------------------------------------
class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: str | None = Field(
        description="Adapter to activate; null = serve the document encoder's own vectors."
    )
    force: bool = Field(
        default=False,
        description="Activate even if the quality gate refuses (recorded in the audit log); "
        "compatibility problems still refuse.",
    )
    validation: list[dict[str, Any]] | None = Field(
        default=None,
        description="An inline validation set for this activation's gate (pairs records); "
        "default: the tenant's stored one.",
    )


@dataclass(frozen=True)
class _GateAsk:
    force: bool
    validation: ValidationSet | None  # inline; None = the tenant's stored set


def _refuse(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str | None,
    previous: dict[str, Any] | None,
    status: int,
    code: str,
    reasons: list[str],
    validation_failure: bool = True,
    extra: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> APIError:
    if validation_failure:
        admin.runtime.metrics.adapter_validation_failures.labels("activation").inc()
    admin.record(
        action,
        tenant=tenant.name,
        adapter_id=adapter_id,
        before=previous,
        after=previous,
        outcome="refused",
        reasons=reasons,
        extra=extra,
    )
    log.warning(
        "admin %s: %s of %s for tenant %s refused: %s",
        admin.actor,
        action,
        adapter_id,
        tenant.name,
        "; ".join(reasons),
    )
    what = "activation" if action == "activate" else "rollback"
    of = f" of adapter {adapter_id}" if adapter_id is not None else ""
    return APIError(
        status,
        code,
        f"{what}{of} for tenant {tenant.name!r} refused: {'; '.join(reasons)}",
        {"tenant": tenant.name, "adapter_id": adapter_id, "reasons": reasons, **(details or {})},
    )


def _validated(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str,
    previous: dict[str, Any] | None,
) -> Adapter:
    """Load `adapter_id` from disk (hash, finiteness) and check it fits the tenant here."""
    runtime = admin.runtime
    try:
        adapter = runtime.store.get(adapter_id)
    except KeyError:
        reason = f"no adapter {adapter_id!r} in the store"
        raise _refuse(
            admin,
            action,
            tenant,
            adapter_id,
            previous,
            404,
            "adapter_not_found",
            [reason],
            validation_failure=False,
        ) from None
    except CheckpointError as e:
        raise _refuse(
            admin, action, tenant, adapter_id, previous, 422, "invalid_checkpoint", e.reasons
        ) from None
    reasons = runtime.validate_for_tenant(tenant, adapter)
    if reasons:
        raise _refuse(
            admin, action, tenant, adapter_id, previous, 422, "adapter_incompatible", reasons
        )
    return adapter


def _current(runtime: Runtime, tenant: Tenant, previous: dict[str, Any] | None) -> Adapter | None:
    """The adapter the tenant has now, for the gate (None: none, or it no longer loads/fits)."""
    adapter_id = previous["adapter_id"] if previous is not None else None
    if adapter_id is None:
        return None
    try:
        adapter = runtime.adapters.get(adapter_id)
    except (KeyError, CheckpointError) as e:
        log.warning("gate for %s: current adapter %s not loadable (%s)", tenant.name, adapter_id, e)
        return None
    if compatibility_problems(adapter, runtime.query_encoder, runtime.document_encoder):
        log.warning("gate for %s: current adapter %s no longer fits", tenant.name, adapter_id)
        return None
    return adapter


def _gate(
    admin: Admin,
    tenant: Tenant,
    adapter: Adapter,
    previous: dict[str, Any] | None,
    ask: _GateAsk,
) -> tuple[GateReport | None, dict[str, Any] | None, bool]:
    """Run the quality gate when there is a validation set: (report, audit fields, forced).

    Raises the 422 (or 409 when it cannot run) unless `ask.force`. Every run is recorded per
    (tenant, adapter), refused ones here and activated ones by `_swap` once the binding is
    written, so the numbers stay with the adapter.
    """
    runtime = admin.runtime
    files = gate_files(runtime)
    validation = ask.validation or files.validation(tenant.name)
    if validation is None:
        return None, ({"force": True, "gate": None} if ask.force else None), False
    try:
        report = evaluate_gate(
            runtime, tenant, validation, adapter, _current(runtime, tenant, previous)
        )
    except GateUnavailable as e:
        reason = f"the quality gate cannot run: {e}"
        if not ask.force:
            raise _refuse(
                admin,
                "activate",
                tenant,
                adapter.id,
                previous,
                409,
                "gate_unavailable",
                [reason],
                validation_failure=False,
                extra={"force": False, "gate": None},
            ) from None
        return None, {"force": True, "gate": None, "gate_error": reason}, True
    refused = report.decision == "refuse"
    numbers = report.model_dump(mode="json")
    if refused:
        runtime.metrics.gate_refusals.labels(
            tenant.name, "forced" if ask.force else "blocked"
        ).inc()
        if not ask.force:
            _save_record(runtime, _record(admin, tenant, report, forced=False, activated=False))
            raise _refuse(
                admin,
                "activate",
                tenant,
                adapter.id,
                previous,
                422,
                "quality_gate_failed",
                report.reasons,
                validation_failure=False,
                extra={"force": False, "gate": numbers},
                details={"gate": numbers},
            )
        log.warning(
            "admin %s: FORCED activation of %s for %s past the quality gate: %s",
            admin.actor,
            adapter.id,
            tenant.name,
            "; ".join(report.reasons),
        )
    return report, {"force": ask.force, "gate": numbers}, refused


def _record(
    admin: Admin, tenant: Tenant, report: GateReport, forced: bool, activated: bool
) -> GateRecord:
    assert report.candidate_id is not None
    return GateRecord(
        tenant=tenant.name,
        adapter_id=report.candidate_id,
        actor=admin.actor,
        forced=forced,
        activated=activated,
        report=report,
    )


def _save_record(runtime: Runtime, record: GateRecord) -> None:
    """Keep a gate run; a failed write is logged (the audit line has the numbers too)."""
    try:
        gate_files(runtime).save_gate(record)
    except OSError:
        log.exception("cannot write the gate record of %s / %s", record.tenant, record.adapter_id)


def _swap(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str | None,
    previous: dict[str, Any] | None,
    ask: _GateAsk | None = None,
) -> dict[str, Any]:
    """Validate, gate, write the binding, then swap this replica (caller holds admin.lock)."""
    runtime = admin.runtime
    adapter = None
    report: GateReport | None = None
    extra: dict[str, Any] | None = None
    forced = False
    if adapter_id is not None:
        adapter = _validated(admin, action, tenant, adapter_id, previous)
        if ask is not None:
            report, extra, forced = _gate(admin, tenant, adapter, previous, ask)
        runtime.adapters.put(adapter)  # resident before the swap: sync finds it loaded
    with _store_write(
        admin, action, tenant=tenant.name, adapter_id=adapter_id, before=previous, after=previous
    ):
        binding = runtime.store.activate(tenant.name, adapter_id, actor=admin.actor)
    assert binding.active is not None
    if report is not None:
        _save_record(runtime, _record(admin, tenant, report, forced, activated=True))
    active = _ref(binding.active.adapter_id, binding.active.version)
    runtime.sync()
    served = _served(runtime, tenant.name)
    if served != active:  # the store has it; this replica could not load it (see the log)
        log.error("tenant %s: activated %s but this replica serves %s", tenant.name, active, served)
    admin.record(
        action,
        tenant=tenant.name,
        adapter_id=adapter_id,
        before=previous,
        after=active,
        extra=extra,
    )
    log.info("admin %s: %s tenant %s %s -> %s", admin.actor, action, tenant.name, previous, active)
    out = {"tenant": tenant.name, "active": active, "previous": previous, "served": served}
    if extra is not None:  # a gate applied (validation set) or force was asked for
        out["gate"] = report.model_dump(mode="json") if report is not None else None
        out["forced"] = forced  # past a refusing (or unavailable) gate with force=true
    return out


def _activate(admin: Admin, tenant_name: str, body: ActivateRequest) -> dict[str, Any]:
    tenant = _tenant(admin, tenant_name, "activate")
    inline = None
    if body.validation is not None:
        settings = admin.runtime.settings
        pairs = parse_validation(
            json.dumps(body.validation).encode(),
            settings.gate_max_queries,
            settings.max_input_chars,
        )
        inline = new_validation_set(tenant.name, pairs, admin.actor)
    ask = _GateAsk(force=body.force, validation=inline)
    with admin.lock:
        previous = _previous(admin.runtime.store.binding(tenant.name), tenant)
        return _swap(admin, "activate", tenant, body.adapter_id, previous, ask)


def _rollback(admin: Admin, tenant_name: str) -> dict[str, Any]:
    tenant = _tenant(admin, tenant_name, "rollback")
    with admin.lock:
        binding = admin.runtime.store.binding(tenant.name)
        previous = _previous(binding, tenant)
        if binding.active is None or len(binding.history) < 2:
            reason = f"tenant {tenant.name!r} has no previous adapter version"
            raise _refuse(
                admin,
                "rollback",
                tenant,
                None,
                previous,
                409,
                "nothing_to_roll_back",
                [reason],
                validation_failure=False,
            )
        # the store's rollback re-activates history[-2] as a new version; doing it through
        # _swap re-validates exactly that adapter before it is written
        target = binding.history[-2].adapter_id
        return _swap(admin, "rollback", tenant, target, previous)


@router.put("/tenants/{tenant}/adapter")
async def activate_adapter(tenant: str, body: ActivateRequest, admin: AdminDep) -> dict[str, Any]:
    """Validate (and quality-gate) an adapter for the tenant and make it active (null: none)."""
    return await to_thread.run_sync(lambda: _activate(admin, tenant, body))


@router.post("/tenants/{tenant}/rollback")
async def rollback_adapter(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """Re-activate the tenant's previous adapter (re-validated) as a new version."""
    return await to_thread.run_sync(lambda: _rollback(admin, tenant))


def _tenant_info(runtime: Runtime, tenant: Tenant) -> dict[str, Any]:
    binding = runtime.store.binding(tenant.name)
    files = gate_files(runtime)
    validation = files.validation(tenant.name)
    gates = files.gates_for_tenant(tenant.name)
    current = _previous(binding, tenant)
    active_gate = gates.get(current["adapter_id"]) if current and current["adapter_id"] else None
    return {
        "tenant": tenant.name,
        "collection": runtime.collection_for(tenant),
        "default_adapter": tenant.default_adapter,
        "active": _event(binding.active) if binding.active is not None else None,
        "served": _served(runtime, tenant.name),
        "history": [_event(e) for e in binding.history],
        "validation": validation.summary() if validation is not None else None,
        "gate": active_gate.model_dump(mode="json") if active_gate is not None else None,
        "gates": {a: r.model_dump(mode="json") for a, r in gates.items()},
    }


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's active adapter in the store, what this replica serves, and the history."""
    found = admin.runtime.tenants.tenants.get(tenant)
    if found is None:
        raise APIError(404, "tenant_not_found", f"unknown tenant {tenant!r}", {"tenant": tenant})
    return await to_thread.run_sync(lambda: _tenant_info(admin.runtime, found))


# -- validation sets (the quality gate's data) -------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large("the validation set", limit)
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise _too_large("the validation set", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _set_validation(admin: Admin, tenant_name: str, body: bytes) -> dict[str, Any]:
    tenant = _tenant(admin, tenant_name, "set_validation")
    runtime = admin.runtime
    files = gate_files(runtime)
    before = files.validation(tenant.name)

    def refused(e: APIError) -> APIError:
        admin.record(
            "set_validation",
            tenant=tenant.name,
            before=before.summary() if before else None,
            after=before.summary() if before else None,
            outcome="refused",
            reasons=[e.message],
        )
        return e

    try:
        pairs = parse_validation(
            body, runtime.settings.gate_max_queries, runtime.settings.max_input_chars
        )
    except APIError as e:
        raise refused(e) from None
    total = len({d for p in pairs for d in p.positive_ids})
    found = known_ids(runtime, tenant, pairs)
    if found == 0:
        raise refused(
            APIError(
                422,
                "validation_ids_unknown",
                f"none of the {total} positive document ids is in tenant {tenant.name!r}'s "
                f"collection {runtime.collection_for(tenant)!r} (ids are what /search answers: "
                + (
                    f"the {key!r} payload key"
                    if (key := runtime.target_for(tenant).id_key)
                    else "point ids"
                )
                + ")",
                {"total_ids": total, "found_ids": 0},
            )
        )
    vs = new_validation_set(tenant.name, pairs, admin.actor)
    files.save_validation(vs)
    admin.record(
        "set_validation",
        tenant=tenant.name,
        before=before.summary() if before else None,
        after=vs.summary(),
    )
    log.info("admin %s set the validation set of %s: %s", admin.actor, tenant.name, vs.summary())
    return {
        "tenant": tenant.name,
        "validation": vs.summary(),
        "found_ids": found,
        "total_ids": total,
    }


@router.put("/tenants/{tenant}/validation")
async def set_validation(tenant: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """Store the tenant's validation set (pairs jsonl, or a JSON list): the gate's data."""
    body = await _read_body(request, MAX_VALIDATION_BYTES)
    return await to_thread.run_sync(lambda: _set_validation(admin, tenant, body))


def _no_validation(tenant: str) -> APIError:
    return APIError(
        404,
        "validation_set_not_found",
        f"tenant {tenant!r} has no validation set",
        {"tenant": tenant},
    )


def _get_validation(runtime: Runtime, tenant: Tenant) -> dict[str, Any]:
    vs = gate_files(runtime).validation(tenant.name)
    if vs is None:
        raise _no_validation(tenant.name)
    return {
        "tenant": tenant.name,
        "validation": vs.summary(),
        "pairs": [p.model_dump(mode="json") for p in vs.pairs],
    }


@router.get("/tenants/{tenant}/validation")
async def get_validation(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's validation set and its summary."""
    found = admin.runtime.tenants.tenants.get(tenant)
    if found is None:
        raise APIError(404, "tenant_not_found", f"unknown tenant {tenant!r}", {"tenant": tenant})
    return await to_thread.run_sync(lambda: _get_validation(admin.runtime, found))


def _delete_validation(admin: Admin, tenant_name: str) -> None:
    tenant = _tenant(admin, tenant_name, "delete_validation")
    files = gate_files(admin.runtime)
    before = files.validation(tenant.name)
    if before is None or not files.delete_validation(tenant.name):
        reason = f"tenant {tenant.name!r} has no validation set"
        admin.record("delete_validation", tenant=tenant.name, outcome="refused", reasons=[reason])
        raise _no_validation(tenant.name)
    admin.record("delete_validation", tenant=tenant.name, before=before.summary())


@router.delete("/tenants/{tenant}/validation", status_code=204)
async def delete_validation(tenant: str, admin: AdminDep) -> Response:
    """Remove the tenant's validation set (activations are then not gated)."""
    await to_thread.run_sync(lambda: _delete_validation(admin, tenant))
    return Response(status_code=204)
