"""The timerfd sleeps that end emulated holds: never early, in due order, cancellable."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from edgepop import hrtimer

pytestmark = [
    pytest.mark.skipif(not hrtimer.PRECISE, reason="timerfd is Linux-only"),
    pytest.mark.timing,
]


def test_a_sleep_never_ends_before_its_due_time() -> None:
    async def run() -> list[float]:
        lateness = []
        for index in range(60):
            due = time.monotonic() + 0.001 + (index % 5) * 0.0003
            await hrtimer.sleep_until(due)
            lateness.append(time.monotonic() - due)
        return lateness

    lateness = asyncio.run(run())
    assert min(lateness) >= 0.0
    # asyncio's own timer is 0-1 ms late (0.5 ms median); the timerfd's lateness is the
    # process's wake-up. Loose enough for a loaded machine, tight enough to fail on epoll.
    assert statistics.median(lateness) < 0.0004, lateness


def test_sleepers_wake_in_due_order_whatever_order_they_start_in() -> None:
    async def run() -> list[int]:
        woke: list[int] = []
        start = time.monotonic()

        async def sleeper(index: int) -> None:
            await hrtimer.sleep_until(start + 0.002 + 0.0005 * index)
            woke.append(index)

        await asyncio.gather(*(sleeper(index) for index in (7, 3, 9, 0, 5, 1, 8, 2, 6, 4)))
        return woke

    assert asyncio.run(run()) == list(range(10))


def test_a_cancelled_sleep_does_not_disturb_the_others() -> None:
    async def run() -> tuple[bool, float]:
        start = time.monotonic()
        first = asyncio.create_task(hrtimer.sleep_until(start + 0.002))
        second = asyncio.create_task(hrtimer.sleep_until(start + 0.004))
        await asyncio.sleep(0)
        first.cancel()
        await second
        return first.cancelled(), time.monotonic() - start

    cancelled, elapsed = asyncio.run(run())
    assert cancelled
    assert elapsed >= 0.004


def test_a_due_time_already_past_returns_at_once() -> None:
    async def run() -> float:
        start = time.monotonic()
        await hrtimer.sleep_until(start - 1.0)
        await hrtimer.sleep_until(0.0)
        return time.monotonic() - start

    assert asyncio.run(run()) < 0.05


def test_each_loop_has_its_own_timer() -> None:
    async def timer_of_this_loop() -> object:
        await hrtimer.sleep_until(time.monotonic() + 0.001)
        return hrtimer.loop_timer()

    first, second = asyncio.run(timer_of_this_loop()), asyncio.run(timer_of_this_loop())
    assert first is not None and second is not None and first is not second
