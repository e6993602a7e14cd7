"""`querylift train --mode distill`: a hybrid adapter from the query model's ranking of the
index's own candidates, with no labels (training/distill.py does the work; this reads the
inputs, runs it, and reports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from querylift.offline import configured_encoders, open_gateway

if TYPE_CHECKING:
    from service.ops.settings import Settings
    from service.search.targets import SearchTarget
    from training.data import Document


@dataclass(frozen=True)
class DistillArgs:
    """`querylift train --mode distill`'s inputs, as given."""

    out: Path
    dataset: Path | None
    collection: str | None
    tenant: str | None
    for_tenant: str | None
    queries: Path | None
    queries_from: Path | None
    pseudo: str
    pseudo_rule: str
    kind: str | None
    query_encoder: str
    steps: int | None
    lr: float
    teacher_temperature: float | None
    student_temperature: float | None
    pull: float | None
    candidates: int | None
    seed: int
    cache: Path


def _target(a: DistillArgs, settings: Settings) -> SearchTarget:
    """Where the corpus is read back from: a tenant's own search target (the tenants file,
    as /search and the label-free gate resolve it), or a collection named outright."""
    from service.bindings.tenants import Tenant
    from service.ops.preflight import targets_of
    from service.search.targets import resolve_target
    from training.data import DataError

    if a.for_tenant is not None:
        try:
            targets = targets_of(settings)
        except (ValueError, OSError) as e:
            raise DataError(f"tenants file: {e}") from None
        if a.for_tenant not in targets:
            known = ", ".join(sorted(targets)) or "none"
            raise DataError(f"no tenant {a.for_tenant!r} in the tenants file (tenants: {known})")
        return targets[a.for_tenant]
    assert a.collection is not None
    scope = "field" if a.tenant is not None else "collection"
    raw = Tenant(name="distill", collection=a.collection, tenant_value=a.tenant, scope=scope)
    return resolve_target(raw, settings)


def collection_documents(target: SearchTarget, settings: Settings) -> list[Document]:
    """The documents of a search target read back from Qdrant (QUERYLIFT_QDRANT_*), in
    whatever layout the collection has: the text where the target finds it (`text`, LangChain's
    `page_content`, LlamaIndex's `_node_content`, a tenant's `text_key`), its ids as /search
    returns them, only the tenant's points in a shared collection."""
    from service.search.qdrant_gateway import CollectionNotFound, scope_filter
    from service.search.targets import TEXT_KEYS
    from training.data import DataError, Document

    name = target.collection
    drop = {*TEXT_KEYS, *([target.tenant_field] if target.tenant_field else [])}
    gw = open_gateway(settings)
    docs: list[Document] = []
    try:
        gw.collection_info(name)
        for p in gw.scroll(name, scope_filter(target)):
            payload = dict(p.payload or {})
            text = target.text(payload)
            if not isinstance(text, str) or not text.strip():
                raise DataError(
                    f"collection {name!r}: point {p.id} has no text in its payload (looked for "
                    f"{target.text_key or ', '.join(TEXT_KEYS)}; set the tenant's `text_key` "
                    "or QUERYLIFT_TEXT_KEY)"
                )
            doc_id = target.doc_id(p.id, payload)
            docs.append(Document(doc_id, text, {k: v for k, v in payload.items() if k not in drop}))
    except CollectionNotFound:
        raise DataError(f"no collection {name!r} in Qdrant") from None
    finally:
        gw.close()
    if not docs:
        raise DataError(f"no points to read: {target.describe()}")
    return docs


