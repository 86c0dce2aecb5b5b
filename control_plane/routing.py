"""Nearest-PoP routing. Pure: given the topology and the healthy PoPs, pick one."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from control_plane.registry import NodeEntry
from edgepop.topology import Topology

# RTTs within this margin count as equally near (the nodes of one site are 1 ms apart).
EQUAL_RTT_MARGIN_MS = 0.5


def nearest_pops(
    topology: Topology, pops: Sequence[NodeEntry], client_region: str
) -> tuple[list[NodeEntry], float]:
    """The healthy PoPs with the lowest RTT from `client_region`, and that RTT."""
    if not pops:
        return [], 0.0
    scored = [
        (topology.rtt_ms(client_region, pop.region, caller_is_node=False), pop) for pop in pops
    ]
    best = min(rtt for rtt, _ in scored)
    nearest = sorted(
        (pop for rtt, pop in scored if rtt <= best + EQUAL_RTT_MARGIN_MS), key=lambda p: p.name
    )
    return nearest, best


def pick(nearest: Sequence[NodeEntry], client_id: str, counter: int) -> NodeEntry:
    """Spread clients over equally near nodes: stable per client id, else round robin."""
    if client_id:
        return nearest[zlib.crc32(client_id.encode()) % len(nearest)]
    return nearest[counter % len(nearest)]
