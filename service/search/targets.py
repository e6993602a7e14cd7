"""Where a tenant's /search goes: the collection, the vector, how the tenant is scoped in it,
and where ids and text live in its payloads. Collections are the app's, not querylift's.

An app already has its collection (LangChain's `QdrantVectorStore`, LlamaIndex's, its own
code), so nothing about its layout is assumed: each tenant names it in the tenants file, with
the settings as defaults. Two scopes keep isolation absolute:

- `field`: the tenant's points carry `tenant_field == tenant_value`; every search ANDs that
  condition (the querylift layout, and a shared collection with a tenant key);
- `collection`: the tenant owns the whole collection, so no filter is needed, and the tenants
  file is refused if any other tenant can reach that collection.

`inspect_target` says, in words, why a target cannot serve (no collection, no such vector,
the wrong size or distance, no point with the tenant's value, no tenant index on a server);
/readyz, /search and `querylift doctor` all report its findings.

A collection may hold a Matryoshka prefix of the document model's vectors (the first N values,
renormalised): `querylift index --dim N` records N in the collection's metadata; for a
collection made by other code a tenant declares it (`dim`, or QUERYLIFT_VECTOR_DIM). The
service then cuts every vector it serves that tenant the same way (`served_dim`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from service.bindings.tenants import Tenant
    from service.ops.settings import Settings

Scope = Literal["field", "collection"]
# Distances under which unit query vectors rank documents as the index meant: cosine; dot
# and euclidean agree with it where the documents are unit length (checked, see below).
RANKING_DISTANCES = ("Cosine", "Dot", "Euclid")
# payload keys that hold a document's text, in the layouts we know (first match wins)
TEXT_KEYS = ("text", "page_content", "_node_content", "content", "document")
NORM_SAMPLE = 16
NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class SearchTarget:
    """One tenant's resolved search target (tenants file over settings)."""

    tenant: str
    collection: str
    vector: str | None  # None: the collection's single unnamed vector
    scope: Scope
    tenant_field: str | None  # field scope only
    tenant_value: str | None  # field scope only
    id_key: str | None  # None: the point id; else this payload key (point id where absent)
    text_key: str | None  # None: the first of TEXT_KEYS a payload has
    # declared size of the collection's vectors (the tenant's `dim`, else QUERYLIFT_VECTOR_DIM);
    # None: what `querylift index` recorded in the collection, else the document encoder's dim
    dim: int | None = None

    def describe(self) -> str:
        vec = "unnamed vector" if self.vector is None else f"vector {self.vector!r}"
        scope = (
            "whole collection"
            if self.scope == "collection"
            else f"{self.tenant_field} == {self.tenant_value!r}"
        )
        size = "" if self.dim is None else f", dim {self.dim}"
        return f"collection {self.collection!r}, {vec}, {scope}{size}"

    def served_dim(self, full_dim: int, metadata: Mapping[str, Any] | None) -> int:
        """Size of the vectors this tenant is served: declared, else recorded by `querylift
        index` in the collection's `metadata`, else `full_dim` (the document encoder's). Below
        `full_dim` every served vector is that prefix, renormalised."""
        if self.dim is not None:
            return self.dim
        recorded = recorded_dim(metadata)
        return recorded if recorded is not None and recorded < full_dim else full_dim

    def size_problem(self, size: int, full_dim: int, served: int) -> str | None:
        """Why a collection of `size`-d vectors cannot take this tenant's `served`-d ones
        (None: it can); a smaller collection with no prefix on record says how to declare it."""
        if self.dim is not None and self.dim > full_dim:
            return (
                f"the declared dim {self.dim} is larger than the document encoder's "
                f"{full_dim}-d vectors"
            )
        if size == served:
            return None
        said = f"its vectors are {size}-d; the served vectors are {served}-d"
        if self.dim is not None:
            return f"{said} (the declared dim)"
        if size < full_dim and served == full_dim:
            return (
                f"{said}: if it holds a Matryoshka prefix of the document model's vectors, "
                f"declare it with `dim: {size}` for this tenant in the tenants file (or "
                f"QUERYLIFT_VECTOR_DIM={size})"
            )
        return said

    def doc_id(self, point_id: Any, payload: dict[str, Any] | None) -> str:
        if self.id_key is not None and payload and self.id_key in payload:
            return str(payload[self.id_key])
        return str(point_id)

    def text(self, payload: dict[str, Any] | None) -> str | None:
        """The document's text in a payload: `text_key`, or the first known key; LlamaIndex
        keeps it inside the JSON string `_node_content`."""
        if not payload:
            return None
        keys: Iterable[str] = (self.text_key,) if self.text_key else TEXT_KEYS
        for key in keys:
            value = payload.get(key)
            if key == "_node_content" and isinstance(value, str):
                try:
                    value = json.loads(value).get("text")
                except (ValueError, AttributeError):
                    value = None
            if isinstance(value, str):
                return value
        return None


