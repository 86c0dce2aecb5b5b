"""Sub-millisecond sleeps for the event loop: one Linux timerfd per loop.

asyncio's own timers wait in `epoll_wait`, whose timeout is whole milliseconds, rounded
up: a timer fires 0-1 ms late (0.5 ms on average), which is as large as the shortest
delays of the latency table (2 ms round trip to new-york). A timerfd is a kernel
high-resolution timer the loop watches like a socket, so a hold ends within the wake-up
time of the process (tens of microseconds on an idle machine). One timerfd per loop,
armed for the earliest waiter: a held call costs a heap push and, when it is the new
earliest, one `timerfd_settime`.

Python has `os.timerfd_create` from 3.13; before that (and this project runs 3.11), the
three libc calls go through ctypes. Where neither exists (not Linux), `sleep_until` is
asyncio's sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import os
import sys
import time
import weakref

CLOCK_MONOTONIC = 1  # the clock of time.monotonic() on Linux
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_create.restype = ctypes.c_int
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        libc.timerfd_settime.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
# Whether holds end within the wake-up time (a timerfd) rather than epoll's millisecond.
PRECISE = _libc is not None


class LoopTimer:
    """The waiters of one event loop, woken by one timerfd armed for the earliest."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.CDLL) -> None:
        self._libc = libc
        fd = libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._armed_for = float("inf")
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._fire)
        # Closed with its loop (the loop holds this object through the reader, never back).
        weakref.finalize(loop, os.close, fd)

    async def sleep_until(self, due: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (due, next(self._order), waiter))
        if due < self._armed_for:
            self._arm(due)
        await waiter

    def _arm(self, due: float) -> None:
        # 0 would disarm the timer: a due time already past becomes 1 ns, which fires now.
        seconds = max(due, 1e-9)
        whole = int(seconds)
        self._spec.it_value.tv_sec = whole
        self._spec.it_value.tv_nsec = max(int((seconds - whole) * 1e9), 1 if not whole else 0)
        if self._libc.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, self._spec, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_for = due

    def _fire(self) -> None:
        # Re-armed after it expired, the expiry count was reset: nothing to read.
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        now = time.monotonic()
        waiters = self._waiters
        while waiters and waiters[0][0] <= now:
            _, _, waiter = heapq.heappop(waiters)
            if not waiter.done():  # a cancelled sleep stays in the heap until it is due
                waiter.set_result(None)
        self._armed_for = float("inf")
        if waiters:
            self._arm(waiters[0][0])


_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTimer] = (
    weakref.WeakKeyDictionary()
)


def loop_timer() -> LoopTimer | None:
    """The running loop's timer (made on first use), or None where there is no timerfd."""
    if _libc is None:
        return None
    loop = asyncio.get_running_loop()
    timer = _timers.get(loop)
    if timer is None:
        try:
            timer = LoopTimer(loop, _libc)
        except (OSError, NotImplementedError):
            return None
        _timers[loop] = timer
    return timer


async def sleep_until(due: float) -> None:
    """Sleep until monotonic time `due`, to within the process's wake-up time."""
    timer = loop_timer()
    if timer is None:
        await asyncio.sleep(max(due - time.monotonic(), 0.0))
        return
    await timer.sleep_until(due)
