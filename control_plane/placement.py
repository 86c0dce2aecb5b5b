"""Durable Object placement: which node owns each object, its standby, and the epoch.

Pure: every function takes the healthy PoPs, the topology and returns decisions.

The rule everything here keeps: **an object only ever moves to a node that holds every
write its owner acknowledged.** The owner answers a call only once the call's writes are
durable on itself and on its *standby*, so the nodes known to hold every acknowledged
write are exactly the owner and the standby (`Placement.holders`). The control plane
never makes a node the standby on its own say-so: it names a *next standby*, the owner
gives that node a full copy, and only the owner's confirmation (`confirm_standby`) makes
it the standby. Until then the old standby stays a holder (the owner cannot acknowledge
a write without it), so a confirmation is the only moment the holders change.

- First use places an object in the region nearest the caller (or its location hint),
  on one node of that region chosen by the id's hash; its next standby is the other node
  of that region if there is one, else the nearest PoP elsewhere. The owner confirms it
  before it serves the first call.
- An object does not move while its owner is healthy.
- When an owner is gone (lease lapsed plus a margin), its objects move to their standby,
  with the epoch bumped. The old owner becomes the standby of record: until the new
  owner confirms a standby of its own it has acknowledged nothing, so the old owner still
  holds every acknowledged write. If the standby is gone too, the object waits for either
  to come back: any other node would serve it without acknowledged writes.
- When the standby is gone (or the owner cannot reach it), the owner keeps the object
  (same epoch) and gets a next standby to copy to and confirm.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from control_plane.registry import NodeEntry
from control_plane.routing import nearest_pops
from edgepop.topology import Topology


@dataclass(frozen=True)
class Placement:
    namespace: str
    object_id: str  # 64 hex characters
    owner: str
    # Holds every write the owner acknowledged ("" when nobody took a copy yet).
    standby: str
    epoch: int
    # Chosen to become the standby once the owner confirms it holds a full copy.
    next_standby: str = ""
    # The object's commit seq when the standby was last confirmed: no node with an
    # older copy may own the object.
    synced_seq: int = 0

    @property
    def holders(self) -> tuple[str, ...]:
        """The nodes known to hold every acknowledged write: the only possible owners."""
        return tuple(name for name in (self.owner, self.standby) if name)

    @property
    def copy_target(self) -> str:
        """Where the owner should keep its synchronous copy: the next standby if one is
        named (it must be brought in), else the standby."""
        return self.next_standby or self.standby


def _choose_standby(
    topology: Topology,
    pops: Sequence[NodeEntry],
    owner: NodeEntry,
    exclude: Iterable[str] = (),
) -> str:
    excluded = {owner.name, *exclude}
    others = [pop for pop in pops if pop.name not in excluded]
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
        namespace,
        object_id,
        owner.name,
        standby="",
        epoch=1,
        next_standby=_choose_standby(topology, healthy_pops, owner),
    )


def repair(
    topology: Topology,
    placement: Placement,
    healthy_pops: Sequence[NodeEntry],
    gone: frozenset[str],
    *,
    promote_unsynced: bool = False,
) -> Placement:
    """The placement once the nodes in `gone` (lease lapsed + margin) are taken away.

    `promote_unsynced` is the planted bug of the fault runs (EDGEPOP_BUGGIFY, test-only):
    a gone owner is replaced by its next standby, copy or not.
    """
    by_name = {pop.name: pop for pop in healthy_pops}
    if placement.owner in gone:
        successor = placement.standby
        if promote_unsynced and placement.next_standby in by_name:
            successor = placement.next_standby
        if successor not in by_name:
            return placement  # no healthy node holds every acknowledged write: wait
        new_owner = by_name[successor]
        return Placement(
            placement.namespace,
            placement.object_id,
            owner=new_owner.name,
            # The old owner holds every write acknowledged so far, and the new owner will
            # acknowledge none before it confirms a standby of its own.
            standby=placement.owner,
            epoch=placement.epoch + 1,
            next_standby=_choose_standby(
                topology, healthy_pops, new_owner, exclude=[placement.owner]
            ),
            synced_seq=0 if promote_unsynced else placement.synced_seq,
        )
    owner = by_name.get(placement.owner)
    if owner is None:
        return placement  # unhealthy but not gone yet: nothing to decide
    standby_missing = placement.standby in gone or not placement.standby
    next_missing = not placement.next_standby or placement.next_standby in gone
    if standby_missing and next_missing:
        chosen = _choose_standby(topology, healthy_pops, owner, exclude=[placement.standby])
        return replace(placement, next_standby=chosen)
    if placement.next_standby and placement.next_standby in gone:
        chosen = _choose_standby(topology, healthy_pops, owner, exclude=[placement.standby])
        return replace(placement, next_standby=chosen)
    return placement


def needs_repair(placement: Placement, gone: frozenset[str], pop_count: int) -> bool:
    """Cheap pre-check for `repair` (the lease checker looks at every placement often)."""
    if placement.owner in gone or placement.next_standby in gone:
        return True
    if placement.standby in gone:
        return not placement.next_standby
    return not placement.standby and not placement.next_standby and pop_count > 1


def replace_standby(
    topology: Topology,
    placement: Placement,
    healthy_pops: Sequence[NodeEntry],
    unreachable: str,
) -> Placement:
    """A next standby for an owner that cannot reach its copy target (same epoch)."""
    if unreachable not in (placement.standby, placement.next_standby):
        return placement  # already replaced (by an earlier request)
    if placement.next_standby and placement.next_standby != unreachable:
        return placement  # a next standby is named already: the owner tries that one
    owner = next((pop for pop in healthy_pops if pop.name == placement.owner), None)
    if owner is None:
        return placement
    # Faults cut region pairs: the unreachable node's site-mates are cut off too (unless
    # it shares the owner's own site, where only that node is suspect).
    cut_region = next((pop.region for pop in healthy_pops if pop.name == unreachable), "")
    candidates = [
        pop
        for pop in healthy_pops
        if pop.name not in (unreachable, placement.standby)
        and (pop.region != cut_region or pop.region == owner.region)
    ]
    return replace(placement, next_standby=_choose_standby(topology, candidates, owner))


class ConfirmRefusedError(Exception):
    """The placement moved on since the owner started its copy (the message says how)."""


def confirm_standby(
    placement: Placement, *, owner: str, epoch: int, standby: str, seq: int
) -> Placement:
    """`standby` holds a full copy that `owner` made at `epoch`: it becomes the standby."""
    if (placement.owner, placement.epoch) != (owner, epoch):
        raise ConfirmRefusedError(
            f"the object is owned by {placement.owner} at epoch {placement.epoch},"
            f" not {owner} at epoch {epoch}"
        )
    if not standby or standby == owner:
        raise ConfirmRefusedError(f"{standby or '(none)'} cannot be the owner's standby")
    if standby != placement.next_standby:
        raise ConfirmRefusedError(
            f"{standby} is not the next standby (that is {placement.next_standby or 'nobody'})"
        )
    return replace(
        placement,
        standby=standby,
        next_standby="",
        synced_seq=max(placement.synced_seq, seq),
    )
