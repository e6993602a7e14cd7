"""The configured encoders, started in this process, for the commands that run models offline
(setup, index, train, eval): they wait for a background start before the first text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from encoders import Encoder

ENGINE_START_S = 900.0


def started(encoder: Encoder) -> Encoder:
    """Wait for an encoder that starts in the background (vLLM: a minute or more on CPU the
    first time, while it compiles) before offline work hands it thousands of texts."""
    if not encoder.wait_ready(ENGINE_START_S):
        error = encoder.error or f"not ready after {ENGINE_START_S:g} s"
        typer.echo(f"encoder {encoder.name} did not start: {error}", err=True)
        raise typer.Exit(1)
    return encoder


def configured_encoders(query_encoder: str) -> tuple[Encoder, Encoder]:
    """(query, document) encoders from QUERYLIFT_*; `document` as the query encoder gives a
    same-model pair (one instance, both roles)."""
    from encoders import build_encoder
    from service.ops.settings import Settings

    settings = Settings()
    d = started(build_encoder(settings.document_encoder))
    q = d if query_encoder == "document" else started(build_encoder(settings.query_encoder))
    return q, d
