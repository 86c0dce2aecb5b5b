"""A node's CPU and its threads' wait for a CPU (edgepop/host_cpu.py): parsing, totals that
never go down when threads come and go, and the counters every node exports."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edgepop.host_cpu import (
    CpuTimes,
    HostCpuCollector,
    ProcessCpu,
    ThreadTotals,
    parse_schedstat,
    read_threads,
    wait_is_notable,
)
from edgepop.metrics import ROLE_METRICS

linux_only = pytest.mark.skipif(
    not os.path.exists("/proc/self/task"), reason="schedstat is Linux's"
)


def test_parse_schedstat_reads_ran_and_waited_nanoseconds() -> None:
    assert parse_schedstat("8413062 1552093 115\n") == (8413062, 1552093)


@pytest.mark.parametrize("text", ["", "12", "a b c"])
def test_parse_schedstat_refuses_what_is_not_a_schedstat_line(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedstat(text)


def test_totals_sum_every_thread() -> None:
    totals = ThreadTotals()
    assert totals.update({1: (2_000_000_000, 500_000_000), 2: (1_000_000_000, 0)}) == CpuTimes(
        3.0, 0.5
    )


def test_a_thread_that_exits_keeps_its_last_reading_in_the_totals() -> None:
    totals = ThreadTotals()
    totals.update({1: (1_000_000_000, 0), 2: (3_000_000_000, 1_000_000_000)})
    assert totals.update({1: (2_000_000_000, 0)}) == CpuTimes(5.0, 1.0)
    # A new thread starts at zero: the totals still only grow.
    assert totals.update({1: (2_000_000_000, 0), 3: (0, 0)}) == CpuTimes(5.0, 1.0)


def test_a_reused_thread_id_counts_as_a_new_thread() -> None:
    totals = ThreadTotals()
    totals.update({7: (4_000_000_000, 2_000_000_000)})
    # Thread 7 exited and a new thread 7 ran for 1 s: counters below the old ones.
    assert totals.update({7: (1_000_000_000, 0)}) == CpuTimes(5.0, 2.0)


readings = st.dictionaries(
    st.integers(1, 8),
    st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)),
    max_size=8,
)


@given(st.lists(readings, min_size=1, max_size=20))
def test_totals_never_go_down_whatever_threads_do(
    sequence: list[dict[int, tuple[int, int]]],
) -> None:
    totals = ThreadTotals()
    previous = CpuTimes(0.0, 0.0)
    for reading in sequence:
        current = totals.update(reading)
        assert current.ran_s >= previous.ran_s and current.waited_s >= previous.waited_s
        previous = current


@linux_only
def test_this_process_ran_for_as_long_as_it_spun() -> None:
    cpu = ProcessCpu()
    before = cpu.read()
    assert before is not None
    started = time.thread_time()
    while time.thread_time() - started < 0.2:
        pass
    after = cpu.read()
    assert after is not None
    used = after - before
    assert used.ran_s >= 0.19 and used.waited_s >= 0


@linux_only
def test_an_exited_thread_s_cpu_stays_counted() -> None:
    cpu = ProcessCpu()
    before = cpu.read()
    spun = threading.Event()
    release = threading.Event()

    def spin_then_wait() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.1:
            pass
        spun.set()
        release.wait(timeout=10)

    worker = threading.Thread(target=spin_then_wait)
    worker.start()
    assert spun.wait(timeout=10)
    with_thread = cpu.read()  # the thread is alive, idle, 0.1 s of CPU behind it
    release.set()
    worker.join(timeout=10)
    after = cpu.read()  # the thread is gone
    assert before is not None and with_thread is not None and after is not None
    assert (with_thread - before).ran_s >= 0.09
    assert after.ran_s >= with_thread.ran_s


def test_a_process_that_is_gone_reads_as_unknown() -> None:
    assert read_threads(2**31 - 1) is None
    assert ProcessCpu(2**31 - 1).read() is None


@linux_only
@pytest.mark.parametrize("role", sorted(ROLE_METRICS))
def test_every_role_exports_its_cpu_and_its_wait_for_a_cpu(role: str) -> None:
    registry = ROLE_METRICS[role]("tokyo-1", "tokyo").registry
    ran = registry.get_sample_value(
        "edge_process_cpu_seconds_total", {"node": "tokyo-1", "region": "tokyo"}
    )
    waited = registry.get_sample_value(
        "edge_process_cpu_wait_seconds_total", {"node": "tokyo-1", "region": "tokyo"}
    )
    assert ran is not None and ran > 0
    assert waited is not None and waited >= 0


def test_the_collector_exports_nothing_where_the_kernel_says_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("edgepop.host_cpu.read_threads", lambda pid="self": None)
    registry = CollectorRegistry()
    registry.register(HostCpuCollector("n", "r"))
    families = {family.name: family.samples for family in registry.collect()}
    # Declared either way, with no sample: no made-up zero.
    assert families == {"edge_process_cpu_seconds": [], "edge_process_cpu_wait_seconds": []}


@pytest.mark.parametrize(
    ("ran", "waited", "notable"),
    [
        (42.0, 40.0, True),  # waits about as long as it runs
        (100.0, 25.0, True),  # a quarter of what it ran, above 5% of a core
        (100.0, 24.0, False),  # less than a quarter
        (2.0, 4.0, False),  # twice what it ran, but only 4% of a core
        (None, 6.0, True),  # CPU unknown: the wait alone decides
        (50.0, None, False),  # wait unknown
    ],
)
def test_a_wait_is_notable_from_a_quarter_of_the_cpu_and_5_percent_of_a_core(
    ran: float | None, waited: float | None, notable: bool
) -> None:
    assert wait_is_notable(ran, waited) is notable
