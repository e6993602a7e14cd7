"""The embedded engine in its own process, so its calls never stall the service's event loop.

qdrant-edge-py 0.9.0 holds the GIL for the whole of every call, `query()` included (measured:
a thread ticking every 1 ms got 6 ticks in 350 ms of filtered queries, against 326 idle), so
a 100 ms search in-process would be a 100 ms stall of every request, probe and metric. The
service therefore opens the folder in one child process (started from a fork server that has
the engine preloaded, so a start costs milliseconds) and sends it each call over a pipe; the
waiting thread releases the GIL while the child works. A child that dies or hangs past the
timeout is an outage of that call (QdrantUnavailable) and is started again on the next one,
as a server that went away would be reconnected. Offline commands (`index`, the migration)
open the folder in-process: they own the machine and write in bulk.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.search.backend import (
    CollectionInfo,
    CollectionNotFound,
    FolderRefused,
    Offset,
    QdrantFolderInUse,
    QdrantTimeout,
    QdrantUnavailable,
    Unsupported,
    VectorInfo,
    WithPayload,
    WithVectors,
)
from service.search.embedded_folder import LegacyFolder, is_legacy

if TYPE_CHECKING:
    from qdrant_client import models

    from service.search.edge_backend import HnswSettings

_WRITES = frozenset({"create_collection", "create_keyword_index", "upsert", "build_index"})
_START_S = 300.0  # opening and reading every shard: 6 s for a million 384-d vectors
_context: Any = None
_context_lock = threading.Lock()


def _forkserver() -> Any:
    """One fork server per service, with the engine and its conversions preloaded."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["service.search.edge_backend"])
            _context = ctx
        return _context


def _serve(conn: Connection, root: str, hnsw: HnswSettings | None, holder: str) -> None:
    """The child: open the folder, then answer (method, args, kwargs) until told to close."""
    from service.search.edge_backend import EdgeBackend

    try:
        backend = EdgeBackend(root, hnsw, holder=holder)
        backend.open_warm()  # before "ready": no request opens a shard or meets it cold
    except BaseException as e:
        conn.send(("error", _portable(e)))
        return
    conn.send(("ready", str(backend.root)))
    try:
        while True:
            try:
                method, args, kwargs = conn.recv()
            except EOFError:  # the parent went away
                return
            if method == "close":
                return
            try:
                conn.send(("ok", getattr(backend, method)(*args, **kwargs)))
            except BaseException as e:
                conn.send(("error", _portable(e)))
    finally:
        backend.close()


def _portable(e: BaseException) -> tuple[str, Any]:
    """An exception as (kind, data) that survives pickling with its meaning."""
    from service.search.edge_backend import EngineRefused

    if isinstance(e, QdrantFolderInUse):
        return ("in_use", (e.path, e.holder))
    if isinstance(e, LegacyFolder):
        return ("legacy", str(e.path))
    if isinstance(e, FolderRefused):
        return ("folder", str(e))
    if isinstance(e, CollectionNotFound):
        return ("not_found", e.args[0] if e.args else "")
    if isinstance(e, EngineRefused):
        return ("refused", str(e))
    if isinstance(e, Unsupported):
        return ("unsupported", str(e))
    if isinstance(e, QdrantUnavailable):
        return ("unavailable", (e.op, e.detail))
    if isinstance(e, ValueError):
        return ("value", str(e))
    return ("engine", f"{type(e).__name__}: {e}")


def _raise(kind: str, data: Any, op: str) -> None:
    from service.search.edge_backend import EngineRefused

    if kind == "in_use":
        raise QdrantFolderInUse(*data)
    if kind == "legacy":
        raise LegacyFolder(Path(data))
    if kind == "folder":
        raise FolderRefused(data)
    if kind == "not_found":
        raise CollectionNotFound(data)
    if kind == "refused":
        raise EngineRefused(data)
    if kind == "unsupported":
        raise Unsupported(data)
    if kind == "unavailable":
        raise QdrantUnavailable(*data)
    if kind == "value":
        raise ValueError(data)
    raise QdrantUnavailable(op, f"embedded engine: {str(data)[:200]}")


