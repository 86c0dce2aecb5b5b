"""Network emulation: what a call from a caller's region goes through at this server.

Callers say where they are with metadata `x-edge-region` (nodes add `x-edge-node`). The
receiving server holds a call for the inbound leg (caller -> server: half the matrix RTT
plus that direction's fault) before the handler, and the outbound leg after it. Stream
messages are each held until their own due time (latency, never bandwidth). Across a
partition a call never reaches the handler and stream messages stop. Calls without a
region are not delayed. Decisions live in `edgepop.faults` and `edgepop.topology`.

Accuracy: a hold ends on a timerfd (`edgepop.hrtimer`: asyncio's own timers fire up to
1 ms late) and aims early by the timer lateness this process has been observing (an
EWMA: it grows when the machine is busy), and when a caller stamps `x-edge-sent-at` the
transport time of the request is counted against the inbound delay, and against the
outbound up to twice a typical request's (`_ReplyTransit`). Together they keep the
median round trip a client measures on the matrix value, and none far below it.

Jitter and loss draw from one generator per node: from the OS's entropy, or, with
`EDGEPOP_RANDOM_SEED` (tests), from the seed again whenever the fault table changes, so
a statistical test replays (`edgepop.seeding`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from edgepop import hrtimer, seeding
from edgepop.errors import DeadlineError, UnavailableError
from edgepop.faults import FaultTable, LinkFault, crossing_delay_s
from edgepop.metrics import NodeMetrics
from edgepop.topology import Topology

REGION_HEADER = "x-edge-region"
NODE_HEADER = "x-edge-node"
# Optional: the caller's wall clock (unix seconds) when it sent the call. Lets the server
# count the real transport time against the emulated delay, so the round trip a client
# measures is the matrix RTT rather than RTT + loopback overhead. Ignored when implausible.
SENT_AT_HEADER = "x-edge-sent-at"
SENT_AT_TRUSTED_S_MAX = 0.05
# The most a reply is credited for its transport (`_ReplyTransit`): loopback's, not a stall's.
REPLY_CREDIT_S_MAX = 0.001
# Messages a delayed stream may hold in flight before its producer waits.
DELAY_LINE_MESSAGES_MAX = 10_000
DELAY_LINE_BYTES_MAX = 64 * 1024 * 1024
# Mean lateness of a hold's timer: a process's wake-up with a timerfd (`edgepop.hrtimer`),
# else asyncio's (epoll rounds its timeout up to whole milliseconds).
TIMER_LATENESS_S = 0.0001 if hrtimer.PRECISE else 0.0005
# The most a hold aims early (its lateness estimate's bound): how far below the requested
# delay one message can arrive when its timer happens to fire on time.
TIMER_AIM_EARLY_MAX_S = 0.0005 if hrtimer.PRECISE else 0.0015
# A call across a partition without a deadline gives up like a TCP connect would.
PARTITION_HOLD_S_MAX = 20.0
# How often a held call looks again at a partition that has an expiry time.
PARTITION_RECHECK_S = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Where a call comes from: a region, and the calling node's name ("" for clients)."""

    region: str
    node: str = ""
    # Seconds the request spent between the caller and the handler (0 when unknown).
    transit_s: float = 0.0

    @property
    def is_node(self) -> bool:
        return bool(self.node)


def caller_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
    region = node = sent_at = ""
    for key, value in metadata or ():
        text = value if isinstance(value, str) else value.decode()
        if key == REGION_HEADER:
            region = text
        elif key == NODE_HEADER:
            node = text
        elif key == SENT_AT_HEADER:
            sent_at = text
    if not region:
        return None
    transit_s = 0.0
    if sent_at:
        try:
            transit_s = time.time() - float(sent_at)
        except ValueError:
            transit_s = 0.0
        if not 0.0 <= transit_s <= SENT_AT_TRUSTED_S_MAX:
            transit_s = 0.0
    return Caller(region, node, transit_s)


def caller_from_headers(get: Callable[[str], str | None]) -> Caller | None:
    """`caller_from_metadata` for HTTP: `get` looks a header up (case-insensitively).

    Three lookups instead of a pass over every header: most requests carry no region.
    """
    region = get(REGION_HEADER)
    if not region:
        return None
    return caller_from_metadata(
        [
            (REGION_HEADER, region),
            (NODE_HEADER, get(NODE_HEADER) or ""),
            (SENT_AT_HEADER, get(SENT_AT_HEADER) or ""),
        ]
    )


def sent_at_metadata() -> tuple[str, str]:
    """The metadata pair a client adds to each call for accurate emulated latency."""
    return (SENT_AT_HEADER, repr(time.time()))


@dataclass(frozen=True)
class Leg:
    """One direction of a call: messages from `from_region` to `to_region`."""

    from_region: str
    to_region: str
    base_s: float


