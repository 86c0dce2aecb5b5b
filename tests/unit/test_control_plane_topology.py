"""The control plane's topology push: the static part is built once and copied.

A real `ControlPlane` with its LMDB in a temp dir, never started (no sockets).
"""

from __future__ import annotations

import time
from pathlib import Path

from control_plane.node import ControlPlane, ControlPlaneConfig
from control_plane.registry import NodeEntry
from edgepop.topology import topology_to_pb


def test_each_push_carries_the_full_static_topology_with_its_own_version_and_nodes(
    tmp_path: Path,
) -> None:
    node = ControlPlane(
        ControlPlaneConfig(
            name="control-plane",
            region="us-east-1",
            data_dir=tmp_path / "cp",
            token_file=tmp_path / "token",
        )
    )
    node.open_storage()
    try:
        node.self_entry = NodeEntry("control-plane", "us-east-1", "control_plane", "h:1")
        node.registry.register(NodeEntry("tokyo-1", "tokyo", "pop", "h:2"), time.time())
        first = node.topology_message()
        node.topology_version += 1
        node.registry.register(NodeEntry("tokyo-2", "tokyo", "pop", "h:3"), time.time())
        second = node.topology_message()
        # A push changed by its receiver (or the next build) leaves the others alone.
        first.rtt[0].rtt_ms = -1.0
        third = node.topology_message()
    finally:
        node.close_storage()
    expected = topology_to_pb(node.config.topology)
    for message in (second, third):
        assert list(message.regions) == list(expected.regions)
        assert list(message.rtt) == list(expected.rtt)
        assert message.origin_region == expected.origin_region
        assert message.intra_site_rtt_ms == expected.intra_site_rtt_ms
    assert second.version == first.version + 1
    assert [info.name for info in first.nodes] == ["control-plane", "tokyo-1"]
    assert [info.name for info in second.nodes] == ["control-plane", "tokyo-1", "tokyo-2"]
