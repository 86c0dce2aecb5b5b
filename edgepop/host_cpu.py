"""What a node costs the host's CPUs, and how long its threads waited for one.

edgepop is an instrument: the latency and staleness it reports should be the emulated
network's. When the host runs short of cores (14 or 34 processes on 2 of them), a
thread that is ready to run waits in the kernel's run queue, and that wait shows up in
every figure as if the network were slower. Linux counts it per thread
(`/proc/PID/task/TID/schedstat`: time on a CPU, time runnable but waiting, slices), so
each node exports both as counters and the live view shows them: a node whose threads
wait about as long as they run is measuring the host as much as the network.

Pure parts (parsing, the totals that survive exiting threads) are separate from the
reads of /proc, so they are unit-tested without a process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

NS_PER_S = 1e9
SCHEDSTAT_BYTES_MAX = 128  # three decimal integers
# Where a view marks a node's wait for a CPU: at least this share of the CPU the node
# used and at least this many % of a core. Below, the host adds little to its figures.
WAIT_SHARE_NOTABLE = 0.25
WAIT_PERCENT_NOTABLE = 5.0


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Seconds a process's threads ran on a CPU, and waited runnable for one."""

    ran_s: float
    waited_s: float

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.ran_s - earlier.ran_s, self.waited_s - earlier.waited_s)


def wait_is_notable(ran_percent: float | None, waited_percent: float | None) -> bool:
    """Whether a node's wait for a CPU (% of a core) is large enough to show: the host's
    queue then adds noticeably to the latencies it measures."""
    if waited_percent is None:
        return False
    return waited_percent >= WAIT_PERCENT_NOTABLE and waited_percent >= (
        WAIT_SHARE_NOTABLE * (ran_percent or 0.0)
    )


def parse_schedstat(text: str) -> tuple[int, int]:
    """(ns on a CPU, ns runnable waiting for one) from a schedstat line."""
    fields = text.split()
    if len(fields) < 2:
        raise ValueError(f"not a schedstat line: {text!r}")
    return int(fields[0]), int(fields[1])


def read_threads(pid: int | str = "self") -> dict[int, tuple[int, int]] | None:
    """Each thread's (ran ns, waited ns), or None where the kernel does not say
    (not Linux, schedstats compiled out, or the process is gone)."""
    folder = f"/proc/{pid}/task"
    try:
        tids = os.listdir(folder)
    except OSError:
        return None
    readings: dict[int, tuple[int, int]] = {}
    for tid in tids:
        try:
            # os.open/os.read: a third cheaper than a file object, once per thread a scrape.
            descriptor = os.open(f"{folder}/{tid}/schedstat", os.O_RDONLY)
            try:
                text = os.read(descriptor, SCHEDSTAT_BYTES_MAX).decode()
            finally:
                os.close(descriptor)
            readings[int(tid)] = parse_schedstat(text)
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited between the listing and the read
        except (OSError, ValueError):
            return None
    return readings


class ThreadTotals:
    """Per-thread counters summed into process totals that never go down.

    A thread's counters vanish with it (a short-lived executor thread, a gRPC thread that
    ends): its last reading is kept, so only what it did after that reading is lost. A
    thread id reused by a new thread shows counters below the old thread's last ones.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int]] = {}
        self._retired_ran_ns = 0
        self._retired_waited_ns = 0

    def update(self, readings: Mapping[int, tuple[int, int]]) -> CpuTimes:
        for tid, (ran_ns, waited_ns) in self._last.items():
            now = readings.get(tid)
            if now is None or now[0] < ran_ns or now[1] < waited_ns:
                self._retired_ran_ns += ran_ns
                self._retired_waited_ns += waited_ns
        self._last = dict(readings)
        ran_ns = self._retired_ran_ns + sum(ran for ran, _ in readings.values())
        waited_ns = self._retired_waited_ns + sum(waited for _, waited in readings.values())
        return CpuTimes(ran_ns / NS_PER_S, waited_ns / NS_PER_S)


class ProcessCpu:
    """One process's CpuTimes, read on demand (a scrape, a live-view sample)."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self._totals = ThreadTotals()
        self._lock = threading.Lock()  # scrapes may overlap

    def read(self) -> CpuTimes | None:
        readings = read_threads(self.pid)
        if readings is None:
            return None
        with self._lock:
            return self._totals.update(readings)


class HostCpuCollector(Collector):
    """`edge_process_cpu_seconds_total` and `edge_process_cpu_wait_seconds_total` for
    this process, read from /proc at scrape time only (nothing runs while idle)."""

    def __init__(self, node: str, region: str) -> None:
        self._labels = [node, region]
        self._cpu = ProcessCpu()

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        times = self._cpu.read()
        yield from self._families(times)

    def _families(self, times: CpuTimes | None = None) -> Iterator[Metric]:
        ran = CounterMetricFamily(
            "edge_process_cpu_seconds",
            "Time this process's threads ran on a CPU (all threads, from schedstat).",
            labels=["node", "region"],
        )
        waited = CounterMetricFamily(
            "edge_process_cpu_wait_seconds",
            "Time this process's threads were ready to run but waited for a CPU (the "
            "host's run queue). Latency and staleness measured meanwhile include it.",
            labels=["node", "region"],
        )
        if times is not None:
            ran.add_metric(self._labels, times.ran_s)
            waited.add_metric(self._labels, times.waited_s)
        yield ran
        yield waited
