"""The `querylift` command line, assembled from its modules (cli.py, train_cli.py, eval_cli.py,
admin_cli.py): every command under its name, in the order `querylift --help` lists them."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from querylift.cli import app


def test_every_command_is_registered_in_its_order() -> None:
    group = typer.main.get_command(app)
    names = list(group.commands)  # type: ignore[attr-defined]
    assert names == [
        "setup",
        "doctor",
        "settings-table",
        "random-qwen3",
        "serve",
        "index",
        "migrate-embedded",
        "train",
        "eval",
        "adapters",
    ]
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0
    listed = [n for n in names if f" {n} " in out.output]
    assert listed == names


def test_train_defaults_to_trainings_pseudo_rule() -> None:
    """The CLI spells the default out (importing training.pseudo costs every command, `serve`'s
    one-line refusals included, most of a second); it must stay training's."""
    from querylift.train_cli import DEFAULT_RULE as cli_default
    from training.pseudo import DEFAULT_RULE as training_default

    assert cli_default == training_default
