"""Cluster start time and idle memory, for the default topology as users get it.

`Cluster.up()` is what `edgectl cluster up` and `make cluster` wait on: 14 processes
spawned, each SERVING on health and registered with the control plane. It runs with the
default topology, delay emulation included (registrations from far PoPs pay their
emulated RTT to us-east-1), each time in a fresh data dir. After the first start the
cluster idles a few seconds and every process's VmRSS is read from /proc.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench import plots
from bench.probe import pss_bytes, rss_bytes
from bench.runner import BenchResult, Context
from bench.stats import Goal, Row
from edgectl.launcher import Cluster

UP_GOAL_S = 2.0
POP_RSS_GOAL_MIB = 60.0
IDLE_S = 5.0
MIB = 1024 * 1024


async def run_startup(context: Context) -> BenchResult:
    repetitions = context.pick(3, 1)
    idle_s = context.pick(IDLE_S, 2.0)
    up_times: list[float] = []
    rss: dict[str, float] = {}
    pss: dict[str, float] = {}
    roles: dict[str, str] = {}
    for repetition in range(repetitions):
        cluster = Cluster(context.new_dir(f"startup-{repetition + 1}") / "cluster")
        nodes = len(cluster.topology.node_specs())
        progress = context.ui.counter(
            f"cluster up {repetition + 1}/{repetitions} ({nodes} processes)", nodes
        )
        try:
            started = time.perf_counter()
            await asyncio.to_thread(cluster.up, progress=progress)
            up_times.append(time.perf_counter() - started)
            if repetition == 0:
                await context.ui.timed(f"idle {idle_s:g} s", idle_s, asyncio.sleep(idle_s))
                for node in cluster.nodes.values():
                    rss[node.name] = rss_bytes(node.pid) / MIB
                    pss[node.name] = pss_bytes(node.pid) / MIB
                    roles[node.name] = node.role
        finally:
            await context.ui.step("cluster down", asyncio.to_thread(cluster.down))

    pop_rss = {name: value for name, value in rss.items() if roles[name] == "pop"}
    worst_pop = max(pop_rss, key=lambda name: pop_rss[name])
    rows = [
        Row(
            "startup",
            f"cluster up() to all SERVING, {len(rss)} procs (median of {repetitions})",
            "s",
            value=statistics.median(up_times),
            goal=Goal("<=", UP_GOAL_S),
            note=", ".join(f"{value:.2f}" for value in up_times) if repetitions > 1 else "",
        ),
        Row(
            "startup",
            f"idle RSS per PoP after {idle_s:g} s (max of {len(pop_rss)})",
            "MiB",
            value=pop_rss[worst_pop],
            goal=Goal("<=", POP_RSS_GOAL_MIB),
            note=f"median {statistics.median(pop_rss.values()):.1f} MiB; PSS median "
            f"{statistics.median(pss[name] for name in pop_rss):.1f} MiB",
        ),
    ]
    plot_up = plots.bars_with_goal(
        context.settings.out_dir / "startup_up.png",
        "Cluster.up() of the default topology (14 processes)",
        [f"run {index + 1}" for index in range(len(up_times))],
        up_times,
        "seconds",
        goal=UP_GOAL_S,
        goal_label="goal 2 s",
    )
    plot_rss = plots.bars_with_goal(
        context.settings.out_dir / "startup_rss.png",
        f"Idle RSS after {idle_s:g} s",
        list(rss),
        list(rss.values()),
        "MiB",
        goal=POP_RSS_GOAL_MIB,
        goal_label="PoP goal 60 MiB",
    )
    notes = ["| node | role | idle RSS (MiB) | PSS (MiB) |", "|---|---|---:|---:|"]
    notes += [
        f"| {name} | {roles[name]} | {value:.1f} | {pss[name]:.1f} |" for name, value in rss.items()
    ]
    return BenchResult(
        rows=rows,
        details={
            "up_s": up_times,
            "idle_s": idle_s,
            "rss_mib": rss,
            "pss_mib": pss,
            "roles": roles,
        },
        plots=[plot_up, plot_rss],
        method=(
            f"Wall time of `Cluster.up()` (spawn every process, wait until each is SERVING on "
            f"grpc.health and registered with the control plane) for the built-in default "
            f"topology, {repetitions} time(s), each in a fresh data dir; then, after the first "
            f"start, {idle_s:g} s idle and `VmRSS` from `/proc/PID/status` of every process "
            f"(the goal's measure), with `Pss` from `/proc/PID/smaps_rollup` beside it: nodes "
            f"are forked from one zygote that imported every role, and RSS counts each page "
            f"they share with it (and each other) whole in every node, PSS as its share."
        ),
        notes=notes,
    )
