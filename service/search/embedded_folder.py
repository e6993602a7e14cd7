"""The embedded engine's folder, as the cheap checks see it: no engine import, so `serve`'s
preflight and `doctor` can judge a folder in milliseconds (service/search/edge_backend.py
opens it)."""

from __future__ import annotations

from pathlib import Path

from service.search.backend import FolderRefused

MARKER = "querylift-embedded.json"


class LegacyFolder(FolderRefused):
    """A folder written by the old embedded default (qdrant-client's local mode)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} was written by the old embedded default (qdrant-client's local mode), "
            f"which querylift no longer serves from: run `querylift migrate-embedded {path}` "
            "to copy its collections into the embedded Qdrant engine (vectors and payloads "
            "as they are, nothing re-encoded), or index your documents again with "
            "`querylift index`"
        )
        self.path = path


def is_legacy(root: Path) -> bool:
    return (
        (root / "meta.json").is_file()
        and (root / "collection").is_dir()
        and not (root / MARKER).exists()
    )
