"""Tenants and API-key resolution. Keys are stored and compared only as sha256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapters.names import SAFE_NAME_PATTERN

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=rf"^{SAFE_NAME_PATTERN}$")
    api_keys_sha256: tuple[str, ...] = Field(default=(), description="sha256 hex of each key")
    collection: str | None = Field(default=None, description="defaults to settings.collection")
    tenant_value: str | None = Field(default=None, description="payload value; defaults to name")
    # the search target: unset fields take the settings' defaults (service/search/targets.py)
    vector: str | None = Field(
        default=None, description="named dense vector; unset = QUERYLIFT_VECTOR_NAME"
    )
    scope: Literal["field", "collection"] | None = Field(
        default=None,
        description="`field`: points carry tenant_field == tenant_value; `collection`: the "
        "tenant owns the whole collection (no filter); unset = QUERYLIFT_TENANT_SCOPE",
    )
    tenant_field: str | None = Field(
        default=None, description="payload key of the tenant value; unset = QUERYLIFT_TENANT_FIELD"
    )
    id_source: Literal["payload", "point"] | None = Field(
        default=None,
        description="document ids from a payload key (`id_key`) or the point id; "
        "unset = QUERYLIFT_ID_SOURCE",
    )
    id_key: str | None = Field(default=None, description="unset = QUERYLIFT_ID_KEY")
    text_key: str | None = Field(
        default=None, description="payload key of the text; unset = QUERYLIFT_TEXT_KEY"
    )
    dim: int | None = Field(
        default=None,
        gt=0,
        description="size of the collection's vectors when it holds a Matryoshka prefix of "
        "the document model's (every served vector is cut to it and renormalised); unset = "
        "QUERYLIFT_VECTOR_DIM, else what `querylift index --dim` recorded, else the full size",
    )
    default_adapter: str | None = Field(
        default=None, description="adapter id used until an admin binds another"
    )
    rate_limit_rps: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="requests per second; unset = QUERYLIFT_RATE_LIMIT_RPS, 0 = unlimited",
    )
    rate_limit_burst: int | None = Field(
        default=None, gt=0, description="bucket size; unset = the default burst"
    )
    query_log: bool | None = Field(
        default=None,
        description="record this tenant's query texts (export, label-free gate); unset = "
        "QUERYLIFT_QUERY_LOG",
    )

    @field_validator("api_keys_sha256")
    @classmethod
    def _hex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError("api_keys_sha256 entries must be 64 lowercase hex chars")
        return v

    @property
    def value(self) -> str:
        return self.tenant_value or self.name


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: list[Tenant]


class TenantRegistry:
    """Maps a bearer key to its tenant; in dev mode every request is the one dev tenant."""

    def __init__(self, tenants: list[Tenant], dev_mode: bool) -> None:
        names = [t.name for t in tenants]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tenant names in tenants file")
        # isolation rests on these being unique: one key names one tenant, and one tenant
        # value in a collection belongs to one tenant (unset collection = the default one)
        hashes = [h for t in tenants for h in t.api_keys_sha256]
        if len(set(hashes)) != len(hashes):
            raise ValueError("an API key hash is listed twice in the tenants file")
        scopes = [(t.collection, t.value) for t in tenants]
        if len(set(scopes)) != len(scopes):
            raise ValueError("two tenants share a tenant_value in the same collection")
        self.dev_mode = dev_mode
        self.tenants = {t.name: t for t in tenants}
        self._by_hash: list[tuple[bytes, Tenant]] = [
            (bytes.fromhex(h), t) for t in tenants for h in t.api_keys_sha256
        ]

    @classmethod
    def from_file(cls, path: Path) -> TenantRegistry:
        try:
            parsed = TenantsFile.model_validate(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, ValidationError) as e:
            raise ValueError(f"tenants file {path}: {e}") from e
        return cls(parsed.tenants, dev_mode=False)

    @classmethod
    def development(cls, name: str) -> TenantRegistry:
        log.warning(
            "DEVELOPMENT MODE: no tenants file configured (QUERYLIFT_TENANTS_FILE); every "
            "request is served as tenant %r WITHOUT authentication. Never expose this.",
            name,
        )
        return cls([Tenant(name=name)], dev_mode=True)

    def resolve(self, key: str | None) -> Tenant | None:
        if self.dev_mode:
            return next(iter(self.tenants.values()))
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found: Tenant | None = None
        for h, t in self._by_hash:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(h, digest):
                found = t
        return found
