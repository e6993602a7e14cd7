"""Reading corpora: BEIR `corpus.jsonl[.gz]` or a plain jsonl of {"id", "text", ...payload}."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


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
