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
def test_first_placement_is_in_the_callers_region_with_the_other_site_node_as_next_standby(
    region: str,
) -> None:
    placed = rules.place(TOPOLOGY, ALL_POPS, "Counter", _id(region), region)
    assert placed is not None
    assert placed.owner in {f"{region}-1", f"{region}-2"}
    # Nobody holds a copy yet: the site-mate is named, and counts once it confirms.
    assert placed.standby == ""
    assert placed.next_standby == ({f"{region}-1", f"{region}-2"} - {placed.owner}).pop()
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
    assert placed.next_standby.startswith("tokyo-")  # sydney's nearest other region (117 ms)


def test_no_healthy_pop_means_no_placement_and_a_lone_pop_has_no_standby() -> None:
    assert rules.place(TOPOLOGY, [], "Counter", _id("x"), "tokyo") is None
    alone = rules.place(TOPOLOGY, [_pop("london-1")], "Counter", _id("x"), "tokyo")
    assert alone == Placement("Counter", _id("x"), "london-1", "", 1)


# -- repair: the owner's lease lapsed (plus margin) ----------------------------------------


def _placed(owner: str, standby: str, epoch: int = 3, next_standby: str = "") -> Placement:
    return Placement("Counter", _id("repair"), owner, standby, epoch, next_standby, 40)


def test_objects_never_move_while_owner_and_standby_are_healthy() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    assert rules.repair(TOPOLOGY, current, ALL_POPS, frozenset()) == current
    assert rules.repair(TOPOLOGY, current, ALL_POPS, frozenset({"london-1"})) == current


def test_gone_owner_is_replaced_by_its_standby_which_keeps_the_old_owner_as_holder() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    repaired = rules.repair(TOPOLOGY, current, _without("tokyo-1"), frozenset({"tokyo-1"}))
    assert repaired.owner == "tokyo-2"
    assert repaired.epoch == current.epoch + 1
    # The old owner holds every acknowledged write until the new owner confirms a copy.
    assert repaired.standby == "tokyo-1"
    assert repaired.holders == ("tokyo-2", "tokyo-1")
    # tokyo has no other healthy node: the nearest region's node is named next.
    assert repaired.next_standby.startswith("mumbai-")
    assert repaired.synced_seq == current.synced_seq


def test_promoted_standby_in_a_two_node_site_names_the_other_site_node_next() -> None:
    current = _placed("sydney-1", "tokyo-1")
    repaired = rules.repair(TOPOLOGY, current, _without("sydney-1"), frozenset({"sydney-1"}))
    assert (repaired.owner, repaired.standby, repaired.next_standby, repaired.epoch) == (
        "tokyo-1",
        "sydney-1",
        "tokyo-2",
        4,
    )


def test_gone_owner_with_a_gone_standby_stays_put_rather_than_lose_acknowledged_writes() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    gone = frozenset({"tokyo-1", "tokyo-2"})
    assert rules.repair(TOPOLOGY, current, _without(*gone), gone) == current


def test_gone_owner_is_never_replaced_by_an_unconfirmed_next_standby() -> None:
    """Issue 17, sequences 1-3: the next standby never took a copy; the object waits."""
    current = _placed("tokyo-2", "tokyo-1", next_standby="mumbai-1")
    gone = frozenset({"tokyo-1", "tokyo-2"})
    assert rules.repair(TOPOLOGY, current, _without(*gone), gone) == current
    # ... and an object with no confirmed standby at all waits for its owner.
    new = _placed("london-1", "", epoch=1, next_standby="london-2")
    assert rules.repair(TOPOLOGY, new, _without("london-1"), frozenset({"london-1"})) == new


def test_planted_bug_promotes_the_unconfirmed_next_standby() -> None:
    """EDGEPOP_BUGGIFY=promote-unsynced: what the fault runs must catch."""
    current = _placed("tokyo-2", "tokyo-1", next_standby="mumbai-1")
    gone = frozenset({"tokyo-1", "tokyo-2"})
    buggy = rules.repair(TOPOLOGY, current, _without(*gone), gone, promote_unsynced=True)
    assert (buggy.owner, buggy.epoch, buggy.synced_seq) == ("mumbai-1", 4, 0)


def test_gone_owner_whose_standby_is_unhealthy_but_not_yet_gone_is_not_moved() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    healthy = _without("tokyo-1", "tokyo-2")  # tokyo-2 missed heartbeats, not gone yet
    assert rules.repair(TOPOLOGY, current, healthy, frozenset({"tokyo-1"})) == current


def test_gone_standby_stays_a_holder_while_a_next_standby_is_named_at_the_same_epoch() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    repaired = rules.repair(TOPOLOGY, current, _without("tokyo-2"), frozenset({"tokyo-2"}))
    assert (repaired.owner, repaired.standby, repaired.epoch) == ("tokyo-1", "tokyo-2", 3)
    assert repaired.next_standby.startswith("mumbai-")
    # Repeated checks keep the named next standby (no flapping).
    again = rules.repair(TOPOLOGY, repaired, _without("tokyo-2"), frozenset({"tokyo-2"}))
    assert again == repaired


def test_a_gone_next_standby_is_replaced_by_another() -> None:
    current = _placed("tokyo-1", "tokyo-2", next_standby="mumbai-1")
    gone = frozenset({"tokyo-2", "mumbai-1"})
    repaired = rules.repair(TOPOLOGY, current, _without(*gone), gone)
    assert repaired.next_standby not in ("", "mumbai-1", "tokyo-1", "tokyo-2")
    assert (repaired.owner, repaired.standby) == ("tokyo-1", "tokyo-2")


