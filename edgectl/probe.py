"""`edgectl probe`: the seed's latency table, measured against a running cluster (the
command is `edgectl.commands.probe`).

For each PoP region the probe stands in for a user there: it asks the control plane for
the nearest healthy PoP (`Route`, as anycast would), then times `Pop.Status` on that PoP
and `Origin.Status` on the origin, each call sent with `x-edge-region: REGION` (so the
receiving node applies that region's emulated round trip) and `x-edge-sent-at` (so the
loopback transport counts against it rather than on top). Status is the cheapest call a
node answers, so what is timed is the network, not a handler.

Medians, not means: on a shared machine a few calls are late because the scheduler was
busy, never early, and the median ignores them. One warm-up call per target is thrown
away (the first call on a channel pays for HTTP/2 settings and lazy initialisation).

The statistics and the verdicts are pure functions below (unit-tested); `run_probe` is
the only part that does I/O.
"""

from __future__ import annotations

import functools
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from edge.v1 import control_plane_pb2 as cp_pb2
from edgectl.client import CliError, EdgeClient, Target, role_name
from edgepop.netem import REGION_HEADER

CALLS_DEFAULT = 30
# The seed's acceptance rule: a median within 5% of its target, but never asked to be
# closer than 1 ms (below that, timer granularity and loopback are the measurement).
TOLERANCE_FRACTION = 0.05
TOLERANCE_MS_MIN = 1.0
# "For a page that makes 5 sequential API calls, a user in Tokyo saves 810ms."
SEQUENTIAL_CALLS = 5
# The region the seed's headline sentence is about, when the topology has it.
HEADLINE_REGION = "tokyo"
# Regions whose origin round trips are timed at once. Calls are held by timers on the
# servers, so overlapping them costs little accuracy; one region after another would
# take sum(RTT) x calls.
PARALLEL_DEFAULT = 3


# -- statistics and verdicts (pure) ----------------------------------------------------


def median(samples: Sequence[float]) -> float:
    if not samples:
        return math.nan
    return float(statistics.median(samples))


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linearly interpolated between order statistics."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def tolerance_ms(target_ms: float) -> float:
    """How far a median may sit from its target: max(1 ms, 5%)."""
    return max(TOLERANCE_MS_MIN, TOLERANCE_FRACTION * target_ms)


def deviation_ms(measured_ms: float, target_ms: float) -> float:
    return measured_ms - target_ms


def deviation_pct(measured_ms: float, target_ms: float) -> float | None:
    """Deviation as a percentage of the target (None for a zero target)."""
    if target_ms == 0:
        return None
    return 100.0 * (measured_ms - target_ms) / target_ms


def within_tolerance(measured_ms: float, target_ms: float) -> bool:
    return abs(measured_ms - target_ms) <= tolerance_ms(target_ms)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


@dataclass(frozen=True)
class Measurement:
    """Round trips to one target (edge or origin) against what the topology promises."""

    samples_ms: tuple[float, ...]
    target_ms: float

    @property
    def median_ms(self) -> float:
        return median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return percentile(self.samples_ms, 0.9)

    @property
    def deviation_ms(self) -> float:
        return deviation_ms(self.median_ms, self.target_ms)

    @property
    def deviation_pct(self) -> float | None:
        return deviation_pct(self.median_ms, self.target_ms)

    @property
    def tolerance_ms(self) -> float:
        return tolerance_ms(self.target_ms)

    @property
    def within_tolerance(self) -> bool:
        return within_tolerance(self.median_ms, self.target_ms)

    def to_json(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}_ms": _round(self.median_ms),
            f"{prefix}_target_ms": _round(self.target_ms),
            f"{prefix}_deviation_ms": _round(self.deviation_ms),
            f"{prefix}_deviation_pct": _round(self.deviation_pct, 2),
            f"{prefix}_tolerance_ms": _round(self.tolerance_ms),
            f"{prefix}_within_tolerance": self.within_tolerance,
            f"{prefix}_p90_ms": _round(self.p90_ms),
            f"{prefix}_min_ms": _round(min(self.samples_ms, default=math.nan)),
        }


