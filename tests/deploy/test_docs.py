"""deploy/README.md documents every alert (with the section its runbook points to) and every metric."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from streams.metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _anchors(markdown: str) -> set[str]:
    """GitHub heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.M)}


def test_every_runbook_points_to_a_section_and_every_alert_is_listed() -> None:
    readme = (DEPLOY / "README.md").read_text()
    anchors = _anchors(readme)
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus/rules/actionstream.rules.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r]
    for rule in rules:
        link = rule["annotations"]["runbook"].split(":", 1)[0]
        path, _, anchor = link.partition("#")
        assert path == "deploy/README.md" and anchor in anchors, (rule["alert"], link)
        assert f"| {rule['alert']} |" in readme, rule["alert"]


def test_every_exported_metric_is_documented() -> None:
    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    readme = (DEPLOY / "README.md").read_text()
    names = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
    assert len(names) >= 16
    missing = sorted(n for n in names if f"`{n}" not in readme)
    assert not missing, missing
