"""What the commands that work offline (setup, index, train, eval, doctor) share: the
configured encoders, started in this process (they wait for a background start before the
first text), the configured Qdrant, with one clear line when it cannot be opened, and the
dataset argument and options of `train` and `eval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from encoders import Encoder
    from service.ops.settings import Settings
    from service.search.qdrant_gateway import QdrantGateway
    from training.data import Dataset

ENGINE_START_S = 900.0

DatasetArg = Annotated[
    Path,
    typer.Argument(
        help="BEIR folder (corpus, queries, qrels/*.tsv); or a pairs jsonl with --corpus; "
        "or a bare corpus file (alignment_only)."
    ),
]
CorpusOpt = Annotated[Path | None, typer.Option(help="Corpus for a pairs file.")]
QueryEncoderOpt = Annotated[
    str,
    typer.Option(
        help="Which configured encoder encodes queries: `query` (QUERYLIFT_QUERY_ENCODER__*) "
        "or `document` (a same-model adapter)."
    ),
]
CacheOpt = Annotated[Path, typer.Option(help="Embedding cache folder.")]


def command_logging(level: str) -> None:
    """The offline commands' log lines on stderr, at `level`."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def load_dataset(path: Path, corpus: Path | None) -> Dataset:
    """A BEIR folder; a pairs jsonl with its corpus; or a bare corpus file."""
    from training.data import load_beir, load_corpus_only, load_pairs

    if path.is_dir():
        return load_beir(path)
    if corpus is not None:
        return load_pairs(path, corpus)
    return load_corpus_only(path)


def started(encoder: Encoder) -> Encoder:
    """Wait for an encoder that starts in the background (vLLM: a minute or more on CPU the
    first time, while it compiles) before offline work hands it thousands of texts."""
    if not encoder.wait_ready(ENGINE_START_S):
        error = encoder.error or f"not ready after {ENGINE_START_S:g} s"
        typer.echo(f"encoder {encoder.name} did not start: {error}", err=True)
        raise typer.Exit(1)
    return encoder


def configured_encoders(query_encoder: str) -> tuple[Encoder, Encoder]:
    """(query, document) encoders from QUERYLIFT_*; `document` as the query encoder gives a
    same-model pair (one instance, both roles)."""
    from encoders import build_encoder
    from service.ops.settings import Settings

    settings = Settings()
    d = started(build_encoder(settings.document_encoder))
    q = d if query_encoder == "document" else started(build_encoder(settings.query_encoder))
    return q, d


def open_gateway(settings: Settings, timeout_s: float = 10.0) -> QdrantGateway:
    """The configured Qdrant (QUERYLIFT_QDRANT_*; offline bulk calls get a longer timeout than
    the request path's); exit 2 with one line when its embedded folder cannot be opened (held
    by another process, or written by the old embedded default)."""
    from service.search.backend import FolderRefused
    from service.search.qdrant_gateway import gateway_for

    try:
        return gateway_for(settings, timeout_s, offline=True)
    except FolderRefused as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
