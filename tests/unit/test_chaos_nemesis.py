"""The nemesis schedule is a pure function of (seed, duration, fault kinds, topology)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import Any, cast

import pytest

from edgectl.chaos import nemesis
from edgectl.chaos.cli import parse_seeds
from edgectl.chaos.nemesis import (
    CONTROL_PLANE_FAULTS,
    FAULT_KINDS,
    NETWORK,
    OBJECT_KILLS,
    ORIGIN_FAULTS,
    POP_KILLS,
    PlanTopology,
    Schedule,
    heal_by_s,
    parse_faults,
    plan,
)
from edgectl.launcher import ClusterError
from edgepop.topology import parse_topology

TOPOLOGY = PlanTopology.of(
    parse_topology(
        {
            "regions": [
                {"name": "us-east-1"},
                {"name": "new-york", "pop_nodes": 2},
                {"name": "london", "pop_nodes": 2},
                {"name": "tokyo", "pop_nodes": 2},
            ]
        }
    ),
    ["counter-0", "counter-1", "counter-2", "counter-3"],
)
SEEDS = range(1, 41)
DURATIONS = (30.0, 60.0, 100.0)


def _all(seeds: range = SEEDS) -> list[Schedule]:
    return [plan(seed, duration, FAULT_KINDS, TOPOLOGY) for seed in seeds for duration in DURATIONS]


def test_the_plan_topology_names_regions_pops_and_objects() -> None:
    assert TOPOLOGY.origin_region == "us-east-1"
    assert TOPOLOGY.pop_regions == ("new-york", "london", "tokyo")
    assert TOPOLOGY.pops == (
        "new-york-1",
        "new-york-2",
        "london-1",
        "london-2",
        "tokyo-1",
        "tokyo-2",
    )


def test_the_same_seed_gives_the_same_schedule() -> None:
    for seed in (1, 7, 20):
        first = plan(seed, 60.0, FAULT_KINDS, TOPOLOGY)
        again = plan(seed, 60.0, FAULT_KINDS, TOPOLOGY)
        assert first == again
        assert first.lines() == again.lines()
        # The order --faults lists kinds in does not change the schedule.
        assert plan(seed, 60.0, tuple(reversed(FAULT_KINDS)), TOPOLOGY).steps == first.steps


def test_different_seeds_give_different_schedules() -> None:
    schedules = {plan(seed, 60.0, FAULT_KINDS, TOPOLOGY).steps for seed in SEEDS}
    assert len(schedules) == len(SEEDS)


def test_every_fault_is_healed_well_before_the_end() -> None:
    for schedule in _all():
        assert schedule.steps, f"seed {schedule.seed}: an empty schedule"
        assert schedule.heal_by_s <= 0.85 * schedule.duration_s
        assert schedule.heal_by_s <= schedule.duration_s - nemesis.HEAL_QUIET_S_MIN
        for step in schedule.steps:
            assert step.at_s >= nemesis.warmup_s(schedule.duration_s)
            assert step.at_s < step.until_s <= schedule.heal_by_s, step
            if step.kind == "kill-control-plane":
                # Its restart too.
                assert step.until_s + nemesis.CONTROL_PLANE_RESTART_S <= schedule.heal_by_s


def test_heal_leaves_at_least_fifteen_percent_or_the_minimum() -> None:
    assert heal_by_s(100.0) == pytest.approx(85.0)
    assert heal_by_s(20.0) == pytest.approx(15.0)


def test_kinds_are_restricted_by_the_fault_list() -> None:
    for kinds in (("kill-chain",), ("isolate-region", "delay"), ("kill-control-plane", "loss")):
        for seed in SEEDS:
            schedule = plan(seed, 60.0, kinds, TOPOLOGY)
            assert schedule.steps
            assert {step.kind for step in schedule.steps} <= set(kinds)
    assert plan(1, 60.0, (), TOPOLOGY).steps == ()


def test_the_full_mix_uses_every_kind_over_a_few_seeds() -> None:
    used = {step.kind for schedule in _all(range(1, 11)) for step in schedule.steps}
    assert used == set(FAULT_KINDS)


def test_steps_that_touch_the_same_thing_never_overlap() -> None:
    for schedule in _all():
        for a, b in itertools.combinations(schedule.steps, 2):
            if not (a.at_s < b.until_s and b.at_s < a.until_s):
                continue
            assert not (a.kind in POP_KILLS and b.kind in POP_KILLS), (a, b)
            assert not (a.kind in ORIGIN_FAULTS and b.kind in ORIGIN_FAULTS), (a, b)
            assert not (a.links(TOPOLOGY) & b.links(TOPOLOGY)), (a, b)


def test_nothing_changes_while_the_control_plane_is_down_or_frozen() -> None:
    for schedule in _all():
        for cp in (step for step in schedule.steps if step.kind in CONTROL_PLANE_FAULTS):
            start, end = nemesis._span(cp)
            for other in schedule.steps:
                if other is cp or not (other.at_s < end and start < other.until_s):
                    continue
                # Only a network fault already in force, healed after the restart.
                assert other.kind in NETWORK, (cp, other)
                assert other.at_s < start and other.until_s > end, (cp, other)


def test_targets_come_from_the_topology() -> None:
    for schedule in _all():
        for step in schedule.steps:
            if step.kind in (*OBJECT_KILLS, "pause-owner"):
                assert step.object in TOPOLOGY.objects
            if step.kind == "kill-pop":
                assert step.node in TOPOLOGY.pops
            if step.kind == "isolate-region":
                assert step.regions[0] in TOPOLOGY.pop_regions
            if step.kind == "partition-regions":
                assert set(step.regions) <= set(TOPOLOGY.pop_regions)
                assert step.regions[0] != step.regions[1]
            if step.kind == "partition-origin":
                assert step.regions[1] == TOPOLOGY.origin_region


def test_an_isolated_region_is_cut_from_every_other_region_both_ways() -> None:
    step = nemesis.Step(at_s=5.0, until_s=9.0, kind="isolate-region", regions=("london",))
    requests = step.set_requests(TOPOLOGY)
    assert {(r.from_region, r.to_region) for r in requests} == {
        ("london", "us-east-1"),
        ("london", "new-york"),
        ("london", "tokyo"),
    }
    assert all(r.partitioned and not r.one_way for r in requests)
    assert len(step.links(TOPOLOGY)) == 6
    clears = step.clear_requests(TOPOLOGY)
    assert [(c.from_region, c.to_region) for c in clears] == [
        (r.from_region, r.to_region) for r in requests
    ]


def test_a_one_way_partition_cuts_one_direction() -> None:
    step = nemesis.Step(
        at_s=5.0, until_s=9.0, kind="partition-one-way", regions=("tokyo", "us-east-1")
    )
    (request,) = step.set_requests(TOPOLOGY)
    assert request.partitioned and request.one_way
    assert step.links(TOPOLOGY) == frozenset({("tokyo", "us-east-1")})
    (clear,) = step.clear_requests(TOPOLOGY)
    assert clear.one_way


def test_link_faults_carry_their_seeded_strength() -> None:
    for schedule in _all():
        for step in schedule.steps:
            request = step.set_requests(TOPOLOGY)[0] if step.kind in NETWORK else None
            if step.kind == "delay":
                assert request is not None and request.delay_ms == step.delay_ms > 0
            if step.kind == "jitter":
                assert request is not None and request.jitter_ms == step.jitter_ms > 0
            if step.kind == "loss":
                assert request is not None and 0 < request.loss == step.loss < 1


def test_parse_faults_takes_kinds_and_groups() -> None:
    assert parse_faults("all") == FAULT_KINDS
    assert parse_faults("kill-chain, delay") == ("kill-chain", "delay")
    assert parse_faults("delay,kill-chain,delay") == ("kill-chain", "delay")
    assert set(parse_faults("partitions")) == set(nemesis.PARTITIONS)
    assert set(parse_faults("object-kills,kill-pop")) == {*OBJECT_KILLS, "kill-pop"}
    with pytest.raises(ValueError, match="unknown fault kind 'kill-everything'"):
        parse_faults("kill-chain,kill-everything")
    with pytest.raises(ValueError, match="no fault kinds"):
        parse_faults(" , ")


def test_step_descriptions_name_kind_and_target() -> None:
    chain = nemesis.Step(at_s=1, until_s=2, kind="kill-chain", object="counter-2")
    assert chain.describe() == "kill-chain counter-2"
    pause = nemesis.Step(at_s=1, until_s=2, kind="pause-owner", object="counter-1")
    assert pause.describe() == "pause-owner counter-1"
    assert nemesis.Step(at_s=1, until_s=2, kind="pause-origin").describe() == "pause-origin"
    frozen_cp = nemesis.Step(at_s=1, until_s=2, kind="pause-control-plane")
    assert frozen_cp.describe() == "pause-control-plane"
    delay = nemesis.Step(at_s=1, until_s=2, kind="delay", regions=("tokyo", "london"), delay_ms=150)
    assert delay.describe() == "delay +150 ms tokyo <-> london"
    disk = nemesis.Step(at_s=1, until_s=2, kind="disk-owner", object="counter-3")
    assert disk.describe() == "disk-owner counter-3"
    assert nemesis.Step(at_s=1, until_s=2, kind="disk-origin").describe() == "disk-origin"


def test_the_ci_seeds_use_every_fault_kind() -> None:
    # Seeds CI runs in tests/integration/test_chaos.py (kept in step by hand: importing
    # that module would start nothing, but it belongs to the cluster tests).
    ci_seeds, ci_duration_s = (21, 75, 95), 36.0
    used = {
        step.kind
        for seed in ci_seeds
        for step in plan(seed, ci_duration_s, FAULT_KINDS, TOPOLOGY).steps
    }
    assert used == set(FAULT_KINDS)
    # And an owner and the control plane each frozen past the 2 s lease.
    long_pauses = {
        step.kind
        for seed in ci_seeds
        for step in plan(seed, ci_duration_s, FAULT_KINDS, TOPOLOGY).steps
        if step.kind in nemesis.PAUSES and step.until_s - step.at_s > 2.5
    }
    assert {"pause-owner", "pause-control-plane"} <= long_pauses


def test_seeds_are_a_count_or_a_list() -> None:
    assert parse_seeds("3") == [1, 2, 3]
    assert parse_seeds("3,7,10-12") == [3, 7, 10, 11, 12]
    assert parse_seeds("5, 5,4-5") == [5, 4]
    for bad in ("0", "a", "3-1", "1,,x", "-2"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_pauses_last_from_under_the_lease_to_well_past_it() -> None:
    pauses = [
        step
        for schedule in _all(range(1, 41))
        for step in schedule.steps
        if step.kind in nemesis.PAUSES
    ]
    assert {step.kind for step in pauses} == set(nemesis.PAUSES)
    lengths = [step.until_s - step.at_s for step in pauses]
    assert all(nemesis.PAUSE_S[0] <= length <= nemesis.PAUSE_S[1] for length in lengths)
    # Both sides of the 2 s lease: calls that only wait, and a failover during the pause.
    assert min(lengths) < 2.0 < max(lengths)


def test_a_paused_owner_never_overlaps_a_pop_kill_nor_a_paused_origin_an_origin_kill() -> None:
    topo = TOPOLOGY
    pause = nemesis.Step(at_s=10, until_s=14, kind="pause-owner", object="counter-1")
    kill = nemesis.Step(at_s=12, until_s=15, kind="kill-pop", node="tokyo-1")
    assert nemesis._conflict(pause, kill, topo)
    frozen = nemesis.Step(at_s=10, until_s=14, kind="pause-origin")
    killed = nemesis.Step(at_s=12, until_s=13, kind="kill-origin")
    assert nemesis._conflict(frozen, killed, topo)
    # Different things: a paused owner and a frozen origin may overlap.
    assert not nemesis._conflict(pause, frozen, topo)
    cp = nemesis.Step(at_s=11, until_s=12, kind="kill-control-plane")
    assert nemesis._conflict(pause, cp, topo) and nemesis._conflict(frozen, cp, topo)


@dataclass
class _Node:
    name: str
    role: str


class _RegisteringCluster:
    """`Cluster.start` as the nemesis sees it: a node's start returns once it registered,
    which needs the control plane up (else it times out, as the real one does)."""

    REGISTER_TIMEOUT_S = 5.0

    def __init__(self) -> None:
        self.down = {"control-plane", "tokyo-2"}
        self.control_plane_up = threading.Event()
        self.pop_starting = threading.Event()

    def node(self, name: str) -> _Node:
        return _Node(name, "control_plane" if name == "control-plane" else "pop")

    def alive(self, name: str) -> bool:
        return name not in self.down

    def start(self, name: str, timeout: float) -> None:
        if name == "control-plane":
            self.control_plane_up.set()
        else:
            self.pop_starting.set()
            if not self.control_plane_up.wait(self.REGISTER_TIMEOUT_S):
                raise ClusterError(f"{name} not registered")
        self.down.discard(name)


def test_the_control_plane_restarts_while_a_node_waits_for_it_to_register() -> None:
    # Seed 40 in CI: a PoP restarted just before the control plane was killed waited 30 s
    # in `start` for it, and the control plane's restart queued behind that one.
    cluster = _RegisteringCluster()
    schedule = plan(1, 30.0, FAULT_KINDS, TOPOLOGY)
    chaos = nemesis.Nemesis(cast(Any, cluster), schedule, nemesis.Clock(), cast(Any, None), "token")

    async def restarts() -> None:
        pop = asyncio.create_task(chaos.restart("tokyo-2"))
        assert await asyncio.to_thread(cluster.pop_starting.wait, 5.0)
        # Well under the node's register timeout: the control plane did not wait for it.
        await asyncio.wait_for(chaos.restart("control-plane"), timeout=2.0)
        await asyncio.wait_for(pop, timeout=2.0)

    try:
        asyncio.run(restarts())
    finally:
        chaos.close()
    assert cluster.down == set() and chaos.log.skipped == []
