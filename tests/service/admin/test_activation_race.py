"""An adapter deleted by another replica between an activation's validation and its bind: the
store refuses the bind under its lock (adapters/store.py), and the admin API answers 404 with
the refusal audited, never a 500 and never a binding to a deleted adapter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from adapters.folder import FolderStore
from tests.conftest import admin_headers, assert_error, make_linear


def test_a_delete_between_validation_and_bind_is_a_404(
    start_admin: Callable[..., TestClient],
    store: FolderStore,
    adapters_bound: dict[str, str],
    query_encoder,
    document_encoder,
    audit_lines,
    monkeypatch: pytest.MonkeyPatch,
):
    client = start_admin(adapter_store=store.root)
    candidate = store.put(*make_linear(query_encoder, document_encoder, 11))
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    real = runtime.store.activate

    def deleted_meanwhile(tenant, adapter_id, actor=None):
        FolderStore(store.root).delete(adapter_id)  # another replica, same store
        return real(tenant, adapter_id, actor=actor)

    monkeypatch.setattr(runtime.store, "activate", deleted_meanwhile)
    r = client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": candidate.id}, headers=admin_headers()
    )
    assert_error(r, 404, "adapter_not_found")
    assert store.binding("acme").active.adapter_id == adapters_bound["acme"]
    refused = [x for x in audit_lines() if x.get("outcome") == "refused"]
    assert refused and "deleted" in refused[-1]["reasons"][0]
