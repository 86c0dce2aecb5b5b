"""The node registry: registrations, heartbeats and leases. Pure: every call takes `now`.

A node is healthy while its last heartbeat is younger than `lease_s`. Registration bumps
the node's incarnation, so heartbeats from a previous life of the same name are told to
re-register. After a control-plane restart every known node gets one lease of grace:
the data plane keeps running while the control plane is away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

# With a heartbeat every 1 s: a dead node shows unhealthy within 2.7 s (this plus the
# health check's 0.2 s), and a heartbeat may be 1.5 s late before a lease lapses.
NODE_LEASE_S_DEFAULT = 2.5
# The lease clock runs at most this far between two readings: a longer gap means this
# process did not run (frozen, or starved of CPU), and leases do not lapse for that.
LEASE_CLOCK_STEP_S_MAX = 1.0

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


class LeaseClock:
    """Monotonic time that does not count this process's own stalls.

    A control plane frozen for longer than a lease (a GC pause, a stopped VM, SIGSTOP)
    would wake to every heartbeat stale at once and call every node gone: health flips
    for the whole cluster and objects may move off owners that are fine, before the
    heartbeats that queued meanwhile are read. Like etcd's lessor extending leases after
    a leader change, time counts here only while the control plane runs: a gap between
    two readings beyond `step_max_s` advances this clock by `step_max_s` only. The clock
    is read every health check (0.2 s), so a gap that long means the process did not
    run. Safe: this clock never runs ahead of real time, so an object still moves only
    after its owner's own lease (timed by the owner) has run out; a node that died during
    the stall is found out at most the stall's length later.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        step_max_s: float = LEASE_CLOCK_STEP_S_MAX,
    ) -> None:
        self._clock = clock
        self.step_max_s = step_max_s
        self._last_real = clock()
        self._now = self._last_real
        self.stalled_s = 0.0  # time not counted so far

    def __call__(self) -> float:
        real = self._clock()
        step = max(0.0, real - self._last_real)
        if step > self.step_max_s:
            self.stalled_s += step - self.step_max_s
            step = self.step_max_s
        self._last_real = real
        self._now += step
        return self._now


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
