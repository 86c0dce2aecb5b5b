"""Placement rules for Durable Objects (pure): first placement, standby choice, failover.

Every function takes the healthy PoPs and the topology; no sockets, no clocks.
"""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane import placement as rules
from control_plane.placement import Placement
from control_plane.registry import NodeEntry
from edgepop import objectid
from edgepop.topology import default_topology

TOPOLOGY = default_topology()
POP_REGIONS = ["new-york", "london", "tokyo", "sydney", "mumbai", "sao-paulo"]


def _pop(name: str) -> NodeEntry:
    return NodeEntry(name, name.rsplit("-", 1)[0], "pop", f"{name}:50051")


ALL_POPS = [_pop(f"{region}-{index}") for region in POP_REGIONS for index in (1, 2)]


def _id(name: str) -> str:
    return objectid.id_from_name("Counter", name).hex()


def _without(*names: str) -> list[NodeEntry]:
    return [pop for pop in ALL_POPS if pop.name not in names]


# -- first placement ---------------------------------------------------------------------


@pytest.mark.parametrize("region", POP_REGIONS)
def test_first_placement_is_in_the_callers_region_with_the_other_site_node_as_standby(
    region: str,
) -> None:
    placed = rules.place(TOPOLOGY, ALL_POPS, "Counter", _id(region), region)
    assert placed is not None
    assert placed.owner in {f"{region}-1", f"{region}-2"}
    assert placed.standby == ({f"{region}-1", f"{region}-2"} - {placed.owner}).pop()
    assert placed.epoch == 1
    assert (placed.namespace, placed.object_id) == ("Counter", _id(region))


def test_owner_within_a_site_is_chosen_by_the_ids_hash_and_spreads_over_both_nodes() -> None:
    owners: Counter[str] = Counter()
    for index in range(200):
        object_id = _id(f"spread-{index}")
        placed = rules.place(TOPOLOGY, ALL_POPS, "Counter", object_id, "tokyo")
        assert placed is not None
        expected = ["tokyo-1", "tokyo-2"][zlib.crc32(object_id.encode()) % 2]
        assert placed.owner == expected
        # Deterministic: the same inputs give the same placement.
        assert rules.place(TOPOLOGY, ALL_POPS, "Counter", object_id, "tokyo") == placed
        owners[placed.owner] += 1
    assert min(owners.values()) > 60


def test_a_caller_in_a_region_without_pops_gets_the_nearest_pop_region() -> None:
    placed = rules.place(TOPOLOGY, ALL_POPS, "Counter", _id("origin-side"), "us-east-1")
    assert placed is not None
    assert placed.owner.startswith("new-york-")  # 5 ms from us-east-1


def test_a_location_hint_region_is_placed_like_a_caller_there() -> None:
    """The service passes `location_hint or region`; a hint to sydney lands in sydney."""
    placed = rules.place(TOPOLOGY, ALL_POPS, "Counter", _id("hinted"), "sydney")
    assert placed is not None and placed.owner.startswith("sydney-")


def test_region_whose_pops_are_all_down_places_in_the_nearest_other_region() -> None:
    placed = rules.place(TOPOLOGY, _without("tokyo-1", "tokyo-2"), "Counter", _id("t"), "tokyo")
    assert placed is not None
    assert placed.owner.startswith("mumbai-")  # tokyo's nearest other region (101 ms)


def test_single_node_site_takes_its_standby_from_the_nearest_other_region() -> None:
    placed = rules.place(TOPOLOGY, _without("sydney-2"), "Counter", _id("s"), "sydney")
    assert placed is not None
    assert placed.owner == "sydney-1"
    assert placed.standby.startswith("tokyo-")  # sydney's nearest other region (117 ms)


def test_no_healthy_pop_means_no_placement_and_a_lone_pop_has_no_standby() -> None:
    assert rules.place(TOPOLOGY, [], "Counter", _id("x"), "tokyo") is None
    alone = rules.place(TOPOLOGY, [_pop("london-1")], "Counter", _id("x"), "tokyo")
    assert alone == Placement("Counter", _id("x"), "london-1", "", 1)


# -- repair: the owner's lease lapsed (plus margin) ----------------------------------------


def _placed(owner: str, standby: str, epoch: int = 3) -> Placement:
    return Placement("Counter", _id("repair"), owner, standby, epoch)


def test_objects_never_move_while_owner_and_standby_are_healthy() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    assert rules.repair(TOPOLOGY, current, ALL_POPS, frozenset()) == current
    assert rules.repair(TOPOLOGY, current, ALL_POPS, frozenset({"london-1"})) == current


def test_gone_owner_is_replaced_by_its_standby_with_epoch_plus_one_and_a_new_standby() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    repaired = rules.repair(TOPOLOGY, current, _without("tokyo-1"), frozenset({"tokyo-1"}))
    assert repaired.owner == "tokyo-2"
    assert repaired.epoch == current.epoch + 1
    # tokyo has no other healthy node: the nearest region's node stands by.
    assert repaired.standby.startswith("mumbai-")


