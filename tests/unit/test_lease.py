"""The node's lease on its objects: renewed from the heartbeat's send time, lapses, generations.

The safety argument of failover lives here: the node counts its lease from when it *sent*
an acknowledged heartbeat, the control plane from when it *received* it, plus a margin,
so the node has always stopped before the control plane moves its objects.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.node import OBJECT_FAILOVER_MARGIN_S
from control_plane.registry import NODE_LEASE_S_DEFAULT
from edgepop.lease import Lease

LEASE_S = 2.0


def test_a_new_lease_is_not_valid() -> None:
    lease = Lease()
    assert not lease.valid(0.0)
    assert not lease.valid(1_000.0)


def test_renewal_counts_from_the_send_time_not_the_answer_time() -> None:
    lease = Lease()
    # Sent at 10, answered at 11.5 (a slow round trip): valid until 12, not 13.5.
    lease.renewed(sent_at=10.0, lease_s=LEASE_S)
    assert lease.lease_s == LEASE_S
    assert lease.valid(11.999)
    assert not lease.valid(12.0)


def test_a_late_answer_to_an_older_heartbeat_never_shortens_the_lease() -> None:
    lease = Lease()
    lease.renewed(sent_at=10.0, lease_s=LEASE_S)
    lease.renewed(sent_at=9.0, lease_s=LEASE_S)
    assert lease.valid_until == 12.0


def test_lapse_is_reported_once_and_bumps_the_generation() -> None:
    lease = Lease()
    lease.renewed(sent_at=0.0, lease_s=LEASE_S)
    assert not lease.check_lapsed(1.0, was_valid=True)
    assert lease.generation == 0
    assert lease.check_lapsed(2.0, was_valid=True)
    assert lease.generation == 1
    # Still lapsed on the next look: no second bump.
    assert not lease.check_lapsed(2.05, was_valid=False)
    assert lease.generation == 1


def test_instances_from_before_a_lapse_stay_stale_after_renewal() -> None:
    """A renewal after a lapse restores validity but not the old generation."""
    lease = Lease()
    lease.renewed(sent_at=0.0, lease_s=LEASE_S)
    before = lease.generation
    assert lease.check_lapsed(2.5, was_valid=True)
    lease.renewed(sent_at=3.0, lease_s=LEASE_S)
    assert lease.valid(3.5)
    assert lease.generation != before


@given(
    sent_at=st.floats(min_value=0, max_value=1e6),
    transit_s=st.floats(min_value=0, max_value=10),
)
def test_the_node_always_stops_before_the_control_plane_moves_its_objects(
    sent_at: float, transit_s: float
) -> None:
    """Node: valid until send + lease. Control plane: moves at receipt + lease + margin."""
    lease = Lease()
    lease.renewed(sent_at=sent_at, lease_s=NODE_LEASE_S_DEFAULT)
    received_at = sent_at + transit_s
    moves_at = received_at + NODE_LEASE_S_DEFAULT + OBJECT_FAILOVER_MARGIN_S
    assert not lease.valid(moves_at)
    assert lease.valid_until < moves_at


def test_a_valid_lease_is_next_looked_at_when_it_expires_and_an_invalid_one_is_polled() -> None:
    """The lease watch sleeps to the expiry while valid (renewals only extend it, so it
    cannot lapse earlier), and polls while invalid to see a renewal bring it back."""
    lease = Lease()
    assert lease.next_check_in(5.0, poll_s=0.05) == 0.05  # never renewed
    lease.renewed(sent_at=10.0, lease_s=LEASE_S)
    assert lease.next_check_in(10.5, poll_s=0.05) == 1.5
    lease.renewed(sent_at=10.4, lease_s=LEASE_S)  # renewed meanwhile: later, never earlier
    assert lease.next_check_in(12.0, poll_s=0.05) == pytest.approx(0.4)
    assert lease.next_check_in(12.4, poll_s=0.05) == 0.05  # lapsed: poll for a renewal


@given(
    renewals=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=20),
    looks=st.lists(st.floats(min_value=0, max_value=110), min_size=1, max_size=20),
)
def test_a_lease_never_lapses_before_the_time_next_check_in_gives(
    renewals: list[float], looks: list[float]
) -> None:
    """Whatever renewals follow a look, the lease is still valid until the time given."""
    lease = Lease()
    for sent_at in renewals[:1]:
        lease.renewed(sent_at=sent_at, lease_s=LEASE_S)
    for now in sorted(looks):
        if not lease.valid(now):
            continue
        wake = now + lease.next_check_in(now, poll_s=0.05)
        for sent_at in renewals[1:]:
            lease.renewed(sent_at=sent_at, lease_s=LEASE_S)
        assert lease.valid(wake - 1e-9)
