"""Reading data: corpora (BEIR `corpus.jsonl[.gz]` or plain jsonl), labelled datasets, splits."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adapters.pairs import PairError, parse_pairs


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line or id."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


def open_text(path: Path) -> IO[str]:
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def resolve_corpus(path: Path) -> Path:
    """Accept a BEIR folder or a file."""
    path = Path(path)
    if path.is_dir():
        for name in ("corpus.jsonl.gz", "corpus.jsonl"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no corpus.jsonl[.gz] in this folder")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path


def document_text(title: str, text: str) -> str:
    """BEIR convention: title and body joined by a space (the body alone when no title)."""
    title, text = title.strip(), text.strip()
    return f"{title} {text}" if title else text


def read_corpus(path: Path) -> Iterator[Document]:
    """Yield documents; BEIR records (`_id`, `title`, `text`) or plain (`id`, `text`, ...).

    Extra keys become the payload (BEIR's `title` is kept there too).
    """
    path = resolve_corpus(path)
    seen: set[str] = set()
    for lineno, rec in _json_lines(path):
        doc_id = rec.pop("_id", None) if "_id" in rec else rec.pop("id", None)
        if doc_id is None or str(doc_id) == "":
            raise DataError(f"{path}:{lineno}: record has no `_id` or `id`")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate document id {doc_id!r}")
        seen.add(doc_id)
        body = rec.pop("text", None)
        if not isinstance(body, str):
            raise DataError(f"{path}:{lineno}: document {doc_id!r} has no string `text`")
        title = rec.get("title") or ""
        text = document_text(str(title), body)
        if not text:
            raise DataError(f"{path}:{lineno}: document {doc_id!r} has empty text")
        if rec.get("metadata") == {}:
            rec.pop("metadata")
        yield Document(doc_id, text, rec)


# --------------------------------------------------------------------------------------------
# Labelled datasets: BEIR folders, pairs files (click logs), bare corpora.

QRELS_HEADER = ("query-id", "corpus-id", "score")
VAL_SPLIT_NAMES = ("dev", "val")


@dataclass(frozen=True)
class Dataset:
    """A corpus with (optional) labelled queries.

    `qrels` maps split name -> query id -> doc id -> relevance; only relevance > 0 is kept.
    BEIR folders keep their own split names (`train`, `dev`, `test`); a pairs file puts every
    query in the split `all`; a bare corpus has no queries and no qrels.
    """

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    source: str
    negatives: dict[str, list[str]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) over the content, independent of insertion order."""
        h = hashlib.sha256()

        def feed(tag: str, items: Any) -> None:
            h.update(tag.encode())
            h.update(b"\0")
            for item in items:
                h.update(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode())
                h.update(b"\n")

        feed("corpus", sorted(self.corpus.items()))
        feed("queries", sorted(self.queries.items()))
        feed(
            "qrels",
            (
                [split, qid, sorted(docs.items())]
                for split, per_q in sorted(self.qrels.items())
                for qid, docs in sorted(per_q.items())
            ),
        )
        feed("negatives", sorted(self.negatives.items()))
        return h.hexdigest()[:16]

    @property
    def labelled(self) -> bool:
        return bool(self.qrels)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".tsv"):
        name = name.removesuffix(suffix)
    return name or path.name


def _find(folder: Path, base: str) -> Path | None:
    """`base` or `base.gz` in folder; both present is ambiguous."""
    plain, gz = folder / base, folder / f"{base}.gz"
    if plain.is_file() and gz.is_file():
        raise DataError(f"{folder}: both {plain.name} and {gz.name} exist; keep one")
    if gz.is_file():
        return gz
    if plain.is_file():
        return plain
    return None


def _load_corpus(path: Path) -> dict[str, str]:
    file = resolve_corpus(path)
    corpus = {doc.id: doc.text for doc in read_corpus(file)}
    if not corpus:
        raise DataError(f"{file}: empty corpus (no documents)")
    return corpus


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, rec