@dataclass(frozen=True)
class RegionResult:
    """One row of the table: a user in `region` talking to the edge and to the origin."""

    region: str
    city: str
    pop: str
    pop_region: str
    origin: str
    origin_region: str
    edge: Measurement
    to_origin: Measurement

    @property
    def saving_ms(self) -> float:
        return self.to_origin.median_ms - self.edge.median_ms

    @property
    def saving_target_ms(self) -> float:
        return self.to_origin.target_ms - self.edge.target_ms

    @property
    def sequential_saving_ms(self) -> float:
        return SEQUENTIAL_CALLS * self.saving_ms

    @property
    def sequential_saving_target_ms(self) -> float:
        return SEQUENTIAL_CALLS * self.saving_target_ms

    @property
    def within_tolerance(self) -> bool:
        return self.edge.within_tolerance and self.to_origin.within_tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "city": self.city,
            "pop": self.pop,
            "pop_region": self.pop_region,
            "origin": self.origin,
            "origin_region": self.origin_region,
            "calls": len(self.edge.samples_ms),
            **self.edge.to_json("edge"),
            **self.to_origin.to_json("origin"),
            "saving_ms": _round(self.saving_ms),
            "saving_target_ms": _round(self.saving_target_ms),
            "sequential_calls": SEQUENTIAL_CALLS,
            "sequential_saving_ms": _round(self.sequential_saving_ms),
            "sequential_saving_target_ms": _round(self.sequential_saving_target_ms),
            "within_tolerance": self.within_tolerance,
        }


def topology_rtt_ms(topology: cp_pb2.Topology, client_region: str, server_region: str) -> float:
    """The emulated RTT a client in one region pays to a server in another (or its own)."""
    if client_region == server_region:
        for region in topology.regions:
            if region.name == client_region:
                return region.edge_rtt_ms
        raise KeyError(client_region)
    for link in topology.rtt:
        if (link.from_region, link.to_region) == (client_region, server_region):
            return link.rtt_ms
    raise KeyError((client_region, server_region))


def headline(results: Sequence[RegionResult]) -> str:
    """The seed's sentence, with the measured figure (about Tokyo when it was probed)."""
    if not results:
        return ""
    chosen = next((r for r in results if r.region == HEADLINE_REGION), None)
    if chosen is None:
        chosen = max(results, key=lambda r: r.saving_target_ms)
    who = chosen.city or chosen.region
    return (
        f"For a page that makes {SEQUENTIAL_CALLS} sequential API calls, a user in {who} "
        f"saves {chosen.sequential_saving_ms:.0f} ms ({SEQUENTIAL_CALLS} x "
        f"{chosen.saving_ms:.1f} ms) by hitting the edge instead of {chosen.origin_region} "
        f"(target {chosen.sequential_saving_target_ms:.0f} ms)."
    )


# -- measuring (I/O) ---------------------------------------------------------------------


@dataclass(frozen=True)
class RegionPlan:
    region: str
    city: str
    pop: Target
    origin: Target


def plan(
    client: EdgeClient, topology: cp_pb2.Topology, regions: Sequence[str] | None
) -> list[RegionPlan]:
    """Targets per region: the routed PoP and the origin, as a user there would reach them."""
    known = {region.name: region for region in topology.regions}
    if regions:
        unknown = [name for name in regions if name not in known]
        if unknown:
            raise CliError(
                "INVALID_ARGUMENT",
                f"unknown region(s) {', '.join(unknown)} (regions: {', '.join(known)})",
            )
        chosen = list(dict.fromkeys(regions))
    else:
        chosen = [region.name for region in topology.regions if region.pop_nodes > 0]
    origins = [node for node in topology.nodes if role_name(node.role) == "origin"]
    if not origins:
        raise CliError("UNAVAILABLE", "the control plane knows no origin")
    origin = origins[0]
    plans = []
    for name in chosen:
        route = client.route(name)
        pop = Target(route.name, "pop", route.region, route.grpc_address, caller_region=name)
        to_origin = Target(origin.name, "origin", origin.region, origin.grpc_address, name)
        plans.append(RegionPlan(name, known[name].city, pop, to_origin))
    return plans


def measure(
    client: EdgeClient, target: Target, calls: int, on_call: Callable[[], None]
) -> list[float]:
    """Round-trip times (ms) of `calls` status calls, after one warm-up call."""
    client.status(target)
    on_call()
    samples = []
    for _ in range(calls):
        samples.append(client.status(target).latency_ms)
        on_call()
    return samples


def region_result(
    topology: cp_pb2.Topology, region_plan: RegionPlan, edge: list[float], to_origin: list[float]
) -> RegionResult:
    region = region_plan.region
    pop, origin = region_plan.pop, region_plan.origin
    return RegionResult(
        region=region,
        city=region_plan.city,
        pop=pop.name,
        pop_region=pop.region,
        origin=origin.name,
        origin_region=origin.region,
        edge=Measurement(tuple(edge), topology_rtt_ms(topology, region, pop.region)),
        to_origin=Measurement(tuple(to_origin), topology_rtt_ms(topology, region, origin.region)),
    )


