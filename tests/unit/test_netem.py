"""Network emulation: who the caller is, how long it waits, and streams delayed not serialised."""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from edgepop.metrics import NodeMetrics
from edgepop.netem import (
    DELAY_LINE_MESSAGES_MAX,
    REPLY_CREDIT_S_MAX,
    Caller,
    Leg,
    NetworkEmulator,
    _ReplyTransit,
    caller_from_metadata,
)
from edgepop.topology import default_topology

# -- caller_from_metadata --------------------------------------------------------------------


def test_no_metadata_means_no_caller_location() -> None:
    assert caller_from_metadata(None) is None
    assert caller_from_metadata([]) is None


def test_client_names_only_its_region() -> None:
    caller = caller_from_metadata([("x-edge-region", "tokyo"), ("user-agent", "grpcurl")])
    assert caller == Caller("tokyo", "")
    assert caller is not None and not caller.is_node


def test_node_names_its_region_and_itself() -> None:
    caller = caller_from_metadata([("x-edge-node", "tokyo-2"), ("x-edge-region", "tokyo")])
    assert caller == Caller("tokyo", "tokyo-2")
    assert caller is not None and caller.is_node


def test_bytes_metadata_values_are_decoded() -> None:
    caller = caller_from_metadata([("x-edge-region", b"london"), ("x-edge-node", b"london-1")])
    assert caller == Caller("london", "london-1")


def test_node_header_without_a_region_is_no_caller_location() -> None:
    assert caller_from_metadata([("x-edge-node", "tokyo-1")]) is None
    assert caller_from_metadata([("x-edge-region", "")]) is None


# -- the reply's credited transport ----------------------------------------------------------


def test_a_reply_is_credited_its_requests_transit_when_that_is_typical() -> None:
    """So that the median round trip stays on the matrix, as when every reply was."""
    transits = random.Random(7)
    reply = _ReplyTransit()
    samples = [transits.uniform(0.0002, 0.0004) for _ in range(300)]
    credits = [reply.credit(transit_s) for transit_s in samples]
    assert credits == samples
    assert reply.typical_s == pytest.approx(statistics.median(samples[-64:]), rel=0.05)


def test_a_request_that_waited_is_not_credited_its_wait_on_the_reply() -> None:
    """12 client threads: a request stamped, then queued 3.4 ms. Its reply travels like
    any other; crediting it the request's 3.4 ms would return it 3.4 ms early."""
    reply = _ReplyTransit()
    for _ in range(100):
        reply.credit(0.0003)
    assert reply.credit(0.0034) == pytest.approx(2 * 0.0003)
    assert reply.credit(0.0001) == 0.0001  # never more than the request's own transit


def test_reply_credit_stays_within_what_loopback_explains() -> None:
    reply = _ReplyTransit()
    for _ in range(100):
        credit = reply.credit(0.04)  # a stalled machine: every request 40 ms
    assert credit == REPLY_CREDIT_S_MAX


# -- one_way_s -------------------------------------------------------------------------------


def _emulator(region: str = "tokyo", *, emulate_delay: bool = True) -> NetworkEmulator:
    topology = replace(default_topology(), emulate_delay=emulate_delay)
    return NetworkEmulator(topology, region, NodeMetrics(f"{region}-1", region))


def test_client_in_the_server_region_waits_half_the_edge_rtt() -> None:
    assert _emulator("tokyo").one_way_s(Caller("tokyo")) == pytest.approx(0.004)


def test_node_in_the_server_region_waits_half_the_intra_site_rtt() -> None:
    assert _emulator("tokyo").one_way_s(Caller("tokyo", "tokyo-2")) == pytest.approx(0.0005)


def test_caller_across_regions_waits_half_the_matrix_rtt() -> None:
    origin = _emulator("us-east-1")
    assert origin.one_way_s(Caller("tokyo")) == pytest.approx(0.085)
    assert origin.one_way_s(Caller("tokyo", "tokyo-1")) == pytest.approx(0.085)
    assert _emulator("tokyo").one_way_s(Caller("us-east-1", "origin")) == pytest.approx(0.085)


def test_caller_from_an_unknown_region_is_not_delayed() -> None:
    assert _emulator("tokyo").one_way_s(Caller("atlantis")) == 0.0


def test_emulate_delay_off_means_no_delay_at_all() -> None:
    emulator = _emulator("us-east-1", emulate_delay=False)
    assert emulator.one_way_s(Caller("sydney")) == 0.0
    assert emulator.one_way_s(Caller("us-east-1", "origin")) == 0.0


def test_legs_of_a_call_run_caller_to_server_and_back() -> None:
    inbound, outbound = _emulator("us-east-1").legs(Caller("tokyo", "tokyo-1"))
    assert inbound == Leg("tokyo", "us-east-1", pytest.approx(0.085))
    assert outbound == Leg("us-east-1", "tokyo", pytest.approx(0.085))


def test_delay_without_faults_is_the_base_delay() -> None:
    emulator = _emulator("us-east-1")
    inbound, _ = emulator.legs(Caller("london"))
    assert emulator.delay_s(inbound) == pytest.approx(0.040)


def test_set_topology_changes_the_delay() -> None:
    emulator = _emulator("us-east-1")
    emulator.set_topology(replace(default_topology(), emulate_delay=False))
    assert emulator.one_way_s(Caller("tokyo")) == 0.0


# -- cross / delay_stream --------------------------------------------------------------------


def _delay_count(emulator: NetworkEmulator, from_region: str, to_region: str) -> float:
    value = emulator.metrics.registry.get_sample_value(
        "edge_injected_delay_seconds_count",
        {
            "node": emulator.metrics.node,
            "region": emulator.metrics.region,
            "from_region": from_region,
            "to_region": to_region,
        },
    )
    return value or 0.0


