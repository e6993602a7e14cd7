"""`querylift eval`: checkpoints against the document model alone on one split, and with
`--gate` the service's quality gate run offline on the same statistics (adapters/gate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from querylift.offline import (
    CacheOpt,
    CorpusOpt,
    DatasetArg,
    QueryEncoderOpt,
    command_logging,
    configured_encoders,
    load_dataset,
)

if TYPE_CHECKING:  # annotations only: the CLI imports its heavy modules lazily
    from adapters import Adapter
    from encoders import Encoder
    from training.cache import EmbeddingCache
    from training.data import Dataset


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

    command_logging("warning")
    try:
        ds = load_dataset(dataset, corpus)
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
