"""The origin's HeadWatch: streams sleep until the head moves, a heartbeat is due, or the
origin drains — and leave nothing behind."""

from __future__ import annotations

import asyncio
import time

from origin_node.stream import HeadWatch


def test_a_commit_wakes_every_waiting_stream_at_once() -> None:
    async def scenario() -> tuple[float, int]:
        watch = HeadWatch(5)
        started = time.monotonic()
        waits = [asyncio.ensure_future(watch.wait_beyond(5, 10.0)) for _ in range(32)]
        await asyncio.sleep(0)
        watch.advance(6)
        await asyncio.wait_for(asyncio.gather(*waits), 1.0)
        return time.monotonic() - started, len(watch._waiters)

    elapsed, left = asyncio.run(scenario())
    assert elapsed < 1.0 and left == 0


def test_an_idle_stream_wakes_at_its_heartbeat_and_drain_wakes_everyone() -> None:
    async def scenario() -> tuple[float, bool, int]:
        watch = HeadWatch(5)
        started = time.monotonic()
        await watch.wait_beyond(5, 0.05)  # nothing committed: the heartbeat timeout
        waited = time.monotonic() - started
        # Already past: returns at once.
        await asyncio.wait_for(watch.wait_beyond(4, 10.0), 0.5)
        pending = asyncio.ensure_future(watch.wait_beyond(5, 10.0))
        await asyncio.sleep(0)
        watch.close()
        await asyncio.wait_for(pending, 1.0)
        # Draining: later waits return at once too.
        await asyncio.wait_for(watch.wait_beyond(5, 10.0), 0.5)
        return waited, watch.closing, len(watch._waiters)

    waited, closing, left = asyncio.run(scenario())
    assert 0.045 <= waited < 1.0
    assert closing and left == 0


def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    """A stream whose subscriber went away must not keep a future (or wake it later)."""

    async def scenario() -> int:
        watch = HeadWatch(1)
        task = asyncio.ensure_future(watch.wait_beyond(1, 10.0))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        watch.advance(2)  # nothing to wake, nothing raised
        return len(watch._waiters)

    assert asyncio.run(scenario()) == 0
