"""The nemesis of a fault run: a seeded schedule of faults, then its execution.

Two halves. `plan` is pure: the schedule is a function of (seed, duration, fault kinds,
topology) and nothing else, so a seed names one schedule for ever and a failing seed
can be run again as it was. `Nemesis` executes a schedule against a live cluster:
targets that depend on the live state ("the current owner of counter-2", "its
standby") are resolved when the step fires, from `ControlPlane.ListPlacements`.

What the plan guarantees (tested in tests/unit/test_chaos_nemesis.py):
- every fault ends (healed, or its killed nodes restarted) by `heal_by_s`, which leaves at
  least 15% of the run (and `HEAL_QUIET_S_MIN`) for the cluster to settle before the
  final state is read;
- two steps that touch one thing never overlap: one PoP-kill step at a time (a chain
  already kills two nodes), one fault per directed region pair (so healing one fault
  cannot heal another), one origin kill at a time. Planned, that is: a restart that runs
  late (an origin replaying its log under load took a second more than planned) can
  still be under way when the next kill of that node fires, which then kills it while
  it recovers. Kept, as the harsher fault it is (a crash during recovery); the report's
  fault table shows the overlap;
- while the control plane is dead or frozen nothing else may change: faults are set and
  cleared through it, a restarted node must register with it, and owner targets are read
  from it. A control-plane kill or pause therefore overlaps only network faults that
  start before it and end after it (and its restart);
- faults overlap otherwise: the compound sequences that broke failover (an owner killed,
  then its region cut off) are what the schedule is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import objects_pb2
from edgectl.chaos.diskfault import DiskFaults
from edgectl.chaos.history import FaultEvent, split_object_ref
from edgectl.launcher import Cluster, ClusterError
from edgepop import objectid, retry
from edgepop.faults import LOSS_MAX
from edgepop.topology import Topology

# -- fault kinds -------------------------------------------------------------------------

OBJECT_KILLS = ("kill-owner", "kill-standby", "kill-chain", "kill-owner-and-standby")
NODE_KILLS = ("kill-origin", "kill-control-plane", "kill-pop")
PARTITIONS = ("isolate-region", "partition-regions", "partition-origin", "partition-one-way")
LINK_FAULTS = ("delay", "jitter", "loss")
# SIGSTOP, then SIGCONT: a process frozen past its leases that wakes up believing them
# (Jepsen's process pause). Its sockets stay open, so peers see silence, not a close.
PAUSES = ("pause-owner", "pause-origin", "pause-control-plane")
# The node's disk refuses to sync (edgectl/chaos/diskfault.c): its durable commits fail
# with EIO while it lasts, as on a failing disk; the process runs on.
DISK_FAULTS = ("disk-origin", "disk-owner")
FAULT_KINDS: tuple[str, ...] = (
    *OBJECT_KILLS,
    *NODE_KILLS,
    *PARTITIONS,
    *LINK_FAULTS,
    *PAUSES,
    *DISK_FAULTS,
)
# Names for several kinds at once in --faults.
FAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "all": FAULT_KINDS,
    "kills": (*OBJECT_KILLS, *NODE_KILLS),
    "object-kills": OBJECT_KILLS,
    "partitions": PARTITIONS,
    "network": (*PARTITIONS, *LINK_FAULTS),
    "pauses": PAUSES,
    "disk": DISK_FAULTS,
}
# How often each kind is drawn: the object kills (the sequences that lost writes) most,
# then region isolation; link faults are background noise.
KIND_WEIGHTS: dict[str, float] = {
    **dict.fromkeys(OBJECT_KILLS, 3.0),
    **dict.fromkeys(NODE_KILLS, 1.5),
    "isolate-region": 2.0,
    **dict.fromkeys(("partition-regions", "partition-origin", "partition-one-way"), 1.0),
    **dict.fromkeys(LINK_FAULTS, 1.0),
    "pause-owner": 2.0,
    "pause-origin": 1.0,
    "pause-control-plane": 1.0,
    **dict.fromkeys(DISK_FAULTS, 1.0),
}
# Kills, pauses and disk faults of PoPs: at most one such step runs at a time (a chain
# already kills two). A step's span counts a PoP restart after it, whether or not it
# restarts anything (a pause or a disk fault does not): room, not a requirement.
POP_KILLS = frozenset({*OBJECT_KILLS, "kill-pop", "pause-owner", "disk-owner"})
# Faults of the origin's process: one at a time (a restart under a refusing disk would
# fail to start, which is not the fault drawn).
ORIGIN_FAULTS = frozenset({"kill-origin", "pause-origin", "disk-origin"})
# Faults aimed at an object's current owner (resolved when the step fires).
OWNER_FAULTS = frozenset({*OBJECT_KILLS, "pause-owner", "disk-owner"})
# The control plane dead or frozen: nothing else may change meanwhile (see above).
CONTROL_PLANE_FAULTS = frozenset({"kill-control-plane", "pause-control-plane"})
NETWORK = frozenset({*PARTITIONS, *LINK_FAULTS})

# -- timing of a schedule (seconds) ------------------------------------------------------

# Clients place their objects and settle into the load before the first fault.
WARMUP_S_MIN = 3.0
WARMUP_FRACTION = 0.08
# Everything is healed this long before the end (the larger of the two), so restarted
# nodes rejoin, objects settle and replicas catch up while the clients still run.
HEAL_FRACTION = 0.15
HEAL_QUIET_S_MIN = 5.0
# Between the starts of consecutive steps: shorter than most faults, so they overlap.
STEP_GAP_S = (1.0, 5.0)
# A chain waits this long at most for the control plane to promote the standby (lease
# 2.5 s + failover margin 0.5 s + the lease checker's period, with room for a busy machine).
CHAIN_PROMOTION_WAIT_S_MAX = 8.0
# The control plane takes about a second to come back (spawned, not forked); nothing else
# may change in that time either.
CONTROL_PLANE_RESTART_S = 3.0
# A PoP restart (spawned, SERVING, registered) takes about a second on a busy machine, one
# at a time: the next PoP kill waits for it, else it finds its target still down.
POP_RESTART_S = 1.5
# A candidate that fits nowhere before heal_by is dropped; after this many in a row the
# schedule is full.
PLACEMENT_MISSES_MAX = 24

# Seeded ranges of each kind: how long it lasts and how strong it is.
KILL_DOWN_S = (2.0, 8.0)
CHAIN_DOWN_S = (2.0, 6.0)
PAIR_GAP_S = (1.0, 4.0)  # kill-owner-and-standby: seconds between the two kills
ORIGIN_DOWN_S = (1.0, 5.0)
# Shorter than the 2.5 s lease interrupts nothing; longer lapses every lease.
CONTROL_PLANE_DOWN_S = (0.5, 4.0)
# Frozen from below the 2.5 s lease (calls wait) to well past it (the standby takes over
# while the owner sleeps, then the owner wakes up).
PAUSE_S = (0.5, 6.0)
# From a moment (a few commits fail) to past the clients' 3 s attempt timeout.
DISK_S = (1.0, 6.0)
PARTITION_S = (2.0, 8.0)
ISOLATE_S = (3.0, 8.0)
LINK_FAULT_S = (2.0, 6.0)
DELAY_MS = (50.0, 400.0)
JITTER_MS = (10.0, 60.0)
LOSS = (0.05, 0.25)
assert LOSS[1] <= LOSS_MAX


def parse_faults(text: str) -> tuple[str, ...]:
    """Fault kinds from a comma-separated list of kinds and groups (`all`, `kills`, ...),
    in FAULT_KINDS order; ValueError naming what is unknown."""
    wanted: set[str] = set()
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name in FAULT_GROUPS:
            wanted.update(FAULT_GROUPS[name])
        elif name in FAULT_KINDS:
            wanted.add(name)
        else:
            raise ValueError(
                f"unknown fault kind {name!r}; kinds: {', '.join(FAULT_KINDS)}; "
                f"groups: {', '.join(FAULT_GROUPS)}"
            )
    if not wanted:
        raise ValueError("no fault kinds given")
    return tuple(kind for kind in FAULT_KINDS if kind in wanted)


# -- the plan (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlanTopology:
    """What a schedule may target: regions, PoP names and the objects the clients use."""

    origin_region: str
    pop_regions: tuple[str, ...]
    pops: tuple[str, ...]
    objects: tuple[str, ...]

    @classmethod
    def of(cls, topology: Topology, objects: Sequence[str]) -> PlanTopology:
        specs = topology.node_specs()
        return cls(
            origin_region=topology.origin_region,
            pop_regions=tuple(region.name for region in topology.pop_regions()),
            pops=tuple(spec.name for spec in specs if spec.role == "pop"),
            objects=tuple(objects),
        )


@dataclass(frozen=True)
class Step:
    """One fault: fires at `at_s`, healed (or its nodes restarted) at `until_s`.

    Targets by kind: `object` for kills of an object's owner/standby (resolved when the
    step fires); `node` for kill-pop; `regions` for network faults — (region,) for
    isolate-region, (a, b) for a pair (a -> b only for partition-one-way).
    """

    at_s: float
    until_s: float
    kind: str
    object: str = ""
    node: str = ""
    regions: tuple[str, ...] = ()
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    gap_s: float = 0.0  # kill-owner-and-standby: between the two kills

    def describe(self) -> str:
        """The step in words, as the report's fault timeline shows it."""
        if self.kind in OWNER_FAULTS:
            text = f"{self.kind} {self.object}"
            return text + (f" (standby {self.gap_s:.1f} s later)" if self.gap_s else "")
        if self.kind == "kill-pop":
            return f"kill-pop {self.node}"
        if self.kind in ("kill-origin", *CONTROL_PLANE_FAULTS, "pause-origin", "disk-origin"):
            return self.kind
        if self.kind == "isolate-region":
            return f"isolate-region {self.regions[0]}"
        arrow = " -> " if self.kind == "partition-one-way" else " <-> "
        pair = arrow.join(self.regions)
        if self.kind == "delay":
            return f"delay +{self.delay_ms:.0f} ms {pair}"
        if self.kind == "jitter":
            return f"jitter {self.jitter_ms:.0f} ms {pair}"
        if self.kind == "loss":
            return f"loss {self.loss:.0%} {pair}"
        return f"{self.kind} {pair}"

    def links(self, plan_topology: PlanTopology) -> frozenset[tuple[str, str]]:
        """The directed region pairs this step's fault is set on."""
        if self.kind not in NETWORK:
            return frozenset()
        if self.kind == "isolate-region":
            region = self.regions[0]
            others = [plan_topology.origin_region, *plan_topology.pop_regions]
            pairs = [(region, other) for other in others if other != region]
            return frozenset({*pairs, *((b, a) for a, b in pairs)})
        a, b = self.regions
        if self.kind == "partition-one-way":
            return frozenset({(a, b)})
        return frozenset({(a, b), (b, a)})

    def set_requests(self, plan_topology: PlanTopology) -> list[cp_pb2.SetLinkFaultRequest]:
        """The SetLinkFault calls that apply this network fault (one per pair)."""
        if self.kind == "isolate-region":
            region = self.regions[0]
            others = [plan_topology.origin_region, *plan_topology.pop_regions]
            return [
                cp_pb2.SetLinkFaultRequest(from_region=region, to_region=other, partitioned=True)
                for other in others
                if other != region
            ]
        a, b = self.regions
        request = cp_pb2.SetLinkFaultRequest(from_region=a, to_region=b)
        if self.kind in PARTITIONS:
            request.partitioned = True
            request.one_way = self.kind == "partition-one-way"
        elif self.kind == "delay":
            request.delay_ms = self.delay_ms
        elif self.kind == "jitter":
            request.jitter_ms = self.jitter_ms
        elif self.kind == "loss":
            request.loss = self.loss
        return [request]

    def clear_requests(self, plan_topology: PlanTopology) -> list[cp_pb2.ClearFaultsRequest]:
        """The ClearFaults calls that heal it (exact: no other step shares its pairs)."""
        return [
            cp_pb2.ClearFaultsRequest(
                from_region=request.from_region,
                to_region=request.to_region,
                one_way=request.one_way,
            )
            for request in self.set_requests(plan_topology)
        ]


