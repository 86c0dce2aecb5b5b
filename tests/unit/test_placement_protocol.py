"""The failover protocol as a state machine: no interleaving loses an acknowledged write.

The control plane's rules are the real pure functions (`control_plane.placement`); the
owner's side — activation, copies to a standby, acknowledging writes, switching standbys
— is a model of what `pop_node/objects/host.py` and the committer do. Hypothesis drives
them through kills, restarts, nodes cut off from the control plane, failed copies and
commits lost mid-flight, and after every step checks the rule the protocol exists for:
every node the control plane could hand the object to (`Placement.holders`) holds every
acknowledged write. With the planted bug (`promote_unsynced`) the search must find a
history that breaks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from control_plane import placement as rules
from control_plane.placement import Placement
from control_plane.registry import NodeEntry
from edgepop.topology import default_topology

TOPOLOGY = default_topology()
NODES = ["tokyo-1", "tokyo-2", "london-1", "london-2"]
ENTRIES = {name: NodeEntry(name, name.rsplit("-", 1)[0], "pop", f"{name}:1") for name in NODES}


@dataclass
class Copy:
    """One node's stored copy of the object: the newest epoch it saw and its commits."""

    epoch: int = 0
    writes: tuple[int, ...] = ()


@dataclass
class Instance:
    node: str
    epoch: int
    target: str  # the node each commit is replicated to before it is acknowledged


class FailoverProtocol(RuleBasedStateMachine):
    promote_unsynced = False

    def __init__(self) -> None:
        super().__init__()
        self.dead: set[str] = set()
        # Lease lapsed (dead, or cut off from the control plane) for lease + margin.
        self.gone: set[str] = set()
        self.copies = {name: Copy() for name in NODES}
        self.acknowledged: set[int] = set()
        self.next_write = 1
        placed = rules.place(TOPOLOGY, list(ENTRIES.values()), "Counter", "ab" * 32, "tokyo")
        assert placed is not None
        self.placement: Placement = placed
        self.instance: Instance | None = None

    # -- the world -----------------------------------------------------------------------

    def _healthy(self) -> list[NodeEntry]:
        return [ENTRIES[name] for name in NODES if name not in self.dead | self.gone]

    @rule(node=st.sampled_from(NODES))
    def kill(self, node: str) -> None:
        self.dead.add(node)
        self.gone.add(node)
        if self.instance is not None and self.instance.node == node:
            self.instance = None

    @rule(node=st.sampled_from(NODES))
    def cut_off_from_the_control_plane(self, node: str) -> None:
        # Its lease lapses: its instance stops before the control plane moves anything.
        self.gone.add(node)
        if self.instance is not None and self.instance.node == node:
            self.instance = None

    @rule(node=st.sampled_from(NODES))
    def restart_or_heal(self, node: str) -> None:
        self.dead.discard(node)
        self.gone.discard(node)

    @rule()
    def control_plane_checks_leases(self) -> None:
        self.placement = rules.repair(
            TOPOLOGY,
            self.placement,
            self._healthy(),
            frozenset(self.gone),
            promote_unsynced=self.promote_unsynced,
        )

    # -- the owner -----------------------------------------------------------------------

    def _full_copy(self, source: str, target: str, epoch: int, reachable: bool) -> bool:
        """The owner sends its whole copy; a copy from an older epoch is refused."""
        if target in self.dead or not reachable or self.copies[target].epoch > epoch:
            return False
        self.copies[target] = Copy(epoch, self.copies[source].writes)
        return True

    @rule(next_reachable=st.booleans(), standby_reachable=st.booleans())
    def owner_activates(self, next_reachable: bool, standby_reachable: bool) -> None:
        owner, epoch = self.placement.owner, self.placement.epoch
        if self.instance is not None or owner in self.gone:
            return
        copy = self.copies[owner]
        if copy.epoch > epoch:
            return  # storage refuses the claim (placement behind storage)
        synced_seq = 0 if self.promote_unsynced else self.placement.synced_seq
        if len(copy.writes) < synced_seq:
            return  # the stale-copy check refuses to serve
        self.copies[owner] = Copy(epoch, copy.writes)
        tried = []
        for name, reachable, confirm in (
            (self.placement.next_standby, next_reachable, True),
            (self.placement.standby, standby_reachable, False),
        ):
            if not name or name == owner:
                continue
            tried.append(name)
            if self._full_copy(owner, name, epoch, reachable):
                if confirm:
                    self.placement = rules.confirm_standby(
                        self.placement,
                        owner=owner,
                        epoch=epoch,
                        standby=name,
                        seq=len(self.copies[owner].writes),
                    )
                self.instance = Instance(owner, epoch, name)
                return
        if not tried:
            self.instance = Instance(owner, epoch, "")
            return
        self.placement = rules.replace_standby(TOPOLOGY, self.placement, self._healthy(), tried[0])

    @rule(reachable=st.booleans())
    def owner_switches_to_its_next_standby(self, reachable: bool) -> None:
        instance = self.instance
        name = self.placement.next_standby
        if instance is None or not name or name == instance.target:
            return
        if (instance.node, instance.epoch) != (self.placement.owner, self.placement.epoch):
            return
        if self._full_copy(instance.node, name, instance.epoch, reachable):
            self.placement = rules.confirm_standby(
                self.placement,
                owner=instance.node,
                epoch=instance.epoch,
                standby=name,
                seq=len(self.copies[instance.node].writes),
            )
            instance.target = name

    @rule(
        local=st.booleans(),
        remote=st.booleans(),
    )
    def owner_commits_a_call(self, local: bool, remote: bool) -> None:
        """One commit: local fsync and the standby's copy in parallel; acknowledged only
        when both landed. Either may be lost (a crash, a cut link)."""
        instance = self.instance
        if instance is None:
            return
        owner, epoch, target = instance.node, instance.epoch, instance.target
        write = self.next_write
        self.next_write += 1
        before = self.copies[owner].writes
        landed_local = local
        if landed_local:
            self.copies[owner] = Copy(epoch, (*before, write))
        landed_remote = True
        if target:
            standby = self.copies[target]
            if target in self.dead or not remote or standby.epoch > epoch:
                landed_remote = False
            elif standby.writes != before:
                # Behind: it gets the whole object (what the owner will hold).
                self.copies[target] = Copy(epoch, (*before, write))
            else:
                self.copies[target] = Copy(epoch, (*before, write))
        if landed_local and landed_remote:
            self.acknowledged.add(write)
        else:
            self.instance = None  # a failed commit breaks the instance

    # -- the rule --------------------------------------------------------------------------

    @invariant()
    def every_possible_owner_holds_every_acknowledged_write(self) -> None:
        for holder in self.placement.holders:
            missing = self.acknowledged - set(self.copies[holder].writes)
            assert not missing, f"{holder} lacks acknowledged writes {sorted(missing)}"

    @invariant()
    def owner_and_standbys_are_distinct(self) -> None:
        placement = self.placement
        assert placement.owner not in (placement.standby, placement.next_standby)


