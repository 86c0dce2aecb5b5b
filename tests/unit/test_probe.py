"""`edgectl probe`'s statistics and verdicts: medians, deviation, tolerance, the headline."""

from __future__ import annotations

import math

import pytest

from edge.v1 import control_plane_pb2 as cp_pb2
from edgectl import probe
from edgectl.probe import Measurement, RegionResult
from edgepop.topology import default_topology, topology_to_pb


def result(region: str, edge: list[float], origin: list[float], city: str = "") -> RegionResult:
    topology = topology_to_pb(default_topology())
    return RegionResult(
        region=region,
        city=city,
        pop=f"{region}-1",
        pop_region=region,
        origin="origin",
        origin_region="us-east-1",
        edge=Measurement(tuple(edge), probe.topology_rtt_ms(topology, region, region)),
        to_origin=Measurement(tuple(origin), probe.topology_rtt_ms(topology, region, "us-east-1")),
    )


def test_median_of_odd_and_even_samples() -> None:
    assert probe.median([3.0, 1.0, 2.0]) == 2.0
    assert probe.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(probe.median([]))


def test_median_ignores_a_late_outlier_that_the_mean_would_not() -> None:
    samples = [8.0] * 29 + [300.0]
    assert probe.median(samples) == 8.0


def test_percentile_interpolates_between_order_statistics() -> None:
    samples = [float(value) for value in range(1, 11)]
    assert probe.percentile(samples, 0.0) == 1.0
    assert probe.percentile(samples, 1.0) == 10.0
    assert probe.percentile(samples, 0.9) == pytest.approx(9.1)


@pytest.mark.parametrize(
    ("target_ms", "tolerance_ms"),
    [(2.0, 1.0), (8.0, 1.0), (20.0, 1.0), (80.0, 4.0), (170.0, 8.5), (210.0, 10.5)],
)
def test_tolerance_is_five_percent_but_never_below_one_ms(
    target_ms: float, tolerance_ms: float
) -> None:
    assert probe.tolerance_ms(target_ms) == pytest.approx(tolerance_ms)


def test_within_tolerance_includes_the_boundary_on_both_sides() -> None:
    assert probe.within_tolerance(9.0, 8.0)
    assert probe.within_tolerance(7.0, 8.0)
    assert not probe.within_tolerance(9.01, 8.0)
    assert probe.within_tolerance(178.5, 170.0)
    assert probe.within_tolerance(161.5, 170.0)
    assert not probe.within_tolerance(178.6, 170.0)


def test_deviation_in_ms_and_percent() -> None:
    assert probe.deviation_ms(172.0, 170.0) == pytest.approx(2.0)
    assert probe.deviation_pct(172.0, 170.0) == pytest.approx(100 * 2 / 170)
    assert probe.deviation_pct(7.6, 8.0) == pytest.approx(-5.0)
    # A zero target has no percentage (the ms figure still says how far off it is).
    assert probe.deviation_pct(0.4, 0.0) is None


def test_measurement_judges_its_median() -> None:
    measurement = Measurement((8.2, 8.4, 30.0, 8.3, 8.1), target_ms=8.0)
    assert measurement.median_ms == pytest.approx(8.3)
    assert measurement.deviation_ms == pytest.approx(0.3)
    assert measurement.within_tolerance
    data = measurement.to_json("edge")
    assert data["edge_ms"] == 8.3
    assert data["edge_target_ms"] == 8.0
    assert data["edge_within_tolerance"] is True
    assert data["edge_tolerance_ms"] == 1.0
    assert data["edge_min_ms"] == 8.1


def test_tokyo_row_of_the_seed_saves_810_ms_over_five_calls() -> None:
    tokyo = result("tokyo", [8.0] * 5, [170.0] * 5, city="Tokyo")
    assert tokyo.edge.target_ms == 8.0
    assert tokyo.to_origin.target_ms == 170.0
    assert tokyo.saving_ms == pytest.approx(162.0)
    assert tokyo.sequential_saving_ms == pytest.approx(810.0)
    assert tokyo.sequential_saving_target_ms == pytest.approx(810.0)
    data = tokyo.to_json()
    assert data["sequential_saving_ms"] == 810.0
    assert data["within_tolerance"] is True
    assert data["calls"] == 5


