"""Metric names used by PromQL expressions (dashboard panels, alert rules) and exported by a live worker.

``metric_names(expr)`` is a small lexer, not a full PromQL parser: it drops strings, label matchers,
range/offset brackets and grouping clauses (``by (...)``, ``on (...)``, ``group_left (...)``) and keeps the
identifiers that are not function calls or keywords. The tests also send every expression to a real
Prometheus, whose parser rejects anything malformed, so the lexer only has to find names.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*)|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$job": ".*",
                     "$instance": ".*"}
PROMETHEUS_GENERATED = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def substitute_grafana(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for number, ident, call in _TOKEN.findall(text):
        if number or not ident or call or ident.lower() in _KEYWORDS:
            continue
        names.add(ident)
    return names


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name a ``/metrics`` page declares, including families that have no child yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        base = family.name
        if family.type == "counter":
            names |= {base + "_total", base + "_created"}
        elif family.type == "histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count", base + "_created"}
        elif family.type == "summary":
            names |= {base, base + "_sum", base + "_count", base + "_created"}
        else:
            names.add(base)
        names |= {s.name for s in family.samples}
    return names
