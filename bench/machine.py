"""The machine's own speed, measured first in every run: the yardstick for absolute goals.

Ratios compare two things measured side by side, so a slower machine moves both sides.
Goals in absolute units do not: propagation in milliseconds, KvPutMany in entries/s,
idle CPU in % of a core. On the same code, those rows have read 2-3x apart from one
virtual machine to the next. These rows measure the costs those goals are made of, on a
quiet machine before any cluster starts, so that two reports can be compared by them:

- a bare `grpc.aio` echo server's CPU per call (16 in flight): the unit every gRPC
  message in the cluster pays;
- a hop from an event loop to a worker thread and back: what a commit handed to the
  writer thread pays, twice;
- `fdatasync` of a 4 KiB write: what every durable commit waits for;
- a fixed pure-Python loop: the interpreter's speed.

None of them has a goal: they say what kind of machine the other rows ran on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench import kv_reads
from bench.echo import ECHO_METHOD
from bench.loadgen import UnaryLoad, UnaryResult, closed_loop
from bench.runner import BenchResult, Context
from bench.stats import Row, summarize

BENCHMARK = "machine"
ECHO_CONCURRENCY = 16
# The echo's request: the size of a small KvPut (a 100-byte value with its key).
ECHO_PAYLOAD = b"k" * 24 + b"v" * 100
PYTHON_STEPS = 200_000
PYTHON_ROUNDS = 5
THREAD_HOPS = 2_000
FSYNCS = 200
FSYNC_BYTES = 4096


def python_step_ns(steps: int = PYTHON_STEPS, rounds: int = PYTHON_ROUNDS) -> float:
    """Nanoseconds per step of a fixed loop (dict update, int and str work), best round:
    the best is the machine's speed, the others add whatever else ran meanwhile."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        _python_workload(steps)
        best = min(best, (time.perf_counter_ns() - started) / steps)
    return best


def _python_workload(steps: int) -> int:
    table: dict[int, int] = {}
    total = 0
    for index in range(steps):
        key = index & 1023
        table[key] = table.get(key, 0) + index
        total += len(str(key))
    return total


def thread_hop_us(hops: int = THREAD_HOPS) -> dict[str, float]:
    """Round trips from an asyncio loop to a worker thread and back (a no-op call), in µs."""
    return asyncio.run(_thread_hops(hops))


async def _thread_hops(hops: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, int)  # the thread exists before the clock starts
        for _ in range(hops):
            started = time.perf_counter()
            await loop.run_in_executor(pool, int)
            samples.append((time.perf_counter() - started) * 1e6)
    return summarize(samples)


def fsync_us(directory: str | None = None, syncs: int = FSYNCS) -> dict[str, float]:
    """`fdatasync` after a 4 KiB write in place, in µs (the file system of `directory`)."""
    block = os.urandom(FSYNC_BYTES)
    samples: list[float] = []
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        fd = os.open(os.path.join(folder, "fsync.probe"), os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            for index in range(syncs):
                os.pwrite(fd, block, (index % 16) * FSYNC_BYTES)
                started = time.perf_counter()
                os.fdatasync(fd)
                samples.append((time.perf_counter() - started) * 1e6)
        finally:
            os.close(fd)
    return summarize(samples)


@dataclass(frozen=True)
class LocalCosts:
    """What the load-generator process measures without a server."""

    directory: str


def local_costs(spec: LocalCosts) -> dict[str, Any]:
    return {
        "python_step_ns": python_step_ns(),
        "thread_hop_us": thread_hop_us(),
        "fsync_us": fsync_us(spec.directory),
    }


def machine_rows(echo: UnaryResult, local: dict[str, Any]) -> list[Row]:
    """The yardstick as table rows (no goals)."""
    hop, fsync = local["thread_hop_us"], local["fsync_us"]
    return [
        Row(
            BENCHMARK,
            f"bare gRPC echo: server CPU per call, {ECHO_CONCURRENCY} in flight",
            "µs",
            value=echo.server_cpu_per_call_us,
            note=f"{echo.rate_per_s:,.0f} calls/s, p50 {echo.latency_s['p50'] * 1e3:.2f} ms",
        ),
        Row(
            BENCHMARK,
            "event loop -> worker thread -> loop, p50",
            "µs",
            value=hop["p50"],
            note=f"p99 {hop['p99']:.0f} µs",
        ),
        Row(
            BENCHMARK,
            "fdatasync of a 4 KiB write, p50",
            "µs",
            value=fsync["p50"],
            note=f"p99 {fsync['p99']:.0f} µs",
        ),
        Row(
            BENCHMARK, "pure Python: one step of a fixed loop", "ns", value=local["python_step_ns"]
        ),
    ]


async def run_machine(context: Context) -> BenchResult:
    echo_server = await kv_reads.echo_server(context)
    local = await context.ui.step(
        "Python, thread hops, fsync",
        context.in_loadgen(local_costs, LocalCosts(str(context.new_dir("machine")))),
    )
    duration = context.pick(2.0, 1.0)
    echo = await context.ui.timed(
        f"bare gRPC echo, {ECHO_CONCURRENCY} in flight",
        duration,
        context.in_loadgen(
            closed_loop,
            UnaryLoad(
                echo_server.address,
                ECHO_METHOD,
                (ECHO_PAYLOAD,),
                ECHO_CONCURRENCY,
                duration,
                warmup_s=0.3,
                server_pid=echo_server.pid,
            ),
        ),
    )
    return BenchResult(
        rows=machine_rows(echo, local),
        details={"echo": asdict(echo), "local": local},
        method=(
            "Measured first, before any cluster starts, so that reports from different "
            "machines can be compared: goals in absolute units (ms, entries/s, % of a core) "
            "move with these costs, ratios do not. The echo is `bench.echo` (grpc.aio on the "
            "nodes' event loop, with their gRPC settings) answering "
            f"{len(ECHO_PAYLOAD)}-byte requests from a load-generator process, "
            f"{ECHO_CONCURRENCY} calls in flight for {duration:g} s "
            "after 0.3 s of warm-up; its CPU is the server process's utime+stime. In a "
            f"load-generator process on asyncio's loop: {THREAD_HOPS:,} no-op calls handed to "
            f"a worker thread and awaited; {FSYNCS} `fdatasync`s of a {FSYNC_BYTES // 1024} "
            "KiB write in a file beside the clusters' data; a fixed pure-Python loop "
            f"({PYTHON_STEPS:,} steps of dict, int and str work), the best of "
            f"{PYTHON_ROUNDS} rounds."
        ),
    )
