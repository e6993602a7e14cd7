"""The embedded default: Qdrant's own engine in-process through qdrant-edge-py, a folder of shards.

Edge has no collections, no HTTP and one shard per folder, so the folder is laid out as

    <root>/querylift-embedded.json   what wrote it (format, engine version)
    <root>/.lock                      held by the one process that opened the folder
    <root>/collections/<name>/        one Edge shard per collection
    <root>/meta/<name>.json           the collection's metadata and its HNSW build record

Reads run concurrently (Edge's query releases the GIL); writes are serialised and belong to
offline commands (`querylift index`): Edge's update() and optimize() hold the GIL, so the
service never calls them on a large batch while it serves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import qdrant_edge as edge
from qdrant_client import models
from tqdm import tqdm

from service.search import edge_convert as conv
from service.search.backend import (
    CollectionInfo,
    CollectionNotFound,
    Offset,
    QdrantFolderInUse,
    QdrantUnavailable,
    Unsupported,
    VectorInfo,
    WithPayload,
    WithVectors,
)
from service.search.embedded_folder import MARKER, LegacyFolder, is_legacy

log = logging.getLogger(__name__)

# the child process of build_index: nothing but the engine, so it starts in a blink
_OPTIMIZE = (
    "import sys, qdrant_edge as e; s = e.EdgeShard.load(sys.argv[1]); s.optimize(); "
    "s.flush(); s.close()"
)
FORMAT = 1
_DISTANCES = {
    "Cosine": edge.Distance.Cosine,
    "Dot": edge.Distance.Dot,
    "Euclid": edge.Distance.Euclid,
    "Manhattan": edge.Distance.Manhattan,
}
# Edge's errors are plain Exceptions; these say the request was wrong, not the engine
_REFUSALS = ("Wrong input", "Bad request", "Vector dimension error", "Not existing vector name")


class EngineRefused(ValueError):
    """Edge refused the request itself (a wrong vector size or name, a bad filter)."""


@dataclass(frozen=True)
class HnswSettings:
    """Index parameters new collections get, and the search's `ef` (chosen by measured recall
    on real embeddings: bench/edge_recall.py).

    `payload_in_ram`: Edge's default keeps payloads on disk, read on first touch, and drops
    them from the page cache when the shard closes, so every start of the service reads each
    hit's text from disk again (at a million points, a search that waited on 10 such reads took
    25-56 ms, the same search 1.5-2 ms once read: bench/README.md). In RAM they load with the
    folder, as the vectors and the graph already do."""

    m: int = 32
    ef_construct: int = 200
    full_scan_threshold_kb: int = 10_000
    hnsw_ef: int = 256
    payload_in_ram: bool = True


def valid_name(name: str) -> str:
    """A collection name is a folder name here: refuse what would leave `collections/`."""
    if not name or name in {".", ".."} or any(c in name for c in "/\\\0") or len(name) > 255:
        raise Unsupported(f"collection name {name!r} is not usable as a folder name")
    return name


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: write, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EdgeBackend:
    kind = "edge"
    serialized = False
    indexes_payload = True
    exact_counts_cheap = True

    def __init__(
        self, root: str | Path, hnsw: HnswSettings | None = None, holder: str | None = None
    ) -> None:
        """`root` ":memory:": a temporary folder, removed at close (tests, throwaway runs)."""
        self._temporary = str(root) == ":memory:"
        self.root = (
            Path(tempfile.mkdtemp(prefix="querylift-edge-")) if self._temporary else Path(root)
        )
        self.hnsw = hnsw or HnswSettings()
        if is_legacy(self.root):
            raise LegacyFolder(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lockfile = self._take_lock(holder)
        if not (self.root / MARKER).exists():
            _write_json(
                self.root / MARKER,
                {
                    "format": FORMAT,
                    "engine": "qdrant-edge-py",
                    "version": version("qdrant-edge-py"),
                },
            )
        self._shards: dict[str, edge.EdgeShard] = {}
        self._open = threading.Lock()  # opening a shard, and every write
        self._search = edge.SearchParams(hnsw_ef=self.hnsw.hnsw_ef)

    def _take_lock(self, holder: str | None) -> IO[str]:
        f = (self.root / ".lock").open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise QdrantFolderInUse(str(self.root), holder) from None
        f.seek(0)
        f.truncate()
        me = f"pid {os.getpid()}: {' '.join(os.path.basename(a) for a in sys.argv[:3])}"
        f.write(f"{holder or me}\n")
        f.flush()
        return f

    # -- shards ----------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / "collections" / valid_name(name)

    def _meta_path(self, name: str) -> Path:
        return self.root / "meta" / f"{valid_name(name)}.json"

    def _shard(self, name: str) -> edge.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._open:
            if name not in self._shards:
                path = self._dir(name)
                if not (path / "edge_config.json").is_file():
                    raise CollectionNotFound(name)
                self._shards[name] = edge.EdgeShard.load(str(path))
            return self._shards[name]

    def open_warm(self) -> dict[str, float]:
        """Open every collection and read each one's vectors once, before the first search.

        The first searches of a freshly opened shard were slow until every region of its
        vectors had been read once: at a million points the first 400 filtered searches had
        p50 5 / p90 20 ms and the next 400 p50 3 / p90 4 ms (no page faults or disk reads
        either way: bench/README.md). One exact search per dense vector reads them all in a
        sequential pass (3.3 s at a million 384-d vectors), so no request pays for it.
        Returns seconds per collection."""
        took = {}
        for name in self.collections():
            t0 = time.perf_counter()
            try:
                shard = self._shard(name)
                for vname, v in (self._config(name).get("vectors") or {}).items():
                    if v.get("multivector_config"):
                        continue  # a flat probe is not a query of a multivector
                    probe = [1.0] + [0.0] * (int(v["size"]) - 1)
                    shard.query(
                        edge.QueryRequest(
                            limit=1,
                            query=edge.Query.Nearest(probe, using=vname or None),
                            with_payload=False,
                            with_vector=False,
                            params=edge.SearchParams(exact=True),
                        )
                    )
            except Exception as e:  # that collection's own calls will say what is wrong
                log.warning("embedded engine: collection %r not warmed: %s", name, e)
                continue
            took[name] = time.perf_counter() - t0
        return took

    def _config(self, name: str) -> dict[str, Any]:
        """The engine's own record of the collection (vectors, sparse vectors)."""
        config: dict[str, Any] = json.loads((self._dir(name) / "edge_config.json").read_text())
        return config

    def collections(self) -> list[str]:
        base = self.root / "collections"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "edge_config.json").is_file())

    def meta(self, name: str) -> dict[str, Any]:
        path = self._meta_path(name)
        return json.loads(path.read_text()) if path.is_file() else {}

    # -- the protocol ----------------------------------------------------------------------
    def map_error(self, op: str, e: Exception) -> QdrantUnavailable | None:
        if isinstance(e, Unsupported | EngineRefused | CollectionNotFound | LookupError):
            return None
        if type(e) is Exception:  # Edge's own failure (storage, WAL): the engine is down
            return QdrantUnavailable(op, f"embedded engine: {str(e)[:200]}")
        return None

    def ping(self) -> None:
        if not self.root.is_dir():
            raise QdrantUnavailable("ping", f"the folder {self.root} is gone")

    def describe(self, name: str) -> CollectionInfo:
        shard = self._shard(name)
        config = self._config(name)
        vectors = {
            n: VectorInfo(int(v["size"]), str(v["distance"]))
            for n, v in (config.get("vectors") or {}).items()
        }
        index = {
            key: (
                str(schema.data_type).rsplit(".", 1)[-1].lower(),
                bool(getattr(schema.params, "is_tenant", False)),
            )
            for key, schema in shard.info().payload_schema.items()
        }
        return CollectionInfo(
            name=name,
            vectors=vectors,
            metadata=dict(self.meta(name).get("metadata") or {}),
            sparse=tuple(config.get("sparse_vectors") or {}),
            sparse_idf=tuple(
                n
                for n, v in (config.get("sparse_vectors") or {}).items()
                if str((v or {}).get("modifier", "")).lower() == "idf"
            ),
            payload_index=index,
        )

    def create_collection(
        self,
        name: str,
        vectors: dict[str, VectorInfo],
        metadata: dict[str, Any],
        sparse: dict[str, bool] | None = None,
    ) -> None:
        params = {}
        for n, v in vectors.items():
            if v.distance not in _DISTANCES:
                raise Unsupported(f"distance {v.distance!r}: one of {', '.join(_DISTANCES)}")
            params[n] = edge.EdgeVectorParams(size=v.size, distance=_DISTANCES[v.distance])
        config = edge.EdgeConfig(
            vectors=params,
            sparse_vectors={
                n: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf if idf else None)
                for n, idf in (sparse or {}).items()
            }
            or None,
            hnsw_config=edge.HnswIndexConfig(
                m=self.hnsw.m,
                ef_construct=self.hnsw.ef_construct,
                full_scan_threshold=self.hnsw.full_scan_threshold_kb,
            ),
            # a segment under the same size stays plain (searched exactly) when optimised
            optimizers=edge.EdgeOptimizersConfig(
                indexing_threshold=self.hnsw.full_scan_threshold_kb
            ),
            payload_memory=edge.Memory.Cached if self.hnsw.payload_in_ram else edge.Memory.Cold,
        )
        with self._open:
            path = self._dir(name)
            if (path / "edge_config.json").exists():
                raise ValueError(f"collection {name!r} already exists")
            _write_json(self._meta_path(name), {"metadata": metadata, "hnsw": asdict(self.hnsw)})
            self._shards[name] = edge.EdgeShard.create(str(path), config)

    def create_keyword_index(self, name: str, key: str, *, is_tenant: bool) -> None:
        shard = self._shard(name)
        with self._open:
            shard.update(
                edge.UpdateOperation.create_field_index(
                    key, edge.KeywordIndexParams(is_tenant=is_tenant)
                )
            )

    def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        shard = self._shard(name)
        batch = [conv.point_in(p) for p in points]
        with self._open:
            self._edge("upsert", lambda: shard.update(edge.UpdateOperation.upsert_points(batch)))

    def build_index(self, name: str, progress: bool = False) -> dict[str, Any]:
        """Build HNSW over what was upserted, and record what was built.

        Edge's optimize() blocks and holds the GIL, so it runs in a child process on the
        closed shard (this process keeps the folder's lock): the caller's progress line keeps
        ticking and Ctrl-C still works."""
        with self._open:
            shard = self._shards.get(name) or edge.EdgeShard.load(str(self._dir(name)))
            self._shards[name] = shard
            info = shard.info()
            dims = sum(v.size for v in self.describe(name).vectors.values()) or 1
            if info.points_count * dims * 4 < self.hnsw.full_scan_threshold_kb * 1024:
                # below the indexing threshold Edge keeps one plain segment: exact search
                return self._record(name, shard, None)
            del self._shards[name]
            shard.close()
            t0 = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, "-c", _OPTIMIZE, str(self._dir(name))],
                stderr=subprocess.PIPE,
                text=True,
            )
            with tqdm(
                desc=f"build HNSW index {name} (m={self.hnsw.m}, "
                f"ef_construct={self.hnsw.ef_construct})",
                bar_format="{desc}: {elapsed}",
                disable=not progress,
            ) as bar:
                shown = time.perf_counter()
                while child.poll() is None:
                    time.sleep(0.1)
                    if time.perf_counter() - shown >= 1.0:
                        bar.refresh()
                        shown = time.perf_counter()
            err = child.stderr.read() if child.stderr else ""
            shard = edge.EdgeShard.load(str(self._dir(name)))
            self._shards[name] = shard
            if child.returncode != 0:
                raise RuntimeError(f"building the HNSW index of {name!r} failed: {err[-500:]}")
            return self._record(name, shard, time.perf_counter() - t0)

    def _record(self, name: str, shard: edge.EdgeShard, seconds: float | None) -> dict[str, Any]:
        info = shard.info()
        meta = self.meta(name)
        meta["built"] = {
            "hnsw": asdict(self.hnsw),
            "exact": seconds is None,  # below the threshold: searched exactly, nothing built
            "seconds": round(seconds or 0.0, 2),
            "points": info.points_count,
            "indexed_vectors": info.indexed_vectors_count,
            "segments": info.segments_count,
        }
        _write_json(self._meta_path(name), meta)
        return dict(meta["built"])

    def scroll(
        self,
        name: str,
        flt: models.Filter | None,
        *,
        limit: int,
        offset: Offset,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> tuple[list[models.Record], Offset]:
        shard = self._shard(name)
        request = edge.ScrollRequest(
            offset=conv.point_id_in(offset) if offset is not None else None,
            limit=limit,
            filter=conv.filter_in(flt),
            with_payload=with_payload,
            with_vector=with_vectors,
        )
        records, nxt = self._edge("scroll", lambda: shard.scroll(request))
        return [conv.record_out(r) for r in records], (
            conv.point_id(nxt) if nxt is not None else None
        )

    def count(self, name: str, flt: models.Filter | None, *, exact: bool) -> int:
        shard = self._shard(name)
        request = edge.CountRequest(exact=exact, filter=conv.filter_in(flt))
        return int(self._edge("count", lambda: shard.count(request)))

    def query(
        self,
        name: str,
        vector: list[float],
        *,
        using: str | None,
        flt: models.Filter | None,
        limit: int,
        offset: int,
        score_threshold: float | None,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.ScoredPoint]:
        shard = self._shard(name)
        request = edge.QueryRequest(
            limit=limit,
            offset=offset or None,
            query=edge.Query.Nearest(vector, using=using),
            filter=conv.filter_in(flt),
            score_threshold=score_threshold,
            with_payload=with_payload,
            with_vector=with_vectors,
            params=self._search,
        )
        return [conv.scored_out(p) for p in self._edge("query", lambda: shard.query(request))]

    def retrieve(
        self,
        name: str,
        ids: list[models.ExtendedPointId],
        *,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.Record]:
        shard = self._shard(name)
        wanted = [conv.point_id_in(i) for i in ids]
        got = self._edge(
            "retrieve",
            lambda: shard.retrieve(wanted, with_payload=with_payload, with_vector=with_vectors),
        )
        return [conv.record_out(r) for r in got]

    def close(self) -> None:
        with self._open:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            if not self._lockfile.closed:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()
            if self._temporary:
                shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _edge(op: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as e:
            if type(e) is Exception and str(e).startswith(_REFUSALS):
                raise EngineRefused(f"Qdrant refused the {op}: {e}") from None
            raise
