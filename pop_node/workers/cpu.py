"""CPU time per request: measured step by step, and enforced even inside a busy loop.

A worker's `fetch` coroutine is driven by a trampoline that reads the thread's CPU clock
around every step (each run between two awaits), so waiting on I/O costs nothing and
the budget counts only the worker's own computation. A step that never yields (a hog)
cannot be stopped from inside the event loop, so a watchdog thread reads the loop
thread's CPU clock (`pthread_getcpuclockid`) and, when the step has overrun the budget,
raises `CpuLimitExceeded` in that thread (`PyThreadState_SetAsyncExc`). The trampoline
withdraws a raise that has not landed when the step ends, so it never escapes into
the event loop itself. `CpuLimitExceeded` is a BaseException: `except Exception` in
worker code does not swallow it.

Reading a thread's CPU clock is a system call (no vDSO for CPU clocks): under load the
two reads per step were ~8% of a KV-reading worker's request, and the one left at each
step's start still 6-13% of a busy PoP's samples. So the clock is read only for a step
longer than SHORT_STEP_S of wall time (at its end), and at a step's start only when the
last reading is older than that. A shorter step is charged its wall time, which bounds
its CPU time from above (one thread cannot use more CPU than wall time), so a request is
overcharged at most SHORT_STEP_S per step, and only when the OS preempted the loop
mid-step. A step starting within SHORT_STEP_S of the last reading starts from that
reading plus the wall time since, which bounds the clock now from above: a long step is
then undercharged (and checked by the watchdog) by less than SHORT_STEP_S, a few percent
of the smallest limit.

A step is never charged more CPU time than the wall time it took (nor checked against
more by the watchdog). One thread cannot use more, but on this project's VMs the kernel's
per-thread CPU clock now and then jumps: a Durable Object step that waited on an fsync
read 14-25 ms of thread CPU (clock and `getrusage` agreeing) across 0.3-0.4 ms of wall
time, and each such jump turned a 20 ms `cpu_ms` limit into a 503 (error 1102).

A full garbage collection (generation 2) runs in whichever step allocates at the wrong
moment, for the whole process's heap: tens of milliseconds at a busy PoP. It is not the
worker's computation, so its CPU time is not charged: the watchdog times the loop
thread's full collections (`gc.callbacks`) and both the step's charge and the watchdog's
check leave them out.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import threading
import time
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

# The shortest time between two checks of a running step: fine enough for limits of tens
# of milliseconds, coarse enough that the watchdog barely competes with the loop for the GIL.
WATCHDOG_INTERVAL_S = 0.005
# While a step stays over budget, the interrupt is raised again this often.
REINJECT_INTERVAL_S = 0.005
# A step shorter than this (wall time) is charged its wall time, without a second read
# of the CPU clock (see the module docstring).
SHORT_STEP_S = 0.0002
# Checks finding no step running before the watchdog sleeps until a step wakes it.
WATCHDOG_IDLE_ROUNDS = 20


class CpuLimitExceeded(BaseException):
    """The request used more CPU time than its worker's limit."""


class CpuBudget:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.used_s = 0.0
        self.exceeded = False


def _set_async_exc(thread_id: int, exception: type[BaseException] | None) -> int:
    return int(
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
        )
    )


def interrupt_thread(thread_id: int, exception: type[BaseException]) -> None:
    """Raise `exception` in another Python thread at its next bytecode."""
    _set_async_exc(thread_id, exception)


