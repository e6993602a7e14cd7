"""Admin: adapter uploads (multipart, capped before the body is read), list, show, delete."""

from __future__ import annotations

import logging
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from adapters import CheckpointError
from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE
from service.admin.context import (
    Admin,
    AdminDep,
    adapter_exists,
    adapter_not_found,
    adapter_users,
    read_manifest,
    store_write,
    too_large,
)
from service.evaluation.records import gate_files
from service.http.errors import APIError
from service.http.limits import capped, check_declared, declared_length
from service.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])


MAX_TENSOR_BYTES = 512 << 20  # adapter.safetensors
MAX_MANIFEST_BYTES = 1 << 20  # manifest.json
_MULTIPART_OVERHEAD = 64 << 10  # boundaries and part headers


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


async def _read_upload(request: Request) -> tuple[bytes, bytes]:
    """The two parts of a multipart upload, read only after auth and under size caps."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the parts {TENSORS_FILE!r} and {MANIFEST_FILE!r}",
        )
    cap = MAX_TENSOR_BYTES + MAX_MANIFEST_BYTES + _MULTIPART_OVERHEAD
    over_cap = lambda: too_large("the upload", cap)  # noqa: E731
    check_declared(declared_length(request.headers.raw), cap, over_cap)
    parser = MultiPartParser(
        request.headers,
        capped(request.stream(), cap, over_cap),
        max_files=2,
        max_fields=2,
        max_part_size=MAX_MANIFEST_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "maximum size" in e.message:
            raise too_large("a form field", MAX_MANIFEST_BYTES) from None
        raise APIError(400, "invalid_multipart", f"cannot parse the upload: {e.message}") from None
    try:
        parts: dict[str, bytes] = {}
        for name, limit in ((TENSORS_FILE, MAX_TENSOR_BYTES), (MANIFEST_FILE, MAX_MANIFEST_BYTES)):
            value = form.get(name)
            if value is None:
                continue
            if isinstance(value, UploadFile):
                if value.size is not None and value.size > limit:
                    raise too_large(name, limit)
                data = await value.read(limit + 1)
            else:
                data = value.encode()
            if len(data) > limit:
                raise too_large(name, limit)
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


def _upload(admin: Admin, tensor_bytes: bytes, manifest_bytes: bytes) -> dict[str, Any]:
    store = admin.runtime.store
    before = set(store.ids())
    try:
        with store_write(admin, "upload"):
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
    users = adapter_users(runtime)
    rows = []
    for adapter_id in runtime.store.ids():
        row: dict[str, Any] = {"id": adapter_id, "active_for": users.get(adapter_id, [])}
        try:
            m = read_manifest(runtime, adapter_id)
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
        manifest = read_manifest(runtime, adapter_id)
    except KeyError:
        raise adapter_not_found(adapter_id) from None
    except (OSError, ValidationError) as e:
        raise APIError(
            409, "adapter_damaged", f"adapter {adapter_id!r}: manifest unreadable ({e})"
        ) from None
    gates = gate_files(runtime.store).gates_for_adapter(adapter_id)
    return {
        "id": adapter_id,
        "manifest": manifest.model_dump(mode="json"),
        "active_for": adapter_users(runtime).get(adapter_id, []),
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
        if not adapter_exists(runtime, adapter_id):
            reason = f"no adapter {adapter_id!r} in the store"
            admin.record("delete", adapter_id=adapter_id[:128], outcome="refused", reasons=[reason])
            raise adapter_not_found(adapter_id)
        users = adapter_users(runtime).get(adapter_id, [])
        if users:  # bound in the store, or served here as a tenant's default adapter
            raise in_use(users)
        try:
            runtime.store.delete(adapter_id)
        except KeyError:
            raise adapter_not_found(adapter_id) from None
        except ValueError:  # bound by another replica's admin call meanwhile
            raise in_use(runtime.store.bound().get(adapter_id, [])) from None
        runtime.adapters.discard(adapter_id)
        gate_files(runtime.store).drop_adapter(adapter_id)
        admin.record("delete", adapter_id=adapter_id, before={"adapter_id": adapter_id})
    log.info("admin %s deleted adapter %s", admin.actor, adapter_id)


@router.delete("/adapters/{adapter_id}", status_code=204)
async def delete_adapter(adapter_id: str, admin: AdminDep) -> Response:
    """Remove an adapter version (409 while a tenant has it active)."""
    await to_thread.run_sync(lambda: _delete(admin, adapter_id))
    return Response(status_code=204)