def test_placement_without_any_standby_gets_a_next_standby_when_another_pop_is_healthy() -> None:
    current = _placed("london-1", "")
    repaired = rules.repair(TOPOLOGY, current, ALL_POPS, frozenset())
    assert (repaired.owner, repaired.standby, repaired.next_standby, repaired.epoch) == (
        "london-1",
        "",
        "london-2",
        3,
    )
    assert rules.needs_repair(current, frozenset(), pop_count=12)
    assert not rules.needs_repair(current, frozenset(), pop_count=1)


def test_the_standby_returning_first_is_promoted_and_the_owner_returning_first_keeps_it() -> None:
    current = _placed("tokyo-1", "tokyo-2")
    owner_gone = frozenset({"tokyo-1"})
    recovered = rules.repair(TOPOLOGY, current, _without("tokyo-1"), owner_gone)
    assert (recovered.owner, recovered.epoch) == ("tokyo-2", current.epoch + 1)
    back = rules.repair(TOPOLOGY, current, _without("tokyo-2"), frozenset({"tokyo-2"}))
    assert (back.owner, back.epoch) == ("tokyo-1", current.epoch)


# -- confirmation: the only way a node becomes the standby --------------------------------


def test_confirming_the_next_standby_makes_it_the_standby_and_records_the_seq() -> None:
    current = _placed("tokyo-1", "tokyo-2", next_standby="mumbai-1")
    confirmed = rules.confirm_standby(current, owner="tokyo-1", epoch=3, standby="mumbai-1", seq=57)
    assert (confirmed.standby, confirmed.next_standby, confirmed.synced_seq) == (
        "mumbai-1",
        "",
        57,
    )


@pytest.mark.parametrize(
    ("owner", "epoch", "standby"),
    [
        ("tokyo-2", 3, "mumbai-1"),  # not the owner
        ("tokyo-1", 2, "mumbai-1"),  # an older epoch (a deposed owner)
        ("tokyo-1", 4, "mumbai-1"),  # a newer epoch than the control plane knows
        ("tokyo-1", 3, "mumbai-2"),  # not the named next standby
        ("tokyo-1", 3, "tokyo-1"),  # itself
        ("tokyo-1", 3, ""),
    ],
)
def test_a_confirmation_the_placement_has_moved_past_is_refused(
    owner: str, epoch: int, standby: str
) -> None:
    current = _placed("tokyo-1", "tokyo-2", next_standby="mumbai-1")
    with pytest.raises(rules.ConfirmRefusedError):
        rules.confirm_standby(current, owner=owner, epoch=epoch, standby=standby, seq=1)


# -- properties ----------------------------------------------------------------------------

POP_NAMES = [pop.name for pop in ALL_POPS]


@given(
    owner=st.sampled_from(POP_NAMES),
    standby=st.sampled_from(["", *POP_NAMES]),
    next_standby=st.sampled_from(["", *POP_NAMES]),
    gone=st.frozensets(st.sampled_from(POP_NAMES)),
    epoch=st.integers(min_value=1, max_value=1_000),
)
def test_repair_never_lowers_the_epoch_never_pairs_a_node_with_itself_and_moves_only_to_a_holder(
    owner: str, standby: str, next_standby: str, gone: frozenset[str], epoch: int
) -> None:
    if standby == owner:
        standby = ""
    if next_standby in (owner, standby):
        next_standby = ""
    current = Placement("Counter", _id("prop"), owner, standby, epoch, next_standby)
    healthy = [pop for pop in ALL_POPS if pop.name not in gone]
    repaired = rules.repair(TOPOLOGY, current, healthy, gone)
    assert repaired.epoch in (epoch, epoch + 1)
    assert repaired.owner not in (repaired.standby, repaired.next_standby)
    if repaired.owner != owner:
        # Only the standby, which holds every acknowledged write, may take over; the old
        # owner, which holds them too, stays on record as a holder.
        assert (repaired.owner, repaired.standby) == (standby, owner)
        assert repaired.epoch == epoch + 1
        assert owner in gone
    else:
        assert repaired.epoch == epoch
        # Repair never makes a node a holder: only a confirmation does.
        assert repaired.standby == standby
    if repaired.next_standby and repaired.next_standby != next_standby:
        assert repaired.next_standby not in gone


def test_an_unreachable_standby_gets_a_next_standby_outside_its_cut_off_region() -> None:
    placement = Placement("Counter", _id("x"), "sydney-1", "tokyo-1", 3)
    replaced = rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "tokyo-1")
    # tokyo-2 is cut off by the same region-pair partition: never chosen.
    assert replaced.next_standby not in ("", "tokyo-1", "tokyo-2", "sydney-1")
    # tokyo-1 stays the standby (a holder) until the owner confirms the next one.
    assert (replaced.owner, replaced.standby, replaced.epoch) == ("sydney-1", "tokyo-1", 3)


def test_a_same_site_standby_is_replaced_by_its_site_mate_first() -> None:
    placement = Placement("Counter", _id("x"), "tokyo-1", "tokyo-2", 1)
    replaced = rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "tokyo-2")
    assert replaced.next_standby not in ("", "tokyo-2")
    # A request naming a node that is neither standby nor next standby changes nothing.
    assert rules.replace_standby(TOPOLOGY, placement, ALL_POPS, "london-1") == placement
    # Nor does one naming the standby while a next standby is already named.
    assert rules.replace_standby(TOPOLOGY, replaced, ALL_POPS, "tokyo-2") == replaced
