"""The embedded engine's own promises: its process comes back after a crash, HNSW is built off
the request path and recorded, what Edge cannot do is refused with a clear error."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from service.search.backend import QdrantUnavailable, Unsupported, VectorInfo
from service.search.edge_backend import HnswSettings
from service.search.edge_convert import condition_in, point_id_in
from service.search.edge_process import EdgeProcess
from service.search.embedded_folder import LegacyFolder
from service.search.qdrant_gateway import QdrantGateway


def points(n: int, dim: int, seed: int = 0) -> list[models.PointStruct]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        models.PointStruct(id=i, vector=v.tolist(), payload={"tenant": "a" if i % 2 else "b"})
        for i, v in enumerate(vecs)
    ]


def test_a_crashed_engine_process_is_one_failed_call_then_serves_again(tmp_path: Path) -> None:
    gw = QdrantGateway(path=str(tmp_path / "q"))
    try:
        backend = gw.backend
        assert isinstance(backend, EdgeProcess) and backend.pid != os.getpid()
        gw.ensure_collection("docs", 8, "tenant", {})
        gw.upsert("docs", points(50, 8))
        want = [p.id for p in gw.query("docs", [1.0] * 8, limit=5)]
        assert backend.pid is not None
        os.kill(backend.pid, signal.SIGKILL)
        with pytest.raises(QdrantUnavailable, match="process exited"):
            gw.query("docs", [1.0] * 8, limit=5)
        assert [p.id for p in gw.query("docs", [1.0] * 8, limit=5)] == want  # from disk
        assert backend.restarts == 1
    finally:
        gw.close()


def test_index_builds_hnsw_off_the_request_path_and_records_it(tmp_path: Path) -> None:
    """Past the size threshold `build_index` builds HNSW (in a child process) and records the
    parameters; below it nothing is built and the collection is searched exactly."""
    hnsw = HnswSettings(m=8, ef_construct=32, full_scan_threshold_kb=16, hnsw_ef=256)
    gw = QdrantGateway(path=str(tmp_path / "q"), hnsw=hnsw, in_process=True)
    try:
        gw.create_collection("big", {"": VectorInfo(16, "Cosine")})
        gw.create_collection("small", {"": VectorInfo(16, "Cosine")})
        gw.upsert("big", points(2000, 16))  # 125 KB of vectors
        gw.upsert("small", points(100, 16))  # 6 KB
        exact = [p.id for p in gw.query("big", [1.0] * 16, limit=10)]
        built = gw.build_index("big")
        assert built is not None and not built["exact"]
        assert built["indexed_vectors"] > 0 and built["points"] == 2000
        assert built["hnsw"]["m"] == 8 and built["hnsw"]["ef_construct"] == 32
        got = [p.id for p in gw.query("big", [1.0] * 16, limit=10)]
        assert len(set(got) & set(exact)) >= 9  # HNSW at ef 256 over 2,000 points
        small = gw.build_index("small")
        assert small is not None and small["exact"] and small["indexed_vectors"] == 0
    finally:
        gw.close()
    meta = (tmp_path / "q" / "meta" / "big.json").read_text()
    assert '"indexed_vectors"' in meta  # the record survives the process


def test_what_edge_cannot_do_is_refused_by_name() -> None:
    class Exotic:
        pass

    with pytest.raises(Unsupported, match="no Exotic filter condition"):
        condition_in(Exotic())
    with pytest.raises(Unsupported, match="neither an unsigned integer nor a UUID"):
        point_id_in("doc-1")


def test_a_folder_of_the_old_embedded_default_is_refused_with_the_command(
    tmp_path: Path,
) -> None:
    from qdrant_client import QdrantClient

    old = tmp_path / "q"
    client = QdrantClient(path=str(old))
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
    )
    client.close()
    for in_process in (True, False):
        with pytest.raises(LegacyFolder, match=f"querylift migrate-embedded {old}"):
            QdrantGateway(path=str(old), in_process=in_process)


@pytest.mark.parametrize("in_ram", [True, False])
def test_payload_placement_is_what_the_setting_says(tmp_path: Path, in_ram: bool) -> None:
    """Payloads in RAM (the default) are what the engine records for the collection, and in
    the index record; `false` leaves Edge's on-disk placement. Search answers alike."""
    import json

    hnsw = HnswSettings(full_scan_threshold_kb=16, payload_in_ram=in_ram)
    gw = QdrantGateway(path=str(tmp_path / "q"), hnsw=hnsw, in_process=True)
    try:
        gw.create_collection("docs", {"": VectorInfo(16, "Cosine")})
        gw.upsert("docs", points(500, 16))
        built = gw.build_index("docs")
        assert built is not None and built["hnsw"]["payload_in_ram"] is in_ram
        hits = gw.query("docs", [1.0] * 16, limit=3)
        assert len(hits) == 3 and all(h.payload for h in hits)
    finally:
        gw.close()
    engine = json.loads((tmp_path / "q" / "collections" / "docs" / "edge_config.json").read_text())
    assert engine["payload_memory"] == ("cached" if in_ram else "cold")


def test_the_engine_process_opens_and_reads_every_collection_before_it_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every collection is opened and read once before the first search (a cold shard's first
    searches were several times slower); one that cannot be opened is logged and skipped, and
    the others still serve."""
    from service.search.edge_backend import EdgeBackend

    root = tmp_path / "q"
    gw = QdrantGateway(path=str(root), in_process=True)
    try:
        gw.create_collection("plain", {"": VectorInfo(8, "Cosine")})
        gw.create_collection("named", {"dense": VectorInfo(4, "Dot")})
        gw.upsert("plain", points(50, 8))
        gw.upsert(
            "named",
            [models.PointStruct(id=1, vector={"dense": [0.1, 0.2, 0.3, 0.4]}, payload={})],
        )
    finally:
        gw.close()
    broken = root / "collections" / "broken"
    broken.mkdir(parents=True)
    (broken / "edge_config.json").write_text("{not json")

    backend = EdgeBackend(root)
    try:
        with caplog.at_level("WARNING", logger="service.search.edge_backend"):
            took = backend.open_warm()
        assert sorted(took) == ["named", "plain"]
        assert "'broken' not warmed" in caplog.text
    finally:
        backend.close()

    served = QdrantGateway(path=str(root))  # the engine's own process warms as it starts
    try:
        assert len(served.query("plain", [1.0] * 8, limit=5)) == 5
        assert [p.id for p in served.query("named", [1.0] * 4, using="dense", limit=1)] == [1]
    finally:
        served.close()