def read_queries(path: Path) -> dict[str, str]:
    """BEIR `queries.jsonl[.gz]`: records with `_id` (or `id`) and a non-empty `text`."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, rec in _json_lines(path):
        qid = rec.get("_id", rec.get("id"))
        if qid is None or str(qid) == "":
            raise DataError(f"{path}:{lineno}: record has no `_id` or `id`")
        qid = str(qid)
        if qid in queries:
            raise DataError(f"{path}:{lineno}: duplicate query id {qid!r}")
        text = rec.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: query {qid!r} has no non-empty string `text`")
        queries[qid] = text.strip()
    return queries


def read_qrels(
    path: Path, query_ids: Collection[str], doc_ids: Collection[str]
) -> dict[str, dict[str, int]]:
    """One BEIR qrels file: `query-id<TAB>corpus-id<TAB>score`, header line optional.

    Rows with score <= 0 are checked, then dropped. Unknown ids, a wrong column count, a
    non-integer score, conflicting duplicate rows and a file with no positive row are errors.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    rows = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if lineno == 1 and tuple(c.strip().lower() for c in cols) == QRELS_HEADER:
                continue
            if len(cols) != 3:
                raise DataError(
                    f"{path}:{lineno}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), got {len(cols)}: {line[:80]!r}"
                )
            qid, did, raw = (c.strip() for c in cols)
            try:
                score = int(raw)
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {raw!r} is not an integer") from None
            if qid not in query_ids:
                raise DataError(f"{path}:{lineno}: unknown query id {qid!r} (not in queries)")
            if did not in doc_ids:
                raise DataError(f"{path}:{lineno}: unknown document id {did!r} (not in corpus)")
            rows += 1
            if score <= 0:
                continue
            docs = qrels.setdefault(qid, {})
            if did in docs and docs[did] != score:
                raise DataError(
                    f"{path}:{lineno}: query {qid!r} / document {did!r} listed twice with "
                    f"different scores ({docs[did]} and {score})"
                )
            docs[did] = score
    if not rows:
        raise DataError(f"{path}: no qrels rows (an empty split)")
    if not qrels:
        raise DataError(f"{path}: no row with a positive score (an empty split)")
    return qrels


