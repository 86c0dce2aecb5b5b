"""The edgepop Grafana dashboard, generated with grafanalib into `edgepop.json`.

    python deploy/grafana/dashboard.py                  # write edgepop.json
    python deploy/grafana/dashboard.py --check          # exit 1 if edgepop.json drifted
    python deploy/grafana/dashboard.py --rules FILE     # every panel query as a rule file

The JSON is committed so that Grafana users import it without Python; a unit test and
`make check-observability` hold it equal to what this module generates. `--rules` turns
each panel query of the committed JSON into a recording rule, so that `promtool check
rules` parses every query CI ships (Grafana's range macros are replaced by a fixed
range first: PromQL has no `$__rate_interval`).

Panels read raw metrics (declared in edgepop/metrics.py) and the target labels that
edgectl's file discovery sets (node, region, role), so the dashboard works without the
recording rules loaded.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from grafanalib import core as g

HERE = Path(__file__).resolve().parent
DASHBOARD_FILE = HERE / "edgepop.json"
DASHBOARD_UID = "edgepop-overview"
DATASOURCE = "${datasource}"
# Matches the series of the regions picked in the dashboard's region variable.
REGION = 'region=~"$region"'
# What promtool sees instead of Grafana's range macros (any valid range would do).
GRAFANA_MACROS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}
PANEL_WIDTH = 12
PANEL_HEIGHT = 8
GRID_WIDTH = 24
# The replication SLO of deploy/prometheus/rules/alerts.yml (ReplicationLagHigh).
LAG_SLO_S = 5.0


def target(expr: str, legend: str, ref_id: str = "A", *, heatmap: bool = False) -> g.Target:
    """A Prometheus query of a panel (`heatmap`: buckets, one series per `le`)."""
    return g.Target(
        expr=expr,
        legendFormat=legend,
        refId=ref_id,
        format="heatmap" if heatmap else "time_series",
        datasource=DATASOURCE,
    )


def quantile(q: float, metric: str, by: str, selector: str = REGION) -> str:
    """`histogram_quantile` of a histogram over Grafana's rate interval, grouped `by`."""
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))"
    )


def timeseries(title: str, description: str, targets: list[g.Target], **kwargs: Any) -> g.Panel:
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        **kwargs,
    )


def latency_panels() -> list[g.Panel]:
    return [
        timeseries(
            "Latency p50 by region and method",
            "Median time from a call's arrival to its reply at the node, injected delay "
            "included (edge_request_duration_seconds).",
            [
                target(
                    quantile(0.5, "edge_request_duration_seconds", "region, method"),
                    "{{region}} {{method}}",
                )
            ],
            unit=g.SECONDS_FORMAT,
        ),
        timeseries(
            "Latency p99 by region and method",
            "99th percentile of edge_request_duration_seconds.",
            [
                target(
                    quantile(0.99, "edge_request_duration_seconds", "region, method"),
                    "{{region}} {{method}}",
                )
            ],
            unit=g.SECONDS_FORMAT,
        ),
        timeseries(
            "Calls per second by region and code",
            "Every call a node answered, by status code.",
            [
                target(
                    "sum by (region, code) "
                    f"(rate(edge_request_duration_seconds_count{{{REGION}}}[$__rate_interval]))",
                    "{{region}} {{code}}",
                )
            ],
            unit=g.OPS_FORMAT,
        ),
        timeseries(
            "Error ratio by node",
            "Share of calls answered with a server or network failure code (as the "
            "ErrorRateHigh alert counts them; caller mistakes and ABORTED are not errors).",
            [
                target(
                    "sum by (node) (rate(edge_request_duration_seconds_count{"
                    f'{REGION}, code=~"UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|'
                    'RESOURCE_EXHAUSTED|DATA_LOSS"}[$__rate_interval])) / sum by (node) '
                    f"(rate(edge_request_duration_seconds_count{{{REGION}}}[$__rate_interval]))",
                    "{{node}}",
                )
            ],
            unit=g.PERCENT_UNIT_FORMAT,
        ),
    ]


def replication_panels() -> list[g.Panel]:
    return [
        timeseries(
            "Staleness per PoP",
            "edge_kv_replication_lag_seconds: now minus the origin time up to which the "
            "PoP is known to hold every committed write. About the one-way delay while "
            f"caught up; the line is the {LAG_SLO_S:g} s SLO.",
            [
                target(
                    f'edge_kv_replication_lag_seconds{{role="pop", {REGION}}}',
                    "{{node}}",
                )
            ],
            unit=g.SECONDS_FORMAT,
            thresholds=[
                g.Threshold("green", 0, 0.0),
                g.Threshold("red", 1, LAG_SLO_S),
            ],
            thresholdsStyleMode="line",
        ),
        g.Heatmap(
            title="Propagation: origin commit to PoP apply",
            description="edge_kv_propagation_seconds per bucket: how long writes took "
            "to reach the replicas of the selected regions.",
            dataSource=DATASOURCE,
            targets=[
                target(
                    "sum by (le) (increase(edge_kv_propagation_seconds_bucket"
                    f"{{{REGION}}}[$__rate_interval]))",
                    "{{le}}",
                    heatmap=True,
                )
            ],
            dataFormat="tsbuckets",
            yBucketBound="upper",
            hideZeroBuckets=True,
            yAxis=g.YAxis(format=g.SECONDS_FORMAT, decimals=3),
        ),
        timeseries(
            "Propagation p99 per PoP",
            "99th percentile of edge_kv_propagation_seconds.",
            [target(quantile(0.99, "edge_kv_propagation_seconds", "node"), "{{node}}")],
            unit=g.SECONDS_FORMAT,
        ),
        timeseries(
            "Entries behind the origin per PoP",
            "The origin's head seq as last heard minus the seq applied at the PoP.",
            [
                target(
                    f'edge_kv_origin_head_seq{{role="pop", {REGION}}} '
                    f'- edge_kv_replica_applied_seq{{role="pop", {REGION}}}',
                    "{{node}}",
                )
            ],
            unit=g.SHORT_FORMAT,
        ),
    ]


