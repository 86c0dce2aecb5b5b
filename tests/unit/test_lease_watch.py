"""The object host's lease watch: every instance stops when the lease lapses, not before,
and an idle node does not poll a valid lease.

A real `ObjectHost` in its one-node mode (no control plane: it owns every object at
epoch 1) with a lease the test renews by hand, as heartbeats would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from edgepop import objectid
from edgepop.lease import Lease
from edgepop.storage import Storage
from pop_node.objects.builtin import Counter
from pop_node.objects.host import LEASE_CHECK_INTERVAL_S
from tests.unit.conftest import object_host

LEASE_S = 0.4
# How late past the expiry the eviction may be seen: a timer's lateness on a busy
# machine, plus this test's own 5 ms polling.
EVICTION_LATE_S_MAX = 0.3


class CountingLease(Lease):
    """A lease that counts how often the watch looks at it."""

    looks = 0

    def check_lapsed(self, now: float, was_valid: bool) -> bool:
        self.looks += 1
        return super().check_lapsed(now, was_valid)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every 5 ms; the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic()


def test_instances_stop_when_the_lease_lapses_and_a_valid_lease_is_not_polled(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "objects", 64 * 1024**2)
    lease = CountingLease()
    host = object_host(storage, {"Counter": Counter}, lease=lambda: lease)
    object_id = objectid.id_from_name("Counter", "leased")

    async def scenario() -> tuple[float, float, int, int]:
        runner = asyncio.ensure_future(host.run())
        try:
            lease.renewed(time.monotonic(), LEASE_S)
            # The watch must see the lease valid (it polls while it is not) before the
            # lapse can be seen: a poll interval, with room.
            await asyncio.sleep(0)
            await host.call("Counter", object_id, "increment", "[1]", region="tokyo")
            assert host.instances, "the object is live"
            # A heartbeat halfway through extends the lease: the instance keeps serving.
            await asyncio.sleep(LEASE_S / 2)
            lease.renewed(time.monotonic(), LEASE_S)
            expires_at = lease.valid_until
            looks_before = lease.looks
            evicted_at = await _until(lambda: not host.instances, 5.0, "the eviction")
            looks_while_valid = lease.looks - looks_before
            generation = lease.generation
            # Renewed after the lapse: a call activates a new instance (asks again).
            lease.renewed(time.monotonic(), LEASE_S)
            await host.call("Counter", object_id, "increment", "[1]", region="tokyo")
            return expires_at, evicted_at, looks_while_valid, generation
        finally:
            runner.cancel()
            await host.close()

    try:
        expires_at, evicted_at, looks_while_valid, generation = asyncio.run(scenario())
    finally:
        storage.close()
    assert expires_at <= evicted_at <= expires_at + EVICTION_LATE_S_MAX
    assert generation == 1
    # Polling every LEASE_CHECK_INTERVAL_S would have looked about 10 times in 0.5 s; a
    # timer at the (extended) expiry looks at most twice: once at the old expiry, once
    # at the new one.
    assert LEASE_S / LEASE_CHECK_INTERVAL_S >= 8
    assert looks_while_valid <= 2, looks_while_valid