@dataclass(frozen=True)
class Schedule:
    seed: int
    duration_s: float
    heal_by_s: float
    kinds: tuple[str, ...]
    topology: PlanTopology
    steps: tuple[Step, ...]

    def lines(self) -> list[str]:
        return [f"{step.at_s:6.1f}-{step.until_s:6.1f} s  {step.describe()}" for step in self.steps]


def warmup_s(duration_s: float) -> float:
    return max(WARMUP_S_MIN, WARMUP_FRACTION * duration_s)


def heal_by_s(duration_s: float) -> float:
    """When every fault must be healed: at least 15% (and HEAL_QUIET_S_MIN) before the end."""
    return duration_s - max(HEAL_FRACTION * duration_s, HEAL_QUIET_S_MIN)


def _uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    return round(rng.uniform(*bounds), 2)


def _draw(kind: str, at_s: float, rng: random.Random, topo: PlanTopology) -> Step:
    """A step of `kind` starting at `at_s`, with seeded targets, strength and length."""
    step = Step(at_s=at_s, until_s=at_s, kind=kind)
    if kind in OBJECT_KILLS:
        step = replace(step, object=rng.choice(topo.objects))
        if kind == "kill-chain":
            length = CHAIN_PROMOTION_WAIT_S_MAX + _uniform(rng, CHAIN_DOWN_S)
        elif kind == "kill-owner-and-standby":
            gap = _uniform(rng, PAIR_GAP_S)
            step = replace(step, gap_s=gap)
            length = gap + _uniform(rng, CHAIN_DOWN_S)
        else:
            length = _uniform(rng, KILL_DOWN_S)
    elif kind == "kill-pop":
        step = replace(step, node=rng.choice(topo.pops))
        length = _uniform(rng, KILL_DOWN_S)
    elif kind == "pause-owner":
        step = replace(step, object=rng.choice(topo.objects))
        length = _uniform(rng, PAUSE_S)
    elif kind == "disk-owner":
        step = replace(step, object=rng.choice(topo.objects))
        length = _uniform(rng, DISK_S)
    elif kind == "disk-origin":
        length = _uniform(rng, DISK_S)
    elif kind in ("pause-origin", "pause-control-plane"):
        length = _uniform(rng, PAUSE_S)
    elif kind == "kill-origin":
        length = _uniform(rng, ORIGIN_DOWN_S)
    elif kind == "kill-control-plane":
        length = _uniform(rng, CONTROL_PLANE_DOWN_S)
    elif kind == "isolate-region":
        step = replace(step, regions=(rng.choice(topo.pop_regions),))
        length = _uniform(rng, ISOLATE_S)
    elif kind == "partition-origin":
        step = replace(step, regions=(rng.choice(topo.pop_regions), topo.origin_region))
        length = _uniform(rng, PARTITION_S)
    else:
        # A pair of distinct regions (the origin region included, except for
        # partition-regions, which is PoP region against PoP region).
        pool = list(topo.pop_regions)
        if kind != "partition-regions":
            pool.append(topo.origin_region)
        a, b = rng.sample(sorted(pool), 2) if len(pool) >= 2 else (pool[0], topo.origin_region)
        step = replace(step, regions=(a, b))
        if kind == "delay":
            step = replace(step, delay_ms=_uniform(rng, DELAY_MS))
        elif kind == "jitter":
            step = replace(step, jitter_ms=_uniform(rng, JITTER_MS))
        elif kind == "loss":
            step = replace(step, loss=_uniform(rng, LOSS))
        length = _uniform(rng, LINK_FAULT_S if kind in LINK_FAULTS else PARTITION_S)
    return replace(step, until_s=round(at_s + length, 2))


