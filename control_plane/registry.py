"""The node registry: registrations, heartbeats and leases. Pure: every call takes `now`.

A node is healthy while its last heartbeat is younger than `lease_s`. Registration bumps
the node's incarnation, so heartbeats from a previous life of the same name are told to
re-register. After a control-plane restart every known node gets one lease of grace:
the data plane keeps running while the control plane is away.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NODE_LEASE_S_DEFAULT = 2.0

ROLE_CONTROL_PLANE = "control_plane"
ROLE_ORIGIN = "origin"
ROLE_POP = "pop"
ROLES = (ROLE_CONTROL_PLANE, ROLE_ORIGIN, ROLE_POP)


@dataclass(frozen=True)
class NodeEntry:
    name: str
    region: str
    role: str
    grpc_address: str
    http_address: str = ""
    metrics_address: str = ""
    pid: int = 0
    incarnation: int = 0
    # Lease-clock time (monotonic) of the last heartbeat (or registration, or restart
    # grace); never compared across processes or restarts.
    last_heartbeat: float = 0.0


class NodeRegistry:
    def __init__(self, lease_s: float = NODE_LEASE_S_DEFAULT) -> None:
        self.lease_s = lease_s
        self._nodes: dict[str, NodeEntry] = {}

    def restore(self, entries: list[NodeEntry], now: float) -> None:
        """Load persisted registrations; each gets a fresh lease as grace."""
        for entry in entries:
            self._nodes[entry.name] = replace(entry, last_heartbeat=now)

    def register(self, entry: NodeEntry, now: float) -> NodeEntry:
        if entry.role not in ROLES:
            raise ValueError(f"unknown role {entry.role!r}")
        previous = self._nodes.get(entry.name)
        incarnation = (previous.incarnation if previous else 0) + 1
        registered = replace(entry, incarnation=incarnation, last_heartbeat=now)
        self._nodes[entry.name] = registered
        return registered

    def heartbeat(self, name: str, incarnation: int, now: float) -> bool:
        """Renew a lease; False when the name or incarnation is unknown (re-register)."""
        entry = self._nodes.get(name)
        if entry is None or entry.incarnation != incarnation:
            return False
        self._nodes[name] = replace(entry, last_heartbeat=now)
        return True

    def get(self, name: str) -> NodeEntry | None:
        return self._nodes.get(name)

    def is_healthy(self, entry: NodeEntry, now: float) -> bool:
        return now - entry.last_heartbeat < self.lease_s

    def entries(self) -> list[NodeEntry]:
        return sorted(self._nodes.values(), key=lambda entry: (ROLES.index(entry.role), entry.name))

    def healthy_names(self, now: float) -> frozenset[str]:
        return frozenset(
            entry.name for entry in self._nodes.values() if self.is_healthy(entry, now)
        )
