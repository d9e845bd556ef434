"""The metric-name lexer used by the live dashboard/rules checks finds names and nothing else."""

from __future__ import annotations

import pytest

from tests.deploy.promql import exported_names, metric_names, substitute_grafana


@pytest.mark.parametrize(("expr", "names"), [
    ('sum(rate(actionstream_events_consumed_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))',
     {"actionstream_events_consumed_total"}),
    ("histogram_quantile(0.99, sum by (le, stage) (rate(actionstream_freshness_seconds_bucket[5m]))) > 0.25",
     {"actionstream_freshness_seconds_bucket"}),
    ("(sum by (job, reason) (rate(a_total[5m])) / on (job) group_left sum by (job) (rate(b_total[5m]))) > 0.05"
     " and on (job, reason) sum by (job, reason) (rate(a_total[5m])) > 1e-1",
     {"a_total", "b_total"}),
    ('time() - max(actionstream_last_event_timestamp_seconds{route="/v1/users/{user_id}/features"})',
     {"actionstream_last_event_timestamp_seconds"}),
    ("up{job=~\"actionstream.*\"} == 0 unless x offset 5m", {"up", "x"}),
    ("actionstream:consumer_lag_messages:sum > bool 10", {"actionstream:consumer_lag_messages:sum"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(substitute_grafana(expr)) == names


def test_exported_names_cover_types_and_childless_families() -> None:
    text = ("# HELP a_total x\n# TYPE a_total counter\na_total 1.0\n"
            "# HELP r_total x\n# TYPE r_total counter\n"            # labelled counter, no child yet
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
            "# HELP g x\n# TYPE g gauge\ng 3\n")
    names = exported_names(text)
    assert {"a_total", "r_total", "h_bucket", "h_sum", "h_count", "g"} <= names
    assert "h" not in names and "a" not in names
