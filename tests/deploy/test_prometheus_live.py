"""A real Prometheus on loopback scrapes a real worker (real Kafka broker): the platform's metrics arrive,
the alert rules load and evaluate, every dashboard/alert query is valid PromQL for that server, and every
metric name they use is exported by the live worker's ``/metrics``.

One worker + one Prometheus are shared by the module (start-up costs ~15 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port
from streams.events import Event, encode_event, now_ms
from streams.stack import Child, http_ok, prometheus_command, write_prometheus_files
from tests.deploy.promql import PROMETHEUS_GENERATED, exported_names, metric_names, substitute_grafana

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "actionstream-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "rules" / "actionstream.rules.yml"

pytestmark = [
    pytest.mark.kafka, pytest.mark.ops,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus binary not installed (make ops-deps / apt-get install prometheus)"),
]


@dataclass
class Live:
    worker_url: str
    prometheus_url: str
    produced: int
    rejected: int

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:  # 400 = bad query: the body says why
            return dict(json.load(exc))

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.worker_url}/metrics", timeout=10) as resp:
            return str(resp.read().decode())


def _wait(what: str, check: Callable[[], bool], timeout: float, proc: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            pytest.fail(f"{proc.name} exited while waiting for {what}; log:\n{proc.log_path.read_text()[-4000:]}")
        time.sleep(0.3)
    tail = proc.log_path.read_text()[-4000:] if proc is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def live(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from streams.producer import ActionProducer
    from streams.settings import KafkaSettings, ProducerSettings
    from streams.topics import ensure_topics

    tmp = tmp_path_factory.mktemp("prom-live")
    suffix = uuid.uuid4().hex[:8]
    topics = {"topic_actions": f"ops-actions-{suffix}", "topic_dlq": f"ops-dlq-{suffix}",
              "topic_embeddings": f"ops-emb-{suffix}"}
    ensure_topics(KafkaSettings.load(kafka_bootstrap_servers=kafka.bootstrap, partitions=2, **topics))
    port, prom_port = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", ACTIONSTREAM_PARTITIONS="2",
               **{f"ACTIONSTREAM_{k.upper()}": v for k, v in topics.items()})
    worker = Child("worker", [sys.executable, "-m", "streams.cli", "worker", "--port", str(port),
                              "--data-dir", str(tmp / "state"), "--archive-dir", "", "--bootstrap", kafka.bootstrap,
                              "--worker-id", f"ops-{suffix}"],
                   tmp / "worker.log", echo=False, env=env).start()
    config = write_prometheus_files(tmp / "prometheus", [f"127.0.0.1:{port}"], port=prom_port, scrape_interval_s=1)
    prom = Child("prometheus", prometheus_command(config, tmp / "prometheus" / "data", prom_port),
                 tmp / "prometheus.log", echo=False).start()
    try:
        worker_url, prom_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
        _wait("worker /readyz", lambda: http_ok(f"{worker_url}/readyz"), 120, worker)
        _wait("prometheus /-/ready", lambda: http_ok(f"{prom_url}/-/ready"), 60, prom)
        now = now_ms()
        events = [Event(f"ops-{suffix}-{i}", f"u{i % 5}", f"i{i}", ("impression", "click")[i % 2], now - 1000 + i,
                        "homefeed", None) for i in range(20)]
        bad = [b"not json", b'{"event_id": "x", "user_id": "u1"}']
        with ActionProducer(ProducerSettings.load(kafka_bootstrap_servers=kafka.bootstrap, **topics)) as producer:
            for e in events:
                producer.send(e, encode_event(e))
            for raw in bad:
                producer.send_raw(raw, key=b"u1")
            producer.flush()
        # one API call so the HTTP latency histogram has a child
        urllib.request.urlopen(f"{worker_url}/v1/users/u1/features", timeout=10).read()
        yield Live(worker_url, prom_url, produced=len(events) + len(bad), rejected=len(bad))
    finally:
        prom.stop(15)
        worker.stop(45)


def _value(result: dict[str, Any]) -> float:
    assert result["status"] == "success", result
    series = result["data"]["result"]
    return float(series[0]["value"][1]) if series else float("nan")


def test_prometheus_scrapes_the_worker(live: Live) -> None:
    def consumed_all() -> bool:
        return _value(live.query("sum(actionstream_events_consumed_total)")) >= live.produced

    _wait(f"Prometheus to see {live.produced} consumed events", consumed_all, 90)
    assert _value(live.query('up{job="actionstream-worker"}')) == 1
    assert _value(live.query("sum(actionstream_events_rejected_total)")) == live.rejected
    assert _value(live.query("sum(actionstream_events_accepted_total)")) == live.produced - live.rejected
    # /readyz was 200 before traffic; a rebalance may flip it briefly, so wait rather than sample once
    _wait("recovery_ready == 1 in Prometheus", lambda: _value(live.query("min(actionstream_recovery_ready)")) == 1, 30)
    reasons = live.query("actionstream_events_rejected_total")["data"]["result"]
    assert {r["metric"]["reason"] for r in reasons} >= {"invalid_json"}


def test_alert_rules_are_loaded_and_evaluate(live: Live) -> None:
    expected = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}

    def evaluated() -> bool:
        with urllib.request.urlopen(f"{live.prometheus_url}/api/v1/rules", timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        return set(rules) >= expected and all(rules[n].get("lastEvaluation", "").startswith("2") and
                                              not rules[n]["lastEvaluation"].startswith("0001")
                                              for n in expected)

    _wait("every alert rule evaluated once", evaluated, 30)
    with urllib.request.urlopen(f"{live.prometheus_url}/api/v1/rules", timeout=10) as resp:
        rules = {r["name"]: r for g in json.load(resp)["data"]["groups"] for r in g["rules"]}
    broken = {n: rules[n].get("lastError") for n in expected if rules[n]["health"] != "ok"}
    assert not broken, broken


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, label): the selector must name real metrics
            exprs.append(var["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
    return [substitute_grafana(e) for e in exprs]


def _rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_query_is_valid_promql(live: Live) -> None:
    exprs = _dashboard_exprs() + _rule_exprs()
    assert len(exprs) > 30
    errors = {e: r.get("error") for e in exprs if (r := live.query(e))["status"] != "success"}
    assert not errors, errors
    assert live.query("sum(rate(actionstream_events_consumed_total[1m]")["status"] == "error"  # the check bites


def _missing(exprs: list[str], exported: set[str]) -> dict[str, set[str]]:
    out = {}
    for e in exprs:
        all_names = metric_names(e)
        assert all_names, f"no metric name found in {e!r}"
        names = all_names - PROMETHEUS_GENERATED
        if names - exported:
            out[e] = names - exported
    return out


def test_dashboard_metrics_exist_in_live_worker(live: Live) -> None:
    exported = exported_names(live.metrics_text())
    assert not _missing(_dashboard_exprs(), exported)
    assert _missing(["rate(actionstream_events_consumed[1m])"], exported)  # a wrong name is caught


def test_alert_rule_metrics_exist_in_live_worker(live: Live) -> None:
    exported = exported_names(live.metrics_text())
    assert not _missing(_rule_exprs(), exported)


def test_dashboard_core_panels_show_data(live: Live) -> None:
    """Throughput and rejects panels return series from the real scrape (not only valid syntax)."""
    dash = json.loads(DASHBOARD.read_text())
    wanted = {"Events per second", "Rejects by reason", "Recovery: ready per worker", "Table keys",
              "API requests by route and status"}
    targets = [substitute_grafana(t["expr"]).replace("[1m]", "[5m]") for p in dash["panels"]
               if p["title"] in wanted for t in p["targets"]]
    assert len(targets) >= 8

    def all_have_data() -> bool:
        return all(live.query(e)["data"]["result"] for e in targets)

    try:
        _wait("data in the core dashboard panels", all_have_data, 30)
    except pytest.fail.Exception:
        empty = [e for e in targets if not live.query(e)["data"]["result"]]
        pytest.fail(f"no data for: {empty}")


def test_worker_exports_model_loaded_for_each_model(live: Live) -> None:
    """The model alerts and the "Models loaded" panel need model_loaded{model} set to 0 or 1 from start-up:
    a gauge that is never set has no series, and `== 0` alerts on a missing series never fire."""
    models = {s.labels.get("model") for family in text_string_to_metric_families(live.metrics_text())
              if family.name == "actionstream_model_loaded" for s in family.samples}
    assert models >= {"transact", "pinnerformer_daily"}, f"actionstream_model_loaded children: {models}"
