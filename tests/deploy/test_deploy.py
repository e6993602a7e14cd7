"""Deployment files: Dockerfile, docker-compose.yml and deploy/ (Kubernetes manifests, the
Qdrant Helm values, the Prometheus config and alert rules, the Grafana dashboard).

They parse, pin their images, check health, request a GPU, and use only the metric names the
service exports and the settings it knows. `promtool` (the distribution's `prometheus`
package, which .ci/run installs) checks the Prometheus files and unit-tests the alert rules;
those tests skip, with the reason, where it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from encoders import EncoderSpec
from service.ops.metrics import Metrics
from service.ops.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ADAPTER_STORE = "/var/lib/querylift/adapters"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH: install the distribution's `prometheus` package "
    "(apt-get install prometheus; .ci/run does) to check deploy/prometheus/",
)
# every querylift_* name in deploy/ must be registered by service.ops.metrics.Metrics (or be a
# custom metric prometheus-adapter computes from registered series)
METRIC_NAME = re.compile(r"(?<![\w:])querylift_[a-z0-9_]+")


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


def k8s_objects() -> list[dict[str, Any]]:
    return [
        d
        for p in sorted(K8S.rglob("*.yaml"))
        for d in yaml_docs(p)
        if isinstance(d, dict) and "kind" in d and d["kind"] != "Kustomization"
    ]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in k8s_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} under deploy/k8s, got {len(found)}"
    return found[0]


def assert_pinned(image: str) -> None:
    """A tag (or digest) that is not `latest`: `repo:1.2.3`, `host:5000/repo:1.2.3`."""
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]
    assert ":" in last, f"image {image!r} has no tag"
    tag = last.split(":", 1)[1]
    assert tag and tag != "latest", f"image {image!r} is not pinned"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def deployment_container() -> dict[str, Any]:
    (container,) = one("Deployment", "querylift")["spec"]["template"]["spec"]["containers"]
    return container


def configmap_env() -> dict[str, str]:
    return one("ConfigMap", "querylift-config")["data"]


# --- everything parses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [COMPOSE, *deploy_files(".yml", ".yaml")],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_yaml_parses(path: Path):
    docs = yaml_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document is a mapping"


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(REPO)))
def test_json_parses(path: Path):
    assert json.loads(path.read_text())


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_pinned_non_root_and_healthchecked():
    instr = dockerfile_instructions()
    args = {}
    for word, rest in instr:
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value)
    froms = [rest.split()[0] for word, rest in instr if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for ref in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        assert_pinned(image)
    assert "cuda" in re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[-1])

    final = instr[max(i for i, (w, _) in enumerate(instr) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage runs as a non-root user"

    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/readyz" in health and "--start-period" in health
    volumes = " ".join(rest for word, rest in final if word == "VOLUME")
    assert "/models" in volumes and ADAPTER_STORE in volumes
    assert any(word == "EXPOSE" and "8080" in rest for word, rest in final)
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "QUERYLIFT_PROFILE=gpu" in env and "QUERYLIFT_HOST=0.0.0.0" in env
    assert "HF_HOME=/models" in env
    cmd = [rest for word, rest in final if word == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["querylift", "serve"]


def test_dockerfile_pins_the_vllm_of_the_gpu_extra():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = [r for r in pyproject["project"]["optional-dependencies"]["gpu"] if "vllm" in r]
    assert re.fullmatch(r"vllm==[\w.]+", pin), f"the gpu extra pins vllm exactly: {pin!r}"
    text = DOCKERFILE.read_text()
    assert f"ARG VLLM_VERSION={pin.split('==')[1]}\n" in text
    assert '"vllm==${VLLM_VERSION}"' in text and "[gpu]" in text


def test_dockerignore_keeps_the_build_context_small_but_complete():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "models", "var"} <= ignored
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    copied = [src for args in copies if not args[0].startswith("--") for src in args[:-1]]
    assert {"pyproject.toml", "README.md", "service"} <= set(copied)
    for src in copied:
        assert src not in ignored, f"the Dockerfile copies {src}, which .dockerignore drops"
        assert (REPO / src).exists(), src


# --- docker-compose.yml --------------------------------------------------------------------------


def test_compose_services_are_pinned_and_healthchecked():
    services = compose()["services"]
    assert {"querylift", "qdrant", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc, f"{name} names its image"
        assert_pinned(svc["image"])
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has a healthcheck"
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_querylift_gets_a_gpu_qdrant_and_its_volumes():
    q = compose()["services"]["querylift"]
    assert q["build"]["context"] == "."
    (device,) = q["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] >= 1
    assert "gpu" in device["capabilities"]
    assert q["environment"]["QUERYLIFT_QDRANT_URL"] == "http://qdrant:6333"
    assert q["depends_on"]["qdrant"]["condition"] == "service_healthy"
    targets = {v.split(":")[1] for v in q["volumes"]}
    assert {"/models", ADAPTER_STORE} <= targets
    assert any("/readyz" in part for part in q["healthcheck"]["test"])


def test_compose_qdrant_ports_storage_and_version():
    c = compose()
    qd = c["services"]["qdrant"]
    container_ports = {p.rsplit(":", 1)[-1] for p in qd["ports"]}
    assert {"6333", "6334"} <= container_ports
    (storage,) = [v for v in qd["volumes"] if v.endswith(":/qdrant/storage")]
    assert storage.split(":")[0] in c["volumes"], "Qdrant storage is a named volume"
    helm = yaml.safe_load((DEPLOY / "qdrant" / "values.yaml").read_text())
    assert qd["image"].split(":")[1] == helm["image"]["tag"], "one Qdrant version everywhere"


def test_compose_mounts_exist_and_wire_prometheus_and_grafana():
    services = compose()["services"]
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name} mounts {src}, which does not exist"
    prom = " ".join(services["prometheus"]["volumes"])
    assert (
        "./deploy/prometheus/prometheus.yml:" in prom and "./deploy/prometheus/rules.yml:" in prom
    )
    graf = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in graf
    assert "./deploy/grafana/dashboard.json:" in graf
    # the data source and dashboard provider point where compose puts things
    (ds,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/querylift.yml").read_text()
    )["providers"]
    assert f"{provider['options']['path']}/querylift.json" in graf


def test_compose_strings_do_not_trip_interpolation():
    """Compose expands `$VAR` everywhere: a literal `$` must be written `$$`."""

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    for s in strings(compose()):
        bare = re.findall(r"(?<!\$)\$(?![{$])", s.replace("$$", ""))
        assert not bare, f"unescaped $ in {s!r}"


# --- Kubernetes ----------------------------------------------------------------------------------


def test_k8s_has_every_object_kind():
    kinds = {o["kind"] for o in k8s_objects()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("metadata", {}).get("name"), obj


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {
        p.name
        for p in K8S.glob("*.yaml")
        if p.name not in ("kustomization.yaml", "secrets.example.yaml")
    }
    assert listed == present
    (image,) = kust["images"]
    assert image["name"] == deployment_container()["image"]
    assert_pinned(f"{image['newName']}:{image['newTag']}")


def test_deployment_requests_a_gpu_and_probes_health():
    deployment = one("Deployment", "querylift")
    pod = deployment["spec"]["template"]
    container = deployment_container()
    for section in ("requests", "limits"):
        assert int(container["resources"][section]["nvidia.com/gpu"]) >= 1, section
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in (*probes.values(), container["startupProbe"]["httpGet"]):
        assert probe["port"] in ports
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_deployment_mounts_the_shared_adapter_store_pvc():
    pod = one("Deployment", "querylift")["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in deployment_container()["volumeMounts"]}
    assert configmap_env()["QUERYLIFT_ADAPTER_STORE"] == ADAPTER_STORE
    pvc = one("PersistentVolumeClaim", claims[mounts[ADAPTER_STORE]])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every replica shares the store"
    assert pvc["spec"]["resources"]["requests"]["storage"]
    assert "/models" in mounts
    for claim in claims.values():
        one("PersistentVolumeClaim", claim)
    (env_from,) = deployment_container()["envFrom"]
    assert env_from["configMapRef"]["name"] == "querylift-config"


def test_service_hpa_and_pdb_target_the_deployment():
    deployment = one("Deployment", "querylift")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment_container()["ports"]}

    service = one("Service", "querylift")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]

    hpa = one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "querylift")
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    names = set()
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        assert name in served, f"the HPA's metric {name} is served by prometheus-adapter"
        names.add(name)
    # the queue the batcher exports is a scaling signal, not a comment about the future
    assert "querylift_queue_depth" in names and "querylift_queue_depth" in exported_metric_names()


def test_the_deployment_requires_a_tenants_file_from_a_secret():
    """No development mode on the cluster: the tenants file comes from a Secret that must exist
    (not optional: the pod does not start without it), mounted where the ConfigMap points."""
    env = configmap_env()
    assert "QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK" not in env
    tenants_file = Path(env["QUERYLIFT_TENANTS_FILE"])
    pod = one("Deployment", "querylift")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in deployment_container()["volumeMounts"]}
    (volume,) = [
        v
        for v in pod["volumes"]
        if v["name"] in mounts
        and "secret" in v
        and mounts[v["name"]]["mountPath"] == str(tenants_file.parent)
    ]
    assert mounts[volume["name"]]["readOnly"] is True
    secret = volume["secret"]
    assert not secret.get("optional", False)
    assert {"key": "tenants.json", "path": tenants_file.name} in secret["items"]
    example = [
        d
        for d in yaml_docs(K8S / "secrets.example.yaml")
        if d["metadata"]["name"] == secret["secretName"]
    ]
    assert example and "tenants.json" in example[0]["stringData"]


def test_qdrant_helm_values_are_replicated_and_sharded():
    values = yaml.safe_load((DEPLOY / "qdrant" / "values.yaml").read_text())
    assert values["replicaCount"] >= 2
    assert_pinned(f"{values['image']['repository']}:{values['image']['tag']}")
    config = values["config"]
    assert config["cluster"]["enabled"] is True
    collection = config["storage"]["collection"]
    assert collection["replication_factor"] >= 2
    assert collection["replication_factor"] <= values["replicaCount"]
    assert values["replicaCount"] * collection["shard_number_per_node"] >= 2
    assert values["persistence"]["size"]
    assert values["podDisruptionBudget"]["enabled"] is True
    assert values["apiKey"]["valueFrom"]["secretKeyRef"]["name"] == "querylift-secrets"


# --- settings named in the deployment exist ------------------------------------------------------


def deployment_env_names() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {
        "docker-compose.yml": list(compose()["services"]["querylift"]["environment"]),
        "configmap.yaml": list(configmap_env()),
        "deployment.yaml": [e["name"] for e in deployment_container()["env"]],
        "Dockerfile": re.findall(r"\b(QUERYLIFT_[A-Z_]+)=", DOCKERFILE.read_text()),
    }
    return names


def test_every_querylift_variable_is_a_setting():
    fields = {f"QUERYLIFT_{f.upper()}" for f in Settings.model_fields}
    nested = {
        f"QUERYLIFT_{enc.upper()}__{f.upper()}"
        for enc in ("query_encoder", "document_encoder")
        for f in EncoderSpec.model_fields
    }
    for where, names in deployment_env_names().items():
        for name in names:
            if name.startswith("QUERYLIFT_"):
                assert name in fields | nested, f"{where}: {name} is no querylift setting"


def test_the_configmap_is_a_valid_gpu_configuration(monkeypatch: pytest.MonkeyPatch):
    for key, value in configmap_env().items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.profile == "gpu"
    assert settings.query_encoder.name == "Qwen3-Embedding-8B"
    assert settings.query_encoder.backend == "vllm"
    assert settings.query_encoder.device == "cuda"
    assert settings.document_encoder.name == "Qwen3-Embedding-0.6B"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert str(settings.adapter_store) == ADAPTER_STORE
    assert settings.tenants_file is not None, "production runs with a tenants file"


def test_gpu_profile_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QUERYLIFT_PROFILE", "gpu")
    monkeypatch.setenv("QUERYLIFT_QUERY_ENCODER__PATH", "/models/qwen3-8b")
    s = Settings()
    q, d = s.query_encoder, s.document_encoder
    assert (q.name, q.path, q.backend, q.pooling) == (
        "Qwen3-Embedding-8B",
        "/models/qwen3-8b",
        "vllm",
        "last",
    )
    assert (q.dtype, q.device, q.max_tokens) == ("bfloat16", "cuda", 8192)
    assert q.query_template == "Instruct: {instruction}\nQuery:{text}"
    assert q.default_instruction.startswith("Given a web search query")
    assert (d.name, d.path, d.backend, d.pooling, d.dtype) == (
        "Qwen3-Embedding-0.6B",
        "Qwen/Qwen3-Embedding-0.6B",
        "transformers",
        "last",
        "bfloat16",
    )
    monkeypatch.delenv("QUERYLIFT_PROFILE")
    monkeypatch.delenv("QUERYLIFT_QUERY_ENCODER__PATH")
    embedded = Settings()
    assert embedded.profile == "embedded"
    assert embedded.query_encoder.name == "all-mpnet-base-v2"
    assert embedded.document_encoder.name == "all-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="profile"):
        Settings(profile="tpu")


# --- Prometheus, Grafana: metric names, rules ----------------------------------------------------


def exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        for suffix in ("", "_total", "_created", "_bucket", "_count", "_sum"):
            names.add(family.name + suffix)
    return names


def adapter_queries() -> str:
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    return "\n".join(
        r["seriesQuery"] + "\n" + r["metricsQuery"] for r in adapter["rules"]["custom"]
    )


@pytest.mark.parametrize(
    "where", ["rules.yml", "dashboard.json", "prometheus-adapter", "prometheusrule.yaml"]
)
def test_metric_names_are_exported_by_the_service(where: str):
    text = {
        "rules.yml": lambda: (PROM / "rules.yml").read_text(),
        "dashboard.json": lambda: (DEPLOY / "grafana" / "dashboard.json").read_text(),
        "prometheus-adapter": adapter_queries,
        "prometheusrule.yaml": lambda: (K8S / "monitoring" / "prometheusrule.yaml").read_text(),
    }[where]()
    used = set(METRIC_NAME.findall(text))
    assert len(used) >= 2, f"no querylift_ metric found in {where}"
    unknown = used - exported_metric_names() - adapter_served_names()
    assert not unknown, f"{where} names metrics service/ops/metrics.py does not export: {unknown}"


def adapter_served_names() -> set[str]:
    """The custom metrics prometheus-adapter serves the HPA (`as`), computed from its series."""
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    return {rule["name"]["as"] for rule in adapter["rules"]["custom"]}


def test_every_metric_any_deploy_file_names_is_in_the_registry():
    """Rules, their tests, the dashboard, the HPA, the adapter and the READMEs: no metric is
    named before the service exports it (the HPA's p99 is the adapter's, from exported series)."""
    exported = exported_metric_names()
    derived = adapter_served_names() - exported
    assert derived == {"querylift_request_p99_seconds"}, derived
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    assert len(files) >= 10
    named: dict[str, set[str]] = {}
    for path in files:
        for name in METRIC_NAME.findall(path.read_text()):
            named.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    assert "querylift_queue_depth" in named
    unknown = {n: sorted(w) for n, w in named.items() if n not in exported | derived}
    assert not unknown, f"deploy/ names metrics the service does not export: {unknown}"


TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".md", ".py")


def test_alert_rules_cover_the_failure_modes():
    groups = yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    needed = {
        "QueryliftHighErrorRate": "querylift_requests",
        "QueryliftHighP99Latency": "querylift_request_duration_seconds",
        "QueryliftQueueSaturated": "querylift_queue_depth",
        "QueryliftDown": 'up{job="querylift"}',
        "QueryliftAdapterValidationFailures": "querylift_adapter_validation_failures_total",
        "QueryliftAdapterSyncFailing": "querylift_adapter_sync_failures_total",
    }
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    for name, metric in needed.items():
        assert name in alerts, f"missing alert {name}"
        expr = alerts[name]["expr"]
        expanded = expr + " ".join(v for k, v in recorded.items() if k in expr)
        assert metric in expanded, f"{name} should watch {metric}"
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheusrule_is_rendered_from_rules_yml():
    path = K8S / "monitoring" / "render_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("render_prometheusrule", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())
    assert committed == yaml.safe_load(module.render()), (
        "prometheusrule.yaml is stale: run python deploy/k8s/monitoring/render_prometheusrule.py"
    )


def test_grafana_dashboard_queries_every_panel():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    assert dashboard["uid"] == "querylift" and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def run_promtool(*args: str) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@needs_promtool
def test_promtool_check_config():
    out = run_promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_check_rules():
    out = run_promtool("check", "rules", "rules.yml")
    assert "SUCCESS" in out


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules():
    out = run_promtool("test", "rules", "rules.test.yml")
    assert "SUCCESS" in out
