"""A real Prometheus (the distribution's `prometheus` package) scrapes a live querylift.

querylift runs on a loopback port with the tiny test encoders; Prometheus, on another loopback
port, scrapes it every second with deploy/prometheus/rules.yml loaded. Its HTTP API must then
return `querylift_` series, evaluate every rule without error, and answer the query
prometheus-adapter runs for the HPA. Skipped, with the reason, where `prometheus` is not
installed (.ci/run installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import KEYS, REPO
from tests.live import free_port, serve

PROMETHEUS = shutil.which("prometheus")
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
ADAPTER_VALUES = REPO / "deploy" / "prometheus-adapter" / "values.yaml"
TIMEOUT_S = 30.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the `prometheus` binary is not on PATH: install the distribution's `prometheus` "
    "package (apt-get install prometheus; .ci/run does) to run the live scrape test",
)


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Run Prometheus scraping `target` (host:port) every second; yield its base URL."""
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "querylift", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def poll(what: str, check: Callable[[], Any], log: Path) -> Any:
    """Call `check` until it returns something truthy; fail after TIMEOUT_S with the log."""
    deadline = time.monotonic() + TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as e:  # Prometheus still starting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} within {TIMEOUT_S:.0f}s (last: {last!r})\n{log.read_text()[-3000:]}")


def query(client: httpx.Client, promql: str) -> list[dict[str, Any]]:
    r = client.get("/api/v1/query", params={"query": promql})
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_querylift(tmp_path, make_app, adapters_bound):
    app = make_app()
    log = tmp_path / "prometheus.log"
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        for tenant, key in KEYS.items():
            auth = {"Authorization": f"Bearer {key}"}
            r = api.post("/embed", json={"input": [f"what causes malaria {tenant}"]}, headers=auth)
            assert r.status_code == 200, r.text
        r = api.post("/search", json={"query": "malaria", "top_k": 2}, headers=auth)
        assert r.status_code == 200, r.text
        assert api.post("/embed", json={"input": ["no key"]}).status_code == 401

        target = url.removeprefix("http://")
        with (
            prometheus(tmp_path, target) as prom_url,
            httpx.Client(base_url=prom_url, timeout=5) as prom,
        ):
            # the counter of the requests above, scraped from the live service
            series = poll(
                "Prometheus returned no querylift_requests_total",
                lambda: [
                    s
                    for s in query(prom, 'querylift_requests_total{job="querylift"}')
                    if s["metric"].get("endpoint") == "/embed"
                ],
                log,
            )
            assert {s["metric"]["status"] for s in series} >= {"200"}
            assert sum(float(s["value"][1]) for s in series) >= len(KEYS)
            assert all(s["metric"]["instance"] == target for s in series)

            names = {
                s["metric"]["__name__"]
                for s in query(prom, '{__name__=~"querylift_.+", job="querylift"}')
            }
            assert {
                "querylift_requests_total",
                "querylift_request_duration_seconds_bucket",
                "querylift_tenant_requests_total",
                "querylift_encoder_batch_size_bucket",
                "querylift_encoder_tokens_total",
                "querylift_qdrant_request_duration_seconds_count",
                "querylift_adapter_active_info",
            } <= names, names
            assert [s["value"][1] for s in query(prom, 'up{job="querylift"}')] == ["1"]

            # every rule of deploy/prometheus/rules.yml evaluates against real series
            def rules_evaluated() -> list[dict[str, Any]]:
                groups = prom.get("/api/v1/rules").json()["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                done = rules and all(r["health"] != "unknown" for r in rules)
                return rules if done else []

            rules = poll("the rules were not all evaluated", rules_evaluated, log)
            broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            assert not broken, broken
            assert len(rules) == sum(
                len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"]
            )
            poll(
                "the recording rule job:querylift_requests:rate5m has no value",
                lambda: query(prom, 'job:querylift_requests:rate5m{job="querylift"}'),
                log,
            )

            # the query prometheus-adapter runs for the HPA, with this target as the "pod"
            adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
            rule = next(
                r
                for r in adapter["rules"]["custom"]
                if r["name"]["as"] == "querylift_request_p99_seconds"
            )
            promql = (
                rule["metricsQuery"]
                .replace("<<.Series>>", "querylift_request_duration_seconds_bucket")
                .replace("<<.LabelMatchers>>", 'job="querylift"')
                .replace("<<.GroupBy>>", "instance")
            )
            # no new requests since the first scrape: an idle pod reports 0 (not NaN) ...
            idle = poll("the HPA's p99 query returned nothing", lambda: query(prom, promql), log)
            assert [(s["metric"], s["value"][1]) for s in idle] == [({"instance": target}, "0")]
            # ... and traffic between scrapes gives a real latency
            for _ in range(5):
                r = api.post("/embed", json={"input": ["malaria mosquito"]}, headers=auth)
                assert r.status_code == 200, r.text
            busy = poll(
                "the HPA's p99 query never saw the new requests",
                lambda: [s for s in query(prom, promql) if float(s["value"][1]) > 0],
                log,
            )
            assert [s["metric"] for s in busy] == [{"instance": target}]
            assert float(busy[0]["value"][1]) <= 30  # the largest finite bucket
