"""The pairs format (labelled queries): one parser for `querylift train`/`eval` and the service.

A training pairs file and a tenant's validation set are the same format, so a record one side
accepts the other does too. It lives here because both sides may import adapters/ (the gate
that scores these pairs is adapters/gate.py). A record:

    {"query": str, "positive_ids": [doc id, ...], "negative_ids"?: [doc id, ...], "id"?: any}

- `query`: a non-empty string, kept stripped.
- `positive_ids`: a non-empty list; `negative_ids`: a list, absent or null meaning none. A
  document id is a non-empty string or an integer (kept as its string); repeats collapse in
  order. No id may be both positive and negative.
- the query id is `id` as a string, else `q<line>` (its line or list position); unique.
- other keys are ignored.

Where the records come from (a file, an upload) is each edge's business; each edge turns a
`PairError` into its own error (training's DataError naming the file, the service's 422).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class PairError(ValueError):
    """A record that breaks the format: `line` locates it; `key` names the malformed field
    (None: the record as a whole, or its id repeating another's)."""

    def __init__(self, line: int, reason: str, key: str | None = None) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason
        self.key = key


@dataclass(frozen=True)
class Pair:
    line: int  # the record's line (JSON lines) or 1-based list position
    id: str
    query: str
    positive_ids: tuple[str, ...]
    negative_ids: tuple[str, ...] = ()


def _ids(value: Any, key: str, line: int, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value):
        need = "a non-empty list" if required else "a list"
        raise PairError(line, f"`{key}` must be {need} of document ids", key)
    out: list[str] = []
    for v in value:
        if not isinstance(v, str | int) or isinstance(v, bool) or str(v) == "":
            raise PairError(line, f"`{key}` holds {v!r}, not a document id", key)
        out.append(str(v))
    return tuple(dict.fromkeys(out))


def parse_pair(record: Any, line: int) -> Pair:
    """One record, checked field by field in a fixed order (the first problem is reported)."""
    if not isinstance(record, dict):
        raise PairError(line, "expected a JSON object")
    text = record.get("query")
    if not isinstance(text, str) or not text.strip():
        raise PairError(line, "missing or empty `query`", "query")
    given = record.get("id")
    qid = str(given) if given not in (None, "") else f"q{line}"
    pos = _ids(record.get("positive_ids"), "positive_ids", line, required=True)
    neg = _ids(record.get("negative_ids"), "negative_ids", line, required=False)
    both = set(pos) & set(neg)
    if both:
        raise PairError(line, f"document id {sorted(both)[0]!r} is both positive and negative")
    return Pair(line, qid, text.strip(), pos, neg)


def parse_pairs(records: Iterable[tuple[int, Any]]) -> Iterator[Pair]:
    """Pairs from (line, record) in order; a repeated query id is an error.

    Lazy, so an edge's own checks on a pair (ids in the corpus, a length limit) run before
    the next record is read, and the first bad line is the one reported.
    """
    seen: set[str] = set()
    for line, record in records:
        pair = parse_pair(record, line)
        if pair.id in seen:
            raise PairError(line, f"duplicate query id {pair.id!r}")
        seen.add(pair.id)
        yield pair
