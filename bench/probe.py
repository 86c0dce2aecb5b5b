"""Looking at running processes from outside: CPU time, RSS, and /metrics over HTTP.

All cheap and dependency-free, because they run next to the measurement: /proc reads
for CPU and memory, and a bare HTTP/1.0 GET on asyncio streams for Prometheus pages
(one PoP is scraped ten times a second during the replication benchmark).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stats import MetricSample, metric_value, parse_prometheus

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: everything but idle, iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS_PER_S


def machine_cpu_times() -> tuple[float, float]:
    """(idle, total) CPU seconds of all cores since boot, from /proc/stat; idle counts
    iowait too (a core waiting on the disk could run anything else)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    total = sum(fields[:8])
    return (fields[3] + fields[4]) / CLOCK_TICKS_PER_S, total / CLOCK_TICKS_PER_S


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU time of a process and all its descendants, reaped ones included.

    A child's time moves into its parent's cutime/cstime when the parent reaps it, so
    summing utime+stime+cutime+cstime over the live tree counts every process once.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS_PER_S
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0.0, [root_pid]
    while pending:
        pid = pending.pop()
        total += times.get(pid, 0.0)
        pending.extend(children.get(pid, ()))
    return total


def _proc_kib_field(path: str, field: str) -> int:
    """The `field:` line of a /proc file that counts kB, in bytes; 0 when it is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of a process; 0 when it is gone."""
    return _proc_kib_field(f"/proc/{pid}/status", "VmRSS")


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process (`Pss` of /proc/PID/smaps_rollup): each page it
    shares counted as its share. Nodes forked from the zygote share its pages, which RSS
    counts whole in every one of them. 0 when the process is gone."""
    return _proc_kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


async def fetch_text(address: str, path: str = "/metrics", timeout: float = 5.0) -> str:
    """GET http://address/path and return the body (HTTP/1.0: the server closes)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise ConnectionError(f"GET {address}{path}: {status.decode(errors='replace')}")
    return body.decode()


async def scrape(address: str, names: tuple[str, ...] | None = None) -> list[MetricSample]:
    """The samples of one node's /metrics (only metrics starting with one of `names`)."""
    return parse_prometheus(await fetch_text(address), names)


async def scrape_many(
    addresses: dict[str, str], names: tuple[str, ...] | None = None
) -> dict[str, list[MetricSample]]:
    """Scrape several nodes at once: {node name: samples}."""
    pages = await asyncio.gather(*(scrape(address, names) for address in addresses.values()))
    return dict(zip(addresses, pages, strict=True))


async def settle(
    pids: list[int], cores_max: float = 0.3, window_s: float = 0.5, timeout_s: float = 10.0
) -> float:
    """Wait until `pids` together use under `cores_max` cores over a window (a cluster
    that just started is still importing, registering and connecting; measuring then
    would charge that to the first thing measured). Returns the seconds waited; gives
    up quietly after `timeout_s` (the machine is shared: it may never be quiet)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(window_s)
        if (sum(cpu_seconds(pid) for pid in pids) - before) / window_s < cores_max:
            break
    return time.monotonic() - started


async def idle_cores(groups: dict[str, list[int]], seconds: float = 1.0) -> dict[str, float]:
    """Cores each group of processes uses with no load on them (heartbeats, leases,
    stream keep-alives): what a per-call CPU figure should not be charged with."""
    before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    return {
        name: max(0.0, sum(cpu_seconds(pid) for pid in pids) - before[name]) / elapsed
        for name, pids in groups.items()
    }


CPU_RAN = "edge_process_cpu_seconds_total"
CPU_WAITED = "edge_process_cpu_wait_seconds_total"


@dataclass(frozen=True)
class HostCpuReading:
    """When, and each node's (CPU seconds ran, seconds waited for a CPU) so far."""

    at: float
    per_node: dict[str, tuple[float, float]]


async def host_cpu(addresses: dict[str, str]) -> HostCpuReading:
    """Every node's own CPU counters (edgepop/host_cpu.py), from its /metrics."""
    pages = await scrape_many(addresses, (CPU_RAN, CPU_WAITED))
    at = time.monotonic()
    return HostCpuReading(
        at,
        {
            name: (metric_value(samples, CPU_RAN) or 0.0, metric_value(samples, CPU_WAITED) or 0.0)
            for name, samples in pages.items()
        },
    )


def cpu_shares(before: HostCpuReading, after: HostCpuReading) -> dict[str, dict[str, float]]:
    """Per node, cores it used and cores' worth of its threads' waiting for a CPU,
    between two readings (a node missing from either is left out)."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return {}
    shares = {}
    for name, (ran_after, waited_after) in after.per_node.items():
        if name not in before.per_node:
            continue
        ran_before, waited_before = before.per_node[name]
        shares[name] = {
            "ran": max(0.0, ran_after - ran_before) / elapsed,
            "waited": max(0.0, waited_after - waited_before) / elapsed,
        }
    return shares
