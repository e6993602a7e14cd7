"""`querylift train`: an adapter checkpoint from a dataset (alignment, labels or both), scored
on its test split; `--mode distill` hands over to querylift/distill_cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from querylift.distill_cli import DistillArgs, train_distill
from querylift.offline import (
    CacheOpt,
    CorpusOpt,
    QueryEncoderOpt,
    command_logging,
    configured_encoders,
    load_dataset,
)

# training.pseudo.DEFAULT_RULE (tests/querylift/test_cli.py holds them equal): importing it
# costs every command, `serve`'s one-line refusals included, 0.7 s
DEFAULT_RULE = "last"

TrainDatasetArg = Annotated[
    Path | None,
    typer.Argument(
        help="BEIR folder (corpus, queries, qrels/*.tsv); or a pairs jsonl with --corpus; "
        'or a bare corpus file (alignment_only; distill: a jsonl of {"id", "text"} too).'
    ),
]


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

    command_logging("warning")
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
        ds = load_dataset(dataset, corpus)
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
