"""The per-tenant query log: the query texts a tenant sent, for export and the label-free gate.

Opt-in (`QUERYLIFT_QUERY_LOG`, a tenant's `query_log` in the tenants file): it is stored user
text. Only query texts are recorded (`/search`; `/embed` and `/v1/embeddings` with input type
query), each under the tenant its request authenticated as; documents never.

Storage is files on the shared volume, not memory: replicas behind a load balancer each see a
part of a tenant's traffic, and an export (or the gate) must see all of it, after restarts too.
Each replica appends to a file of its own:
    <dir>/<tenant>/<replica>.jsonl   {"text", "endpoint", "ts"} a line (ts: unix seconds)
    <dir>/<tenant>/.cleared          the time of the last clear: nothing up to it is read back
One writer per file (the replica that owns it), so appends never interleave and compacting a
file (keep the newest `max_entries` within `max_age_s`: temp file, fsync, rename) races no
other writer. Readers merge every replica's file, drop entries older than the retention or the
last clear, and keep the newest `max_entries`; a replica's file is compacted once it holds a
quarter more than that or an expired entry, and files of replicas that are gone are deleted
once all they hold has expired (their last write is older than the retention).

The request path only appends to an in-memory deque per tenant (bounded at `max_entries`, the
oldest dropping first) under a lock held for a few microseconds; a background thread writes
each tenant's batch with one O_APPEND write and one fsync per flush interval. A crash can tear
the last line of a file: readers skip a line that does not parse, and the writer starts a new
line after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.fsutil import atomic_write_bytes, fsync_dir
from adapters.names import is_safe_name, safe_name
from service.ops.settings import Settings

log = logging.getLogger(__name__)

Split = Literal["all", "train", "holdout"]
SUFFIX = ".jsonl"
CLEARED = ".cleared"
MAINTAIN_EVERY_S = 60.0  # retention sweep: expired entries leave the disk within about this
_SLACK = 0.25  # a replica's file may hold this share above max_entries before it is compacted


class QueryLogEntry(BaseModel):
    """One recorded query, as a line of the log and of an export."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    text: str
    endpoint: str = Field(description="`/search`, `/embed` or `/v1/embeddings`")
    ts: float = Field(description="when it was recorded, unix seconds")


def held_out(text: str, fraction: float) -> bool:
    """Whether the label-free gate keeps `text` for itself: a hash of the text, so a text is on
    the same side in every export and on every replica."""
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return h < fraction * 2**64


def replica_name() -> str:
    """This process's file name: host, pid and a random part (two processes never share one)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:80].strip(".-") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _line(ts: float, endpoint: str, text: str) -> bytes:
    # ASCII-escaped JSON: no byte of a line is a newline, whatever the text holds
    return json.dumps({"text": text, "endpoint": endpoint, "ts": round(ts, 6)}).encode() + b"\n"


def _read(path: Path) -> tuple[list[QueryLogEntry], bool]:
    """The entries of one file (lines that do not parse skipped) and whether it ends cleanly."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], True
    out = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            out.append(QueryLogEntry.model_validate_json(raw))
        except ValidationError:
            continue  # a line torn by a crash (or damaged): never fatal to the rest
    return out, not data or data.endswith(b"\n")


@dataclass
class _OwnFile:
    """What this replica knows of its own file of one tenant (it is the only writer)."""

    lines: int
    oldest: float | None
    clean_end: bool


