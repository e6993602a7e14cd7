"""`querylift` command line: setup, doctor, settings-table, random-qwen3, serve, index here;
train (querylift/train_cli.py), eval (querylift/eval_cli.py) and adapters
(querylift/admin_cli.py) in their own modules, all on the one `app`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from querylift.admin_cli import adapters_app
from querylift.eval_cli import eval_
from querylift.offline import command_logging, open_gateway, started
from querylift.train_cli import train

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="querylift: a strong query encoder + an adapter into your index's space.",
)
app.add_typer(adapters_app, name="adapters")


def _first_error(e: Exception) -> str:
    """A pydantic error as one line: `QUERYLIFT_X: message`."""
    errors = getattr(e, "errors", None)
    if not callable(errors) or not errors():
        return str(e).splitlines()[0]
    first = errors()[0]
    name = "QUERYLIFT_" + "__".join(str(p).upper() for p in first.get("loc", ()))
    return f"{name}: {first.get('msg', '')}"


@app.command()
def setup(
    models_dir: Annotated[Path, typer.Option(help="Where the encoders are unpacked.")] = Path(
        "models"
    ),
    demo: Annotated[
        bool, typer.Option(help="Index the demo corpus and train the demo adapter.")
    ] = True,
    cache_dir: Annotated[Path, typer.Option("--cache", help="Embedding cache folder.")] = Path(
        "var/cache"
    ),
) -> None:
    """Fetch and unpack the embedded encoders (once), then build the demo collection."""
    from querylift.models import fetch_all

    command_logging("info")
    t0 = time.perf_counter()
    paths = fetch_all(models_dir)
    typer.echo(
        f"models ready in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(str(p) for p in paths.values())
    )
    if not demo:
        return
    from encoders import build_encoder
    from querylift.demo import ensure_demo_adapter, ensure_demo_index
    from service.ops.settings import Settings
    from training.cache import EmbeddingCache
    from training.report import markdown_table

    settings = Settings()
    cache = EmbeddingCache(cache_dir)
    gw = open_gateway(settings)  # first: a held folder fails before a model loads
    q = started(build_encoder(settings.query_encoder))
    d = started(build_encoder(settings.document_encoder))
    try:
        t1 = time.perf_counter()
        n = ensure_demo_index(settings, gw, d, cache)
        typer.echo(
            f"demo collection {settings.collection!r}: {n} documents indexed "
            f"in {time.perf_counter() - t1:.1f}s"
            if n
            else f"demo collection {settings.collection!r} already indexed"
        )
    finally:
        gw.close()
    t2 = time.perf_counter()
    try:
        adapter_id, metrics = ensure_demo_adapter(settings, q, d, cache)
    finally:
        for enc in (q, d):  # an in-process engine's processes end with it
            enc.close()
    if metrics:
        typer.echo("demo test claims (300), nDCG@10 etc.:")
        typer.echo(markdown_table(metrics, baseline=f"{d.name} alone"))
    typer.echo(
        f"demo adapter {adapter_id} active for tenant {settings.dev_tenant!r} "
        f"({time.perf_counter() - t2:.1f}s)"
    )


@app.command()
def doctor() -> None:
    """Check what `querylift serve` needs (settings from QUERYLIFT_*): the encoders' folders,
    the adapter store, the tenants file, Qdrant, and every tenant's search target."""
    from querylift.doctor import run
    from service.ops.settings import Settings

    marks = {"ok": "ok  ", "FAIL": "FAIL", "warn": "warn", "note": "note"}
    healthy = run(Settings(), lambda status, line: typer.echo(f"[{marks[status]}] {line}"))
    raise typer.Exit(0 if healthy else 1)


@app.command("settings-table")
def settings_table(
    doc: Annotated[Path, typer.Option(help="Markdown file with the marked table blocks.")] = Path(
        "docs/settings.md"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 when the tables are stale.")
    ] = False,
) -> None:
    """Regenerate the settings tables in DOC from the settings' own Field descriptions
    (service/ops/settings.py, encoders/base.py), so the documentation cannot drift."""
    from querylift.settings_doc import sync

    try:
        current = sync(doc, check=check)
    except (OSError, ValueError) as e:
        typer.echo(f"{doc}: {e}", err=True)
        raise typer.Exit(2) from None
    if current:
        typer.echo(f"{doc}: up to date")
    elif check:
        typer.echo(f"{doc}: out of date: run `querylift settings-table`", err=True)
        raise typer.Exit(1)
    else:
        typer.echo(f"{doc}: tables regenerated")