class _TimerLateness:
    """How late this process's timers fire, smoothed (an EWMA of observed lateness).

    Bounded by what a timer's resolution explains (epoll rounds up to 1 ms): a busy
    moment must not teach every later hold to end early. And it decays when a hold is
    too short to sleep at all, so a high estimate cannot stick where nothing corrects it.
    """

    alpha = 0.05
    estimate_max_s = TIMER_AIM_EARLY_MAX_S

    def __init__(self) -> None:
        self.estimate_s = TIMER_LATENESS_S

    def observe(self, lateness_s: float) -> None:
        lateness_s = min(max(lateness_s, -0.0005), 0.002)
        estimate = self.estimate_s + self.alpha * (lateness_s - self.estimate_s)
        self.estimate_s = min(max(estimate, 0.0), self.estimate_max_s)

    def skipped(self) -> None:
        self.estimate_s *= 1 - self.alpha


_timer_lateness = _TimerLateness()


class _ReplyTransit:
    """What a reply is credited for its transport: its request's, up to twice a typical
    request's (and `REPLY_CREDIT_S_MAX`).

    The reply's own transport is unknown here (the caller measures it), so it is taken
    to be like its request's: that keeps the median round trip on the matrix. But not
    beyond twice the typical (the median of the last `window` requests'): a request
    that waited in its client or in this server's queue would have that wait counted
    twice, and its round trip come out that much below the matrix (CI saw 3.4 ms below
    with 12 client threads).
    """

    window = 64

    def __init__(self) -> None:
        self._recent: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []

    @property
    def typical_s(self) -> float:
        return self._sorted[len(self._sorted) // 2] if self._sorted else 0.0

    def credit(self, request_transit_s: float) -> float:
        if len(self._recent) == self.window:
            oldest = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._recent.append(request_transit_s)
        bisect.insort(self._sorted, request_transit_s)
        return min(request_transit_s, 2 * self.typical_s, REPLY_CREDIT_S_MAX)


_reply_transit = _ReplyTransit()


def reply_credit_s(caller: Caller) -> float:
    """Seconds of the reply's transport to count against the outbound delay: once per
    call (it feeds the typical), <= the request's own transit, 0 unstamped."""
    return _reply_transit.credit(caller.transit_s) if caller.transit_s > 0 else 0.0


async def sleep_until(due: float) -> None:
    """Sleep until monotonic time `due`, aiming early by the observed timer lateness."""
    aim = due - _timer_lateness.estimate_s
    if aim > time.monotonic():
        await hrtimer.sleep_until(aim)
        _timer_lateness.observe(time.monotonic() - aim)
    elif due > time.monotonic():
        _timer_lateness.skipped()


class NetworkEmulator:
    """The delay and faults this server (in `region`) applies to each caller."""

    def __init__(
        self, topology: Topology, region: str, metrics: NodeMetrics, seed: int | None = None
    ) -> None:
        self.topology = topology
        self.region = region
        self.metrics = metrics
        self.faults = FaultTable()
        # With EDGEPOP_RANDOM_SEED (tests), jitter and loss draws restart from the seed
        # whenever the fault table changes, so a statistical test replays (edgepop.seeding).
        self._seed = seeding.seed_from_env() if seed is None else str(seed)
        if self._seed is not None:
            self._seed = seeding.derive(self._seed, metrics.node)
        self.rng = random.Random(self._seed)
        self._fault_key: list[tuple[str, str, float, float, float, bool]] = []
        self._faults_changed = asyncio.Event()

    def set_topology(self, topology: Topology) -> None:
        self.topology = topology

    def set_faults(self, faults: Iterable[LinkFault]) -> None:
        self.faults = FaultTable(faults)
        if self._seed is not None:
            # What the faults do, not when they expire (an absolute time, new every run).
            key = sorted(
                (f.from_region, f.to_region, f.delay_ms, f.jitter_ms, f.loss, f.partitioned)
                for f in self.faults.all()
            )
            if key != self._fault_key:
                self._fault_key = key
                self.rng.seed(seeding.derive(self._seed, key))
        self._faults_changed.set()
        self._faults_changed = asyncio.Event()

    # -- decisions ---------------------------------------------------------------------

    def legs(self, caller: Caller) -> tuple[Leg, Leg]:
        """(inbound, outbound) legs of a call from `caller` to this server."""
        if not self.topology.emulate_delay:
            base_s = 0.0
        else:
            rtt_ms = self.topology.rtt_ms(caller.region, self.region, caller_is_node=caller.is_node)
            base_s = rtt_ms / 2000.0
        return Leg(caller.region, self.region, base_s), Leg(self.region, caller.region, base_s)

    def fault(self, leg: Leg) -> LinkFault | None:
        return self.faults.get(leg.from_region, leg.to_region, time.time())

    def delay_s(self, leg: Leg) -> float:
        """A sampled one-way delay for one message over `leg`."""
        return crossing_delay_s(leg.base_s, self.fault(leg), self.rng)

    def one_way_s(self, caller: Caller) -> float:
        """The base (fault-free) one-way delay between the caller and this server."""
        return self.legs(caller)[0].base_s

    # -- waiting -----------------------------------------------------------------------

    async def wait_connected(
        self, leg: Leg, time_remaining: float | None, *, forever: bool = False
    ) -> None:
        """Return once `leg` is not partitioned; fail as a partition would otherwise.

        A call gives up at its deadline (or after PARTITION_HOLD_S_MAX without one);
        a stream message (`forever`) just waits: the stream stops delivering.
        """
        fault = self.fault(leg)
        if fault is None or not fault.partitioned:
            return
        if forever:
            budget = float("inf")
        else:
            budget = PARTITION_HOLD_S_MAX if time_remaining is None else time_remaining
        deadline = time.monotonic() + budget
        while (fault := self.fault(leg)) is not None and fault.partitioned:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if time_remaining is None:
                    raise UnavailableError(
                        f"no route from {leg.from_region} to {leg.to_region} (partitioned)"
                    )
                raise DeadlineError("deadline exceeded (network partitioned)")
            wake = self._faults_changed
            timeout = min(remaining, PARTITION_RECHECK_S if fault.expires_at else remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), None if timeout == float("inf") else timeout)

    async def cross(self, leg: Leg, sent_at: float, time_remaining: float | None) -> None:
        """Carry one message over `leg`: wait out a partition, then its sampled delay."""
        await self.wait_connected(leg, time_remaining)
        delay = self.delay_s(leg)
        if delay <= 0:
            return
        self.metrics.delay(leg.from_region, leg.to_region).observe(delay)
        await sleep_until(sent_at + delay)

    async def delay_stream(self, leg: Leg, messages: AsyncIterator[T]) -> AsyncIterator[T]:
        """Deliver each message over `leg` at its own due time (see `_delay_line`).

        A link with no delay and no fault passes messages straight through (no task, no
        queue): the common case costs nothing. If a fault appears mid-stream, a partition
        holds the stream, and a delay switches the rest of it onto the delay line.
        """
        if leg.base_s > 0:
            async for message in self._delay_line(leg, messages):
                yield message
            return
        iterator = aiter(messages)
        async for message in iterator:
            fault = self.fault(leg)
            if fault is not None:
                if fault.partitioned:
                    await self.wait_connected(leg, None, forever=True)
                    fault = self.fault(leg)
                if fault is not None and (fault.delay_ms or fault.jitter_ms or fault.loss):
                    async for delayed in self._delay_line(leg, _prepend(message, iterator)):
                        yield delayed
                    return
            yield message

    async def _delay_line(self, leg: Leg, messages: AsyncIterator[T]) -> AsyncIterator[T]:
        """Deliver each message over `leg` at its own due time, without serialising waits.

        A producer task stamps each message with when it was produced; this generator
        yields it when due (never before an earlier message: one stream, one order).
        A slow link therefore adds latency but keeps the producer's rate. The line holds
        at most DELAY_LINE_MESSAGES_MAX messages and about DELAY_LINE_BYTES_MAX bytes;
        beyond that the producer waits, as a sender does when TCP's window is full.
        """
        line: asyncio.Queue[tuple[float, T, int] | None] = asyncio.Queue(DELAY_LINE_MESSAGES_MAX)
        room = _ByteBudget(DELAY_LINE_BYTES_MAX)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                async for message in messages:
                    size = _size_of(message)
                    await room.take(size)
                    await line.put((time.monotonic(), message, size))
            except asyncio.CancelledError:
                raise  # the consumer went away: no end marker, nobody reads it
            except Exception as error:  # re-raised on the consumer side, in order
                failure.append(error)
            finally:
                close = getattr(messages, "aclose", None)
                if close is not None:
                    await close()
            await line.put(None)

        producer = asyncio.create_task(produce())
        last_due = 0.0
        try:
            while True:
                item = await line.get()
                if item is None:
                    break
                produced_at, message, size = item
                room.give(size)
                await self.wait_connected(leg, None, forever=True)
                delay = self.delay_s(leg)
                due = max(produced_at + delay, last_due)
                last_due = due
                if delay > 0:
                    self.metrics.delay(leg.from_region, leg.to_region).observe(delay)
                    await sleep_until(due)
                yield message
            if failure:
                raise failure[0]
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


async def _prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    yield first
    async for item in rest:
        yield item


class _ByteBudget:
    """Bytes a delay line may hold; `take` waits for room (one message always fits)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, size: int) -> None:
        while self.used and self.used + size > self.capacity:
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        self._freed.set()


def _size_of(message: object) -> int:
    if isinstance(message, bytes):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0
