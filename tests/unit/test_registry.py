"""Node registry: registration, incarnations, heartbeats and leases, all with explicit `now`."""

from __future__ import annotations

import pytest

from control_plane.registry import LeaseClock, NodeEntry, NodeRegistry

T0 = 1_000.0
LEASE_S = 2.0


def _node(name: str = "tokyo-1", region: str = "tokyo", role: str = "pop") -> NodeEntry:
    return NodeEntry(name, region, role, grpc_address=f"127.0.0.1:{len(name) + 5000}")


def test_register_gives_incarnation_1_and_a_fresh_lease() -> None:
    registry = NodeRegistry(LEASE_S)
    entry = registry.register(_node(), T0)
    assert entry.incarnation == 1
    assert entry.last_heartbeat == T0
    assert registry.get("tokyo-1") == entry
    assert registry.is_healthy(entry, T0)


def test_reregistering_a_name_bumps_its_incarnation() -> None:
    registry = NodeRegistry(LEASE_S)
    registry.register(_node(), T0)
    again = registry.register(_node(), T0 + 5)
    assert again.incarnation == 2
    assert registry.register(_node(), T0 + 6).incarnation == 3
    # Another name starts its own count.
    assert registry.register(_node("tokyo-2"), T0).incarnation == 1


def test_register_refuses_an_unknown_role() -> None:
    registry = NodeRegistry(LEASE_S)
    with pytest.raises(ValueError, match="role"):
        registry.register(_node(role="janitor"), T0)
    assert registry.get("tokyo-1") is None


def test_heartbeat_with_the_current_incarnation_renews_the_lease() -> None:
    registry = NodeRegistry(LEASE_S)
    registry.register(_node(), T0)
    assert registry.heartbeat("tokyo-1", 1, T0 + 1.5)
    entry = registry.get("tokyo-1")
    assert entry is not None and entry.last_heartbeat == T0 + 1.5
    assert registry.is_healthy(entry, T0 + 3.0)


def test_heartbeat_from_a_previous_incarnation_is_refused() -> None:
    registry = NodeRegistry(LEASE_S)
    registry.register(_node(), T0)
    registry.register(_node(), T0 + 1)  # the node restarted: incarnation 2
    assert not registry.heartbeat("tokyo-1", 1, T0 + 1.5)
    entry = registry.get("tokyo-1")
    assert entry is not None and entry.last_heartbeat == T0 + 1


def test_heartbeat_of_an_unknown_name_is_refused() -> None:
    registry = NodeRegistry(LEASE_S)
    assert not registry.heartbeat("ghost", 1, T0)
    assert registry.get("ghost") is None


def test_lease_expires_exactly_lease_s_after_the_last_heartbeat() -> None:
    registry = NodeRegistry(LEASE_S)
    entry = registry.register(_node(), T0)
    assert registry.is_healthy(entry, T0 + LEASE_S - 0.001)
    assert not registry.is_healthy(entry, T0 + LEASE_S)
    assert not registry.is_healthy(entry, T0 + 100)


def test_healthy_names_lists_only_nodes_within_their_lease() -> None:
    registry = NodeRegistry(LEASE_S)
    registry.register(_node("tokyo-1"), T0)
    registry.register(_node("tokyo-2"), T0)
    registry.register(_node("london-1", "london"), T0)
    registry.heartbeat("tokyo-2", 1, T0 + 1.5)
    assert registry.healthy_names(T0 + 1.0) == {"tokyo-1", "tokyo-2", "london-1"}
    assert registry.healthy_names(T0 + 2.5) == {"tokyo-2"}
    assert registry.healthy_names(T0 + 10) == frozenset()


def test_restore_grants_every_known_node_one_lease_of_grace() -> None:
    persisted = [
        NodeEntry("tokyo-1", "tokyo", "pop", "a:1", incarnation=4, last_heartbeat=10.0),
        NodeEntry("origin", "us-east-1", "origin", "a:2", incarnation=2, last_heartbeat=10.0),
    ]
    registry = NodeRegistry(LEASE_S)
    registry.restore(persisted, T0)
    assert registry.healthy_names(T0 + 1.9) == {"tokyo-1", "origin"}
    assert registry.healthy_names(T0 + LEASE_S) == frozenset()
    # The node's incarnation survives the restart: its heartbeats keep working.
    assert registry.heartbeat("tokyo-1", 4, T0 + 1.0)
    assert not registry.heartbeat("origin", 1, T0 + 1.0)
    assert registry.healthy_names(T0 + 2.5) == {"tokyo-1"}
    # Re-registering after a restore continues the incarnation count.
    assert registry.register(persisted[0], T0 + 3).incarnation == 5


def test_entries_are_ordered_by_role_then_name() -> None:
    registry = NodeRegistry(LEASE_S)
    for entry in [
        _node("tokyo-1"),
        _node("origin", "us-east-1", "origin"),
        _node("london-2", "london"),
        _node("control-plane", "us-east-1", "control_plane"),
        _node("london-1", "london"),
    ]:
        registry.register(entry, T0)
    assert [entry.name for entry in registry.entries()] == [
        "control-plane",
        "origin",
        "london-1",
        "london-2",
        "tokyo-1",
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_lease_clock_follows_real_time_while_the_process_runs() -> None:
    real = FakeClock()
    clock = LeaseClock(real, step_max_s=1.0)
    start = clock()
    for _ in range(10):
        real.now += 0.2
        clock()
    assert clock() - start == pytest.approx(2.0)
    assert clock.stalled_s == 0


def test_a_stall_of_the_process_itself_counts_one_step_only() -> None:
    real = FakeClock()
    clock = LeaseClock(real, step_max_s=1.0)
    registry = NodeRegistry(lease_s=2.0)
    registry.register(NodeEntry("tokyo-1", "tokyo", "pop", "a:1"), clock())
    real.now += 0.4
    heartbeat_at = clock()
    assert registry.heartbeat("tokyo-1", 1, heartbeat_at)
    real.now += 5.0  # frozen: no reading for 5 s
    woke = clock()
    assert woke - heartbeat_at == pytest.approx(1.0)
    assert clock.stalled_s == pytest.approx(4.0)
    # Its lease has not lapsed for the control plane's own absence.
    assert registry.healthy_names(woke) == {"tokyo-1"}
    # Running again, time counts in full: without heartbeats the lease lapses on time.
    real.now += 1.0
    assert registry.healthy_names(clock()) == frozenset()


def test_the_lease_clock_never_runs_ahead_of_real_time_nor_back() -> None:
    real = FakeClock()
    clock = LeaseClock(real, step_max_s=1.0)
    start_real, start = real.now, clock()
    previous = start
    for step in (0.1, 3.0, 0.5, 0.0, 7.0, 0.9, 1.1):
        real.now += step
        now = clock()
        assert now >= previous
        assert now - start <= real.now - start_real + 1e-9
        previous = now
