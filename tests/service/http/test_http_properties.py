"""Property-based tests of the HTTP surface: no input gives a 500 or hangs (issue 7).

Schemathesis generates requests (schema-conforming and not) for every operation of the app's
own OpenAPI schema; hypothesis adds what a schema cannot describe: raw bytes, broken JSON,
lone surrogates, huge numbers, deep nesting, odd headers, and Qdrant-shaped filters, the last
also checked for tenant isolation. Fixed budget: derandomized, bounded examples, a deadline,
and a timeout on every request.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from adapters.folder import FolderStore
from encoders import Encoder
from service.app import create_app
from service.ops.settings import Settings
from tests.conftest import (
    ADMIN,
    DOCS,
    KEYS,
    bind_random_adapters,
    docs_tenants,
    shared_collection,
    tiny_settings,
    write_tenants,
)
from training.data import Document

REQUEST_TIMEOUT_S = 15.0  # far above any answer here: past it the request hung
BUDGET = settings(
    max_examples=25,
    deadline=None,  # the per-request timeout bounds each example instead
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# the schema only: building the app touches nothing (the lifespan is what loads things)
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, query_encoder: Encoder, document_encoder: Encoder
) -> Iterator[TestClient]:
    """One app for the module: acme and globex share collection `docs`, each with its own
    adapter; initech has none; the admin API is on."""
    root = tmp_path_factory.mktemp("props")
    tenants = write_tenants(root / "tenants.json", docs_tenants())
    store = FolderStore(root / "adapters")
    bind_random_adapters(store, query_encoder, document_encoder)
    gw = shared_collection(
        document_encoder, [Document("g1", "globex secret malaria plan", {"topic": "malaria"})]
    )
    s = tiny_settings(
        root,
        tenants,
        store.root,
        max_body_bytes=256 * 1024,
        admin_token=SecretStr(ADMIN),
        audit_log=root / "audit.log",
        request_timeout_s=5.0,
        access_log=False,
    )
    app = create_app(s, query_encoder=query_encoder, document_encoder=document_encoder, gateway=gw)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    gw.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as ex:
        yield ex


def send(
    api: TestClient, pool: ThreadPoolExecutor, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """One request under a timeout: an answer that does not come in time is a hang."""
    future = pool.submit(api.request, method, url, **kwargs)
    return future.result(timeout=REQUEST_TIMEOUT_S)


def check(r: httpx.Response) -> None:
    """Never a 5xx the client did not cause; every 4xx in the one error shape; an id always."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers.get("x-request-id")
    if 400 <= r.status_code < 500:
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "details"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def auth_for(path: str) -> dict[str, str]:
    token = ADMIN if path.startswith("/admin") else KEYS["acme"]
    return {"Authorization": f"Bearer {token}"}


# -- schemathesis: every operation of the OpenAPI schema --------------------------------------
@schema.parametrize()
@BUDGET
def test_no_operation_gives_a_500(case: Any, api: TestClient, pool: ThreadPoolExecutor) -> None:
    kw = case.as_transport_kwargs(base_url="http://testserver")
    kw["headers"] = {**kw.get("headers", {}), **auth_for(case.path)}
    try:  # serialised exactly as schemathesis's own transport would send it
        prepared = requests.Request(**kw).prepare()
    except (UnicodeError, TypeError, ValueError):
        reject()  # a case no HTTP client can put on the wire
    body = prepared.body
    r = send(
        api,
        pool,
        prepared.method or "GET",
        prepared.url or "",
        headers=dict(prepared.headers),
        content=body.encode() if isinstance(body, str) else body,
    )
    check(r)