class Watchdog:
    """One per event-loop thread: watches the step being run, if any.

    A thread's CPU clock runs no faster than the wall clock, so a step cannot overrun
    its budget sooner than its remaining budget from when it began: the watchdog sleeps
    until then (at least WATCHDOG_INTERVAL_S) instead of polling. `begin` wakes it early
    only for a step that could overrun before its next check (little budget left). Each
    wakeup takes the GIL from the loop thread, which under load cost the loop more than
    the checks themselves.
    """

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.clock = time.pthread_getcpuclockid(self.thread_id)
        self._lock = threading.Lock()
        self._budget: CpuBudget | None = None
        self._step_started = 0.0
        self._step_started_wall = 0.0  # time.monotonic()
        self._injected = False
        self._injected_at = 0.0
        # When the watchdog checks next (time.monotonic()); -inf from a wakeup until that
        # check, so that steps beginning meanwhile do not wake it again.
        self._check_at = math.inf
        # How far ahead to check when no step runs: the limit of the last step seen, so
        # that fresh steps like it need not wake the watchdog.
        self._idle_horizon_s = WATCHDOG_INTERVAL_S
        self._idle_rounds = 0
        self._stopping = False
        # The loop thread's CPU clock as last read, and when (time.monotonic()): a step
        # starting soon after starts from it (`_cpu_bound`). Loop thread only.
        self._cpu_read = 0.0
        self._cpu_read_at = -math.inf
        # Full collections on the loop thread: their CPU time in total, and the CPU clock
        # at the start of the one running (None: none is); the charge leaves them out.
        self.gc_cpu_s = 0.0
        self._gc_started: float | None = None
        self._gc_at_step_start = 0.0
        gc.callbacks.append(self._on_gc)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cpu-watchdog", daemon=True)
        self._thread.start()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2 or threading.get_ident() != self.thread_id:
            return
        now = time.clock_gettime(self.clock)
        if phase == "start":
            self._gc_started = now
        elif self._gc_started is not None:
            self.gc_cpu_s += now - self._gc_started
            self._gc_started = None

    def _gc_since_step_start(self, now: float) -> float:
        running = 0.0 if self._gc_started is None else max(0.0, now - self._gc_started)
        return self.gc_cpu_s - self._gc_at_step_start + running

    def read_cpu(self) -> float:
        """The loop thread's CPU clock now (a system call; on the loop thread)."""
        now = time.clock_gettime(self.clock)
        self._cpu_read, self._cpu_read_at = now, time.monotonic()
        return now

    def _cpu_bound(self, wall_now: float) -> float:
        """The loop thread's CPU clock at `wall_now`, or within SHORT_STEP_S of the last
        reading a bound from above: that reading plus the wall time since."""
        since_s = wall_now - self._cpu_read_at
        if since_s < SHORT_STEP_S:
            return self._cpu_read + since_s
        now = time.clock_gettime(self.clock)
        # Read after wall_now: the pair still bounds any later clock from above.
        self._cpu_read, self._cpu_read_at = now, wall_now
        return now

    def begin(self, budget: CpuBudget) -> float:
        """A step starts (on the loop thread); returns the thread CPU clock now (or a
        bound from above, less than SHORT_STEP_S ahead: `_cpu_bound`)."""
        wall_now = time.monotonic()
        now = self._cpu_bound(wall_now)
        with self._lock:
            self._budget = budget
            self._step_started = now
            self._step_started_wall = wall_now
            self._gc_at_step_start = self.gc_cpu_s
            self._injected = False
            if wall_now + budget.limit_s - budget.used_s < self._check_at:
                self._check_at = -math.inf
                self._wake.set()
        return now

    def end(self) -> bool:
        """The step ended; withdraw an interrupt that has not landed. True if one was sent."""
        with self._lock:
            self._budget = None
            injected, self._injected = self._injected, False
            if injected:
                _set_async_exc(self.thread_id, None)
        return injected

    def _watch(self) -> None:
        wait_s: float | None = None
        while True:
            self._wake.wait(wait_s)
            self._wake.clear()
            if self._stopping:
                return
            with self._lock:
                wait_s = self._check()
                self._check_at = math.inf if wait_s is None else time.monotonic() + wait_s

    def _check(self) -> float | None:
        """Interrupt an overrunning step; returns the time until the next check (None: when
        a step wakes the watchdog). Called with the lock held."""
        budget = self._budget
        if budget is None:
            self._idle_rounds += 1
            if self._idle_rounds >= WATCHDOG_IDLE_ROUNDS:
                self._idle_rounds = 0
                return None  # idle: the next step wakes us
            return self._idle_horizon_s
        self._idle_rounds = 0
        self._idle_horizon_s = max(WATCHDOG_INTERVAL_S, budget.limit_s)
        now = time.clock_gettime(self.clock)
        # Again while the step keeps running over budget: worker code that catches the
        # first interrupt (a bare `except:`) does not get to spin on.
        if self._injected and now - self._injected_at < REINJECT_INTERVAL_S:
            return WATCHDOG_INTERVAL_S
        step_s = min(
            now - self._step_started, time.monotonic() - self._step_started_wall
        ) - self._gc_since_step_start(now)
        left_s = budget.limit_s - budget.used_s - step_s
        if left_s < 0:
            budget.exceeded = True
            self._injected = True
            self._injected_at = now
            _set_async_exc(self.thread_id, CpuLimitExceeded)
            return WATCHDOG_INTERVAL_S
        return max(WATCHDOG_INTERVAL_S, left_s)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=1)


@types.coroutine
def metered(
    coroutine: Coroutine[Any, Any, T], budget: CpuBudget, watchdog: Watchdog
) -> Generator[Any, Any, T]:
    """Run `coroutine` to completion, charging its CPU time to `budget`."""
    send_value: Any = None
    throw: BaseException | None = None
    try:
        while True:
            started = watchdog.begin(budget)
            started_wall = time.perf_counter()
            gc_before = watchdog.gc_cpu_s
            try:
                try:
                    if throw is not None:
                        error, throw = throw, None
                        yielded = coroutine.throw(error)
                    else:
                        yielded = coroutine.send(send_value)
                finally:
                    watchdog.end()
                    wall_s = time.perf_counter() - started_wall
                    if wall_s < SHORT_STEP_S:
                        budget.used_s += wall_s  # >= its CPU time: no second clock read
                    else:
                        # At most its wall time: the thread CPU clock can jump (docstring).
                        step_s = min(watchdog.read_cpu() - started, wall_s)
                        # A full collection that ran in the step is not the worker's.
                        budget.used_s += max(0.0, step_s - (watchdog.gc_cpu_s - gc_before))
            except StopIteration as stop:
                if budget.exceeded or budget.used_s > budget.limit_s:
                    budget.exceeded = True
                    raise CpuLimitExceeded from None  # it caught the interrupt and returned
                return stop.value  # type: ignore[no-any-return]
            if budget.used_s > budget.limit_s:
                budget.exceeded = True
                raise CpuLimitExceeded
            try:
                send_value = yield yielded
            except BaseException as error:  # cancellation and the like: into the worker
                throw = error
    except CpuLimitExceeded:
        budget.exceeded = True
        coroutine.close()
        raise
