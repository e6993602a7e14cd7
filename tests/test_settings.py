"""Settings and tenants: env parsing, documentation, key resolution."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from encoders import EncoderSpec
from service.bindings.tenants import Tenant, TenantRegistry, hash_key
from service.ops.settings import Settings

SETTINGS_DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_every_setting_is_in_the_settings_table():
    text = SETTINGS_DOC.read_text()
    documented = set(re.findall(r"^\| `(QUERYLIFT_[A-Z_]+?)(?:__<FIELD>)?` \|", text, re.M))
    expected = {f"QUERYLIFT_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
    fields = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    assert {f.upper() for f in EncoderSpec.model_fields} <= fields


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
