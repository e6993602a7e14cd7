"""The admin audit log: one JSON line per admin action, refused ones included.

Each line is `{"at", "actor", "action", "tenant", "adapter_id", "before", "after", "outcome",
"reasons"}`. It is appended with one `write` on an O_APPEND descriptor and fsynced before the
call returns, so several replicas can share one file on a shared volume and a crash never
loses an action that was answered. The same line also goes to the `querylift.audit` logger.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("querylift.audit")

Action = Literal[
    "upload",
    "delete",
    "activate",
    "rollback",
    "set_validation",
    "delete_validation",
    "shadow_start",
    "shadow_stop",
    "set_queries",
    "delete_queries",
    "export_query_log",
    "clear_query_log",
]
Outcome = Literal["ok", "refused"]


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        actor: str,
        action: Action,
        tenant: str | None = None,
        adapter_id: str | None = None,
        before: Any = None,
        after: Any = None,
        outcome: Outcome = "ok",
        reasons: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one line (flushed and fsynced) and return it as a dict.

        `extra` adds action-specific keys (the quality gate's `force` and `gate` numbers) to
        this line only, so every other line keeps exactly the documented keys.
        """
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "actor": actor,
            "action": action,
            "tenant": tenant,
            "adapter_id": adapter_id,
            "before": before,
            "after": after,
            "outcome": outcome,
            "reasons": list(reasons or []),
        }
        for key, value in (extra or {}).items():
            entry.setdefault(key, value)
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True, default=str)
        log.info("%s", line)  # first: the action is on record even if the file write fails
        data = (line + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(fd, data[written:])
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                log.exception(
                    "cannot write the audit log %s; the line above is not in it", self.path
                )
        return entry

    def read(self) -> list[dict[str, Any]]:
        """Every entry in the file (for tests and tools)."""
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
