"""observe_repeated / observe_ages against prometheus_client's own observe(); NodeChildren
against labels()."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from edgepop.metrics import (
    LATENCY_BUCKETS_S,
    PROPAGATION_BUCKETS_S,
    ROLE_METRICS,
    NodeChildren,
    NodeMetrics,
    observe_ages,
    observe_repeated,
)


def _histogram() -> Histogram:
    return Histogram(
        "h_seconds", "test", buckets=PROPAGATION_BUCKETS_S, registry=CollectorRegistry()
    )


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


AMOUNTS = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
# Bucket edges themselves: `le` is inclusive, the edge must land in its own bucket.
EDGES = st.sampled_from(PROPAGATION_BUCKETS_S)


@given(st.lists(st.tuples(st.one_of(AMOUNTS, EDGES), st.integers(0, 50)), max_size=20))
def test_observe_repeated_matches_observe(observations: list[tuple[float, int]]) -> None:
    one_by_one, repeated = _histogram(), _histogram()
    for amount, count in observations:
        for _ in range(count):
            one_by_one.observe(amount)
        observe_repeated(repeated, amount, count)
    expected, got = _samples(one_by_one), _samples(repeated)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(got[name] - value) <= 1e-9 * max(1.0, abs(value)), name


@given(st.floats(0.0, 1e6), st.lists(st.sampled_from([0.0, 5.0, 10.0, 10.5, 2e6]), max_size=30))
def test_observe_ages_matches_observe(now: float, times: list[float]) -> None:
    one_by_one, grouped = _histogram(), _histogram()
    for at in times:
        one_by_one.observe(max(0.0, now - at))
    observe_ages(grouped, now, times)
    expected, got = _samples(one_by_one), _samples(grouped)
    for name, value in expected.items():
        assert abs(got[name] - value) <= 1e-6 * max(1.0, abs(value)), name


@given(st.lists(st.one_of(AMOUNTS, st.sampled_from(LATENCY_BUCKETS_S)), min_size=1, max_size=30))
def test_a_request_child_observes_as_prometheus_does(durations: list[float]) -> None:
    """The request children add to their bucket and sum directly (one bisect for them and
    the totals): the same samples as prometheus_client's own observe()."""
    metrics = NodeMetrics("tokyo-1", "tokyo")
    plain = Histogram("h_seconds", "test", buckets=LATENCY_BUCKETS_S, registry=CollectorRegistry())
    for seconds in durations:
        metrics.request("Pop", "KvGet", "OK").observe(seconds)
        plain.observe(seconds)
    got = {
        (sample.name.replace("edge_request_duration_seconds", "h_seconds"), sample.labels["le"])
        if sample.name.endswith("_bucket")
        else (sample.name.replace("edge_request_duration_seconds", "h_seconds"), ""): sample.value
        for family in metrics.registry.collect()
        if family.name == "edge_request_duration_seconds"
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    expected = _samples(plain)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(got[name] - value) <= 1e-9 * max(1.0, abs(value)), name
    assert metrics.request_totals.count == len(durations)


def test_request_totals_match_the_labelled_histogram_but_leave_the_monitors_out() -> None:
    metrics = NodeMetrics("tokyo-1", "tokyo")
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 0.07, 0.5, 12.0):
        metrics.request("Pop", "KvGet", "OK").observe(seconds)
    metrics.request("Pop", "Status", "OK").observe(0.001)  # a monitor's poll
    metrics.request("http", "counter", "200").observe(0.004)
    bounds, counts = metrics.request_totals.cumulative()
    assert bounds[-1] == float("inf") and counts[-1] == metrics.request_totals.count == 8
    by_bound = {}
    for family in metrics.registry.collect():
        if family.name != "edge_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["method"] != "Status":
                bound = float(sample.labels["le"])
                by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
    assert tuple(by_bound[bound] for bound in bounds) == counts
    stats = metrics.request_totals.to_proto()
    assert stats.count == 8 and list(stats.bucket_counts) == list(counts)


def _families(metrics: NodeMetrics) -> set[str]:
    return {family.name for family in metrics.registry.collect()}


def test_each_role_exports_its_own_families_and_the_common_ones() -> None:
    common = _families(NodeMetrics("n", "r"))
    assert {
        "edge_request_duration_seconds",
        "edge_node_up",
        "edge_injected_delay_seconds",
    } <= common
    pop, origin, control = (
        _families(ROLE_METRICS[role]("n", "r")) for role in ("pop", "origin", "control_plane")
    )
    assert common <= pop and common <= origin and common <= control
    assert {"edge_do_calls", "edge_kv_propagation_seconds", "edge_worker_requests"} <= pop
    assert {"edge_kv_commits", "edge_origin_http_requests"} <= origin
    assert {"edge_cp_nodes", "edge_do_failovers", "edge_net_matrix_delay_seconds"} <= control
    # Nothing a role cannot move: no object calls at the origin, no commits at a PoP.
    assert "edge_do_calls" not in origin | control and "edge_kv_commits" not in pop | control
    assert "edge_cp_nodes" not in pop | origin
    # The log positions are the origin's and every replica's.
    assert "edge_kv_replica_applied_seq" in pop & origin


def test_node_children_are_the_labelled_series_of_this_node() -> None:
    registry = CollectorRegistry()
    counter = Counter(
        "calls_total", "test", ("node", "region", "worker", "code"), registry=registry
    )
    children = NodeChildren(counter, "tokyo-1", "tokyo")
    children("shop", "200").inc()
    children("shop", "200").inc()
    children("api", "500").inc(3)
    assert children("shop", "200") is counter.labels("tokyo-1", "tokyo", "shop", "200")
    value = registry.get_sample_value
    assert (
        value(
            "calls_total", {"node": "tokyo-1", "region": "tokyo", "worker": "shop", "code": "200"}
        )
        == 2
    )
    assert (
        value("calls_total", {"node": "tokyo-1", "region": "tokyo", "worker": "api", "code": "500"})
        == 3
    )
