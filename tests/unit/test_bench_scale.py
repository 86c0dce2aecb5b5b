"""The scale benchmark's pure parts: its topology, CPU shares and the machine's idle share."""

from __future__ import annotations

import math

import pytest

from bench.scale import by_role, cpu_shares, idle_share, scale_topology
from edgepop.topology import parse_topology


def test_scale_topology_spreads_32_pops_over_the_six_default_regions_with_delay_on() -> None:
    raw = scale_topology(32)
    topology = parse_topology(raw)
    specs = topology.node_specs()
    pops = [spec for spec in specs if spec.role == "pop"]
    assert len(pops) == 32 and len(specs) == 34
    per_region = {region.name: region.pop_nodes for region in topology.pop_regions()}
    assert sorted(per_region.values()) == [5, 5, 5, 5, 6, 6]
    assert topology.emulate_delay
    # The seed's table still holds: sydney is 210 ms from the origin.
    assert topology.rtt_ms("sydney", "us-east-1", caller_is_node=True) == 210.0


def test_cpu_shares_are_cpu_seconds_over_wall_seconds_and_never_negative() -> None:
    shares = cpu_shares({"a": 1.0, "b": 5.0}, {"a": 1.05, "b": 4.0}, 10.0)
    assert shares["a"] == pytest.approx(0.005)
    assert shares["b"] == 0.0  # a restarted process: its counter went back
    with pytest.raises(ValueError):
        cpu_shares({}, {}, 0.0)


def test_idle_share_is_idle_time_over_all_time_between_two_reads() -> None:
    assert idle_share((100.0, 200.0), (115.0, 220.0)) == pytest.approx(0.75)
    assert math.isnan(idle_share((1.0, 2.0), (1.0, 2.0)))


def test_by_role_sums_and_averages_each_role() -> None:
    summary = by_role(
        {"cp": 0.01, "origin": 0.05, "a-1": 0.002, "a-2": 0.004},
        {"cp": "control_plane", "origin": "origin", "a-1": "pop", "a-2": "pop"},
    )
    assert summary["pop"] == {"nodes": 2, "total": 0.006, "mean": 0.003, "max": 0.004}
    assert summary["origin"]["total"] == 0.05