def distill_inputs(a: DistillArgs) -> tuple[list[Document], list[str], str, str]:
    """(corpus, queries, query source, data description) for a distill run."""
    from training.data import DataError, read_corpus, read_query_log, read_query_texts
    from training.pseudo import PSEUDO_RULES, mix_queries, pseudo_queries

    if sum(x is not None for x in (a.dataset, a.collection, a.for_tenant)) != 1:
        raise ValueError("distill reads one corpus: give DATASET, --collection or --for-tenant")
    if a.tenant is not None and a.collection is None:
        raise ValueError("--tenant goes with --collection (a tenant's own target: --for-tenant)")
    if a.pseudo not in ("auto", "mix", "off"):
        raise ValueError(f"--pseudo {a.pseudo!r}: one of auto, mix, off")
    if a.pseudo_rule not in PSEUDO_RULES:
        raise ValueError(f"--pseudo-rule {a.pseudo_rule!r}: one of {', '.join(PSEUDO_RULES)}")
    if a.kind not in (None, "hybrid"):
        raise ValueError("distill trains the hybrid kind only (leave --kind out)")
    if a.query_encoder == "document":
        raise ValueError("distill needs the query encoder as the teacher, not `document`")
    if a.dataset is None:
        from service.ops.settings import Settings

        settings = Settings()
        target = _target(a, settings)
        corpus = collection_documents(target, settings)
        data = (f"tenant {a.for_tenant}: " if a.for_tenant else "") + target.describe()
    else:
        assert a.dataset is not None
        corpus = list(read_corpus(a.dataset))
        data = str(a.dataset)
        if not corpus:
            raise DataError(f"{a.dataset}: empty corpus (no documents)")
    real: list[str] = []
    sources = []
    if a.queries is not None:
        real += read_query_texts(a.queries)
        sources.append("queries")
    if a.queries_from is not None:
        real += read_query_log(a.queries_from)
        sources.append("log")
    real = list(dict.fromkeys(real))
    source = "+".join(sources) or "pseudo"
    if not real:
        if a.pseudo == "off":
            raise ValueError("no queries: give --queries / --queries-from, or allow --pseudo")
        return corpus, pseudo_queries(corpus, a.pseudo_rule, seed=a.seed), "pseudo", data
    if a.pseudo == "mix":
        real = mix_queries(real, pseudo_queries(corpus, a.pseudo_rule, seed=a.seed), a.seed)
        source = "mixed"
    return corpus, real, source, data


def train_distill(a: DistillArgs) -> None:
    """`querylift train --mode distill`: a hybrid adapter from the query model's ranking."""
    from training.cache import EmbeddingCache
    from training.data import DataError
    from training.distill import distill_adapter
    from training.report import markdown_table, write_report

    try:
        if (a.out / "checkpoint").exists():
            raise ValueError(f"{a.out / 'checkpoint'} exists; checkpoints are never overwritten")
        corpus, texts, source, data = distill_inputs(a)
        q, d = configured_encoders("query")
        given = {
            "steps": a.steps,
            "teacher_temperature": a.teacher_temperature,
            "student_temperature": a.student_temperature,
            "pull": a.pull,
            "candidates": a.candidates,
        }  # unset: distill_adapter's defaults (training/distill.py), stated once
        result = distill_adapter(
            q,
            d,
            corpus,
            texts,
            seed=a.seed,
            cache=EmbeddingCache(a.cache),
            lr=a.lr,
            query_source=source,
            pseudo_rule=a.pseudo_rule,  # type: ignore[arg-type]
            data=data,
            **{k: v for k, v in given.items() if v is not None},
        )
    except (DataError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    adapter = result.save(a.out / "checkpoint")
    stats = result.stats
    held = stats["agreement"]["held_out"]
    split = "held_out" if stats["counts"]["held_out_queries"] else "train"
    rows = {
        f"teacher ({q.name} on both sides, the ceiling)": {"agreement@10": 1.0},
        f"{d.name} alone": {"agreement@10": stats["agreement"][split]["document_model"]},
        "distilled hybrid": {"agreement@10": stats["agreement"][split]["student"]},
    }
    paths = write_report(
        a.out,
        f"querylift train --mode distill: {data}",
        rows,
        [{"epoch": h["step"], "kl_loss": h["kl"], "pull_loss": h["pull"]} for h in result.history],
        meta={"adapter_id": adapter.id, "data": data, "query_source": source, "stats": stats},
        baseline=f"{d.name} alone",
    )
    c = stats["counts"]
    typer.echo(
        f"{c['queries']} queries ({source}; {c['train_queries']} trained on, "
        f"{c['held_out_queries']} held out), {c['corpus_documents']} documents, "
        f"{c['candidate_documents']} of them encoded by {q.name} as candidates"
    )
    where = "held-out" if split == "held_out" else "training (too few to hold any out)"
    typer.echo(f"agreement with the teacher (nDCG@10 of its top-10), {where} queries:")
    typer.echo(markdown_table(rows, baseline=f"{d.name} alone"))
    if split == "held_out" and held["document_model"] < 1.0:
        gap = (held["student"] - held["document_model"]) / (1.0 - held["document_model"])
        typer.echo(f"the student closes {gap:.0%} of the gap to the teacher on held-out queries")
    pull = result.manifest.training["pull"]
    typer.echo(
        f"pull toward the document model {pull:g}"
        + (" (the default)" if a.pull is None else "")
        + ": a weaker one (--reg) follows the teacher further on queries like these, at a "
        "measured cost on unlike ones (bench/README.md, Adapters without labels)"
    )
    t = stats["seconds"]
    typer.echo(f"vectors {t['vectors']:.1f}s (cached afterwards), training {t['train']:.1f}s")
    typer.echo(
        f"checkpoint {a.out / 'checkpoint'} (adapter id {adapter.id}); report {paths['markdown']}"
    )
