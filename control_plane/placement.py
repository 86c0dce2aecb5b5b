"""Durable Object placement: which node owns each object, its standby, and the epoch.

Pure: every function takes the healthy PoPs, the topology and returns decisions.

- First use places an object in the region nearest the caller (or its location hint),
  on one node of that region chosen by the id's hash; its standby is the other node of
  that region if there is one, else the nearest PoP elsewhere.
- An object does not move while its owner is healthy.
- When an owner's lease has lapsed (plus a margin), its objects move to their standby
  (which holds every acknowledged write) with the epoch bumped, and get a new standby.
  If the standby is gone too, the object waits for either node to come back: moving it
  elsewhere would silently lose acknowledged writes.
- When only a standby is gone, the owner keeps the object and gets a new standby (same
  epoch: ownership did not change; the owner sends the new standby a full copy).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from control_plane.registry import NodeEntry
from control_plane.routing import nearest_pops
from edgepop.topology import Topology


@dataclass(frozen=True)
class Placement:
    namespace: str
    object_id: str  # 64 hex characters
    owner: str
    standby: str
    epoch: int


def _choose_standby(topology: Topology, pops: Sequence[NodeEntry], owner: NodeEntry) -> str:
    others = [pop for pop in pops if pop.name != owner.name]
    if not others:
        return ""
    same_site = sorted((p for p in others if p.region == owner.region), key=lambda p: p.name)
    if same_site:
        return same_site[0].name
    nearest, _ = nearest_pops(topology, others, owner.region)
    return nearest[0].name


def place(
    topology: Topology,
    healthy_pops: Sequence[NodeEntry],
    namespace: str,
    object_id: str,
    region: str,
) -> Placement | None:
    """A first placement near `region` (None when no PoP is healthy)."""
    nearest, _ = nearest_pops(topology, healthy_pops, region)
    if not nearest:
        return None
    owner = nearest[zlib.crc32(object_id.encode()) % len(nearest)]
    return Placement(
        namespace, object_id, owner.name, _choose_standby(topology, healthy_pops, owner), 1
    )


def repair(
    topology: Topology,
    placement: Placement,
    healthy_pops: Sequence[NodeEntry],
    gone: frozenset[str],
) -> Placement:
    """The placement after the nodes in `gone` (lease lapsed + margin) are taken away."""
    by_name = {pop.name: pop for pop in healthy_pops}
    if placement.owner in gone:
        if placement.standby and placement.standby in by_name:
            new_owner = by_name[placement.standby]
            return replace(
                placement,
                owner=new_owner.name,
                standby=_choose_standby(topology, healthy_pops, new_owner),
                epoch=placement.epoch + 1,
            )
        return placement  # both copies are away: wait for one to return
    if placement.standby in gone or (placement.standby == "" and len(by_name) > 1):
        owner = by_name.get(placement.owner)
        if owner is not None:
            return replace(placement, standby=_choose_standby(topology, healthy_pops, owner))
    return placement


def recover(
    topology: Topology, placement: Placement, healthy_pops: Sequence[NodeEntry]
) -> Placement:
    """An object stuck on a gone owner with a gone standby: move it to whichever is back."""
    by_name = {pop.name: pop for pop in healthy_pops}
    if placement.owner in by_name:
        return placement  # the owner is back with its own copy: same epoch
    standby = by_name.get(placement.standby)
    if standby is None:
        return placement
    return replace(
        placement,
        owner=standby.name,
        standby=_choose_standby(topology, healthy_pops, standby),
        epoch=placement.epoch + 1,
    )


def replace_standby(
    topology: Topology,
    placement: Placement,
    healthy_pops: Sequence[NodeEntry],
    unreachable: str,
) -> Placement:
    """Another standby for an owner that cannot reach its own (same epoch: same owner)."""
    if placement.standby != unreachable:
        return placement  # already replaced (by an earlier request)
    owner = next((pop for pop in healthy_pops if pop.name == placement.owner), None)
    if owner is None:
        return placement
    # Faults cut region pairs: the unreachable node's site-mates are cut off too (unless
    # it shares the owner's own site, where only that node is suspect).
    cut_region = next((pop.region for pop in healthy_pops if pop.name == unreachable), "")
    candidates = [
        pop
        for pop in healthy_pops
        if pop.name != unreachable and (pop.region != cut_region or pop.region == owner.region)
    ]
    return replace(placement, standby=_choose_standby(topology, candidates, owner))
