"""GPU benchmark: the Qwen3-Embedding-8B architecture with random weights, bf16, no download.

The model is built from its config (transformers' `Qwen3Model`, random weights, no tokenizer:
random token ids), and run the way `encoders/transformers_backend.py` runs it: one forward pass
per batch, last-token pooling, L2 normalisation. Prints queries/s, tokens/s, ms per batch and
model FLOP utilisation (MFU = 2 x matmul parameters x tokens/s over the GPU's dense bf16 peak)
at query lengths 16/64/256 and batch sizes 1..256, then the cost of a 4096 -> 1024 linear
adapter (+ normalisation) per batch. Needs only PyTorch and transformers (no vLLM, no hub).

    python bench/gpu.py [--max-seconds 600] [--lengths 16 64 256] [--batches 1 4 16 64 256]
    python bench/gpu.py --tiny --device cpu --max-seconds 10     # exercise the script on CPU

Batches are uniform in length (no padding): the model's best case for that length. Attention
score FLOPs (under 1% at 256 tokens) are left out of MFU, as is the embedding lookup.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Qwen/Qwen3-Embedding-8B's config.json (a Qwen3-8B-Base backbone, 151665-token vocabulary,
# no LM head). max_position_embeddings / rope_theta do not change the compute measured here.
QWEN3_EMBEDDING_8B: dict[str, Any] = {
    "vocab_size": 151665,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "tie_word_embeddings": False,
}
# A 2-layer stand-in so the script can run end to end on a CPU (tests).
TINY: dict[str, Any] = {
    **QWEN3_EMBEDDING_8B,
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}
ADAPTER_OUT = 1024  # ERA's adapter: nn.Linear(4096, 1024), output L2-normalised

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = [
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM


@dataclass
class Row:
    length: int
    batch: int
    status: str  # ok | oom | skipped
    ms_per_batch: float | None = None
    queries_per_s: float | None = None
    tokens_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    iters: int = 0


def detect_peak_tflops(device_name: str) -> float | None:
    name = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def build_config(preset: dict[str, Any], attn: str) -> Any:
    from transformers import Qwen3Config

    config = Qwen3Config(**preset)
    config.use_cache = False
    config._attn_implementation = attn
    return config


def build_model(config: Any, device: Any, dtype: Any) -> Any:
    """Random weights, allocated and initialised directly on `device` in `dtype`."""
    import torch
    from transformers import Qwen3Model

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3Model(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    return model


def matmul_params(model: Any) -> tuple[int, int]:
    """(all parameters, parameters that take part in a matmul: all but the embedding table)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return total, total - embed


def last_token_pool(hidden: Any, mask: Any) -> Any:
    """The last position whose mask is 1 (left or right padding), as the transformers backend."""
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * positions).argmax(dim=1)
    return hidden[rows, last]


def make_embed(model: Any) -> Callable[[Any, Any], Any]:
    import torch

    @torch.inference_mode()
    def embed(ids: Any, mask: Any) -> Any:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = last_token_pool(hidden, mask).float()
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    return embed