class EdgeProcess:
    """The Backend protocol, carried out by an EdgeBackend in a child process."""

    kind = "edge"
    serialized = False
    indexes_payload = True
    exact_counts_cheap = True

    def __init__(
        self, root: str | Path, hnsw: HnswSettings | None = None, timeout_s: float = 10.0
    ) -> None:
        # ":memory:": a temporary folder this process owns, so a restarted child finds it
        self._temporary = str(root) == ":memory:"
        self.root_arg = tempfile.mkdtemp(prefix="querylift-edge-") if self._temporary else str(root)
        self.hnsw = hnsw
        self.timeout_s = timeout_s
        self.holder = f"pid {os.getpid()}: " + " ".join(os.path.basename(a) for a in sys.argv[:3])
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self.restarts = 0
        if not self._temporary and is_legacy(Path(self.root_arg)):
            raise LegacyFolder(Path(self.root_arg))
        with self._lock:
            self._start()  # a held folder is refused here, as in-process

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ctx = _forkserver()
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_serve,
            args=(child, self.root_arg, self.hnsw, self.holder),
            name="querylift-edge",
            daemon=True,
        )
        proc.start()
        child.close()
        if not parent.poll(_START_S):
            proc.kill()
            raise QdrantTimeout("open", f"the embedded engine did not open within {_START_S:g} s")
        try:
            status, data = parent.recv()
        except EOFError:
            proc.join(1)
            raise QdrantUnavailable(
                "open", f"the embedded engine process exited (code {proc.exitcode})"
            ) from None
        if status != "ready":
            proc.join(1)
            _raise(*data, op="open")
        self._proc, self._conn = proc, parent

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(1)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call; reads are bounded by `timeout_s` like a server's, writes (offline bulk
        work: upserts, an index build) are not."""
        limit = None if method in _WRITES else self.timeout_s
        with self._lock:
            if self._conn is None or not self._proc.is_alive():
                self._stop()
                self.restarts += 1
                self._start()
            conn = self._conn
            assert conn is not None
            try:
                conn.send((method, args, kwargs))
                if not conn.poll(limit):
                    self._stop()  # a hung engine: the next call starts a fresh one
                    raise QdrantTimeout(
                        method, f"the embedded engine gave no answer within {self.timeout_s:g} s"
                    )
                status, data = conn.recv()
            except (EOFError, OSError) as e:
                code = self._proc.exitcode if self._proc is not None else None
                self._stop()
                raise QdrantUnavailable(
                    method,
                    f"the embedded engine process exited (code {code}); it is started again "
                    "on the next call",
                ) from e
        if status == "ok":
            return data
        _raise(*data, op=method)
        raise AssertionError("unreachable")

    # -- the protocol ----------------------------------------------------------------------
    def map_error(self, op: str, e: Exception) -> QdrantUnavailable | None:
        return e if isinstance(e, QdrantUnavailable) else None

    def ping(self) -> None:
        self._call("ping")

    def describe(self, name: str) -> CollectionInfo:
        result: CollectionInfo = self._call("describe", name)
        return result

    def create_collection(
        self,
        name: str,
        vectors: dict[str, VectorInfo],
        metadata: dict[str, Any],
        sparse: dict[str, bool] | None = None,
    ) -> None:
        self._call("create_collection", name, vectors, metadata, sparse)

    def create_keyword_index(self, name: str, key: str, *, is_tenant: bool) -> None:
        self._call("create_keyword_index", name, key, is_tenant=is_tenant)

    def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        self._call("upsert", name, points)

    def build_index(self, name: str, progress: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._call("build_index", name, False)
        return result

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
        result: tuple[list[models.Record], Offset] = self._call(
            "scroll",
            name,
            flt,
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vectors=with_vectors,
        )
        return result

    def count(self, name: str, flt: models.Filter | None, *, exact: bool) -> int:
        return int(self._call("count", name, flt, exact=exact))

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
        result: list[models.ScoredPoint] = self._call(
            "query",
            name,
            vector,
            using=using,
            flt=flt,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            with_payload=with_payload,
            with_vectors=with_vectors,
        )
        return result

    def retrieve(
        self,
        name: str,
        ids: list[models.ExtendedPointId],
        *,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.Record]:
        result: list[models.Record] = self._call(
            "retrieve", name, ids, with_payload=with_payload, with_vectors=with_vectors
        )
        return result

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(("close", (), {}))
                    self._proc.join(10)
                except (OSError, EOFError):
                    pass
            self._stop()
            if self._temporary:
                shutil.rmtree(self.root_arg, ignore_errors=True)