def object_panels() -> list[g.Panel]:
    return [
        timeseries(
            "Object calls by class and code",
            "Durable Object calls run by their owners (edge_do_calls_total); "
            "RESOURCE_EXHAUSTED means an object's input queue was full.",
            [
                target(
                    "sum by (namespace, code) "
                    f"(rate(edge_do_calls_total{{{REGION}}}[$__rate_interval]))",
                    "{{namespace}} {{code}}",
                )
            ],
            unit=g.OPS_FORMAT,
        ),
        timeseries(
            "Object failovers",
            "Objects the control plane moved to their standby after the owner's lease "
            "lapsed (edge_do_failovers_total), per interval.",
            [
                target(
                    "sum by (node) (increase(edge_do_failovers_total[$__rate_interval]))",
                    "failovers",
                )
            ],
            unit=g.SHORT_FORMAT,
            drawStyle="bars",
            fillOpacity=80,
        ),
        timeseries(
            "Object call latency p99 by class",
            "Time of an object call at its owner, arrival to durable reply.",
            [target(quantile(0.99, "edge_do_call_duration_seconds", "namespace"), "{{namespace}}")],
            unit=g.SECONDS_FORMAT,
        ),
        timeseries(
            "Objects active and calls queued per node",
            "edge_do_objects_active and edge_do_queue_depth (calls waiting at input gates).",
            [
                target(f"edge_do_objects_active{{{REGION}}}", "{{node}} active", "A"),
                target(f"edge_do_queue_depth{{{REGION}}}", "{{node}} queued", "B"),
            ],
            unit=g.SHORT_FORMAT,
        ),
    ]


def network_panels() -> list[g.Panel]:
    return [
        timeseries(
            "Injected delay p50 per region pair",
            "edge_injected_delay_seconds: the emulated one-way delay nodes added per "
            "message (quantiles are only as exact as their bucket).",
            [
                target(
                    quantile(
                        0.5,
                        "edge_injected_delay_seconds",
                        "from_region, to_region",
                        'from_region=~"$region"',
                    ),
                    "{{from_region}} → {{to_region}}",
                )
            ],
            unit=g.SECONDS_FORMAT,
        ),
        timeseries(
            "Injected delay mean per region pair",
            "Exact mean of edge_injected_delay_seconds: half the matrix RTT while no "
            "fault is in force (what the InjectedDelayDrift alert compares).",
            [
                target(
                    "sum by (from_region, to_region) (rate(edge_injected_delay_seconds_sum"
                    '{from_region=~"$region"}[$__rate_interval])) / sum by (from_region, '
                    "to_region) (rate(edge_injected_delay_seconds_count"
                    '{from_region=~"$region"}[$__rate_interval]))',
                    "{{from_region}} → {{to_region}}",
                )
            ],
            unit=g.SECONDS_FORMAT,
        ),
    ]


def node_panels() -> list[g.Panel]:
    return [
        timeseries(
            "Targets up",
            "1 while Prometheus scrapes the node (every node the cluster knows, stopped "
            "ones included: those show 0 and fire NodeDown).",
            [target(f'up{{node!="", {REGION}}}', "{{node}} ({{role}})")],
            unit=g.SHORT_FORMAT,
            valueMin=0,
            valueMax=1,
            lineInterpolation="stepAfter",
        ),
        timeseries(
            "Alerts firing",
            "The alerting rules of deploy/prometheus/rules/alerts.yml that fire now.",
            [
                target(
                    'sum by (alertname) (ALERTS{alertstate="firing"})',
                    "{{alertname}}",
                )
            ],
            unit=g.SHORT_FORMAT,
            drawStyle="bars",
            fillOpacity=80,
        ),
        timeseries(
            "CPU per node",
            "Cores each node's threads ran on (edge_process_cpu_seconds_total, from the "
            "kernel's schedstat).",
            [target("node:edge_process_cpu:rate1m{" + REGION + "}", "{{node}}")],
            unit=g.SHORT_FORMAT,
        ),
        timeseries(
            "Waiting for a CPU per node",
            "Cores' worth of time each node's threads were ready to run but waited for a "
            "CPU (the host's run queue). Latency and staleness measured meanwhile include "
            "it: near the CPU the node used, the host adds about as much as the node "
            "itself (HostCpuContention).",
            [target("node:edge_process_cpu_wait:rate1m{" + REGION + "}", "{{node}}")],
            unit=g.SHORT_FORMAT,
        ),
    ]