def test_promoted_standby_in_a_two_node_site_takes_the_other_site_node_as_standby() -> None:
    current = _placed("sydney-1", "tokyo-1")
    repaired = rules.repair(TOPOLOGY, current, _without("sydney-1"), frozenset({"sydney-1"}))
    assert (repaired.owner, repaired.standby, repaired.epoch) == ("tokyo-1", "tokyo-2", 4)


def test_gone_owner_with_a_gone_standby_stays_put_rather_than_lose_acknowledged_writes() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    gone = frozenset({"tokyo-1", "tokyo-2"})
    assert rules.repair(TOPOLOGY, current, _without(*gone), gone) == current


def test_gone_owner_whose_standby_is_unhealthy_but_not_yet_gone_is_not_moved() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    healthy = _without("tokyo-1", "tokyo-2")  # tokyo-2 missed heartbeats, not gone yet
    assert rules.repair(TOPOLOGY, current, healthy, frozenset({"tokyo-1"})) == current


def test_gone_standby_is_replaced_and_the_owner_keeps_its_epoch() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    repaired = rules.repair(TOPOLOGY, current, _without("tokyo-2"), frozenset({"tokyo-2"}))
    assert repaired.owner == "tokyo-1"
    assert repaired.epoch == current.epoch
    assert repaired.standby.startswith("mumbai-")


def test_placement_without_a_standby_gets_one_when_another_pop_is_healthy() -> None:
    current = _placed("london-1", "")
    repaired = rules.repair(TOPOLOGY, current, ALL_POPS, frozenset())
    assert (repaired.owner, repaired.standby, repaired.epoch) == ("london-1", "london-2", 3)


# -- recover: both copies were away ------------------------------------------------------


def test_recover_keeps_the_owner_when_it_returns_first() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    assert rules.recover(TOPOLOGY, current, _without("tokyo-2")) == current


def test_recover_promotes_the_standby_when_it_returns_first() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    recovered = rules.recover(TOPOLOGY, current, _without("tokyo-1"))
    assert recovered.owner == "tokyo-2"
    assert recovered.epoch == current.epoch + 1
    assert recovered.standby not in ("", "tokyo-1", "tokyo-2")


def test_recover_waits_while_neither_copy_is_back() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    assert rules.recover(TOPOLOGY, current, _without("tokyo-1", "tokyo-2")) == current
    lone = _placed("tokyo-1", "")
    assert rules.recover(TOPOLOGY, lone, _without("tokyo-1")) == lone


# -- properties ----------------------------------------------------------------------------

POP_NAMES = [pop.name for pop in ALL_POPS]


@given(
    owner=st.sampled_from(POP_NAMES),
    standby=st.sampled_from(["", *POP_NAMES]),
    gone=st.frozensets(st.sampled_from(POP_NAMES)),
    epoch=st.integers(min_value=1, max_value=1_000),
)
def test_repair_never_lowers_the_epoch_never_pairs_a_node_with_itself_and_moves_only_to_the_standby(
    owner: str, standby: str, gone: frozenset[str], epoch: int
) -> None:
    if standby == owner:
        standby = ""
    current = Placement("Counter", _id("prop"), owner, standby, epoch)
    healthy = [pop for pop in ALL_POPS if pop.name not in gone]
    repaired = rules.repair(TOPOLOGY, current, healthy, gone)
    assert repaired.epoch in (epoch, epoch + 1)
    assert repaired.owner != repaired.standby
    if repaired.owner != owner:
        # Only the standby, which holds every acknowledged write, may take over.
        assert repaired.owner == standby
        assert repaired.epoch == epoch + 1
        assert owner in gone
    else:
        assert repaired.epoch == epoch
    if repaired.standby != standby:
        # A newly chosen standby is a healthy node (both copies away: nothing changes).
        assert repaired.standby not in gone


def test_an_unreachable_standby_is_replaced_outside_its_cut_off_region_at_the_same_epoch() -> None:
    placement = Placement("Counter", _id("x"), "sydney-1", "tokyo-1", 3)
    replaced = rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "tokyo-1")
    # tokyo-2 is cut off by the same region-pair partition: never chosen.
    assert replaced.standby not in ("tokyo-1", "tokyo-2", "sydney-1")
    assert (replaced.owner, replaced.epoch) == ("sydney-1", 3)


def test_a_same_site_standby_is_replaced_by_its_site_mate_first() -> None:
    placement = Placement("Counter", _id("x"), "tokyo-1", "tokyo-2", 1)
    assert rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "tokyo-2").standby != "tokyo-2"
    # A request naming a standby that was already replaced changes nothing.
    assert rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "london-1") == placement
