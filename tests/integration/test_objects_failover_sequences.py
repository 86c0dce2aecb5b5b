"""The failover sequences that used to lose acknowledged Durable Object writes (issues 10
and 17), each replayed with real processes.

Every sequence starts from ~20 acknowledged increments on one Counter, then kills and
cuts nodes in the order that broke it. The rule they check: the object is served only
by a node holding its latest acknowledged state, or it answers UNAVAILABLE (saying why)
until such a node returns. Concretely, at every probe during the outage a get is either
refused as UNAVAILABLE / DEADLINE_EXCEEDED or returns a value holding every acknowledged
increment; after everything is back, the count holds every acknowledged increment (and
no more than were attempted), and no value is ever handed out twice.

One module cluster like the user's: us-east-1 (control plane, origin) and three regions
of two PoPs each, with the seed's delays. Each test restores it (nodes restarted, faults
cleared) so they can share it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.registry import NODE_LEASE_S_DEFAULT
from edgectl.launcher import Cluster
from tests.conftest import _make_factory, poll_until
from tests.integration.objclient import (
    call,
    clear_faults,
    healthy,
    kept_whole,
    partition,
    placement_of,
    result,
)

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": True,
    "regions": [
        {"name": "us-east-1"},
        {"name": "new-york", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 2},
        {"name": "tokyo", "pop_nodes": 2},
    ],
}
REGIONS = ["new-york", "london", "tokyo"]
# Lease + failover margin (0.5 s) + the checker's period and a margin.
FAILOVER_WINDOW_S = NODE_LEASE_S_DEFAULT + 1.5
REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started: list[Cluster] = []
    made = _make_factory(Path(tmp_path_factory.mktemp("failover-sequences")), started)(TOPOLOGY)
    yield made
    made.down()


@pytest.fixture
def cluster(module_cluster: Cluster) -> Iterator[Cluster]:
    """The module cluster, whole before and after the test."""
    with kept_whole(module_cluster, timeout=20) as made_whole:
        yield made_whole


@dataclass
class Ledger:
    """Every increment a test attempted on one Counter, and what came back."""

    cluster: Cluster
    name: str
    acknowledged: list[int] = field(default_factory=list)
    attempted: int = 0
    outcomes: list[str] = field(default_factory=list)

    def increment(self, via: str, timeout: float = 5.0) -> int:
        """One increment through `via`, retried with its request id until answered."""
        self.attempted += 1
        request_id = uuid.uuid4().hex
        region = self.cluster.node(via).region
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = call(
                    self.cluster,
                    via,
                    "increment",
                    name=self.name,
                    region=region,
                    request_id=request_id,
                    timeout=max(0.5, deadline - time.monotonic()),
                )
            except grpc.RpcError as error:
                if error.code() not in REFUSED or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)  # backoff between retries of one request id
                continue
            value = int(result(response))
            self.acknowledged.append(value)
            return value

    def probe(self, via: str) -> None:
        """A get through `via`: refused, or holding every acknowledged increment."""
        try:
            response = call(
                self.cluster,
                via,
                "get",
                name=self.name,
                region=self.cluster.node(via).region,
                timeout=3.0,
            )
        except grpc.RpcError as error:
            assert error.code() in REFUSED, f"{error.code().name}: {error.details()}"
            # Refused before the client's own deadline, saying why.
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            self.outcomes.append(f"refused {error.code().name}: {error.details()}")
            return
        value = int(result(response))
        assert max(self.acknowledged, default=0) <= value <= self.attempted, (
            f"{response.node} at epoch {response.epoch} served {value}; acknowledged"
            f" {max(self.acknowledged, default=0)}, attempted {self.attempted}"
        )
        self.outcomes.append(f"served {value} by {response.node} at epoch {response.epoch}")

    def probe_for(self, via: str, seconds: float) -> None:
        """Probe every ~0.3 s for `seconds` (the outage as a client sees it)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.probe(via)
            time.sleep(0.3)  # the probe period: each probe is itself the check

    def check_after_recovery(self, via: str) -> int:
        """Everything is back: every acknowledged increment counted, none handed out twice."""
        answered = poll_until(
            lambda: _try_get(self.cluster, via, self.name),
            timeout=20,
            what="the object serving again",
        )
        value = int(result(answered))
        assert len(self.acknowledged) <= value <= self.attempted
        assert max(self.acknowledged) <= value
        after = self.increment(via, timeout=10)
        assert after == value + 1
        assert len(self.acknowledged) == len(set(self.acknowledged)), "a value handed out twice"
        print(f"{self.name}: " + "; ".join(_squeeze(self.outcomes)))
        return value