def _span(step: Step) -> tuple[float, float]:
    """The time a step occupies: a kill also the restarts of its nodes."""
    end = step.until_s
    if step.kind == "kill-control-plane":
        end += CONTROL_PLANE_RESTART_S
    elif step.kind in ("kill-chain", "kill-owner-and-standby"):
        end += 2 * POP_RESTART_S
    elif step.kind in POP_KILLS:
        end += POP_RESTART_S
    return step.at_s, end


def _overlap(a: Step, b: Step) -> bool:
    a_start, a_end = _span(a)
    b_start, b_end = _span(b)
    return a_start < b_end and b_start < a_end


def _conflict(a: Step, b: Step, topo: PlanTopology) -> bool:
    """Whether two steps may not run as placed (see the module docstring)."""
    if not _overlap(a, b):
        return False
    if a.kind in CONTROL_PLANE_FAULTS or b.kind in CONTROL_PLANE_FAULTS:
        other = b if a.kind in CONTROL_PLANE_FAULTS else a
        if other.kind not in NETWORK:
            return True
        # A network fault may span the control plane's absence, never start or end in it.
        start, end = _span(a if other is b else b)
        return not (other.at_s < start and other.until_s > end)
    if a.kind in POP_KILLS and b.kind in POP_KILLS:
        return True
    if a.kind in ORIGIN_FAULTS and b.kind in ORIGIN_FAULTS:
        return True
    return bool(a.links(topo) & b.links(topo))


