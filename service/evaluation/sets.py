"""Uploaded evaluation sets: a tenant's labelled validation set (the quality gate) and its
unlabelled query set (the label-free gate), parsed and checked with every problem naming its
line. The pairs format is `querylift train`'s (adapters/pairs.py), so a set one side accepts
the other does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.pairs import PairError, parse_pairs
from service.evaluation.errors import (
    INVALID_QUERY_SET,
    INVALID_VALIDATION_SET,
    SET_TOO_LARGE,
    TOO_MANY_QUERIES,
    EvaluationError,
)

MAX_VALIDATION_BYTES = 16 << 20
MAX_QUERY_SET_BYTES = MAX_VALIDATION_BYTES


# -- validation sets ---------------------------------------------------------------------------
class ValidationPair(BaseModel):
    """One labelled query as stored: made from an `adapters.pairs.Pair`, which checked it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="query id (the line's `id`, else `q<line number>`)")
    query: str = Field(min_length=1)
    positive_ids: list[str] = Field(min_length=1, description="relevant document ids (doc_id)")


class ValidationSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    sha256: str = Field(description="sha256 of the canonical pairs (what gate records cite)")
    uploaded_at: str
    actor: str | None = None
    pairs: list[ValidationPair]

    def summary(self) -> dict[str, Any]:
        return {
            "n_queries": len(self.pairs),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "actor": self.actor,
        }


def _invalid(message: str, details: Any = None) -> EvaluationError:
    return EvaluationError(INVALID_VALIDATION_SET, message, details)


def read_records(
    body: bytes,
    *,
    what: str,
    items: str,
    wrapper: str,
    invalid: Callable[..., EvaluationError],
    max_bytes: int,
    max_queries: int,
) -> tuple[list[tuple[int, Any]], bool]:
    """The records of an uploaded set (validation pairs, unlabelled queries): a JSON list (or
    `{wrapper: [...]}`) or JSON lines, within the size and count caps. Returns ((position,
    record), whether it was a list); a problem names its line."""
    if len(body) > max_bytes:
        raise EvaluationError(
            SET_TOO_LARGE, f"{what} is over {max_bytes} bytes", {"max_bytes": max_bytes}
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"{what} is not UTF-8") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSON lines (or broken JSON: the line loop below names the line)
    if isinstance(whole, dict) and set(whole) == {wrapper}:
        whole = whole[wrapper]
    records: list[tuple[int, Any]] = []
    if isinstance(whole, list):
        records = list(enumerate(whole, 1))
    elif text.lstrip().startswith("["):
        raise invalid(f"invalid JSON: expected a list of {items} or JSON lines")
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise invalid(f"line {lineno}: invalid JSON ({e.msg})", {"line": lineno}) from None
    if not records:
        raise invalid(f"{what} is empty")
    if len(records) > max_queries:
        raise EvaluationError(
            TOO_MANY_QUERIES,
            f"{what} has {len(records)} queries; the limit is "
            f"{max_queries} (QUERYLIFT_GATE_MAX_QUERIES)",
            {"queries": len(records), "max_queries": max_queries},
        )
    return records, isinstance(whole, list)


def parse_validation(body: bytes, max_queries: int, max_chars: int) -> list[ValidationPair]:
    """Validate an uploaded set: every problem names its line (or list position)."""
    records, _ = read_records(
        body,
        what="the validation set",
        items="pairs",
        wrapper="pairs",
        invalid=_invalid,
        max_bytes=MAX_VALIDATION_BYTES,
        max_queries=max_queries,
    )
    pairs: list[ValidationPair] = []
    try:
        for pair in parse_pairs(records):
            if len(pair.query) > max_chars:
                raise _invalid(
                    f"line {pair.line}: the query has {len(pair.query)} characters; the limit "
                    f"is {max_chars} (QUERYLIFT_MAX_INPUT_CHARS)",
                    {"line": pair.line},
                )
            pairs.append(
                ValidationPair(id=pair.id, query=pair.query, positive_ids=list(pair.positive_ids))
            )
    except PairError as e:
        field = {"errors": [{"loc": [e.key], "msg": e.reason}]} if e.key else {}
        raise _invalid(str(e), {"line": e.line, **field}) from None
    return pairs


def fingerprint(pairs: list[ValidationPair]) -> str:
    canon = "\n".join(
        json.dumps(p.model_dump(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        for p in pairs
    )
    return hashlib.sha256(canon.encode()).hexdigest()


class QuerySet(BaseModel):
    """A tenant's unlabelled queries for the label-free gate (service/evaluation/label_free.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    sha256: str = Field(description="sha256 of the queries, one per line (what reports cite)")
    uploaded_at: str
    actor: str | None = None
    queries: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "n_queries": len(self.queries),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "actor": self.actor,
        }


def new_validation_set(
    tenant: str, pairs: list[ValidationPair], actor: str | None
) -> ValidationSet:
    return ValidationSet(
        tenant=tenant,
        sha256=fingerprint(pairs),
        uploaded_at=datetime.now(UTC).isoformat(),
        actor=actor,
        pairs=pairs,
    )


# -- unlabelled query sets ---------------------------------------------------------------------
def _invalid_queries(message: str, details: Any = None) -> EvaluationError:
    return EvaluationError(INVALID_QUERY_SET, message, details)


def _text_of(record: Any, where: str) -> str:
    if isinstance(record, dict):
        record = record.get("text")
    if not isinstance(record, str):
        raise _invalid_queries(
            f'{where}: expected a string or an object with a "text" string', {"where": where}
        )
    return record


def parse_queries(body: bytes, max_queries: int, max_chars: int) -> tuple[list[str], int]:
    """Validate an uploaded query set: (distinct queries in order, duplicates dropped)."""
    records, from_list = read_records(
        body,
        what="the query set",
        items="queries",
        wrapper="queries",
        invalid=_invalid_queries,
        max_bytes=MAX_QUERY_SET_BYTES,
        max_queries=max_queries,
    )
    seen: dict[str, None] = {}
    for position, record in records:
        where = f"{'item' if from_list else 'line'} {position}"
        text = _text_of(record, where)
        if not text.strip():
            raise _invalid_queries(f"{where}: the query is empty", {"where": where})
        if len(text) > max_chars:
            raise _invalid_queries(
                f"{where}: the query has {len(text)} characters; the limit is {max_chars} "
                "(QUERYLIFT_MAX_INPUT_CHARS)",
                {"where": where},
            )
        seen.setdefault(text, None)
    return list(seen), len(records) - len(seen)


def query_sha256(texts: list[str]) -> str:
    """What reports cite for a list of queries."""
    return hashlib.sha256("\n".join(json.dumps(t) for t in texts).encode()).hexdigest()


def new_query_set(tenant: str, queries: list[str], actor: str | None) -> QuerySet:
    return QuerySet(
        tenant=tenant,
        sha256=query_sha256(queries),
        uploaded_at=datetime.now(UTC).isoformat(),
        actor=actor,
        queries=queries,
    )
