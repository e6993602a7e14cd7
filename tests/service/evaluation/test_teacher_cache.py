"""The label-free gate's teacher cache: kept in memory and in shards on disk, so a restarted
service (or another replica sharing the folder) embeds a candidate document once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from service.evaluation.teacher_cache import TeacherCache

FP = "mpnet@abc"


def vectors(n: int, seed: int = 0, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def texts(n: int, tag: str = "doc") -> list[str]:
    return [f"{tag} {i}" for i in range(n)]


def shards(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def test_a_new_instance_on_the_same_folder_finds_what_was_put(tmp_path: Path):
    first = TeacherCache(100, tmp_path)
    v = vectors(5)
    first.put_many(FP, texts(5), v)
    assert len(shards(tmp_path)) == 1
    restarted = TeacherCache(100, tmp_path)  # a restart, or another replica
    got = restarted.get_many(FP, [*texts(5), "never seen"])
    np.testing.assert_array_equal(np.stack(got[:5]), v)  # type: ignore[arg-type]
    assert got[5] is None
    assert restarted.get_many("another-encoder", texts(1)) == [None]  # keyed by fingerprint
    assert not list(tmp_path.rglob("*.tmp"))  # written whole: nothing half-written left


def test_a_replica_sees_shards_written_after_its_first_lookup(tmp_path: Path):
    a, b = TeacherCache(100, tmp_path), TeacherCache(100, tmp_path)
    assert b.get_many(FP, texts(2)) == [None, None]
    a.put_many(FP, texts(2), vectors(2))
    assert all(x is not None for x in b.get_many(FP, texts(2)))


def test_the_disk_keeps_about_max_entries_rows_newest_first(tmp_path: Path):
    cache = TeacherCache(10, tmp_path)
    for i in range(6):
        cache.put_many(FP, texts(4, f"batch{i}"), vectors(4, i))
    rows = sum(int(p.name.split("-")[1]) for p in shards(tmp_path))  # <time>-<rows>-<random>
    assert 10 <= rows < 10 + 4  # the oldest shards went, what remains still covers the cap
    fresh = TeacherCache(10, tmp_path)
    assert all(x is not None for x in fresh.get_many(FP, texts(4, "batch5")))
    assert fresh.get_many(FP, texts(4, "batch0")) == [None] * 4
    assert len(fresh) <= 10


def test_off_writes_nothing(tmp_path: Path):
    cache = TeacherCache(0, tmp_path)
    cache.put_many(FP, texts(3), vectors(3))
    assert cache.get_many(FP, texts(3)) == [None] * 3
    assert not list(tmp_path.iterdir())


def test_a_foreign_file_is_skipped_with_a_warning(tmp_path: Path, caplog):
    cache = TeacherCache(100, tmp_path)
    cache.put_many(FP, texts(2), vectors(2))
    folder = shards(tmp_path)[0].parent
    (folder / "00000000000000000000-3-junk.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        got = TeacherCache(100, tmp_path).get_many(FP, texts(2))
    assert all(x is not None for x in got)
    assert "skipping unreadable shard" in caplog.text


def test_a_full_disk_leaves_the_memory_cache_working(tmp_path: Path, monkeypatch, caplog):
    import errno

    import service.evaluation.teacher_cache as tc

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tc, "atomic_write_bytes", full)
    cache = TeacherCache(100, tmp_path)
    with caplog.at_level(logging.WARNING):
        cache.put_many(FP, texts(2), vectors(2))
    assert all(x is not None for x in cache.get_many(FP, texts(2)))
    assert "No space left" in caplog.text and not shards(tmp_path)