def layout(rows: list[tuple[str, list[g.Panel]]]) -> list[g.Panel]:
    """Rows of panels, two across, each row under a title bar (Grafana's 24-wide grid)."""
    placed: list[g.Panel] = []
    y = 0
    for title, panels in rows:
        placed.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        y += 1
        for index, panel in enumerate(panels):
            x = (index % (GRID_WIDTH // PANEL_WIDTH)) * PANEL_WIDTH
            if index and x == 0:
                y += PANEL_HEIGHT
            panel.gridPos = g.GridPos(h=PANEL_HEIGHT, w=PANEL_WIDTH, x=x, y=y)
            placed.append(panel)
        y += PANEL_HEIGHT
    return placed


def dashboard() -> g.Dashboard:
    """The whole dashboard: latency, replication, objects, network, nodes."""
    return g.Dashboard(
        title="edgepop",
        uid=DASHBOARD_UID,
        description="An edgepop cluster: latency, KV staleness and propagation, Durable "
        "Objects, emulated network. Generated by deploy/grafana/dashboard.py.",
        tags=["edgepop"],
        timezone="browser",
        refresh="5s",
        time=g.Time("now-15m", "now"),
        # timeseries and the bucket heatmap need Grafana 8+; say so, so Grafana does not
        # run the migrations of a schema-12 (Grafana 4) dashboard over them.
        schemaVersion=36,
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=g.Templating(
            [
                g.Template(
                    name="datasource",
                    label="Prometheus",
                    query="prometheus",
                    type="datasource",
                ),
                g.Template(
                    name="region",
                    label="Region",
                    query='label_values(up{node!=""}, region)',
                    dataSource=DATASOURCE,
                    includeAll=True,
                    multi=True,
                    allValue=".*",
                    default="All",
                    refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
                ),
            ]
        ),
        panels=layout(
            [
                ("Latency", latency_panels()),
                ("Replication", replication_panels()),
                ("Durable Objects", object_panels()),
                ("Network emulation", network_panels()),
                ("Nodes", node_panels()),
            ]
        ),
    ).auto_panel_ids()


def render() -> str:
    """The dashboard JSON exactly as committed (sorted keys, two-space indent)."""
    data = dashboard().to_json_data()
    return json.dumps(data, cls=_Encoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class _Encoder(json.JSONEncoder):
    """grafanalib's objects serialise themselves through `to_json_data`."""

    def default(self, o: Any) -> Any:
        to_json_data = getattr(o, "to_json_data", None)
        if to_json_data is not None:
            return to_json_data()
        return super().default(o)


def panel_queries(data: dict[str, Any]) -> Iterator[tuple[int, str, str, str]]:
    """(panel id, panel title, refId, expr) of every query, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])

    for panel in walk(data.get("panels") or []):
        for query in panel.get("targets") or []:
            if query.get("expr"):
                yield panel["id"], panel.get("title", ""), query["refId"], query["expr"]


def promql(expr: str) -> str:
    """A panel query as plain PromQL: Grafana's range macros become a fixed range.

    Template variables inside label matchers (`region=~"$region"`) stay: they are
    strings to PromQL, and `$region` is a valid regular expression.
    """
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    leftover = re.search(r"\$\{?__\w+", expr)
    if leftover:
        raise ValueError(f"unknown Grafana macro {leftover.group(0)!r} in {expr!r}")
    return expr


def queries_as_rules(data: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus rule file with one recording rule per panel query."""
    rules = [
        {
            "record": f"dashboard:panel_{panel_id}_{ref_id}",
            "expr": promql(expr),
            "labels": {"panel": title},
        }
        for panel_id, title, ref_id, expr in panel_queries(data)
    ]
    return {"groups": [{"name": "grafana-dashboard-queries", "rules": rules}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--check", action="store_true", help=f"exit 1 if {DASHBOARD_FILE.name} drifted"
    )
    action.add_argument(
        "--rules",
        type=Path,
        metavar="FILE",
        help=f"write every panel query of {DASHBOARD_FILE.name} as a recording rule",
    )
    args = parser.parse_args(argv)
    if args.check:
        if not DASHBOARD_FILE.is_file() or DASHBOARD_FILE.read_text() != render():
            print(
                f"{DASHBOARD_FILE} is not what {Path(__file__).name} generates; "
                f"run `python deploy/grafana/dashboard.py` and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.rules is not None:
        # The committed file, not a fresh render: it is what users import.
        rules = queries_as_rules(json.loads(DASHBOARD_FILE.read_text()))
        args.rules.write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True))
        print(f"{len(rules['groups'][0]['rules'])} panel queries -> {args.rules}")
        return 0
    DASHBOARD_FILE.write_text(render())
    print(f"wrote {DASHBOARD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
