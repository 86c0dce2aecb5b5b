"""edgectl observe without processes: targets, the rendered config, and the rule files.

The discovery merge and the file it writes decide what Prometheus scrapes; the rendered
config decides what it loads. The rule files are held to the metric contract (every
name declared in edgepop/metrics.py, or the one proposed metric named here) and to
their unit tests (every alert has one). promtool itself runs in
`make check-observability` and tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgectl import observe
from edgectl.observe import ScrapeTarget
from tests.unit.metricnames import declared_series_names, edge_names

RULES_DIR = observe.DEPLOY_DIR / "rules"
RULE_TESTS_DIR = observe.DEPLOY_DIR / "tests"
# Not exported yet: the drift rule needs the matrix as a metric (see alerts.yml).
PROPOSED_METRICS = {"edge_net_matrix_delay_seconds"}


def rules_of(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


# -- targets ---------------------------------------------------------------------------


def test_registry_address_wins_and_recorded_nodes_stay_when_not_registered() -> None:
    recorded = [
        ScrapeTarget("tokyo-1", "tokyo", "pop", "127.0.0.1:1001"),
        ScrapeTarget("control-plane", "us-east-1", "control_plane", "127.0.0.1:1000"),
        # Stopped: the registry may have forgotten nothing, but it stays a target.
        ScrapeTarget("london-1", "london", "pop", "127.0.0.1:1002"),
        # Planned but never started: nothing to scrape.
        ScrapeTarget("sydney-1", "sydney", "pop", ""),
    ]
    registered = [
        ScrapeTarget("tokyo-1", "tokyo", "pop", "10.0.0.5:1001"),
        ScrapeTarget("tokyo-2", "tokyo", "pop", "127.0.0.1:1003"),
        ScrapeTarget("origin", "us-east-1", "origin", "127.0.0.1:1004"),
    ]
    merged = observe.merge_targets(recorded, registered)
    assert [(t.node, t.address) for t in merged] == [
        ("control-plane", "127.0.0.1:1000"),
        ("origin", "127.0.0.1:1004"),
        ("london-1", "127.0.0.1:1002"),
        ("tokyo-1", "10.0.0.5:1001"),
        ("tokyo-2", "127.0.0.1:1003"),
    ]


def test_a_node_gone_from_both_sources_leaves_the_targets() -> None:
    before = observe.merge_targets([ScrapeTarget("a-1", "a", "pop", "h:1")], [])
    after = observe.merge_targets([], [])
    assert [t.node for t in before] == ["a-1"] and after == []


def test_file_sd_has_one_group_per_node_with_node_region_role() -> None:
    groups = observe.file_sd_groups([ScrapeTarget("tokyo-1", "tokyo", "pop", "127.0.0.1:9")])
    assert groups == [
        {
            "targets": ["127.0.0.1:9"],
            "labels": {"node": "tokyo-1", "region": "tokyo", "role": "pop"},
        }
    ]


def test_targets_file_is_rewritten_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "targets" / "edgepop.json"
    one = [ScrapeTarget("tokyo-1", "tokyo", "pop", "127.0.0.1:9")]
    assert observe.write_targets(path, one)
    written_at = path.stat().st_mtime_ns
    assert not observe.write_targets(path, one)
    assert path.stat().st_mtime_ns == written_at
    two = [*one, ScrapeTarget("london-1", "london", "pop", "127.0.0.1:8")]
    assert observe.write_targets(path, two)
    assert [group["labels"]["node"] for group in json.loads(path.read_text())] == [
        "tokyo-1",
        "london-1",
    ]
    # Written through a rename: no temporary file is left beside it for Prometheus.
    assert sorted(p.name for p in path.parent.iterdir()) == ["edgepop.json"]


# -- configuration ---------------------------------------------------------------------


def test_rendered_config_points_at_the_repository_rules_and_the_data_dir_targets(
    tmp_path: Path,
) -> None:
    text = observe.render_config(
        observe.TEMPLATE_FILE,
        tmp_path / "targets",
        scrape_interval_s=1.0,
        evaluation_interval_s=0.5,
    )
    config = yaml.safe_load(text)
    assert config["global"] == {
        "scrape_interval": "1s",
        "evaluation_interval": "500ms",
        "scrape_timeout": "1s",
    }
    assert config["rule_files"] == [str(RULES_DIR / "*.yml")]
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "targets" / "*.json")]


@pytest.mark.parametrize(
    ("seconds", "text"), [(2.0, "2s"), (0.5, "500ms"), (1.25, "1250ms"), (60, "60s")]
)
def test_durations_are_whole_units(seconds: float, text: str) -> None:
    assert observe.duration(seconds) == text


def test_a_zero_interval_is_refused() -> None:
    with pytest.raises(observe.ObserveError):
        observe.duration(0.0)


# -- rule files ------------------------------------------------------------------------


def test_rules_read_only_declared_metrics_or_the_proposed_one() -> None:
    declared = declared_series_names() | PROPOSED_METRICS
    for path in sorted(RULES_DIR.glob("*.yml")):
        for rule in rules_of(path):
            name = rule.get("record") or rule.get("alert")
            unknown = edge_names(rule["expr"]) - declared
            assert not unknown, f"{path.name}: {name} reads undeclared {sorted(unknown)}"


def test_every_alert_has_a_promtool_unit_test_that_sees_it_fire() -> None:
    alerts = {rule["alert"] for rule in rules_of(RULES_DIR / "alerts.yml")}
    firing: set[str] = set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        suite = yaml.safe_load(path.read_text())
        for test in suite["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    firing.add(case["alertname"])
    assert alerts <= firing, f"alerts never shown firing in a test: {sorted(alerts - firing)}"


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for rule in rules_of(RULES_DIR / "alerts.yml"):
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