class Timer:
    """Seconds per call of `fn`: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], iters: int) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters

    def measure(self, fn: Callable[[], Any], min_time: float, warmup: int) -> tuple[float, int]:
        """Warm up, estimate one call, then time enough calls to fill `min_time`."""
        for _ in range(warmup):
            fn()
        self.sync()
        one = self.time(fn, 1)
        iters = max(3, min(1000, int(min_time / max(one, 1e-6))))
        return self.time(fn, iters), iters


def is_oom(e: BaseException) -> bool:
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(e, oom_type)) or "out of memory" in str(e)


def sweep(
    embed: Callable[[Any, Any], Any],
    *,
    device: Any,
    vocab: int,
    lengths: list[int],
    batches: list[int],
    flops_per_token: float,
    peak_tflops: float | None,
    min_time: float,
    warmup: int,
    deadline: float,
) -> list[Row]:
    import torch

    timer = Timer(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for length in lengths:
        too_big = False
        for batch in batches:
            if too_big or time.monotonic() > deadline:
                rows.append(Row(length, batch, "oom" if too_big else "skipped"))
                continue
            ids = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
            mask = torch.ones_like(ids)
            budget = max(0.0, min(min_time, deadline - time.monotonic()))
            try:
                secs, iters = timer.measure(lambda i=ids, m=mask: embed(i, m), budget, warmup)
            except (RuntimeError, MemoryError) as e:
                if not is_oom(e):
                    raise
                too_big = True  # larger batches at this length will not fit either
                del ids, mask
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(Row(length, batch, "oom"))
                continue
            tokens_s = batch * length / secs
            tflops = flops_per_token * tokens_s / 1e12
            rows.append(
                Row(
                    length,
                    batch,
                    "ok",
                    ms_per_batch=secs * 1e3,
                    queries_per_s=batch / secs,
                    tokens_per_s=tokens_s,
                    tflops=tflops,
                    mfu=tflops / peak_tflops if peak_tflops else None,
                    iters=iters,
                )
            )
            print_row(rows[-1])
    return rows


def count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'len':>5} {'batch':>6} {'ms/batch':>10} {'queries/s':>11} {'tokens/s':>12} "
    f"{'TFLOP/s':>9} {'MFU':>7}  status"
)


def print_row(r: Row) -> None:
    mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
    if r.status != "ok":
        mfu = "-"
    print(
        f"{r.length:>5} {r.batch:>6} {fmt(r.ms_per_batch, '.2f'):>10} "
        f"{fmt(r.queries_per_s, ',.0f'):>11} {fmt(r.tokens_per_s, ',.0f'):>12} "
        f"{fmt(r.tflops, '.3g'):>9} {mfu:>7}  {r.status}",
        flush=True,
    )


def bench_adapter(
    in_dim: int, out_dim: int, batches: list[int], device: Any, min_time: float
) -> list[dict[str, Any]]:
    """A linear adapter + L2 norm per batch, on `device` (bf16 and fp32) and in host numpy."""
    import numpy as np
    import torch

    timer = Timer(device)
    dtypes = [torch.bfloat16, torch.float32] if device.type == "cuda" else [torch.float32]
    out = []
    for dtype in dtypes:
        lin = torch.nn.Linear(in_dim, out_dim, device=device, dtype=dtype).requires_grad_(False)
        for b in batches:
            x = torch.randn(b, in_dim, device=device, dtype=dtype)

            @torch.inference_mode()
            def step(x: Any = x, lin: Any = lin) -> Any:
                return torch.nn.functional.normalize(lin(x).float(), dim=-1)

            secs, _ = timer.measure(step, min_time, warmup=3)
            out.append(
                {"where": f"{device.type} torch {str(dtype)[6:]}", "batch": b, "us": secs * 1e6}
            )
    rng = np.random.default_rng(0)
    w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    bias = rng.standard_normal(out_dim).astype(np.float32)
    host = Timer(torch.device("cpu"))
    for b in batches:
        xs = rng.standard_normal((b, in_dim)).astype(np.float32)

        def np_step(xs: Any = xs) -> Any:
            y = xs @ w.T + bias
            return y / np.linalg.norm(y, axis=1, keepdims=True)

        secs, _ = host.measure(np_step, min_time, warmup=3)
        out.append({"where": "host numpy float32", "batch": b, "us": secs * 1e6})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide Qwen3 (CPU tests)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    p.add_argument("--attn", default="sdpa", help="attention implementation (default sdpa)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU")
    p.add_argument("--max-seconds", type=float, default=600.0, help="budget for the sweep")
    p.add_argument("--min-time", type=float, default=None, help="seconds timed per point")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-adapter", action="store_true", help="skip the adapter timing")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"bench/gpu.py needs PyTorch and transformers: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "CUDA is not available: this benchmark needs a GPU "
            "(run with --tiny --device cpu to exercise it on a CPU)",
            file=sys.stderr,
        )
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    min_time = args.min_time if args.min_time is not None else (0.05 if args.tiny else 0.5)
    preset = TINY if args.tiny else QWEN3_EMBEDDING_8B

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or detect_peak_tflops(device_name)
        peak_note = "given" if args.peak_tflops else ("data sheet" if peak else "unknown GPU")
        if peak is None:
            peak = DEFAULT_PEAK_TFLOPS
            peak_note += f", assumed H100 SXM {DEFAULT_PEAK_TFLOPS:.0f}"
    else:
        device_name = platform.processor() or platform.machine()
        peak = args.peak_tflops
        peak_note = "given" if peak else "no CPU peak: MFU n/a"

    print(f"device: {device} {device_name}", flush=True)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{str(dtype)[6:]}, attention {args.attn}"
    )
    t0 = time.perf_counter()
    config = build_config(preset, args.attn)
    torch.manual_seed(0)
    model = build_model(config, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total, matmul = matmul_params(model)
    flops_per_token = 2.0 * matmul
    rule = (
        ""
        if args.tiny
        else f"; the 2 x 8e9 rule of thumb would read MFU x{16e9 / flops_per_token:.2f}"
    )
    print(
        f"model: {'tiny ' if args.tiny else ''}Qwen3 {config.num_hidden_layers} layers x "
        f"{config.hidden_size}, {count(total)} parameters ({count(matmul)} in matmuls -> "
        f"{flops_per_token / 1e9:.3g} GFLOP/token{rule}), random weights, built in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    print(f"peak: {fmt(peak, '.0f')} TFLOP/s dense ({peak_note})")
    if device.type == "cuda":
        print(f"GPU memory after build: {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB")
    print()
    print(HEADER, flush=True)
    deadline = time.monotonic() + args.max_seconds
    rows = sweep(
        make_embed(model),
        device=device,
        vocab=config.vocab_size,
        lengths=args.lengths,
        batches=args.batches,
        flops_per_token=flops_per_token,
        peak_tflops=peak,
        min_time=min_time,
        warmup=args.warmup,
        deadline=deadline,
    )
    for r in rows:
        if r.status != "ok":
            print_row(r)
    ok = [r for r in rows if r.status == "ok"]
    if ok:
        best = max(ok, key=lambda r: r.tokens_per_s or 0.0)
        print(
            f"\nbest: {fmt(best.tokens_per_s, ',.0f')} tokens/s "
            f"({fmt(best.queries_per_s, ',.0f')} queries/s) at length {best.length}, "
            f"batch {best.batch}" + (f", MFU {100 * best.mfu:.1f}%" if best.mfu is not None else "")
        )

    adapter: list[dict[str, Any]] = []
    if not args.no_adapter:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        in_dim = config.hidden_size
        out_dim = ADAPTER_OUT if not args.tiny else max(8, in_dim // 4)
        print(f"\nadapter: linear {in_dim} -> {out_dim} + L2 norm, per batch")
        print(f"{'where':<24} {'batch':>6} {'us/batch':>10} {'us/row':>9}")
        adapter = bench_adapter(in_dim, out_dim, [1, 16, 64, 256], device, min_time)
        for a in adapter:
            print(f"{a['where']:<24} {a['batch']:>6} {a['us']:>10.1f} {a['us'] / a['batch']:>9.2f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": str(device),
                    "device_name": device_name,
                    "dtype": str(dtype)[6:],
                    "attn": args.attn,
                    "tiny": args.tiny,
                    "params": total,
                    "matmul_params": matmul,
                    "peak_tflops": peak,
                    "rows": [asdict(r) for r in rows],
                    "adapter": adapter,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