def recorded_dim(metadata: Mapping[str, Any] | None) -> int | None:
    """The vector size `querylift index` recorded in a collection's metadata, if any."""
    ours = (metadata or {}).get("querylift")
    dim = ours.get("dim") if isinstance(ours, Mapping) else None
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def check_exclusive(targets: list[SearchTarget]) -> None:
    """Refuse a tenants file in which one tenant could see another's points."""
    by_collection: dict[str, list[SearchTarget]] = {}
    for t in targets:
        by_collection.setdefault(t.collection, []).append(t)
    for name, group in by_collection.items():
        owners = [t.tenant for t in group if t.scope == "collection"]
        if owners and len(group) > 1:
            others = ", ".join(repr(o) for o in sorted({t.tenant for t in group} - {owners[0]}))
            raise ValueError(
                f"tenant {owners[0]!r} owns collection {name!r} (scope 'collection'), but "
                f"{others} also search it: a collection-scoped tenant must be the collection's "
                "only tenant"
            )
        fields = {t.tenant_field for t in group}
        if len(fields) > 1:
            raise ValueError(
                f"collection {name!r}: its tenants use different tenant fields "
                f"{sorted(f or '' for f in fields)}; one collection, one tenant field"
            )
        values: dict[str | None, str] = {}
        for t in group:
            if t.tenant_value in values:
                raise ValueError(
                    f"tenants {values[t.tenant_value]!r} and {t.tenant!r} share the tenant "
                    f"value {t.tenant_value!r} in collection {name!r}"
                )
            values[t.tenant_value] = t.tenant


@dataclass
class Inspection:
    """What one target's check found. `problems` mean it cannot serve as configured (the
    replica is not ready); `warnings` are states that indexing fixes (no collection yet, a
    tenant with no documents yet), reported without taking the replica out of rotation;
    `notes` are advice."""

    target: SearchTarget
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    points: int | None = None  # points the tenant can see
    collection_points: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        head = f"tenant {self.target.tenant!r}: {self.target.describe()}"
        said = self.problems or self.warnings
        return head + (": " + "; ".join(said) if said else ": ok")


def settle(found: list[Inspection]) -> list[Inspection]:
    """Judge targets that see no point, collection by collection: when the collection has
    points but none of its field-scoped tenants matches any, the tenant field or values are
    wrong (a problem: every search would come back empty); when others match, this tenant
    just has no documents yet (a warning)."""
    by_collection: dict[str, list[Inspection]] = {}
    for f in found:
        by_collection.setdefault(f.target.collection, []).append(f)
    for group in by_collection.values():
        nobody = all(not f.points for f in group if f.points is not None)
        for f in group:
            if f.points is None or f.points > 0:
                continue
            t = f.target
            if not f.collection_points:
                f.warnings.append("the collection holds no point yet")
            elif t.scope == "field" and nobody:
                f.problems.append(
                    f"none of the collection's {f.collection_points} points has payload "
                    f"{t.tenant_field} == {t.tenant_value!r}: set the tenant's `tenant_field` / "
                    "`tenant_value`, or scope 'collection' if it owns the collection"
                )
            else:
                f.warnings.append(
                    f"no point has payload {t.tenant_field} == {t.tenant_value!r} yet"
                )
    return found


def resolve_target(tenant: Tenant, settings: Settings) -> SearchTarget:
    """The tenant's own fields over the settings' defaults."""
    scope: Scope = tenant.scope or settings.tenant_scope
    source = tenant.id_source or settings.id_source
    return SearchTarget(
        tenant=tenant.name,
        collection=tenant.collection or settings.collection,
        vector=tenant.vector if tenant.vector is not None else settings.vector_name,
        scope=scope,
        tenant_field=(tenant.tenant_field or settings.tenant_field) if scope == "field" else None,
        tenant_value=tenant.value if scope == "field" else None,
        id_key=None if source == "point" else (tenant.id_key or settings.id_key),
        text_key=tenant.text_key or settings.text_key,
        dim=tenant.dim if tenant.dim is not None else settings.vector_dim,
    )


def resolve_targets(tenants: Iterable[Tenant], settings: Settings) -> dict[str, SearchTarget]:
    """Every tenant's target; ValueError (at start-up) if one tenant could see another's."""
    targets = {t.name: resolve_target(t, settings) for t in tenants}
    check_exclusive(list(targets.values()))
    return targets
