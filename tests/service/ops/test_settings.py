"""Settings and tenants: env parsing, documentation, key resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders import EncoderSpec
from querylift import settings_doc
from service.bindings.tenants import Tenant, TenantRegistry, hash_key
from service.ops.settings import Settings
from tests.conftest import REPO

SETTINGS_DOC = REPO / "docs" / "settings.md"


def test_every_setting_and_encoder_field_has_a_description():
    """The generated tables take their meaning column from these; an empty one is a gap."""
    fields = {**Settings.model_fields, **EncoderSpec.model_fields}
    assert [name for name, f in fields.items() if not f.description] == []


def test_the_settings_tables_are_the_generated_ones():
    """docs/settings.md's marked blocks equal what querylift/settings_doc.py renders."""
    current = settings_doc.extract(SETTINGS_DOC.read_text())
    for name, generated in settings_doc.blocks().items():
        assert current[name] == generated, (
            f"docs/settings.md block {name!r} is stale: run `{settings_doc.REGENERATE}` "
            "in the repository root"
        )


def test_nested_encoder_override_keeps_the_other_defaults(monkeypatch):
    monkeypatch.setenv("QUERYLIFT_QUERY_ENCODER__PATH", "/srv/models/q")
    monkeypatch.setenv("QUERYLIFT_QUERY_ENCODER__POOLING", "last")
    monkeypatch.setenv("QUERYLIFT_MAX_INPUTS", "7")
    s = Settings()
    assert s.query_encoder.path == "/srv/models/q"
    assert s.query_encoder.pooling == "last"
    assert s.query_encoder.name == "all-mpnet-base-v2"
    assert s.document_encoder.name == "all-MiniLM-L6-v2"
    assert s.max_inputs == 7


def test_invalid_setting_is_refused(monkeypatch):
    monkeypatch.setenv("QUERYLIFT_MAX_INPUTS", "0")
    with pytest.raises(ValueError, match="max_inputs"):
        Settings()


def test_tenant_keys_resolve_by_hash_only(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": "a", "api_keys_sha256": [hash_key("ka"), hash_key("ka2")]},
                    {"name": "b", "api_keys_sha256": [hash_key("kb")], "tenant_value": "bee"},
                ]
            }
        )
    )
    reg = TenantRegistry.from_file(path)
    assert not reg.dev_mode
    assert reg.resolve("ka").name == "a"
    assert reg.resolve("ka2").name == "a"
    assert reg.resolve("kb").value == "bee"
    assert reg.resolve("nope") is None
    assert reg.resolve(None) is None
    assert reg.resolve("") is None
    assert "ka" not in path.read_text()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"tenants": [{"name": "a", "api_keys_sha256": ["short"]}]}),
        json.dumps({"tenants": [{"name": "../etc", "api_keys_sha256": []}]}),
        json.dumps({"tenants": [{"name": "a", "unknown": 1}]}),
        json.dumps({"tenants": [{"name": "a"}, {"name": "a"}]}),
    ],
)
def test_bad_tenants_file_is_refused_with_its_path(tmp_path: Path, content: str):
    path = tmp_path / "tenants.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="tenants"):
        TenantRegistry.from_file(path)


def test_development_mode_is_loud_and_single_tenant(caplog):
    reg = TenantRegistry.development("default")
    assert reg.dev_mode
    assert reg.resolve(None) == Tenant(name="default")
    assert reg.resolve("anything").name == "default"
    assert "DEVELOPMENT MODE" in caplog.text
