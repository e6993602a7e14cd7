"""The object-store deployment: the kustomize overlay deploy/overlays/object-store and the
compose profile `object-store`.

Replicas on several machines share no disk: the adapter store is an S3 bucket, so the overlay
must leave no PersistentVolumeClaim for it and no ReadWriteMany volume at all, name the store
by an s3:// URL, and take the AWS credentials from a Secret (a literal key in a manifest ends
up in git). The compose profile runs a local S3 server and a querylift pointed at it.

The overlay is checked twice: as written (its patches against the base, always) and as
kustomize renders it (`kubectl kustomize`, when kubectl is on PATH; the python machine's image
has it). Compose is read as YAML only: no Docker engine runs here.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from encoders import EncoderSpec
from service.ops.settings import Settings
from tests.conftest import REPO
from tests.deploy.test_secure_defaults import settings_from

DEPLOY = REPO / "deploy"
BASE = DEPLOY / "k8s"
OVERLAY = DEPLOY / "overlays" / "object-store"
COMPOSE = REPO / "docker-compose.yml"
FOLDER_STORE = "/var/lib/querylift/adapters"  # where the base mounts its adapter-store volume
PROFILE = "object-store"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# what stays on each replica with an object store, given a home on a volume of the pod
REPLICA_LOCAL = (
    "QUERYLIFT_AUDIT_LOG",
    "QUERYLIFT_GATE_TEACHER_CACHE_DIR",
    "QUERYLIFT_QUERY_LOG_DIR",
)
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not on PATH: `kubectl kustomize` renders the overlay"
)


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())


def patches() -> list[dict[str, Any]]:
    out = []
    for entry in kustomization()["patches"]:
        assert set(entry) == {"path"}, f"a patch is a file beside kustomization.yaml: {entry}"
        out.extend(docs(OVERLAY / entry["path"]))
    return out


def patch_of(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        p
        for p in patches()
        if p["kind"] == kind and p["metadata"]["name"] == name and "$patch" not in p
    ]
    return found


def base_objects() -> list[dict[str, Any]]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for name in kust["resources"] for d in docs(BASE / name)]


def querylift_settings_names() -> set[str]:
    fields = {f"QUERYLIFT_{f.upper()}" for f in Settings.model_fields}
    return fields | {
        f"QUERYLIFT_{enc.upper()}__{f.upper()}"
        for enc in ("query_encoder", "document_encoder")
        for f in EncoderSpec.model_fields
    }


def assert_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix, with nothing secret in it: (bucket, prefix)."""
    parts = urlsplit(url)
    assert parts.scheme == "s3", f"the adapter store {url!r} is not an s3:// URL"
    assert parts.hostname and "@" not in parts.netloc, f"{url!r}: a bucket, no credentials"
    assert not parts.query and not parts.fragment and not parts.port, url
    return parts.hostname, parts.path.strip("/")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# --- the overlay as written ----------------------------------------------------------------------


