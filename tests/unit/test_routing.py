"""Nearest-PoP routing over the default topology, with explicit sets of healthy PoPs."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.registry import NodeEntry
from control_plane.routing import nearest_pops, pick
from edgepop.topology import default_topology

TOPOLOGY = default_topology()
POP_REGIONS = ["new-york", "london", "tokyo", "sydney", "mumbai", "sao-paulo"]


def _pop(name: str) -> NodeEntry:
    return NodeEntry(name, name.rsplit("-", 1)[0], "pop", f"{name}:50051")


ALL_POPS = [_pop(f"{region}-{index}") for region in POP_REGIONS for index in (1, 2)]


def _names(pops: list[NodeEntry]) -> list[str]:
    return [pop.name for pop in pops]


@pytest.mark.parametrize("region", POP_REGIONS)
def test_client_is_routed_to_its_own_region_pops(region: str) -> None:
    nearest, rtt = nearest_pops(TOPOLOGY, ALL_POPS, region)
    assert _names(nearest) == [f"{region}-1", f"{region}-2"]
    assert rtt == TOPOLOGY.region(region).edge_rtt_ms


def test_both_nodes_of_a_site_tie_and_are_sorted_by_name() -> None:
    pops = [_pop("tokyo-2"), _pop("london-1"), _pop("tokyo-1")]
    nearest, rtt = nearest_pops(TOPOLOGY, pops, "tokyo")
    assert _names(nearest) == ["tokyo-1", "tokyo-2"]
    assert rtt == 8.0


def test_client_in_the_origin_region_goes_to_the_lowest_rtt_pop_region() -> None:
    nearest, rtt = nearest_pops(TOPOLOGY, ALL_POPS, "us-east-1")
    assert _names(nearest) == ["new-york-1", "new-york-2"]
    assert rtt == 5.0


def test_region_without_a_healthy_pop_falls_back_to_the_nearest_other_region() -> None:
    healthy = [pop for pop in ALL_POPS if pop.region != "tokyo"]
    nearest, rtt = nearest_pops(TOPOLOGY, healthy, "tokyo")
    expected_rtt = min(
        TOPOLOGY.rtt_ms("tokyo", region, caller_is_node=False)
        for region in POP_REGIONS
        if region != "tokyo"
    )
    assert rtt == expected_rtt
    assert {pop.region for pop in nearest} == {
        region
        for region in POP_REGIONS
        if region != "tokyo" and TOPOLOGY.rtt_ms("tokyo", region, caller_is_node=False) == rtt
    }
    # Tokyo-Mumbai (~101 ms) is nearer than Tokyo-Sydney (~117 ms) by the great circle.
    assert _names(nearest) == ["mumbai-1", "mumbai-2"]
    assert 95 < rtt < 110


def test_one_healthy_node_of_a_site_takes_all_of_its_region() -> None:
    healthy = [pop for pop in ALL_POPS if pop.name != "tokyo-1"]
    nearest, _ = nearest_pops(TOPOLOGY, healthy, "tokyo")
    assert _names(nearest) == ["tokyo-2"]


def test_london_falls_back_to_new_york_when_london_is_down() -> None:
    healthy = [pop for pop in ALL_POPS if pop.region != "london"]
    nearest, rtt = nearest_pops(TOPOLOGY, healthy, "london")
    # London-New York by the great-circle rule (~84 ms) beats Mumbai and Sao Paulo.
    assert _names(nearest) == ["new-york-1", "new-york-2"]
    assert rtt == pytest.approx(TOPOLOGY.rtt_ms("london", "new-york", caller_is_node=False))


def test_no_healthy_pop_gives_no_route() -> None:
    assert nearest_pops(TOPOLOGY, [], "tokyo") == ([], 0.0)


@given(
    client=st.sampled_from([*POP_REGIONS, "us-east-1"]),
    healthy=st.sets(st.sampled_from(ALL_POPS), min_size=1),
)
def test_every_chosen_pop_has_the_lowest_rtt_among_healthy_ones(
    client: str, healthy: set[NodeEntry]
) -> None:
    nearest, rtt = nearest_pops(TOPOLOGY, sorted(healthy, key=lambda p: p.name), client)
    rtts = {pop.name: TOPOLOGY.rtt_ms(client, pop.region, caller_is_node=False) for pop in healthy}
    assert rtt == min(rtts.values())
    assert nearest
    assert _names(nearest) == sorted(_names(nearest))
    assert {pop.name for pop in nearest} == {
        name for name, value in rtts.items() if value <= rtt + 0.5
    }


# -- pick ------------------------------------------------------------------------------------


def test_pick_is_stable_for_one_client_id() -> None:
    nearest = [_pop("tokyo-1"), _pop("tokyo-2")]
    chosen = {pick(nearest, "client-42", counter).name for counter in range(20)}
    assert len(chosen) == 1


def test_pick_spreads_many_client_ids_over_the_site() -> None:
    nearest = [_pop("tokyo-1"), _pop("tokyo-2")]
    counts = Counter(pick(nearest, f"client-{i}", 0).name for i in range(200))
    assert set(counts) == {"tokyo-1", "tokyo-2"}
    assert min(counts.values()) > 50


def test_pick_without_client_id_round_robins() -> None:
    nearest = [_pop("tokyo-1"), _pop("tokyo-2"), _pop("tokyo-3")]
    assert [pick(nearest, "", counter).name for counter in range(6)] == [
        "tokyo-1",
        "tokyo-2",
        "tokyo-3",
        "tokyo-1",
        "tokyo-2",
        "tokyo-3",
    ]


def test_pick_of_a_single_pop_is_that_pop() -> None:
    only = [_pop("sydney-1")]
    assert pick(only, "anyone", 7) == only[0]
    assert pick(only, "", 7) == only[0]