# -- hypothesis: what no schema describes -----------------------------------------------------
JSON_ROUTES = ["/embed", "/v1/embeddings", "/search", "/admin/tenants/acme/adapter"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    # lone surrogates survive JSON as escapes
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "𝕥𝕖𝕟𝕒𝕟𝕥"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["input", "query", "filter", "top_k", "model", "input_type", "truncate", "instruction",
     "encoding_format", "dimensions", "user", "with_payload", "adapter_id", "adapter", "tenant"]
)  # fmt: skip
bodies = st.dictionaries(field_names | st.text(max_size=6), json_values, max_size=6)


def _dump(value: Any) -> bytes:
    # allow_nan: NaN / Infinity literals, which Python's JSON parser accepts on the way in
    return json.dumps(value, allow_nan=True).encode()


raw_bodies = st.one_of(
    bodies.map(_dump),
    json_values.map(_dump),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b'{"input": ',
            b'{"input": "\xff\xfe"}',  # not UTF-8
            b'{"query": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8 either
            b'{"input": "ok", "truncate": NaN}',
            b'{"query": "x", "top_k": 1' + b"0" * 5000 + b"}",  # more digits than Python parses
            b"[" * 5000 + b"]" * 5000,
            b'{"query": "x", "filter": ' + b'{"must": [' * 400 + b"]}" * 400 + b"}",
            b'{"input": "x", "input": ["y"]}',
            "\ufeff{}".encode(),
        ]
    ),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "", "x/y+json"]
)


@BUDGET
@given(path=st.sampled_from(JSON_ROUTES), body=raw_bodies, ctype=content_types)
def test_arbitrary_bodies_never_give_a_500(
    api: TestClient, pool: ThreadPoolExecutor, path: str, body: bytes, ctype: str
) -> None:
    headers = {**auth_for(path), **({"content-type": ctype} if ctype else {})}
    method = "PUT" if path.startswith("/admin") else "POST"
    check(send(api, pool, method, path, content=body, headers=headers))


texts = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # any code point JSON can carry
    min_size=1,
    max_size=60,
)


@BUDGET
@given(
    inputs=st.one_of(texts, st.lists(texts, min_size=1, max_size=10)),
    input_type=st.sampled_from(["query", "document"]),
    truncate=st.booleans(),
    encoding_format=st.sampled_from(["float", "base64"]),
    tenant=st.sampled_from(["acme", "initech"]),
)
def test_well_formed_requests_answer_200_or_a_4xx(
    api: TestClient,
    pool: ThreadPoolExecutor,
    inputs: str | list[str],
    input_type: str,
    truncate: bool,
    encoding_format: str,
    tenant: str,
) -> None:
    """The success paths too, with any text: emoji, controls, RTL marks, NULs, CJK, blanks."""
    n = 1 if isinstance(inputs, str) else len(inputs)
    h = {"Authorization": f"Bearer {KEYS[tenant]}"}
    calls = [
        ("/embed", {"input": inputs, "input_type": input_type, "truncate": truncate}),
        (
            "/v1/embeddings",
            {"input": inputs, "input_type": input_type, "encoding_format": encoding_format},
        ),
        ("/search", {"query": inputs if isinstance(inputs, str) else inputs[0], "top_k": 3}),
    ]
    for path, body in calls:
        r = send(api, pool, "POST", path, json=body, headers=h)
        check(r)
        if r.status_code == 200 and path != "/search":
            assert len(r.json()["data"]) == n


header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=200
)


@BUDGET
@given(
    path=st.sampled_from(["/embed", "/search", "/admin/adapters", "/healthz", "/nope"]),
    authorization=st.one_of(header_values, st.just(f"Bearer {KEYS['acme']}")),
    request_id=st.one_of(header_values, st.text(string.ascii_letters, min_size=1, max_size=300)),
)
def test_arbitrary_headers_never_give_a_500(
    api: TestClient, pool: ThreadPoolExecutor, path: str, authorization: str, request_id: str
) -> None:
    headers = {"authorization": authorization, "x-request-id": request_id}
    method = "GET" if path in ("/admin/adapters", "/healthz") else "POST"
    # latin-1: httpx encodes header values that way, as a browser or proxy could
    kwargs: dict[str, Any] = {"headers": {k: v.encode("latin-1") for k, v in headers.items()}}
    if method == "POST":
        kwargs["json"] = {"input": "x"} if path == "/embed" else {"query": "x"}
    r = send(api, pool, method, path, **kwargs)
    check(r)
    rid = r.headers["x-request-id"]
    assert rid == request_id or (rid != request_id and len(rid) == 32)


