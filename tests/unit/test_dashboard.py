"""The Grafana dashboard: committed JSON = generator output, and its queries are sound.

`make check-observability` parses every panel query with promtool; these tests need no
promtool: the committed JSON does not drift from deploy/grafana/dashboard.py, every
panel the issue names is there, and every query reads only metrics that
edgepop/metrics.py declares (a misspelled name parses fine and shows nothing).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.unit.metricnames import declared_series_names, edge_names

DASHBOARD_PY = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboard.py"


def _load() -> ModuleType:
    # deploy/ is not a package: load the generator from its file.
    spec = importlib.util.spec_from_file_location("edgepop_dashboard", DASHBOARD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dashboard = _load()


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dashboard.DASHBOARD_FILE.read_text())
    return data


def test_committed_dashboard_is_what_the_generator_makes() -> None:
    assert dashboard.DASHBOARD_FILE.read_text() == dashboard.render(), (
        "deploy/grafana/edgepop.json drifted: run `python deploy/grafana/dashboard.py`"
    )


def test_panels_have_unique_ids_and_fit_the_grid(committed: dict[str, Any]) -> None:
    panels = committed["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
    # No two panels overlap: each grid cell belongs to one panel at most.
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        position = panel["gridPos"]
        for x in range(position["x"], position["x"] + position["w"]):
            for y in range(position["y"], position["y"] + position["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_panel_uses_the_datasource_variable(committed: dict[str, Any]) -> None:
    for panel in committed["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"] == "${datasource}"
        for query in panel["targets"]:
            assert query["datasource"] == "${datasource}"


def test_queries_read_only_metrics_that_nodes_export(committed: dict[str, Any]) -> None:
    declared = declared_series_names()
    for _, title, ref_id, expr in dashboard.panel_queries(committed):
        unknown = edge_names(expr) - declared
        assert not unknown, f"{title} ({ref_id}) reads undeclared {sorted(unknown)}: {expr}"


def test_the_issues_panels_are_there(committed: dict[str, Any]) -> None:
    queries = list(dashboard.panel_queries(committed))
    panels = {panel["id"]: panel for panel in committed["panels"]}

    def panels_reading(metric: str) -> list[dict[str, Any]]:
        return [panels[pid] for pid, _, _, expr in queries if metric in edge_names(expr)]

    # Latency by region and method.
    assert any(
        "histogram_quantile" in expr and "by (region, method, le)" in expr
        for _, _, _, expr in queries
        if "edge_request_duration_seconds_bucket" in edge_names(expr)
    )
    # Staleness per PoP.
    assert panels_reading("edge_kv_replication_lag_seconds")
    # The propagation heatmap: buckets as a heatmap.
    assert any(
        panel["type"] == "heatmap"
        and panel["dataFormat"] == "tsbuckets"
        and panel["targets"][0]["format"] == "heatmap"
        for panel in panels_reading("edge_kv_propagation_seconds_bucket")
    )
    # Object calls and failovers; injected delay.
    for metric in ("edge_do_calls_total", "edge_do_failovers_total"):
        assert panels_reading(metric), metric
    assert panels_reading("edge_injected_delay_seconds_bucket")
    assert panels_reading("edge_injected_delay_seconds_sum")


def test_queries_become_plain_promql_for_promtool(committed: dict[str, Any]) -> None:
    rules = dashboard.queries_as_rules(committed)
    [group] = rules["groups"]
    assert len(group["rules"]) == len(list(dashboard.panel_queries(committed)))
    for rule in group["rules"]:
        assert "$__" not in rule["expr"] and "${__" not in rule["expr"]
        assert rule["record"].startswith("dashboard:panel_")


def test_promql_replaces_grafanas_range_macros_and_refuses_unknown_ones() -> None:
    assert dashboard.promql("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert dashboard.promql('x{region=~"$region"}') == 'x{region=~"$region"}'
    with pytest.raises(ValueError, match="__from"):
        dashboard.promql("x offset $__from")
