"""Training reports: JSON record, markdown table, PNG plot."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from training.report import markdown_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ROWS = {
    "all-MiniLM-L6-v2 alone": {"ndcg@10": 0.569, "recall@100": 0.88, "mrr@10": 0.55},
    "Qwen3-0.6B + linear adapter": {"ndcg@10": 0.645, "recall@100": 0.92, "mrr@10": 0.61},
    "Qwen3-0.6B only": {"ndcg@10": 0.701, "mrr@10": 0.66},  # no recall@100
}
HISTORY = [
    {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_ndcg@10": 0.5 + 0.02 * e}
    for e in range(1, 6)
]


def _table_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def _cells(line: str) -> list[str]:
    """Split a markdown table row on unescaped pipes."""
    cells, cur, i = [], "", 0
    body = line.strip()[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            cur += body[i : i + 2]
            i += 2
            continue
        if body[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += body[i]
        i += 1
    cells.append(cur.strip())
    return cells


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    meta = {
        "seed": 0,
        "config": {"lr": 1e-3, "epochs": 5},
        "dataset": Path("/data/scifact"),
        "elapsed_s": np.float32(12.5),
        "bad": float("nan"),
    }
    return write_report(out, "SciFact", ROWS, HISTORY, meta, baseline="all-MiniLM-L6-v2 alone")


def test_files_exist(full_report: dict[str, Path]) -> None:
    assert set(full_report) == {"json", "markdown", "plot"}
    assert full_report["json"].name == "report.json"
    assert full_report["markdown"].name == "report.md"
    assert full_report["plot"].name == "report.png"
    for path in full_report.values():
        assert path.is_file() and path.stat().st_size > 0
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in full_report["json"].parent.iterdir()) == [
        "report.json",
        "report.md",
        "report.png",
    ]


def test_json_round_trips(full_report: dict[str, Path]) -> None:
    text = full_report["json"].read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert {"title", "rows", "history", "meta", "created_at"} <= set(record)
    assert record["title"] == "SciFact"
    assert record["rows"] == ROWS
    assert list(record["rows"]) == list(ROWS)  # order kept
    assert record["history"] == HISTORY
    meta = record["meta"]
    assert meta["seed"] == 0 and meta["config"] == {"lr": 1e-3, "epochs": 5}
    assert meta["dataset"] == "/data/scifact"  # str() fallback
    assert meta["elapsed_s"] == 12.5  # numpy scalar -> number
    assert meta["bad"] is None  # NaN -> null, so the file stays strict JSON
    assert record["created_at"].endswith("+00:00")


def test_markdown_table_content(full_report: dict[str, Path]) -> None:
    md = full_report["markdown"].read_text()
    assert md.startswith("# SciFact\n")
    lines = _table_lines(md)
    assert len(lines) == 2 + len(ROWS)  # header, alignment, one per row
    header = _cells(lines[0])
    assert header[1:4] == ["ndcg@10", "recall@100", "mrr@10"]
    assert "vs baseline" in header[4] and "ndcg@10" in header[4]
    assert all(set(c) <= set(":-") for c in _cells(lines[1]))

    by_label = {_cells(line)[0]: _cells(line)[1:] for line in lines[2:]}
    assert list(by_label) == list(ROWS)
    assert by_label["all-MiniLM-L6-v2 alone"][:3] == ["0.569", "0.880", "0.550"]
    assert by_label["Qwen3-0.6B only"][:3] == ["0.701", "", "0.660"]  # missing -> blank
    assert by_label["Qwen3-0.6B + linear adapter"][3] == "+7.6"
    assert by_label["Qwen3-0.6B only"][3] == "+13.2"
    assert by_label["all-MiniLM-L6-v2 alone"][3] not in ("+7.6", "+13.2")

    setup = md.split("## Setup", 1)[1]
    assert "- **seed**: 0" in setup
    assert "- **dataset**: /data/scifact" in setup
    assert '"lr": 0.001' in setup


def test_png_plot(full_report: dict[str, Path]) -> None:
    path = full_report["plot"]
    assert path.stat().st_size > 5_000
    width, height = _png_size(path)
    assert width > height > 200  # two panels side by side


def test_without_history_and_single_row(tmp_path: Path) -> None:
    paths = write_report(tmp_path, "one row", {"baseline": {"ndcg@10": 0.5, "mrr@10": 0.4}})
    record = json.loads(paths["json"].read_text())
    assert record["history"] is None and record["meta"] == {}
    lines = _table_lines(paths["markdown"].read_text())
    assert len(lines) == 3
    assert _cells(lines[0]) == ["", "ndcg@10", "mrr@10"]  # no delta column
    assert _cells(lines[2]) == ["baseline", "0.500", "0.400"]
    assert "## Setup" not in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 5_000
    width, height = _png_size(paths["plot"])
    assert width < 2 * height  # bars panel only


def test_history_with_only_metrics(tmp_path: Path) -> None:
    history = [{"epoch": 1, "val_ndcg@10": 0.4}, {"epoch": 2, "val_ndcg@10": math.nan}]
    paths = write_report(tmp_path, "t", {"a": {"ndcg@10": 0.4}}, history=history)
    assert paths["plot"].read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads(paths["json"].read_text())["history"][1]["val_ndcg@10"] is None


def test_pipes_are_escaped() -> None:
    rows = {"adapter | linear": {"ndcg@10": 0.6}, "plain": {"ndcg@10": 0.5}}
    md = markdown_table(rows, baseline="plain")
    lines = _table_lines(md)
    assert "adapter \\| linear" in lines[2]
    assert all(len(_cells(line)) == 3 for line in lines)  # label, metric, delta
    assert _cells(lines[2])[2] == "+10.0"


def test_markdown_table_options() -> None:
    md = markdown_table(ROWS, metrics=["mrr@10", "ndcg@10"], baseline="Qwen3-0.6B only")
    lines = _table_lines(md)
    header = _cells(lines[0])
    assert header[1:3] == ["mrr@10", "ndcg@10"] and "mrr@10" in header[3]
    first = _cells(lines[2])
    assert first[0] == "all-MiniLM-L6-v2 alone"
    assert first[1:] == ["0.550", "0.569", "-11.0"]  # negative deltas are signed too


def test_unknown_baseline_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baseline"):
        write_report(tmp_path / "out", "t", ROWS, baseline="nope")
    assert not (tmp_path / "out").exists()