class QueryLog:
    """The query logs of one app: recording (any thread), a writer thread, reads and clears."""

    def __init__(
        self,
        root: Path,
        *,
        enabled: Iterable[str],
        max_entries: int,
        max_age_s: float,
        flush_s: float = 1.0,
        holdout_fraction: float = 0.2,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.enabled = frozenset(safe_name(t) for t in enabled)
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.flush_s = flush_s
        self.holdout_fraction = holdout_fraction
        self.replica = safe_name(replica or replica_name())
        self.clock = clock
        self._pending: dict[str, deque[tuple[float, str, str]]] = {}
        self._lock = threading.Lock()  # the pending buffers: held for microseconds
        self._io = threading.Lock()  # this replica's files
        self._own: dict[str, _OwnFile] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, tenants: Mapping[str, bool | None]) -> QueryLog:
        """`tenants`: {name: its `query_log` in the tenants file}; unset = the setting."""
        on = [name for name, own in tenants.items() if (settings.query_log if own is None else own)]
        return cls(
            settings.query_log_dir or settings.beside_store("query-log"),
            enabled=on,
            max_entries=settings.query_log_max_entries,
            max_age_s=settings.query_log_max_age_s,
            flush_s=settings.query_log_flush_s,
            holdout_fraction=settings.gate_holdout_fraction,
        )

    # -- the request path -----------------------------------------------------------------------
    def enabled_for(self, tenant: str) -> bool:
        return tenant in self.enabled

    def record(self, tenant: str, texts: list[str], endpoint: str) -> None:
        """Remember the query texts of one answered request (no I/O: the writer thread does it)."""
        if tenant not in self.enabled or not texts:
            return
        now = self.clock()
        with self._lock:
            buf = self._pending.get(tenant)
            if buf is None:
                buf = self._pending[tenant] = deque(maxlen=self.max_entries)
            buf.extend((now, endpoint, t) for t in texts)

    # -- files ----------------------------------------------------------------------------------
    def folder(self, tenant: str) -> Path:
        return self.root / safe_name(tenant)

    def _own_path(self, tenant: str) -> Path:
        return self.folder(tenant) / f"{self.replica}{SUFFIX}"

    def _cleared_at(self, folder: Path) -> float:
        try:
            return float((folder / CLEARED).read_text().strip())
        except (FileNotFoundError, ValueError):
            return float("-inf")

    def _cutoff(self, folder: Path) -> float:
        """Entries at or before this time are gone: past the retention, or cleared."""
        return max(self.clock() - self.max_age_s, self._cleared_at(folder))

    def _own_state(self, tenant: str) -> _OwnFile:
        state = self._own.get(tenant)
        if state is None:  # first touch in this process: learn what the file holds
            entries, clean = _read(self._own_path(tenant))
            oldest = min((e.ts for e in entries), default=None)
            state = self._own[tenant] = _OwnFile(len(entries), oldest, clean)
        return state

    def flush(self) -> None:
        """Append every tenant's pending entries to this replica's files (caller: any thread)."""
        with self._lock:
            batches = {t: list(b) for t, b in self._pending.items() if b}
            for b in self._pending.values():
                b.clear()
        if not batches:
            return
        with self._io:
            for tenant, rows in batches.items():
                try:
                    self._append(tenant, rows)
                except OSError:
                    log.exception(
                        "query log: cannot write %d entries of tenant %s; they are lost",
                        len(rows),
                        tenant,
                    )

    def _append(self, tenant: str, rows: list[tuple[float, str, str]]) -> None:
        path = self._own_path(tenant)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self._own_state(tenant)
        data = b"".join(_line(ts, endpoint, text) for ts, endpoint, text in rows)
        if not state.clean_end:
            data = b"\n" + data  # after a torn line, never glue a good one onto it
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)
        state.lines += len(rows)
        state.clean_end = True
        first = rows[0][0]
        state.oldest = first if state.oldest is None else min(state.oldest, first)
        if state.lines > self.max_entries * (1 + _SLACK) or state.oldest <= self._cutoff(
            path.parent
        ):
            self._compact(tenant)

    def _compact(self, tenant: str) -> None:
        """Rewrite this replica's file with only what may be kept (caller holds `_io`)."""
        path = self._own_path(tenant)
        entries, _ = _read(path)
        cutoff = self._cutoff(path.parent)
        kept = sorted((e for e in entries if e.ts > cutoff), key=lambda e: e.ts)
        kept = kept[-self.max_entries :]
        if kept:
            atomic_write_bytes(path, b"".join(_line(e.ts, e.endpoint, e.text) for e in kept))
        elif path.exists():
            path.unlink()
            fsync_dir(path.parent)
        self._own[tenant] = _OwnFile(len(kept), kept[0].ts if kept else None, True)

    def sweep(self) -> None:
        """Enforce the retention on disk for every tenant folder, logging on or off: compact
        this replica's files, delete other replicas' files whose last write has expired."""
        if not self.root.is_dir():
            return
        horizon = self.clock() - self.max_age_s
        with self._io:
            for folder in sorted(self.root.iterdir()):
                if not folder.is_dir() or not is_safe_name(folder.name):
                    continue
                tenant = folder.name
                for path in folder.glob(f"*{SUFFIX}"):
                    try:
                        if path.name == f"{self.replica}{SUFFIX}":
                            state = self._own_state(tenant)
                            if state.oldest is not None and state.oldest <= self._cutoff(folder):
                                self._compact(tenant)
                        elif path.stat().st_mtime < horizon:
                            path.unlink()
                    except OSError:
                        log.exception("query log: cannot prune %s", path)
        self._last_sweep = self.clock()

    # -- reads and clears (admin, gate) ---------------------------------------------------------
    def entries(self, tenant: str, split: Split = "all") -> list[QueryLogEntry]:
        """The tenant's log over every replica, oldest first, within the retention and the cap
        (this replica's pending entries flushed first; other replicas' within a flush interval).

        `split`: `holdout` = the texts the label-free gate keeps for itself (`held_out`),
        `train` = the rest, `all` = both.
        """
        folder = self.folder(tenant)
        self.flush()
        if not folder.is_dir():
            return []
        cutoff = self._cutoff(folder)
        out = [
            e for path in sorted(folder.glob(f"*{SUFFIX}")) for e in _read(path)[0] if e.ts > cutoff
        ]
        out.sort(key=lambda e: e.ts)
        out = out[-self.max_entries :]
        if split != "all":
            want = split == "holdout"
            out = [e for e in out if held_out(e.text, self.holdout_fraction) == want]
        return out

    def clear(self, tenant: str) -> int:
        """Forget the tenant's log on every replica; returns how many entries an export held.

        The clear time is written first (fsync + rename), so entries another replica still
        had in memory, or re-writes while compacting, are never read back."""
        folder = self.folder(tenant)
        removed = len(self.entries(tenant))
        with self._lock:
            self._pending.pop(tenant, None)
        with self._io:
            atomic_write_bytes(folder / CLEARED, repr(self.clock()).encode())
            for path in folder.glob(f"*{SUFFIX}"):
                path.unlink(missing_ok=True)
            fsync_dir(folder)
            self._own.pop(tenant, None)
        return removed

    # -- the writer thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="querylift-query-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
                if self.clock() - self._last_sweep >= MAINTAIN_EVERY_S:
                    self.sweep()
            except Exception:  # the writer must outlive a bad disk; the next tick retries
                log.exception("query log: background write failed")

    def stop(self) -> None:
        """Stop the writer and write what is pending (the lifespan's end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.flush()
        except Exception:
            log.exception("query log: final write failed")