def run_probe(
    client: EdgeClient,
    topology: cp_pb2.Topology,
    plans: Sequence[RegionPlan],
    calls: int,
    on_call: Callable[[str], None],
    parallel: int = PARALLEL_DEFAULT,
) -> list[RegionResult]:
    """Probe every planned region; results in plan order.

    `on_call(region)` is called after each call (warm-ups included), for progress.
    """
    if calls < 1:
        raise CliError("INVALID_ARGUMENT", "--calls must be at least 1")
    # Connect every channel first, from this thread: EdgeClient's channel cache is not
    # meant to be filled from several threads at once, and connecting is not measured.
    for region_plan in plans:
        for target in (region_plan.pop, region_plan.origin):
            client.channel(target.grpc_address, name=target.name)
    # Edge round trips first, one call at a time: their targets are a few ms, judged to
    # 1 ms, so they get the client to themselves. Origin round trips are 5-210 ms,
    # judged to 5%: those regions overlap (`parallel`), which shortens the run a lot.
    edge: dict[str, list[float]] = {}
    for region_plan in plans:
        region = region_plan.region
        edge[region] = measure(client, region_plan.pop, calls, functools.partial(on_call, region))
    workers = max(1, min(parallel, len(plans)))

    def to_origin(region_plan: RegionPlan) -> list[float]:
        done = functools.partial(on_call, region_plan.region)
        return measure(client, region_plan.origin, calls, done)

    with futures.ThreadPoolExecutor(workers, thread_name_prefix="edgectl-probe") as pool:
        origin = list(pool.map(to_origin, plans))
    return [
        region_result(topology, region_plan, edge[region_plan.region], samples)
        for region_plan, samples in zip(plans, origin, strict=True)
    ]


# -- what a client that stamps nothing sees (issue 11) --------------------------------------
# Shared by the test of the seed table over plain clients and the bench's `plain` rows.


def plain_grpc_rtt_ms(call: Callable[..., Any], region: str, pairs: int) -> tuple[float, float]:
    """(median over pairs of delayed call - undelayed call, median undelayed call) in ms,
    over `pairs` alternating calls with and without `x-edge-region`, nothing else stamped.

    The undelayed call is the same client's own cost (serialisation, loopback, the
    handler), which the emulation does not add to; the difference is what it does add.
    Differenced pair by pair: a busy moment of a shared machine slows both calls of a
    pair, and cancels, where it would shift one of two separate medians."""
    delayed, undelayed = [], []
    for _ in range(pairs):
        started = time.perf_counter()
        call(metadata=[(REGION_HEADER, region)])
        delayed.append(time.perf_counter() - started)
        started = time.perf_counter()
        call(metadata=[])
        undelayed.append(time.perf_counter() - started)
    return _pairwise_ms(delayed, undelayed)


def _pairwise_ms(delayed: list[float], undelayed: list[float]) -> tuple[float, float]:
    """(median of the pairs' differences, median undelayed), seconds in, ms out."""
    differences = [slow - fast for slow, fast in zip(delayed, undelayed, strict=True)]
    return statistics.median(differences) * 1e3, statistics.median(undelayed) * 1e3


def plain_http_rtt_ms(address: str, region: str, pairs: int) -> tuple[float, float]:
    """The same over HTTP with curl: one curl process, one kept-alive connection, its
    own `time_total` per request, alternating with and without the region header."""
    command = ["curl", "--silent", "--show-error"]
    for index in range(pairs * 2):
        delayed = index % 2 == 0
        if index:
            command.append("--next")
        command += ["--output", "/dev/null", "--write-out", f"{int(delayed)} %{{time_total}}\\n"]
        command += ["--header", "Host: no-worker.test"]
        if delayed:
            command += ["--header", f"{REGION_HEADER}: {region}"]
        command.append(f"http://{address}/")
    lines = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    times: dict[str, list[float]] = {"0": [], "1": []}
    for line in lines.stdout.splitlines():
        kind, seconds = line.split()
        times[kind].append(float(seconds))
    if not len(times["1"]) == len(times["0"]) == pairs:
        raise RuntimeError(f"curl answered {len(times['1'])}+{len(times['0'])} of {2 * pairs}")
    return _pairwise_ms(times["1"], times["0"])
