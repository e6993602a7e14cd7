"""ERA's published .pt adapters convert into querylift checkpoints the service accepts."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from typer.testing import CliRunner

from adapters import load_checkpoint
from querylift.cli import app as cli


def test_import_era_converts_a_state_dict(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    pt = tmp_path / "era_scifact.pt"
    torch.save({"proj.weight": layer.weight.data, "proj.bias": layer.bias.data}, pt)
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(
        cli,
        [
            "adapters",
            "import-era",
            str(pt),
            "--out",
            str(out),
            "--instruction",
            "Given a claim, find evidence",
        ],
    )
    assert r.exit_code == 0, r.output
    adapter = load_checkpoint(out)
    m = adapter.manifest
    assert (m.kind.value, m.in_dim, m.out_dim, m.normalize) == ("linear", 16, 8, True)
    assert m.query_model.name == "Qwen3-Embedding-8B"
    assert m.query_model.prompt_template == "Instruct: {instruction}\nQuery:{text}"
    assert m.query_model.pooling == "last"
    assert m.document_model.name == "Qwen3-Embedding-0.6B"
    assert m.training["source"].startswith("ERA")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(layer(torch.from_numpy(x)), dim=-1).numpy()
    np.testing.assert_allclose(adapter.apply(x), ref, atol=1e-5)


def test_import_era_refuses_what_is_not_a_linear_state_dict(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    bad = {
        "evil.pt": lambda p: p.write_bytes(pickle.dumps(Evil())),
        "keys.pt": lambda p: torch.save({"weight": torch.zeros(2, 2)}, p),
        "shape.pt": lambda p: torch.save(
            {"proj.weight": torch.zeros(2, 2), "proj.bias": torch.zeros(3)}, p
        ),
    }
    for name, write in bad.items():
        path = tmp_path / name
        write(path)
        r = CliRunner().invoke(
            cli, ["adapters", "import-era", str(path), "--out", str(tmp_path / f"out-{name}")]
        )
        assert r.exit_code == 2, (name, r.output)
        assert name in r.output
        assert "pickle code ran" not in r.output
        assert not (tmp_path / f"out-{name}").exists()
