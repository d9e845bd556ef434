"""Structure of the Grafana dashboard and provisioning files (the live metric-name check is in
test_prometheus_live.py): every required topic has a panel, panels do not overlap, queries are templated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASH: dict[str, Any] = json.loads((GRAFANA / "actionstream-dashboard.json").read_text())
PANELS = [p for p in DASH["panels"] if p["type"] != "row"]


def _exprs_of(title_part: str) -> str:
    found = [p for p in PANELS if title_part.lower() in p["title"].lower()]
    assert found, f"no panel titled like {title_part!r}"
    return " ".join(t["expr"] for p in found for t in p["targets"])


def test_required_panels_use_the_right_metrics() -> None:
    assert "actionstream_events_consumed_total" in _exprs_of("Events per second")
    assert "by (reason)" in _exprs_of("Rejects by reason")
    fresh = _exprs_of("Freshness")
    assert "histogram_quantile(0.99" in fresh and "actionstream_freshness_seconds_bucket" in fresh
    assert "actionstream_processing_seconds_bucket" in _exprs_of("Processing time")
    assert "actionstream_consumer_lag_messages" in _exprs_of("Consumer lag by topic")
    assert "actionstream_recovery_ready" in _exprs_of("Recovery: ready")
    assert "actionstream_recovery_remaining_records" in _exprs_of("Recovery: changelog")
    assert "by (le, route)" in _exprs_of("API latency")
    assert "actionstream_encoder_batch_size_bucket" in _exprs_of("encoder batch size")
    assert "actionstream_encoder_seconds_bucket" in _exprs_of("encoder latency")
    assert "actionstream_model_loaded" in _exprs_of("Models loaded")


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [p["id"] for p in DASH["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in DASH["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_queries_are_templated_and_described() -> None:
    variables = {v["name"] for v in DASH["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for p in PANELS:
        assert p["description"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and refs, p["title"]
        for t in p["targets"]:
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], t["expr"]


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/actionstream-prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    boards = yaml.safe_load((GRAFANA / "provisioning/dashboards/actionstream.yml").read_text())
    provider = boards["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert DASH["uid"] == "actionstream-overview"