def test_a_row_fails_when_either_median_is_off() -> None:
    slow_edge = result("london", [7.0, 7.0, 7.0], [80.0, 80.0, 80.0])
    assert not slow_edge.edge.within_tolerance
    assert slow_edge.to_origin.within_tolerance
    assert not slow_edge.within_tolerance


@pytest.mark.parametrize(
    ("region", "origin_ms", "edge_ms"),
    [
        ("new-york", 5.0, 2.0),
        ("london", 80.0, 5.0),
        ("tokyo", 170.0, 8.0),
        ("sydney", 210.0, 10.0),
        ("mumbai", 190.0, 7.0),
        ("sao-paulo", 140.0, 6.0),
    ],
)
def test_targets_come_from_the_topology_as_the_seed_table(
    region: str, origin_ms: float, edge_ms: float
) -> None:
    topology = topology_to_pb(default_topology())
    assert probe.topology_rtt_ms(topology, region, region) == edge_ms
    assert probe.topology_rtt_ms(topology, region, "us-east-1") == origin_ms


def test_target_of_a_pop_in_another_region_is_that_pair_s_rtt() -> None:
    topology = topology_to_pb(default_topology())
    # Both tokyo nodes down: a tokyo user is routed elsewhere and the target says so.
    rtt = probe.topology_rtt_ms(topology, "tokyo", "sydney")
    assert rtt == next(
        link.rtt_ms
        for link in topology.rtt
        if (link.from_region, link.to_region) == ("tokyo", "sydney")
    )
    with pytest.raises(KeyError):
        probe.topology_rtt_ms(topology, "tokyo", "mars")


def test_headline_speaks_of_tokyo_like_the_seed() -> None:
    rows = [
        result("london", [5.0], [80.0], city="London"),
        result("tokyo", [8.0], [170.0], city="Tokyo"),
    ]
    line = probe.headline(rows)
    assert line.startswith("For a page that makes 5 sequential API calls, a user in Tokyo")
    assert "saves 810 ms" in line
    assert "us-east-1" in line


def test_headline_without_tokyo_takes_the_largest_saving() -> None:
    rows = [
        result("london", [5.0], [80.0], city="London"),
        result("sydney", [10.0], [210.0], city="Sydney"),
    ]
    assert "a user in Sydney saves 1000 ms" in probe.headline(rows)
    assert probe.headline([]) == ""


def test_topology_message_regions_carry_the_edge_targets() -> None:
    topology = topology_to_pb(default_topology())
    edge = {region.name: region.edge_rtt_ms for region in topology.regions}
    assert isinstance(topology, cp_pb2.Topology)
    assert edge["tokyo"] == 8.0
    assert edge["new-york"] == 2.0


def test_plain_rtt_differences_each_pair_so_a_busy_moment_cancels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """8 ms of emulated delay; from the third pair's first call to the fifth's first the
    machine is busy and every call costs 5 ms more. Separate medians would read
    14 - 1 = 13 ms (three of five delayed calls were slowed, two undelayed); pair by
    pair, 8."""
    clock = [0.0]
    own_ms = iter([1, 1, 1, 1, 6, 6, 6, 6, 6, 1])  # undelayed cost per call, in order

    def call(metadata: list[tuple[str, str]]) -> None:
        cost_ms = next(own_ms) + (8 if metadata else 0)
        clock[0] += cost_ms / 1e3

    monkeypatch.setattr(probe.time, "perf_counter", lambda: clock[0])
    emulated_ms, own_cost_ms = probe.plain_grpc_rtt_ms(call, "tokyo", pairs=5)
    assert emulated_ms == pytest.approx(8.0)
    assert own_cost_ms == pytest.approx(1.0)
