"""Which engine computed the vectors is reported everywhere an adapter's fit is judged:
`/readyz`, the `querylift_engine_info` metric, and the manifest `querylift train` writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from encoders import Encoder
from querylift.cli import app as cli
from querylift.random_qwen3 import EOS, PRESETS
from training.align import model_info

TRANSFORMERS_BUILD = f"transformers=={transformers.__version__} torch=={torch.__version__}"


def test_the_transformers_backend_names_its_build(query_encoder: Encoder) -> None:
    assert query_encoder.engine == TRANSFORMERS_BUILD
    assert model_info(query_encoder).engine == TRANSFORMERS_BUILD


def test_readyz_and_metrics_name_each_encoders_build(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["engines"] == {"query": TRANSFORMERS_BUILD, "document": TRANSFORMERS_BUILD}
    text = client.get("/metrics").text
    rows = [x for x in text.splitlines() if x.startswith("querylift_engine_info{")]
    assert len(rows) == 2, rows
    for role, name in (("query", "tiny-qwen3"), ("document", "tiny-bert")):
        assert any(
            f'role="{role}"' in x and f'encoder="{name}"' in x and "backend=\"transformers\"" in x
            and f'build="{TRANSFORMERS_BUILD}"' in x and x.endswith(" 1.0")
            for x in rows
        ), rows  # fmt: skip


def test_random_qwen3_builds_a_qwen3_folder_that_appends_eos(tmp_path: Path) -> None:
    out = tmp_path / "q"
    res = CliRunner().invoke(cli, ["random-qwen3", str(out), "--layers", "1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3Model"] and cfg["num_hidden_layers"] == 1
    assert cfg["head_dim"] == PRESETS["tiny"]["head_dim"] >= 64  # vLLM's CPU attention minimum
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(tok("what causes malaria")["input_ids"])[-1] == EOS
    bad = CliRunner().invoke(cli, ["random-qwen3", str(tmp_path / "x"), "--preset", "huge"])
    assert bad.exit_code != 0
