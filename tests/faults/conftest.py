"""Fault suite (``make test-faults`` = ``pytest -m faults``): prints one table of lost/duplicated/wrong counts."""

from __future__ import annotations

import pytest

from tests.faults.helpers import RESULTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault suite: state vs offline rebuild (all counts must be 0)")
    for r in RESULTS:
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("scenario", "changelog", "api"))
        tr.write_line(f"{r['scenario']:<22} changelog: {r['changelog']}")
        tr.write_line(f"{'':<22} API:       {r['api']}   [{extra}]")