def _place(step: Step, placed: Sequence[Step], heal_by: float, topo: PlanTopology) -> Step | None:
    """`step` at the earliest start (its own, or just after a placed step) at which it
    conflicts with nothing and ends by `heal_by`; None when there is none."""
    length = step.until_s - step.at_s
    starts = sorted(
        {step.at_s, *(_span(other)[1] + 0.1 for other in placed if _span(other)[1] > step.at_s)}
    )
    for start in starts:
        moved = replace(step, at_s=round(start, 2), until_s=round(start + length, 2))
        if _span(moved)[1] > heal_by:
            return None
        if not any(_conflict(moved, other, topo) for other in placed):
            return moved
    return None


def plan(seed: int, duration_s: float, kinds: Sequence[str], topo: PlanTopology) -> Schedule:
    """The schedule of one run. Pure: the same arguments give the same schedule."""
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds: {unknown}")
    if not topo.objects and any(kind in OWNER_FAULTS for kind in kinds):
        raise ValueError("object kills need at least one object")
    # A string seed is hashed with SHA-512: the same on every platform and process.
    rng = random.Random(f"edgepop-chaos:{seed}")
    heal_by = heal_by_s(duration_s)
    cursor = warmup_s(duration_s)
    steps: list[Step] = []
    misses = 0
    ordered = sorted(kinds)  # the order --faults was written in does not matter
    weights = [KIND_WEIGHTS[kind] for kind in ordered]
    while kinds and cursor < heal_by and misses < PLACEMENT_MISSES_MAX:
        candidate = _draw(rng.choices(ordered, weights)[0], round(cursor, 2), rng, topo)
        placed = _place(candidate, steps, heal_by, topo)
        if placed is None:
            misses += 1
            continue
        misses = 0
        steps.append(placed)
        cursor = placed.at_s + rng.uniform(*STEP_GAP_S)
    steps.sort(key=lambda step: (step.at_s, step.kind))
    return Schedule(
        seed=seed,
        duration_s=duration_s,
        heal_by_s=heal_by,
        kinds=tuple(kinds),
        topology=topo,
        steps=tuple(steps),
    )


