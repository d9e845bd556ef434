"""promtool (from Debian's `prometheus` package) checks the scrape config and rules and runs the alert unit
tests in deploy/prometheus/tests/: each alert fires in its case and stays silent in the nearby ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

pytestmark = [pytest.mark.ops,
              pytest.mark.skipif(shutil.which("promtool") is None,
                                 reason="promtool not installed (make ops-deps / apt-get install prometheus)")]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


def test_config_is_valid() -> None:
    r = _promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_are_valid() -> None:
    r = _promtool("check", "rules", "rules/actionstream.rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_unit_tests_pass() -> None:
    tests = sorted(str(p.relative_to(PROM_DIR)) for p in (PROM_DIR / "tests").glob("*.yml"))
    assert tests
    r = _promtool("test", "rules", *tests)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test_and_annotations() -> None:
    import yaml

    rules = [r for g in yaml.safe_load((PROM_DIR / "rules" / "actionstream.rules.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r]
    tested = {case["alertname"] for f in (PROM_DIR / "tests").glob("*.yml")
              for t in yaml.safe_load(f.read_text())["tests"] for case in t.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    for rule in rules:
        assert rule["alert"] in tested, f"{rule['alert']} has no firing test case"
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expectation flipped is rejected."""
    src = (PROM_DIR / "tests" / "actionstream.rules.test.yml").read_text()
    broken = src.replace("values: '0x3 1x27'", "values: '0x30'")
    assert broken != src
    (tmp_path / "rules").mkdir()
    shutil.copy(PROM_DIR / "rules" / "actionstream.rules.yml", tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(broken)
    r = subprocess.run(["promtool", "test", "rules", "tests/t.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "ActionstreamWorkerNotReady" in r.stdout + r.stderr
