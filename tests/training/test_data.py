"""Datasets: BEIR folders, pairs files, bare corpora, validation errors, seeded splits."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from training.data import (
    DataError,
    Dataset,
    load_beir,
    load_corpus_only,
    load_pairs,
    make_splits,
)

DEMO = REPO / "demo" / "scifact-mini"

CORPUS = [
    {"_id": "d1", "title": "Malaria", "text": "is caused by a parasite."},
    {"_id": "d2", "title": "", "text": "The mosquito carries malaria."},
    {"_id": "d3", "title": "Cancer", "text": "cells divide."},
    {"_id": "d4", "text": "Vitamin D and the immune response."},
]
QUERIES = [
    {"_id": "q1", "text": "what causes malaria"},
    {"_id": "q2", "text": "mosquito vector"},
    {"_id": "q3", "text": "cancer cells"},
    {"_id": "q4", "text": "vitamin immune"},
    {"_id": "q9", "text": "a query with no qrels"},
]
TRAIN = [("q1", "d1", 1), ("q1", "d2", 2), ("q2", "d2", 1), ("q3", "d4", 0), ("q3", "d3", 1)]
TEST = [("q4", "d4", 1)]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _tsv(rows: list, header: bool = True) -> str:
    lines = ["query-id\tcorpus-id\tscore"] if header else []
    lines += ["\t".join(str(c) for c in row) for row in rows]
    return "\n".join(lines) + "\n"


def make_beir(
    root: Path,
    gz: bool = False,
    corpus: list | None = None,
    queries: list | None = None,
    splits: dict[str, str] | None = None,
) -> Path:
    ext = ".gz" if gz else ""
    _write(root / f"corpus.jsonl{ext}", _jsonl(CORPUS if corpus is None else corpus))
    _write(root / f"queries.jsonl{ext}", _jsonl(QUERIES if queries is None else queries))
    if splits is None:
        splits = {"train": _tsv(TRAIN), "test": _tsv(TEST, header=False)}
    for name, text in splits.items():
        _write(root / "qrels" / f"{name}.tsv{ext}", text)
    return root


# ------------------------------------------------------------------------------------------
# BEIR


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir(tmp_path: Path, gz: bool) -> None:
    ds = load_beir(make_beir(tmp_path / "tiny", gz=gz))
    assert ds.name == "tiny"
    assert ds.source == str(tmp_path / "tiny")
    assert ds.corpus == {
        "d1": "Malaria is caused by a parasite.",
        "d2": "The mosquito carries malaria.",
        "d3": "Cancer cells divide.",
        "d4": "Vitamin D and the immune response.",
    }
    # q9 has no qrels: dropped.
    assert set(ds.queries) == {"q1", "q2", "q3", "q4"}
    assert ds.queries["q1"] == "what causes malaria"
    # Score-0 rows are dropped, relevance levels kept, header optional.
    assert ds.qrels == {
        "train": {"q1": {"d1": 1, "d2": 2}, "q2": {"d2": 1}, "q3": {"d3": 1}},
        "test": {"q4": {"d4": 1}},
    }
    assert ds.negatives == {}


def test_gz_and_plain_give_the_same_fingerprint(tmp_path: Path) -> None:
    a = load_beir(make_beir(tmp_path / "a", gz=False))
    b = load_beir(make_beir(tmp_path / "b", gz=True))
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)


def test_fingerprint_ignores_order_and_tracks_content() -> None:
    a = Dataset("x", {"d1": "a", "d2": "b"}, {"q": "t"}, {"all": {"q": {"d1": 1}}}, "src")
    b = Dataset("y", {"d2": "b", "d1": "a"}, {"q": "t"}, {"all": {"q": {"d1": 1}}}, "other")
    assert a.fingerprint() == b.fingerprint()
    base = {
        "corpus": {"d1": "a", "d2": "b"},
        "queries": {"q": "t"},
        "qrels": {"all": {"q": {"d1": 1}}},
    }
    changes = [
        {"corpus": {"d1": "a", "d2": "c"}},
        {"queries": {"q": "u"}},
        {"qrels": {"all": {"q": {"d1": 2}}}},
        {"qrels": {"dev": {"q": {"d1": 1}}}},
        {"negatives": {"q": ["d2"]}},
    ]
    prints = {Dataset("x", source="src", **{**base, **c}).fingerprint() for c in changes}
    assert a.fingerprint() not in prints and len(prints) == len(changes)


def test_load_beir_demo_folder() -> None:
    ds = load_beir(DEMO)
    assert ds.name == "scifact-mini"
    assert len(ds.corpus) == 1000
    assert len(ds.queries) == 1109
    assert sorted(ds.qrels) == ["test", "train"]
    assert len(ds.qrels["train"]) == 809
    assert len(ds.qrels["test"]) == 300
    assert all(
        d in ds.corpus for per_q in ds.qrels.values() for docs in per_q.values() for d in docs
    )
    splits = make_splits(ds, seed=0)
    assert splits["test"] == ds.qrels["test"]
    assert len(splits["val"]) + len(splits["train"]) == 809
    assert len(splits["val"]) == round(0.1 * 809)
    assert splits == make_splits(ds, seed=0)


def _err(path: Path, **kw) -> str:
    with pytest.raises(DataError) as e:
        load_beir(make_beir(path, **kw))
    return str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_beir_corpus_errors(tmp_path: Path, gz: bool) -> None:
    name = "corpus.jsonl.gz" if gz else "corpus.jsonl"
    bad_json = _jsonl(CORPUS[:2]) + "{not json\n"

    def corpus_err(sub: str, text: str) -> str:
        folder = make_beir(tmp_path / sub, gz=gz)
        _write(folder / name, text)
        with pytest.raises(DataError) as e:
            load_beir(folder)
        return str(e.value)

    m = corpus_err("json", bad_json)
    assert name in m and ":3:" in m and "invalid JSON" in m
    m = corpus_err("noid", _jsonl([*CORPUS[:1], {"text": "no id"}]))
    assert name in m and ":2:" in m and "_id" in m
    m = corpus_err("notext", _jsonl([*CORPUS[:2], {"_id": "d7", "title": "t"}]))
    assert name in m and ":3:" in m and "'d7'" in m
    m = corpus_err("dup", _jsonl([*CORPUS, {"_id": "d2", "text": "again"}]))
    assert name in m and ":5:" in m and "duplicate" in m and "'d2'" in m
    m = corpus_err("empty", "")
    assert name in m and "empty corpus" in m


def test_valid_folder_used_by_error_tests_loads(tmp_path: Path) -> None:
    # The error tests below start from this folder and break one thing each.
    assert load_beir(make_beir(tmp_path / "ok")).qrels["test"] == {"q4": {"d4": 1}}


@pytest.mark.parametrize("gz", [False, True])
def test_beir_queries_errors(tmp_path: Path, gz: bool) -> None:
    name = "queries.jsonl.gz" if gz else "queries.jsonl"
    cases = {
        "json": (_jsonl(QUERIES[:1]) + "[1, 2\n", ":2:", "invalid JSON"),
        "noid": (_jsonl([*QUERIES[:3], {"text": "x"}]), ":4:", "_id"),
        "notext": (_jsonl([*QUERIES[:1], {"_id": "q7", "text": "  "}]), ":2:", "'q7'"),
        "dup": (_jsonl([*QUERIES, {"_id": "q1", "text": "again"}]), ":6:", "duplicate"),
    }
    for sub, (text, line, needle) in cases.items():
        folder = make_beir(tmp_path / sub, gz=gz)
        _write(folder / name, text)
        with pytest.raises(DataError) as e:
            load_beir(folder)
        assert name in str(e.value) and line in str(e.value) and needle in str(e.value), sub
    # An empty queries file leaves every qrels query unknown.
    m = _err(tmp_path / "no-queries", gz=gz, queries=[])
    assert "qrels/test.tsv" in m and ":1:" in m and "unknown query id 'q4'" in m


@pytest.mark.parametrize("gz", [False, True])
def test_beir_qrels_errors(tmp_path: Path, gz: bool) -> None:
    fname = "train.tsv.gz" if gz else "train.tsv"
    cases = {
        "unknown-query": (_tsv([*TRAIN[:2], ("q404", "d1", 1)]), ":4:", "unknown query id 'q404'"),
        "unknown-doc": (_tsv([("q1", "d4x", 1)], header=False), ":1:", "unknown document id 'd4x'"),
        "unknown-doc-score0": (_tsv([*TRAIN, ("q1", "dX", 0)]), ":7:", "'dX'"),
        "columns": (_tsv(TRAIN[:2]) + "q2 d2 1\n", ":4:", "3 tab-separated columns"),
        "four-columns": (_tsv([("q1", "Q0", "d1", 1)]), ":2:", "got 4"),
        "score": (_tsv([("q1", "d1", "1.5")]), ":2:", "'1.5' is not an integer"),
        "score-text": (_tsv([("q1", "d1", "high")]), ":2:", "not an integer"),
        "conflict": (_tsv([("q1", "d1", 1), ("q1", "d1", 2)]), ":3:", "different scores"),
        "empty": (_tsv([]), "", "no qrels rows"),
        "blank": ("", "", "no qrels rows"),
        "zeros": (_tsv([("q1", "d1", 0)]), "", "no row with a positive score"),
    }  # fmt: skip
    for sub, (text, line, needle) in cases.items():
        m = _err(tmp_path / sub, gz=gz, splits={"train": text, "test": _tsv(TEST)})
        assert f"qrels/{fname}" in m, (sub, m)
        assert line in m and needle in m, (sub, m)


def test_beir_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a BEIR folder"):
        load_beir(tmp_path / "missing")
    folder = make_beir(tmp_path / "noq")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"noq: no queries\.jsonl"):
        load_beir(folder)
    folder = make_beir(tmp_path / "nocorpus")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"nocorpus: no corpus\.jsonl"):
        load_beir(folder)
    folder = make_beir(tmp_path / "noqrels", splits={})
    with pytest.raises(DataError, match=r"noqrels.qrels: no qrels"):
        load_beir(folder)
    folder = make_beir(tmp_path / "both")
    _write(folder / "qrels" / "train.tsv.gz", _tsv(TRAIN))
    with pytest.raises(DataError, match=r"train\.tsv and train\.tsv\.gz"):
        load_beir(folder)


def test_identical_duplicate_qrels_rows_are_tolerated(tmp_path: Path) -> None:
    rows = [("q1", "d1", 1), ("q1", "d1", 1), ("q2", "d2", 1)]
    ds = load_beir(make_beir(tmp_path / "x", splits={"train": _tsv(rows), "test": _tsv(TEST)}))
    assert ds.qrels["train"] == {"q1": {"d1": 1}, "q2": {"d2": 1}}


# ------------------------------------------------------------------------------------------
# Pairs files and bare corpora


def _corpus_file(tmp_path: Path, gz: bool = False) -> Path:
    plain = [{"id": r["_id"], "text": r["text"]} for r in CORPUS]
    return _write(tmp_path / ("docs.jsonl.gz" if gz else "docs.jsonl"), _jsonl(plain))


@pytest.mark.parametrize("gz", [False, True])
def test_load_pairs(tmp_path: Path, gz: bool) -> None:
    pairs = [
        {"query": "what causes malaria", "positive_ids": ["d1", "d2"], "negative_ids": ["d3"]},
        {"query": "cancer", "positive_ids": ["d3"], "id": "click-7"},
        {"query": "vitamin", "positive_ids": ["d4"], "negative_ids": []},
    ]
    text = _jsonl(pairs[:1]) + "\n" + _jsonl(pairs[1:])  # a blank line keeps line numbers
    path = _write(tmp_path / ("clicks.jsonl.gz" if gz else "clicks.jsonl"), text)
    ds = load_pairs(path, _corpus_file(tmp_path, gz))
    assert ds.name == "clicks"
    assert ds.source == str(path)
    assert ds.queries == {"q1": "what causes malaria", "click-7": "cancer", "q4": "vitamin"}
    assert ds.qrels == {"all": {"q1": {"d1": 1, "d2": 1}, "click-7": {"d3": 1}, "q4": {"d4": 1}}}
    assert ds.negatives == {"q1": ["d3"]}
    assert len(ds.corpus) == 4


def test_load_pairs_with_beir_corpus_folder_and_integer_ids(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b")
    corpus = [{"_id": 1, "text": "one"}, {"_id": 2, "text": "two"}]
    _write(folder / "corpus.jsonl", _jsonl(corpus))
    path = _write(tmp_path / "p.jsonl", _jsonl([{"query": "x", "positive_ids": [1]}]))
    ds = load_pairs(path, folder)
    assert ds.qrels == {"all": {"q1": {"1": 1}}}


def test_pairs_errors(tmp_path: Path) -> None:
    corpus = _corpus_file(tmp_path)
    ok = {"query": "malaria", "positive_ids": ["d1"]}
    cases = {
        "json": ("{oops\n", ":1:", "invalid JSON"),
        "no-query": (_jsonl([ok, {"positive_ids": ["d1"]}]), ":2:", "`query`"),
        "empty-query": (_jsonl([{"query": " ", "positive_ids": ["d1"]}]), ":1:", "`query`"),
        "no-pos": (_jsonl([ok, ok, {"query": "x"}]), ":3:", "positive_ids"),
        "empty-pos": (_jsonl([{"query": "x", "positive_ids": []}]), ":1:", "positive_ids"),
        "pos-not-list": (_jsonl([{"query": "x", "positive_ids": "d1"}]), ":1:", "positive_ids"),
        "unknown-pos": (
            _jsonl([ok, {"query": "x", "positive_ids": ["d1", "d99"]}]),
            ":2:",
            "unknown document id 'd99'",
        ),
        "unknown-neg": (
            _jsonl([{"query": "x", "positive_ids": ["d1"], "negative_ids": ["n0"]}]),
            ":1:",
            "unknown document id 'n0'",
        ),
        "pos-and-neg": (
            _jsonl([{"query": "x", "positive_ids": ["d1"], "negative_ids": ["d1"]}]),
            ":1:",
            "both positive and negative",
        ),
        "dup-id": (
            _jsonl([{**ok, "id": "a"}, {**ok, "id": "a"}]),
            ":2:",
            "duplicate query id 'a'",
        ),
        "empty": ("", "", "no pairs"),
    }
    for sub, (text, line, needle) in cases.items():
        path = _write(tmp_path / f"{sub}.jsonl", text)
        with pytest.raises(DataError) as e:
            load_pairs(path, corpus)
        m = str(e.value)
        assert f"{sub}.jsonl" in m and line in m and needle in m, (sub, m)
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "absent.jsonl", corpus)
    empty = _write(tmp_path / "empty-corpus.jsonl", "")
    with pytest.raises(DataError, match=r"empty-corpus\.jsonl: empty corpus"):
        load_pairs(_write(tmp_path / "p.jsonl", _jsonl([ok])), empty)


@pytest.mark.parametrize("gz", [False, True])
def test_load_corpus_only(tmp_path: Path, gz: bool) -> None:
    ds = load_corpus_only(_corpus_file(tmp_path, gz))
    assert ds.name == "docs"
    assert ds.qrels == {} and ds.queries == {} and ds.negatives == {}
    assert ds.corpus["d1"] == "is caused by a parasite."
    assert load_corpus_only(DEMO).name == "scifact-mini"
    with pytest.raises(DataError, match="labelled"):
        make_splits(ds)
    with pytest.raises(DataError, match=r"e\.jsonl: empty corpus"):
        load_corpus_only(_write(tmp_path / "e.jsonl", "\n"))


# ------------------------------------------------------------------------------------------
# Splits


def _pairs_dataset(n: int, duplicates: int = 0) -> Dataset:
    corpus = {f"d{i}": f"doc {i}" for i in range(n)}
    queries = {f"q{i}": f"query {i}" for i in range(n)}
    for j in range(duplicates):  # the same text as q{j}, under another id
        queries[f"dup{j}"] = f"  Query {j} "
    qrels = {q: {f"d{i % n}": 1} for i, q in enumerate(queries)}
    return Dataset("pairs", corpus, queries, {"all": qrels}, "pairs.jsonl")


def _check_partition(splits: dict, ids: set[str]) -> None:
    assert set(splits) == {"train", "val", "test"}
    parts = [set(s) for s in splits.values()]
    assert all(parts)
    assert sum(len(p) for p in parts) == len(ids)
    assert set().union(*parts) == ids


def test_pairs_splits_deterministic_disjoint_complete() -> None:
    ds = _pairs_dataset(200)
    a = make_splits(ds, seed=3)
    b = make_splits(ds, seed=3)
    assert a == b
    _check_partition(a, set(ds.queries))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (140, 20, 40)
    c = make_splits(ds, seed=4)
    assert c["test"].keys() != a["test"].keys()
    _check_partition(c, set(ds.queries))
    # Labels are carried over unchanged.
    for split in a.values():
        for q, docs in split.items():
            assert docs == ds.qrels["all"][q]
    # Dict order of the input does not matter: ids are sorted before the shuffle.
    shuffled = Dataset(
        "pairs",
        ds.corpus,
        dict(reversed(ds.queries.items())),
        {"all": dict(reversed(ds.qrels["all"].items()))},
        "x",
    )
    assert make_splits(shuffled, seed=3) == a
    custom = make_splits(ds, seed=3, val_fraction=0.25, test_fraction=0.25)
    assert (len(custom["train"]), len(custom["val"]), len(custom["test"])) == (100, 50, 50)


def test_same_query_text_never_straddles_splits() -> None:
    ds = _pairs_dataset(50, duplicates=20)
    for seed in range(5):
        splits = make_splits(ds, seed=seed)
        _check_partition(splits, set(ds.queries))
        where = {q: name for name, s in splits.items() for q in s}
        assert all(where[f"dup{j}"] == where[f"q{j}"] for j in range(20))


def test_small_pairs_dataset_still_gets_every_split() -> None:
    splits = make_splits(_pairs_dataset(3), seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 1, 1]


def test_empty_split_is_an_error_naming_the_dataset() -> None:
    with pytest.raises(DataError, match=r"'pairs'.*the (val|test) split is empty"):
        make_splits(_pairs_dataset(2), seed=0)
    with pytest.raises(DataError, match=r"'pairs'.*val split is empty"):
        make_splits(_pairs_dataset(10), val_fraction=0.0)
    with pytest.raises(ValueError, match="below 1"):
        make_splits(_pairs_dataset(10), val_fraction=0.5, test_fraction=0.5)


def _beir_dataset(splits: dict[str, list[str]]) -> Dataset:
    ids = sorted({q for qs in splits.values() for q in qs})
    corpus = {"d": "doc"}
    queries = {q: f"text of {q}" for q in ids}
    qrels = {name: {q: {"d": 1} for q in qs} for name, qs in splits.items()}
    return Dataset("beir", corpus, queries, qrels, "beir/")


def test_beir_splits_keep_test_and_use_dev_as_val() -> None:
    train = [f"t{i}" for i in range(30)]
    ds = _beir_dataset({"train": train, "dev": ["v1", "v2"], "test": ["x1", "x2", "x3"]})
    s = make_splits(ds, seed=1)
    assert set(s["test"]) == {"x1", "x2", "x3"}
    assert set(s["val"]) == {"v1", "v2"}
    assert set(s["train"]) == set(train)
    assert make_splits(ds, seed=2) == s  # nothing random to do


def test_beir_splits_carve_val_from_train() -> None:
    train = [f"t{i:02d}" for i in range(50)]
    ds = _beir_dataset({"train": train, "test": ["x1", "x2"]})
    a = make_splits(ds, seed=0)
    assert set(a["test"]) == {"x1", "x2"}
    assert len(a["val"]) == 5
    _check_partition(a, set(ds.queries))
    assert make_splits(ds, seed=0) == a
    assert make_splits(ds, seed=1)["val"].keys() != a["val"].keys()


def test_beir_without_test_carves_test_and_drops_overlap() -> None:
    ds = _beir_dataset({"train": [f"t{i:02d}" for i in range(20)]})
    s = make_splits(ds, seed=0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (14, 2, 4)
    _check_partition(s, set(ds.queries))
    overlap = _beir_dataset({"train": ["a", "b", "c", "x"], "dev": ["v"], "test": ["x"]})
    s = make_splits(overlap)
    assert set(s["train"]) == {"a", "b", "c"} and set(s["test"]) == {"x"}


def test_beir_test_only_has_no_train_split() -> None:
    with pytest.raises(DataError, match=r"'beir'.*train split is empty"):
        make_splits(_beir_dataset({"test": ["x1", "x2"]}))
    with pytest.raises(DataError, match="unknown split"):
        make_splits(_beir_dataset({"train": ["a"], "test": ["b"], "extra": ["c"]}))
