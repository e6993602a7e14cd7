"""Every `/admin` route needs the admin token (issue 23, point 8): the routes are walked from
the real app (service.app.create_app), not listed by hand, so a route added later is checked
without anyone remembering to add it here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.conftest import ADMIN, admin_headers, assert_error, auth

PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def api_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(full path, route) of every APIRoute, inside included routers too: FastAPI >= 0.165
    keeps an included router as one entry (`original_router`), older ones flatten it."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from api_routes(inner.routes, prefix + getattr(context, "prefix", ""))


def admin_calls(app: FastAPI, adapter_id: str) -> list[tuple[str, str]]:
    """(method, path) of every /admin route, path parameters filled with plausible values:
    a real tenant, a real adapter id."""
    plausible = {"tenant": "acme", "adapter_id": adapter_id}
    calls = set()
    for path, route in api_routes(app.routes):
        if not path.startswith("/admin"):
            continue
        filled = PARAM.sub(lambda m: plausible.get(m.group(1), "x1"), path)
        calls.update((method, filled) for method in route.methods - {"HEAD", "OPTIONS"})
    return sorted(calls)


@pytest.fixture
def calls(start_admin: Callable[..., TestClient], adapters_bound: dict[str, str]):
    client = start_admin()
    found = admin_calls(client.app, adapters_bound["acme"])
    # the walk sees what the app serves: every /admin path of its OpenAPI schema, and more
    # than a few (a walk that misses included routers would find none)
    schema = {p for p in client.app.openapi()["paths"] if p.startswith("/admin")}
    walked = {p for p, _ in api_routes(client.app.routes) if p.startswith("/admin")}
    assert schema <= walked, schema - walked
    assert len(found) >= 15, found
    assert ("PUT", "/admin/tenants/acme/adapter") in found
    assert ("POST", "/admin/adapters") in found
    return client, found


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("acme"),  # a tenant's API key never works on /admin
        {"Authorization": f"Bearer {ADMIN}x"},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["no-token", "tenant-key", "wrong-token", "basic", "empty"],
)
def test_every_admin_route_is_401_without_the_admin_token(
    calls: tuple[TestClient, list[tuple[str, str]]],
    headers: dict[str, str],
    adapters_bound: dict[str, str],
    audit_lines: Callable[[], list[dict]],
) -> None:
    client, found = calls
    for method, path in found:
        for body in (None, {"adapter_id": None}):  # no body, and a plausible JSON one
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer", (method, path)
    # nothing was done: no audit line, acme still served by its adapter
    assert audit_lines() == []
    state = client.get("/admin/tenants/acme", headers=admin_headers()).json()
    assert state["served"] == {"adapter_id": adapters_bound["acme"], "version": 1}


def test_every_admin_route_is_404_while_the_admin_api_is_off(
    make_app: Callable[..., FastAPI], adapters_bound: dict[str, str]
) -> None:
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        assert client.app.state.settings.admin_token is None
        found = admin_calls(client.app, adapters_bound["acme"])
        assert len(found) >= 15
        for method, path in found:
            r = client.request(method, path, headers=admin_headers())
            err = assert_error(r, 404, "not_found")
            assert "QUERYLIFT_ADMIN_TOKEN" in err["message"], (method, path)