@pytest.fixture(autouse=True)
def same_histories_whatever_else_is_imported(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hypothesis (pinned 6.170) mixes literals of every local module imported so far into
    what it draws, so a derandomized search tried other histories depending on which
    tests had run before it in the same process: the planted bug was found in CI's order
    and missed alone (a code change elsewhere could flip it too). Without those literals
    the search is the same in every process. Private API of the pinned version."""
    monkeypatch.setattr(providers, "_get_local_constants", lambda: Constants())
    providers.CONSTANTS_CACHE.cache.clear()
    yield
    providers.CONSTANTS_CACHE.cache.clear()


# Derandomized: the same histories on every run, so a failure replays.
PROTOCOL_SETTINGS = settings(
    max_examples=500,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_no_sequence_of_faults_loses_an_acknowledged_write() -> None:
    run_state_machine_as_test(FailoverProtocol, settings=PROTOCOL_SETTINGS)


class BuggyFailoverProtocol(FailoverProtocol):
    promote_unsynced = True


def test_the_planted_bug_loses_acknowledged_writes_and_the_search_finds_it() -> None:
    with pytest.raises(AssertionError, match="lacks acknowledged writes"):
        run_state_machine_as_test(
            BuggyFailoverProtocol,
            # Found is enough: no time spent shrinking the counterexample.
            settings=settings(PROTOCOL_SETTINGS, max_examples=3000, phases=[Phase.generate]),
        )