def test_crossing_a_leg_waits_its_delay_from_when_it_was_sent_and_records_it() -> None:
    emulator = _emulator("us-east-1")
    inbound, _ = emulator.legs(Caller("london"))  # 40 ms one way

    async def run() -> float:
        started = time.monotonic()
        await emulator.cross(inbound, started, None)
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    assert 0.035 <= elapsed < 0.3
    assert _delay_count(emulator, "london", "us-east-1") == 1


def test_crossing_a_leg_sent_long_ago_does_not_wait_again() -> None:
    emulator = _emulator("us-east-1")
    inbound, _ = emulator.legs(Caller("sydney"))  # 105 ms one way

    async def run() -> float:
        started = time.monotonic()
        await emulator.cross(inbound, started - 1.0, None)
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.05


def test_crossing_a_leg_without_delay_records_nothing() -> None:
    emulator = _emulator("us-east-1", emulate_delay=False)
    inbound, _ = emulator.legs(Caller("tokyo"))
    asyncio.run(emulator.cross(inbound, time.monotonic(), None))
    assert _delay_count(emulator, "tokyo", "us-east-1") == 0


async def _burst(count: int, stamps: list[float]) -> AsyncIterator[int]:
    """A source that produces every message at once, stamping when each was produced."""
    for index in range(count):
        stamps.append(time.monotonic())
        yield index


def test_burst_on_a_slow_link_arrives_after_one_delay_not_one_per_message() -> None:
    emulator = _emulator("us-east-1")
    leg = Leg("us-east-1", "tokyo", 0.1)
    produced: list[float] = []

    async def run() -> tuple[float, list[tuple[int, float]]]:
        started = time.monotonic()
        arrived = [
            (message, time.monotonic())
            async for message in emulator.delay_stream(leg, _burst(50, produced))
        ]
        return time.monotonic() - started, arrived

    elapsed, arrived = asyncio.run(run())
    assert [message for message, _ in arrived] == list(range(50))
    # Serialised waits would take 50 x 100 ms = 5 s; latency, not bandwidth, is ~100 ms.
    assert 0.09 <= elapsed < 0.3
    for (message, at), made in zip(arrived, produced, strict=True):
        assert at - made >= 0.1 - 0.01, f"message {message} arrived early"
    assert _delay_count(emulator, "us-east-1", "tokyo") == 50


def test_stream_without_delay_passes_messages_through_at_once() -> None:
    emulator = _emulator("tokyo")
    leg = Leg("tokyo", "tokyo", 0.0)

    async def run() -> tuple[float, list[int]]:
        started = time.monotonic()
        got = [m async for m in emulator.delay_stream(leg, _burst(1000, []))]
        return time.monotonic() - started, got

    elapsed, got = asyncio.run(run())
    assert got == list(range(1000))
    assert elapsed < 0.5
    assert _delay_count(emulator, "tokyo", "tokyo") == 0


def test_source_error_reaches_the_consumer_after_earlier_messages() -> None:
    emulator = _emulator("us-east-1")
    leg = Leg("us-east-1", "tokyo", 0.02)

    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise RuntimeError("stream broke")

    async def run() -> list[int]:
        got: list[int] = []
        with pytest.raises(RuntimeError, match="stream broke"):
            async for message in emulator.delay_stream(leg, failing()):
                got.append(message)
        return got

    assert asyncio.run(run()) == [1, 2]


def test_closing_a_delayed_stream_closes_a_source_that_is_waiting() -> None:
    emulator = _emulator("us-east-1")
    leg = Leg("us-east-1", "tokyo", 0.01)

    async def run() -> bool:
        source_closed = asyncio.Event()
        never = asyncio.Event()

        async def slow() -> AsyncIterator[int]:
            try:
                yield 1
                await never.wait()  # the source has nothing more for now
                yield 2
            finally:
                source_closed.set()

        stream = emulator.delay_stream(leg, slow())
        assert await anext(stream) == 1
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(source_closed.wait(), timeout=2.0)
        return source_closed.is_set()

    assert asyncio.run(run())


def test_closing_a_delayed_stream_with_a_full_delay_line_closes_its_source() -> None:
    emulator = _emulator("us-east-1")
    leg = Leg("us-east-1", "tokyo", 0.01)

    async def run() -> int:
        source_closed = asyncio.Event()
        # Set when the producer has refilled the line after 3 deliveries and holds one
        # more message it cannot put: it is then waiting for room in a full line.
        line_full_again = asyncio.Event()
        produced = 0

        async def endless() -> AsyncIterator[int]:
            nonlocal produced
            try:
                while True:
                    produced += 1
                    if produced == DELAY_LINE_MESSAGES_MAX + 3 + 1:
                        line_full_again.set()
                    yield produced
            finally:
                source_closed.set()

        stream = emulator.delay_stream(leg, endless())
        assert [await anext(stream) for _ in range(3)] == [1, 2, 3]
        await asyncio.wait_for(line_full_again.wait(), timeout=2.0)
        await stream.aclose()  # type: ignore[attr-defined]
        # The source (e.g. Subscribe holding an LMDB read txn) must be closed promptly.
        await asyncio.wait_for(source_closed.wait(), timeout=1.0)
        return produced

    # Garbage collection would eventually finalise the stuck generator; the contract is
    # that closing the stream closes it, not that a GC pass happens to.
    gc.disable()
    try:
        asyncio.run(run())
    finally:
        gc.enable()
