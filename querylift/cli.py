"""`querylift` command line: setup, serve, index."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="querylift: a strong query encoder + an adapter into your index's space.",
)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def setup(
    models_dir: Annotated[Path, typer.Option(help="Where the encoders are unpacked.")] = Path(
        "models"
    ),
    demo: Annotated[
        bool, typer.Option(help="Index the demo corpus and fit the demo adapter.")
    ] = True,
) -> None:
    """Fetch and unpack the embedded encoders (once), then build the demo collection."""
    from querylift.models import fetch_all

    _logging("info")
    t0 = time.perf_counter()
    paths = fetch_all(models_dir)
    typer.echo(
        f"models ready in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(str(p) for p in paths.values())
    )
    if not demo:
        return
    from encoders import build_encoder
    from querylift.demo import DEMO_DIR, ensure_demo_adapter, ensure_demo_index
    from service.qdrant_gateway import QdrantGateway
    from service.settings import Settings

    settings = Settings()
    q = build_encoder(settings.query_encoder)
    d = build_encoder(settings.document_encoder)
    gw = QdrantGateway(
        url=settings.qdrant_url, path=str(settings.qdrant_path), api_key=settings.qdrant_api_key
    )
    try:
        t1 = time.perf_counter()
        n = ensure_demo_index(settings, gw, d, DEMO_DIR)
        typer.echo(
            f"demo collection {settings.collection!r}: {n} documents indexed "
            f"in {time.perf_counter() - t1:.1f}s"
            if n
            else f"demo collection {settings.collection!r} already indexed"
        )
        t2 = time.perf_counter()
        adapter_id = ensure_demo_adapter(settings, q, d, DEMO_DIR)
        typer.echo(
            f"demo adapter {adapter_id} active for tenant {settings.dev_tenant!r} "
            f"({time.perf_counter() - t2:.1f}s)"
        )
    finally:
        gw.close()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides QUERYLIFT_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides QUERYLIFT_PORT.")] = None,
) -> None:
    """Run the HTTP service (settings from QUERYLIFT_* environment variables)."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings()
    _logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
    )


@app.command()
def index(
    corpus: Annotated[
        Path,
        typer.Argument(
            help='BEIR folder / corpus.jsonl[.gz], or a jsonl of {"id", "text", ...payload}.'
        ),
    ],
    collection: Annotated[
        str | None, typer.Option(help="Defaults to QUERYLIFT_COLLECTION.")
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant value written to every point (defaults to QUERYLIFT_DEV_TENANT)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Encode a corpus with the document encoder into a Qdrant collection (safe to re-run)."""
    from encoders import build_encoder
    from querylift.indexing import index_documents
    from service.qdrant_gateway import QdrantGateway
    from service.settings import Settings
    from training.data import DataError, read_corpus

    settings = Settings()
    _logging(settings.log_level)
    try:
        docs = list(read_corpus(corpus))
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    encoder = build_encoder(settings.document_encoder)
    gw = QdrantGateway(
        url=settings.qdrant_url, path=str(settings.qdrant_path), api_key=settings.qdrant_api_key
    )
    t0 = time.perf_counter()
    try:
        report = index_documents(
            gw,
            encoder,
            docs,
            collection=collection or settings.collection,
            tenant_field=settings.tenant_field,
            tenant_value=tenant or settings.dev_tenant,
            batch_size=batch_size,
            total=len(docs),
        )
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        gw.close()
    typer.echo(
        f"indexed {report.documents} documents ({report.tokens} tokens, "
        f"{report.truncated} truncated to {encoder.max_tokens}) into "
        f"{report.collection!r} in {time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    app()
