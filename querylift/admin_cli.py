"""`querylift adapters ...`: the admin API of a running service, from the command line.

Every command prints the service's JSON answer; a refusal prints the error message (and every
reason) on stderr and exits with status 1.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

adapters_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Manage adapters of a running service: list, upload, activate, rollback, show, "
    "validation sets.",
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


def _call(
    method: str,
    url: str,
    path: str,
    token: str | None,
    actor: str | None,
    timeout: float,
    **kwargs: Any,
) -> Any:
    """One admin request; prints the error and exits 1 on anything but a 2xx answer."""
    import httpx

    if not token:
        raise _fail("no admin token: pass --token or set QUERYLIFT_ADMIN_TOKEN", 2)
    headers = {
        **kwargs.pop("headers", {}),
        "Authorization": f"Bearer {token}",
        "X-Querylift-Actor": _actor(actor),
    }
    try:
        r = httpx.request(
            method, url.rstrip("/") + path, headers=headers, timeout=timeout, **kwargs
        )
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if r.is_success:
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


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


@adapters_app.command("list")
def list_(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, timeout: TimeoutOpt = 30.0) -> None:
    """Every stored adapter, with the tenants it is active for."""
    _print(_call("GET", url, "/admin/adapters", token, None, timeout))


@adapters_app.command()
def get(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """One adapter's manifest and the tenants it is active for."""
    _print(_call("GET", url, f"/admin/adapters/{quote(adapter_id, safe='')}", token, None, timeout))


@adapters_app.command()
def upload(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help=f"Checkpoint folder ({TENSORS_FILE} + {MANIFEST_FILE}).",
            exists=True,
            file_okay=False,
        ),
    ],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 600.0,
) -> None:
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
        _print(_call("POST", url, "/admin/adapters", token, actor, timeout, files=files))


@adapters_app.command()
def activate(
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
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Validate (and quality-gate) an adapter for a tenant and make it active.

    Refused with the reasons (422) when it does not fit, or when the tenant's validation set
    shows it worse than the document model alone or the current adapter.
    """
    if none == (adapter_id is not None):
        raise _fail("give an ADAPTER_ID or --none (not both)", 2)
    body: dict[str, Any] = {"adapter_id": None if none else adapter_id}
    if force:
        body["force"] = True
    path = f"/admin/tenants/{quote(tenant, safe='')}/adapter"
    _print(_call("PUT", url, path, token, actor, timeout, json=body))


@adapters_app.command("set-validation")
def set_validation(
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
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Store a tenant's validation set: activations are then quality-gated on it."""
    path = f"/admin/tenants/{quote(tenant, safe='')}/validation"
    headers = {"content-type": "application/x-ndjson"}
    _print(
        _call("PUT", url, path, token, actor, timeout, content=pairs.read_bytes(), headers=headers)
    )


@adapters_app.command("get-validation")
def get_validation(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """A tenant's validation set (summary and pairs)."""
    path = f"/admin/tenants/{quote(tenant, safe='')}/validation"
    _print(_call("GET", url, path, token, None, timeout))


@adapters_app.command("clear-validation")
def clear_validation(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Remove a tenant's validation set (activations are then not gated)."""
    path = f"/admin/tenants/{quote(tenant, safe='')}/validation"
    _call("DELETE", url, path, token, actor, timeout)
    _print({"tenant": tenant, "validation": None})


@adapters_app.command()
def rollback(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 120.0,
) -> None:
    """Re-activate the tenant's previous adapter (re-validated) as a new version."""
    _print(
        _call(
            "POST", url, f"/admin/tenants/{quote(tenant, safe='')}/rollback", token, actor, timeout
        )
    )


@adapters_app.command()
def show(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """A tenant's active adapter, what the replica serves, and the history."""
    _print(_call("GET", url, f"/admin/tenants/{quote(tenant, safe='')}", token, None, timeout))


@adapters_app.command()
def delete(
    adapter_id: Annotated[str, typer.Argument(help="Adapter id.")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    actor: ActorOpt = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Remove an adapter version (refused while a tenant has it active)."""
    _call("DELETE", url, f"/admin/adapters/{quote(adapter_id, safe='')}", token, actor, timeout)
    _print({"deleted": adapter_id})


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