def test_the_overlay_builds_on_the_base_and_applies_every_patch_file():
    kust = kustomization()
    assert kust["kind"] == "Kustomization"
    (base,) = kust["resources"]
    assert (OVERLAY / base).resolve() == BASE.resolve()
    assert BASE.resolve() not in OVERLAY.resolve().parents, "kustomize refuses a nested overlay"
    applied = {e["path"] for e in kust["patches"]}
    here = {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert applied == here - {"secrets.example.yaml"}, "every patch file is applied"


def test_the_patches_delete_every_claim_of_the_base():
    claims = {o["metadata"]["name"] for o in base_objects() if o["kind"] == "PersistentVolumeClaim"}
    assert claims, "the base has the claims this overlay removes"
    deleted = {
        p["metadata"]["name"]
        for p in patches()
        if p["kind"] == "PersistentVolumeClaim" and p.get("$patch") == "delete"
    }
    assert deleted == claims


def test_the_deployment_patch_removes_the_store_volume_and_every_claim_from_the_pod():
    (base,) = [o for o in base_objects() if o["kind"] == "Deployment"]
    base_pod = base["spec"]["template"]["spec"]
    claimed = {v["name"] for v in base_pod["volumes"] if "persistentVolumeClaim" in v}
    store_volume = {
        m["name"] for m in container(base)["volumeMounts"] if m["mountPath"] == FOLDER_STORE
    }
    assert store_volume and store_volume <= claimed

    patch = patch_of("Deployment", base["metadata"]["name"])
    pod = patch["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in claimed:
        v = volumes[name]
        deleted = v.get("$patch") == "delete"
        replaced = "persistentVolumeClaim" in v and v["persistentVolumeClaim"] is None
        assert deleted or replaced, f"the pod keeps the claim {name}"
        if name in store_volume:
            assert deleted, "no volume at all for the adapter store"
        else:
            assert "emptyDir" in v, f"{name} is replaced by a volume that needs no claim"
    (c,) = pod["containers"]
    gone = {m["mountPath"] for m in c["volumeMounts"] if m.get("$patch") == "delete"}
    assert FOLDER_STORE in gone, "the store's mount goes with its volume"


def test_the_store_is_an_s3_url_and_the_credentials_come_from_a_secret():
    config = patch_of("ConfigMap", "querylift-config")["data"]
    assert_s3_url(config["QUERYLIFT_ADAPTER_STORE"])
    assert not set(CREDENTIALS) & set(config), "no credentials in the ConfigMap"
    if "AWS_ENDPOINT_URL" in config:
        assert urlsplit(config["AWS_ENDPOINT_URL"]).scheme == "https", "a remote endpoint: https"
    unknown = {k for k in config if k.startswith("QUERYLIFT_")} - querylift_settings_names()
    assert not unknown, f"no such querylift settings: {unknown}"

    env = {e["name"]: e for e in container(patch_of("Deployment", "querylift"))["env"]}
    example = {d["metadata"]["name"]: d for d in docs(OVERLAY / "secrets.example.yaml")}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name], f"{name} is a literal"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional", False), "a missing Secret stops the pod, loudly"
        assert example[ref["name"]]["kind"] == "Secret"
        assert ref["key"] in example[ref["name"]]["stringData"], "the template has the key"


def test_the_replica_local_files_live_on_a_volume_of_the_pod():
    """The audit log, the teacher cache and the query log stay on the replica: under a mounted
    emptyDir, not in the container's own layer (where the defaults would put them)."""
    config = patch_of("ConfigMap", "querylift-config")["data"]
    patch = patch_of("Deployment", "querylift")
    volumes = {v["name"]: v for v in patch["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(patch)["volumeMounts"] if "name" in m}
    for key in REPLICA_LOCAL:
        path = Path(config[key])
        (mount,) = [m for m in mounts if Path(m) in path.parents]
        assert "emptyDir" in volumes[mounts[mount]], f"{key} is on a volume of its own"


# --- the overlay as kustomize renders it ---------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="module")
def rendered_base() -> list[dict[str, Any]]:
    return kustomize(BASE)


@needs_kubectl
def test_rendered_overlay_has_no_claim_and_no_read_write_many_volume(
    rendered: list[dict[str, Any]],
):
    kinds = [o["kind"] for o in rendered]
    assert "PersistentVolumeClaim" not in kinds
    assert "ReadWriteMany" not in yaml.safe_dump_all(rendered)
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        assert "persistentVolumeClaim" not in volume, volume
        template = volume.get("ephemeral", {}).get("volumeClaimTemplate", {})
        assert "ReadWriteMany" not in template.get("spec", {}).get("accessModes", []), volume
    names = {v["name"] for v in pod["volumes"]}
    (c,) = pod["containers"]
    for mount in c["volumeMounts"]:
        assert mount["name"] in names, f"{mount['mountPath']} mounts a volume the pod lacks"
        assert mount["mountPath"] != FOLDER_STORE


@needs_kubectl
def test_rendered_overlay_reads_an_s3_store_with_credentials_from_a_secret(
    rendered: list[dict[str, Any]],
):
    config = one(rendered, "ConfigMap")["data"]
    assert_s3_url(config["QUERYLIFT_ADAPTER_STORE"])
    (c,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [
        one(rendered, "ConfigMap")["metadata"]["name"]
    ]
    env = {e["name"]: e for e in c["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    for name in CREDENTIALS:
        assert name not in config and "value" not in env.get(name, {}), f"{name} is a literal"
    # nothing anywhere in the rendered manifests is a Secret with data in it
    assert "Secret" not in {o["kind"] for o in rendered}


@needs_kubectl
def test_rendered_overlay_changes_only_storage_and_credentials(
    rendered: list[dict[str, Any]], rendered_base: list[dict[str, Any]]
):
    """Probes, the GPU, the image, the HPA, the PDB, the Service: as in the base."""

    def comparable(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        out = {}
        for o in objects:
            if o["kind"] in ("PersistentVolumeClaim", "ConfigMap"):
                continue
            if o["kind"] == "Deployment":
                pod = o["spec"]["template"]["spec"]
                pod.pop("volumes")
                (c,) = pod["containers"]
                c.pop("volumeMounts")
                c["env"] = [e for e in c["env"] if not e["name"].startswith("AWS_")]
                c["resources"]["requests"].pop("ephemeral-storage", None)
            out[(o["kind"], o["metadata"]["name"])] = o
        return out

    assert comparable(rendered) == comparable(rendered_base)
    config, base_config = (
        one(rendered, "ConfigMap")["data"],
        one(rendered_base, "ConfigMap")["data"],
    )
    changed = {k for k in config if config[k] != base_config.get(k)}
    assert changed <= {
        "QUERYLIFT_ADAPTER_STORE",
        *REPLICA_LOCAL,
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    }, changed
    assert set(base_config) <= set(config)


@needs_kubectl
def test_rendered_configmap_is_a_valid_configuration_on_the_object_store(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    config = one(rendered, "ConfigMap")["data"]
    settings = settings_from(config, monkeypatch, tmp_path)
    assert settings.adapter_store == config["QUERYLIFT_ADAPTER_STORE"], "kept as an s3:// URL"
    assert settings.audit_log == Path(config["QUERYLIFT_AUDIT_LOG"])
    assert settings.gate_teacher_cache_dir == Path(config["QUERYLIFT_GATE_TEACHER_CACHE_DIR"])
    assert settings.query_log_dir == Path(config["QUERYLIFT_QUERY_LOG_DIR"])
    assert settings.profile == "gpu" and settings.tenants_file is not None


# --- compose: the profile `object-store` ---------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def defaults(value: str) -> str:
    """A compose value with each `${VAR:-default}` at its default (nothing set in .env)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def profile_services() -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(name, service) of the S3 server and of the querylift that uses it."""
    services = {n: s for n, s in compose_services().items() if PROFILE in s.get("profiles", [])}
    (querylift,) = [n for n, s in services.items() if "QUERYLIFT_ADAPTER_STORE" in s["environment"]]
    (server,) = set(services) - {querylift}
    return server, services[server], querylift, services[querylift]


def test_plain_compose_up_is_unchanged():
    """`docker compose up` starts what it always did: the profile's services only on demand."""
    services = compose_services()
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert default == {"querylift", "qdrant", "prometheus", "grafana"}
    assert services["querylift"]["environment"]["QUERYLIFT_ADAPTER_STORE"] == FOLDER_STORE
    assert "AWS_ENDPOINT_URL" not in services["querylift"]["environment"]


def test_the_profile_points_querylift_at_the_local_s3_server():
    server_name, server, name, querylift = profile_services()
    env = {k: defaults(str(v)) for k, v in querylift["environment"].items()}
    bucket, prefix = assert_s3_url(env["QUERYLIFT_ADAPTER_STORE"])
    assert prefix, "a prefix keeps the bucket's root free"

    # the endpoint: loopback (querylift speaks plain http to loopback only) in the server's own
    # network namespace, on the port the server listens on
    endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
    assert querylift["network_mode"] == f"service:{server_name}"
    assert endpoint.hostname and ipaddress.ip_address(endpoint.hostname).is_loopback
    command = server["command"]
    listen = command[command.index("--address") + 1]
    assert endpoint.port == int(listen.rsplit(":", 1)[1])
    assert querylift["depends_on"][server_name]["condition"] == "service_healthy"

    # the server's health means the bucket exists (its check creates it)
    check = " ".join(server["healthcheck"]["test"])
    assert f"mb --ignore-existing --quiet local/{bucket}" in check

    # the credentials are the server's, through the same .env variables
    server_env = {k: str(v) for k, v in server["environment"].items()}
    assert querylift["environment"]["AWS_ACCESS_KEY_ID"] == server_env["MINIO_ROOT_USER"]
    assert querylift["environment"]["AWS_SECRET_ACCESS_KEY"] == server_env["MINIO_ROOT_PASSWORD"]
    assert "QUERYLIFT_ADAPTER_STORE" not in server_env

    # its API port is published by the namespace's owner, on loopback
    published = [p for p in server["ports"] if p.endswith(":8080")]
    assert published and all(p.startswith("127.0.0.1:") for p in server["ports"])
    assert "ports" not in querylift, "a service in another's network namespace publishes none"
    unknown = {k for k in env if k.startswith("QUERYLIFT_")} - querylift_settings_names()
    assert not unknown, f"{name}: no such querylift settings: {unknown}"


def test_the_profile_querylift_is_a_valid_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    _, _, _, querylift = profile_services()
    env = {k: defaults(str(v)) for k, v in querylift["environment"].items()}
    settings = settings_from(env, monkeypatch, tmp_path)
    assert settings.adapter_store == env["QUERYLIFT_ADAPTER_STORE"]
    assert settings.profile == "embedded" and settings.qdrant_url == "http://qdrant:6333"


def test_the_profile_querylift_has_no_folder_store_and_keeps_its_local_files_on_a_volume():
    _, _, name, querylift = profile_services()
    targets = {v.split(":")[1]: v.split(":")[0] for v in querylift["volumes"]}
    assert FOLDER_STORE not in targets, f"{name} mounts a folder store"
    named = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    for key in REPLICA_LOCAL:
        path = Path(querylift["environment"][key])
        (target,) = [t for t in targets if Path(t) in path.parents]
        assert targets[target] in named, f"{key} is on a named volume"


# --- the docs -------------------------------------------------------------------------------------

DEPLOY_PATH = re.compile(r"(?<![\w/.-])deploy/[\w./-]*[\w/]")


@pytest.mark.parametrize(
    "doc",
    [DEPLOY / "README.md", REPO / "docs" / "deployment.md", COMPOSE, *sorted(OVERLAY.glob("*"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_deploy_path_the_docs_name_exists(doc: Path):
    named = set(DEPLOY_PATH.findall(doc.read_text()))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
