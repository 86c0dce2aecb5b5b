"""The bench's machine yardstick: its measures and rows, and that every run has them."""

from __future__ import annotations

import math
from pathlib import Path

from bench.__main__ import BENCHMARKS, chosen
from bench.loadgen import UnaryResult
from bench.machine import BENCHMARK, fsync_us, machine_rows, python_step_ns, thread_hop_us


def _echo(calls: int, server_cpu_s: float) -> UnaryResult:
    return UnaryResult(
        calls=calls,
        errors=0,
        elapsed_s=1.0,
        rate_per_s=float(calls),
        latency_s={"p50": 0.003},
        server_cpu_s=server_cpu_s,
        client_cpu_s=0.1,
    )


LOCAL = {
    "python_step_ns": 150.0,
    "thread_hop_us": {"p50": 80.0, "p99": 120.0},
    "fsync_us": {"p50": 90.0, "p99": 200.0},
}


def test_python_step_is_a_positive_time_per_step() -> None:
    step_ns = python_step_ns(steps=2_000, rounds=2)
    assert 0 < step_ns < 1e6


def test_thread_hops_are_timed_one_by_one() -> None:
    hops = thread_hop_us(hops=50)
    assert hops["count"] == 50
    assert 0 < hops["p50"] <= hops["p99"] <= hops["max"]


def test_fsync_probe_times_each_sync_and_leaves_nothing_behind(tmp_path: Path) -> None:
    syncs = fsync_us(str(tmp_path), syncs=5)
    assert syncs["count"] == 5
    assert syncs["p50"] > 0
    assert list(tmp_path.iterdir()) == []


def test_rows_give_the_echo_cpu_per_call_and_set_no_goal() -> None:
    rows = machine_rows(_echo(calls=1_000, server_cpu_s=0.2), LOCAL)
    assert [row.benchmark for row in rows] == [BENCHMARK] * 4
    assert math.isclose(rows[0].value or 0, 200.0)
    assert "1,000 calls/s" in rows[0].note
    assert [row.value for row in rows[1:]] == [80.0, 90.0, 150.0]
    assert all(row.goal is None for row in rows)


def test_an_echo_that_answered_nothing_has_no_cpu_per_call() -> None:
    [echo_row, *_] = machine_rows(_echo(calls=0, server_cpu_s=0.2), LOCAL)
    assert echo_row.value is None or math.isnan(echo_row.value)


def test_every_run_starts_with_the_machine() -> None:
    assert BENCHMARKS[0].name == BENCHMARK
    assert [b.name for b in chosen({"kvget"})] == [BENCHMARK, "kvget"]
    assert [b.name for b in chosen({BENCHMARK})] == [BENCHMARK]
    assert [b.name for b in chosen(None)] == [b.name for b in BENCHMARKS]
