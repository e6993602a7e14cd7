"""`querylift adapters ...`: the admin API of a running service, from the command line.

Every command prints the service's JSON answer; a refusal prints the error message (and every
reason) on stderr and exits with status 1.
"""

from __future__ import annotations

import functools
import getpass
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

adapters_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Manage adapters of a running service: list, upload, activate, rollback, show, "
    "validation sets, query sets and query logs (the label-free gate's and distillation's data).",
)

UrlOpt = Annotated[
    str,
    typer.Option(envvar="QUERYLIFT_URL", help="Base URL of the running service."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="QUERYLIFT_ADMIN_TOKEN", show_default=False, help="The service's admin token."
    ),
]
ActorOpt = Annotated[
    str | None,
    typer.Option(
        envvar="QUERYLIFT_ACTOR",
        show_default=False,
        help="Who is acting, for the audit log (default: your user name).",
    ),
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for the service.")]

DEFAULT_URL = "http://127.0.0.1:8080"
TENSORS_FILE = "adapter.safetensors"  # the checkpoint format (adapters/checkpoint.py)
MANIFEST_FILE = "manifest.json"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "admin"


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _q(segment: str) -> str:
    """A tenant name or adapter id as one URL path segment."""
    return quote(segment, safe="")


@dataclass(frozen=True)
class Admin:
    """Where and as whom the admin API is called: the options every command shares."""

    url: str
    token: str | None
    actor: str | None
    timeout: float

    def call(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """One admin request; prints the error and exits 1 on anything but a 2xx answer.
        The answer's JSON, or its bytes where `raw` (an export in JSON lines)."""
        import httpx

        if not self.token:
            raise _fail("no admin token: pass --token or set QUERYLIFT_ADMIN_TOKEN", 2)
        headers = {
            **kwargs.pop("headers", {}),
            "Authorization": f"Bearer {self.token}",
            "X-Querylift-Actor": _actor(self.actor),
        }
        try:
            r = httpx.request(
                method,
                self.url.rstrip("/") + path,
                headers=headers,
                timeout=self.timeout,
                **kwargs,
            )
        except httpx.HTTPError as e:
            raise _fail(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None
        if r.is_success:
            if raw:
                return r.content
            return r.json() if r.content else None
        try:
            err = r.json()["error"]
            message = f"{r.status_code} {err['code']}: {err['message']}"
            reasons = (err.get("details") or {}).get("reasons") if isinstance(err, dict) else None
        except (ValueError, KeyError, TypeError, AttributeError):
            message, reasons = f"{r.status_code}: {r.text[:500]}", None
        typer.echo(f"error: {message}", err=True)
        for reason in reasons or []:
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(1)


_KW = inspect.Parameter.KEYWORD_ONLY


def _admin_command(
    name: str | None = None, *, timeout_s: float, audited: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(admin, ...)` as an `adapters` command that prints what `fn` returns.

    The --url / --token / --timeout options (and --actor where `audited`: the command changes
    something) are appended to `fn`'s signature here rather than repeated in each command. They
    stay options of the command itself, so they still follow its arguments (`querylift adapters
    list --url ... --token ...`); a callback on `adapters_app` would have moved them before it.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]  # not `admin`
        shared = [
            inspect.Parameter("url", _KW, default=DEFAULT_URL, annotation=UrlOpt),
            inspect.Parameter("token", _KW, default=None, annotation=TokenOpt),
            *(
                [inspect.Parameter("actor", _KW, default=None, annotation=ActorOpt)]
                if audited
                else []
            ),
            inspect.Parameter("timeout", _KW, default=timeout_s, annotation=TimeoutOpt),
        ]

        @functools.wraps(fn)
        def command(
            *args: Any,
            url: str,
            token: str | None,
            timeout: float,
            actor: str | None = None,
            **kwargs: Any,
        ) -> None:
            _print(fn(Admin(url, token, actor, timeout), *args, **kwargs))

        command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        adapters_app.command(name)(command)
        return fn

    return register


@_admin_command("list", timeout_s=30.0)
def list_(admin: Admin) -> Any:
    """Every stored adapter, with the tenants it is active for."""
    return admin.call("GET", "/admin/adapters")


@_admin_command(timeout_s=30.0)
def get(admin: Admin, adapter_id: Annotated[str, typer.Argument(help="Adapter id.")]) -> Any:
    """One adapter's manifest and the tenants it is active for."""
    return admin.call("GET", f"/admin/adapters/{_q(adapter_id)}")


@_admin_command(timeout_s=600.0, audited=True)
def upload(
    admin: Admin,
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help=f"Checkpoint folder ({TENSORS_FILE} + {MANIFEST_FILE}).",
            exists=True,
            file_okay=False,
        ),
    ],
) -> Any:
    """Upload a checkpoint; prints its id (the same content always gets the same id)."""
    missing = [n for n in (TENSORS_FILE, MANIFEST_FILE) if not (checkpoint / n).is_file()]
    if missing:
        raise _fail(f"{checkpoint}: missing {', '.join(missing)}", 2)
    with (
        open(checkpoint / TENSORS_FILE, "rb") as tensors,
        open(checkpoint / MANIFEST_FILE, "rb") as manifest,
    ):
        files = {
            TENSORS_FILE: (TENSORS_FILE, tensors, "application/octet-stream"),
            MANIFEST_FILE: (MANIFEST_FILE, manifest, "application/json"),
        }
        return admin.call("POST", "/admin/adapters", files=files)


@_admin_command(timeout_s=600.0, audited=True)
def activate(
    admin: Admin,
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    adapter_id: Annotated[
        str | None, typer.Argument(help="Adapter id (omit with --none).", show_default=False)
    ] = None,
    none: Annotated[
        bool, typer.Option("--none", help="Serve no adapter (the document encoder's vectors).")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Activate even if the quality gate refuses (written to the audit log).",
        ),
    ] = False,
) -> Any:
    """Validate (and quality-gate) an adapter for a tenant and make it active.

    Refused with the reasons (422) when it does not fit, or when the tenant's validation set
    shows it worse than the document model alone or the current adapter.
    """
    if none == (adapter_id is not None):
        raise _fail("give an ADAPTER_ID or --none (not both)", 2)
    body: dict[str, Any] = {"adapter_id": None if none else adapter_id}
    if force:
        body["force"] = True
    return admin.call("PUT", f"/admin/tenants/{_q(tenant)}/adapter", json=body)


@_admin_command("set-validation", timeout_s=120.0, audited=True)
def set_validation(
    admin: Admin,
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    pairs: Annotated[
        Path,
        typer.Argument(
            help='Validation pairs: jsonl of {"query", "positive_ids", "id"?} (the training '
            "pairs format; ids are the indexed documents' ids).",
            exists=True,
            dir_okay=False,
        ),
    ],
) -> Any:
    """Store a tenant's validation set: activations are then quality-gated on it."""
    return admin.call(
        "PUT",
        f"/admin/tenants/{_q(tenant)}/validation",
        content=pairs.read_bytes(),
        headers={"content-type": "application/x-ndjson"},
    )


@_admin_command("get-validation", timeout_s=30.0)
def get_validation(
    admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]
) -> Any:
    """A tenant's validation set (summary and pairs)."""
    return admin.call("GET", f"/admin/tenants/{_q(tenant)}/validation")


@_admin_command("clear-validation", timeout_s=30.0, audited=True)
def clear_validation(
    admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]
) -> Any:
    """Remove a tenant's validation set (activations are then not gated)."""
    admin.call("DELETE", f"/admin/tenants/{_q(tenant)}/validation")
    return {"tenant": tenant, "validation": None}


QueriesArg = Annotated[
    Path,
    typer.Argument(
        help='Unlabelled queries: one a line, or JSON lines with "text" or "query" (a BEIR '
        "queries.jsonl, an export-log file).",
        exists=True,
        dir_okay=False,
    ),
]


@_admin_command("set-queries", timeout_s=120.0, audited=True)
def set_queries(
    admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")], queries: QueriesArg
) -> Any:
    """Store a tenant's unlabelled query set: the label-free gate's data.

    With no validation set, activations are then gated on agreement with the query model's
    ranking of the index's candidates."""
    from training.data import DataError, read_query_texts

    try:
        texts = read_query_texts(queries)
    except DataError as e:
        raise _fail(str(e), 2) from None
    return admin.call("PUT", f"/admin/tenants/{_q(tenant)}/queries", json=texts)


@_admin_command("get-queries", timeout_s=30.0)
def get_queries(admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> Any:
    """A tenant's query set (summary and texts)."""
    return admin.call("GET", f"/admin/tenants/{_q(tenant)}/queries")


@_admin_command("clear-queries", timeout_s=30.0, audited=True)
def clear_queries(admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> Any:
    """Remove a tenant's query set."""
    admin.call("DELETE", f"/admin/tenants/{_q(tenant)}/queries")
    return {"tenant": tenant, "queries": None}


@_admin_command("export-log", timeout_s=120.0, audited=True)
def export_log(
    admin: Admin,
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    out: Annotated[
        Path, typer.Option(help="File to write (JSON lines; replaced whole, never half-written).")
    ],
    split: Annotated[
        str,
        typer.Option(
            help="`train`: without the texts the label-free gate holds out (what to distil "
            "on); `holdout`: only those; `all`."
        ),
    ] = "all",
) -> Any:
    """Export a tenant's query log to a file (stored user text: audited).

    The file is what `querylift train --mode distill --queries-from FILE` reads."""
    from adapters.fsutil import atomic_write_bytes

    if split not in ("train", "holdout", "all"):
        raise _fail(f"--split {split!r}: one of train, holdout, all", 2)
    body: bytes = admin.call(
        "GET", f"/admin/tenants/{_q(tenant)}/query-log", params={"split": split}, raw=True
    )
    atomic_write_bytes(out, body)
    return {"tenant": tenant, "split": split, "entries": body.count(b"\n"), "out": str(out)}


@_admin_command("clear-log", timeout_s=120.0, audited=True)
def clear_log(admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> Any:
    """Erase a tenant's query log on every replica."""
    return admin.call("DELETE", f"/admin/tenants/{_q(tenant)}/query-log")


@_admin_command(timeout_s=120.0, audited=True)
def rollback(admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> Any:
    """Re-activate the tenant's previous adapter (re-validated) as a new version."""
    return admin.call("POST", f"/admin/tenants/{_q(tenant)}/rollback")


@_admin_command(timeout_s=30.0)
def show(admin: Admin, tenant: Annotated[str, typer.Argument(help="Tenant name.")]) -> Any:
    """A tenant's active adapter, what the replica serves, and the history."""
    return admin.call("GET", f"/admin/tenants/{_q(tenant)}")


@_admin_command(timeout_s=30.0, audited=True)
def delete(admin: Admin, adapter_id: Annotated[str, typer.Argument(help="Adapter id.")]) -> Any:
    """Remove an adapter version (refused while a tenant has it active)."""
    admin.call("DELETE", f"/admin/adapters/{_q(adapter_id)}")
    return {"deleted": adapter_id}


@adapters_app.command("import-era")
def import_era_(
    pt_file: Annotated[Path, typer.Argument(help="ERA's .pt state dict (proj.weight, proj.bias).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write (must not exist).")],
    query_model: Annotated[str, typer.Option(help="Query model name served.")] = (
        "Qwen3-Embedding-8B"
    ),
    document_model: Annotated[str, typer.Option(help="Document model of the index.")] = (
        "Qwen3-Embedding-0.6B"
    ),
    instruction: Annotated[str | None, typer.Option(help="Query instruction used.")] = None,
) -> None:
    """Convert an ERA adapter (.pt) into a checkpoint folder (then `upload` it)."""
    from training.era import import_era

    try:
        adapter = import_era(
            pt_file,
            out,
            query_model=query_model,
            document_model=document_model,
            instruction=instruction,
        )
    except (ValueError, FileExistsError) as e:
        raise _fail(str(e), 2) from None
    _print(
        {
            "id": adapter.id,
            "path": str(out),
            "in_dim": adapter.manifest.in_dim,
            "out_dim": adapter.manifest.out_dim,
        }
    )