@app.command("random-qwen3")
def random_qwen3(
    out: Annotated[Path, typer.Argument(help="Folder to write (an HF model folder).")],
    preset: Annotated[
        str, typer.Option(help="Shape: `tiny` (256-d, 2 layers) or `qwen3-0.6b`.")
    ] = "tiny",
    layers: Annotated[int | None, typer.Option(help="Override the number of layers.")] = None,
    vocab_from: Annotated[
        Path | None,
        typer.Option(
            help="Borrow a WordPiece tokenizer.json from this folder (real text gets "
            "realistic token counts); default: a small word-level vocabulary."
        ),
    ] = None,
    max_positions: Annotated[int, typer.Option(help="Context length.")] = 512,
    seed: Annotated[int, typer.Option(help="Weights' random seed.")] = 0,
) -> None:
    """Build a Qwen3-architecture model with random weights (no download), for the vLLM
    backend's CPU tier and its benchmark: Qwen3-Embedding's code path, not its quality."""
    from querylift.random_qwen3 import PRESETS, build_random_qwen3

    if preset not in PRESETS:
        raise typer.BadParameter(f"one of {sorted(PRESETS)}", param_hint="--preset")
    extra = {"num_hidden_layers": layers} if layers else {}
    build_random_qwen3(
        out, preset, max_positions=max_positions, seed=seed, vocab_from=vocab_from, **extra
    )
    typer.echo(f"wrote {out} ({preset}{f', {layers} layers' if layers else ''})")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides QUERYLIFT_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides QUERYLIFT_PORT.")] = None,
) -> None:
    """Run the HTTP service (settings from QUERYLIFT_* environment variables)."""
    import logging
    import os

    from pydantic import ValidationError

    from service.ops.preflight import failures_line, startup_checks
    from service.ops.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        typer.echo(f"querylift serve: invalid setting: {_first_error(e)}", err=True)
        raise typer.Exit(2) from None
    if host:  # the address it binds is the one the exposure check judges
        settings = settings.model_copy(update={"host": host})
    # before torch or a weight loads: a missing model folder, or development mode on a
    # non-loopback address, is one line and exit 1, not a hub lookup that retries for half a
    # minute or an unauthenticated service on the network
    checks = list(startup_checks(settings))
    if (line := failures_line(checks)) is not None:
        typer.echo(f"querylift serve: cannot start: {line}", err=True)
        raise typer.Exit(1)
    if not settings.model_hub:  # read when huggingface_hub is first imported (just below)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from service.ops.cpu import apply_spin_count

    apply_spin_count(settings)  # read by libgomp when torch loads (just below)

    import uvicorn
    from threadpoolctl import threadpool_limits

    from service.app import create_app
    from service.ops.logs import configure_logging
    from service.ops.shutdown import DrainingServer

    # The encoder's torch pool owns the cores; numpy's BLAS (adapter matmuls, local Qdrant)
    # gets one thread, or its pool wakes and fights torch's: on 2 cores a 16-row adapter
    # apply took 1.2 ms with BLAS threads and 0.3 ms without.
    threadpool_limits(1, user_api="blas")
    # one handler for every logger (QUERYLIFT_LOG_FORMAT); uvicorn keeps it (log_config=None)
    # and leaves the access line to the service's own, which has the request id and tenant
    configure_logging(settings.log_level, settings.log_format)
    for check in checks:  # e.g. development mode on the network, opted into by name
        if check.status == "warn":
            logging.getLogger("querylift.serve").warning("%s", check.text())
    service = create_app(settings)
    # SIGTERM: 503 for new requests, in-flight ones finish, exit within the grace period
    config = uvicorn.Config(
        service,
        host=settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
    )
    DrainingServer(config, service.state.drain).run()


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
    dim: Annotated[
        int | None,
        typer.Option(
            help="Index a Matryoshka prefix: the first N values of each vector, renormalised "
            "(N below the document encoder's dim; recorded in the collection's metadata, so "
            "the service cuts its vectors the same way)."
        ),
    ] = None,
) -> None:
    """Encode a corpus with the document encoder into a Qdrant collection (safe to re-run)."""
    from encoders import build_encoder
    from querylift.indexing import check_prefix, index_documents
    from service.ops.settings import Settings
    from training.data import DataError, read_corpus

    if dim is not None and dim <= 0:  # before loading a model
        raise typer.BadParameter(f"{dim}: a prefix size is at least 1", param_hint="--dim")
    settings = Settings()
    command_logging(settings.log_level)
    try:
        docs = list(read_corpus(corpus))
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    gw = open_gateway(settings)  # first: a held folder fails before a model loads
    encoder = started(build_encoder(settings.document_encoder))
    try:
        check_prefix(dim, encoder.dim)
    except ValueError as e:
        gw.close()
        raise typer.BadParameter(str(e), param_hint="--dim") from None
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
            dim=dim,
        )
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        gw.close()
    typer.echo(
        f"indexed {report.documents} documents ({report.tokens} tokens, "
        f"{report.truncated} truncated to {encoder.max_tokens}) into "
        f"{report.collection!r}{f' at {dim} of {encoder.dim} dims' if dim else ''} "
        f"in {time.perf_counter() - t0:.1f}s"
    )


@app.command("migrate-embedded")
def migrate_embedded(
    folder: Annotated[
        Path | None,
        typer.Argument(help="The old folder (default: QUERYLIFT_QDRANT_PATH)."),
    ] = None,
) -> None:
    """Copy a folder of the old embedded default (qdrant-client's local mode) into the
    embedded Qdrant engine, every collection as it is; the old folder is kept beside it."""
    from querylift.migrate import migrate_folder
    from service.ops.preflight import targets_of
    from service.ops.settings import Settings
    from service.search.backend import FolderRefused
    from service.search.qdrant_gateway import hnsw_of

    settings = Settings()
    command_logging(settings.log_level)
    where = folder or settings.qdrant_path
    fields = {settings.tenant_field} | {
        t.tenant_field for t in targets_of(settings).values() if t.tenant_field
    }
    try:
        done = migrate_folder(where, tenant_fields=fields, hnsw=hnsw_of(settings))
    except (ValueError, FolderRefused) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for m in done:
        indexed = f", keyword index on {', '.join(m.indexed_fields)}" if m.indexed_fields else ""
        typer.echo(f"copied {m.collection!r}: {m.points} points{indexed}")
    typer.echo(f"{where} now holds the embedded engine; the old folder is {where}.local-mode")


# registered after index, in the order `querylift --help` lists them
app.command()(train)
app.command("eval")(eval_)


if __name__ == "__main__":
    app()
