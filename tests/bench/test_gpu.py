"""bench/gpu.py runs end to end on a CPU with a tiny config (the real run needs a lent GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from encoders import EncoderSpec, Pooling
from encoders.transformers_backend import TransformersEncoder
from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu.py"


def load_gpu_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_prints_the_table(tmp_path: Path) -> None:
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--device",
            "cpu",
            "--max-seconds",
            "10",
            "--json",
            str(out_json),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if "queries/s" in line)
    for col in ("len", "batch", "ms/batch", "tokens/s", "MFU"):
        assert col in header
    rows = [line.split() for line in out.splitlines() if line.strip().endswith((" ok", "skipped"))]
    assert {(int(r[0]), int(r[1])) for r in rows} == {
        (n, b) for n in (16, 64, 256) for b in (1, 4, 16, 64, 256)
    }
    assert "adapter: linear 64 -> 16" in out
    data = json.loads(out_json.read_text())
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert ok and all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in ok)  # no CPU peak
    assert {a["where"] for a in data["adapter"]} == {"cpu torch float32", "host numpy float32"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_clear_message_without_cuda() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--max-seconds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr


def test_pooling_matches_the_transformers_backend() -> None:
    gpu = load_gpu_module()
    backend = object.__new__(TransformersEncoder)  # only _pool is used: no model needed
    backend.spec = EncoderSpec(name="x", path="x", pooling=Pooling.LAST)
    hidden = torch.randn(3, 5, 8)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    for mask in (right, left):
        torch.testing.assert_close(gpu.last_token_pool(hidden, mask), backend._pool(hidden, mask))


def test_config_matches_qwen3_embedding_8b() -> None:
    gpu = load_gpu_module()
    cfg = gpu.build_config(gpu.QWEN3_EMBEDDING_8B, "sdpa")
    model = gpu.build_model(cfg, torch.device("meta"), torch.bfloat16)  # no memory
    total, matmul = gpu.matmul_params(model)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (4096, 36, 12288)
    assert 7.5e9 < total < 7.6e9  # Qwen3-8B backbone without an LM head
    assert total - matmul == 151665 * 4096  # the embedding table does no matmul


def test_peak_detection() -> None:
    gpu = load_gpu_module()
    assert gpu.detect_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.detect_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.detect_peak_tflops("NVIDIA H200") == 989.0
    assert gpu.detect_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.detect_peak_tflops("Some GPU") is None
