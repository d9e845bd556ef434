"""Smoke tests of `python -m bench.run --quick` against the session's real broker.

The default-suite test runs the two cheapest sections that touch every layer (bare clients + RocksDB;
one real worker end to end) with tiny sizes and checks the report is written, every requested section has figures
or says why not, and no figure is invented for a missing piece. It asserts nothing about speed: speed
is what the benchmark reports, not what a unit test checks. The slow test runs every section.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, bootstrap: str, only: str | None, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), "--bootstrap", bootstrap,
           "--log-level", "WARNING"]
    if only:
        cmd += ["--only", only]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list(tmp_path.glob("*-quick"))
    assert len(runs) == 1
    md = (runs[0] / "report.md").read_text()
    assert md in res.stdout  # the report printed is the report saved
    return orjson.loads((runs[0] / "report.json").read_bytes())


def _check(report: dict, expected: list[str]) -> None:
    sections = {s["key"]: s for s in report["sections"]}
    assert list(sections) == expected
    for key, s in sections.items():
        if s["unavailable"]:
            assert not s["unavailable"].startswith("failed"), f"{key}: {s['unavailable']}"
            continue
        assert s["figures"], f"section {key} has neither figures nor a reason"
        for f in s["figures"]:
            assert f["value"] is None or f["value"] == f["value"], f  # no NaN


@pytest.mark.kafka
def test_quick_core_sections(kafka, tmp_path: Path) -> None:
    report = _run(tmp_path, kafka.bootstrap, "ceiling,platform", timeout=240)
    _check(report, ["ceiling", "platform"])
    ceiling = {f["name"]: f["value"] for f in report["sections"][0]["figures"]}
    # the packed blob is the stored form: it must be much smaller than the JSON list of the same actions
    assert ceiling["stored bytes per user (100 actions), packed blob, update_blob"] < \
        ceiling["stored bytes per user (100 actions), JSON list of event dicts"] / 3


@pytest.mark.kafka
@pytest.mark.slow
def test_quick_all_sections(kafka, tmp_path: Path) -> None:
    from bench.sections import SECTIONS
    report = _run(tmp_path, kafka.bootstrap, None, timeout=900)
    _check(report, [k for k, _, _ in SECTIONS])