def _try_get(cluster: Cluster, via: str, name: str) -> Any:
    try:
        return call(cluster, via, "get", name=name, region=cluster.node(via).region, timeout=3)
    except grpc.RpcError:
        return None


def _squeeze(outcomes: list[str]) -> list[str]:
    """Consecutive identical probe outcomes as one line with a count."""
    squeezed: list[str] = []
    for outcome in outcomes:
        if squeezed and squeezed[-1].split(" x", 1)[0] == outcome:
            head, _, count = squeezed[-1].partition(" x")
            squeezed[-1] = f"{head} x{int(count or 1) + 1}"
        else:
            squeezed.append(outcome)
    return squeezed


def _start(cluster: Cluster, region: str, prefix: str, count: int = 20) -> tuple[Ledger, Any]:
    """A Counter placed in `region` with `count` acknowledged increments; its placement."""
    ledger = Ledger(cluster, f"{prefix}-{uuid.uuid4().hex[:8]}")
    for _ in range(count):
        ledger.increment(f"{region}-1")
    placed = placement_of(cluster, "Counter", ledger.name)
    assert placed is not None and placed.standby, placed
    assert cluster.node(placed.owner).region == region
    return ledger, placed


def _elsewhere(cluster: Cluster, *regions: str) -> str:
    """A PoP outside `regions` (a client's entry point that stays up)."""
    return next(pop.name for pop in cluster.pops if pop.region not in regions)


def _wait_placement(cluster: Cluster, name: str, condition: Any, what: str) -> Any:
    return poll_until(
        lambda: (p := placement_of(cluster, "Counter", name)) is not None and condition(p) and p,
        timeout=15,
        interval=0.02,
        what=what,
    )


# -- issue 17 -----------------------------------------------------------------------------


def test_owner_then_its_promoted_successor_killed_loses_nothing(cluster: Cluster) -> None:
    """Sequence 1: kill the owner; the standby is promoted with a next standby that has no
    copy yet; kill the promoted owner the moment the promotion shows."""
    ledger, placed = _start(cluster, "london", "successor")
    cluster.kill(placed.owner)
    promoted = _wait_placement(
        cluster, ledger.name, lambda p: p.epoch > placed.epoch, "the standby promoted"
    )
    assert (promoted.owner, promoted.standby) == (placed.standby, placed.owner)
    cluster.kill(promoted.owner)
    entry = _elsewhere(cluster, "london")
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 1.0)
    cluster.start(placed.owner)
    cluster.start(promoted.owner)
    ledger.check_after_recovery(entry)


def test_standby_then_idle_owner_killed_loses_nothing(cluster: Cluster) -> None:
    """Sequence 2: kill the standby (a next standby is named, with no copy); kill the idle
    owner as soon as the next standby shows."""
    ledger, placed = _start(cluster, "tokyo", "standby-first")
    cluster.kill(placed.standby)
    _wait_placement(
        cluster,
        ledger.name,
        lambda p: p.next_standby or p.standby != placed.standby,
        "a next standby named",
    )
    cluster.kill(placed.owner)
    entry = _elsewhere(cluster, "tokyo")
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 1.0)
    cluster.start(placed.owner)
    cluster.start(placed.standby)
    ledger.check_after_recovery(entry)