def load_beir(path: Path) -> Dataset:
    """A BEIR folder: corpus.jsonl[.gz], queries.jsonl[.gz], qrels/<split>.tsv[.gz].

    Every `qrels/*.tsv[.gz]` is a split named by its stem (usually train, dev, test). Only
    queries that appear in some split are kept.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a BEIR folder (expected a directory)")
    corpus = _load_corpus(folder)
    qfile = _find(folder, "queries.jsonl")
    if qfile is None:
        raise DataError(f"{folder}: no queries.jsonl[.gz] in this folder")
    all_queries = read_queries(qfile)
    qdir = folder / "qrels"
    files: dict[str, Path] = {}
    if qdir.is_dir():
        for p in sorted(qdir.iterdir()):
            if p.is_file() and (p.name.endswith(".tsv") or p.name.endswith(".tsv.gz")):
                split = _stem(p)
                if split in files:
                    raise DataError(f"{qdir}: both {files[split].name} and {p.name} exist")
                files[split] = p
    if not files:
        raise DataError(
            f"{qdir}: no qrels/<split>.tsv[.gz] files (for a bare corpus use load_corpus_only)"
        )
    qrels = {split: read_qrels(p, all_queries, corpus) for split, p in files.items()}
    used = {qid for per_q in qrels.values() for qid in per_q}
    queries = {qid: text for qid, text in all_queries.items() if qid in used}
    return Dataset(folder.name, corpus, queries, qrels, str(path))


def load_pairs(pairs_path: Path, corpus_path: Path) -> Dataset:
    """A pairs jsonl (adapters/pairs.py: the service's validation-set format too) + its corpus.

    Query ids are the given `id` or `q<line number>`; every query lands in the split `all`.
    Every positive and negative id must be in the corpus.
    """
    pairs_path = Path(pairs_path)
    corpus = _load_corpus(corpus_path)
    if not pairs_path.is_file():
        raise DataError(f"{pairs_path}: no such file")
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[str]] = {}
    try:
        for pair in parse_pairs(_json_lines(pairs_path)):
            for did in (*pair.positive_ids, *pair.negative_ids):
                if did not in corpus:
                    raise DataError(
                        f"{pairs_path}:{pair.line}: unknown document id {did!r} (not in corpus)"
                    )
            queries[pair.id] = pair.query
            qrels[pair.id] = dict.fromkeys(pair.positive_ids, 1)
            if pair.negative_ids:
                negatives[pair.id] = list(pair.negative_ids)
    except PairError as e:
        raise DataError(f"{pairs_path}:{e.line}: {e.reason}") from None
    if not queries:
        raise DataError(f"{pairs_path}: no pairs (an empty split)")
    return Dataset(_stem(pairs_path), corpus, queries, {"all": qrels}, str(pairs_path), negatives)


def load_corpus_only(corpus_path: Path) -> Dataset:
    """A bare corpus (BEIR folder or jsonl file) for label-free alignment: no queries, no qrels."""
    path = Path(corpus_path)
    corpus = _load_corpus(path)
    name = path.name if path.is_dir() else _stem(path)
    return Dataset(name, corpus, {}, {}, str(corpus_path))


# --------------------------------------------------------------------------------------------
# Deterministic splits.


def _groups(ds: Dataset, qids: Iterable[str]) -> list[list[str]]:
    """Query ids grouped by normalised text, so a repeated query never straddles two splits.

    Groups are sorted (ids within a group, then groups by their first id): the order handed to
    the seeded shuffle depends only on the content, never on file or dict order.
    """
    by_text: dict[str, list[str]] = {}
    for qid in qids:
        key = " ".join(ds.queries.get(qid, f"\0{qid}").casefold().split())
        by_text.setdefault(key, []).append(qid)
    return sorted((sorted(g) for g in by_text.values()), key=lambda g: g[0])


def _carve(ds: Dataset, qids: Iterable[str], fractions: list[float], seed: int) -> list[set[str]]:
    """Shuffle groups with `random.Random(seed)` and cut off len(fractions) parts; the rest last."""
    groups = _groups(ds, qids)
    random.Random(seed).shuffle(groups)
    n = len(groups)
    counts = [round(f * n) for f in fractions]
    # A positive fraction gets at least one group whenever the remainder keeps one too.
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and n - sum(counts) > 1:
            counts[i] = 1
    parts: list[set[str]] = []
    start = 0
    for c in counts:
        parts.append({q for g in groups[start : start + c] for q in g})
        start += c
    parts.append({q for g in groups[start:] for q in g})
    return parts


def make_splits(
    ds: Dataset, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, dict[str, dict[str, int]]]:
    """{"train", "val", "test"} qrels, deterministic for a seed.

    BEIR: its `test` split stays the test split; `dev` (or `val`) is the validation split, else
    `val_fraction` of the train queries is carved out; a missing test split is carved out of
    train with `test_fraction`. Queries also in test are dropped from train/val (and val
    queries from train). Pairs (a single split such as `all`): carved into test, val, train by
    the fractions. Queries with the same text always land in the same split.
    """
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be below 1")
    if not ds.qrels:
        raise DataError(f"dataset {ds.name!r} ({ds.source}): no labelled queries to split")

    named = {"train", "test", *VAL_SPLIT_NAMES}
    val_name = next((n for n in VAL_SPLIT_NAMES if n in ds.qrels), None)
    if named & set(ds.qrels):
        unknown = sorted(set(ds.qrels) - named)
        if unknown:
            raise DataError(
                f"dataset {ds.name!r} ({ds.source}): unknown split(s) {unknown}; expected "
                "train, dev/val, test"
            )
        train_q = set(ds.qrels.get("train", {}))
        if "test" in ds.qrels:
            test_q = set(ds.qrels["test"])
        else:
            test_q, train_q = _carve(ds, train_q, [test_fraction], seed)
        if val_name is not None:
            val_q = set(ds.qrels[val_name]) - test_q
        else:
            val_q, train_q = _carve(ds, train_q - test_q, [val_fraction], seed)
        train_q -= test_q | val_q
        train_src = ds.qrels.get("train", {})
        sources = {
            "train": train_src,
            "val": ds.qrels[val_name] if val_name is not None else train_src,
            "test": ds.qrels.get("test", train_src),
        }
    elif len(ds.qrels) == 1:
        (only,) = ds.qrels.values()
        test_q, val_q, train_q = _carve(ds, only, [test_fraction, val_fraction], seed)
        sources = {"train": only, "val": only, "test": only}
    else:
        raise DataError(
            f"dataset {ds.name!r} ({ds.source}): cannot split qrels with splits "
            f"{sorted(ds.qrels)}; expected train/dev/test or a single split"
        )

    out: dict[str, dict[str, dict[str, int]]] = {}
    for split, ids in (("train", train_q), ("val", val_q), ("test", test_q)):
        src = sources[split]
        out[split] = {q: dict(src[q]) for q in sorted(ids)}
        if not out[split]:
            raise DataError(
                f"dataset {ds.name!r} ({ds.source}): the {split} split is empty "
                f"(seed={seed}, val_fraction={val_fraction}, test_fraction={test_fraction})"
            )
    return out


# --------------------------------------------------------------------------------------------
# Unlabelled queries (distillation): query files and the service's query-log export.

QUERY_TEXT_FIELDS = ("text", "query")


def _json_query_texts(path: Path) -> list[str]:
    texts: list[str] = []
    for lineno, rec in _json_lines(path):
        field_name = next((f for f in QUERY_TEXT_FIELDS if f in rec), None)
        value = rec.get(field_name) if field_name else None
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: no string `text` or `query` field")
        if value.strip():
            texts.append(value.strip())
    return texts


def read_query_log(path: Path) -> list[str]:
    """The service's query-log export: JSON lines with at least {"text": ...} (`query` is
    accepted too); the texts in order, each once. Empty texts are skipped, a record without
    either field stops with the line number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    texts = list(dict.fromkeys(_json_query_texts(path)))
    if not texts:
        raise DataError(f"{path}: no query texts")
    return texts


def read_query_texts(path: Path) -> list[str]:
    """Unlabelled queries: JSON lines with `text` or `query` (a BEIR queries.jsonl fits; the
    first non-blank line starting with `{` says so), else one plain query per line. The
    texts in order, each once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open_text(path) as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("{"):
        texts = _json_query_texts(path)
    else:
        with open_text(path) as f:
            texts = [line.strip() for line in f if line.strip()]
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise DataError(f"{path}: no query texts")
    return texts