# -- Qdrant-shaped filters: never a 500, never another tenant's point ------------------------
KEYS_IN_FILTERS = st.sampled_from(
    ["tenant", "topic", "doc_id", "text", "payload.tenant", "tenant[]", "tenant.value", "TENANT",
     "tеnant", "", "a" * 300, "topic[0]", "nested[].x"]
)  # fmt: skip
match_values = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["acme", "globex", "malaria"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
)
matches = st.one_of(
    st.fixed_dictionaries({"value": match_values}),
    st.fixed_dictionaries({"any": st.lists(match_values, max_size=3)}),
    st.fixed_dictionaries({"except": st.lists(match_values, max_size=3)}),
    st.fixed_dictionaries({"text": st.text(max_size=10)}),
)
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
ranges = st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte"]), numbers, max_size=3)
point_ids = st.one_of(
    st.integers(-(2**70), 2**70), st.uuids().map(str), st.text(max_size=10), st.just("g1")
)
conditions = st.one_of(
    st.builds(lambda k, m: {"key": k, "match": m}, KEYS_IN_FILTERS, matches),
    st.builds(lambda k, r: {"key": k, "range": r}, KEYS_IN_FILTERS, ranges),
    st.builds(lambda k: {"is_empty": {"key": k}}, KEYS_IN_FILTERS),
    st.builds(lambda k: {"is_null": {"key": k}}, KEYS_IN_FILTERS),
    st.builds(lambda ids: {"has_id": ids}, st.lists(point_ids, max_size=3)),
    st.builds(
        lambda k, r: {"key": k, "values_count": r},
        KEYS_IN_FILTERS,
        st.dictionaries(st.sampled_from(["gt", "lt"]), st.integers(-5, 5), max_size=2),
    ),
    st.builds(
        lambda k, d: {"key": k, "datetime_range": d},
        KEYS_IN_FILTERS,
        st.dictionaries(st.sampled_from(["gt", "lt"]), st.text(max_size=25), max_size=2),
    ),
)
filters = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "must": st.lists(conditions, max_size=3),
            "should": st.lists(conditions, max_size=3),
            "must_not": st.lists(conditions, max_size=3),
        },
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "must": st.lists(inner | conditions, max_size=3),
                "should": st.lists(inner | conditions, max_size=3),
                "must_not": st.lists(inner | conditions, max_size=3),
                "min_should": st.fixed_dictionaries(
                    {"conditions": st.lists(conditions, max_size=2), "min_count": numbers}
                ),
            },
        ),
        st.builds(lambda k, f: {"nested": {"key": k, "filter": f}}, KEYS_IN_FILTERS, inner),
    ),
    max_leaves=8,
)


@BUDGET
@given(flt=filters, with_payload=st.booleans())
def test_filters_never_give_a_500_nor_another_tenants_point(
    api: TestClient, pool: ThreadPoolExecutor, flt: dict, with_payload: bool
) -> None:
    body = _dump(
        {"query": "malaria plan", "top_k": 100, "filter": flt, "with_payload": with_payload}
    )
    r = send(
        api,
        pool,
        "POST",
        "/search",
        content=body,
        headers={**auth_for("/search"), "content-type": "application/json"},
    )
    check(r)
    assert r.status_code in (200, 422), r.text[:500]
    if r.status_code == 200:
        results = r.json()["results"]
        assert {h["id"] for h in results} <= {d.id for d in DOCS}, results
        assert all(h["payload"] is None or "tenant" not in h["payload"] for h in results)