# -- execution ---------------------------------------------------------------------------

# ListPlacements / SetLinkFault / ClearFaults: the control plane is next door (us-east-1),
# so a second is plenty; a call that fails is tried again while the step allows.
ADMIN_TIMEOUT_S = 2.0
ADMIN_INTERVAL_S = 0.2
# How often a chain looks for the promoted owner.
PROMOTION_POLL_S = 0.05
# A restart (spawn + SERVING + registered) on a busy 2-core machine.
RESTART_TIMEOUT_S = 30.0
RESTART_TRIES = 3
# A node stays down at least this long, even when its step ran late.
DOWN_S_MIN = 1.0
# The final heal: how long to keep trying to reach the control plane.
HEAL_TIMEOUT_S = 60.0


class Clock:
    """Seconds since the run started, from one monotonic clock (shared with the clients)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def sleep_until(self, at_s: float) -> None:
        delay = at_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class NemesisLog:
    """What the nemesis did: the faults (history), and the steps it could not apply."""

    faults: list[FaultEvent] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    healed_s: float | None = None

    def active(self, now_s: float) -> list[FaultEvent]:
        return [
            fault
            for fault in self.faults
            if fault.start_s <= now_s and (fault.end_s is None or fault.end_s > now_s)
        ]


class Nemesis:
    """Runs a schedule against a cluster; `heal` restores everything at the end.

    Kills are SIGKILL through `Cluster.kill`; restarts go through `Cluster.start`, which
    blocks until the node is registered: one at a time on a worker thread, the control
    plane's on a thread of its own (a node restarted just before the control plane was
    killed waits in `start` for it to come back, and must not hold up its restart).
    Faults go through the control plane with the cluster token, each also given a
    duration slightly past its heal time, so that a fault heals on the nodes even if its
    ClearFaults never arrives. Disk faults go through `disk_faults`, the flag of the shim
    the cluster runs over (None: its steps are skipped, saying `disk_faults_missing`).
    """

    def __init__(
        self,
        cluster: Cluster,
        schedule: Schedule,
        clock: Clock,
        control_plane: cp_grpc.ControlPlaneStub,
        token: str,
        disk_faults: DiskFaults | None = None,
        disk_faults_missing: str = "",
    ) -> None:
        self.cluster = cluster
        self.disk_faults = disk_faults
        self.disk_faults_missing = disk_faults_missing
        self.schedule = schedule
        self.clock = clock
        self.control_plane = control_plane
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.log = NemesisLog()
        self._restarts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restart")
        self._control_plane_restarts = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="restart-control-plane"
        )
        # Directed region pairs partitioned now: a node of a region cut from the control
        # plane cannot register, so its restart waits for the cut to heal.
        self._cut: dict[tuple[str, str], int] = {}
        self._cut_changed = asyncio.Condition()
        # Nodes frozen now (SIGSTOP) and their pids: the heal resumes any still frozen.
        self._paused: dict[str, list[int]] = {}

    def close(self) -> None:
        self._restarts.shutdown(wait=True)
        self._control_plane_restarts.shutdown(wait=True)

    # -- running the schedule -------------------------------------------------------------

    async def run(self) -> None:
        """Fire every step at its time, wait for all of them, then heal (at heal_by)."""
        tasks = [asyncio.create_task(self._at(step)) for step in self.schedule.steps]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        await self.clock.sleep_until(self.schedule.heal_by_s)
        await self.heal()

    async def _at(self, step: Step) -> None:
        await self.clock.sleep_until(step.at_s)
        try:
            if step.kind in NETWORK:
                await self._network(step)
            elif step.kind in OBJECT_KILLS:
                await self._object_kill(step)
            elif step.kind in PAUSES:
                await self._pause(step)
            elif step.kind in DISK_FAULTS:
                await self._disk(step)
            else:
                await self._node_kill(step)
        except (grpc.RpcError, ClusterError) as error:
            self.log.skipped.append(f"{self.clock.now():.1f} s {step.describe()}: {error}")

    def _event(self, kind: str, targets: list[str], detail: str = "") -> FaultEvent:
        event = FaultEvent(kind=kind, targets=targets, start_s=self.clock.now(), detail=detail)
        self.log.faults.append(event)
        return event

    def _skip(self, step: Step, why: str) -> None:
        self.log.skipped.append(f"{self.clock.now():.1f} s {step.describe()}: {why}")

    # -- network faults -------------------------------------------------------------------

    async def _network(self, step: Step) -> None:
        topo = self.schedule.topology
        # Past the heal time by a margin: a safety net, the explicit clear comes first.
        lasting_s = max(1.0, step.until_s - self.clock.now()) + 2.0
        requests = step.set_requests(topo)
        for request in requests:
            request.duration_s = lasting_s
        await asyncio.gather(*(self._admin(self.control_plane.SetLinkFault, r) for r in requests))
        if step.kind in PARTITIONS:
            for pair in step.links(topo):
                self._cut[pair] = self._cut.get(pair, 0) + 1
        event = self._event(step.kind, list(step.regions), step.describe())
        try:
            await self.clock.sleep_until(step.until_s)
        finally:
            clears = step.clear_requests(topo)
            await asyncio.gather(*(self._admin(self.control_plane.ClearFaults, c) for c in clears))
            event.end_s = self.clock.now()
            if step.kind in PARTITIONS:
                async with self._cut_changed:
                    for pair in step.links(topo):
                        self._cut[pair] -= 1
                    self._cut_changed.notify_all()

    async def _admin(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """An admin call, tried again until it answers (for at most HEAL_TIMEOUT_S): a
        fault must be set and healed even through a moment of overload."""
        retrying = retry.until_answered(HEAL_TIMEOUT_S, ADMIN_INTERVAL_S)
        return await retrying(method, request, metadata=self.metadata, timeout=ADMIN_TIMEOUT_S)

    # -- kills ----------------------------------------------------------------------------

    async def _placement(self, ref: str) -> objects_pb2.Placement | None:
        wanted = objectid.id_from_name(*split_object_ref(ref)).hex()
        response: objects_pb2.ListPlacementsResponse = await self.control_plane.ListPlacements(
            objects_pb2.ListPlacementsRequest(), metadata=self.metadata, timeout=ADMIN_TIMEOUT_S
        )
        for placement in response.placements:
            if placement.id == wanted:
                return placement
        return None

    async def _kill(self, name: str) -> bool:
        """SIGKILL `name` if it runs; False when it was already down."""
        if not self.cluster.alive(name):
            return False
        await asyncio.to_thread(self.cluster.kill, name)
        return True

    async def _object_kill(self, step: Step) -> None:
        placement = await self._placement(step.object)
        if placement is None:
            self._skip(step, "not placed yet")
            return
        owner, standby, epoch = placement.owner, placement.standby, placement.epoch
        first = standby if step.kind == "kill-standby" else owner
        if not first or not await self._kill(first):
            self._skip(step, f"{first or 'no standby'} is already down")
            return
        targets = [first]
        detail = f"{step.object}: {first} ({'standby' if first == standby else 'owner'}, "
        detail += f"epoch {epoch})"
        event = self._event(step.kind, targets, detail)
        if step.kind == "kill-chain":
            promoted = await self._promoted(step.object, owner, epoch)
            if promoted is None:
                event.detail += f"; no promotion within {CHAIN_PROMOTION_WAIT_S_MAX:g} s"
            elif await self._kill(promoted.owner):
                targets.append(promoted.owner)
                event.detail += (
                    f" then {promoted.owner} (promoted, epoch {promoted.epoch}) "
                    f"at +{self.clock.now() - event.start_s:.1f} s"
                )
        elif step.kind == "kill-owner-and-standby":
            await asyncio.sleep(step.gap_s)
            if standby and await self._kill(standby):
                targets.append(standby)
                event.detail += (
                    f" then {standby} (its standby) at +{self.clock.now() - event.start_s:.1f} s"
                )
        await self._restart_at(step.until_s, targets, event)

    async def _promoted(self, name: str, owner: str, epoch: int) -> objects_pb2.Placement | None:
        """The placement once the control plane moved the object off `owner`."""
        deadline = self.clock.now() + CHAIN_PROMOTION_WAIT_S_MAX
        while self.clock.now() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                placement = await self._placement(name)
                if placement is not None and placement.epoch > epoch and placement.owner != owner:
                    return placement
            await asyncio.sleep(PROMOTION_POLL_S)
        return None

    async def _node_kill(self, step: Step) -> None:
        if step.kind == "kill-pop":
            name = step.node
        else:
            role = "origin" if step.kind == "kill-origin" else "control_plane"
            name = self.cluster.by_role(role)[0].name
        if not await self._kill(name):
            self._skip(step, f"{name} is already down")
            return
        event = self._event(step.kind, [name], f"{name} killed")
        await self._restart_at(step.until_s, [name], event)

    # -- pauses ---------------------------------------------------------------------------

    async def _target(self, step: Step, role: str) -> tuple[str, str] | None:
        """(the node, how the report names it) a pause or disk fault aims at: the current
        owner of the step's object for an owner fault (None, the step skipped, while it is
        not placed), else the node of `role`."""
        if step.kind not in OWNER_FAULTS:
            name = self.cluster.by_role(role)[0].name
            return name, name
        placement = await self._placement(step.object)
        if placement is None:
            self._skip(step, "not placed yet")
            return None
        owner = placement.owner
        return owner, f"{step.object}: {owner} (owner, epoch {placement.epoch})"

    async def _pause(self, step: Step) -> None:
        role = "control_plane" if step.kind == "pause-control-plane" else "origin"
        target = await self._target(step, role)
        if target is None:
            return
        name, named = target
        detail = f"{named} frozen"
        if not self.cluster.alive(name):
            self._skip(step, f"{name} is down")
            return
        pids = await asyncio.to_thread(self.cluster.pause, name)
        self._paused[name] = pids
        event = self._event(step.kind, [name], detail)
        try:
            await self.clock.sleep_until(step.until_s)
        finally:
            await asyncio.to_thread(self.cluster.resume, self._paused.pop(name, pids))
            event.end_s = self.clock.now()

    # -- disk faults ----------------------------------------------------------------------

    async def _disk(self, step: Step) -> None:
        if self.disk_faults is None:
            self._skip(step, self.disk_faults_missing or "no disk-fault shim")
            return
        target = await self._target(step, "origin")
        if target is None:
            return
        name, named = target
        # Every file under the node's data dir (absolute: the run's dir is resolved): its
        # stores, SQL files and sync records.
        files = str(self.cluster.node(name).data_dir).rstrip("/") + "/"
        self.disk_faults.refuse(files)
        event = self._event(step.kind, [name], f"{named}: its disk refuses to sync")
        try:
            await self.clock.sleep_until(step.until_s)
        finally:
            self.disk_faults.allow(files)
            event.end_s = self.clock.now()

    # -- restarts -------------------------------------------------------------------------

    def _cut_from_control_plane(self, name: str) -> bool:
        region = self.cluster.node(name).region
        origin = self.schedule.topology.origin_region
        return any(self._cut.get(pair, 0) > 0 for pair in ((region, origin), (origin, region)))

    async def _restart_at(self, at_s: float, names: list[str], event: FaultEvent) -> None:
        await self.clock.sleep_until(max(at_s, self.clock.now() + DOWN_S_MIN))
        for name in names:
            # A node cut off from the control plane cannot register: wait for the cut
            # to heal (the schedule heals everything by heal_by).
            if self._cut_from_control_plane(name):
                await self._wait_uncut(name)
                event.detail += f"; {name} restarted once its region's cut healed"
            await self.restart(name)
        event.end_s = self.clock.now()

    async def _wait_uncut(self, name: str) -> None:
        def healed() -> bool:
            return not self._cut_from_control_plane(name)

        async with self._cut_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._cut_changed.wait_for(healed),
                    timeout=max(0.0, self.schedule.heal_by_s - self.clock.now()),
                )

    async def restart(self, name: str) -> None:
        """Start a killed node again (one restart at a time, besides the control
        plane's); retried on failure."""
        loop = asyncio.get_running_loop()
        lane = (
            self._control_plane_restarts
            if self.cluster.node(name).role == "control_plane"
            else self._restarts
        )

        def start() -> ClusterError | None:
            # Returned, not raised: a run that ends (and cancels this task) while the
            # thread still works must not leave a future holding an unread exception.
            if self.cluster.alive(name):
                return None
            try:
                self.cluster.start(name, timeout=RESTART_TIMEOUT_S)
            except ClusterError as error:
                return error
            return None

        async def start_once() -> None:
            error = await loop.run_in_executor(lane, start)
            if error is not None:
                raise error

        try:
            await retry.restarts(RESTART_TRIES, ClusterError)(start_once)
        except ClusterError as error:
            # Not raised: the final heal tries again, and the run reports it.
            self.log.skipped.append(f"{self.clock.now():.1f} s restart {name}: {error}")

    # -- the end --------------------------------------------------------------------------

    async def heal(self) -> None:
        """Resume every frozen node, clear every fault and restart every node that is down
        (control plane first)."""
        for name, pids in list(self._paused.items()):
            await asyncio.to_thread(self.cluster.resume, pids)
            self._paused.pop(name, None)
        if self.disk_faults is not None:
            self.disk_faults.allow()
        order = [
            *self.cluster.by_role("control_plane"),
            *self.cluster.by_role("origin"),
            *self.cluster.pops,
        ]
        for node in order:
            if not self.cluster.alive(node.name):
                await self.restart(node.name)
        await self._admin(self.control_plane.ClearFaults, cp_pb2.ClearFaultsRequest())
        async with self._cut_changed:
            self._cut.clear()
            self._cut_changed.notify_all()
        now = self.clock.now()
        for fault in self.log.faults:
            if fault.end_s is None:
                fault.end_s = now
        self.log.healed_s = now


def kinds_in(schedule: Schedule) -> list[str]:
    """The kinds a schedule uses, in FAULT_KINDS order."""
    used = {step.kind for step in schedule.steps}
    return [kind for kind in FAULT_KINDS if kind in used]


def covered(steps: Iterable[Step], at_s: float) -> list[Step]:
    """Steps in force at `at_s` (for tests and the progress line)."""
    return [step for step in steps if step.at_s <= at_s < step.until_s]
