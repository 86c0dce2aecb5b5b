"""The node's lease on the objects it owns. Pure: takes times, returns decisions.

A heartbeat that the control plane acknowledged renews the lease until its *send* time
plus `lease_s`. The control plane counts from when it *received* the heartbeat and moves
objects only after `lease_s` plus a margin, so the node always stops serving an object
before anyone else may start: at no moment do two nodes accept writes for one object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lease:
    lease_s: float = 0.0
    # Monotonic time until which this node may serve the objects it owns.
    valid_until: float = 0.0
    # Bumped whenever the lease lapsed: instances activated before must not serve.
    generation: int = 0

    def renewed(self, sent_at: float, lease_s: float) -> None:
        self.lease_s = lease_s
        self.valid_until = max(self.valid_until, sent_at + lease_s)

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    def next_check_in(self, now: float, poll_s: float) -> float:
        """Seconds until the lease must be looked at again to see it lapse.

        While valid, its expiry: renewals only push `valid_until` later, so it cannot
        lapse before then, and one timer there replaces polling (an idle node no longer
        wakes 20 times a second for nothing). While not valid, `poll_s`: a renewal is not
        announced, and it must be seen valid before it can be seen to lapse again.
        """
        if self.valid(now):
            return self.valid_until - now
        return poll_s

    def check_lapsed(self, now: float, was_valid: bool) -> bool:
        """True (and a new generation) when the lease was valid and is no longer."""
        if was_valid and not self.valid(now):
            self.generation += 1
            return True
        return False