def test_owner_crash_then_its_region_cut_off_loses_nothing(cluster: Cluster) -> None:
    """Sequence 3 (and issue 10's first failure): kill the owner; once its site-mate is
    promoted, cut the region off from every other region without killing anything more.
    The object must not move to a node outside the region that never confirmed a copy."""
    ledger, placed = _start(cluster, "london", "crash-then-cut")
    cluster.kill(placed.owner)
    _wait_placement(cluster, ledger.name, lambda p: p.epoch > placed.epoch, "the promotion")
    for other in ("us-east-1", "new-york", "tokyo"):
        partition(cluster, "london", other)
    entry = _elsewhere(cluster, "london")
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 2.0)
    during = placement_of(cluster, "Counter", ledger.name)
    assert during is not None
    clear_faults(cluster)
    cluster.start(placed.owner)
    final = ledger.check_after_recovery(entry)
    print(f"during the cut: owner {during.owner} epoch {during.epoch}; count {final}")


def test_a_restarted_stale_standby_never_overwrites_the_current_copy(cluster: Cluster) -> None:
    """Sequence 4: the standby is killed and restarted with an old copy while the owner
    acknowledges more on a new standby; cuts make the control plane point back at the
    stale node; the owner acknowledges more and is killed."""
    ledger, placed = _start(cluster, "new-york", "stale-copy")
    stale = placed.standby
    cluster.kill(stale)
    moved = _wait_placement(
        cluster,
        ledger.name,
        lambda p: p.standby not in ("", stale),
        "a new standby confirmed",
    )
    for _ in range(15):
        ledger.increment(placed.owner)
    cluster.start(stale)  # its copy stops at the 20th increment
    # Cut the owner from its new standby's region: the owner must find another copy.
    partition(cluster, "new-york", cluster.node(moved.standby).region)
    for _ in range(10):
        ledger.increment(placed.owner, timeout=15)
    pointed = placement_of(cluster, "Counter", ledger.name)
    assert pointed is not None
    cluster.kill(placed.owner)
    entry = _elsewhere(cluster, "new-york", cluster.node(moved.standby).region)
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 1.0)
    clear_faults(cluster)
    cluster.start(placed.owner)
    final = ledger.check_after_recovery(entry)
    print(f"standby before the kill: {pointed.standby} (stale node {stale}); count {final}")


# -- issue 10 -----------------------------------------------------------------------------


def test_standby_restarted_then_owner_killed_promotes_only_a_current_copy(
    cluster: Cluster,
) -> None:
    """Issue 10's second failure: the standby was killed and restarted earlier (the owner
    carried on with another copy); then the owner is killed."""
    ledger, placed = _start(cluster, "tokyo", "restarted-standby")
    cluster.kill(placed.standby)
    _wait_placement(
        cluster,
        ledger.name,
        lambda p: p.standby not in ("", placed.standby),
        "a new standby confirmed",
    )
    for _ in range(10):
        ledger.increment(placed.owner)
    cluster.start(placed.standby)
    for _ in range(10):
        ledger.increment(placed.owner)
    cluster.kill(placed.owner)
    entry = _elsewhere(cluster, "tokyo")
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 1.0)
    cluster.start(placed.owner)
    ledger.check_after_recovery(entry)


def test_owner_and_standby_killed_in_a_chain_lose_nothing(cluster: Cluster) -> None:
    """Issue 10: the standby, then (a few seconds later) the owner."""
    ledger, placed = _start(cluster, "new-york", "chain")
    cluster.kill(placed.standby)
    # The owner dies once the control plane has noticed the standby is down (its lease
    # lapsed: ~2 s), as in the run that found it.
    poll_until(lambda: placed.standby not in healthy(cluster), timeout=5, what="standby unhealthy")
    cluster.kill(placed.owner)
    entry = _elsewhere(cluster, "new-york")
    ledger.probe_for(entry, FAILOVER_WINDOW_S + 1.0)
    cluster.start(placed.standby)
    cluster.start(placed.owner)
    ledger.check_after_recovery(entry)
