"""Commands against an embedded Qdrant folder that a running service holds: one line naming
the cause and the ways out, before any model loads (index and distill exit 2, a second serve
exits 1 in its start-up checks); doctor reports it as a FAIL."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from querylift.cli import app as cli
from service.search.qdrant_gateway import QdrantFolderInUse, QdrantGateway


def test_a_held_embedded_folder_is_one_clear_line_for_every_offline_command(
    tmp_path: Path, cli_env
):
    folder = tmp_path / "qdrant"
    cli_env(qdrant_path=folder)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "d1", "text": "malaria is spread by mosquitoes"}) + "\n")
    holder = QdrantGateway(path=str(folder))  # what a running `querylift serve` does
    held_by = f"is held by pid {os.getpid()}"
    try:
        try:
            QdrantGateway(path=str(folder))
            raise AssertionError("a second opener of a held folder must be refused")
        except QdrantFolderInUse as e:
            assert e.path == str(folder) and e.holder.startswith(f"pid {os.getpid()}")
        runner = CliRunner()
        for args in (
            ["index", str(corpus), "--collection", "docs"],
            ["train", "--mode", "distill", "--collection", "docs", "--out", str(tmp_path / "o")],
        ):
            result = runner.invoke(cli, args)
            assert result.exit_code == 2, (args, result.output)
            assert held_by in result.stderr
            assert "QUERYLIFT_QDRANT_URL" in result.stderr
            assert result.exception is None or isinstance(result.exception, SystemExit)
            assert "Traceback" not in result.output
        serve = runner.invoke(cli, ["serve", "--port", "9"])  # refused before it binds
        assert serve.exit_code == 1, serve.output
        assert serve.stderr.count("\n") == 1 and held_by in serve.stderr
        doctor = runner.invoke(cli, ["doctor"])
        assert doctor.exit_code == 1
        assert "[FAIL] qdrant" in doctor.stdout and held_by in doctor.stdout
    finally:
        holder.close()
    assert not (tmp_path / "o").exists()
    QdrantGateway(path=str(folder)).close()  # released: opens again
