"""Move a folder of the old embedded default (qdrant-client's local mode) onto Qdrant Edge.

Every collection is copied as it is (ids, dense and sparse vectors, payloads, metadata), so
nothing is re-encoded and a collection LangChain or LlamaIndex wrote keeps its layout. The
copy is built beside the folder and swapped in by two renames; the old folder is kept as
`<folder>.local-mode` until the user deletes it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.search.client_backend import ClientBackend
from service.search.edge_backend import HnswSettings
from service.search.embedded_folder import is_legacy
from service.search.qdrant_gateway import QdrantGateway


@dataclass(frozen=True)
class Migrated:
    collection: str
    points: int
    indexed_fields: tuple[str, ...]


def migrate_folder(
    folder: Path,
    *,
    tenant_fields: set[str] | frozenset[str] = frozenset({"tenant"}),
    hnsw: HnswSettings | None = None,
    progress: bool = True,
    page: int = 512,
) -> list[Migrated]:
    """Copy every collection of the local-mode `folder` into Edge, then swap the folders.

    Each of `tenant_fields` (the fields the tenants file scopes by) that a collection's points
    carry gets Qdrant's keyword index (is_tenant): local mode ignored payload indexes, so
    there are none to copy, and a field scope without one is refused as on a server."""
    folder = Path(folder)
    if not is_legacy(folder):
        raise ValueError(f"{folder} is not a folder of qdrant-client's local mode")
    staging = folder.with_name(folder.name + ".edge-staging")
    backup = folder.with_name(folder.name + ".local-mode")
    if backup.exists():
        raise ValueError(f"{backup} exists (an earlier migration's backup): move it away first")
    shutil.rmtree(staging, ignore_errors=True)  # a run that stopped half-way
    source = QdrantGateway(backend=ClientBackend.local_mode(str(folder)))
    target = QdrantGateway(path=str(staging), hnsw=hnsw, in_process=True)
    done = []
    try:
        client = source.backend.client  # type: ignore[attr-defined]
        for c in client.get_collections().collections:
            done.append(copy_collection(source, target, c.name, tenant_fields, progress, page))
    finally:
        source.close()
        target.close()
    folder.rename(backup)
    staging.rename(folder)
    return done


def copy_collection(
    source: QdrantGateway,
    target: QdrantGateway,
    name: str,
    tenant_fields: set[str] | frozenset[str] = frozenset({"tenant"}),
    progress: bool = False,
    page: int = 512,
) -> Migrated:
    """One collection, as it is, from any engine to any other (the same ids and vectors)."""
    info = source.collection_info(name)
    total = source.count(name)
    sample = next(iter(source.scroll(name, page=1)), None)
    fields = sorted(f for f in tenant_fields if sample is not None and f in (sample.payload or {}))
    target.create_collection(
        name,
        info.vectors,
        info.metadata,
        sparse={n: n in info.sparse_idf for n in info.sparse},
    )
    for field in fields:
        target.index_tenant_field(name, field)
    batch = []
    with tqdm(total=total, unit="pt", desc=f"copy {name}", disable=not progress) as bar:
        for record in source.scroll(name, page=page, with_vectors=True):
            batch.append(_point(record))
            if len(batch) == page:
                target.upsert(name, batch)
                bar.update(len(batch))
                batch = []
        if batch:
            target.upsert(name, batch)
            bar.update(len(batch))
    target.build_index(name, progress=progress)
    copied = target.count(name)
    if copied != total:
        raise RuntimeError(f"collection {name!r}: copied {copied} of {total} points")
    return Migrated(name, copied, tuple(fields))


def _point(record: object) -> object:
    from qdrant_client import models

    assert isinstance(record, models.Record)
    return models.PointStruct(id=record.id, vector=record.vector or {}, payload=record.payload)
